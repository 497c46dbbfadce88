"""Label flipping and clean-label feature collision on the digits CNN: what the poisons are, what they cost the
victim, and bad input refused before any work."""

from __future__ import annotations

import math
import statistics

import backdoor_victims as victims
import pytest
import torch
from seed_figures import SEEDS, median_figures
from torch import nn

from aisec.attacks.poisoning.feature_collision import feature_collision, retrain_last_layer
from aisec.attacks.poisoning.label_flip import random_label_flip, targeted_label_flip
from aisec.core.errors import BadInputError, DataError
from aisec.core.training import accuracy
from aisec.data.builtin import Split
from aisec.data.dataset import LabelledData

pytestmark = pytest.mark.training  # its figures depend on trained models

BAD_RATES = [0, 1, -0.1, 1.5, math.nan]


def victim(data: LabelledData, seed: int = 0) -> nn.Module:
    """The victim's recipe (aisec.core.training.fit defaults), initial weights and batch order from `seed`."""
    return victims.train(data, seed)


@pytest.fixture(scope="module")
def clean_model() -> nn.Module:
    return victims.clean_model(0)


def class_accuracy(model: nn.Module, data: LabelledData, keep: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(data.x[keep]).argmax(1) == data.y[keep]).float().mean())


# --- label flipping ---------------------------------------------------------------------------------------


def test_random_flip_gives_other_classes_uniformly(digits: Split) -> None:
    train = digits.train
    p = random_label_flip(train, 0.9, generator=torch.Generator().manual_seed(0))
    changed = p.data.y != train.y
    assert torch.equal(changed, p.poisoned)
    assert int(changed.sum()) == round(0.9 * len(train))
    assert torch.equal(p.data.x, train.x)
    offsets = torch.bincount((p.data.y - train.y)[changed] % 10, minlength=10)
    assert offsets[0] == 0
    expected = int(changed.sum()) / 9
    assert ((offsets[1:] - expected).abs() < 0.3 * expected).all(), offsets.tolist()
    again = random_label_flip(train, 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.data.y, p.data.y)


def test_targeted_flip_relabels_only_the_source(digits: Split) -> None:
    train = digits.train
    p = targeted_label_flip(train, 0.05, source=8, target=1, generator=torch.Generator().manual_seed(0))
    assert int(p.poisoned.sum()) == round(0.05 * len(train))
    assert (train.y[p.poisoned] == 8).all() and (p.data.y[p.poisoned] == 1).all()
    assert torch.equal(p.data.y[~p.poisoned], train.y[~p.poisoned])


@pytest.mark.parametrize("rate", BAD_RATES)
def test_label_flip_refuses_bad_rates(digits: Split, rate: float) -> None:
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(BadInputError, match=repr(rate)):
        random_label_flip(digits.train, rate, generator=g)
    with pytest.raises(BadInputError, match=repr(rate)):
        targeted_label_flip(digits.train, rate, source=8, target=1, generator=g)
    assert torch.equal(g.get_state(), state)


def test_label_flip_refuses_bad_classes(digits: Split) -> None:
    one_class = LabelledData(digits.train.x[:20], torch.zeros(20, dtype=torch.int64), "ones")
    with pytest.raises(DataError, match="1 class"):
        random_label_flip(one_class, 0.1)
    with pytest.raises(BadInputError, match=r"same class \(3\)"):
        targeted_label_flip(digits.train, 0.05, source=3, target=3)
    with pytest.raises(DataError, match="source class 12"):
        targeted_label_flip(digits.train, 0.05, source=12, target=1)
    with pytest.raises(DataError, match="target class 12"):
        targeted_label_flip(digits.train, 0.05, source=1, target=12)
    with pytest.raises(DataError, match="only 122 are of source class 8"):
        targeted_label_flip(digits.train, 0.2, source=8, target=1)
    with pytest.raises(DataError, match="num_classes is 5"):
        random_label_flip(digits.train, 0.1, num_classes=5)


