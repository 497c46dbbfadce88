"""The inner maximisation of adversarial training: projected gradient ascent of a loss over the input, inside
an L-inf or L2 ball and the input bounds (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018).

It is the training-time counterpart of the red team's PGD (`aisec.attacks.evasion.pgd`), which the blue team
may not import: no target, no query counting, no early stop, any differentiable loss of the logits
(cross-entropy for PGD-AT and fast AT, the KL divergence for TRADES), and gradients taken with respect to the
input only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from aisec.core.training import evaluating

Norm = Literal["linf", "l2"]


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    steps: int,
    step_size: float,
    lower: float | torch.Tensor,
    upper: float | torch.Tensor,
    random_start: bool,
    generator: torch.Generator,
    norm: Norm = "linf",
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """`steps` steps of x' <- Proj(x' + step_size * normalize(grad_x' loss_fn(model(x')))), where Proj maps
    onto the eps-ball around `x` intersected with [lower, upper] and normalize is the sign (L-inf) or the unit
    L2 vector per sample. `loss_fn` takes the logits of the whole batch and returns a scalar to increase.

    The ascent starts at `start` when given (TRADES starts at x + 0.001 N(0, 1)), otherwise at a uniform draw
    from the ball when `random_start`, otherwise at `x`; the start is projected like every iterate. The model
    runs in eval mode while crafting (its mode is restored) and no parameter gradient is computed or
    accumulated. Returns the last iterate, detached, on `x`'s device."""
    x = x.detach()
    lo = torch.as_tensor(lower, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(upper, dtype=x.dtype, device=x.device)
    if start is not None:
        x_adv = start.detach().to(x)
    elif random_start:
        x_adv = x + _random_in_ball(x, eps, norm, generator)
    else:
        x_adv = x.clone()
    x_adv = _project(x_adv, x, eps, norm, lo, hi)
    with evaluating(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(loss_fn(model(x_adv)), x_adv)
            with torch.no_grad():
                x_adv = _project(x_adv + step_size * _normalize(grad, norm), x, eps, norm, lo, hi)
    return x_adv.detach()


def _project(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """The nearest point of the eps-ball around x (per sample), then clipped into [lo, hi] (for L-inf the
    result is the exact projection onto the intersection; for L2 clipping keeps it inside both)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / length).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
    return torch.maximum(torch.minimum(x + delta, hi), lo)


def _normalize(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    length = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / length.view(-1, *[1] * (grad.dim() - 1))


def _random_in_ball(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """Uniform in the ball: per coordinate for L-inf; a uniform direction and radius eps * U^(1/d) for L2."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
        return (2 * u - 1) * eps
    direction = _normalize(
        torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device), "l2"
    )
    d = x[0].numel()
    radius = torch.rand(len(x), generator=generator, dtype=x.dtype, device=generator.device) ** (1.0 / d)
    return direction * (eps * radius.to(x.device)).view(-1, *[1] * (x.dim() - 1))
