"""Reading data set files into records: .npz (tabular and images), CSV, Parquet, and every bad input as one
BadInputError line naming the file and column."""

from __future__ import annotations

import numpy as np
import pytest

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.records import read_records


def test_npz_tabular_with_ids_and_source(tmp_path):
    path = tmp_path / "d.npz"
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(
        path, x=x, y=np.array([0, 1, 1, 2]), ids=np.array(["a", "b", "c", "d"]), source=np.array(["s"] * 4)
    )
    records = read_records(path)
    assert len(records) == 4
    assert [c.name for c in records.columns] == ["x0", "x1", "x2"]
    assert records.columns[1].values.dtype == np.float64
    assert records.columns[1].values.tolist() == [1.0, 4.0, 7.0, 10.0]
    assert records.labels.dtype == np.int64 and records.labels.tolist() == [0, 1, 1, 2]
    assert records.keys.tolist() == ["a", "b", "c", "d"]
    assert records.sources.tolist() == ["s"] * 4
    assert records.array is None
    schema = records.schema()
    assert schema["label"] == {"column": "y", "kind": "int"} and schema["key_column"] == "ids"


def test_npz_images_and_unlabelled(tmp_path):
    path = tmp_path / "img.npz"
    images = np.random.default_rng(0).integers(0, 255, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(path, x=images)
    records = read_records(path)
    assert records.columns == () and records.array.shape == (5, 8, 8, 3)
    assert records.labels is None and records.keys is None and len(records) == 5
    assert records.schema()["array"] == {"record_shape": [8, 8, 3], "dtype": "uint8"}
    hashes = records.record_hashes()
    assert len(set(hashes)) == 5
    images[2, 0, 0, 0] ^= 1
    np.savez(path, x=images)
    changed = read_records(path).record_hashes()
    assert [a != b for a, b in zip(hashes, changed, strict=True)] == [False, False, True, False, False]


def test_csv_numeric_categorical_missing(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,age,colour,label\n7,31,red,cat\n8,,blue,dog\n9,-0.0,,cat\n", encoding="utf-8")
    records = read_records(path, key="id")
    age, colour = records.columns
    assert (age.name, age.kind) == ("age", "numeric")
    assert age.values[0] == 31.0 and np.isnan(age.values[1])
    assert (colour.kind, colour.values.tolist()) == ("categorical", ["red", "blue", None])
    assert records.labels.tolist() == ["cat", "dog", "cat"]
    assert records.keys.tolist() == ["7", "8", "9"]
    assert records.schema()["label"]["kind"] == "str"


def test_record_hash_ignores_label_key_column_order_and_format(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("id,f,g,label\n1,0.5,x,0\n2,-0.0,,1\n", encoding="utf-8")
    b.write_text("g,label,f,id\nx,5,0.50,10\n,1,0,20\n", encoding="utf-8")
    hashes_a = read_records(a, key="id").record_hashes()
    assert hashes_a == read_records(b, key="id").record_hashes()
    assert len(hashes_a[0]) == 64 and hashes_a[0] != hashes_a[1]
    with_label_a = read_records(a, key="id").record_hashes(with_label=True)
    with_label_b = read_records(b, key="id").record_hashes(with_label=True)
    assert with_label_a[0] != with_label_b[0] and with_label_a[1] == with_label_b[1]


def test_parquet_matches_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "id": pa.array([1, 2, 3]),
            "f": pa.array([0.5, None, 2.0]),
            "colour": pa.array(["red", None, "blue"]).dictionary_encode(),
            "label": pa.array([0, 1, 0]),
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    records = read_records(path, key="id")
    assert [(c.name, c.kind) for c in records.columns] == [("f", "numeric"), ("colour", "categorical")]
    assert records.labels.dtype == np.int64 and records.keys.tolist() == ["1", "2", "3"]
    csv = tmp_path / "d.csv"
    csv.write_text("id,f,colour,label\n1,0.5,red,0\n2,,,1\n3,2,blue,0\n", encoding="utf-8")
    assert records.record_hashes(with_label=True) == read_records(csv, key="id").record_hashes(
        with_label=True
    )


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"f": [1.0], "label": [0]}), path)
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    with pytest.raises(BadInputError, match=r"reading Parquet needs pyarrow: pip install 'aisec\[data\]'"):
        read_records(path)


def _bad(path, **kwargs):
    with pytest.raises(BadInputError) as caught:
        read_records(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_file_not_what_its_extension_says(tmp_path):
    npz_as_csv = tmp_path / "d.csv"
    np.savez(tmp_path / "real.npz", x=np.zeros((2, 2)))
    npz_as_csv.write_bytes((tmp_path / "real.npz").read_bytes())
    assert "CSV text" in _bad(npz_as_csv) and ".npz" in _bad(npz_as_csv)
    csv_as_npz = tmp_path / "d.npz"
    csv_as_npz.write_text("a,label\n1,0\n", encoding="utf-8")
    assert "CSV text" in _bad(csv_as_npz)
    binary_as_parquet = tmp_path / "d.parquet"
    binary_as_parquet.write_bytes(b"\x00\x01\x02garbage")
    assert "unknown format" in _bad(binary_as_parquet)


def test_bad_csv_inputs(tmp_path):
    cases = {
        "empty": ("", {}, "empty file"),
        "header_only": ("a,label\n", {}, "no records"),
        "missing_column": ("a,b\n1,2\n", {}, "no label column 'label'"),
        "missing_key": ("a,label\n1,2\n", {"key": "id"}, "no key column 'id'"),
        "ragged": ("a,label\n1,0\n2,1,3\n", {}, "row 3 has 3 cells"),
        "duplicate_keys": (
            "id,a,label\nk1,1,0\nk2,2,0\nk1,3,1\n",
            {"key": "id"},
            "key column 'id' has 1 dup",
        ),
        "label_missing": ("a,label\n1,0\n2,\n", {}, "label column 'label' has 1 missing values"),
    }
    for name, (text, kwargs, expected) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text, encoding="utf-8")
        message = _bad(path, **kwargs)
        assert expected in message, (name, message)
    assert "'k1'" in _bad(tmp_path / "duplicate_keys.csv", key="id")


def test_bad_npz_inputs(tmp_path):
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((3, 2)), y=np.zeros(2, dtype=int))
    assert "'y' has shape (2,) but 'x' has 3 records" in _bad(mismatch)
    duplicates = tmp_path / "dup.npz"
    np.savez(duplicates, x=np.zeros((3, 2)), ids=np.array([1, 1, 2]))
    assert "key column 'ids' has 1 duplicated keys" in _bad(duplicates)
    nan_labels = tmp_path / "nan.npz"
    np.savez(nan_labels, x=np.zeros((2, 2)), y=np.array([0.0, np.nan]))
    assert "missing values" in _bad(nan_labels)
    no_x = tmp_path / "nox.npz"
    np.savez(no_x, y=np.zeros(2))
    assert "missing array 'x'" in _bad(no_x)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    _bad(pickled)
