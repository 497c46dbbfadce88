"""Data validation benchmark: aisec's drift checks against Evidently's (0.7, Apache-2.0), in one run.

Four parts, each printing a table (`all` runs them in turn):
- false-alarms: --splits no-drift splits of synthetic tabular data (split i seeded with i: 50-500 columns, each
  normal, lognormal or uniform; 2,000-5,000 rows per side, both sides drawn from the same distribution). The
  share of splits where aisec's `validate` raises any drift alarm, against Evidently with its default tests and
  with method="ks" (DriftedColumnsCount, the count DataDriftPreset reports, without its second per-column pass):
  the share with dataset drift (at least half the columns drifted) and the share with any drifted column. Evidently's default test for a numeric column of more than 1,000 reference rows
  is the normed Wasserstein distance >= 0.1 (an effect threshold); at 1,000 rows or fewer, and with
  method="ks", it is a KS test at p <= 0.05 per column, uncorrected for the number of columns.
- power: a 0.1 reference-standard-deviation shift of the mean in 3 of 300 N(0, 1) features, 5,000 rows per
  side, over --seeds seeds: the shifted features found, the seeds with all 3 found, the other features flagged.
- labels: two snapshots of 20,000 keyed records (20 features, 10 classes), 2 % relabelled to another class
  drawn at random: aisec lists every relabelled record (the exact diff), with the label-distribution test and
  the smallest change rate it would detect; Evidently tests the distribution of the label column only.
- speed: --rows x --features N(0, 1) features, 5 of them shifted by 0.05, in memory (aisec Records and pandas
  DataFrames sharing one array per side): aisec's whole `validate`, aisec's per-feature tests alone
  (`build_sketch` + `feature_drift`), Evidently's DriftedColumnsCount with KS for every column (its per-feature
  tests alone) and its DataDriftPreset with KS (the report a user runs; it tests each column a second time for
  the per-column results). Each in a forked process: median seconds of --repeats runs (--evidently-repeats for
  Evidently) and the peak resident memory above the data.

Run the statistical parts on one thread, the speed part on the machine's default threads:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/data_validation.py \\
        {false-alarms [--splits 200] | power [--seeds 20] | labels}
    .venv/bin/python bench/data_validation.py speed [--rows 1000000] [--features 200] [--repeats 3]
    OMP_NUM_THREADS=1 .venv/bin/python bench/data_validation.py sketch   (the monitoring sketch: time, size)
Evidently comes with `make bench` (the `bench` extra). Results are recorded in docs/benchmarks.md ("Data
validation: drift").
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from aisec.defend.data_validation.feature_drift import (
    DriftConfig,
    FeatureDrift,
    feature_drift,
    smallest_detectable_shift,
)
from aisec.defend.data_validation.records import Records, records_from_arrays
from aisec.defend.data_validation.reference_sketch import build_sketch
from aisec.defend.data_validation.validate import ValidationConfig, validate

PARTS = ("false-alarms", "power", "labels", "speed", "sketch")
SHIFTED = 3  # power: shifted features among 300
SHIFT = 0.1  # power: mean shift in reference standard deviations
CLASSES = 10  # labels


def import_evidently() -> Any:
    """The evidently package. Evidently 0.7.23 imports `pandas.core.dtypes.common.infer_dtype_from_object`,
    which pandas 3 removed, for its column-type test alone (not run here); a stand-in that raises keeps the
    import working without pretending to compute anything."""
    import pandas.core.dtypes.common as pandas_common

    if not hasattr(pandas_common, "infer_dtype_from_object"):

        def removed_in_pandas_3(*_: object) -> None:
            raise NotImplementedError("infer_dtype_from_object was removed in pandas 3")

        pandas_common.infer_dtype_from_object = removed_in_pandas_3
    import evidently

    return evidently


def evidently_run(reference: Any, current: Any, metrics: list[Any], numeric: list[str]) -> dict[str, Any]:
    """Evidently's Report over DataFrames (numeric columns `numeric`, any others categorical), with its tests."""
    evidently = import_evidently()
    categorical = [c for c in reference.columns if c not in numeric]
    definition = evidently.DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = evidently.Report(metrics, include_tests=True).run(
        evidently.Dataset.from_pandas(current, data_definition=definition),
        evidently.Dataset.from_pandas(reference, data_definition=definition),
    )
    result: dict[str, Any] = snapshot.dict()
    return result


def failed(test: dict[str, Any]) -> bool:
    return str(getattr(test["status"], "value", test["status"])) == "FAIL"


