"""What each layer bound propagation supports does to a box and to a linear bound.

A model is an `nn.Sequential` (nested Sequentials are flattened) of Linear, Conv2d, ReLU, Flatten, AvgPool2d,
MaxPool2d, Identity and Dropout layers; `sequential_layers` refuses anything else by index and class before any
computation. Each layer has two transfer functions:

- `interval`: the box of its outputs given a box of its inputs (interval bound propagation, Gowal et al.,
  "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models", 2018 / ICCV 2019),
  in centre-radius form so that IBP training can differentiate through it;
- `backward`: given a linear lower bound `A . output + b` of some quantity, one in terms of the layer's input
  (back-substitution as in CROWN, Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness
  Certification with General Activation Functions", NeurIPS 2018). Affine layers substitute exactly; ReLU and
  MaxPool2d substitute a sound linear relaxation chosen from the bounds of their input.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

from aisec.core.errors import BadInputError

DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
AFFINE = (nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.Identity, *DROPOUT)
NONLINEAR = (nn.ReLU, nn.MaxPool2d)
RESHAPES = (nn.Flatten, nn.Identity, *DROPOUT)  # affine layers that do not mix features
SUPPORTED_NAMES = (
    "Linear, Conv2d, ReLU, Flatten, AvgPool2d, MaxPool2d, Identity, Dropout (nested Sequentials)"
)

Box = tuple[torch.Tensor, torch.Tensor]
LowerSlope = Literal["adaptive", "parallel"]


def sequential_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of `model` in order, nested `nn.Sequential`s flattened. Raises BadInputError naming the first
    layer bound propagation cannot handle (its index in this list and its class), or a model that is not an
    `nn.Sequential` (its computation is not known from its layers)."""
    if type(model) is not nn.Sequential:
        raise BadInputError(
            f"bound propagation: the model must be an nn.Sequential of supported layers, got "
            f"{type(model).__name__}; supported: {SUPPORTED_NAMES}"
        )
    layers = _flatten(model)
    for i, layer in enumerate(layers):
        problem = _unsupported(layer)
        if problem is not None:
            raise BadInputError(
                f"bound propagation: unsupported layer {i} ({problem}); supported: {SUPPORTED_NAMES}"
            )
    if not layers:
        raise BadInputError("bound propagation: the model has no layers")
    return layers


def _flatten(model: nn.Sequential) -> list[nn.Module]:
    out: list[nn.Module] = []
    for layer in model:
        out.extend(_flatten(layer) if type(layer) is nn.Sequential else [layer])
    return out


def _unsupported(layer: nn.Module) -> str | None:
    """Why `layer` cannot be bounded (its class, and the setting when only a setting is the problem), or None.
    Exact type checks: a subclass may override `forward`."""
    name = type(layer).__name__
    if type(layer) not in (*AFFINE, *NONLINEAR):
        return name
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            return f"{name} with padding_mode={layer.padding_mode!r}"
        if _conv_padding(layer) is None:
            return f"{name} with padding='same' and an even kernel"
    if isinstance(layer, nn.Flatten) and layer.start_dim == 0:
        return f"{name} over the batch dimension"
    if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
        return f"{name} with return_indices=True"
    return None


