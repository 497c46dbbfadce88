"""A request body checked against the model's input spec before anything else sees it.

The body is JSON `{"inputs": [...]}`: a batch of rows, each either of the sample shape or flat (its
product). Everything a client can send that is not such a batch (not JSON, too deep, another type, a ragged
batch, strings or booleans, NaN or infinity, numbers outside the input bounds, more rows than allowed) is
refused with a reason that names it; the model only ever sees a float32 array of shape (n, *spec.shape)
inside the bounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aisec.targets.base import InputSpec


class Refused(Exception):
    """A request the guard refuses: `status` is the HTTP status, the message the reason the client reads."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Batch:
    """A request's inputs: the raw JSON list (not yet checked) and its row count."""

    rows: list[Any]

    def __len__(self) -> int:
        return len(self.rows)


def parse_body(body: bytes, *, max_bytes: int, max_rows: int) -> Batch:
    """The request's `inputs` list, or Refused: 413 for a body or batch too large, 400 for anything that is not
    a JSON object with an `inputs` list of at least one row."""
    if len(body) > max_bytes:
        raise Refused(413, f"the request body has {len(body)} bytes; at most {max_bytes} are accepted")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, 'the request body must be a JSON object {"inputs": [...]}')
    unknown = sorted(set(payload) - {"inputs"})
    if unknown:
        raise Refused(
            400, f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; the body holds only `inputs`"
        )
    rows = payload.get("inputs")
    if not isinstance(rows, list) or not rows:
        raise Refused(400, "`inputs` must be a non-empty list of rows")
    if len(rows) > max_rows:
        raise Refused(413, f"`inputs` holds {len(rows)} rows; at most {max_rows} per request")
    return Batch(rows)


def check_batch(batch: Batch, spec: InputSpec) -> np.ndarray:
    """The batch as float32 (n, *spec.shape) inside the bounds, or Refused(422) naming what does not fit the
    spec: the shape, a value that is not a number, NaN or infinity, or values outside the bounds (by more than
    1e-6, float rounding: those within it are clipped)."""
    n = len(batch)
    width = math.prod(spec.shape)
    try:
        x = np.array(batch.rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise Refused(422, "`inputs` must be a rectangular batch of numbers") from None
    if not _all_numbers(batch.rows):
        raise Refused(422, "`inputs` may hold numbers only (no strings, booleans or nulls)")
    if x.shape[1:] == (width,) and spec.shape != (width,):
        x = x.reshape(n, *spec.shape)
    if tuple(x.shape[1:]) != tuple(spec.shape):
        raise Refused(
            422, f"each row must have shape {list(spec.shape)} (or {width} values); got {list(x.shape[1:])}"
        )
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite.reshape(n, -1)).any(1).sum())
        raise Refused(422, f"{bad} row(s) hold NaN or infinite values")
    lower, upper = _bounds(spec)
    if (x < lower - 1e-6).any() or (x > upper + 1e-6).any():
        raise Refused(
            422,
            f"values in [{x.min():.6g}, {x.max():.6g}] lie outside the input bounds "
            f"[{_describe(spec.lower)}, {_describe(spec.upper)}]",
        )
    # within the float tolerance of the bounds: clipped, so the model sees values inside them exactly
    return np.clip(x, lower, upper).astype(np.float32)


def _all_numbers(rows: list[Any]) -> bool:
    """True when every leaf of the nested lists is an int or float (bool is an int in Python: refused)."""
    stack: list[Any] = [rows]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return False
    return True


def _bounds(spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    lower = np.asarray(spec.lower, dtype=np.float64)
    upper = np.asarray(spec.upper, dtype=np.float64)
    if lower.ndim:
        lower, upper = lower.reshape(spec.shape), upper.reshape(spec.shape)
    return lower, upper


def _describe(bound: float | tuple[float, ...]) -> str:
    return f"{bound:g}" if isinstance(bound, (int, float)) else f"per-feature ({len(bound)} values)"
