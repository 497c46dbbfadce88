"""Black-box target over any Python callable: a client for a prediction API, a wrapped model, a function.

Also the output checks every black-box target applies to what its model returns (`check_scores`,
`check_labels`): a model under test is not trusted to return what it promises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from aisec.core.errors import BadInputError, DataError
from aisec.targets.base import Access, InputSpec, ScoreKind, Target


def _as_array(values: Any, source: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except ValueError as e:  # ragged nested lists
        raise DataError(f"{source} returned output that is not an array: {e}") from e


def check_scores(values: Any, n: int, num_classes: int, source: str) -> torch.Tensor:
    """A model's class scores as a float32 tensor (n, num_classes), or DataError naming what is wrong."""
    a = _as_array(values, source)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"{source} returned scores of dtype {a.dtype}, expected numbers")
    if a.shape != (n, num_classes):
        raise DataError(
            f"{source} returned scores of shape {a.shape} for {n} samples, expected ({n}, {num_classes})"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataError(
            f"{source} returned NaN or infinite scores for {int(bad.any(1).sum())} of {n} samples"
        )
    return torch.from_numpy(a.astype(np.float32))


def check_labels(values: Any, n: int, num_classes: int, source: str) -> torch.Tensor:
    """A model's predicted class indices as an int64 tensor (n,), or DataError naming what is wrong."""
    a = _as_array(values, source)
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{source} returned labels of dtype {a.dtype}, expected integer class indices")
    if a.shape != (n,):
        raise DataError(f"{source} returned labels of shape {a.shape} for {n} samples, expected ({n},)")
    if n and (a.min() < 0 or a.max() >= num_classes):
        raise DataError(
            f"{source} returned labels in [{a.min()}, {a.max()}], expected classes in [0, {num_classes - 1}]"
        )
    return torch.from_numpy(a.astype(np.int64))


class CallableTarget(Target):
    """A model behind a Python function, seen as a black box.

    `fn` takes a batch of shape (n, *spec.shape): a float32 numpy array, or a float32 CPU tensor with
    accepts="torch". It gets a copy, so it cannot alter the attacker's batch. With returns="scores" it
    returns class scores (n, num_classes) and the target gives SCORES access; with returns="labels" it
    returns class indices in [0, num_classes) of shape (n,) and the target gives LABELS access. `score_kind`
    says whether the scores are probabilities (the default) or logits (see `Target.probabilities`). Batches
    are split into chunks of `batch_size` (all at once when None). Every output is checked: a wrong shape,
    dtype or a NaN raises DataError naming the callable.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        spec: InputSpec,
        *,
        returns: Literal["scores", "labels"] = "scores",
        score_kind: ScoreKind = "probabilities",
        accepts: Literal["numpy", "torch"] = "numpy",
        batch_size: int | None = None,
        name: str | None = None,
    ) -> None:
        if returns not in ("scores", "labels"):
            raise BadInputError(f"returns must be 'scores' or 'labels', got {returns!r}")
        if score_kind not in ("probabilities", "logits"):
            raise BadInputError(f"score_kind must be 'probabilities' or 'logits', got {score_kind!r}")
        if accepts not in ("numpy", "torch"):
            raise BadInputError(f"accepts must be 'numpy' or 'torch', got {accepts!r}")
        if batch_size is not None and batch_size < 1:
            raise BadInputError(f"batch_size must be a positive integer or None, got {batch_size}")
        super().__init__(spec, Access.SCORES if returns == "scores" else Access.LABELS)
        self.fn = fn
        self.returns = returns
        self.score_kind = score_kind
        self.accepts = accepts
        self.batch_size = batch_size
        self.name: str = name or str(getattr(fn, "__qualname__", type(fn).__name__))

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.fn, x, check_scores)

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        if self.returns == "labels":
            return self._run(self.fn, x, check_labels)
        return self._scores(x).argmax(1)

    def _run(
        self,
        fn: Callable[[Any], Any],
        x: torch.Tensor,
        check: Callable[[Any, int, int, str], torch.Tensor],
    ) -> torch.Tensor:
        """Call `fn` on chunks of a copy of `x` and check each output."""
        x = x.detach().to(device="cpu", dtype=torch.float32, copy=True)
        parts = []
        for chunk in x.split(self.batch_size or max(len(x), 1)):
            out = fn(chunk if self.accepts == "torch" else chunk.numpy())
            parts.append(check(out, len(chunk), self.spec.num_classes, self.name))
        return torch.cat(parts)

    def describe(self) -> str:
        return f"CallableTarget({self.name}, {self.access.value})"
