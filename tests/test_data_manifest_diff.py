"""The provenance manifest and the exact snapshot comparison, including the issue's figure: 2 % of 20,000
records relabelled, every one listed by key (and by content), none wrongly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.manifest import Provenance, build_manifest, read_manifest, write_manifest
from aisec.defend.data_validation.records import Column, Records
from aisec.defend.data_validation.snapshot_diff import diff_snapshots

PROVENANCE = Provenance(source="Acme Data Ltd", licence="CC-BY-4.0", retrieved="2026-11-30", labeller="Acme")


def _records(x, y, keys=None, names=None) -> Records:
    names = names or [f"f{j}" for j in range(x.shape[1])]
    columns = tuple(
        Column(name, "numeric", np.ascontiguousarray(x[:, j], dtype=np.float64))
        for j, name in enumerate(names)
    )
    key_array = None if keys is None else np.array([str(k) for k in keys], dtype=object)
    return Records("mem", columns, None, y, key_array, None, "label", None if keys is None else "id", None)


def _synthetic(n=20_000, d=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).round(3), rng.integers(0, 5, size=n), rng


def test_manifest_round_trip_and_hashes(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("id,f,colour,label\na,1.5,red,0\nb,2,blue,1\nc,3,red,1\n", encoding="utf-8")
    manifest = build_manifest([csv], PROVENANCE, key="id")
    out = tmp_path / "m.json"
    write_manifest(manifest, out)
    assert read_manifest(out) == json.loads(json.dumps(manifest))
    entry = manifest["files"][0]
    assert manifest["schema"] == "aisec.data-manifest/1" and manifest["provenance"]["licence"] == "CC-BY-4.0"
    assert entry["records"] == 3 and entry["class_counts"] == {"0": 1, "1": 2}
    assert entry["record_hashes_keyed_by"] == "key column 'id'" and set(entry["record_hashes"]) == {
        "a",
        "b",
        "c",
    }
    csv.write_text("id,f,colour,label\na,1.5,red,0\nb,2,blue,0\nc,3,red,1\n", encoding="utf-8")
    relabelled = build_manifest([csv], PROVENANCE, key="id")["files"][0]
    assert [k for k in "abc" if relabelled["record_hashes"][k] != entry["record_hashes"][k]] == ["b"]
    assert relabelled["content_digest"] != entry["content_digest"] and relabelled["sha256"] != entry["sha256"]
    csv.write_text("label,colour,f,id\n0,red,1.50,a\n1,blue,2.0,b\n1,red,3,c\n", encoding="utf-8")
    reordered = build_manifest([csv], PROVENANCE, key="id")["files"][0]
    assert reordered["content_digest"] == entry["content_digest"] and reordered["sha256"] != entry["sha256"]


def test_manifest_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="not an ISO date"):
        Provenance(source="s", licence="MIT", retrieved="30/11/2026")
    with pytest.raises(BadInputError, match="licence must not be empty"):
        Provenance(source="s", licence=" ", retrieved="2026-11-30")
    other = tmp_path / "other.json"
    other.write_text('{"schema": "something/2"}', encoding="utf-8")
    with pytest.raises(BadInputError, match="expected 'aisec.data-manifest/1'"):
        read_manifest(other)
    with pytest.raises(BadInputError, match="no such folder"):
        write_manifest({"schema": "aisec.data-manifest/1"}, tmp_path / "missing" / "m.json")


def test_two_percent_relabelled_listed_exactly_by_key_and_by_content():
    x, y, rng = _synthetic()
    n = len(y)
    relabelled = rng.choice(n, size=n // 50, replace=False)
    y_new = y.copy()
    y_new[relabelled] = (y[relabelled] + rng.integers(1, 5, size=relabelled.size)) % 5
    by_key = diff_snapshots(_records(x, y, keys=range(n)), _records(x, y_new, keys=range(n)))
    assert by_key.matched_by == "key"
    assert {c.key for c in by_key.label_changes} == {str(i) for i in relabelled}
    assert all(c.old == y[int(c.key)] and c.new == y_new[int(c.key)] for c in by_key.label_changes)
    assert by_key.added == by_key.removed == by_key.changed == []
    assert sum(sum(row.values()) for row in by_key.transitions.values()) == relabelled.size
    by_content = diff_snapshots(_records(x, y), _records(x, y_new))
    assert by_content.matched_by == "content"
    assert {c.key for c in by_content.label_changes} == {f"{i}->{i}" for i in relabelled}
    assert by_content.added == by_content.removed == []


def test_added_removed_changed_classes_and_schema():
    x, y, _ = _synthetic(n=200, d=3)
    y[y == 4] = 3  # old snapshot: classes 0..3
    keys = list(range(200))
    x_new, y_new = x.copy(), y.copy()
    y_new[y_new == 0] = 9  # class 0 vanishes, 9 appears
    x_new[5, 1] += 1.0
    old = _records(x, y, keys=keys)
    new = _records(
        np.vstack([x_new[10:], np.ones((2, 3))]),
        np.concatenate([y_new[10:], [1, 1]]),
        keys=keys[10:] + [500, 501],
    )
    diff = diff_snapshots(old, new)
    assert diff.added == ["500", "501"] and diff.removed == [str(k) for k in range(10)]
    assert diff.changed == []  # record 5 was removed; change one that stays
    x_kept = np.vstack([x_new[10:], np.ones((2, 3))])
    x_kept[0, 0] += 0.5
    diff = diff_snapshots(old, _records(x_kept, new.labels, keys=keys[10:] + [500, 501]))
    assert diff.changed == ["10"]
    assert diff.classes_added == [9] and diff.classes_removed == [0]
    assert set(diff.transitions) == {0} and set(diff.transitions[0]) == {9}
    assert diff.to_dict()["transitions"] == {"0": {"9": diff.transitions[0][9]}}
    json.dumps(diff.to_dict())
    renamed = _records(x, y, keys=keys, names=["f0", "f1", "g"])
    schema = diff_snapshots(old, renamed).schema_changes
    assert schema == ["column 'g' added (numeric)", "column 'f2' removed"]


def test_content_matching_of_duplicate_rows_with_different_labels():
    x = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    old = _records(x[:3], np.array([0, 1, 2]))
    swapped = diff_snapshots(old, _records(x[[1, 0, 2]], np.array([1, 0, 2])))
    assert swapped.label_changes == [] and swapped.added == swapped.removed == []
    extra = diff_snapshots(old, _records(x[[0, 1, 3, 2]], np.array([5, 0, 1, 2])))
    assert extra.label_changes == [] and extra.added == ["0"] and extra.removed == []
    relabel = diff_snapshots(old, _records(x[[0, 1, 2]], np.array([0, 7, 2])))
    assert [(c.key, c.old, c.new) for c in relabel.label_changes] == [("1->1", 1, 7)]


@pytest.mark.slow
def test_diff_lists_every_label_change_of_a_million_records():
    rng = np.random.default_rng(1)
    n = 1_000_000
    x = rng.normal(size=(n, 20))
    y = rng.integers(0, 10, size=n)
    y_new = y.copy()
    flipped = rng.choice(n, size=n // 50, replace=False)
    y_new[flipped] = (y_new[flipped] + 1) % 10
    keys = np.arange(n)
    for label, old, new in (
        ("key", _records(x, y, keys=keys), _records(x, y_new, keys=keys)),
        ("content", _records(x, y), _records(x, y_new)),
    ):
        diff = diff_snapshots(old, new)  # its speed: bench/data_diff.py
        assert len(diff.label_changes) == flipped.size, label
