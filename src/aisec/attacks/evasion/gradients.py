"""Input gradients that survive models whose graph does not reach the input."""

from __future__ import annotations

import torch


def input_gradient(output: torch.Tensor, x: torch.Tensor, *, retain_graph: bool = False) -> torch.Tensor:
    """d output / d x, or zeros where the model's graph does not reach x.

    A non-differentiable first layer (thresholding, rounding, a call out of torch) disconnects x from the
    graph. Returning the zero gradient it really has, instead of raising, lets the attacks run and fail as
    they would in an evaluation, and lets the gradient-masking checks name the cause.
    """
    if not output.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(output, x, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad
