"""The typed result every extraction attack returns, and the linear model the equation solvers extract."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aisec.targets.base import Access, InputSpec


class LinearModel(nn.Module):
    """Logits W x + b of each sample flattened to its d features, computed in the weights' precision (float64)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1).to(self.linear.weight.dtype))


@dataclass(frozen=True)
class ExtractionResult:
    """An extracted model and what it cost.

    method:  the attack ("equation_solving", "adaptive_equation_solving", "boundary_equation_solving",
             "learning/natural", "learning/synthetic", "learning/active")
    model:   a torch module computing the extracted model's logits on inputs of shape (n, *spec.shape)
    queries: samples the attack had the victim evaluate
    access:  what the attack read from the victim (scores or labels)
    weight, bias: the extracted linear model, (num_classes, d) and (num_classes,), for the equation solvers; only
             differences between rows are identifiable from scores (and, from labels, only up to a positive scale)
    """

    method: str
    model: nn.Module
    queries: int
    spec: InputSpec
    access: Access
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The extracted model's predicted labels for a batch (no victim query)."""
        with torch.no_grad():
            return self.model(x).argmax(1)
