"""Bound propagation through a network of supported layers (layers.py): IBP and CROWN.

Both bound spec @ f(x) from below over a box of inputs, for a specification matrix `spec` (certification uses
C with rows e_y - e_j, so the bounds are on the margins z_y - z_j directly):

- IBP (Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
  Models", 2018 / ICCV 2019): a box per layer, the specification folded exactly into the affine layers after the
  last nonlinear one (the paper's elision of the last layer). Differentiable, for IBP training.
- CROWN (Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with General
  Activation Functions", NeurIPS 2018): back-substitution of linear relaxations from the specification to the
  input, as CROWN-IBP (Zhang et al., ICLR 2020) and auto_LiRPA (Xu et al., NeurIPS 2020) start it from C. The
  pre-activation bounds come from CROWN itself (full CROWN) for the neurons whose relaxation they decide (the
  unstable ReLU inputs, every max-pooling input), intersected with IBP's at every layer; the final bound is the
  largest of CROWN's with two valid ReLU lower lines (adaptive, parallel) and IBP's over those tightened boxes.
  So CROWN is never looser than IBP. Coefficient tensors are chunked by rows (COEFF_BUDGET) to bound memory.

Bounds are computed in the model's floating-point type, as auto_LiRPA does; they are not rounding-sound.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from aisec.defend.robustness.certification.layers import (
    AFFINE,
    DROPOUT,
    NONLINEAR,
    RESHAPES,
    Box,
    LowerSlope,
    backward,
    interval,
    unit_backward,
)

Method = Literal["ibp", "crown"]
COEFF_BUDGET = 2**24  # elements of one coefficient tensor in a CROWN pass (64 MiB in float32)


def input_box(x: torch.Tensor, eps: float, lower: float | torch.Tensor, upper: float | torch.Tensor) -> Box:
    """The box [max(x - eps, lower), min(x + eps, upper)] per sample; `lower`/`upper` are scalars or hold one
    value per feature (any shape with that many elements)."""
    lo, hi = feature_bound(lower, x), feature_bound(upper, x)
    return torch.maximum(x - eps, lo), torch.minimum(x + eps, hi)


def margin_spec(y: torch.Tensor, classes: int) -> torch.Tensor:
    """The specification matrix C (n, classes, classes) with row j = e_y - e_j: C z is the vector of margins
    z_y - z_j (row y is zero)."""
    eye = torch.eye(classes, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def spec_lower_bound(
    layers: list[nn.Module], lower: torch.Tensor, upper: torch.Tensor, spec: torch.Tensor, method: Method
) -> torch.Tensor:
    """A lower bound (n, rows) of spec[i] @ f(x) over the box [lower[i], upper[i]], where f runs `layers` in
    order and `spec` is (n, rows, outputs). An upper bound is minus the lower bound of -spec. Differentiable
    in the layers' parameters for "ibp" (IBP training differentiates through it)."""
    spec = spec.to(lower.dtype)
    if method == "ibp":
        boxes = interval_bounds(layers, lower, upper)
        return substitute(layers, boxes, spec, _elision_start(layers))
    boxes = crown_bounds(layers, lower, upper)
    adaptive, parallel = _chunked(layers, boxes, spec, "adaptive"), _chunked(layers, boxes, spec, "parallel")
    return torch.maximum(
        torch.maximum(adaptive, parallel), substitute(layers, boxes, spec, _elision_start(layers))
    )


def interval_bounds(layers: list[nn.Module], lower: torch.Tensor, upper: torch.Tensor) -> list[Box]:
    """IBP: the box of every layer's input, then of the output (len(layers) + 1 boxes)."""
    boxes = [(lower, upper)]
    for layer in layers:
        boxes.append(interval(layer, *boxes[-1]))
    return boxes


def crown_bounds(layers: list[nn.Module], lower: torch.Tensor, upper: torch.Tensor) -> list[Box]:
    """Full CROWN's boxes of every layer's input and of the output: IBP's box of each layer from the (already
    tightened) box before it, intersected, for the neurons that feed a ReLU unstably or feed a max pooling,
    with CROWN's bounds by back-substitution to the input. Without gradients."""
    boxes = [(lower, upper)]
    for i, layer in enumerate(layers):
        lo, hi = interval(layer, *boxes[-1])
        if _needs_crown(layers, i):
            lo, hi = _tighten(layers[: i + 1], boxes, lo, hi, isinstance(layers[i + 1], nn.ReLU))
        boxes.append((lo, hi))
    return boxes


def substitute(
    layers: list[nn.Module],
    boxes: list[Box],
    spec: torch.Tensor,
    start: int,
    bias: torch.Tensor | None = None,
    lower_slope: LowerSlope = "adaptive",
) -> torch.Tensor:
    """Back-substitute `spec` (n, rows, outputs) from the output through layers[start:] and minimise the linear
    bound over the box of layers[start]'s input: a lower bound (n, rows) of spec @ output + bias, sound when
    boxes[i] contains every input of layer i reachable from the input box. `lower_slope` picks the lower line
    of unstable ReLUs (layers.backward)."""
    coeffs = spec
    bias = spec.new_zeros(spec.shape[:2]) if bias is None else bias
    for i in range(len(layers) - 1, start - 1, -1):
        coeffs, bias = backward(layers[i], coeffs, bias, *boxes[i], lower_slope)
    lo, hi = boxes[start]
    low = coeffs.clamp(min=0) * lo.unsqueeze(1) + coeffs.clamp(max=0) * hi.unsqueeze(1)
    return bias + low.flatten(2).sum(2)


