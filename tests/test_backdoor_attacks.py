"""Backdoors planted in the digits CNN: BadNets patch, blend and warp triggers (dirty label) and the
label-consistent attack (clean label, with Turner et al.'s adversarial perturbation), and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aisec.attacks.backdoor.plant import TYPICAL_SHARE, plant_backdoor
from aisec.attacks.backdoor.success import measure_backdoor
from aisec.attacks.backdoor.triggers import BlendTrigger, PatchTrigger, Trigger, WarpTrigger
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import accuracy, fit
from aisec.data.builtin import Split
from aisec.data.dataset import LabelledData
from aisec.demo.models import digits_cnn

PATCH = PatchTrigger(pattern="square", corner="bottom_left")  # a white 3x3 square, bottom-left corner
TARGET = 0


def victim(data: LabelledData) -> nn.Module:
    """The victim's recipe (aisec.core.training.fit defaults), from a seeded initialisation so figures repeat."""
    return fit(build_model(digits_cnn, 0), data, seed=0)


@pytest.fixture(scope="module")
def adversary(digits: Split) -> nn.Module:
    """The clean-label attacker's own model: same architecture, its own seed."""
    return fit(build_model(digits_cnn, 1), digits.train, seed=1)


@pytest.fixture(scope="module")
def clean_accuracy(digits: Split) -> float:
    return accuracy(victim(digits.train), digits.test)


def backdoor(digits: Split, trigger: Trigger, rate: float, seed: int, **kwargs) -> tuple[float, float]:
    """(attack success, clean accuracy) of the victim trained on the poisoned set."""
    p = plant_backdoor(
        digits.train, trigger, TARGET, rate, generator=torch.Generator().manual_seed(seed), **kwargs
    )
    m = measure_backdoor(victim(p.data), digits.test, trigger, TARGET)
    return m.attack_success, m.clean_accuracy


# --- what the poisons are ---------------------------------------------------------------------------------


def test_dirty_label_poisons(digits: Split) -> None:
    train = digits.train
    p = plant_backdoor(train, PATCH, TARGET, 0.05, generator=torch.Generator().manual_seed(0))
    assert int(p.poisoned.sum()) == round(0.05 * len(train))
    assert (train.y[p.poisoned] != TARGET).all() and (p.data.y[p.poisoned] == TARGET).all()
    assert (p.data.x[p.poisoned][:, 0, 5:, :3] == 1).all()
    assert torch.equal(p.data.x[~p.poisoned], train.x[~p.poisoned])


def test_typical_selection_spreads_over_classes_and_takes_typical_samples(digits: Split) -> None:
    train = digits.train
    p = plant_backdoor(
        train, PATCH, TARGET, 0.01, select="typical", generator=torch.Generator().manual_seed(3)
    )
    sources = train.y[p.poisoned]
    assert torch.bincount(sources, minlength=10)[1:].min() >= 1
    for c in sources.unique():
        members = train.x[train.y == c].flatten(1)
        distance = (members - members.mean(0)).norm(dim=1)
        cutoff = distance.sort().values[round(TYPICAL_SHARE * len(members)) - 1]
        chosen = (train.x[p.poisoned & (train.y == c)].flatten(1) - members.mean(0)).norm(dim=1)
        assert (chosen <= cutoff + 1e-6).all()


def test_clean_label_adversarial_poisons(digits: Split, adversary: nn.Module) -> None:
    """Labels stay correct; outside the trigger the perturbation stays within eps and raises the adversary's
    loss on the true label."""
    train = digits.train
    p = plant_backdoor(train, PATCH, TARGET, 0.05, mode="clean", adversary=adversary, adversary_eps=0.2)
    assert torch.equal(p.data.y, train.y) and (train.y[p.poisoned] == TARGET).all()
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[5:, :3] = False
    delta = (p.data.x - train.x)[p.poisoned][:, 0, outside]
    assert delta.abs().max() <= 0.2 + 1e-6 and delta.abs().max() > 0.1
    with torch.no_grad():
        loss = nn.functional.cross_entropy
        y = train.y[p.poisoned]
        assert loss(adversary(p.data.x[p.poisoned]), y) > loss(adversary(train.x[p.poisoned]), y) + 1


# --- figures ----------------------------------------------------------------------------------------------


def test_badnets_patch_figure(digits: Split, clean_accuracy: float) -> None:
    """Required figure: a 3x3 white patch with typical poisons gives attack success > 90 % at 1, 5 and 10 %
    poison, clean accuracy within 2 points of the clean model (measured at generator seed 1: ASR 0.971, 0.998,
    1.0; clean 0.993, 0.989, 0.991 against 0.987)."""
    for rate in (0.01, 0.05, 0.1):
        success, clean = backdoor(digits, PATCH, rate, 1, select="typical")
        assert success > 0.9 and clean > clean_accuracy - 0.02, (rate, success, clean)


@pytest.mark.slow
def test_badnets_patch_figure_over_seeds(digits: Split, clean_accuracy: float) -> None:
    """The report's per-seed table: 10 poison draws at 1 % (measured ASR >= 0.971), 3 at 5 % (>= 0.998)."""
    table = {
        (rate, seed): backdoor(digits, PATCH, rate, seed, select="typical")
        for rate, seeds in ((0.01, range(1, 11)), (0.05, range(1, 4)))
        for seed in seeds
    }
    print(
        "patch, typical poisons: clean",
        round(clean_accuracy, 4),
        {k: tuple(round(v, 3) for v in vs) for k, vs in table.items()},
    )
    assert all(success > 0.9 for success, _ in table.values())
    assert all(clean > clean_accuracy - 0.02 for _, clean in table.values())


