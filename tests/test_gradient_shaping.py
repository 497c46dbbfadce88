"""Gradient shaping (Hong et al. 2020): what a poisoned minority of the digits training set achieves with and
without clipped, noised per-example gradients, and the bad input it refuses before training."""

from __future__ import annotations

import functools
import math
import pickle

import backdoor_victims as victims
import pytest
import torch
from seed_figures import SEEDS, median_figures

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import measure_backdoor
from aisec.attacks.poisoning.label_flip import random_label_flip
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import accuracy, fit
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.gradient_shaping import (
    GradientShapingConfig,
    fit_with_gradient_shaping,
    train_with_gradient_shaping,
)
from aisec.demo.models import digits_cnn

pytestmark = pytest.mark.training  # its figures depend on trained models

TRIGGER = victims.PATCH


def _badnets(digits, rate: float) -> LabelledData:
    return plant_backdoor(digits.train, TRIGGER, 0, rate, generator=torch.Generator().manual_seed(1)).data


def _cnn(seed: int = 0) -> torch.nn.Module:
    return build_model(digits_cnn, seed)


def one_percent_figures(seed: int) -> dict[str, float]:
    """A 1 % BadNets training set (13 of 1257 samples): the plain victim, and the same set trained with the
    default gradient shaping, both from the seed (one torch thread, as the tests run it)."""
    test, poisoned = victims.digits().test, victims.badnets_set(seed, 0.01)
    plain = measure_backdoor(victims.badnets_victim(seed, 0.01), test, TRIGGER, 0)
    result = train_with_gradient_shaping(_cnn(seed), poisoned.data, seed=seed)
    shaped = measure_backdoor(result.model, test, TRIGGER, 0)
    return {
        "plain_success": plain.attack_success,
        "shaped_success": shaped.attack_success,
        "shaped_clean": shaped.clean_accuracy,
        "epsilon": result.epsilon,
    }


def larger_fraction_figures(seed: int) -> dict[str, float]:
    """BadNets at 5 and 10 % and random flips of 20 % of the labels, plain and with the default gradient
    shaping, all drawn from the seed (one torch thread)."""
    test, out = victims.digits().test, {}
    for rate in (0.05, 0.1):
        plain = measure_backdoor(victims.badnets_victim(seed, rate), test, TRIGGER, 0)
        result = train_with_gradient_shaping(_cnn(seed), victims.badnets_set(seed, rate).data, seed=seed)
        shaped = measure_backdoor(result.model, test, TRIGGER, 0)
        out |= {
            f"plain_success@{rate}": plain.attack_success,
            f"shaped_success@{rate}": shaped.attack_success,
            f"shaped_clean@{rate}": shaped.clean_accuracy,
        }
    flips = random_label_flip(victims.digits().train, 0.2, generator=torch.Generator().manual_seed(seed))
    out["plain_clean"] = accuracy(victims.clean_model(seed), test)
    out["plain_flips@0.2"] = accuracy(victims.train(flips.data, seed), test)
    shaped_flips = train_with_gradient_shaping(_cnn(seed), flips.data, seed=seed).model
    out["shaped_flips@0.2"] = accuracy(shaped_flips, test)
    return out


def figures(seed: int) -> dict[str, float]:
    return one_percent_figures(seed) | larger_fraction_figures(seed)


def test_gradient_shaping_cuts_a_one_percent_backdoor():
    """Seed study (bench/seed_study.py test_gradient_shaping --seeds 0-4 --threads 1, under native AVX-512,
    default and AVX2 kernels, n=15): plain training 0.88-0.99 attack success (median 0.94); gradient shaping
    0.11-0.38 (0.27) at a clean accuracy of 0.91-0.94; epsilon 30.3 (the settings fix it). Asserted on the
    median of three seeds (0.288 on every kernel set)."""
    runs = [one_percent_figures(seed) for seed in SEEDS]
    median = median_figures(runs)
    assert median["plain_success"] > 0.8
    assert median["shaped_success"] < 0.4
    assert median["shaped_clean"] >= 0.90
    assert 25 < median["epsilon"] < 35  # a weak guarantee, reported only as a side figure


def test_shaped_model_and_its_accounting(digits):
    poisoned = _badnets(digits, 0.01)
    result = train_with_gradient_shaping(_cnn(), poisoned, GradientShapingConfig(epochs=2), seed=0)
    assert not result.model.training
    assert result.delta == pytest.approx(1 / (10 * len(poisoned)))
    assert result.sample_rate == pytest.approx(1 / 10)  # ceil(1257 / 128) Poisson batches per epoch


