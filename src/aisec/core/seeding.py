"""Reproducible randomness for what cannot take an explicit generator.

aisec's own code draws every random number from an explicit `torch.Generator`. Two things in torch cannot take
one: a module's constructors draw its initial weights from torch's global generator, and dropout draws its masks
from it during training. `global_rng(seed)` runs such a block with the global generator seeded and restores the
caller's state afterwards, so library code never leaves the global generator changed; `build_model` is the one
way aisec builds a model from a factory. This module is the only place in the library that seeds torch's global
generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

M = TypeVar("M")

SEED_RANGE = 2**31 - 1


@contextmanager
def global_rng(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators (CPU, and CUDA when it is initialised) seeded to `seed`;
    the caller's generator states are restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(factory: Callable[[], M], seed: int) -> M:
    """`factory()` with its initial weights drawn from `seed`: the same seed builds the same model whatever ran
    before (test order, other models, thread count)."""
    with global_rng(seed):
        return factory()


def draw_seed(generator: torch.Generator) -> int:
    """A seed for a sub-task (a shadow model, one retraining), drawn from `generator`."""
    return int(torch.randint(SEED_RANGE, (1,), generator=generator))
