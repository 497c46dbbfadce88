"""Small models for the demo and the tests, trained in seconds on 2 CPU cores."""

from __future__ import annotations

import torch
from torch import nn

from aisec.data.dataset import LabelledData


def digits_cnn() -> nn.Module:
    """A 2-conv CNN for 8x8 digits (input (n, 1, 8, 8) in [0, 1]), 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_classifier(
    model: nn.Module,
    data: LabelledData,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Plain Adam training with a seeded data order; returns the model in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
    return model.eval()  # trusted: nn.Module.eval() (inference mode), not eval()


def accuracy(model: nn.Module, data: LabelledData) -> float:
    with torch.no_grad():
        return float((model(data.x).argmax(1) == data.y).float().mean())
