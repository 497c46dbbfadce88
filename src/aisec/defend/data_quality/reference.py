"""Per-class views of training and reference features, shared by the clustering and spectral detectors.

A reference set is data the defender trusts: the held-out evaluation set, say. Poison is what the training
set holds and the reference set of the same class does not: comparing the two settles which of two clusters is
the poison even when the poison outnumbers the clean samples of its class, where the size rule of Chen et al.
(2018) and the centring of Tran et al. (2018) both fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from aisec.core.errors import DataError


@dataclass(frozen=True)
class Reference:
    """Features of trusted samples, (m, d), and their labels (m,)."""

    features: torch.Tensor
    labels: torch.Tensor

    def of_class(self, c: int) -> torch.Tensor:
        return self.features[self.labels == c]


def check_features(features: torch.Tensor, labels: torch.Tensor, reference: Reference | None) -> None:
    """DataError unless features are finite (n, d) with one label each, and the reference has the same width."""
    if features.dim() != 2 or len(features) != len(labels):
        raise DataError(
            f"features must be (n, d) with one label per row; got {tuple(features.shape)} and {len(labels)} labels"
        )
    if not torch.isfinite(features).all():
        raise DataError("features contain NaN or infinite values")
    if torch.unique(labels).numel() < 2:
        raise DataError("the training data has one class; detectors compare classes and need at least two")
    if reference is not None:
        if reference.features.dim() != 2 or reference.features.shape[1] != features.shape[1]:
            raise DataError(
                f"reference features are {tuple(reference.features.shape)}; the training features have width {features.shape[1]}"
            )
        if len(reference.features) != len(reference.labels):
            raise DataError(f"{len(reference.features)} reference samples but {len(reference.labels)} labels")
        if not torch.isfinite(reference.features).all():
            raise DataError("reference features contain NaN or infinite values")


def classes(labels: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(class, indices of its samples) for every class present, ascending."""
    for c in torch.unique(labels).tolist():
        yield int(c), (labels == c).nonzero().flatten()
