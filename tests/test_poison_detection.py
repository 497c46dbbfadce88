"""Training-data poison detection on digits: the issue's figures, seeded.

BadNets (3x3 square patch, target class 0) at 1 %, 5 % and 10 % poison: the screening (reference distance,
spectral signatures and activation clustering against the held-out set) recovers every poisoned sample in
these seeds and retraining without what it flags brings attack success under 10 %. The paper rules alone
(activation clustering's size rule, spectral signatures' 1.5 epsilon) miss the poison where the issue warns.
Confident learning finds 10 % random label flips; the nearest-neighbour rule too.
"""

from __future__ import annotations

import backdoor_victims as victims
import pytest
import torch
from seed_figures import SEEDS, median_figures

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import measure_backdoor
from aisec.attacks.backdoor.triggers import BlendTrigger, WarpTrigger
from aisec.core.errors import BadInputError, DataError
from aisec.data.builtin import Split
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.activation_clustering import activation_clustering
from aisec.defend.data_quality.confident_learning import (
    confident_learning,
    cross_validated_probabilities,
    fit_linear,
)
from aisec.defend.data_quality.features import penultimate_features
from aisec.defend.data_quality.label_consistency import label_consistency
from aisec.defend.data_quality.reference import Reference
from aisec.defend.data_quality.reference_distance import reference_distance
from aisec.defend.data_quality.screening import screen_for_backdoor
from aisec.defend.data_quality.spectral_signatures import SpectralSignaturesConfig, spectral_signatures

pytestmark = pytest.mark.training  # its figures depend on trained models

TRIGGER = victims.PATCH
RATES = (0.01, 0.05, 0.1)
PRECISION = {0.01: 0.4, 0.05: 0.7, 0.1: 0.85}  # medians of seeds 0-2: >= 0.52, 0.79, 0.90
DETECTORS = ("reference_distance", "spectral_signatures", "activation_clustering")  # screening's order


@pytest.fixture(scope="module")
def backdoored() -> dict[float, tuple]:
    """The poisoned training set and the model trained on it, per poison rate (seed 0)."""
    return {rate: (victims.badnets_set(0, rate), victims.badnets_victim(0, rate)) for rate in RATES}


def screening_figures(seed: int) -> dict[str, float]:
    """Screening of the seed's BadNets training sets at each rate (the held-out test set as the trusted
    reference), and the model retrained without what it flags; each detector alone, and the papers' rules
    (activation clustering's size rule, spectral signatures' 1.5 epsilon with epsilon the true rate)."""
    test, out = victims.digits().test, {}
    for rate in RATES:
        poisoned, model = victims.badnets_set(seed, rate), victims.badnets_victim(seed, rate)
        before = measure_backdoor(model, test, TRIGGER, 0)
        screening = screen_for_backdoor(model, poisoned.data, test)
        score = screening.combined.score_against(poisoned.poisoned)
        after = measure_backdoor(
            victims.train(poisoned.without(screening.combined.flagged), seed), test, TRIGGER, 0
        )
        out |= {
            f"success_before@{rate}": before.attack_success,
            f"recall@{rate}": score.recall,
            f"precision@{rate}": score.precision,
            f"success_after@{rate}": after.attack_success,
            f"clean_kept@{rate}": after.clean_accuracy - before.clean_accuracy,
        }
        for name, ranking in zip(DETECTORS, screening.rankings, strict=True):
            out[f"{name}_recall@{rate}"] = ranking.score_against(poisoned.poisoned).recall
        features = penultimate_features(model, poisoned.data.x)
        size_rule = activation_clustering(features, poisoned.data.y)
        epsilon = spectral_signatures(features, poisoned.data.y, SpectralSignaturesConfig(expected_rate=rate))
        out[f"size_rule_recall@{rate}"] = size_rule.score_against(poisoned.poisoned).recall
        out[f"epsilon_rule_recall@{rate}"] = epsilon.score_against(poisoned.poisoned).recall
    return out