def label_flip_figures(seed: int) -> dict[str, float]:
    """Random flips of 40 % of the labels, and a targeted flip 8 -> 1 of 8 % of the set (83 % of the 8s), on
    the seed's victims."""
    digits, eights = victims.digits(), victims.digits().test.y == 8
    clean_model = victims.clean_model(seed)
    noisy = victim(
        random_label_flip(digits.train, 0.4, generator=torch.Generator().manual_seed(seed)).data, seed
    )
    flip = targeted_label_flip(
        digits.train, 0.08, source=8, target=1, generator=torch.Generator().manual_seed(seed)
    )
    flipped = victim(flip.data, seed)
    return {
        "random_flip_accuracy_lost@0.4": accuracy(clean_model, digits.test) - accuracy(noisy, digits.test),
        "eights_accuracy_lost": class_accuracy(clean_model, digits.test, eights)
        - class_accuracy(flipped, digits.test, eights),
        "others_accuracy_lost": class_accuracy(clean_model, digits.test, ~eights)
        - class_accuracy(flipped, digits.test, ~eights),
    }


def test_label_flip_figures() -> None:
    """Seed study (bench/seed_study.py test_poisoning_attacks --seeds 0-4 --threads 1, under native AVX-512,
    default and AVX2 kernels, n=15): random flips of 40 % cost 0.29-0.39 of test accuracy (median 0.33); the
    targeted flip costs the 8s 0.69-0.94 (0.87) and the other classes -0.01-0.02. Asserted on the median of
    three seeds."""
    runs = [label_flip_figures(seed) for seed in SEEDS]
    median = median_figures(runs)
    assert median["random_flip_accuracy_lost@0.4"] > 0.2
    assert median["eights_accuracy_lost"] > 0.5
    assert median["others_accuracy_lost"] < 0.03


def label_flip_sweep(seed: int) -> dict[str, float]:
    """The report's tables on the seed's victims: test accuracy under random flips of 5-40 % of the labels, and
    the accuracy on 8s and on the other classes under targeted flips 8 -> 1 of 2-8 % of the set."""
    digits = victims.digits()
    eights = digits.test.y == 8
    clean_model = victims.clean_model(seed)
    out = {
        "clean": accuracy(clean_model, digits.test),
        "clean_others": class_accuracy(clean_model, digits.test, ~eights),
    }
    for rate in (0.05, 0.1, 0.2, 0.4):
        flipped = random_label_flip(digits.train, rate, generator=torch.Generator().manual_seed(seed))
        out[f"random@{rate}"] = accuracy(victim(flipped.data, seed), digits.test)
    for rate in (0.02, 0.04, 0.06, 0.08):
        p = targeted_label_flip(
            digits.train, rate, source=8, target=1, generator=torch.Generator().manual_seed(seed)
        )
        model = victim(p.data, seed)
        out[f"eights@{rate}"] = class_accuracy(model, digits.test, eights)
        out[f"others_lost@{rate}"] = out["clean_others"] - class_accuracy(model, digits.test, ~eights)
    return out


