"""Views of a target: what a weaker attacker sees of the same model, and a log of what a client asked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisec.core.errors import CapabilityError
from aisec.targets.base import Access, Target

if TYPE_CHECKING:
    import torch


class RestrictedView(Target):
    """The same model seen with less access (scores only, or labels only).

    Queries made through the view are counted both on the view and on the underlying target.
    """

    def __init__(self, inner: Target, access: Access) -> None:
        if not inner.access.allows(access):
            raise CapabilityError(f"cannot give {access.value} access to {inner.describe()}")
        super().__init__(inner.spec, access)
        self.inner = inner
        self.score_kind = inner.score_kind

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.scores(x)

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.labels(x)

    def describe(self) -> str:
        return f"{self.inner.describe()} seen as {self.access.value}"


def label_only(target: Target) -> RestrictedView:
    """The label-only view of any target: what a decision-based attacker sees."""
    return RestrictedView(target, Access.LABELS)


def scores_only(target: Target) -> RestrictedView:
    """The score-only view of a target: no gradients, even for a torch model."""
    return RestrictedView(target, Access.SCORES)


class QueryLog(Target):
    """The same target, recording every query and the label it answered (the class with the top score when
    it answered scores), in order, as a server's query log would: the input of extraction detectors."""

    def __init__(self, inner: Target) -> None:
        super().__init__(inner.spec, inner.access)
        self.inner = inner
        self.score_kind = inner.score_kind
        self.inputs: list[torch.Tensor] = []
        self.answers: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.inner.scores(x)
        self._record(x, scores.argmax(1))
        return scores

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.inner.labels(x)
        self._record(x, labels)
        return labels

    def _record(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs.append(x.detach().flatten(1).cpu())
        self.answers.append(labels.detach().cpu())

    def describe(self) -> str:
        return self.inner.describe()
