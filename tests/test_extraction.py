"""Model extraction: equation solving (Tramer et al. 2016) against scikit-learn logistic regressions from exact
scores, rounded scores and labels, learning-based extraction of a digits MLP from natural, synthetic and
active queries, with the transfer of PGD examples from the surrogate to the victim, and of the session's
digits CNN from perturbation queries (Papernot et al. 2017, Juuti et al. 2019). All seeded."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from seed_figures import SEEDS, median_figures
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from aisec.attacks.extraction.equation_solving import extract_linear, extract_linear_adaptive
from aisec.attacks.extraction.equation_solving_labels import extract_linear_from_labels
from aisec.attacks.extraction.learning import LearningConfig, extract_surrogate
from aisec.attacks.extraction.metrics import accuracy, agreement, parameter_error, transfer_rate
from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import Split, load_builtin
from aisec.demo.models import digits_cnn
from aisec.targets.base import Access, InputSpec, Target
from aisec.targets.callable_target import CallableTarget
from aisec.targets.sklearn_models import sklearn_target
from aisec.targets.torch_target import TorchTarget
from aisec.targets.views import QueryLog, label_only, scores_only

pytestmark = pytest.mark.training  # its figures depend on trained models

FLAT = {"breast_cancer": InputSpec((30,), 2), "digits": InputSpec((64,), 10)}


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).double().numpy()


@pytest.fixture(scope="module")
def splits() -> dict[str, Split]:
    return {name: load_builtin(name, seed=0) for name in FLAT}


@pytest.fixture(scope="module")
def logistic(splits) -> dict[str, LogisticRegression]:
    """Multinomial for digits (10 classes), binary for breast cancer; default C = 1."""
    return {
        name: LogisticRegression(max_iter=5000).fit(_flat(split.train.x), split.train.y.numpy())
        for name, split in splits.items()
    }


def _probabilities(model: LogisticRegression, name: str, decimals: int | None = None) -> CallableTarget:
    """A black box serving predict_proba, rounded to `decimals` when given."""

    def serve(x: np.ndarray) -> np.ndarray:
        p = model.predict_proba(x.astype(np.float64))
        return p if decimals is None else np.round(p, decimals)

    return CallableTarget(serve, FLAT[name], name=f"{name} predict_proba")


def _held_out(split: Split) -> torch.Tensor:
    return split.test.x.reshape(len(split.test.x), -1)


@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
@pytest.mark.parametrize("access", ["logits", "probabilities"])
def test_exact_extraction_with_d_plus_1_queries(name, access, splits, logistic):
    model = logistic[name]
    target: Target = (
        scores_only(sklearn_target(model, FLAT[name])) if access == "logits" else _probabilities(model, name)
    )
    result = extract_linear(target)
    d = FLAT[name].shape[0]
    assert result.queries == target.queries.total == d + 1  # 31 and 65
    assert agreement(result, target, _held_out(splits[name])) == 1.0
    assert parameter_error(result, torch.tensor(model.coef_), torch.tensor(model.intercept_)) < 1e-4
    # measured: 2.3e-06 / 8.3e-08 (breast cancer, logits / probabilities), 1.1e-06 / 2.9e-07 (digits)
    assert accuracy(result, splits[name].test) == pytest.approx(
        model.score(_flat(splits[name].test.x), splits[name].test.y)
    )


def test_exact_solver_on_rounded_scores(splits, logistic):
    """What the adaptive solver is for: d + 1 equations from rounded scores are off, or cannot be written."""
    model = logistic["digits"]
    target = _probabilities(model, "digits", decimals=3)
    result = extract_linear(target)
    assert agreement(result, target, _held_out(splits["digits"])) < 1.0  # measured: 0.9963
    assert parameter_error(result, torch.tensor(model.coef_), torch.tensor(model.intercept_)) > 0.05  # 0.066
    with pytest.raises(DataError, match="extract_linear_adaptive"):  # a probability rounded to 0
        extract_linear(_probabilities(logistic["breast_cancer"], "breast_cancer", decimals=2))


def test_rounded_scores_adaptive_extraction(splits, logistic):
    model = logistic["digits"]
    target = _probabilities(model, "digits", decimals=3)
    result = extract_linear_adaptive(target, 130, generator=torch.Generator().manual_seed(0))
    assert result.queries == 130
    assert agreement(result, target, _held_out(splits["digits"])) > 0.99  # measured: 1.0 (540 of 540)
    assert parameter_error(result, torch.tensor(model.coef_), torch.tensor(model.intercept_)) < 0.02  # 0.005


@pytest.mark.parametrize("name, budget", [("breast_cancer", 300), ("digits", 7000)])
def test_label_only_extraction(name, budget, splits, logistic):
    model = logistic[name]
    target = label_only(_probabilities(model, name))
    result = extract_linear_from_labels(target, budget, generator=torch.Generator().manual_seed(0))
    assert result.access is Access.LABELS
    assert result.queries <= budget
    assert agreement(result, target, _held_out(splits[name])) > 0.99
    assert parameter_error(result, torch.tensor(model.coef_), torch.tensor(model.intercept_)) < 0.05
    # measured: breast cancer 1.0 with 293 queries (parameter error 0.0065); digits 1.0 with 6911 (0.0074)


DIGITS = InputSpec((1, 8, 8), 10)


VIEWS = {"scores": scores_only, "labels": label_only}
SOURCES = {"natural": "natural", "synthetic": "synthetic", "active": "active", "active pool": "active"}


def _mlp_victim(split: Split, seed: int) -> Target:
    """A one-hidden-layer MLP on digits (about 97 % test accuracy), trained from `seed`, converted exactly to
    torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed)
        mlp.fit(_flat(split.train.x), split.train.y.numpy())
    return sklearn_target(mlp, DIGITS)


