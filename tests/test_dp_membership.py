"""Membership inference against a DP-SGD model: the overfit digits MLP of tests/test_membership.py (200
members, 1,000 non-members, the attacker's 597 population digits, same seeds) trained instead with
`train_dp` at epsilon EPS, attacked by LiRA with shadow models trained with the same DP recipe.

Without DP (tests/test_membership.py), LiRA online reaches AUC 0.683-0.713 and TPR 2.0-4.0 % / 7.0-11.5 % at
0.1 % / 1 % FPR. With DP-SGD at epsilon 4 (delta 1/(10 n) = 5e-4), the same attack is at chance at low FPR
(TPR 0-1.0 % / 0.5-3.5 %, AUC 0.495-0.558), for 14-18 points of test accuracy (0.747-0.795 against
0.925-0.935); ranges over seeds 0-4 and three kernel sets (the seed studies in the tests' docstrings).

Other budgets (16 DP shadow models, seeds 0-2, native kernels: `figures` with DP_RECIPE's target_epsilon
changed), LiRA online AUC / TPR@0.1% / TPR@1%, DP test accuracy:
  epsilon 1: 0.496-0.554 / 0-0.005 / 0.010-0.025, accuracy 0.195-0.298 (at chance, but useless)
  epsilon 8: 0.511-0.559 / 0 / 0.005-0.030, accuracy 0.845-0.870; LiRA offline AUC 0.584-0.613, loss
             0.563-0.592: still nothing at low FPR, a little more on average than at epsilon 4
Recipe: SGD with momentum 0.9, lr 0.1, 30 epochs, batch size 100 (Poisson sample rate 0.5), clipping norm 1.
16 shadow models is the fewest with which online LiRA sees every record in two of them (pool of 1,797
records, 200 per model); a DP shadow model takes under a second once the noise multiplier, which every
shadow model of one recipe shares, has been found (1-3 s, cached).
"""

from __future__ import annotations

import functools

import pytest
from membership_split import MEMBERS, SPEC, MembershipSplit, membership_split, mlp
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.attacks.inference.membership import (
    ShadowModels,
    ShadowTrainer,
    lira,
    loss_threshold_attack,
    train_shadows,
)
from aisec.core.seeding import build_model
from aisec.core.training import accuracy, fit
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.dp_training import DPTrainingResult, fit_with_dp, train_dp
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training  # its figures depend on trained models

EPS = 4.0
DP_RECIPE = {"target_epsilon": EPS, "epochs": 30, "lr": 0.1, "batch_size": 100}


SHADOW_SEED = 0


def _dp_victim(split: MembershipSplit, seed: int) -> DPTrainingResult:
    return train_dp(build_model(mlp, seed), split.training_set, seed=seed, **DP_RECIPE)


def _plain_victim(split: MembershipSplit, seed: int) -> nn.Module:
    return fit(build_model(mlp, seed), split.training_set, epochs=100, seed=seed)


def _test_accuracy(split: MembershipSplit, model: nn.Module) -> float:
    return accuracy(model, LabelledData(split.x[~split.members], split.y[~split.members]))


def _shadows(split: MembershipSplit, target: TorchTarget, n_shadows: int, seed: int) -> ShadowModels:
    """Shadow models trained by the victim's DP recipe on halves of the records and the population: they do
    not depend on the victim, so one set serves every victim of the split."""
    trainer = ShadowTrainer(mlp, functools.partial(fit_with_dp, **DP_RECIPE))
    return train_shadows(
        target, split.x, split.y, trainer, population=split.population, n_shadows=n_shadows,
        train_size=MEMBERS, seed=seed,
    )  # fmt: skip


def _attack(split: MembershipSplit, victim: nn.Module, shadows: ShadowModels) -> dict[str, float]:
    attacks = {
        "loss": loss_threshold_attack,
        "LiRA online": functools.partial(lira, shadows=shadows),
        "LiRA offline": functools.partial(lira, shadows=shadows, online=False),
    }
    figures = {}
    for name, attack in attacks.items():
        result = attack(TorchTarget(victim, SPEC), split.x, split.y, members=split.members)
        figures |= {f"{name} AUC": result.auc, f"{name} TPR@0.1%": result.tpr_at[0.001],
                    f"{name} TPR@1%": result.tpr_at[0.01]}  # fmt: skip
    return figures


