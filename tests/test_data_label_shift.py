"""Label shift: the class-balance test, the relabelling rate it would notice, and a model's accuracy per class on
current data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.label_shift import (
    detectable_change_rate,
    label_drift,
    model_on_current,
    wilson_interval,
)
from aisec.defend.data_validation.reference_sketch import category_counts

PROBS = [0.5, 0.3, 0.2]
REFERENCE = {"A": 2500, "B": 1500, "C": 1000}


def test_label_drift_finds_a_moved_tenth_of_a_class_and_not_sampling_noise():
    # Reference and current each 5,000 labels drawn from (0.5, 0.3, 0.2); "moved": 10 % of class 0 relabelled 1.
    # Measured over seeds 0-49: same distribution drifted in 0 of 50 (p min 0.015, JS max 0.025, never both);
    # moved drifted in 50 of 50 (p max 0.0014, JS min 0.031, median 0.051).
    quiet = moved_found = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        reference = category_counts(rng.choice(3, size=5000, p=PROBS))
        current = rng.choice(3, size=5000, p=PROBS)
        quiet += not label_drift(reference, current).drifted
        members = np.flatnonzero(current == 0)
        moved = current.copy()
        moved[rng.choice(members, size=round(0.1 * len(members)), replace=False)] = 1
        result = label_drift(reference, moved)
        moved_found += result.drifted and result.js_distance >= 0.02 and result.p_value <= 0.01
    assert quiet >= 47
    assert moved_found == 50


def test_label_drift_lists_new_and_removed_classes_and_counts_int_and_str_alike():
    current = np.array(["0"] * 100 + ["1"] * 100 + ["7"], dtype=object)
    result = label_drift({"0": 100, "1": 100, "2": 5}, current)
    assert result.new_classes == ("7",) and result.removed_classes == ("2",) and result.drifted
    assert result.current_counts == {"0": 100, "1": 100, "7": 1}
    assert json.loads(json.dumps(result.to_dict()))["new_classes"] == ["7"]
    same = label_drift({"0": 100, "1": 100}, np.array([0] * 100 + [1] * 100, dtype=np.int64))
    assert same.statistic == 0.0 and same.p_value == 1.0 and same.js_distance == 0.0 and not same.drifted
    with pytest.raises(BadInputError, match="alpha"):
        label_drift({"0": 1}, current, alpha=0.0)


def _relabelled(rate: float) -> np.ndarray:
    """The reference's labels with round(rate * 5000) records of A relabelled B."""
    labels = np.array([label for label, count in REFERENCE.items() for _ in range(count)], dtype=object)
    labels[: round(rate * len(labels))] = "B"
    return labels


def test_detectable_change_rate_is_where_the_test_starts_to_notice():
    # Deterministic: the one-way A->B pattern gives r = 0.0266 (133 of 5,000 records); relabelling 126 records
    # (0.95 r) gives p = 0.015, JS 0.0245, not drifted; 139 records (1.05 r) gives p = 0.0063, JS 0.0270.
    rate = detectable_change_rate(REFERENCE, {("A", "B"): 40}, 40)
    assert rate is not None and 0.02 < rate < 0.04
    assert label_drift(REFERENCE, _relabelled(rate * 1.05)).drifted
    assert not label_drift(REFERENCE, _relabelled(rate * 0.95)).drifted
    # Only the net movement counts: 30 A->B and 10 B->A move half as much per change as 40 A->B.
    half_net = detectable_change_rate(REFERENCE, {("A", "B"): 30, ("B", "A"): 10}, 40)
    assert half_net is not None and half_net == pytest.approx(2 * rate, abs=3e-4)
    # Changes that keep the label (n_changed_base above the transitions' total) dilute the pattern alike.
    diluted = detectable_change_rate(REFERENCE, {("A", "B"): 20}, 40)
    assert diluted == pytest.approx(half_net, abs=2e-4)


def test_detectable_change_rate_is_none_for_balanced_swaps_and_rejects_unknown_classes():
    assert detectable_change_rate(REFERENCE, {("A", "B"): 20, ("B", "A"): 20}, 40) is None
    assert detectable_change_rate(REFERENCE, {("A", "A"): 5}, 5) is None
    with pytest.raises(BadInputError, match="'Z'"):
        detectable_change_rate(REFERENCE, {("Z", "A"): 5}, 5)
    with pytest.raises(BadInputError, match="n_changed_base"):
        detectable_change_rate(REFERENCE, {("A", "B"): 5}, 4)


def _sign_model(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 0).astype(np.int64)


def test_model_on_current_scores_each_class():
    # Class "0": 4 records, 3 predicted right; class "1": 6 records, all right -> 9 of 10.
    current_x = np.array([[-1.0], [-2.0], [-3.0], [4.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    current_y = np.array(["0"] * 4 + ["1"] * 6, dtype=object)
    reference_x = np.array([[-1.0], [1.0], [-2.0], [2.0]])
    result = model_on_current(
        _sign_model, reference_x, current_x, reference_y=np.array([0, 1, 1, 1]), current_y=current_y
    )
    assert result.accuracy == pytest.approx(0.9) and result.reference_accuracy == pytest.approx(0.75)
    assert (result.lower, result.upper) == pytest.approx(wilson_interval(9, 10))
    by_label = {entry.label: entry for entry in result.per_class}
    assert (by_label["0"].n, by_label["0"].correct, by_label["0"].accuracy) == (4, 3, 0.75)
    assert (by_label["1"].n, by_label["1"].correct, by_label["1"].accuracy) == (6, 6, 1.0)
    assert by_label["1"].upper == 1.0 and by_label["1"].lower < 1.0
    assert result.prediction_drift.reference_counts == {"0": 2, "1": 2}
    assert result.prediction_drift.current_counts == {"0": 3, "1": 7}
    assert json.loads(json.dumps(result.to_dict()))["per_class"][0]["correct"] == 3
    unlabelled = model_on_current(_sign_model, reference_x, current_x)
    assert (
        unlabelled.accuracy is None and unlabelled.per_class == () and unlabelled.reference_accuracy is None
    )


def test_model_on_current_rejects_mismatched_inputs():
    x = np.zeros((4, 1))
    with pytest.raises(BadInputError, match="4 feature rows but 3 labels"):
        model_on_current(_sign_model, x, x, current_y=np.array([0, 1, 0]))
    with pytest.raises(BadInputError, match="predict returned shape"):
        model_on_current(lambda q: np.zeros((len(q), 2)), x, x)


def test_wilson_interval_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    with pytest.raises(BadInputError):
        wilson_interval(0, 0)
