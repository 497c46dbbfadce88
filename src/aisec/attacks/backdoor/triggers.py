"""Backdoor triggers: the input transformations a backdoored model learns to answer with the attacker's class.

- `PatchTrigger`: a small fixed pattern stamped into a corner (BadNets, Gu et al. 2017, "BadNets: Identifying
  Vulnerabilities in the Machine Learning Model Supply Chain").
- `BlendTrigger`: a fixed full-size noise pattern blended in, x' = (1 - alpha) x + alpha k (Chen et al. 2017,
  "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning", blended injection).
- `WarpTrigger`: a fixed smooth warping field applied with `grid_sample` (WaNet, Nguyen & Tran 2021,
  "WaNet - Imperceptible Warping-based Backdoor Attack"): no pixel is added, the image is bent.

Each trigger is a frozen dataclass with `check(sample_shape)`, which raises before any work if the trigger
cannot apply to samples of that shape, and `apply(x, lower, upper)` for a batch (n, C, H, W). Triggers are
deterministic: a seeded pattern or field is the same on every call, as the attacker's trigger is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from aisec.core.errors import BadInputError, DataError


class Trigger(Protocol):
    name: str

    def check(self, sample_shape: tuple[int, ...]) -> None:
        """Raise DataError if the trigger cannot apply to samples of this shape (C, H, W)."""

    def apply(self, x: torch.Tensor, lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
        """The triggered batch, inside [lower, upper]; `x` is not modified."""
        ...


def _image_shape(sample_shape: tuple[int, ...], trigger: str) -> tuple[int, int, int]:
    if len(sample_shape) != 3:
        raise DataError(
            f"{trigger}: triggers apply to images (C, H, W); the samples have shape {sample_shape}"
        )
    c, h, w = sample_shape
    return c, h, w


@dataclass(frozen=True)
class PatchTrigger:
    """A `size` x `size` patch `margin` pixels from a corner: a checkerboard of `upper`/`lower` (the default,
    as in BadNets' MNIST pattern) or a solid square of `upper`."""

    size: int = 3
    corner: Literal["bottom_right", "bottom_left", "top_right", "top_left"] = "bottom_right"
    pattern: Literal["checkerboard", "square"] = "checkerboard"
    margin: int = 0
    name: str = "patch"

    def __post_init__(self) -> None:
        if self.size < 1 or self.margin < 0:
            raise BadInputError(
                f"patch trigger: size must be >= 1 and margin >= 0, got {self.size}, {self.margin}"
            )

    def check(self, sample_shape: tuple[int, ...]) -> None:
        _, h, w = _image_shape(sample_shape, "patch trigger")
        if self.size + self.margin > min(h, w):
            raise DataError(
                f"patch trigger: a {self.size}x{self.size} patch {self.margin} pixels from the edge does not fit "
                f"in {h}x{w} images"
            )

    def mask_and_pattern(
        self, sample_shape: tuple[int, ...], lower: float, upper: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (H, W) mask of the pixels the trigger sets and the (C, H, W) values it sets them to."""
        self.check(sample_shape)
        c, h, w = sample_shape
        mask = torch.zeros(h, w)
        top = self.margin if self.corner.startswith("top") else h - self.margin - self.size
        left = self.margin if self.corner.endswith("left") else w - self.margin - self.size
        mask[top : top + self.size, left : left + self.size] = 1.0
        if self.pattern == "square":
            cells = torch.ones(self.size, self.size)
        else:
            ij = torch.arange(self.size)
            cells = ((ij[:, None] + ij[None, :]) % 2 == 0).float()
        pattern = torch.full((c, h, w), float(lower))
        pattern[:, top : top + self.size, left : left + self.size] = lower + (upper - lower) * cells
        return mask, pattern

    def apply(self, x: torch.Tensor, lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape[1:]), lower, upper)
        mask, pattern = mask.to(x), pattern.to(x)
        return x * (1 - mask) + pattern * mask


@dataclass(frozen=True)
class BlendTrigger:
    """x' = (1 - alpha) x + alpha k, with k a seeded uniform noise image in [lower, upper] (Chen et al. 2017
    used alpha = 0.2 to poison)."""

    alpha: float = 0.2
    seed: int = 0
    name: str = "blend"

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise BadInputError(f"blend trigger: alpha must be in (0, 1), got {self.alpha}")

    def check(self, sample_shape: tuple[int, ...]) -> None:
        _image_shape(sample_shape, "blend trigger")

    def pattern(self, sample_shape: tuple[int, ...], lower: float, upper: float) -> torch.Tensor:
        self.check(sample_shape)
        noise = torch.rand(sample_shape, generator=torch.Generator().manual_seed(self.seed))
        return lower + (upper - lower) * noise

    def apply(self, x: torch.Tensor, lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
        k = self.pattern(tuple(x.shape[1:]), lower, upper).to(x)
        return (1 - self.alpha) * x + self.alpha * k


@dataclass(frozen=True)
class WarpTrigger:
    """A smooth warp: a `grid` x `grid` field of random offsets in [-1, 1], normalised by its mean magnitude,
    upsampled bicubically to the image and scaled so that pixels move by about `strength` pixels (WaNet uses
    grid 4 and strength 0.5 on 32x32 images; small images need a larger strength to be learnable)."""

    grid: int = 4
    strength: float = 1.0
    seed: int = 0
    name: str = "warp"

    def __post_init__(self) -> None:
        if self.grid < 2 or not self.strength > 0:
            raise BadInputError(
                f"warp trigger: grid must be >= 2 and strength > 0, got {self.grid}, {self.strength}"
            )

    def check(self, sample_shape: tuple[int, ...]) -> None:
        _, h, w = _image_shape(sample_shape, "warp trigger")
        if self.grid > min(h, w):
            raise DataError(
                f"warp trigger: a {self.grid}x{self.grid} control grid is larger than {h}x{w} images"
            )

    def sampling_grid(self, sample_shape: tuple[int, ...]) -> torch.Tensor:
        """The (1, H, W, 2) grid for `grid_sample`: the identity plus the warp field, in [-1, 1]."""
        self.check(sample_shape)
        _, h, w = sample_shape
        offsets = (
            torch.rand(1, 2, self.grid, self.grid, generator=torch.Generator().manual_seed(self.seed)) * 2 - 1
        )
        offsets = offsets / offsets.abs().mean()
        field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack((xs, ys), dim=-1)[None]
        # one pixel is 2 / (size - 1) in grid_sample's normalised coordinates (align_corners=True)
        scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)])
        return (identity + self.strength * field * scale).clamp(-1, 1)

    def apply(self, x: torch.Tensor, lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
        grid = self.sampling_grid(tuple(x.shape[1:])).to(x).expand(len(x), -1, -1, -1)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return warped.clamp(lower, upper)


TRIGGERS: dict[str, type] = {"patch": PatchTrigger, "blend": BlendTrigger, "warp": WarpTrigger}