def _accuracies(split: MembershipSplit, dp: nn.Module, plain: nn.Module) -> dict[str, float]:
    with_dp, without = _test_accuracy(split, dp), _test_accuracy(split, plain)
    return {"DP test accuracy": with_dp, "plain test accuracy": without, "accuracy paid": without - with_dp}


def figures(seed: int) -> dict[str, float]:
    """The DP and plain victims trained from `seed`, attacked with 16 DP shadow models trained from `seed`."""
    split = membership_split()
    dp, plain = _dp_victim(split, seed), _plain_victim(split, seed)
    shadows = _shadows(split, TorchTarget(dp.model, SPEC), 16, seed)
    return _accuracies(split, dp.model, plain) | _attack(split, dp.model, shadows)


class Setting:
    """tests/test_membership.py's split; per seed of SEEDS, the DP victim and the same architecture trained
    without DP."""

    def __init__(self) -> None:
        self.split = split = membership_split()
        self.dp = [_dp_victim(split, seed) for seed in SEEDS]
        self.plain = [_plain_victim(split, seed) for seed in SEEDS]

    def target(self) -> TorchTarget:
        return TorchTarget(self.dp[0].model, SPEC)


@pytest.fixture(scope="module")
def setting() -> Setting:
    return Setting()


def test_dp_model_spends_its_budget_and_pays_in_accuracy(setting: Setting) -> None:
    """Seed study (bench/seed_study.py test_dp_membership, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15; each seed trains the DP and plain victims and 16 DP shadow models), min/median/max: DP test
    accuracy 0.747/0.765/0.795 against 0.925/0.930/0.935 without DP, accuracy paid 0.140/0.165/0.179. Asserted
    on the median of three seeds."""
    for dp in setting.dp:  # the accountant's figure: the same for every seed
        assert EPS - 0.1 <= dp.epsilon <= EPS
        assert dp.delta == pytest.approx(1 / (10 * MEMBERS))
    runs = [
        _accuracies(setting.split, dp.model, plain)
        for dp, plain in zip(setting.dp, setting.plain, strict=True)
    ]
    median = median_figures(runs, label="victim seed")
    assert median["plain test accuracy"] >= 0.9
    assert median["DP test accuracy"] >= 0.7  # still a useful model
    assert 0.1 <= median["accuracy paid"] <= 0.25


@pytest.mark.parametrize("n_shadows", [16, pytest.param(32, marks=pytest.mark.slow)])
def test_lira_is_at_chance_on_the_dp_model(setting: Setting, n_shadows: int) -> None:
    """Seed study (bench/seed_study.py test_dp_membership, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15; each seed trains the DP and plain victims and 16 DP shadow models), AUC / TPR@0.1% /
    TPR@1%, min/median/max:

      LiRA online   0.495/0.533/0.558   0/0/0.010   0.005/0.015/0.035
      LiRA offline  0.539/0.572/0.602   0/0/0.010   0.010/0.020/0.025
      loss          0.543/0.580/0.588   0/0/0.010   0/0.015/0.025

    Without DP (tests/test_membership.py) LiRA online finds 2.0-4.0 % of the members at 0.1 % FPR. At low FPR
    every attack is at chance; on average a weak signal is left (offline LiRA and the loss attack near 0.58).
    Asserted on the median of three victims, with one shared set of shadow models (the slow variant with 32
    shadow models against the same thresholds)."""
    shadows = _shadows(setting.split, setting.target(), n_shadows, SHADOW_SEED)
    print(f"\nepsilon {setting.dp[0].epsilon:.3f}, {n_shadows} DP shadow models")
    median = median_figures(
        [_attack(setting.split, dp.model, shadows) for dp in setting.dp], label="victim seed"
    )
    assert median["LiRA online AUC"] < 0.58
    for attack in ("LiRA offline", "loss"):
        assert median[f"{attack} AUC"] < 0.62
    for attack in ("LiRA online", "LiRA offline", "loss"):
        assert median[f"{attack} TPR@0.1%"] <= 0.015 and median[f"{attack} TPR@1%"] <= 0.04