@pytest.mark.slow
def test_label_flip_sweep() -> None:
    """The tables of the report: accuracy vs fraction flipped (random), source-class accuracy (targeted).
    Seed study (bench/seed_study.py test_poisoning_attacks --seeds 0-4 --threads 1, under native AVX-512,
    default and AVX2 kernels, n=15): clean accuracy 0.981-0.996; random flips of 5 / 10 / 20 / 40 % leave
    0.933-0.972 / 0.887-0.937 / 0.774-0.852 / 0.598-0.693; targeted flips of 2 / 4 / 6 / 8 % of the set leave
    the 8s 0.52-0.87 / 0.44-0.77 / 0.06-0.64 / 0.04-0.27, and cost the other classes -0.010..0.033 (median
    0.004). A single run can lose 0.033 there (seed 0 at 2 %, native kernels), so the other classes' loss is
    asserted, like the rest, on the median of three seeds (at most 0.020 on every kernel set)."""
    runs = [label_flip_sweep(seed) for seed in SEEDS]
    median = median_figures(runs)
    for seed, run in zip(SEEDS, runs, strict=True):
        print(f"seed {seed}:", {name: round(value, 3) for name, value in run.items()})
    print("median:", {name: round(value, 3) for name, value in median.items()})
    random_rates, targeted_rates = (0.05, 0.1, 0.2, 0.4), (0.02, 0.04, 0.06, 0.08)
    assert all(median[f"random@{rate}"] < median["clean"] for rate in random_rates)
    assert median["random@0.4"] < median["random@0.05"] - 0.03  # medians 0.646-0.672 against 0.941-0.954
    assert median["eights@0.08"] < 0.3  # medians 0.058-0.077
    assert median["eights@0.02"] > median["eights@0.08"] + 0.3  # medians 0.712-0.846
    assert all(median[f"others_lost@{rate}"] < 0.03 for rate in targeted_rates)


# --- feature collision ------------------------------------------------------------------------------------


def extractor(model: nn.Module) -> nn.Module:
    """The digits CNN up to its penultimate layer (64 features after the ReLU)."""
    return nn.Sequential(*list(model)[:-1])


def collision_trial(model: nn.Module, digits: Split, trial: int, count: int) -> tuple[bool, float]:
    """One seeded target (a correctly classified test sample) and base class (another class): does the
    last-layer victim put the target in the base class, and what test accuracy does it keep?"""
    g = torch.Generator().manual_seed(1000 + trial)
    with torch.no_grad():
        correct = (model(digits.test.x).argmax(1) == digits.test.y).nonzero().flatten()
    t = int(correct[torch.randint(len(correct), (1,), generator=g)])
    base = (int(digits.test.y[t]) + int(torch.randint(1, 10, (1,), generator=g))) % 10
    attack = feature_collision(
        extractor(model),
        digits.train,
        digits.test.x[t],
        base,
        count=count,
        beta=4.0,
        opacity=0.3,
        bases="nearest",
        generator=g,
    )
    retrained = retrain_last_layer(model, attack.poisoned.data)
    with torch.no_grad():
        hit = int(retrained(digits.test.x[t : t + 1]).argmax(1)) == base
    return hit, accuracy(retrained, digits.test)


def test_feature_collision_poisons_keep_their_labels(digits: Split, clean_model: nn.Module) -> None:
    """The poisons keep their base labels and land near the target in feature space. Seed study (a temporary
    figures() over this test's setting on the seeds' clean models, seeds 0-4 under native AVX-512, default
    and AVX2 kernels, one thread, n=15): the median poison's feature distance is 0.009-0.147 of its base's,
    the farthest poison's 0.018-0.226 (once more than 0.2: every poison under 0.2 fails on some CPUs)."""
    target = digits.test.x[0]
    attack = feature_collision(extractor(clean_model), digits.train, target, 3, count=5, opacity=0.3)
    p = attack.poisoned
    assert torch.equal(p.data.y, digits.train.y)
    assert (digits.train.y[p.indices] == 3).all() and len(p.indices) == 5
    assert torch.equal(p.data.x[p.indices], attack.poisons)
    assert torch.equal(p.data.x[~p.poisoned], digits.train.x[~p.poisoned])
    assert attack.poisons.min() >= 0 and attack.poisons.max() <= 1
    ratio = attack.feature_distance / attack.base_distance
    assert ratio.median() < 0.2 and (ratio < 0.5).all()


def test_retrain_last_layer_touches_only_the_head(digits: Split, clean_model: nn.Module) -> None:
    before = [p.clone() for p in clean_model.parameters()]
    retrained = retrain_last_layer(clean_model, digits.train, epochs=5)
    assert all(torch.equal(a, b) for a, b in zip(before, clean_model.parameters(), strict=True))
    new = list(retrained.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before[:-2], new[:-2], strict=True))
    assert not torch.equal(before[-2], new[-2])
    assert accuracy(retrained, digits.test) > 0.97


