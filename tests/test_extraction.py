"""Model extraction: equation solving (Tramer et al. 2016) against scikit-learn logistic regressions from exact
scores, rounded scores and labels, and learning-based extraction of a digits MLP from natural, synthetic and
active queries, with the transfer of PGD examples from the surrogate to the victim. All seeded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from aisec.attacks.extraction.equation_solving import extract_linear, extract_linear_adaptive
from aisec.attacks.extraction.equation_solving_labels import extract_linear_from_labels
from aisec.attacks.extraction.learning import LearningConfig, extract_surrogate
from aisec.attacks.extraction.metrics import accuracy, agreement, parameter_error, transfer_rate
from aisec.core.errors import BadInputError, CapabilityError, DataError
from aisec.data.builtin import Split, load_builtin
from aisec.targets.base import Access, InputSpec, Target
from aisec.targets.callable_target import CallableTarget
from aisec.targets.sklearn_models import sklearn_target
from aisec.targets.views import label_only, scores_only

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


@pytest.fixture(scope="module")
def mlp_victim(splits) -> Target:
    """A one-hidden-layer MLP on digits (97.8 % test accuracy), converted exactly to torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
        mlp.fit(_flat(splits["digits"].train.x), splits["digits"].train.y.numpy())
    return sklearn_target(mlp, DIGITS)


@pytest.fixture(scope="module")
def mirrored(splits) -> torch.Tensor:
    """The attacker's natural data from another distribution: the training digits mirrored left to right."""
    return splits["digits"].train.x.flip(-1).contiguous()


@pytest.mark.parametrize(
    "view, floors",
    [
        # measured agreement: natural 0.954, synthetic 0.539, active 0.806, active from the natural pool 0.980
        (scores_only, {"natural": 0.93, "synthetic": 0.5, "active": 0.75, "active pool": 0.96}),
        # measured: 0.789, 0.409, 0.452, 0.902
        (label_only, {"natural": 0.75, "synthetic": 0.35, "active": 0.4, "active pool": 0.87}),
    ],
)
def test_learning_based_extraction_at_a_fixed_budget(view, floors, splits, mlp_victim, mirrored):
    figures = {}
    for name, source, data in [
        ("natural", "natural", mirrored),
        ("synthetic", "synthetic", None),
        ("active", "active", None),
        ("active pool", "active", mirrored),
    ]:
        target = view(mlp_victim)
        result = extract_surrogate(target, 500, LearningConfig(source=source), data=data,
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert result.queries == target.queries.total == 500
        assert result.access is target.access
        figures[name] = agreement(result, mlp_victim, splits["digits"].test.x)
        assert figures[name] >= floors[name], (name, figures)
    assert figures["active"] >= figures["synthetic"]
    assert figures["active pool"] >= figures["natural"]


def test_surrogate_examples_transfer_to_the_victim(splits, mlp_victim, mirrored):
    result = extract_surrogate(scores_only(mlp_victim), 500, LearningConfig(source="active"), data=mirrored,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    test = splits["digits"].test
    transfer = transfer_rate(
        result, mlp_victim, test.x, test.y, eps=0.3, generator=torch.Generator().manual_seed(0)
    )
    assert transfer.fooled_surrogate >= 0.9 * transfer.attacked
    assert transfer.rate > 0.2  # measured: 148 of the 519 that fool the surrogate (0.285)


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
    assert victim.queries.total == 0
