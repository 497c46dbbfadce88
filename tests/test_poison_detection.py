"""Training-data poison detection on digits: the issue's figures, seeded.

BadNets (3x3 square patch, target class 0) at 1 %, 5 % and 10 % poison: the screening (reference distance,
spectral signatures and activation clustering against the held-out set) recovers every poisoned sample in
these seeds and retraining without what it flags brings attack success under 10 %. The paper rules alone
(activation clustering's size rule, spectral signatures' 1.5 epsilon) miss the poison where the issue warns.
Confident learning finds 10 % random label flips; the nearest-neighbour rule too.
"""

from __future__ import annotations

import pytest
import torch

from aisec.attacks.backdoor.plant import plant_backdoor
from aisec.attacks.backdoor.success import measure_backdoor
from aisec.attacks.backdoor.triggers import PatchTrigger
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import fit
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
from aisec.demo.models import digits_cnn

TRIGGER = PatchTrigger(pattern="square")


def _train(data: LabelledData, seed: int = 0) -> torch.nn.Module:
    return fit(build_model(digits_cnn, seed), data, seed=seed)


@pytest.fixture(scope="module")
def backdoored(digits: Split) -> dict[float, tuple]:
    """The poisoned training set and the model trained on it, per poison rate."""
    out = {}
    for rate in (0.01, 0.05, 0.1):
        poisoned = plant_backdoor(digits.train, TRIGGER, 0, rate, generator=torch.Generator().manual_seed(1))
        out[rate] = (poisoned, _train(poisoned.data))
    return out


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1])
def test_screening_recovers_the_poison_and_retraining_removes_the_backdoor(digits, backdoored, rate) -> None:
    poisoned, model = backdoored[rate]
    before = measure_backdoor(model, digits.test, TRIGGER, 0)
    assert before.attack_success > 0.9
    screening = screen_for_backdoor(model, poisoned.data, digits.test)
    score = screening.combined.score_against(poisoned.poisoned)
    assert score.recall >= 0.95  # measured 1.00 at every rate
    assert score.precision >= 0.4  # measured 0.45 / 0.79 / 0.91: a few clean samples are the price
    after = measure_backdoor(_train(poisoned.without(screening.combined.flagged)), digits.test, TRIGGER, 0)
    assert after.attack_success < 0.1  # measured 0.000 at every rate
    assert after.clean_accuracy >= before.clean_accuracy - 0.02


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