def _mirrored(split: Split) -> torch.Tensor:
    """The attacker's natural data from another distribution: the training digits mirrored left to right."""
    return split.train.x.flip(-1).contiguous()


def _agreements(victim: Target, view: str, split: Split, seed: int) -> dict[str, float]:
    """Agreement with the victim on the test digits of a surrogate from 500 queries of each source."""
    figures = {}
    for name, source in SOURCES.items():
        target = VIEWS[view](victim)
        data = _mirrored(split) if name in ("natural", "active pool") else None
        result = extract_surrogate(target, 500, LearningConfig(source=source), data=data,
                                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert result.queries == target.queries.total == 500
        assert result.access is target.access
        figures[f"{view} {name}"] = agreement(result, victim, split.test.x)
    return figures


def _transfer(victim: Target, split: Split, seed: int) -> dict[str, float]:
    """PGD at L-inf 0.3 on an active surrogate (scores, natural pool), replayed on the victim."""
    result = extract_surrogate(scores_only(victim), 500, LearningConfig(source="active"), data=_mirrored(split),
                               generator=torch.Generator().manual_seed(seed))  # fmt: skip
    transfer = transfer_rate(
        result, victim, split.test.x, split.test.y, eps=0.3, generator=torch.Generator().manual_seed(seed)
    )
    return {"fooled surrogate": transfer.fooled_surrogate / transfer.attacked, "transfer rate": transfer.rate}


PERTURBATION = {
    "CNN scores jacobian": (scores_only, LearningConfig(source="perturbation")),
    "CNN scores random": (scores_only, LearningConfig(source="perturbation", perturbation="random")),
    "CNN scores synthetic": (scores_only, LearningConfig(source="synthetic")),
    "CNN labels jacobian": (label_only, LearningConfig(source="perturbation")),
}


def _perturbation(victim: Target, split: Split, seed: int) -> dict[str, float]:
    """Agreement with the victim on the test digits of surrogates from 1,500 queries each: perturbation queries
    (Jacobian-based, and T-RND's random target classes) grown from 50 training digits drawn from `seed`, and
    uniform synthetic queries."""
    draw = torch.randperm(len(split.train.x), generator=torch.Generator().manual_seed(seed))[:50]
    figures = {}
    for name, (view, config) in PERTURBATION.items():
        target = view(victim)
        result = extract_surrogate(target, 1500, config, data=split.train.x[draw],
                                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert result.queries == target.queries.total == 1500
        assert result.access is target.access
        figures[name] = agreement(result, victim, split.test.x)
    return figures


@functools.cache
def _digits_cnn() -> TorchTarget:
    """tests/conftest.py's digits CNN, for the seed study (the tests take the session's fixture)."""
    return TorchTarget(fit(build_model(digits_cnn, 0), load_builtin("digits", seed=0).train, seed=0), DIGITS)


def figures(seed: int) -> dict[str, float]:
    """The MLP victim trained from `seed`, each surrogate initialised and trained from `seed`; the perturbation
    figures against the session's digits CNN (trained from seed 0), with seed digits and surrogates from
    `seed`."""
    split = load_builtin("digits", seed=0)
    victim = _mlp_victim(split, seed)
    return (_agreements(victim, "scores", split, seed) | _agreements(victim, "labels", split, seed)
            | _transfer(victim, split, seed) | _perturbation(_digits_cnn(), split, seed))  # fmt: skip


@pytest.fixture(scope="module")
def victims(splits) -> list[Target]:
    return [_mlp_victim(splits["digits"], seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def mlp_victim(victims) -> Target:
    return victims[0]


@pytest.fixture(scope="module")
def mirrored(splits) -> torch.Tensor:
    return _mirrored(splits["digits"])


# Seed study (bench/seed_study.py test_extraction, seeds 0-4 under native AVX-512, default and AVX2 kernels,
# n=15; each seed trains the victim and initialises and trains the surrogates), agreement min/median/max:
#   scores: natural 0.950/0.954/0.959, synthetic 0.522/0.604/0.739, active 0.689/0.822/0.904,
#           active pool 0.959/0.974/0.980
#   labels: natural 0.731/0.761/0.809, synthetic 0.374/0.406/0.531, active 0.404/0.463/0.531,
#           active pool 0.794/0.846/0.889
# On single runs active queries beat synthetic ones 14 (scores) and 12 (labels) of 15 times, the active pool
# beats natural queries 15 and 12 of 15 times; on the median of three seeds both hold for every triple of the
# study. Asserted on the median of three seeds, each floor below the lowest median of three in the study.
FLOORS = {
    "scores": {"natural": 0.93, "synthetic": 0.5, "active": 0.7, "active pool": 0.95},
    "labels": {"natural": 0.7, "synthetic": 0.35, "active": 0.38, "active pool": 0.78},
}


@pytest.mark.parametrize("view", ["scores", "labels"])
def test_learning_based_extraction_at_a_fixed_budget(view, splits, victims):
    """Agreement with the victim on the test digits after 500 queries; floors from the seed study above."""
    runs = [
        _agreements(victim, view, splits["digits"], seed) for seed, victim in zip(SEEDS, victims, strict=True)
    ]
    median = median_figures(runs)
    for name, floor in FLOORS[view].items():
        assert median[f"{view} {name}"] >= floor, (name, median)
    assert median[f"{view} active"] >= median[f"{view} synthetic"]
    assert median[f"{view} active pool"] >= median[f"{view} natural"]


def test_surrogate_examples_transfer_to_the_victim(splits, victims):
    """Seed study (bench/seed_study.py test_extraction, seeds 0-4 under native AVX-512, default and AVX2
    kernels, n=15): every PGD example fools its surrogate; transfer rate to the victim 0.221/0.261/0.362
    (min/median/max). Asserted on the median of three seeds."""
    median = median_figures(
        [_transfer(victim, splits["digits"], seed) for seed, victim in zip(SEEDS, victims, strict=True)]
    )
    assert median["fooled surrogate"] >= 0.9
    assert median["transfer rate"] > 0.15


# Seed study of the perturbation figures (bench/seed_study.py test_extraction, seeds 0-4 under native AVX-512,
# default and AVX2 kernels, n=15; the victim is the session's CNN, each seed draws the 50 seed digits and
# initialises and trains the surrogates), agreement min/median/max:
#   scores: jacobian 0.854/0.907/0.933, random (T-RND) 0.935/0.946/0.957, synthetic 0.804/0.833/0.894
#   labels: jacobian 0.815/0.876/0.915
# On single runs Jacobian queries beat synthetic ones 13 of 15 times (seed 2 ties within 0.005), T-RND 15 of
# 15; on the median of three seeds both hold for every triple of the study (by 0.05 at least). Floors below
# the lowest median of three (0.889, 0.935, 0.861).
PERTURBATION_FLOORS = {"CNN scores jacobian": 0.87, "CNN scores random": 0.92, "CNN labels jacobian": 0.84}


def test_perturbation_queries_beat_synthetic_ones(digits, digits_model):
    """Papernot et al.'s Jacobian-based augmentation of 50 natural digits, and T-RND, steal a closer copy of
    the CNN than uniform synthetic queries at the same budget of 1,500, from scores; from labels too."""
    victim = TorchTarget(digits_model, DIGITS)
    median = median_figures([_perturbation(victim, digits, seed) for seed in SEEDS])
    for name, floor in PERTURBATION_FLOORS.items():
        assert median[name] >= floor, (name, median)
    assert median["CNN scores jacobian"] > median["CNN scores synthetic"]
    assert median["CNN scores random"] > median["CNN scores synthetic"]


@pytest.mark.parametrize("perturbation", ["jacobian", "random"])
def test_perturbation_queries_step_from_earlier_ones(perturbation, digits, digits_model):
    """The seeds are queried first; every later query lies one step (0.1 of the input range in L-inf) from an
    earlier one, within the bounds; 5 seeds cannot double to 300 queries in 5 rounds, so the last round steps
    on from the points it has just made, and the budget is still spent exactly."""
    log = QueryLog(scores_only(TorchTarget(digits_model, DIGITS)))
    seeds = digits.train.x[:5]
    config = LearningConfig(source="perturbation", perturbation=perturbation, epochs=5)
    result = extract_surrogate(log, 300, config, data=seeds, generator=torch.Generator().manual_seed(0))
    assert result.queries == log.queries.total == 300
    x = torch.cat(log.inputs)
    assert len(x) == 300 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert sorted(map(tuple, x[:5].tolist())) == sorted(map(tuple, seeds.flatten(1).tolist()))
    distance = torch.cdist(x[5:], x, p=float("inf"))
    earlier = torch.ones_like(distance, dtype=torch.bool).tril(diagonal=4)  # query 5 + i: queries 0 .. 4 + i
    nearest = distance.masked_fill(~earlier, float("inf")).min(1).values
    assert bool((nearest <= 0.1 + 1e-6).all())
    assert float((nearest > 0).float().mean()) > 0.95  # new points, not repeats (measured: all 295 at 0.1)


def test_bad_input_fails_before_any_query(logistic, mlp_victim, mirrored):
    scores = _probabilities(logistic["digits"], "digits")
    labels = label_only(_probabilities(logistic["digits"], "digits"))
    with pytest.raises(BadInputError, match="query budget of 64"):
        extract_linear(scores, query_budget=64)
    with pytest.raises(BadInputError, match="query budget of 64"):
        extract_linear_adaptive(scores, 64)
    with pytest.raises(BadInputError, match="query budget of 649"):
        extract_linear_from_labels(labels, 649)
    with pytest.raises(CapabilityError):
        extract_linear(labels)
    with pytest.raises(CapabilityError):
        extract_linear_adaptive(labels, 1000)
    assert scores.queries.total == labels.queries.total == labels.inner.queries.total == 0
    victim = scores_only(mlp_victim)
    with pytest.raises(BadInputError, match="natural queries need"):
        extract_surrogate(victim, 100, LearningConfig(source="natural"))
    with pytest.raises(BadInputError, match="round"):
        extract_surrogate(victim, 3, LearningConfig(source="active", rounds=5))
    with pytest.raises(BadInputError, match="pool of 10"):
        extract_surrogate(victim, 100, LearningConfig(source="active"), data=mirrored[:10])
    with pytest.raises(DataError, match="attacker's data"):
        extract_surrogate(victim, 100, LearningConfig(source="natural"), data=mirrored * 2)
    with pytest.raises(BadInputError, match=r"perturbation queries need the attacker's data \(data="):
        extract_surrogate(victim, 100, LearningConfig(source="perturbation"))
    with pytest.raises(BadInputError, match="cannot pay for 6 round"):  # the seed round and 5 rounds
        extract_surrogate(victim, 5, LearningConfig(source="perturbation"), data=mirrored)
    with pytest.raises(BadInputError, match="step must be in"):
        extract_surrogate(victim, 100, LearningConfig(source="perturbation", step=0.0), data=mirrored)
    with pytest.raises(BadInputError, match="is empty"):
        extract_surrogate(victim, 100, LearningConfig(source="perturbation"), data=mirrored[:0])
    assert victim.queries.total == 0
