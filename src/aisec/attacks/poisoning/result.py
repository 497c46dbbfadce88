"""A training set with poison in it, and the record of which samples the attacker changed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.core.errors import BadInputError, DataError
from aisec.data.dataset import LabelledData


@dataclass(frozen=True)
class PoisonedData:
    """`data` is the training set as the victim receives it; `poisoned[i]` is True where the attacker changed
    sample i (its input, its label or both). `attack` names the attack and `rate` is the poisoned fraction."""

    data: LabelledData
    poisoned: torch.Tensor
    attack: str
    rate: float

    @property
    def indices(self) -> torch.Tensor:
        """Indices of the poisoned samples, ascending."""
        return self.poisoned.nonzero().flatten()

    def without(self, flagged: torch.Tensor) -> LabelledData:
        """The training set with the flagged samples (a boolean mask) removed: what retraining sees."""
        keep = ~flagged
        return LabelledData(
            self.data.x[keep], self.data.y[keep], f"{self.data.name} minus {int(flagged.sum())} flagged"
        )


def check_rate(rate: float, what: str = "poison rate") -> float:
    """The rate, if it is a fraction strictly between 0 and 1; BadInputError otherwise."""
    if not (isinstance(rate, (int, float)) and 0 < rate < 1):
        raise BadInputError(f"{what} must be a fraction in (0, 1), got {rate!r}")
    return float(rate)


def check_classes(data: LabelledData, *, at_least: int = 2) -> int:
    """The number of distinct labels in `data`; DataError if there are fewer than `at_least`."""
    classes = int(torch.unique(data.y).numel())
    if classes < at_least:
        raise DataError(
            f"{data.name}: {classes} class in the data; poisoning and its detection need at least {at_least}"
        )
    return classes


def poison_count(n: int, rate: float, available: int, what: str) -> int:
    """round(rate * n) samples to poison, at least one; DataError if fewer than that are available."""
    count = max(1, round(rate * n))
    if count > available:
        raise DataError(f"a rate of {rate} poisons {count} of {n} samples, but only {available} are {what}")
    return count
