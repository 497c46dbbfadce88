"""Labelled arrays as attacks consume them: float inputs, int64 labels, and a content hash for provenance."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from aisec.core.errors import DataError


@dataclass(frozen=True)
class LabelledData:
    """A batch of inputs `x` (n, *sample_shape) and integer labels `y` (n,), with a name for reports."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = "data"

    def __post_init__(self) -> None:
        if self.x.dim() < 2:
            raise DataError(f"{self.name}: inputs need a batch dimension, got shape {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if len(self.x) == 0:
            raise DataError(f"{self.name}: no samples")

    def __len__(self) -> int:
        return len(self.x)

    @cached_property
    def sha256(self) -> str:
        """Digest over the inputs' and labels' bytes, shapes and dtypes: identifies the exact data assessed."""
        h = hashlib.sha256()
        for t in (self.x, self.y):
            a = t.detach().cpu().contiguous().numpy()
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def subset(self, n: int, *, seed: int) -> LabelledData:
        """A seeded random subset of n samples (all of them if n >= len)."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return LabelledData(self.x[idx], self.y[idx], f"{self.name}[{n} of {len(self)}]")


def as_labelled(x: Any, y: Any = None, *, name: str = "data") -> LabelledData:
    """Build LabelledData from tensors, numpy arrays, or an iterable of (x, y) batches such as a DataLoader."""
    if y is None:
        if isinstance(x, LabelledData):
            return x
        if isinstance(x, (torch.Tensor, np.ndarray)):
            raise DataError(f"{name}: labels are required with an array of inputs")
        xs, ys = _collect_batches(x, name)
        return LabelledData(xs, ys, name)
    return LabelledData(_as_float_tensor(x, name), _as_label_tensor(y, name), name)


def _collect_batches(batches: Iterable[Any], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"{name}: batch {i} is not an (inputs, labels) pair")
        xs.append(_as_float_tensor(batch[0], name))
        ys.append(_as_label_tensor(batch[1], name))
    if not xs:
        raise DataError(f"{name}: the loader yielded no batches")
    return torch.cat(xs), torch.cat(ys)


def _as_float_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise DataError(f"{name}: inputs have dtype {t.dtype}; numbers are required")
    return t.detach().to(torch.float32)


def _as_label_tensor(y: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach()
    if t.dim() != 1:
        raise DataError(f"{name}: labels must be one integer per sample, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.isfinite(t).all() or (t != t.round()).any():
            raise DataError(f"{name}: labels must be integers (class indices), got non-integer values")
    elif t.dtype == torch.bool:
        raise DataError(f"{name}: labels must be class indices, got booleans")
    return t.to(torch.int64)


def check_labels(data: LabelledData, num_classes: int) -> None:
    """Raise DataError when a label is outside [0, num_classes)."""
    lo, hi = int(data.y.min()), int(data.y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{data.name}: labels range over [{lo}, {hi}] but the model has {num_classes} classes"
        )
