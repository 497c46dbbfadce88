"""Input transformations as a defence: the model answers for a squeezed copy of its input.

Bit-depth reduction and median smoothing are Xu, Evans & Qi's feature squeezers ("Feature Squeezing:
Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018); Guo et al. ("Countering Adversarial
Images using Input Transformations", ICLR 2018) put such transformations in front of the classifier as a
defence. Both remove small perturbations, and both break the gradient an attacker follows: rounding has a
zero gradient everywhere, so plain PGD on `model(transform(x))` goes nowhere and the model looks robust.
Athalye, Carlini & Wagner ("Obfuscated Gradients Give a False Sense of Security", ICML 2018) showed that
this robustness is an artefact: BPDA (Backward Pass Differentiable Approximation) runs the transformation
in the forward pass and treats it as the identity in the backward pass, which recovers a useful gradient
whenever transform(x) is close to x. `TransformedModel(..., bpda=True)` is that attacker's model; its
forward pass is the defended model's, so every example it crafts is checked on the real defence.

Neither transformation here is random, so Expectation over Transformation is not needed to attack them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from aisec.core.errors import BadInputError

MAX_BITS = 8
_KINDS = ("bit_depth", "median")


class BitDepth(nn.Module):
    """Reduce each input to `bits` bits (Xu et al. 2018): round((x - lower) / (upper - lower) * (2**bits - 1))
    / (2**bits - 1), mapped back to [lower, upper] (levels clamped, so the output never leaves the bounds).
    Rounding is piecewise constant: the gradient of the output is zero everywhere."""

    def __init__(self, bits: int, lower: float = 0.0, upper: float = 1.0) -> None:
        super().__init__()
        _check_bits(bits, "bit_depth")
        _check_bounds(lower, upper)
        self.bits, self.lower, self.upper = bits, float(lower), float(upper)
        self.levels = 2**bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.upper - self.lower
        level = torch.round((x - self.lower) / width * self.levels).clamp(0, self.levels)
        return level / self.levels * width + self.lower

    def extra_repr(self) -> str:
        return f"bits={self.bits}, lower={self.lower:g}, upper={self.upper:g}"


class MedianFilter(nn.Module):
    """Median over a `size` x `size` window of each channel of images (n, c, h, w), as Xu et al.'s reference
    computes it (scipy.ndimage.median_filter, mode "reflect"): the window at (i, j) covers rows and columns
    i - size // 2 .. i + (size - 1) // 2, the image is extended by mirroring its edge pixels, and an even
    window takes the upper of its two middle values. Differentiable almost everywhere: the gradient of each
    output reaches the one input pixel it selects."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise BadInputError(f"median: {size!r} is not an integer >= 2")
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise BadInputError(
                f"median filter input: shape {tuple(x.shape)} is not a batch of images (n, channels, height, width)"
            )
        k = self.size
        if k > min(x.shape[-2:]):
            raise BadInputError(f"median: a {k}x{k} window exceeds the {x.shape[-2]}x{x.shape[-1]} images")
        before, after = k // 2, (k - 1) // 2
        padded = _mirror(_mirror(x, -2, before, after), -1, before, after)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1).flatten(-2)  # (n, c, h, w, k * k)
        return windows.kthvalue(k * k // 2 + 1, dim=-1).values

    def extra_repr(self) -> str:
        return f"size={self.size}"


class _StraightThrough(torch.autograd.Function):
    """Returns `transformed` (computed without a graph); the gradient passes to `x` unchanged."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, transformed: torch.Tensor
    ) -> torch.Tensor:
        return transformed.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class TransformedModel(nn.Module):
    """model(transform(x)); with bpda=True the backward pass treats the transform as the identity (straight-through,
    Athalye et al.'s BPDA), the forward pass is unchanged."""

    def __init__(self, model: nn.Module, transform: nn.Module, *, bpda: bool = False) -> None:
        super().__init__()
        self.model, self.transform, self.bpda = model, transform, bpda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bpda:
            return self.model(self.transform(x))
        with torch.no_grad():
            transformed = self.transform(x)
        if transformed.shape != x.shape:
            raise BadInputError(
                f"bpda: the transform maps shape {tuple(x.shape)} to {tuple(transformed.shape)}; "
                "the identity can only stand in for a shape-preserving transform"
            )
        return self.model(_StraightThrough.apply(x, transformed) if x.requires_grad else transformed)

    def extra_repr(self) -> str:
        return f"bpda={self.bpda}"


def transform_from_spec(
    spec: Mapping[str, int], lower: float, upper: float, *, field: str = "input_transform"
) -> nn.Module:
    """The transformation a plan names: {"bit_depth": 3} -> BitDepth(3, lower, upper); {"median": 2} ->
    MedianFilter(2); both keys -> both, applied in the mapping's order. `field` names the spec in errors."""
    _check_bounds(lower, upper)
    steps: list[nn.Module] = [
        BitDepth(value, lower, upper) if kind == "bit_depth" else MedianFilter(value)
        for kind, value in _checked(spec, field)
    ]
    return steps[0] if len(steps) == 1 else nn.Sequential(*steps)


def transform_name(spec: Mapping[str, int]) -> str:
    """ "bit_depth-3", "median-2", "bit_depth-3+median-2": the spec's steps in order."""
    return "+".join(f"{kind}-{value}" for kind, value in _checked(spec, "input_transform"))


def _checked(spec: Mapping[str, int], field: str) -> list[tuple[str, int]]:
    """The (kind, value) steps of a spec; BadInputError naming the key for anything unknown or out of range."""
    if not isinstance(spec, Mapping) or not spec:
        raise BadInputError(f"{field}: {spec!r} is not a mapping of {' and/or '.join(_KINDS)} to an integer")
    steps = []
    for kind, value in spec.items():
        if kind not in _KINDS:
            raise BadInputError(f"{field}.{kind}: unknown transformation; known: {', '.join(_KINDS)}")
        if kind == "bit_depth":
            _check_bits(value, f"{field}.bit_depth")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise BadInputError(f"{field}.median: {value!r} is not an integer >= 2")
        steps.append((kind, value))
    return steps


def _check_bits(bits: object, field: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise BadInputError(f"{field}: {bits!r} is not in 1..{MAX_BITS}")


def _check_bounds(lower: float, upper: float) -> None:
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise BadInputError(f"input bounds: [{lower}, {upper}] is not a finite range with lower < upper")


def _mirror(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """x extended along `dim` by mirrored copies of its edge (d c b a | a b c d | d c b a), as scipy's "reflect"."""
    parts = [x.narrow(dim, 0, before).flip(dim)] if before else []
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
    return torch.cat(parts, dim) if len(parts) > 1 else x
