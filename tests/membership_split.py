"""The membership-inference setting the tests share: 1,797 digits shuffled with seed 0; the first 200 are the
members a 1-hidden-layer MLP is trained on, the next 1,000 the non-members, the other 597 the attacker's
population. 1,000 non-members make a 0.1 % FPR a real operating point (one false positive allowed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aisec.data.builtin import load_builtin
from aisec.data.dataset import LabelledData
from aisec.targets.base import InputSpec

SPEC = InputSpec((1, 8, 8), 10)
MEMBERS, NON_MEMBERS = 200, 1000


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))


@dataclass(frozen=True)
class MembershipSplit:
    x: torch.Tensor  # the records under attack: members first
    y: torch.Tensor
    members: torch.Tensor  # bool: the truth
    population: LabelledData

    @property
    def training_set(self) -> LabelledData:
        return LabelledData(self.x[:MEMBERS], self.y[:MEMBERS], "members")


def membership_split() -> MembershipSplit:
    split = load_builtin("digits", seed=0)
    x_all, y_all = torch.cat([split.train.x, split.test.x]), torch.cat([split.train.y, split.test.y])
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
    x_all, y_all = x_all[order], y_all[order]
    n = MEMBERS + NON_MEMBERS
    return MembershipSplit(
        x_all[:n], y_all[:n], torch.arange(n) < MEMBERS, LabelledData(x_all[n:], y_all[n:], "population")
    )
