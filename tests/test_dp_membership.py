"""Membership inference against a DP-SGD model: the overfit digits MLP of tests/test_membership.py (200
members, 1,000 non-members, the attacker's 597 population digits, same seeds) trained instead with
`train_dp` at epsilon EPS, attacked by LiRA with shadow models trained with the same DP recipe.

Without DP (tests/test_membership.py), LiRA online reaches AUC 0.721 and TPR 6.5 % / 13.0 % at 0.1 % / 1 %
FPR, at least 5x the loss attack's. With DP-SGD at epsilon 4 (delta 1/(10 n) = 5e-4), the same attack is at
chance, for 12 points of test accuracy (0.813 against 0.933).

Measured with 32 shadow models (data seeds 0, 1, 2; victim seed 12345, shadow seed 1), LiRA online AUC /
TPR@0.1% / TPR@1%, DP test accuracy (0.925-0.943 without DP):
  epsilon 1: 0.493, 0.533, 0.490 / 0-0.005 / 0-0.015, accuracy 0.256-0.301 (at chance, but useless)
  epsilon 4: 0.525, 0.554, 0.538 / 0 / 0.015-0.020, accuracy 0.800-0.816 (data seed 3: 0.528 / 0.010 /
             0.015, accuracy 0.761)
  epsilon 8: 0.558, 0.565, 0.582 / 0-0.010 / 0.015-0.035, accuracy 0.867-0.877; LiRA offline AUC 0.573-0.622:
             no longer at chance
Recipe: SGD with momentum 0.9, lr 0.1, 30 epochs, batch size 100 (Poisson sample rate 0.5), clipping norm 1.
16 shadow models is the fewest with which online LiRA sees every record in two of them (pool of 1,797
records, 200 per model); a DP shadow model takes under a second once the noise multiplier, which every
shadow model of one recipe shares, has been found (1-3 s, cached).
"""

from __future__ import annotations

import functools

import pytest
import torch
from membership_split import MEMBERS, SPEC, membership_split, mlp
from torch import nn

from aisec.attacks.inference.membership import (
    MembershipResult,
    ShadowTrainer,
    lira,
    loss_threshold_attack,
    train_shadows,
)
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.dp_training import fit_with_dp, train_dp
from aisec.targets.torch_target import TorchTarget

torch.set_num_threads(1)
EPS = 4.0
DP_RECIPE = {"target_epsilon": EPS, "epochs": 30, "lr": 0.1, "batch_size": 100}


class Setting:
    """tests/test_membership.py's split; the DP victim, and the same architecture trained without DP."""

    def __init__(self) -> None:
        split = membership_split()
        self.x, self.y, self.members, self.population = split.x, split.y, split.members, split.population
        train = LabelledData(self.x[:MEMBERS], self.y[:MEMBERS])
        self.dp = train_dp(build_model(mlp, 12345), train, seed=12345, **DP_RECIPE)
        self.plain = fit(build_model(mlp, 12345), train, epochs=100, seed=12345)

    def target(self) -> TorchTarget:
        return TorchTarget(self.dp.model, SPEC)

    def test_accuracy(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(self.x[~self.members]).argmax(1) == self.y[~self.members]).float().mean())


@pytest.fixture(scope="module")
def setting() -> Setting:
    return Setting()


def _line(result: MembershipResult) -> str:
    low, one = result.tpr_at[0.001], result.tpr_at[0.01]
    return f"{result.attack}: AUC {result.auc:.3f}, TPR@0.1% {low:.3f}, TPR@1% {one:.3f}"


def _attack(setting: Setting, n_shadows: int) -> tuple[MembershipResult, ...]:
    trainer = ShadowTrainer(mlp, functools.partial(fit_with_dp, **DP_RECIPE))
    target = setting.target()
    shadows = train_shadows(
        target, setting.x, setting.y, trainer, population=setting.population, n_shadows=n_shadows,
        train_size=MEMBERS, seed=1,
    )  # fmt: skip
    results = tuple(
        attack(target, setting.x, setting.y, members=setting.members)
        for attack in (
            loss_threshold_attack,
            functools.partial(lira, shadows=shadows),
            functools.partial(lira, shadows=shadows, online=False),
        )
    )
    print(f"\nepsilon {setting.dp.epsilon:.3f}, {n_shadows} DP shadow models")
    for result in results:
        print(_line(result))
    return results


def test_dp_model_spends_its_budget_and_pays_in_accuracy(setting: Setting) -> None:
    dp, plain = setting.test_accuracy(setting.dp.model), setting.test_accuracy(setting.plain)
    print(f"\nepsilon {setting.dp.epsilon:.3f}: test accuracy {dp:.3f}, without DP {plain:.3f}")
    assert EPS - 0.1 <= setting.dp.epsilon <= EPS
    assert setting.dp.delta == pytest.approx(1 / (10 * MEMBERS))
    # The accuracy paid: measured 0.813 against 0.933 (data seed 0), 12 points; over data seeds 0-3,
    # 0.761-0.816 against 0.922-0.943.
    assert plain == pytest.approx(0.933)
    assert 0.78 <= dp <= plain - 0.08


@pytest.mark.parametrize("n_shadows", [16, pytest.param(32, marks=pytest.mark.slow)])
def test_lira_is_at_chance_on_the_dp_model(setting: Setting, n_shadows: int) -> None:
    # Measured (data seed 0), AUC / TPR@0.1% / TPR@1%: loss 0.558 / 0 / 0.015; with 16 shadows LiRA online
    # 0.536 / 0 / 0, offline 0.548 / 0 / 0.005; with 32, online 0.525 / 0 / 0.020, offline 0.548 / 0 / 0.015.
    # Over data seeds 0-3 (16 and 32 shadows): loss 0.524-0.563 / 0 / 0.005-0.015; LiRA online 0.519-0.554
    # / 0-0.015 / 0-0.030; offline 0.526-0.583 / 0-0.020 / 0-0.030. Without DP: LiRA online 0.721 / 0.065
    # / 0.130, loss 0.604 / 0.010 / 0.015. The thresholds below hold on all four seeds.
    loss, online, offline = _attack(setting, n_shadows)
    assert online.auc < 0.56 and online.tpr_at[0.001] <= 0.015 and online.tpr_at[0.01] <= 0.03
    assert loss.auc < 0.57 and loss.tpr_at[0.001] <= 0.005 and loss.tpr_at[0.01] <= 0.02
    assert offline.auc < 0.59 and offline.tpr_at[0.001] <= 0.02 and offline.tpr_at[0.01] <= 0.03
