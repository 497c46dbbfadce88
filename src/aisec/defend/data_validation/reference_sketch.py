"""A summary of a reference data set, built once and saved in one file, against which current data or windows
of incoming data are tested without reading the reference again: per numeric column its moments and counts in
up to 1,000 quantile bins, per categorical column its category counts, the label counts, a uniform sample of
rows for multivariate tests, and each record's 64-bit digest for leakage checks."""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aisec.core.atomic import write_atomic
from aisec.core.errors import BadInputError
from aisec.defend.data_validation.image_summary import tabular_view
from aisec.defend.data_validation.record_digests import row_digests
from aisec.defend.data_validation.records import Column, Records

SKETCH_SCHEMA = "aisec.reference-sketch/1"
DEFAULT_BINS = 1000
SAMPLE_ROWS = 5000
_STATS = ("minimum", "maximum", "mean", "std", "low_tail_mean", "high_tail_mean")


@dataclass(frozen=True)
class NumericSketch:
    """One numeric column of the reference: `n` non-missing values (NaN is missing) with their minimum,
    maximum, mean and standard deviation (ddof 1, 0.0 below two values); `integral` when every value is a
    whole number. `edges` are the strictly increasing interior bin edges, the distinct values of the column's
    quantiles k / bins (k = 1 .. bins - 1; the smallest value with at least that share at or below it), and
    `counts` the number of values in each bin, bin k holding the values v with edges[k-1] < v <= edges[k].
    `low_tail_mean` and `high_tail_mean` are the means of the values in the first and the last bin (the last
    edge when that bin is empty): the open-ended bins' place, which the drift effect size needs."""

    name: str
    n: int
    missing: int
    minimum: float
    maximum: float
    mean: float
    std: float
    integral: bool
    edges: np.ndarray
    counts: np.ndarray
    low_tail_mean: float
    high_tail_mean: float

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """The number of non-missing `values` in each of this column's bins (int64, len(edges) + 1)."""
        return _counts_in_bins(self.edges, _sorted_present(values))


@dataclass(frozen=True)
class CategoricalSketch:
    """One categorical column of the reference: `n` non-missing values and the count of each category."""

    name: str
    n: int
    missing: int
    counts: dict[str, int]


@dataclass(frozen=True)
class ReferenceSketch:
    """The reference data set in summary. `schema` is the original records' schema; image records are
    summarised through `tabular_view`, so `numeric` holds their brightness and contrast columns. `labels`
    counts each label (keys as str) and `label_kind` says whether they were int or str. `sample` holds
    min(rows, sample_rows) rows drawn uniformly without replacement (in record order), one column per entry of
    `numeric`, NaN kept, and `sample_labels` their labels as str; `digests` is `row_digests` of every
    original record."""

    source: str
    rows: int
    schema: dict[str, Any]
    numeric: tuple[NumericSketch, ...]
    categorical: tuple[CategoricalSketch, ...]
    labels: dict[str, int] | None
    label_kind: Literal["int", "str"] | None
    sample: np.ndarray
    sample_labels: np.ndarray | None
    digests: np.ndarray

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready description: source, rows, column counts, the most bins of a column, the sample size."""
        return {
            "source": self.source,
            "rows": self.rows,
            "numeric_columns": len(self.numeric),
            "categorical_columns": len(self.categorical),
            "bins": max((int(c.counts.size) for c in self.numeric), default=0),
            "sample_rows": int(self.sample.shape[0]),
            "classes": None if self.labels is None else len(self.labels),
        }


def build_sketch(
    records: Records,
    *,
    bins: int = DEFAULT_BINS,
    sample_rows: int = SAMPLE_ROWS,
    generator: np.random.Generator,
) -> ReferenceSketch:
    """Summarise `records` (images through `tabular_view`). Each numeric column is sorted once: its moments,
    exact quantile edges and bin counts come from the sorted values, so a million rows of 200 columns take a
    few seconds on one core. The sample's rows are the one use of `generator`."""
    rows = len(records)
    if rows == 0:
        raise BadInputError(f"{records.path}: no records to summarise")
    if bins < 2 or sample_rows < 1:
        raise BadInputError(
            f"a reference sketch needs bins >= 2 and sample_rows >= 1 (got {bins}, {sample_rows})"
        )
    view = tabular_view(records)
    numeric = tuple(_numeric_sketch(c, bins) for c in view.columns if c.kind == "numeric")
    categorical = tuple(_categorical_sketch(c) for c in view.columns if c.kind == "categorical")
    size = min(rows, sample_rows)
    chosen = np.sort(generator.choice(rows, size=size, replace=False)) if size < rows else np.arange(rows)
    by_name = {c.name: c.values for c in view.columns}
    sample = np.empty((size, len(numeric)), dtype=np.float64)
    for j, column in enumerate(numeric):
        sample[:, j] = by_name[column.name][chosen]
    labels = records.labels
    return ReferenceSketch(
        source=records.path,
        rows=rows,
        schema=records.schema(),
        numeric=numeric,
        categorical=categorical,
        labels=None if labels is None else category_counts(labels),
        label_kind=None if labels is None else "str" if labels.dtype == object else "int",
        sample=sample,
        sample_labels=None if labels is None else labels[chosen].astype(str),
        digests=row_digests(records),
    )


