"""Exact and near-duplicate records within and between data sets (aisec.defend.data_validation.duplicates)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from aisec.core.errors import BadInputError
from aisec.defend.data_validation import duplicates
from aisec.defend.data_validation.duplicates import count_in_digests, find_duplicates
from aisec.defend.data_validation.record_digests import row_digests
from aisec.defend.data_validation.records import Column, Records, records_from_arrays


def _leaky_split(seed: int, *, noise: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """5,000 training and 1,000 test records of 20 features on different scales: test rows 0-36 copy
    training records exactly, rows 37-59 copy others with `noise` training standard deviations of noise;
    training rows 4990-4994 repeat rows 0-4 and test rows 990-992 repeat test rows 900-902; the exact copies
    at rows 0-10 carry another label."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.1, 100.0, 20)
    train = rng.standard_normal((5000, 20)) * scales
    train[4990:4995] = train[0:5]
    test = rng.standard_normal((1000, 20)) * scales
    source = rng.choice(4990, size=60, replace=False)
    test[:37] = train[source[:37]]
    test[37:60] = train[source[37:]] + noise * train.std(axis=0) * rng.standard_normal((23, 20))
    test[990:993] = test[900:903]
    train_labels = rng.integers(0, 3, 5000)
    test_labels = rng.integers(0, 3, 1000)
    test_labels[:60] = train_labels[source]
    test_labels[:11] = (test_labels[:11] + 1) % 3
    return train, train_labels, test, test_labels


@pytest.mark.parametrize("seed", range(3))
def test_exact_and_near_copies_are_counted_without_misses_or_extras(seed: int) -> None:
    train, train_labels, test, test_labels = _leaky_split(seed)
    report = find_duplicates(
        records_from_arrays(train, train_labels),
        records_from_arrays(test, test_labels),
        generator=np.random.default_rng(seed),
    )
    assert (report.reference_rows, report.current_rows) == (5000, 1000)
    assert report.exact_between == 37
    assert report.near_between == 23
    assert report.near_checked == 1000 and report.near_capped == 0
    assert report.within_reference == 5 and report.within_current == 3
    assert report.conflicting_labels == 11
    assert report.leaked_share == pytest.approx(60 / 1000)
    assert len(report.examples) == 20
    assert all(pair.distance == 0.0 for pair in report.examples)
    assert [pair.same_label for pair in report.examples[:12]] == [False] * 11 + [True]
    assert report.examples[0].current == "row 1"


def test_near_examples_follow_the_exact_ones_with_their_distance() -> None:
    train, train_labels, test, test_labels = _leaky_split(0)
    report = find_duplicates(
        records_from_arrays(train, train_labels),
        records_from_arrays(test[30:], test_labels[30:]),
        generator=np.random.default_rng(0),
    )
    assert [pair.current for pair in report.examples] == [f"row {i}" for i in range(1, 21)]
    assert all(pair.distance == 0.0 for pair in report.examples[:7])
    near = report.examples[7:]
    # 1e-5 std noise on 20 features: the largest difference of a copy, over the examples of seeds 0-19, is
    # min 1.07e-5, median 2.04e-5, max 4.41e-5 std
    assert all(5e-6 < pair.distance < 1e-4 for pair in near)
    assert all(pair.same_label for pair in near)


@pytest.mark.parametrize("seed", range(3))
def test_noise_of_a_hundredth_std_is_near_only_at_a_looser_tolerance(seed: int) -> None:
    train, _, test, _ = _leaky_split(seed, noise=0.01)
    reference, current = records_from_arrays(train), records_from_arrays(test)
    strict = find_duplicates(reference, current, near_tolerance=1e-3, generator=np.random.default_rng(seed))
    loose = find_duplicates(reference, current, near_tolerance=0.05, generator=np.random.default_rng(seed))
    assert (strict.exact_between, strict.near_between) == (37, 0)
    assert (loose.exact_between, loose.near_between) == (37, 23)
    assert strict.conflicting_labels == 0 and loose.examples[0].same_label is None
    copies = find_duplicates(
        reference,
        records_from_arrays(test[37:60]),
        near_tolerance=0.05,
        generator=np.random.default_rng(seed),
    )
    # the largest feature difference of a noisy copy (0.01 std Gaussian noise on 20 features), over the 20
    # examples of seeds 0-19: min 0.0107, median 0.0204, max 0.0441 std
    assert len(copies.examples) == 20
    assert all(0.005 < pair.distance < 0.05 for pair in copies.examples)