def _chunked(
    layers: list[nn.Module], boxes: list[Box], spec: torch.Tensor, lower_slope: LowerSlope
) -> torch.Tensor:
    """`substitute` to the input over chunks of the rows of `spec`, so that no coefficient tensor exceeds
    COEFF_BUDGET."""
    rows = _rows_per_chunk(layers, boxes, spec[0, 0].numel(), len(spec))
    parts = [
        substitute(layers, boxes, spec[:, r : r + rows], 0, lower_slope=lower_slope)
        for r in range(0, spec.shape[1], rows)
    ]
    return torch.cat(parts, 1)


def _rows_per_chunk(layers: list[nn.Module], boxes: list[Box], outputs: int, n: int) -> int:
    widest = max([outputs, *(box[0][0].numel() for box in boxes[: len(layers)])])
    return max(1, COEFF_BUDGET // (n * widest))


def _tighten(
    layers: list[nn.Module], boxes: list[Box], lo: torch.Tensor, hi: torch.Tensor, relu_next: bool
) -> Box:
    """Intersect the box (lo, hi) of the last layer's output with CROWN's bounds for the neurons that matter:
    the unstable ones (lo < 0 < hi) before a ReLU, every one before a max pooling. Each sample bounds its own
    neurons, padded to the largest count in the batch; a neuron's lower bound is that of its unit row, its
    upper bound minus that of the negated row."""
    n, flat_lo, flat_hi = len(lo), lo.flatten(1), hi.flatten(1)
    wanted = (flat_lo < 0) & (flat_hi > 0) if relu_next else torch.ones_like(flat_lo, dtype=torch.bool)
    count = int(wanted.sum(1).max()) if n else 0
    if count == 0:
        return lo, hi
    idx = torch.argsort(wanted.to(torch.int8), dim=1, descending=True, stable=True)[:, :count]
    step = max(1, _rows_per_chunk(layers, boxes, flat_lo.shape[1], n) // 2)
    lower, upper = [], []
    for r in range(0, count, step):
        part = idx[:, r : r + step]
        through, coeffs, bias = _unit_rows(layers, boxes, tuple(lo.shape[1:]), part)
        both = substitute(through, boxes, torch.cat([coeffs, -coeffs], 1), 0, torch.cat([bias, -bias], 1))
        lower.append(both[:, : part.shape[1]])
        upper.append(-both[:, part.shape[1] :])
    valid = wanted.gather(1, idx)
    old_lo, old_hi = flat_lo.gather(1, idx), flat_hi.gather(1, idx)
    new_lo = torch.where(valid, torch.maximum(old_lo, torch.cat(lower, 1)), old_lo)
    new_hi = torch.where(valid, torch.minimum(old_hi, torch.cat(upper, 1)), old_hi)
    return flat_lo.scatter(1, idx, new_lo).view_as(lo), flat_hi.scatter(1, idx, new_hi).view_as(hi)


def _unit_rows(
    layers: list[nn.Module], boxes: list[Box], out_shape: tuple[int, ...], idx: torch.Tensor
) -> tuple[list[nn.Module], torch.Tensor, torch.Tensor]:
    """The unit rows of the output neurons `idx` (batch, rows) of the last layer, as coefficients and bias
    over the input of a layer, and the layers still to substitute. Layers that only reshape keep a neuron's
    flat index, so a linear or convolutional layer before them substitutes its unit rows directly."""
    mixing = len(layers) - 1
    while mixing > 0 and isinstance(layers[mixing], RESHAPES):
        mixing -= 1
    layer = layers[mixing]
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        produced = boxes[mixing + 1][0].shape[1:] if mixing + 1 < len(layers) else out_shape
        coeffs, bias = unit_backward(layer, idx, tuple(boxes[mixing][0].shape[1:]), tuple(produced))
        return layers[:mixing], coeffs, bias
    first = boxes[0][0]
    rows = first.new_zeros(len(idx), idx.shape[1], math.prod(out_shape))
    rows.scatter_(2, idx.unsqueeze(2), 1.0)
    return layers, rows.reshape(len(idx), idx.shape[1], *out_shape), first.new_zeros(idx.shape)


def _needs_crown(layers: list[nn.Module], i: int) -> bool:
    """Whether CROWN can tighten IBP's box of layers[i]'s output, which is worth it only where that box
    decides a relaxation (a ReLU or max pooling follows) and IBP is not already exact there (the layers since
    the last nonlinear one mix features, and more than one affine map acts on the input box)."""
    if i + 1 >= len(layers) or not isinstance(layers[i + 1], NONLINEAR):
        return False
    last = max((k for k in range(i + 1) if isinstance(layers[k], NONLINEAR)), default=-1)
    mixing = sum(1 for layer in layers[last + 1 : i + 1] if not isinstance(layer, RESHAPES))
    return mixing > 1 or (mixing == 1 and last >= 0)


def _elision_start(layers: list[nn.Module]) -> int:
    """The first of the affine layers after the last nonlinear one (or training-mode dropout, whose mask the
    interval pass drew): IBP folds the specification into these exactly (Gowal et al.'s elision)."""
    for k in range(len(layers) - 1, -1, -1):
        if not isinstance(layers[k], AFFINE) or (isinstance(layers[k], DROPOUT) and layers[k].training):
            return k + 1
    return 0


def feature_bound(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An input bound (a scalar, or one value per feature in any shape) as a tensor broadcastable against `x`."""
    bound = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if bound.dim() > 0 and bound.numel() == x[0].numel():
        bound = bound.reshape(x.shape[1:])
    return bound