def feature_collision_figures(seed: int) -> dict[str, float]:
    """10 poisons (beta 4, opacity 0.3, nearest bases) against 8 targets of the seed's clean model."""
    digits, clean_model = victims.digits(), victims.clean_model(seed)
    clean = accuracy(retrain_last_layer(clean_model, digits.train), digits.test)
    trials = [collision_trial(clean_model, digits, 8 * seed + t, 10) for t in range(8)]
    return {
        "collision_hits_of_8": float(sum(hit for hit, _ in trials)),
        "collision_worst_accuracy_lost": clean - min(acc for _, acc in trials),
    }


def figures(seed: int) -> dict[str, float]:
    return label_flip_figures(seed) | feature_collision_figures(seed) | label_flip_sweep(seed)


def test_feature_collision_figure() -> None:
    """Seed study as above: 5-8 of 8 targets hit (median 7), keeping test accuracy within 0.007-0.019 of the
    last layer retrained on clean data. Asserted on the median of three seeds (their medians: 6-7 hits)."""
    runs = [feature_collision_figures(seed) for seed in SEEDS]
    assert statistics.median(run["collision_hits_of_8"] for run in runs) >= 5
    assert statistics.median(run["collision_worst_accuracy_lost"] for run in runs) < 0.025


@pytest.mark.slow
def test_feature_collision_success_vs_poisons(digits: Split, clean_model: nn.Module) -> None:
    """The report's table: success over 20 targets vs number of poisons."""
    clean = accuracy(retrain_last_layer(clean_model, digits.train), digits.test)
    table = {}
    for count in (1, 5, 10, 25):
        trials = [collision_trial(clean_model, digits, t, count) for t in range(20)]
        table[count] = (sum(hit for hit, _ in trials), min(acc for _, acc in trials))
    print("feature collision: clean", round(clean, 4), "count -> (hits of 20, min accuracy)", table)
    assert table[1][0] <= 12 and table[25][0] >= 16 and table[10][0] >= 14
    assert all(acc > clean - 0.03 for _, acc in table.values())


def test_feature_collision_refuses_bad_input(digits: Split, clean_model: nn.Module) -> None:
    f = extractor(clean_model)
    train, t = digits.train, digits.test.x[0]
    for rate in BAD_RATES:
        with pytest.raises(BadInputError, match=repr(rate)):
            feature_collision(f, train, t, 3, rate)
    with pytest.raises(DataError, match=r"\(1, 8, 8\).*\(2, 1, 8, 8\)"):
        feature_collision(f, train, digits.test.x[:2], 3, count=1)
    with pytest.raises(DataError, match="NaN"):
        feature_collision(f, train, torch.full((1, 8, 8), math.nan), 3, count=1)
    with pytest.raises(DataError, match="base class 10"):
        feature_collision(f, train, t, 10, count=1)
    with pytest.raises(BadInputError, match="exactly one of rate or count"):
        feature_collision(f, train, t, 3, 0.01, count=3)
    with pytest.raises(BadInputError, match="count must be a positive integer, got 0"):
        feature_collision(f, train, t, 3, count=0)
    with pytest.raises(DataError, match="only 128 are of base class 3"):
        feature_collision(f, train, t, 3, count=500)
    with pytest.raises(BadInputError, match="beta must be a positive number, got -1"):
        feature_collision(f, train, t, 3, count=1, beta=-1)
    with pytest.raises(BadInputError, match="opacity must be in \\[0, 1\\), got 1"):
        feature_collision(f, train, t, 3, count=1, opacity=1)
    one_class = LabelledData(train.x[:20], torch.full((20,), 3), "threes")
    with pytest.raises(DataError, match="1 class"):
        feature_collision(f, one_class, t, 3, count=1)