def _conv_padding(layer: nn.Conv2d) -> tuple[int, int] | None:
    """The convolution's padding as two integers ('valid' and symmetric 'same' converted), or None for a
    'same' padding that needs different amounts on the two sides."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return None
        return (total[0] // 2, total[1] // 2)
    return (int(layer.padding[0]), int(layer.padding[1]))


def _padding(layer: nn.Conv2d) -> tuple[int, int]:
    padding = _conv_padding(layer)
    if padding is None:
        raise TypeError("asymmetric 'same' padding")  # sequential_layers refused it
    return padding


def interval(layer: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> Box:
    """The box of `layer`'s outputs over the box [lower, upper] of its inputs (IBP; exact per neuron for a
    single affine layer, ReLU and max pooling). Differentiable in the layer's parameters. Dropout in training
    mode applies one mask to both ends; in eval mode it is the identity."""
    if isinstance(layer, nn.ReLU):
        return lower.clamp(min=0), upper.clamp(min=0)
    if isinstance(layer, nn.MaxPool2d):
        return layer(lower), layer(upper)
    if isinstance(layer, DROPOUT) and layer.training:
        mask = layer(torch.ones_like(lower))
        return lower * mask, upper * mask
    if isinstance(layer, RESHAPES):
        return layer(lower), layer(upper)
    if isinstance(layer, nn.AvgPool2d):  # a linear map with non-negative weights
        return layer(lower), layer(upper)
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    if isinstance(layer, nn.Linear):
        mid, rad = layer(mid), F.linear(rad, layer.weight.abs())
    elif isinstance(layer, nn.Conv2d):
        padding = _padding(layer)
        rad = F.conv2d(rad, layer.weight.abs(), None, layer.stride, padding, layer.dilation, layer.groups)
        mid = layer(mid)
    else:
        raise TypeError(f"no interval transfer for {type(layer).__name__}")  # sequential_layers refused it
    return mid - rad, mid + rad


def backward(
    layer: nn.Module,
    coeffs: torch.Tensor,
    bias: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    lower_slope: LowerSlope = "adaptive",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Substitute `layer` into the linear lower bound `coeffs . output + bias` of a quantity: return
    (coeffs', bias') with quantity >= coeffs' . input + bias' for every input in [lower, upper] (the bounds of
    this layer's input, shape (batch, *input shape)). `coeffs` has shape (batch, rows, *output shape): one
    bound per row; `bias` (batch, rows). `lower_slope` picks the lower line of an unstable ReLU."""
    batch, rows = coeffs.shape[:2]
    in_shape = lower.shape[1:]
    if isinstance(layer, nn.ReLU):
        return _relu_backward(coeffs, bias, lower, upper, lower_slope)
    if isinstance(layer, nn.MaxPool2d):
        return _maxpool_backward(layer, coeffs, bias, lower, upper)
    if isinstance(layer, RESHAPES):  # dropout as in eval mode: the identity (IBP training elides after it)
        return coeffs.reshape(batch, rows, *in_shape), bias
    if isinstance(layer, nn.Linear):
        if layer.bias is not None:
            bias = bias + coeffs @ layer.bias
        return coeffs @ layer.weight, bias
    flat = coeffs.reshape(batch * rows, *coeffs.shape[2:])
    if isinstance(layer, nn.Conv2d):
        if layer.bias is not None:
            bias = bias + torch.einsum("brchw,c->br", coeffs, layer.bias)
        back = _conv_transpose(layer, flat, in_shape)
    elif isinstance(layer, nn.AvgPool2d):
        primal = flat.new_zeros(1).expand(batch * rows, *in_shape)
        back = torch.func.vjp(layer, primal)[1](flat)[0]
    else:
        raise TypeError(f"no backward transfer for {type(layer).__name__}")  # sequential_layers refused it
    return back.reshape(batch, rows, *in_shape), bias


