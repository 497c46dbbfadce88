"""Norm balls: measuring, projecting onto and sampling from L-inf and L2 balls, per sample, in torch."""

from __future__ import annotations

from typing import Literal

import torch

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")


def rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An (n,) tensor (a mask or per-sample values, dtype kept) viewed to broadcast over a batch like `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (n,) tensor in `like`'s dtype, shaped to broadcast over a batch like `like`."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return rows(t, like) if t.dim() == 1 else t


def batch_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The norm of each sample's perturbation, shape (n,)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    return flat.norm(p=2, dim=1)


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project each perturbation onto the eps-ball of the norm."""
    e = per_sample(eps, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    scale = (e.flatten() / batch_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return delta * per_sample(scale, delta)


def normalize(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit size in the norm: sign for L-inf, unit L2 vector for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(batch_norm(grad, "l2").clamp_min(1e-12), grad)


def random_in_ball(
    like: torch.Tensor, eps: float | torch.Tensor, norm: Norm, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform random perturbations inside the eps-ball (L-inf: per coordinate; L2: uniform in volume)."""
    e = per_sample(eps, like)
    if norm == "linf":
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return (2 * u - 1) * e
    direction = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    direction = normalize(direction, "l2")
    d = like[0].numel()
    radius = torch.rand(len(like), generator=generator, device=like.device, dtype=like.dtype) ** (1.0 / d)
    return direction * per_sample(radius, like) * e


def clip_to_bounds(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.minimum(x, upper), lower)