def test_recipe_is_picklable_seeded_and_leaves_the_global_generator_alone(digits):
    small = digits.train.subset(256, seed=0)
    fit = pickle.loads(pickle.dumps(functools.partial(fit_with_gradient_shaping, epochs=1, batch_size=32)))
    state = torch.random.get_rng_state()
    first, second = fit(_cnn(), small, seed=3), fit(_cnn(), small, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not first.training
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = fit(_cnn(), small, seed=4)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -0.5}, "noise_multiplier"),
        ({"lr": math.nan}, "lr"),
        ({"max_grad_norm": math.inf}, "max_grad_norm"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_settings(settings, field):
    with pytest.raises(BadInputError, match=field):
        GradientShapingConfig(**settings)


def test_bad_data_fails_before_training(digits):
    small = digits.train.subset(100, seed=0)
    with pytest.raises(BadInputError, match="batch_size 128 exceeds the 100 samples"):
        train_with_gradient_shaping(_cnn(), small)
    x = small.x.clone()
    x[3, 0, 2, 2] = math.nan
    with pytest.raises(DataError, match="NaN"):
        train_with_gradient_shaping(_cnn(), LabelledData(x, small.y), GradientShapingConfig(batch_size=32))
    with pytest.raises(DataError, match="labels range up to 10"):
        y = small.y.clone()
        y[0] = 10
        train_with_gradient_shaping(_cnn(), LabelledData(small.x, y), GradientShapingConfig(batch_size=32))
    with pytest.raises(DataError, match="cannot take inputs of shape"):
        train_with_gradient_shaping(
            _cnn(), LabelledData(small.x.flatten(1), small.y), GradientShapingConfig(batch_size=32)
        )


# The figure (seed 0; model seed 0, poison generator seed 1). Attack success / clean accuracy under BadNets
# (square patch, target 0) and clean accuracy under random label flips, as measured:
#
#   training                  clean   BadNets 1%    5%            10%           flips 10%  20%    epsilon
#   plain Adam                0.987   0.940/0.987   1.000/0.989   1.000/0.983   0.939      0.800  -
#   shaping sigma 0.3, C 1    0.961   0.527/0.963   0.988/0.954   1.000/0.941   0.967      0.961  261
#   shaping sigma 0.7, C 1    0.943   0.208/0.952   0.979/0.937   0.996/0.924   0.948      0.933  30.3
#   shaping sigma 1.0, C 1    0.924   0.109/0.924   0.979/0.924   0.998/0.907   0.926      0.911  14.3
#   shaping sigma 0.7, C 0.1  0.943   0.171/0.946   0.982/0.930   0.998/0.919   0.943      0.924  30.3
#
# As Hong et al. found, shaping blunts a small poisoned fraction (1 %) and does nothing against 5 % or 10 %
# of a backdoor, at a cost of 3-6 points of clean accuracy; against random label flips its bounded per-example
# influence keeps 91-96 % where plain training falls to 80 % at 20 %.
SETTINGS = {
    "sigma 0.3": GradientShapingConfig(noise_multiplier=0.3),
    "default": GradientShapingConfig(),
    "sigma 1.0": GradientShapingConfig(noise_multiplier=1.0),
    "clip 0.1": GradientShapingConfig(max_grad_norm=0.1),
}
# setting: (most attack success at 1 % BadNets, least clean accuracy there, least accuracy under 20 % flips)
EXPECTED = {
    "sigma 0.3": (0.75, 0.92, 0.92),
    "default": (0.35, 0.90, 0.89),
    "sigma 1.0": (0.25, 0.87, 0.87),
    "clip 0.1": (0.35, 0.90, 0.88),
}


@pytest.mark.slow
def test_plain_training_learns_every_poison(digits):
    row = {
        rate: measure_backdoor(fit(_cnn(), _badnets(digits, rate), seed=0), digits.test, TRIGGER, 0)
        for rate in (0.01, 0.05, 0.1)
    }
    flipped = random_label_flip(digits.train, 0.2, generator=torch.Generator().manual_seed(1)).data
    flips = accuracy(fit(_cnn(), flipped, seed=0), digits.test)
    print(
        "plain Adam: BadNets (attack success, clean accuracy)",
        {rate: (round(m.attack_success, 3), round(m.clean_accuracy, 3)) for rate, m in row.items()},
        "accuracy under 20 % flips",
        round(flips, 3),
    )
    assert all(m.attack_success > 0.9 and m.clean_accuracy > 0.97 for m in row.values())
    assert flips < 0.85


@pytest.mark.slow
@pytest.mark.parametrize("name", SETTINGS)
def test_gradient_shaping_blunts_only_a_small_poisoned_fraction(digits, name):
    config, (max_asr, min_clean, min_flipped) = SETTINGS[name], EXPECTED[name]
    row, epsilon = {}, None
    for rate in (0.01, 0.05, 0.1):
        shaped = train_with_gradient_shaping(_cnn(), _badnets(digits, rate), config)
        row[rate] = measure_backdoor(shaped.model, digits.test, TRIGGER, 0)
        epsilon = epsilon or shaped.epsilon
    flipped = random_label_flip(digits.train, 0.2, generator=torch.Generator().manual_seed(1)).data
    flips = accuracy(train_with_gradient_shaping(_cnn(), flipped, config).model, digits.test)
    print(
        f"shaping {name}: BadNets (attack success, clean accuracy)",
        {rate: (round(m.attack_success, 3), round(m.clean_accuracy, 3)) for rate, m in row.items()},
        "accuracy under 20 % flips",
        round(flips, 3),
        "epsilon",
        round(epsilon, 1),
    )
    assert row[0.01].attack_success < max_asr and row[0.01].clean_accuracy >= min_clean
    # a larger poisoned fraction outweighs the clipping and the noise
    assert row[0.05].attack_success > 0.9 and row[0.1].attack_success > 0.9
    assert flips >= min_flipped
