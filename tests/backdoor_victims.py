"""BadNets victims shared by the model-side backdoor tests (Neural Cleanse, STRIP, fine-pruning) and their seed
studies (bench/seed_study.py): the digits CNN trained with the default recipe on a training set whose poisoned
samples, like its initial weights and batch order, are drawn from one seed. Each victim is trained once per
process and shared, so several tests can assert over several seeds at the cost of one."""

from __future__ import annotations

import functools

import torch
from torch import nn

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.triggers import PatchTrigger
from aisec.attacks.poisoning.result import PoisonedData
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.data.dataset import LabelledData
from aisec.demo.models import digits_cnn

PATCH = PatchTrigger(size=3, pattern="square")
TARGET = 0


@functools.cache
def digits() -> Split:
    return load_builtin("digits", seed=0)


@functools.cache
def badnets_set(seed: int, rate: float = 0.1) -> PoisonedData:
    """The digits training set with `rate` of it stamped with PATCH and relabelled TARGET."""
    return plant_backdoor(digits().train, PATCH, TARGET, rate, generator=torch.Generator().manual_seed(seed))


@functools.cache
def badnets_victim(seed: int, rate: float = 0.1) -> nn.Module:
    """The digits CNN trained with the default recipe on `badnets_set(seed, rate)`."""
    return train(badnets_set(seed, rate).data, seed)


def train(data: LabelledData, seed: int) -> nn.Module:
    """The victim's recipe: the digits CNN, initial weights and batch order drawn from `seed`."""
    return fit(build_model(digits_cnn, seed), data, seed=seed)


@functools.cache
def clean_model(seed: int) -> nn.Module:
    return train(digits().train, seed)


@functools.cache
def halves(seed: int = 0) -> tuple[LabelledData, LabelledData]:
    """The defender's 270 clean test samples and the other 270, which every figure is measured on."""
    test = digits().test
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    own, rest = order[:270], order[270:]
    return (
        LabelledData(test.x[own], test.y[own], "defender"),
        LabelledData(test.x[rest], test.y[rest], "evaluation"),
    )
