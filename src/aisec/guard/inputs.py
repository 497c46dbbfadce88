"""A request body checked against the model's input spec before anything else sees it.

The body is JSON `{"inputs": [...]}`: a batch of rows, each either of the sample shape or flat (its
product); the spec's own check (`InputSpec.check`) judges the shape, the values and the bounds. Everything a client can send that is not such a batch (not JSON, too deep, another type, a ragged
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
import torch

from aisec.core.errors import DataError
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
    """The batch as float32 (n, *spec.shape) inside the bounds, or Refused(422) naming what does not fit: a value
    that is not a number, a ragged batch, and what `InputSpec.check` refuses (the shape, NaN or infinity, values
    outside the bounds by more than its float tolerance; those within it are clipped onto the bounds)."""
    width = math.prod(spec.shape)
    try:
        x = np.array(batch.rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise Refused(422, "`inputs` must be a rectangular batch of numbers") from None
    if not _all_numbers(batch.rows):
        raise Refused(422, "`inputs` may hold numbers only (no strings, booleans or nulls)")
    if x.shape[1:] == (width,) and spec.shape != (width,):
        x = x.reshape(len(x), *spec.shape)  # flat rows
    tensor = torch.from_numpy(x)
    try:
        spec.check(tensor, what="`inputs`")
    except DataError as e:
        raise Refused(422, str(e)) from None
    lower, upper = spec.bounds(tensor)
    return tensor.clamp(lower, upper).to(torch.float32).numpy()


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
