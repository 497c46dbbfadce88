"""Nearest-neighbour label consistency: a sample whose k nearest neighbours mostly carry another label is
suspect (the k-NN data-cleaning rule of Wilson 1972, "Asymptotic Properties of Nearest Neighbor Rules Using
Edited Data", used against label-flipping poison by Paudice et al. 2018, "Label Sanitization against Label
Flipping Poisoning Attacks").

Distances are exact (torch.cdist, blockwise), in whatever representation the caller passes: the raw inputs, or
a model's features. Raw inputs suit small images such as digits; a trigger shared by many poisoned samples draws
them together and hides them from each other's neighbourhood, which is why this check is one of several.
"""

from __future__ import annotations

import torch

from aisec.core.errors import BadInputError
from aisec.defend.data_quality.reference import check_features
from aisec.defend.data_quality.suspects import SuspectRanking


def label_consistency(
    representation: torch.Tensor, labels: torch.Tensor, *, k: int = 10, block: int = 2048
) -> SuspectRanking:
    """Score = share of a sample's k nearest neighbours (itself excluded) whose label differs from its own;
    flagged when that share exceeds one half."""
    z = representation.flatten(1).float()
    check_features(z, labels, None)
    if not 1 <= k < len(z):
        raise BadInputError(
            f"label consistency: k must be in [1, {len(z) - 1}] for {len(z)} samples, got {k}"
        )
    disagreement = torch.empty(len(z))
    for start in range(0, len(z), block):
        distances = torch.cdist(z[start : start + block], z)
        rows = torch.arange(start, min(start + block, len(z)))
        distances[rows - start, rows] = float("inf")
        neighbours = distances.topk(k, largest=False).indices
        disagreement[rows] = (labels[neighbours] != labels[rows, None]).float().mean(1)
    return SuspectRanking(f"label consistency ({k}-NN)", disagreement, disagreement > 0.5)
