"""Exact comparison of two snapshots of a data set: records added, removed and changed, every label that
changed with the class-transition counts, classes that appeared or vanished, and schema changes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aisec.defend.data_validation.records import Records


@dataclass(frozen=True)
class LabelChange:
    """A record whose label differs between the snapshots: its key (or row numbers, see `diff_snapshots`)."""

    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class SnapshotDiff:
    """What changed from the old snapshot to the new one. `changed` lists records with the same key and
    different features (always empty when records are matched by content); `transitions` counts old label ->
    new label over the label changes only."""

    matched_by: Literal["key", "content"]
    added: list[str]
    removed: list[str]
    changed: list[str]
    label_changes: list[LabelChange]
    transitions: dict[Any, dict[Any, int]]
    classes_added: list[Any]
    classes_removed: list[Any]
    schema_changes: list[str]
    old_count: int
    new_count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: labels as int or str, transition keys as str (JSON object keys)."""
        return {
            "matched_by": self.matched_by,
            "old_count": self.old_count,
            "new_count": self.new_count,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "label_changes": [
                {"key": c.key, "old": _plain(c.old), "new": _plain(c.new)} for c in self.label_changes
            ],
            "transitions": {
                str(_plain(old)): {str(_plain(new)): count for new, count in row.items()}
                for old, row in self.transitions.items()
            },
            "classes_added": [_plain(c) for c in self.classes_added],
            "classes_removed": [_plain(c) for c in self.classes_removed],
            "schema_changes": list(self.schema_changes),
        }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def diff_snapshots(old: Records, new: Records) -> SnapshotDiff:
    """Compare two snapshots exactly. When both have keys, records are matched by key: a key in one snapshot
    only is added or removed, a shared key whose features differ is changed, one whose label differs is a label
    change. Otherwise records are matched by the SHA-256 of their features (`Records.record_hashes`) as
    multisets: within each group of identical feature rows, records with the same label are paired first, in
    row order, then the rest are paired in row order as label changes; what is left over is added or removed.
    So duplicate feature rows with different labels in one snapshot pair up without inventing label changes.
    Records matched by content are named by row number (0-based): "i" in the old snapshot for removed, "j" in
    the new one for added, "i->j" for a label change."""
    if old.keys is not None and new.keys is not None:
        matched_by: Literal["key", "content"] = "key"
        added, removed, changed, pairs = _match_by_key(old, new)
    else:
        matched_by = "content"
        added, removed, pairs = _match_by_content(old, new)
        changed = []
    label_changes, transitions = _label_changes(old, new, pairs, matched_by)
    old_classes = _classes(old)
    new_classes = _classes(new)
    return SnapshotDiff(
        matched_by=matched_by,
        added=added,
        removed=removed,
        changed=changed,
        label_changes=label_changes,
        transitions=transitions,
        classes_added=sorted(new_classes - old_classes, key=_label_order) if old.labels is not None else [],
        classes_removed=sorted(old_classes - new_classes, key=_label_order) if new.labels is not None else [],
        schema_changes=schema_changes(old, new),
        old_count=len(old),
        new_count=len(new),
    )


def _label_order(label: Any) -> tuple[str, Any]:
    return (type(label).__name__, label)


def _classes(records: Records) -> set[Any]:
    return set() if records.labels is None else set(records.labels.tolist())


def _match_by_key(old: Records, new: Records) -> tuple[list[str], list[str], list[str], np.ndarray]:
    assert old.keys is not None and new.keys is not None
    old_index = {k: i for i, k in enumerate(old.keys.tolist())}
    new_keys = new.keys.tolist()
    pairs = [(old_index[k], j) for j, k in enumerate(new_keys) if k in old_index]
    shared = {new_keys[j] for _, j in pairs}
    added = [k for k in new_keys if k not in old_index]
    removed = [k for k in old.keys.tolist() if k not in shared]
    matched = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    differs = _features_differ(old, new, matched)
    changed = [new_keys[j] for j in matched[differs, 1].tolist()]
    return added, removed, changed, matched


def _features_differ(old: Records, new: Records, pairs: np.ndarray) -> np.ndarray:
    """Per matched pair, whether the features differ: compared column by column (NaN equals NaN, -0.0 equals
    0.0, as in `Records.record_hashes`) when the schemas agree, by record hash otherwise."""
    if pairs.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if [(c.name, c.kind) for c in old.columns] != [(c.name, c.kind) for c in new.columns] or (
        old.schema()["array"] != new.schema()["array"]
    ):
        old_hashes = np.array(old.record_hashes(), dtype=object)
        new_hashes = np.array(new.record_hashes(), dtype=object)
        return np.asarray(old_hashes[pairs[:, 0]] != new_hashes[pairs[:, 1]], dtype=bool)
    differs = np.zeros(pairs.shape[0], dtype=bool)
    blocks = [(c.values, d.values) for c, d in zip(old.columns, new.columns, strict=True)]
    if old.array is not None and new.array is not None:
        blocks.append((old.array.reshape(len(old), -1), new.array.reshape(len(new), -1)))
    for before_all, after_all in blocks:
        before, after = before_all[pairs[:, 0]], after_all[pairs[:, 1]]
        unequal = before != after
        if before.dtype.kind == "f":
            unequal &= ~(np.isnan(before) & np.isnan(after))
        differs |= unequal.reshape(pairs.shape[0], -1).any(axis=1)
    return differs


