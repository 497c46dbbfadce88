"""The reference sketch: quantile bins and counts per numeric column, category counts, the row sample and
digests, images through their tabular view, and a saved file that round-trips and refuses anything else."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.image_summary import tabular_view
from aisec.defend.data_validation.record_digests import row_digests
from aisec.defend.data_validation.records import Column, Records, records_from_arrays
from aisec.defend.data_validation.reference_sketch import (
    ReferenceSketch,
    build_sketch,
    load_sketch,
    save_sketch,
)


def _mixed_records(n: int = 3000, seed: int = 0) -> Records:
    """Numeric columns (normal with 5 % missing, integer counts), a categorical one with missing values, str
    labels."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=n)
    normal[rng.random(n) < 0.05] = np.nan
    counts = rng.poisson(3.0, size=n).astype(np.float64)
    colour = np.empty(n, dtype=object)
    colour[:] = rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2]).tolist()
    colour[rng.random(n) < 0.1] = None
    labels = np.empty(n, dtype=object)
    labels[:] = rng.choice(["cat", "dog"], size=n).tolist()
    return Records(
        path="ref.csv",
        columns=(
            Column("normal", "numeric", normal),
            Column("colour", "categorical", colour),
            Column("count", "numeric", counts),
        ),
        array=None,
        labels=labels,
        keys=None,
        sources=None,
        label_column="label",
        key_column=None,
        source_column=None,
    )


