"""The model behind the guard: a local model loaded as plans load it (never executing an untrusted file), or an
upstream service reached through the HTTP target. Either answers a checked float32 batch with class
probabilities (when the model gives scores) and labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aisec.assessment.subject import load_target
from aisec.guard.config import GuardConfig
from aisec.targets.base import Access, InputSpec, Target


@dataclass(frozen=True)
class Answer:
    """The model's answer to a batch: probabilities (n, classes), or None for a labels-only model, and labels."""

    probabilities: np.ndarray | None
    labels: np.ndarray


class GuardedModel:
    """The model the guard fronts; `source` names it (a file and its SHA-256, or the upstream URL)."""

    def __init__(self, target: Target, source: str) -> None:
        self.target = target
        self.source = source

    @property
    def spec(self) -> InputSpec:
        return self.target.spec

    @property
    def gives_scores(self) -> bool:
        return self.target.access.allows(Access.SCORES)

    def answer(self, x: np.ndarray) -> Answer:
        """Probabilities and labels for a checked batch (float32, the spec's shape, inside the bounds)."""
        batch = torch.from_numpy(x).to(self.target.device)
        if not self.gives_scores:
            return Answer(None, self.target.labels(batch).cpu().numpy())
        probabilities = self.target.probabilities(batch).cpu().float().numpy()
        return Answer(probabilities, probabilities.argmax(1))

    def module(self) -> torch.nn.Module | None:
        """The torch module of a local torch model (what the input detectors read), else None."""
        model = getattr(self.target, "module", None)
        return model if isinstance(model, torch.nn.Module) else None


def load_guarded_model(config: GuardConfig) -> GuardedModel:
    """The configured model: loaded (a local file, scanned or declared trusted as in plans) or connected."""
    section = config.model or config.upstream
    assert section is not None  # GuardConfig requires one
    target, digest = load_target(section)
    source = f"{section.path} (sha256 {digest})" if config.model is not None else str(section.url)  # type: ignore[union-attr]
    return GuardedModel(target, source)
