"""Label shift: whether the class balance of new data differs from the reference's, at what relabelling rate a
test of the class balance alone would notice, and how a model fares on the new data, per class.

The class balance is compared with Pearson's (1900) chi-squared test of the 2 x k contingency table (no Yates
correction) and sized by the Jensen-Shannon distance (Lin 1991, base 2, so 0 = same, 1 = disjoint): a shift is
reported when it is both significant and large enough to matter, or when a class appeared or vanished. Running
the same comparison on a model's predicted classes is black-box shift detection (Lipton, Wang and Smola 2018,
"Detecting and Correcting for Label Shift with Black Box Predictors"; Rabanser, Guennemann and Lipton 2019,
"Failing Loudly"), which needs no labels on the new data. Accuracies carry Wilson (1927) score intervals.

Models are plain callables, so this module needs no torch: `Predict` maps features (n, d) to int labels (n,).
Labels are counted by their `str`, so int64 and str labels give the same dictionaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.feature_drift import compare_counts
from aisec.defend.data_validation.reference_sketch import category_counts

Predict = Callable[[np.ndarray], np.ndarray]

_SEARCH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LabelDrift:
    """The current class counts against the reference's: chi-squared test over the union of classes, the
    Jensen-Shannon distance, and the classes only one side has. `drifted` when p <= alpha and the distance is at
    least `min_js`, or when a class appeared or vanished."""

    reference_counts: dict[str, int]
    current_counts: dict[str, int]
    statistic: float
    p_value: float
    js_distance: float
    new_classes: tuple[str, ...]
    removed_classes: tuple[str, ...]
    alpha: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_counts": dict(self.reference_counts),
            "current_counts": dict(self.current_counts),
            "statistic": self.statistic,
            "p_value": self.p_value,
            "js_distance": self.js_distance,
            "new_classes": list(self.new_classes),
            "removed_classes": list(self.removed_classes),
            "alpha": self.alpha,
            "drifted": self.drifted,
        }


def label_drift(
    reference_counts: dict[str, int], current_labels: np.ndarray, *, alpha: float = 0.01, min_js: float = 0.02
) -> LabelDrift:
    """Compare the class counts of `current_labels` with `reference_counts` (class name -> count)."""
    _check_thresholds(alpha, min_js)
    reference = {str(label): int(count) for label, count in reference_counts.items()}
    if any(count < 0 for count in reference.values()) or sum(reference.values()) == 0:
        raise BadInputError("label drift: the reference class counts must be non-negative and not all zero")
    current = category_counts(current_labels)
    if not current:
        raise BadInputError("label drift: the current data has no labels")
    statistic, p_value, js, new, removed = _compare(
        {k: float(v) for k, v in reference.items()}, {k: float(v) for k, v in current.items()}
    )
    return LabelDrift(
        reference_counts=reference,
        current_counts=current,
        statistic=statistic,
        p_value=p_value,
        js_distance=js,
        new_classes=new,
        removed_classes=removed,
        alpha=alpha,
        drifted=_is_drifted(p_value, js, new, removed, alpha, min_js),
    )


def label_strings(labels: np.ndarray) -> np.ndarray:
    """Each label as its `str`, in an object array: how labels and predictions are compared."""
    return np.array([str(label) for label in np.asarray(labels).tolist()], dtype=object)


def detectable_change_rate(
    reference_counts: dict[str, int],
    transitions: dict[tuple[str, str], int],
    n_changed_base: int,
    *,
    alpha: float = 0.01,
    min_js: float = 0.02,
) -> float | None:
    """The smallest share r of the reference (to 1e-4) whose relabelling in the observed pattern `label_drift`
    would call drifted; None if no share up to 1 (or up to all records of a relabelled class) would.

    `transitions` counts old label -> new label over the relabellings an exact snapshot diff found, and
    `n_changed_base` is the number of records that diff found changed (at least the transitions' total; changes
    that kept the label move no counts). Relabelling a share r of the N reference records then moves, in
    expectation, r * N * count / n_changed_base records from old to new; the expected counts (no sampling) are
    tested against the reference with n = N. The count-only test is monotone along that line, so the answer is
    found by bisection.

    The test compares class counts only: relabellings that keep the class balance, such as A -> B and B -> A in
    equal numbers, are invisible to it at any rate. That is why aisec compares snapshots record by record.
    """
    _check_thresholds(alpha, min_js)
    reference = {str(label): float(count) for label, count in reference_counts.items()}
    total = sum(reference.values())
    if total <= 0 or any(count < 0 for count in reference.values()):
        raise BadInputError(
            "detectable change rate: the reference class counts must be non-negative, not all zero"
        )
    moved = sum(transitions.values())
    if any(count < 0 for count in transitions.values()) or n_changed_base < max(moved, 1):
        raise BadInputError(
            f"detectable change rate: n_changed_base ({n_changed_base}) must be positive and at least the "
            f"transitions' total ({moved}), with no negative transition count"
        )
    outflow: dict[str, float] = {}
    net: dict[str, float] = {}
    for (old, new), count in transitions.items():
        old, new = str(old), str(new)
        if old == new or count == 0:
            continue
        if reference.get(old, 0.0) <= 0:
            raise BadInputError(
                f"detectable change rate: transition from class {old!r}, which the reference lacks"
            )
        share = count / n_changed_base
        outflow[old] = outflow.get(old, 0.0) + share
        net[old] = net.get(old, 0.0) - share
        net[new] = net.get(new, 0.0) + share
    if not outflow:
        return None
    # A class cannot give up more records than it has.
    highest = min(1.0, *(reference[old] / (total * share) for old, share in outflow.items()))

    def detected(rate: float) -> bool:
        current = dict(reference)
        for label, share in net.items():
            current[label] = current.get(label, 0.0) + rate * total * share
        current = {label: count if count > 1e-9 * total else 0.0 for label, count in current.items()}
        _, p_value, js, new, removed = _compare(reference, current)
        return _is_drifted(p_value, js, new, removed, alpha, min_js)

    if not detected(highest):
        return None
    low, high = 0.0, highest
    while high - low > _SEARCH_TOLERANCE:
        middle = (low + high) / 2
        if detected(middle):
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class ClassAccuracy:
    """A model's accuracy on the current records of one true class, with its Wilson 95 % interval."""

    label: str
    n: int
    correct: int
    accuracy: float
    lower: float
    upper: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "lower": self.lower,
            "upper": self.upper,
        }