def trigger_figures(seed: int) -> dict[str, float]:
    """Screening of blend and warp backdoors (random poisons, target 0) at each rate, on victims trained from
    the seed."""
    digits, out = victims.digits(), {}
    for trigger in (BlendTrigger(), WarpTrigger()):
        for rate in RATES:
            poisoned = plant_backdoor(
                digits.train, trigger, 0, rate, generator=torch.Generator().manual_seed(seed)
            )
            model = victims.train(poisoned.data, seed)
            screening = screen_for_backdoor(model, poisoned.data, digits.test)
            score = screening.combined.score_against(poisoned.poisoned)
            out |= {
                f"{trigger.name}_success@{rate}": measure_backdoor(
                    model, digits.test, trigger, 0
                ).attack_success,
                f"{trigger.name}_recall@{rate}": score.recall,
                f"{trigger.name}_precision@{rate}": score.precision,
                f"{trigger.name}_reference_distance_recall@{rate}": screening.rankings[0]
                .score_against(poisoned.poisoned)
                .recall,
            }
    return out


def clean_figures(seed: int) -> dict[str, float]:
    """The share of a clean training set that the screening flags (the seed's clean model)."""
    digits = victims.digits()
    screening = screen_for_backdoor(victims.clean_model(seed), digits.train, digits.test)
    return {"clean_flagged": float(screening.combined.flagged.float().mean())}


def figures(seed: int) -> dict[str, float]:
    return screening_figures(seed) | trigger_figures(seed) | clean_figures(seed)


def test_screening_recovers_the_poison_and_retraining_removes_the_backdoor() -> None:
    """Seed study (bench/seed_study.py test_poison_detection --seeds 0-4 --threads 1, under native AVX-512,
    default and AVX2 kernels, n=15): attack success before screening 0.88-0.99 at 1 % (median 0.938), >= 0.994
    at 5 and 10 %; recall 1.000 at every rate and seed; precision 0.43-0.72 (0.54) / 0.77-0.90 (0.83) /
    0.88-0.95 (0.91) at 1 / 5 / 10 %; attack success after retraining without the flags 0.000-0.006; clean
    accuracy kept within 0.015. Asserted on the median of three seeds."""
    runs = [screening_figures(seed) for seed in SEEDS]
    median = median_figures(runs)
    for rate in RATES:
        assert median[f"success_before@{rate}"] > (0.85 if rate == 0.01 else 0.95)
        assert median[f"recall@{rate}"] >= 0.95
        assert median[f"precision@{rate}"] >= PRECISION[rate]  # a few clean samples are the price
        assert median[f"success_after@{rate}"] < 0.1
        assert median[f"clean_kept@{rate}"] >= -0.02


def test_the_paper_rules_fail_where_the_issue_warns(digits, backdoored) -> None:
    """Activation clustering's size rule flags nothing of a poison that is half its class (10 %); spectral
    signatures with the paper's epsilon bound (here the true overall rate) catch well under half."""
    poisoned, model = backdoored[0.1]
    features = penultimate_features(model, poisoned.data.x)
    size_rule = activation_clustering(features, poisoned.data.y).score_against(poisoned.poisoned)
    assert size_rule.recall < 0.2  # measured 0.00
    epsilon = spectral_signatures(features, poisoned.data.y, SpectralSignaturesConfig(expected_rate=0.1))
    assert epsilon.score_against(poisoned.poisoned).recall < 0.5
    reference = Reference(penultimate_features(model, digits.test.x), digits.test.y)
    assert (
        reference_distance(features, poisoned.data.y, reference).score_against(poisoned.poisoned).recall
        > 0.95
    )


def test_a_clean_training_set_is_barely_flagged(digits, digits_model) -> None:
    screening = screen_for_backdoor(digits_model, digits.train, digits.test)
    assert screening.combined.flagged.float().mean() < 0.03