def evidently_drift(
    reference: np.ndarray, current: np.ndarray, method: str | None, *, per_column: bool
) -> tuple[bool, int, set[str]]:
    """Evidently's verdicts: dataset drift (its DriftedColumnsCount test, share of drifted columns >= 0.5), the
    number of drifted columns, and with `per_column` (DataDriftPreset: a ValueDrift test per column) their
    names; without it only DriftedColumnsCount runs, the same count without the per-column pass."""
    import pandas as pd
    from evidently.metrics import DriftedColumnsCount
    from evidently.presets import DataDriftPreset

    names = [f"x{j}" for j in range(reference.shape[1])]
    frames = [pd.DataFrame(side, columns=names, copy=False) for side in (reference, current)]
    metric = DataDriftPreset(method=method) if per_column else DriftedColumnsCount(method=method)
    report = evidently_run(frames[0], frames[1], [metric], names)
    count = int(report["metrics"][0]["value"]["count"])
    (dataset_test,) = [t for t in report["tests"] if t["metric_config"]["params"]["type"].endswith("Count")]
    drifted = {
        t["metric_config"]["params"]["column"]
        for t in report["tests"]
        if t["metric_config"]["params"]["type"].endswith("ValueDrift") and failed(t)
    }
    assert not per_column or len(drifted) == count, (drifted, count)
    return failed(dataset_test), count, drifted


