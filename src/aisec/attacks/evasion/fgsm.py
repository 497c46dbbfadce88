"""Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, ICLR 2015); the L2 variant steps along the gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.gradients import input_gradient
from aisec.attacks.evasion.inputs import check_positive, prepare
from aisec.attacks.evasion.losses import cross_entropy, is_success
from aisec.attacks.evasion.norms import Norm, clip_to_bounds, normalize, per_sample
from aisec.attacks.evasion.result import EvasionResult, finish
from aisec.targets.base import Access, WhiteBoxTarget


@dataclass(frozen=True)
class FGSMConfig:
    eps: float
    norm: Norm = "linf"


def fgsm(
    target: WhiteBoxTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FGSMConfig,
    *,
    target_labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> EvasionResult:
    """One gradient step of size eps on the cross-entropy: x + eps * sign(grad) (L-inf) or eps * grad/|grad| (L2)."""
    check_positive("fgsm", eps=config.eps)
    b = prepare(target, x, y, target_labels, Access.WHITE_BOX, "fgsm")
    x_in = b.x.clone().requires_grad_(True)
    loss = cross_entropy(target.logits(x_in), b.y, b.target_labels).sum()
    grad = input_gradient(loss, x_in)
    x_adv = clip_to_bounds(b.x + per_sample(config.eps, b.x) * normalize(grad, config.norm), b.lower, b.upper)
    with torch.no_grad():
        success = is_success(target.logits(x_adv).argmax(1), b.y, b.target_labels)
    queries = torch.full((len(b.x),), 2, dtype=torch.int64, device=b.x.device)
    return finish("fgsm", b.x, x_adv, success, queries, config.norm, config.eps, b.target_labels is not None)