def _brute_force_near(train: np.ndarray, test: np.ndarray, tolerance: float) -> int:
    """Test records equal to no training record and within `tolerance` training stds of one, by a full scan."""
    std = np.nanstd(train, axis=0)
    near = 0
    for row in test:
        with np.errstate(divide="ignore", invalid="ignore"):
            units = np.abs(train - row) / std
        units[(train == row) | (np.isnan(train) & np.isnan(row))] = 0.0
        units[np.isnan(units)] = np.inf
        distance = units.max(axis=1)
        near += bool(not (distance == 0).any() and (distance <= tolerance).any())
    return near


@pytest.mark.parametrize("width", [6, 24])
def test_near_search_finds_what_a_full_scan_finds(width: int) -> None:
    rng = np.random.default_rng(width)
    mixing = rng.standard_normal((3, width))
    train = np.round(rng.standard_normal((2000, 3)) @ mixing + 0.3 * rng.standard_normal((2000, width)), 1)
    test = np.round(rng.standard_normal((400, 3)) @ mixing + 0.3 * rng.standard_normal((400, width)), 1)
    copied = rng.integers(0, 2000, 150)
    spread = rng.choice([0.0, 0.01, 0.05, 0.2, 1.0], size=(150, 1))
    test[:150] = train[copied] + spread * rng.uniform(-1, 1, (150, width)) * train.std(axis=0)
    train[:, 0] = test[:, 0] = 1.0  # a constant feature: a near pair must agree on it
    train[rng.random(train.shape) < 0.02] = np.nan
    test[:75][np.isnan(train[copied[:75]])] = np.nan
    for tolerance in (0.02, 0.1, 0.5):
        report = find_duplicates(
            records_from_arrays(train),
            records_from_arrays(test),
            near_tolerance=tolerance,
            generator=np.random.default_rng(1),
        )
        expected = _brute_force_near(train, test, tolerance)
        assert expected > 10
        assert report.near_between == expected
        assert report.near_capped == 0


def test_nan_in_the_same_place_is_an_exact_duplicate() -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((50, 4))
    train[3, 1] = np.nan
    test = train[[3, 3, 7]].copy()
    test[1, 2] = np.nan  # NaN where the training record has a number: neither exact nor near
    test[2, 0] = np.nan
    test[2, 1] = train[7, 1]
    report = find_duplicates(
        records_from_arrays(train),
        records_from_arrays(test),
        near_tolerance=10.0,
        generator=np.random.default_rng(0),
    )
    assert (report.exact_between, report.near_between) == (1, 0)
    twice = find_duplicates(
        records_from_arrays(np.vstack([train, train[3]])),
        records_from_arrays(test),
        generator=np.random.default_rng(0),
    )
    assert twice.within_reference == 1


def _with_colour(records: Records, colours: list[str | None]) -> Records:
    values = np.empty(len(colours), dtype=object)
    values[:] = colours
    return dataclasses.replace(records, columns=(Column("colour", "categorical", values), *records.columns))


def test_categorical_values_must_be_equal() -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 3))
    colours: list[str | None] = list(rng.choice(["red", "green"], 200))
    colours[5] = None
    test = train[[0, 1, 2, 5]] + np.array([[0.0], [0.0], [1e-6], [0.0]])
    reference = _with_colour(records_from_arrays(train), colours)
    current = _with_colour(records_from_arrays(test), [colours[0], "blue", colours[2], None])
    report = find_duplicates(reference, current, near_tolerance=0.5, generator=np.random.default_rng(0))
    assert (report.exact_between, report.near_between) == (2, 1)  # row 2 differs in colour only
    assert count_in_digests(row_digests(reference), current) == 2


