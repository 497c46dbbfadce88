"""Representations that detectors look at: a model's last hidden layer, or the raw inputs."""

from __future__ import annotations

import torch
from torch import nn

from aisec.core.errors import BadInputError


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear layer: its input is the penultimate representation."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInputError("the model has no nn.Linear layer whose input could serve as its representation")
    return linears[-1]


def penultimate_features(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """The activations entering the model's last linear layer, (n, d), computed without gradients. Spectral
    signatures and activation clustering both read this layer (Tran et al. 2018; Chen et al. 2018)."""
    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].detach())
    )
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1)