@pytest.mark.slow
def test_screening_finds_blend_and_warp_poison() -> None:
    """Seed study (bench/seed_study.py test_poison_detection --seeds 0-4 --threads 1, under native AVX-512,
    default and AVX2 kernels, n=15): the screening's recall is 1.000 for both triggers at 1, 5 and 10 % on
    every run but seed 2's blend at 5 % (0.984, one sample of 63 missed, under all three kernel sets);
    precision 0.22-0.62 / 0.72-0.86 / 0.82-0.93 (blend) and 0.39-0.68 / 0.78-0.89 / 0.88-0.95 (warp) at
    1 / 5 / 10 %. Asserted on the median of three seeds (precision medians >= 0.34 / 0.78 / 0.87 and
    0.52 / 0.81 / 0.91)."""
    runs = [trigger_figures(seed) for seed in SEEDS]
    median = median_figures(runs)
    print({name: round(value, 3) for name, value in median.items()})
    for trigger in ("blend", "warp"):
        for rate in RATES:
            assert median[f"{trigger}_recall@{rate}"] >= 0.95
            assert median[f"{trigger}_precision@{rate}"] >= {0.01: 0.25, 0.05: 0.7, 0.1: 0.8}[rate]


@pytest.fixture(scope="module")
def flipped(digits: Split) -> tuple[LabelledData, torch.Tensor]:
    """10 % of the digits training labels flipped uniformly to another class."""
    generator = torch.Generator().manual_seed(1)
    n = len(digits.train)
    chosen = torch.randperm(n, generator=generator)[: round(0.1 * n)]
    y = digits.train.y.clone()
    y[chosen] = (y[chosen] + torch.randint(1, 10, (len(chosen),), generator=generator)) % 10
    truth = torch.zeros(n, dtype=torch.bool)
    truth[chosen] = True
    return LabelledData(digits.train.x, y, "digits/train, 10% flipped"), truth


def test_confident_learning_finds_random_label_flips(flipped) -> None:
    data, truth = flipped
    probabilities = cross_validated_probabilities(data, fit_linear, num_classes=10, folds=5, seed=0)
    score = confident_learning(data.y, probabilities).score_against(truth)
    assert score.recall >= 0.85 and score.precision >= 0.85  # measured 0.881 / 0.874


def test_nearest_neighbours_find_random_label_flips(flipped) -> None:
    data, truth = flipped
    score = label_consistency(data.x, data.y).score_against(truth)
    assert score.recall >= 0.95 and score.precision >= 0.8  # measured 0.992 / 0.839


def test_rankings_put_the_poison_first(flipped) -> None:
    data, truth = flipped
    ranking = label_consistency(data.x, data.y)
    top = ranking.ranked()[: int(truth.sum())]
    assert truth[top].float().mean() > 0.8


def test_bad_input_is_refused_before_work(digits) -> None:
    one_class = LabelledData(digits.train.x[:20], torch.zeros(20, dtype=torch.long))
    with pytest.raises(DataError, match="one class"):
        label_consistency(one_class.x, one_class.y)
    with pytest.raises(DataError, match="one class"):
        cross_validated_probabilities(one_class, fit_linear, num_classes=10)
    features = torch.randn(30, 4)
    labels = torch.arange(30) % 2
    features[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        activation_clustering(features, labels)
    with pytest.raises(BadInputError, match="reference set or an expected_rate"):
        spectral_signatures(torch.randn(30, 4), labels)
    with pytest.raises(BadInputError, match="expected_rate"):
        SpectralSignaturesConfig(expected_rate=1.5)
    with pytest.raises(DataError, match="width"):
        reference_distance(torch.randn(30, 4), labels, Reference(torch.randn(10, 3), torch.arange(10) % 2))
    with pytest.raises(DataError, match="classes \\[1\\]"):
        screen_for_backdoor(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)),
            LabelledData(digits.train.x[:30], labels),
            LabelledData(digits.train.x[:5], torch.zeros(5, dtype=torch.long)),
        )