def no_drift_split(split: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current sides drawn from the same mixed distribution, seeded with `split`."""
    generator = np.random.default_rng(split)
    features, rows = int(generator.integers(50, 501)), int(generator.integers(2000, 5001))
    columns = []
    for kind in generator.integers(0, 3, size=features):
        if kind == 0:
            column = generator.normal(generator.normal(0, 10), generator.uniform(0.1, 10), size=2 * rows)
        elif kind == 1:
            column = generator.lognormal(generator.normal(0, 1), generator.uniform(0.25, 1.0), size=2 * rows)
        else:
            low = generator.normal(0, 10)
            column = generator.uniform(low, low + generator.uniform(0.1, 10), size=2 * rows)
        columns.append(column)
    data = np.stack(columns, axis=1)
    return data[:rows], data[rows:]


def false_alarms(splits: int) -> None:
    aisec_any = aisec_features = 0
    evidently_counts: dict[str, list[tuple[bool, int]]] = {"default": [], "ks": []}
    for split in range(splits):
        reference, current = no_drift_split(split)
        result = validate(
            records_from_arrays(reference), records_from_arrays(current), ValidationConfig(seed=split)
        )
        aisec_any += result.drift_alarm
        aisec_features += bool(result.drifted_features)
        for name, method in (("default", None), ("ks", "ks")):
            dataset, count, _ = evidently_drift(reference, current, method, per_column=False)
            evidently_counts[name].append((dataset, count))
    print(f"No-drift splits: {splits} (50-500 mixed columns, 2,000-5,000 rows per side)")
    print(f"{'method':44} {'any alarm':>10} {'dataset drift':>14} {'mean columns':>13}")
    print(f"{'aisec validate (any drift alarm)':44} {aisec_any / splits:10.1%} {'':>14} {'':>13}")
    print(f"{'aisec per-feature tests (any feature)':44} {aisec_features / splits:10.1%} {'':>14} {'':>13}")
    for name, label in (("default", "default tests"), ("ks", 'method="ks"')):
        runs = evidently_counts[name]
        print(
            f"{'Evidently ' + label + ' (any column)':44} {sum(c > 0 for _, c in runs) / splits:10.1%} "
            f"{sum(d for d, _ in runs) / splits:14.1%} {statistics.mean(c for _, c in runs):13.2f}"
        )


def power(seeds: int) -> None:
    rows, features = 5000, 300
    found: dict[str, list[tuple[int, int]]] = {"aisec": [], "default": [], "ks": []}
    for seed in range(seeds):
        generator = np.random.default_rng(seed)
        reference, current = generator.normal(size=(2, rows, features))
        shifted = generator.choice(features, size=SHIFTED, replace=False)
        current[:, shifted] += SHIFT
        names = {f"x{j}" for j in shifted}
        result = validate(
            records_from_arrays(reference), records_from_arrays(current), ValidationConfig(seed=seed)
        )
        flagged = set(result.drifted_features)
        found["aisec"].append((len(flagged & names), len(flagged - names)))
        for name, method in (("default", None), ("ks", "ks")):
            _, _, flagged = evidently_drift(reference, current, method, per_column=True)
            found[name].append((len(flagged & names), len(flagged - names)))
    detectable = smallest_detectable_shift(rows, rows, features, DriftConfig())
    print(
        f"{SHIFT} sd mean shift in {SHIFTED} of {features} N(0,1) features, {rows:,} rows per side, {seeds} seeds"
    )
    print(f"aisec smallest_detectable_shift({rows}, {rows}, {features}) = {detectable:.4f} sd")
    print(f"{'method':32} {'mean found of 3':>16} {'seeds all 3':>12} {'max others':>11} {'mean others':>12}")
    for name, label in (
        ("aisec", "aisec validate"),
        ("default", "Evidently default preset"),
        ("ks", 'Evidently preset method="ks"'),
    ):
        runs = found[name]
        print(
            f"{label:32} {statistics.mean(f for f, _ in runs):16.2f} "
            f"{sum(f == SHIFTED for f, _ in runs):>7} / {seeds:<3} {max(o for _, o in runs):11} "
            f"{statistics.mean(o for _, o in runs):12.2f}"
        )


def labels() -> None:
    import pandas as pd
    from evidently.metrics import ValueDrift

    import_evidently()
    records, features = 20_000, 20
    generator = np.random.default_rng(0)
    x = generator.normal(size=(records, features))
    old = generator.integers(0, CLASSES, size=records)
    new = old.copy()
    relabelled = generator.choice(records, size=records // 50, replace=False)
    new[relabelled] = (old[relabelled] + generator.integers(1, CLASSES, size=relabelled.size)) % CLASSES
    keys = np.array([f"r{i}" for i in range(records)], dtype=object)
    result = validate(records_from_arrays(x, old, keys=keys), records_from_arrays(x, new, keys=keys))
    assert result.snapshot is not None and result.labels is not None
    listed = {change.key for change in result.snapshot.label_changes}
    expected = {f"r{i}" for i in relabelled}
    detectable = result.label_change_detectable_at
    rate = "never" if detectable is None else f"{detectable:.1%}"
    frames = [pd.DataFrame({"label": side.astype(str)}) for side in (old, new)]
    report = evidently_run(
        frames[0], frames[1], [ValueDrift(column="label"), ValueDrift(column="label", method="chisquare")], []
    )
    scores = [m["value"] for m in report["metrics"]]
    verdicts = ["drift" if failed(t) else "no drift" for t in report["tests"]]
    print(
        f"{records:,} keyed records, {relabelled.size} relabelled (2 %) to another of {CLASSES} classes at random"
    )
    print(
        f"aisec exact diff: {len(listed & expected)} of {relabelled.size} listed, "
        f"{len(listed - expected)} wrongly; label test p = {result.labels.p_value:.4f} "
        f"({'drift' if result.labels.drifted else 'no drift'}); count tests would detect this pattern of "
        f"relabelling from a rate of {rate}"
    )
    print(f"Evidently label drift, default (Jensen-Shannon >= 0.1): {scores[0]:.4f}, {verdicts[0]}")
    print(f"Evidently label drift, chi-squared (p <= 0.05): p = {scores[1]:.4f}, {verdicts[1]}")
    print("Evidently: no per-record comparison of snapshots")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_child(run: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median seconds of `repeats` calls of `run` in a forked process, that process's peak resident memory
    above its resident memory when it started, in GiB (Linux: ru_maxrss in KiB), and the last call's result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        baseline = resident_bytes()
        times, result = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - start)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump((statistics.median(times), (peak - baseline) / 2**30, result), pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the measured process ended without a result (wait status {status})")
    seconds, peak_gib, result = pickle.loads(data)
    return float(seconds), float(peak_gib), result


def speed(rows: int, features: int, repeats: int, evidently_repeats: int) -> None:
    import pandas as pd
    from evidently.metrics import DriftedColumnsCount
    from evidently.presets import DataDriftPreset

    import_evidently()
    generator = np.random.default_rng(0)
    names = [f"x{j}" for j in range(features)]
    # Fortran order: each column is contiguous, so Records and DataFrames share the arrays without copies.
    reference = np.asfortranarray(generator.normal(size=(rows, features)))
    current = np.asfortranarray(generator.normal(size=(rows, features)))
    current[:, :5] += 0.05
    records = [records_from_arrays(side, names=names) for side in (reference, current)]
    frames = [pd.DataFrame(side, columns=names, copy=False) for side in (reference, current)]
    assert all(np.shares_memory(f.to_numpy(), s) for f, s in zip(frames, (reference, current), strict=True))

    def feature_tests(reference_records: Records, current_records: Records) -> tuple[FeatureDrift, ...]:
        sketch = build_sketch(reference_records, generator=np.random.default_rng(0))
        return feature_drift(sketch, current_records, DriftConfig())

    timed = {
        "aisec validate (whole)": in_child(lambda: validate(records[0], records[1]).timings, repeats),
        "aisec per-feature tests": in_child(lambda: len(feature_tests(records[0], records[1])), repeats),
        'Evidently DriftedColumnsCount(method="ks")': in_child(
            lambda: evidently_run(frames[0], frames[1], [DriftedColumnsCount(method="ks")], names),
            evidently_repeats,
        ),
        'Evidently DataDriftPreset(method="ks")': in_child(
            lambda: evidently_run(frames[0], frames[1], [DataDriftPreset(method="ks")], names),
            evidently_repeats,
        ),
    }
    aisec_validate, aisec_tests = timed["aisec validate (whole)"][0], timed["aisec per-feature tests"][0]
    print(
        f"{rows:,} rows x {features} features per side; median of {repeats} (aisec), {evidently_repeats} "
        f"(Evidently); {os.cpu_count()} cores; pandas {pd.__version__}"
    )
    print(f"{'method':44} {'seconds':>9} {'peak GiB':>9} {'/ aisec tests':>14} {'/ aisec validate':>17}")
    for label, (seconds, peak, _) in timed.items():
        print(
            f"{label:44} {seconds:9.2f} {peak:9.2f} {seconds / aisec_tests:13.1f}x "
            f"{seconds / aisec_validate:16.1f}x"
        )
    stages = timed["aisec validate (whole)"][2]
    print("aisec validate stages (s, last run): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


def sketch_size(rows: int, features: int, repeats: int) -> None:
    """What monitoring keeps instead of the reference: the time to digest and sketch it, and the sketch file's
    size beside the reference's own bytes (which Evidently re-reads for every window)."""
    import tempfile

    from aisec.defend.data_validation.record_digests import row_digests
    from aisec.defend.data_validation.reference_sketch import load_sketch, save_sketch

    reference = records_from_arrays(np.random.default_rng(0).standard_normal((rows, features)))
    digests, builds, loads = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "reference.sketch")
        for _ in range(repeats):
            start = time.perf_counter()
            row_digests(reference)
            digests.append(time.perf_counter() - start)
            start = time.perf_counter()
            sketch = build_sketch(reference, generator=np.random.default_rng(0))
            builds.append(time.perf_counter() - start)
            save_sketch(sketch, path)
            start = time.perf_counter()
            load_sketch(path)
            loads.append(time.perf_counter() - start)
        size = os.path.getsize(path)
    data = rows * features * 8
    print(f"{rows:,} rows x {features} features; median of {repeats}")
    print(f"row_digests {statistics.median(digests):.2f} s; build_sketch {statistics.median(builds):.2f} s; "
          f"load_sketch {statistics.median(loads):.2f} s")  # fmt: skip
    print(
        f"sketch file {size / 2**20:.1f} MiB, reference data {data / 2**20:.0f} MiB: {data / size:.0f}x smaller"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", nargs="?", choices=("all", *PARTS), default="all")
    parser.add_argument("--splits", type=int, default=200, help="false-alarms: no-drift splits")
    parser.add_argument("--seeds", type=int, default=20, help="power: seeds")
    parser.add_argument("--rows", type=int, default=1_000_000, help="speed: rows per side")
    parser.add_argument("--features", type=int, default=200, help="speed: features")
    parser.add_argument("--repeats", type=int, default=3, help="speed: runs of aisec (median)")
    parser.add_argument("--evidently-repeats", type=int, default=1, help="speed: runs of Evidently (median)")
    args = parser.parse_args()
    import_evidently()
    runs: dict[str, Callable[[], None]] = {
        "false-alarms": lambda: false_alarms(args.splits),
        "power": lambda: power(args.seeds),
        "labels": labels,
        "speed": lambda: speed(args.rows, args.features, args.repeats, args.evidently_repeats),
        "sketch": lambda: sketch_size(args.rows, args.features, args.repeats),
    }
    for part in PARTS if args.part == "all" else (args.part,):
        print(f"== {part} (Evidently {import_evidently().__version__})")
        runs[part]()


if __name__ == "__main__":
    main()
