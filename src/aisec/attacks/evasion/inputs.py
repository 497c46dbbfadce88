"""Checks every evasion attack runs before it spends a query."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.core.errors import CapabilityError, DataError
from aisec.targets.base import Access, Target


@dataclass(frozen=True)
class Batch:
    """A validated batch on the target's device with the input bounds broadcast to it."""

    x: torch.Tensor
    y: torch.Tensor
    target_labels: torch.Tensor | None
    lower: torch.Tensor
    upper: torch.Tensor


def prepare(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    target_labels: torch.Tensor | None,
    needs: Access,
    attack: str,
) -> Batch:
    """Move a batch to the target's device and refuse it with a clear error when it cannot be attacked."""
    if not target.access.allows(needs):
        raise CapabilityError(f"{attack} needs {needs.value} access, but {target.describe()} gives less")
    device = target.device
    x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    y = torch.as_tensor(y).to(device=device, dtype=torch.int64)
    target.spec.check(x)
    if y.shape != (len(x),):
        raise DataError(f"{attack}: expected {len(x)} labels, got shape {tuple(y.shape)}")
    k = target.spec.num_classes
    for name, labels in (("labels", y), ("target labels", target_labels)):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise DataError(f"{attack}: {name} must lie in [0, {k - 1}]")
    if target_labels is not None:
        target_labels = torch.as_tensor(target_labels).to(device=device, dtype=torch.int64)
        if target_labels.shape != y.shape:
            raise DataError(
                f"{attack}: target labels have shape {tuple(target_labels.shape)}, labels {tuple(y.shape)}"
            )
    lower, upper = target.spec.bounds(x)
    return Batch(x, y, target_labels, lower, upper)


def take(labels: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """labels[index], passing None (no target labels) through."""
    return None if labels is None else labels[index]


def check_positive(attack: str, **values: float | int | None) -> None:
    """Raise ValueError naming the first configuration value that is not positive."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise DataError(f"{attack}: {name} must be positive, got {value}")