def category_counts(values: np.ndarray) -> dict[str, int]:
    """Each distinct non-missing value (as str) and how often it occurs, in sorted order; None is missing."""
    counts = Counter(values.tolist())
    counts.pop(None, None)
    return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda item: str(item[0]))}


def _sorted_present(values: np.ndarray) -> np.ndarray:
    """The non-missing values as float64, sorted (NaN sorts last and is cut off)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return ordered[: ordered.size - int(np.count_nonzero(np.isnan(ordered)))]


def _counts_in_bins(edges: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Counts of sorted `ordered` in the bins (edges[k-1], edges[k]], from one binary search per edge."""
    at_or_below = np.searchsorted(ordered, edges, side="right")
    return np.diff(np.concatenate(([0], at_or_below, [ordered.size]))).astype(np.int64)


def _categorical_sketch(column: Column) -> CategoricalSketch:
    counts = category_counts(column.values)
    n = sum(counts.values())
    return CategoricalSketch(column.name, n, int(column.values.size - n), counts)


def _numeric_sketch(column: Column, bins: int) -> NumericSketch:
    ordered = _sorted_present(column.values)
    n = int(ordered.size)
    if n == 0:
        nan = float("nan")
        return NumericSketch(
            column.name,
            0,
            column.values.size,
            nan,
            nan,
            nan,
            nan,
            True,
            np.zeros(0),
            np.zeros(1, np.int64),
            nan,
            nan,
        )
    k = np.arange(1, bins, dtype=np.int64)
    edges = np.unique(ordered[(k * n + bins - 1) // bins - 1])  # ceil(k n / bins) - 1: inverted-CDF quantiles
    counts = _counts_in_bins(edges, ordered)
    top = ordered[n - int(counts[-1]) :]
    return NumericSketch(
        name=column.name,
        n=n,
        missing=int(column.values.size - n),
        minimum=float(ordered[0]),
        maximum=float(ordered[-1]),
        mean=float(ordered.mean()),
        std=float(ordered.std(ddof=1)) if n > 1 else 0.0,
        integral=bool(np.all(np.floor(ordered) == ordered)),
        edges=edges,
        counts=counts,
        low_tail_mean=float(ordered[: counts[0]].mean()),
        high_tail_mean=float(top.mean()) if top.size else float(edges[-1]),
    )


def save_sketch(sketch: ReferenceSketch, path: str | os.PathLike[str]) -> None:
    """Write `sketch` atomically as one compressed .npz: plain numeric and str arrays, and a JSON header
    (names, counts, the records' schema) stored as the uint8 array `meta`, so loading never needs pickle."""
    meta = {
        "schema": SKETCH_SCHEMA,
        "source": sketch.source,
        "rows": sketch.rows,
        "records_schema": sketch.schema,
        "numeric": [c.name for c in sketch.numeric],
        "edge_counts": [int(c.edges.size) for c in sketch.numeric],
        "categorical": [
            {"name": c.name, "n": c.n, "missing": c.missing, "counts": c.counts} for c in sketch.categorical
        ],
        "labels": sketch.labels,
        "label_kind": sketch.label_kind,
    }
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
        "numeric_stats": np.array(
            [[getattr(c, s) for s in _STATS] for c in sketch.numeric], dtype=np.float64
        ).reshape(-1, len(_STATS)),
        "numeric_counts": np.array([[c.n, c.missing] for c in sketch.numeric], dtype=np.int64).reshape(-1, 2),
        "numeric_integral": np.array([c.integral for c in sketch.numeric], dtype=bool),
        "edges": np.concatenate([np.zeros(0)] + [c.edges for c in sketch.numeric]),
        "bin_counts": np.concatenate([np.zeros(0, np.int64)] + [c.counts for c in sketch.numeric]),
        "sample": sketch.sample,
        "digests": sketch.digests,
    }
    if sketch.sample_labels is not None:
        arrays["sample_labels"] = sketch.sample_labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # the stub types **kwds as allow_pickle
    write_atomic(path, buffer.getvalue())


def load_sketch(path: str | os.PathLike[str]) -> ReferenceSketch:
    """Read a sketch written by `save_sketch` (allow_pickle=False: nothing in the file is executed). A file
    that is not such a sketch, or whose arrays disagree with each other, is a BadInputError naming the
    file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInputError(f"cannot read {path}: {error.strerror or error}") from None
    if data[:4] != b"PK\x03\x04":
        raise BadInputError(f"{path}: not a reference sketch (not an .npz archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise BadInputError(f"{path}: not a readable .npz archive ({error})") from None
    if "meta" not in arrays:
        raise BadInputError(f"{path}: not a reference sketch (no 'meta' array)")
    try:
        return _sketch_from_arrays(path, arrays)
    except BadInputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadInputError(f"{path}: malformed reference sketch ({type(error).__name__}: {error})") from None


def _sketch_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> ReferenceSketch:
    meta = json.loads(_array(path, arrays, "meta", "u1", 1).tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("schema") != SKETCH_SCHEMA:
        found = meta.get("schema") if isinstance(meta, dict) else None
        raise BadInputError(f"{path}: sketch schema is {found!r}; expected {SKETCH_SCHEMA!r}")
    rows = int(meta["rows"])
    names = [str(name) for name in meta["numeric"]]
    edge_counts = [int(size) for size in meta["edge_counts"]]
    stats = _array(path, arrays, "numeric_stats", "f8", 2)
    counts = _array(path, arrays, "numeric_counts", "i8", 2)
    integral = _array(path, arrays, "numeric_integral", "b1", 1)
    edges = _array(path, arrays, "edges", "f8", 1)
    bin_counts = _array(path, arrays, "bin_counts", "i8", 1)
    sample = _array(path, arrays, "sample", "f8", 2)
    digests = _array(path, arrays, "digests", "u8", 1)
    k = len(names)
    _require(path, len(edge_counts) == k and min(edge_counts, default=0) >= 0, "edge counts per column")
    _require(
        path, stats.shape == (k, len(_STATS)) and counts.shape == (k, 2) and integral.shape == (k,), "stats"
    )
    _require(
        path, edges.size == sum(edge_counts) and bin_counts.size == edges.size + k, "bin edges and counts"
    )
    _require(path, sample.shape[1] == k and sample.shape[0] <= rows, "sample width or length")
    _require(path, digests.shape == (rows,), "digests length")
    numeric = []
    edge_start = count_start = 0
    for j, name in enumerate(names):
        column_edges = edges[edge_start : edge_start + edge_counts[j]]
        column_counts = bin_counts[count_start : count_start + edge_counts[j] + 1]
        edge_start += edge_counts[j]
        count_start += edge_counts[j] + 1
        _require(
            path,
            bool(np.all(np.diff(column_edges) > 0)) and (column_edges.size > 0 or counts[j, 0] == 0),
            f"edges of column '{name}'",
        )
        _require(path, int(column_counts.sum()) == int(counts[j, 0]), f"bin counts of column '{name}'")
        minimum, maximum, mean, std, low_tail_mean, high_tail_mean = (float(v) for v in stats[j])
        numeric.append(
            NumericSketch(
                name=name,
                n=int(counts[j, 0]),
                missing=int(counts[j, 1]),
                minimum=minimum,
                maximum=maximum,
                mean=mean,
                std=std,
                integral=bool(integral[j]),
                edges=column_edges,
                counts=column_counts,
                low_tail_mean=low_tail_mean,
                high_tail_mean=high_tail_mean,
            )
        )
    categorical = tuple(
        CategoricalSketch(
            str(c["name"]), int(c["n"]), int(c["missing"]), {str(k): int(v) for k, v in c["counts"].items()}
        )
        for c in meta["categorical"]
    )
    labels = meta["labels"]
    label_kind = meta["label_kind"]
    _require(path, (labels is None) == (label_kind is None) and label_kind in (None, "int", "str"), "labels")
    sample_labels = arrays.get("sample_labels")
    _require(path, (sample_labels is None) == (labels is None), "sample labels")
    if sample_labels is not None:
        _require(
            path,
            sample_labels.dtype.kind == "U" and sample_labels.shape == (sample.shape[0],),
            "sample labels",
        )
    return ReferenceSketch(
        source=str(meta["source"]),
        rows=rows,
        schema=dict(meta["records_schema"]),
        numeric=tuple(numeric),
        categorical=categorical,
        labels=None if labels is None else {str(k): int(v) for k, v in labels.items()},
        label_kind=label_kind,
        sample=sample,
        sample_labels=sample_labels,
        digests=digests,
    )


def _array(path: Path, arrays: dict[str, np.ndarray], name: str, dtype: str, ndim: int) -> np.ndarray:
    """Array `name` of the archive, which must exist with that dtype and number of dimensions."""
    array = arrays.get(name)
    if array is None or array.dtype != np.dtype(dtype) or array.ndim != ndim:
        found = "missing" if array is None else f"{array.dtype} with {array.ndim} dimensions"
        raise BadInputError(f"{path}: sketch array '{name}' is {found}; expected {np.dtype(dtype)}, {ndim}-d")
    return array


def _require(path: Path, condition: bool, what: str) -> None:
    if not condition:
        raise BadInputError(f"{path}: inconsistent reference sketch ({what})")