def _assert_same(a: ReferenceSketch, b: ReferenceSketch) -> None:
    assert (a.source, a.rows, a.schema, a.labels, a.label_kind) == (
        b.source,
        b.rows,
        b.schema,
        b.labels,
        b.label_kind,
    )
    assert a.categorical == b.categorical
    assert len(a.numeric) == len(b.numeric)
    for x, y in zip(a.numeric, b.numeric, strict=True):
        assert (x.name, x.n, x.missing, x.integral) == (y.name, y.n, y.missing, y.integral)
        for field in ("minimum", "maximum", "mean", "std", "low_tail_mean", "high_tail_mean"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        np.testing.assert_array_equal(x.edges, y.edges)
        np.testing.assert_array_equal(x.counts, y.counts)
    np.testing.assert_array_equal(a.sample, b.sample)  # NaN in the same places
    np.testing.assert_array_equal(a.sample_labels, b.sample_labels)
    np.testing.assert_array_equal(a.digests, b.digests)
    assert a.digests.dtype == b.digests.dtype == np.uint64


def test_numeric_and_categorical_summaries():
    records = _mixed_records()
    sketch = build_sketch(records, bins=50, generator=np.random.default_rng(0))
    normal, count = sketch.numeric
    values = records.columns[0].values
    present = values[~np.isnan(values)]
    assert (normal.name, normal.n, normal.missing) == ("normal", present.size, 3000 - present.size)
    assert normal.mean == pytest.approx(present.mean()) and normal.std == pytest.approx(present.std(ddof=1))
    assert (normal.minimum, normal.maximum) == (present.min(), present.max())
    assert not normal.integral and count.integral
    assert normal.edges.size == 49 and np.all(np.diff(normal.edges) > 0)
    assert normal.counts.sum() == normal.n and count.counts.sum() == count.n == 3000
    # quantile bins of a continuous column hold about n / bins values each (60 here)
    assert normal.counts.min() >= 50 and normal.counts.max() <= 70
    # a Poisson column has few distinct values: its edges are those values, each bin one of them
    assert set(count.edges.tolist()) <= set(np.unique(records.columns[2].values).tolist())
    np.testing.assert_array_equal(count.bin_counts(records.columns[2].values), count.counts)
    np.testing.assert_array_equal(normal.bin_counts(values), normal.counts)  # NaN left out
    (colour,) = sketch.categorical
    truth = Counter(v for v in records.columns[1].values.tolist() if v is not None)
    assert colour.counts == dict(truth) and colour.n == sum(truth.values())
    assert colour.missing == 3000 - colour.n
    assert sketch.labels == dict(Counter(records.labels.tolist())) and sketch.label_kind == "str"
    assert sketch.schema == records.schema()
    assert json.loads(json.dumps(sketch.to_summary())) == {
        "source": "ref.csv",
        "rows": 3000,
        "numeric_columns": 2,
        "categorical_columns": 1,
        "bins": 50,
        "sample_rows": 3000,
        "classes": 2,
    }


def test_bins_hold_values_above_the_previous_edge_up_to_their_own():
    sketch = build_sketch(
        records_from_arrays(np.array([[1.0], [2.0], [3.0], [4.0]])),
        bins=2,
        generator=np.random.default_rng(0),
    )
    (column,) = sketch.numeric
    assert column.edges.tolist() == [2.0] and column.counts.tolist() == [2, 2]
    assert column.bin_counts(np.array([2.0, 2.5, -7.0, 9.0, np.nan])).tolist() == [2, 2]
    assert (column.low_tail_mean, column.high_tail_mean) == (1.5, 3.5)


def test_sample_rows_and_digests():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 3))
    records = records_from_arrays(x, rng.integers(0, 4, size=20_000))
    sketch = build_sketch(records, sample_rows=500, generator=np.random.default_rng(7))
    assert sketch.sample.shape == (500, 3)
    rows = np.flatnonzero(np.isin(x[:, 0], sketch.sample[:, 0]))
    assert rows.size == 500  # distinct rows of the data, whole, in record order
    np.testing.assert_array_equal(x[rows], sketch.sample)
    assert sketch.sample_labels.dtype.kind == "U"
    assert sketch.sample_labels.tolist() == [str(v) for v in records.labels[rows]]
    assert sketch.label_kind == "int" and sum(sketch.labels.values()) == 20_000
    np.testing.assert_array_equal(sketch.digests, row_digests(records))
    again = build_sketch(records, sample_rows=500, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(again.sample, sketch.sample)
    other = build_sketch(records, sample_rows=500, generator=np.random.default_rng(8))
    assert not np.array_equal(other.sample, sketch.sample)


def test_images_are_sketched_through_their_tabular_view():
    images = np.random.default_rng(2).integers(0, 256, size=(300, 3, 8, 8), dtype=np.uint8)
    records = records_from_arrays(images, np.arange(300) % 10)
    sketch = build_sketch(records, generator=np.random.default_rng(0))
    view = tabular_view(records)
    assert [c.name for c in sketch.numeric] == [c.name for c in view.columns]
    assert [c.name for c in sketch.numeric][-3:] == ["channel0_mean", "channel1_mean", "channel2_mean"]
    assert sketch.numeric[0].mean == pytest.approx(view.columns[0].values.mean())
    assert sketch.schema["array"] == {"record_shape": [3, 8, 8], "dtype": "uint8"}
    np.testing.assert_array_equal(sketch.digests, row_digests(records))  # of the pixels, not the view


def test_save_and_load_round_trip(tmp_path):
    sketch = build_sketch(_mixed_records(), generator=np.random.default_rng(0))
    path = tmp_path / "reference.sketch.npz"
    save_sketch(sketch, path)
    _assert_same(load_sketch(path), sketch)
    unlabelled = build_sketch(records_from_arrays(np.zeros((10, 2))), generator=np.random.default_rng(0))
    save_sketch(unlabelled, path)
    loaded = load_sketch(path)
    _assert_same(loaded, unlabelled)
    assert loaded.labels is None and loaded.sample_labels is None


def _rewritten(path, change) -> bytes:
    """The sketch file at `path` with its arrays passed through `change` (a dict -> None edit)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _set_meta(arrays, key, value):
    meta = json.loads(arrays["meta"].tobytes())
    meta[key] = value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("text", "not an .npz archive"),
        ("foreign", "no 'meta' array"),
        ("truncated", "not a readable .npz archive"),
        ("schema", "sketch schema is 'aisec.reference-sketch/0'"),
        ("counts", "bin edges and counts"),
        ("sample", "sample width"),
        ("digests", "digests length"),
        ("dtype", "sketch array 'edges' is float32"),
        ("meta", "malformed reference sketch"),
    ],
)
def test_load_refuses_what_is_not_a_sketch(tmp_path, case, message):
    good = tmp_path / "good.npz"
    save_sketch(build_sketch(_mixed_records(500), bins=20, generator=np.random.default_rng(0)), good)
    bad = tmp_path / "bad.npz"
    if case == "text":
        bad.write_text("name,value\na,1\n")
    elif case == "foreign":
        np.savez(bad, x=np.zeros((3, 2)))
    elif case == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        edits = {
            "schema": lambda a: _set_meta(a, "schema", "aisec.reference-sketch/0"),
            "counts": lambda a: a.update(bin_counts=a["bin_counts"][:-1]),
            "sample": lambda a: a.update(sample=a["sample"][:, :1]),
            "digests": lambda a: a.update(digests=a["digests"][:-1]),
            "dtype": lambda a: a.update(edges=a["edges"].astype(np.float32)),
            "meta": lambda a: _set_meta(a, "rows", "many"),
        }
        bad.write_bytes(_rewritten(good, edits[case]))
    with pytest.raises(BadInputError) as error:
        load_sketch(bad)
    assert str(bad) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)
    assert load_sketch(good).rows == 500


def test_empty_records_and_bad_bins_are_refused():
    with pytest.raises(BadInputError, match="no records"):
        build_sketch(records_from_arrays(np.zeros((0, 2))), generator=np.random.default_rng(0))
    with pytest.raises(BadInputError, match="bins >= 2"):
        build_sketch(records_from_arrays(np.zeros((5, 2))), bins=1, generator=np.random.default_rng(0))
