"""Output hardening for served models: answer with less than the model knows.

A served classifier leaks through its scores: exact probabilities let an attacker solve for a linear model's
parameters (Tramer et al. 2016), train a faithful copy (Orekondy et al. 2019) or tell members of the training
set from others (Shokri et al. 2017). `harden` wraps a target so that it answers the way a hardened API
would, and the attacks are then re-run against the wrapper to measure what the hardening buys:

* `top_k`: only the k most probable classes keep their probability; the others read 0;
* `decimals`: probabilities rounded to that many decimals (Tramer et al. 2016, section 7);
* `label_only`: the predicted label and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisec.core.errors import BadInputError
from aisec.targets.base import Access, Target

if TYPE_CHECKING:
    import torch


class HardenedTarget(Target):
    """A target seen through a hardened API. Queries count on the wrapper and on the inner target."""

    score_kind = "probabilities"

    def __init__(self, inner: Target, *, top_k: int | None = None, decimals: int | None = None,
                 label_only: bool = False) -> None:  # fmt: skip
        if top_k is not None and not 1 <= top_k <= inner.spec.num_classes:
            raise BadInputError(f"top_k must be in [1, {inner.spec.num_classes}], got {top_k}")
        if decimals is not None and not 0 <= decimals <= 15:
            raise BadInputError(f"decimals must be in [0, 15], got {decimals}")
        if not label_only and not inner.access.allows(Access.SCORES):
            raise BadInputError(f"{inner.describe()} gives no scores to harden; use label_only=True")
        super().__init__(inner.spec, Access.LABELS if label_only else Access.SCORES)
        self.inner = inner
        self.top_k = top_k
        self.decimals = decimals

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.answer(self.inner.probabilities(x))

    def answer(self, probabilities: torch.Tensor) -> torch.Tensor:
        """What the API returns for the model's `probabilities` (n, classes): an attacker who knows the API
        applies the same to its own models' outputs (e.g. shadow models)."""
        return harden_probabilities(probabilities, top_k=self.top_k, decimals=self.decimals)

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.labels(x)

    @property
    def variant(self) -> str:
        """The hardening in words, e.g. "top-1, 2 decimals"."""
        parts = [f"top-{self.top_k}" if self.top_k else "", f"{self.decimals} decimals" if self.decimals is not None
                 else "", "labels only" if self.access is Access.LABELS else ""]  # fmt: skip
        return ", ".join(p for p in parts if p) or "unchanged"

    def describe(self) -> str:
        return f"{self.inner.describe()} hardened ({self.variant})"


def harden_probabilities(
    probabilities: torch.Tensor, *, top_k: int | None = None, decimals: int | None = None
) -> torch.Tensor:
    """Probabilities (n, classes) as a hardened API answers them: only the `top_k` most probable classes keep
    theirs (the others read 0), then rounded to `decimals`."""
    import torch

    if top_k is not None and top_k < probabilities.shape[1]:
        kept = probabilities.topk(top_k, dim=1).indices
        mask = torch.zeros_like(probabilities, dtype=torch.bool).scatter_(1, kept, True)
        probabilities = probabilities.where(mask, torch.zeros_like(probabilities))
    if decimals is not None:
        probabilities = probabilities.round(decimals=decimals)
    return probabilities


def harden(target: Target, *, top_k: int | None = None, decimals: int | None = None,
           label_only: bool = False) -> HardenedTarget:  # fmt: skip
    """`target` answering as a hardened API would (see the module docstring)."""
    return HardenedTarget(target, top_k=top_k, decimals=decimals, label_only=label_only)
