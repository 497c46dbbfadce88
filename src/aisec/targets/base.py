"""The one interface every attack talks to: a model, what an attacker may see of it, and a query count.

A target declares its `Access` (white box, scores, labels) and its `InputSpec` (sample shape, bounds,
number of classes). Every call that evaluates the model counts the samples it evaluated, so that the
report can say how many queries an attack needed.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aisec.core.errors import CapabilityError, DataError

if TYPE_CHECKING:
    import torch


class Access(str, enum.Enum):
    """What an attacker may observe of a model, from most to least."""

    WHITE_BOX = "white_box"  # logits and gradients with respect to the input
    SCORES = "scores"  # a score per class (probabilities or logits), no gradients
    LABELS = "labels"  # the predicted label only

    @property
    def rank(self) -> int:
        return {Access.WHITE_BOX: 2, Access.SCORES: 1, Access.LABELS: 0}[self]

    def allows(self, needed: Access) -> bool:
        """True when this level of access is enough for an attack that needs `needed`."""
        return self.rank >= needed.rank


ScoreKind = Literal["probabilities", "logits"]


@dataclass(frozen=True)
class InputSpec:
    """Shape of one sample, the valid input range, and the number of classes.

    `lower`/`upper` are scalars for data with one range (pixels in [0, 1]) or sequences with one value per
    feature for tabular data. Attacks keep every input they produce inside these bounds.
    """

    shape: tuple[int, ...]
    num_classes: int
    lower: float | tuple[float, ...] = 0.0
    upper: float | tuple[float, ...] = 1.0

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds as tensors broadcastable against a batch like `like`."""
        import torch

        lo = torch.as_tensor(self.lower, dtype=like.dtype, device=like.device)
        hi = torch.as_tensor(self.upper, dtype=like.dtype, device=like.device)
        if lo.dim() > 0:
            lo, hi = lo.reshape(self.shape), hi.reshape(self.shape)
        return lo, hi

    def check(self, x: torch.Tensor, *, what: str = "input") -> None:
        """Raise DataError naming the problem when a batch does not fit this spec."""
        import torch

        if tuple(x.shape[1:]) != tuple(self.shape):
            raise DataError(
                f"{what} has sample shape {tuple(x.shape[1:])}, but the model expects {tuple(self.shape)}"
            )
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise DataError(f"{what} contains NaN or infinite values in {bad} sample(s)")
        lo, hi = self.bounds(x)
        tol = 1e-6
        if (x < lo - tol).any() or (x > hi + tol).any():
            raise DataError(
                f"{what} has values in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the model's input "
                f"bounds [{_fmt(self.lower)}, {_fmt(self.upper)}]"
            )


def _fmt(bound: float | tuple[float, ...]) -> str:
    return f"{bound:g}" if isinstance(bound, (int, float)) else f"per-feature ({len(bound)} values)"


@dataclass
class QueryCounter:
    """Counts the samples a target has evaluated (one forward pass over a batch of n counts n)."""

    total: int = 0

    def reset(self) -> None:
        self.total = 0


class Target(ABC):
    """A model as an attacker sees it. Subclasses implement `_scores` (and `_labels` if cheaper)."""

    access: Access
    spec: InputSpec
    queries: QueryCounter
    # What `scores` returns: "probabilities" (rows sum to one, e.g. predict_proba or a served API) or
    # "logits" (any real scores whose softmax gives the probabilities: a white-box model, a decision function).
    score_kind: ScoreKind = "probabilities"

    def __init__(self, spec: InputSpec, access: Access) -> None:
        self.spec = spec
        self.access = access
        self.queries = QueryCounter()

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device("cpu")

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch, shape (n, num_classes), without gradients. Counts n queries."""
        if not self.access.allows(Access.SCORES):
            raise CapabilityError(f"{self.describe()} returns labels only; this attack needs class scores")
        self.queries.total += len(x)
        return self._scores(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (n, num_classes): the scores, or their softmax when they are logits. Counts n
        queries; needs SCORES access."""
        scores = self.scores(x)
        return scores.softmax(1) if self.score_kind == "logits" else scores

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels (int64) for a batch. Counts n queries."""
        self.queries.total += len(x)
        return self._labels(x)

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._scores(x).argmax(1)

    @abstractmethod
    def _scores(self, x: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str:
        return f"{type(self).__name__}({self.access.value})"


class WhiteBoxTarget(Target):
    """A differentiable model: `logits` keeps the autograd graph so attacks can take input gradients."""

    score_kind: ScoreKind = "logits"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch with the autograd graph attached. Counts n queries."""
        self.queries.total += len(x)
        return self._logits(x)

    @abstractmethod
    def _logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self._logits(x)
