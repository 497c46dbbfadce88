"""A perturbation budget checked against the input bounds, before any training or certification: budgets are in
input units, and one meant for another scale (ART's Madry trainer defaults to eps 8, for 0-255 pixels) would on
[0, 1] data be a ball covering every input."""

from __future__ import annotations

import torch

from aisec.core.errors import BadInputError


def check_budget(
    eps: float, lower: float | torch.Tensor, upper: float | torch.Tensor, *, field: str = "eps"
) -> None:
    """Raise BadInputError (one line naming `field` and the input range) unless 0 < eps <= the input range
    (upper - lower; the smallest width for per-feature bounds): a budget meant for another scale (8 for 0-255
    pixels on [0, 1] data) would otherwise train against a ball covering every input."""
    lo, hi = torch.as_tensor(lower, dtype=torch.float64), torch.as_tensor(upper, dtype=torch.float64)
    width = float((hi - lo).min())
    if lo.dim() == 0 and hi.dim() == 0:
        where = f"the input range [{float(lo):g}, {float(hi):g}] (width {width:g})"
    else:
        where = f"the per-feature input bounds (smallest width {width:g})"
    if not width > 0:
        raise BadInputError(f"{field}: {where} is empty; upper must exceed lower for every feature")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise BadInputError(f"{field}: {eps!r} must be a positive number at most {where}")
    if eps > width:
        raise BadInputError(f"{field}: {eps:g} exceeds {where}; budgets are in input units")