def test_copied_images_are_found() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (500, 8, 8)).astype(np.uint8)
    test = rng.integers(0, 256, (100, 8, 8)).astype(np.uint8)
    test[:9] = train[100:109]
    test[9:14] = train[200:205]
    test[9:14, 3, 3] ^= 1  # one pixel off by one grey level: about 0.014 std
    train[400] = train[10]
    reference = records_from_arrays(train)
    report = find_duplicates(
        reference, records_from_arrays(test), near_tolerance=0.05, generator=np.random.default_rng(0)
    )
    assert (report.exact_between, report.near_between, report.within_reference) == (9, 5, 1)
    as_floats = records_from_arrays(test.astype(np.float32))
    assert find_duplicates(reference, as_floats, generator=np.random.default_rng(0)).exact_between == 9


def test_count_in_digests_agrees_with_exact_between() -> None:
    for seed in range(3):
        train, train_labels, test, test_labels = _leaky_split(seed)
        reference, current = records_from_arrays(train, train_labels), records_from_arrays(test, test_labels)
        report = find_duplicates(reference, current, generator=np.random.default_rng(seed))
        assert count_in_digests(row_digests(reference), current) == report.exact_between == 37


def test_digest_collisions_are_confirmed_on_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 20))
    train[150:155] = train[:5]
    test = rng.standard_normal((60, 20))
    test[:13] = train[40:53]
    test[50:53] = test[20:23]
    colours = ["red"] * 200
    reference = _with_colour(records_from_arrays(train), colours)
    current = _with_colour(records_from_arrays(test), ["red"] * 12 + ["blue"] * 48)  # row 13: numbers only
    honest = find_duplicates(reference, current, generator=np.random.default_rng(0))
    assert (honest.exact_between, honest.within_reference, honest.within_current) == (12, 5, 3)
    monkeypatch.setattr(duplicates, "row_digests", lambda records: np.zeros(len(records), dtype=np.uint64))
    assert find_duplicates(reference, current, generator=np.random.default_rng(0)) == honest


def test_examples_name_keys_and_large_current_sets_are_subsampled() -> None:
    train, train_labels, test, test_labels = _leaky_split(0)
    reference = records_from_arrays(train, train_labels, keys=np.array([f"train-{i}" for i in range(5000)]))
    current = records_from_arrays(test, test_labels, keys=np.array([f"test-{i}" for i in range(1000)]))
    report = find_duplicates(reference, current, max_near_checks=400, generator=np.random.default_rng(0))
    assert report.near_checked == 400
    assert report.exact_between == 37
    # 23 near copies in 1,000 rows, 400 checked: 9.2 expected; over seeds 0-19: min 6, median 9, max 13
    assert 4 <= report.near_between <= 15
    assert report.leaked_share == pytest.approx(37 / 1000 + report.near_between / 400)
    assert report.examples[0].current == "test-0" and report.examples[0].reference.startswith("train-")
    unkeyed = find_duplicates(reference, records_from_arrays(test), generator=np.random.default_rng(0))
    assert unkeyed.examples[0].current == "row 1" and unkeyed.examples[0].reference.startswith("row ")
    encoded = json.loads(json.dumps(report.to_dict()))
    assert encoded["near_checked"] == 400 and encoded["examples"][0]["current"] == "test-0"
    assert encoded == report.to_dict()


def test_different_columns_are_refused_by_name() -> None:
    rng = np.random.default_rng(0)
    reference = records_from_arrays(rng.standard_normal((10, 3)), names=["age", "income", "score"])
    current = records_from_arrays(rng.standard_normal((10, 3)), names=["age", "income", "rating"])
    with pytest.raises(BadInputError, match="only in the reference: score; only in the current data: rating"):
        find_duplicates(reference, current, generator=np.random.default_rng(0))
    images = records_from_arrays(rng.standard_normal((10, 2, 2)))
    with pytest.raises(BadInputError, match="images"):
        find_duplicates(reference, images, generator=np.random.default_rng(0))