def _conv_transpose(layer: nn.Conv2d, coeffs: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """The adjoint of the convolution (without bias) applied to `coeffs` (rows, C_out, H', W'). With few input
    channels (a first layer on images) as a product with the kernel and a fold, several times faster on a CPU
    than torch's transposed convolution there; otherwise that."""
    weight, padding = layer.weight, _padding(layer)
    cout = weight.shape[0]
    if layer.groups == 1 and weight[0].numel() <= cout:
        cols = weight.reshape(cout, -1).T @ coeffs.reshape(len(coeffs), cout, -1)
        return F.fold(cols, in_shape[1:], layer.kernel_size, layer.dilation, padding, layer.stride)
    size = [len(coeffs), *in_shape]
    return conv2d_input(size, weight, coeffs, layer.stride, padding, layer.dilation, layer.groups)


def unit_backward(
    layer: nn.Linear | nn.Conv2d, idx: torch.Tensor, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`backward` of unit rows (the output neurons at flat indices `idx`, shape (batch, rows)) through a linear
    or convolutional layer: the neurons' weights and biases, laid out over the input (batch, rows, *in_shape).
    The same result as `backward` of one-hot coefficients, without a dense product of mostly zeros: a
    convolution neuron's row is its kernel placed at its receptive field."""
    if isinstance(layer, nn.Linear):
        bias = (
            layer.bias[idx] if layer.bias is not None else idx.new_zeros(idx.shape, dtype=layer.weight.dtype)
        )
        return layer.weight[idx], bias
    weight = layer.weight
    cout, cin_group, kh, kw = weight.shape
    channels, height, width = in_shape
    out_h, out_w = out_shape[1:]
    (sh, sw), (ph, pw), (dh, dw) = _pair(layer.stride), _padding(layer), _pair(layer.dilation)
    c, place = idx // (out_h * out_w), idx % (out_h * out_w)
    ki = torch.arange(kh, device=idx.device).view(kh, 1)
    kj = torch.arange(kw, device=idx.device).view(1, kw)
    rows_in = (place // out_w)[..., None, None] * sh - ph + ki * dh  # (batch, rows, kh, kw)
    cols_in = (place % out_w)[..., None, None] * sw - pw + kj * dw
    inside = (rows_in >= 0) & (rows_in < height) & (cols_in >= 0) & (cols_in < width)
    first = (c // (cout // layer.groups)) * cin_group
    cin = first[..., None] + torch.arange(cin_group, device=idx.device)  # (batch, rows, cin_group)
    target = (cin[..., None, None] * height + rows_in.unsqueeze(2)) * width + cols_in.unsqueeze(2)
    target = torch.where(inside.unsqueeze(2), target, torch.zeros_like(target))
    values = weight[c] * inside.unsqueeze(2).to(weight.dtype)
    batch, rows = idx.shape
    out = weight.new_zeros(batch, rows, channels * height * width)
    out.scatter_add_(2, target.flatten(2), values.flatten(2))
    bias = layer.bias[c] if layer.bias is not None else torch.zeros_like(out[..., 0])
    return out.view(batch, rows, *in_shape), bias


def _relu_backward(
    coeffs: torch.Tensor,
    bias: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    lower_slope: LowerSlope,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN's relaxation of relu(x) on [l, u]: exact where the sign is known; for l < 0 < u the upper line
    through (l, 0) and (u, u), and a lower line through the origin of any slope in [0, 1] (Zhang et al. 2018):
    "adaptive" slope 1 when u >= -l, else 0 (CROWN-Ada, the smaller area), "parallel" u / (u - l), the upper
    line's slope (as zonotopes / DeepZ relax). Positive coefficients take the lower line, negative ones the
    upper line."""
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(coeffs.dtype)
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    up_slope = torch.where(unstable, upper / width, active)
    up_offset = torch.where(unstable, -lower * up_slope, torch.zeros_like(lower))
    chosen = (upper >= -lower).to(coeffs.dtype) if lower_slope == "adaptive" else up_slope
    low_slope = torch.where(unstable, chosen, active)
    batch, rows = coeffs.shape[:2]
    flat = coeffs.reshape(batch, rows, -1)
    pos = flat.clamp(min=0)
    # sum(neg * up_offset) with neg = coeffs - pos, and coeffs * up_slope + pos * (low_slope - up_slope)
    offset = up_offset.reshape(batch, -1, 1)
    bias = bias + (flat @ offset).squeeze(2) - (pos @ offset).squeeze(2)
    out = torch.addcmul(
        flat * up_slope.reshape(batch, 1, -1), pos, (low_slope - up_slope).reshape(batch, 1, -1)
    )
    return out.view_as(coeffs), bias


def _windows(layer: nn.MaxPool2d, t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The pooling windows of `t` (batch, channels, H, W) as (batch, channels, window size, windows), padded
    with -inf as max pooling pads (ceil mode included), and that padding (left, right, top, bottom; negative
    where the last windows leave input rows or columns out)."""
    kernel, stride, pad, dilation = (_pair(v) for v in (layer.kernel_size, layer.stride, layer.padding,
                                                        layer.dilation))  # fmt: skip
    out_h, out_w = layer(t[:1, :1]).shape[2:]
    height, width = t.shape[2:]
    need_h = (out_h - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (out_w - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    padding = (pad[1], need_w - width - pad[1], pad[0], need_h - height - pad[0])
    padded = F.pad(t, padding, value=-math.inf)
    n, c = t.shape[:2]
    cols = F.unfold(padded.reshape(n * c, 1, need_h, need_w), kernel, dilation, 0, stride)
    return cols.reshape(n, c, cols.shape[1], cols.shape[2]), padding


def _maxpool_backward(
    layer: nn.MaxPool2d, coeffs: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear relaxation of y = max over a window, as DeepPoly's (Singh, Gehr, Pueschel & Vechev, "An
    Abstract Domain for Certifying Neural Networks", POPL 2019): with k the input of largest lower bound,
    y >= x_k always (y is at least every input); y = x_k when l_k >= u_j for every other j (that input is
    provably the maximum); otherwise y <= max_j u_j, a constant. Both sides are sound for every input in the
    box, so the substituted bound is too."""
    lo_w, padding = _windows(layer, lower)
    up_w, _ = _windows(layer, upper)
    best = lo_w.argmax(2, keepdim=True)  # (batch, channels, 1, windows)
    best_lower = lo_w.gather(2, best).squeeze(2)
    others_upper = up_w.scatter(2, best, -math.inf).amax(2)
    decided = best_lower >= others_upper
    top = up_w.amax(2)
    batch, rows, channels = coeffs.shape[:3]
    flat = coeffs.reshape(batch, rows, channels, -1)
    pos, neg = flat.clamp(min=0), flat.clamp(max=0)
    on_best = pos + neg * decided.unsqueeze(1)
    bias = bias + (neg * (~decided * top).unsqueeze(1)).flatten(2).sum(2)
    window = lo_w.shape[2]
    spread = flat.new_zeros(batch, rows, channels, window, flat.shape[-1])
    spread.scatter_(
        3, best.unsqueeze(1).expand(batch, rows, channels, 1, flat.shape[-1]), on_best.unsqueeze(3)
    )
    kernel, stride, dilation = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
    height, width = lower.shape[2:]
    size = (height + padding[2] + padding[3], width + padding[0] + padding[1])
    folded = F.fold(spread.reshape(batch * rows * channels, window, -1), size, kernel, dilation, 0, stride)
    back = F.pad(folded, tuple(-p for p in padding))
    return back.reshape(batch, rows, channels, height, width), bias


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