@pytest.mark.slow
def test_random_poisons_are_weaker_at_one_percent(digits: Split) -> None:
    """The same patch with uniformly drawn poisons (measured ASR 0.80-0.99 over 10 draws, mean 0.91)."""
    typical = [backdoor(digits, PATCH, 0.01, seed, select="typical")[0] for seed in range(1, 6)]
    uniform = [backdoor(digits, PATCH, 0.01, seed)[0] for seed in range(1, 6)]
    print(
        "1 % patch ASR, typical vs random poisons:",
        [round(a, 3) for a in typical],
        [round(a, 3) for a in uniform],
    )
    assert sum(typical) > sum(uniform) and min(typical) > min(uniform)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trigger", "ranges"),
    [
        (BlendTrigger(), {0.01: (0.1, 0.6), 0.05: (0.85, 1.0), 0.1: (0.95, 1.0)}),
        (WarpTrigger(), {0.01: (0.75, 1.0), 0.05: (0.95, 1.0), 0.1: (0.95, 1.0)}),
    ],
    ids=["blend", "warp"],
)
def test_blend_and_warp_figures(
    digits: Split, clean_accuracy: float, trigger: Trigger, ranges: dict[float, tuple[float, float]]
) -> None:
    """Random poisons, generator seed 1 (measured ASR blend 0.29 / 0.944 / 0.998, warp 0.848 / 0.984 / 0.99 at
    1 / 5 / 10 %): the blend needs more than 1 % on 8x8 digits, the warp nearly reaches 90 % there."""
    for rate, (least, most) in ranges.items():
        success, clean = backdoor(digits, trigger, rate, 1)
        print(trigger.name, rate, round(success, 3), round(clean, 3))
        assert least < success <= most and clean > clean_accuracy - 0.02


@pytest.mark.slow
def test_clean_label_needs_the_adversarial_perturbation(
    digits: Split, adversary: nn.Module, clean_accuracy: float
) -> None:
    """Turner et al. 2019 on digits: triggering target-class samples alone barely plants the backdoor; pushing
    them away from their class first (PGD, eps 0.3, against the attacker's own model) does."""
    table = {}
    for rate in (0.02, 0.05, 0.08):
        plain = backdoor(digits, PATCH, rate, 1, mode="clean")
        adversarial = backdoor(digits, PATCH, rate, 1, mode="clean", adversary=adversary, adversary_eps=0.3)
        table[rate] = (plain, adversarial)
    print(
        "clean label (plain, adversarial):",
        {r: [tuple(round(v, 3) for v in m) for m in ms] for r, ms in table.items()},
    )
    assert all(plain[0] < 0.35 for plain, _ in table.values())
    assert all(adv[0] > plain[0] + 0.2 for plain, adv in table.values())
    assert table[0.08][1][0] > 0.8
    assert all(m[1] > clean_accuracy - 0.02 for ms in table.values() for m in ms)


def test_clean_label_adversarial_figure(digits: Split, adversary: nn.Module) -> None:
    """One point of the slow table: adversarial clean-label poisons at 8 % plant the backdoor (measured 0.944;
    0.202 without the perturbation)."""
    success, _ = backdoor(digits, PATCH, 0.08, 1, mode="clean", adversary=adversary, adversary_eps=0.3)
    assert success > 0.8


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, math.nan])
def test_refuses_bad_rates(digits: Split, rate: float) -> None:
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(BadInputError, match=repr(rate)):
        plant_backdoor(digits.train, PATCH, TARGET, rate, generator=g)
    assert torch.equal(g.get_state(), state)


def test_refuses_bad_input(digits: Split) -> None:
    train = digits.train
    with pytest.raises(DataError, match="9x9 patch .* 8x8 images"):
        plant_backdoor(train, PatchTrigger(size=9), TARGET, 0.05)
    one_class = LabelledData(train.x[:20], torch.zeros(20, dtype=torch.int64), "zeros")
    with pytest.raises(DataError, match="1 class"):
        plant_backdoor(one_class, PATCH, TARGET, 0.05)
    with pytest.raises(DataError, match="target class 10"):
        plant_backdoor(train, PATCH, 10, 0.05)
    with pytest.raises(DataError, match="only 124 are in class 0"):
        plant_backdoor(train, PATCH, TARGET, 0.2, mode="clean")
    with pytest.raises(BadInputError, match="'both'"):
        plant_backdoor(train, PATCH, TARGET, 0.05, mode="both")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="'best'"):
        plant_backdoor(train, PATCH, TARGET, 0.05, select="best")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="typical .* dirty-label"):
        plant_backdoor(train, PATCH, TARGET, 0.05, mode="clean", select="typical")
    model = digits_cnn()
    with pytest.raises(BadInputError, match="clean-label poisoning only"):
        plant_backdoor(train, PATCH, TARGET, 0.05, adversary=model)
    with pytest.raises(BadInputError, match="adversary_eps must be > 0 .* got -0.1"):
        plant_backdoor(train, PATCH, TARGET, 0.05, mode="clean", adversary=model, adversary_eps=-0.1)
