"""Screening a training set for backdoor poison with the model trained on it and a trusted reference set.

Three detectors read the model's last hidden layer: reference distance (ours, `reference_distance.py`), spectral
signatures (Tran et al. 2018) and activation clustering (Chen et al. 2018), the last two with the reference
rules of `reference.py`. A sample any of them flags is removed: defence in depth costs a few clean samples,
while a handful of poisoned samples left behind is enough to keep a backdoor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aisec.core.errors import DataError
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.activation_clustering import activation_clustering
from aisec.defend.data_quality.features import penultimate_features
from aisec.defend.data_quality.reference import Reference
from aisec.defend.data_quality.reference_distance import reference_distance
from aisec.defend.data_quality.spectral_signatures import spectral_signatures
from aisec.defend.data_quality.suspects import SuspectRanking


@dataclass(frozen=True)
class Screening:
    """Each detector's ranking, and the union of their flags (`combined`, scored by the highest per-detector
    rank quantile)."""

    rankings: tuple[SuspectRanking, ...]
    combined: SuspectRanking


def screen_for_backdoor(
    model: nn.Module, data: LabelledData, reference: LabelledData, *, seed: int = 0
) -> Screening:
    """Run the three feature-space detectors on `data` (what `model` was trained on) against `reference`
    (trusted samples of the same classes, e.g. the held-out evaluation set)."""
    if tuple(reference.x.shape[1:]) != tuple(data.x.shape[1:]):
        raise DataError(
            f"{reference.name}: samples of shape {tuple(reference.x.shape[1:])}, but the training data has {tuple(data.x.shape[1:])}"
        )
    missing = sorted(set(torch.unique(data.y).tolist()) - set(torch.unique(reference.y).tolist()))
    if missing:
        raise DataError(
            f"{reference.name}: no reference samples of classes {missing}; every class needs some"
        )
    features = penultimate_features(model, data.x)
    trusted = Reference(penultimate_features(model, reference.x), reference.y)
    rankings = (
        reference_distance(features, data.y, trusted),
        spectral_signatures(features, data.y, reference=trusted),
        activation_clustering(features, data.y, reference=trusted, seed=seed),
    )
    return Screening(rankings, union(rankings))


def union(rankings: tuple[SuspectRanking, ...]) -> SuspectRanking:
    """Flags of any ranking; score = the highest rank quantile a sample reaches in any of them."""
    quantiles = torch.stack([_rank_quantile(r.scores) for r in rankings]).amax(0)
    flagged = torch.stack([r.flagged for r in rankings]).any(0)
    return SuspectRanking("any of: " + "; ".join(r.method for r in rankings), quantiles, flagged)


def _rank_quantile(scores: torch.Tensor) -> torch.Tensor:
    """Each score's rank among all, scaled to (0, 1]: makes detectors with different scales comparable."""
    ranks = torch.empty(len(scores))
    ranks[torch.argsort(scores, stable=True)] = torch.arange(1, len(scores) + 1, dtype=torch.float32)
    return ranks / len(scores)
