"""The demo's model: a small CNN for the built-in digits set, trained in seconds on 2 CPU cores by
`aisec.core.training.fit`."""

from __future__ import annotations

from torch import nn


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
