"""Inputs as pictures for a report: which sample shapes are images, and their pixels in [0, 1]."""

from __future__ import annotations

from typing import Any

import torch

from aisec.targets.base import InputSpec


def is_image(shape: tuple[int, ...]) -> bool:
    """(H, W), or (C, H, W) with one or three channels."""
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def pixels(sample: torch.Tensor, spec: InputSpec) -> list[Any]:
    """One sample as nested lists (H, W) or (H, W, 3), scaled from the input bounds to [0, 1] when the
    bounds are one range for all pixels."""
    sample = sample.detach().cpu()
    lo, hi = spec.bounds(sample)
    if lo.dim() == 0:
        sample = ((sample - lo) / (hi - lo)).clamp(0, 1)
    if sample.dim() == 3:
        sample = sample[0] if sample.shape[0] == 1 else sample.permute(1, 2, 0)
    return sample.tolist()
