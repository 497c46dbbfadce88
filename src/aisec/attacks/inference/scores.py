"""The membership score every attack here reads from a model: the true class's confidence in logit space.

phi(x, y) = log p_y - log sum_{j != y} p_j, computed in float64: the logit of p_y, whose distribution over
models trained with or without x is close to Gaussian (Carlini et al., "Membership Inference Attacks From
First Principles", IEEE S&P 2022, "logit scaling").

Why not the loss: a member the model fits with margin m has loss log(1 + sum_{j != y} exp(z_j - z_y)), about
exp(-m); in float32 it is exactly 0 once m exceeds about 17 (1 + 1e-8 rounds to 1), and in float64 once m
exceeds about 37, so every confident member ties at 0 and a threshold attack has no operating point between
"none" and "all of them" at low false-positive rates. phi computed from the logits as
z_y - logsumexp_{j != y} z_j never forms 1 + tiny, so it keeps ranking confident members up to the range of
the logits themselves. From probabilities (a served API), log sum_{j != y} p_j is taken from the small
probabilities of the other classes, not from 1 - p_y: float32 keeps them (as subnormals down to about 1e-45)
up to margins of about 100, where they underflow to 0 and phi reaches a cap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from aisec.targets.base import ScoreKind

# Floor for probabilities that underflowed to 0: phi stays finite (ties at the cap instead of at infinity).
TINY_PROBABILITY = 1e-300


def logit_score(scores: torch.Tensor, y: torch.Tensor, *, kind: ScoreKind = "logits") -> torch.Tensor:
    """phi = log p_y - log sum_{j != y} p_j (float64, shape (..., n)) from class scores (..., n, classes).

    `kind` says what the scores are: "logits" (any real scores whose softmax gives the probabilities) or
    "probabilities". Leading dimensions (e.g. one per shadow model) are kept.
    """
    s = scores.double()
    # phi is invariant to a shift of the logits
    log_p = s if kind == "logits" else s.clamp_min(TINY_PROBABILITY).log()
    index = y.to(s.device).expand(s.shape[:-1]).unsqueeze(-1)
    own = log_p.gather(-1, index).squeeze(-1)
    others = log_p.scatter(-1, index, float("-inf")).logsumexp(-1)
    return own - others