@dataclass(frozen=True)
class ModelOnCurrent:
    """How a model fares on the current data: the shift of its predicted classes from the reference sample's
    (needs no labels), and where labels are given its accuracy overall and per true class (Wilson 95 %)."""

    prediction_drift: LabelDrift
    accuracy: float | None
    lower: float | None
    upper: float | None
    reference_accuracy: float | None
    per_class: tuple[ClassAccuracy, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prediction_drift": self.prediction_drift.to_dict(),
            "accuracy": self.accuracy,
            "lower": self.lower,
            "upper": self.upper,
            "reference_accuracy": self.reference_accuracy,
            "per_class": [entry.to_dict() for entry in self.per_class],
        }


def model_on_current(
    predict: Predict,
    reference_x: np.ndarray,
    current_x: np.ndarray,
    *,
    reference_y: np.ndarray | None = None,
    current_y: np.ndarray | None = None,
    alpha: float = 0.01,
) -> ModelOnCurrent:
    """Predict the reference sample and the current data; compare the predicted classes (`label_drift`) and,
    where labels are given, score the predictions (labels and predictions compared by their `str`)."""
    _check_labels("reference", reference_x, reference_y)
    _check_labels("current", current_x, current_y)
    reference_predicted = _predicted(predict, reference_x, "reference")
    current_predicted = _predicted(predict, current_x, "current")
    drift = label_drift(category_counts(reference_predicted), current_predicted, alpha=alpha)
    reference_accuracy = None
    if reference_y is not None and len(reference_y) > 0:
        reference_accuracy = float(np.mean(label_strings(reference_predicted) == label_strings(reference_y)))
    if current_y is None or len(current_y) == 0:
        return ModelOnCurrent(drift, None, None, None, reference_accuracy, ())
    truth = label_strings(current_y)
    hits = label_strings(current_predicted) == truth
    lower, upper = wilson_interval(int(hits.sum()), len(hits))
    per_class = []
    for label in category_counts(current_y):
        mask = truth == label
        correct, n = int(hits[mask].sum()), int(mask.sum())
        per_class.append(ClassAccuracy(label, n, correct, correct / n, *wilson_interval(correct, n)))
    return ModelOnCurrent(drift, float(hits.mean()), lower, upper, reference_accuracy, tuple(per_class))


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's (1927) score interval for the proportion correct / n; stays inside [0, 1] and does not
    collapse to a point at 0 or n successes, unlike the normal approximation."""
    if n <= 0 or not 0 <= correct <= n:
        raise BadInputError(f"Wilson interval: needs 0 <= correct <= n and n >= 1, got {correct} of {n}")
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lower = (
        0.0 if correct == 0 else max(0.0, centre - half)
    )  # exact ends: the formula gives them up to rounding
    upper = 1.0 if correct == n else min(1.0, centre + half)
    return lower, upper


def _compare(
    reference: dict[str, float], current: dict[str, float]
) -> tuple[float, float, float, tuple[str, ...], tuple[str, ...]]:
    """Chi-squared statistic and p-value, Jensen-Shannon distance (`feature_drift.compare_counts`), new and
    removed classes of two count dictionaries (counts may be fractional: expected counts)."""
    from scipy.stats import chi2

    labels = sorted(set(reference) | set(current))
    new = tuple(k for k in labels if reference.get(k, 0.0) == 0 and current.get(k, 0.0) > 0)
    removed = tuple(k for k in labels if reference.get(k, 0.0) > 0 and current.get(k, 0.0) == 0)
    statistic, degrees, js = compare_counts(reference, current)
    p_value = float(chi2.sf(statistic, degrees)) if degrees > 0 else 1.0
    return statistic, p_value, js, new, removed


def _is_drifted(
    p_value: float, js: float, new: tuple[str, ...], removed: tuple[str, ...], alpha: float, min_js: float
) -> bool:
    return bool(new or removed) or (p_value <= alpha and js >= min_js)


def _check_thresholds(alpha: float, min_js: float) -> None:
    if not 0 < alpha < 1 or not 0 <= min_js <= 1:
        raise BadInputError(
            f"label drift: alpha must be in (0, 1) and min_js in [0, 1], got {alpha}, {min_js}"
        )


def _check_labels(name: str, x: np.ndarray, y: np.ndarray | None) -> None:
    if len(x) == 0:
        raise BadInputError(f"model on current data: the {name} features hold no records")
    if y is not None and len(y) != len(x):
        raise BadInputError(f"model on current data: {name} has {len(x)} feature rows but {len(y)} labels")


def _predicted(predict: Predict, x: np.ndarray, name: str) -> np.ndarray:
    predicted = np.asarray(predict(x))
    if predicted.shape != (len(x),):
        raise BadInputError(
            f"model on current data: predict returned shape {predicted.shape} for {len(x)} {name} records, "
            f"expected ({len(x)},)"
        )
    return predicted
