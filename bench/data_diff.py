"""Snapshot comparison benchmark: `diff_snapshots` against the pandas way a user would write it, in one run.

Two snapshots of N records x 20 numeric features with string keys, 2 % of the labels changed. aisec: read
nothing (the Records are built in memory), match by key and by content, list every label change. Anchor: pandas
`merge` on the key column and a comparison of the label columns (label changes only: no added, removed or
changed-feature records, no content matching), the floor for the same question. Median of --repeats runs.

    .venv/bin/python bench/data_diff.py [--records 1000000] [--repeats 3]
Results are recorded in docs/benchmarks.md ("Data validation: snapshot comparison").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from aisec.defend.data_validation.records import Column, Records
from aisec.defend.data_validation.snapshot_diff import diff_snapshots


def records(x: np.ndarray, y: np.ndarray, keys: np.ndarray | None) -> Records:
    columns = tuple(Column(f"f{j}", "numeric", np.ascontiguousarray(x[:, j])) for j in range(x.shape[1]))
    return Records("memory", columns, None, y, keys, None, "label", None if keys is None else "id", None)


def median_seconds(run: Callable[[], int], repeats: int, expected: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = run()
        times.append(time.perf_counter() - start)
        assert found == expected, (found, expected)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, generator = args.records, np.random.default_rng(0)
    x = generator.normal(size=(n, 20))
    y = generator.integers(0, 10, size=n)
    y_new = y.copy()
    flipped = generator.choice(n, size=n // 50, replace=False)
    y_new[flipped] = (y_new[flipped] + 1) % 10
    keys = np.array([f"r{i}" for i in range(n)], dtype=object)

    old_keyed, new_keyed = records(x, y, keys), records(x, y_new, keys)
    old_plain, new_plain = records(x, y, None), records(x, y_new, None)
    frame_old = pd.DataFrame(x, columns=[f"f{j}" for j in range(20)]).assign(id=keys, label=y)
    frame_new = frame_old.assign(label=y_new)

    def pandas_merge() -> int:
        merged = frame_old[["id", "label"]].merge(
            frame_new[["id", "label"]], on="id", suffixes=("_old", "_new")
        )
        return int((merged["label_old"] != merged["label_new"]).sum())

    by_key = median_seconds(
        lambda: len(diff_snapshots(old_keyed, new_keyed).label_changes), args.repeats, flipped.size
    )
    by_content = median_seconds(
        lambda: len(diff_snapshots(old_plain, new_plain).label_changes), args.repeats, flipped.size
    )
    anchor = median_seconds(pandas_merge, args.repeats, flipped.size)
    print(
        f"{n:,} records x 20 features, {flipped.size:,} relabelled; median of {args.repeats}; pandas {pd.__version__}"
    )
    print(f"aisec diff by key      {by_key:7.2f} s   ratio to pandas merge {by_key / anchor:5.1f}x")
    print(f"aisec diff by content  {by_content:7.2f} s   ratio to pandas merge {by_content / anchor:5.1f}x")
    print(f"pandas merge on key    {anchor:7.2f} s   (label changes only)")


if __name__ == "__main__":
    main()
