"""The common output of every training-data detector: a score per sample, a flag, and how it fares against
the poison a red team planted."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.core.errors import DataError


@dataclass(frozen=True)
class DetectionScore:
    """Flags against the planted poison: precision = poisoned among flagged, recall = flagged among poisoned."""

    flagged: int
    poisoned: int
    caught: int

    @property
    def precision(self) -> float:
        return self.caught / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.caught / self.poisoned if self.poisoned else 1.0


@dataclass(frozen=True)
class SuspectRanking:
    """`scores[i]`: how suspect training sample i is (higher is more suspect, comparable within one method);
    `flagged[i]`: the method's own decision to remove it. `method` names the detector and its settings."""

    method: str
    scores: torch.Tensor
    flagged: torch.Tensor

    def __post_init__(self) -> None:
        if self.scores.shape != self.flagged.shape or self.scores.dim() != 1:
            raise ValueError("scores and flags must be one value per sample")

    def ranked(self) -> torch.Tensor:
        """Sample indices, most suspect first."""
        return torch.argsort(self.scores, descending=True, stable=True)

    def score_against(self, poisoned: torch.Tensor) -> DetectionScore:
        """Precision and recall of the flags against the planted poison (a boolean mask)."""
        if poisoned.shape != self.flagged.shape:
            raise DataError(f"{len(poisoned)} poison flags for {len(self.flagged)} samples")
        caught = int((self.flagged & poisoned).sum())
        return DetectionScore(int(self.flagged.sum()), int(poisoned.sum()), caught)