def _match_by_content(old: Records, new: Records) -> tuple[list[str], list[str], np.ndarray]:
    old_groups: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(old.record_hashes()):
        old_groups[digest].append(i)
    new_groups: dict[str, list[int]] = defaultdict(list)
    for j, digest in enumerate(new.record_hashes()):
        new_groups[digest].append(j)
    old_labels = None if old.labels is None else old.labels.tolist()
    new_labels = None if new.labels is None else new.labels.tolist()
    pairs: list[tuple[int, int]] = []
    unmatched_old: list[int] = []
    unmatched_new: list[int] = []
    for digest, old_rows in old_groups.items():
        new_rows = new_groups.get(digest, [])
        if len(old_rows) == 1 and len(new_rows) == 1:
            pairs.append((old_rows[0], new_rows[0]))
            continue
        if old_labels is not None and new_labels is not None and new_rows:
            old_rows, new_rows = _pair_same_labels(old_rows, new_rows, old_labels, new_labels, pairs)
        common = min(len(old_rows), len(new_rows))
        pairs.extend(zip(old_rows[:common], new_rows[:common], strict=True))
        unmatched_old.extend(old_rows[common:])
        unmatched_new.extend(new_rows[common:])
    unmatched_new.extend(j for digest, rows in new_groups.items() if digest not in old_groups for j in rows)
    matched = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return [str(j) for j in sorted(unmatched_new)], [str(i) for i in sorted(unmatched_old)], matched


def _pair_same_labels(
    old_rows: list[int],
    new_rows: list[int],
    old_labels: list[Any],
    new_labels: list[Any],
    pairs: list[tuple[int, int]],
) -> tuple[list[int], list[int]]:
    """Pair rows of one feature group that carry the same label (in row order) into `pairs`; return the rest."""
    waiting: dict[Any, list[int]] = defaultdict(list)
    for j in new_rows:
        waiting[new_labels[j]].append(j)
    taken: set[int] = set()
    rest_old = []
    for i in old_rows:
        queue = waiting.get(old_labels[i])
        if queue:
            j = queue.pop(0)
            pairs.append((i, j))
            taken.add(j)
        else:
            rest_old.append(i)
    return rest_old, [j for j in new_rows if j not in taken]


def _label_changes(
    old: Records, new: Records, pairs: np.ndarray, matched_by: str
) -> tuple[list[LabelChange], dict[Any, dict[Any, int]]]:
    if old.labels is None or new.labels is None or pairs.shape[0] == 0:
        return [], {}
    old_labels = old.labels[pairs[:, 0]].astype(object)
    new_labels = new.labels[pairs[:, 1]].astype(object)
    differs = np.flatnonzero(old_labels != new_labels)
    keys = new.keys
    changes = []
    transitions: dict[Any, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    for m in differs.tolist():
        i, j = int(pairs[m, 0]), int(pairs[m, 1])
        before, after = _plain(old_labels[m]), _plain(new_labels[m])
        name = str(keys[j]) if matched_by == "key" and keys is not None else f"{i}->{j}"
        changes.append(LabelChange(name, before, after))
        transitions[before][after] += 1
    return changes, {before: dict(row) for before, row in transitions.items()}


def schema_changes(old: Records, new: Records) -> list[str]:
    """Columns added, removed or of another kind; image array shape or dtype; labels or their kind; one line
    each."""
    lines = []
    old_columns = {c.name: c.kind for c in old.columns}
    new_columns = {c.name: c.kind for c in new.columns}
    for name, kind in new_columns.items():
        if name not in old_columns:
            lines.append(f"column '{name}' added ({kind})")
        elif old_columns[name] != kind:
            lines.append(f"column '{name}' changed from {old_columns[name]} to {kind}")
    lines.extend(f"column '{name}' removed" for name in old_columns if name not in new_columns)
    old_array = old.schema()["array"]
    new_array = new.schema()["array"]
    if old_array != new_array:
        lines.append(f"image array changed from {_describe_array(old_array)} to {_describe_array(new_array)}")
    old_label = old.schema()["label"]
    new_label = new.schema()["label"]
    if (old_label is None) != (new_label is None):
        lines.append("labels added" if old_label is None else "labels removed")
    elif old_label is not None and new_label is not None and old_label["kind"] != new_label["kind"]:
        lines.append(f"labels changed from {old_label['kind']} to {new_label['kind']}")
    return lines


def _describe_array(array: dict[str, Any] | None) -> str:
    if array is None:
        return "none"
    return f"{tuple(array['record_shape'])} {array['dtype']}"
