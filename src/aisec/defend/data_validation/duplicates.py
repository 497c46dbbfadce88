"""Exact and near-duplicate records within a data set and between two: test records copied from the training
data leak it into the evaluation (Kaufman et al., 2012; Barz & Denzler, 2020, who found 3.3% of CIFAR-10's
test images near-duplicated in its training set); records of a new snapshot that repeat an old one were
re-sent; an exact copy under another label is a relabelled record, from poisoning or a provider change."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.record_digests import row_digests
from aisec.defend.data_validation.records import Records

_MAX_EXAMPLES = 20
_DIRECTIONS = 16  # projected dimensions the near-duplicate search indexes
_MAX_CANDIDATES = 32  # reference records verified per checked record, nearest in the projection first
_QUERY_ROWS = 8192  # checked records queried at once
_SAMPLE = 4096  # reference records the search index is chosen on
_AXIS_CANDIDATES = 256  # features considered as index coordinates
_CHUNK_VALUES = 1 << 22  # values gathered at once when comparing records


@dataclass(frozen=True)
class DuplicatePair:
    """A current record and the reference record it duplicates, each named by its key (when both data sets
    have keys) or as "row <i>" (1-based). `distance` is 0.0 for an exact copy, else the largest absolute
    difference over the numeric features in reference standard deviations; `same_label` is None when either
    data set has no labels."""

    reference: str
    current: str
    distance: float
    same_label: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "current": self.current,
            "distance": self.distance,
            "same_label": self.same_label,
        }


@dataclass(frozen=True)
class DuplicateReport:
    """Duplicates within each data set and between them (see `find_duplicates`). Near duplicates are searched
    for among `near_checked` current records (all, or a seeded subsample); `near_capped` counts those of them
    found near no reference record whose neighbourhood in the projection held more than 32 reference records,
    of which only the 32 nearest were verified: a near duplicate of these may be missed (0: the search was
    exhaustive)."""

    reference_rows: int
    current_rows: int
    within_reference: int
    within_current: int
    exact_between: int
    near_between: int
    near_checked: int
    near_capped: int
    near_tolerance: float
    conflicting_labels: int
    examples: tuple[DuplicatePair, ...]

    @property
    def leaked_share(self) -> float:
        """The share of current records that duplicate a reference record: exact_between / current_rows plus
        near_between / near_checked, so a subsampled near search contributes the near share it measured."""
        exact = self.exact_between / self.current_rows if self.current_rows else 0.0
        near = self.near_between / self.near_checked if self.near_checked else 0.0
        return exact + near

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "within_reference": self.within_reference,
            "within_current": self.within_current,
            "exact_between": self.exact_between,
            "near_between": self.near_between,
            "near_checked": self.near_checked,
            "near_capped": self.near_capped,
            "near_tolerance": self.near_tolerance,
            "conflicting_labels": self.conflicting_labels,
            "leaked_share": self.leaked_share,
            "examples": [pair.to_dict() for pair in self.examples],
        }


@dataclass(frozen=True)
class _Features:
    """A data set's features as compared here: the numeric features (numeric columns in name order, or the
    flattened images) and one code per record for its categorical values, shared by both data sets."""

    numeric: np.ndarray
    group: np.ndarray


@dataclass(frozen=True)
class _Index:
    """How near duplicates are searched: the standardised records times `directions` (d, k), within `radius`
    under the Minkowski `p` distance, a region holding every near pair."""

    directions: np.ndarray
    p: float
    radius: float


def find_duplicates(
    reference: Records,
    current: Records,
    *,
    near_tolerance: float = 1e-3,
    max_near_checks: int = 100_000,
    generator: np.random.Generator,
    reference_digests: np.ndarray | None = None,
) -> DuplicateReport:
    """Count exact duplicates within each data set and between them, and current records that are near
    duplicates of a reference record: every numeric feature within `near_tolerance` reference standard
    deviations (a feature constant in the reference must be equal) and every categorical value equal; NaN
    matches NaN only. Exact matches join the records' 64-bit digests and confirm each candidate on the values.
    Near duplicates are found without an all-pairs scan, in an index of at most 16 coordinates in which every
    near pair stays within a known radius: 16 of the standardised features, on each of which a near pair
    differs by at most near_tolerance (Chebyshev); or the projection onto 16 principal directions of a seeded
    reference subsample (the randomized range finder of Halko, Martinsson & Tropp, 2011), orthonormal and so a
    contraction in L2, where L2 <= sqrt(d) * Chebyshev puts near pairs within near_tolerance * sqrt(d). Of the
    two, the one admitting fewer pairs of the subsample is used (all features when d <= 16). A k-d tree
    (Bentley, 1975) over the reference gives each checked current record its nearest 32 candidates within the
    radius, verified on all features; `near_capped` counts records where the cap could hide a near duplicate.
    Of more than `max_near_checks` current records, a seeded subsample is checked. `reference_digests`, the
    reference's `row_digests` when the caller has them (a sketch keeps them), saves computing them again. When both data sets have
    keys, a current record whose key the reference holds is the same record in a later snapshot (the snapshot
    comparison reports its changes), not a copy: only records under new keys count between the sets."""
    if not (near_tolerance >= 0 and math.isfinite(near_tolerance)):
        raise BadInputError(f"near_tolerance must be a finite number >= 0, got {near_tolerance}")
    if max_near_checks < 0:
        raise BadInputError(f"max_near_checks must be >= 0, got {max_near_checks}")
    _check_schemas(reference, current)
    comparable, current = _comparable_images(reference, current)
    if reference_digests is None or comparable is not reference:
        reference_digests = row_digests(comparable)
    reference = comparable
    ref, cur = _features(reference, current)
    ref_digests, cur_digests = reference_digests, row_digests(current)
    within_reference = _count_repeats(ref, ref_digests)
    within_current = _count_repeats(cur, cur_digests)
    exact = _first_equal(ref, ref_digests, cur, cur_digests)
    same_record = _same_key(reference, current)
    exact[same_record] = -1
    exact_rows = np.flatnonzero(exact >= 0)
    differ = _labels_differ(reference, current, exact[exact_rows], exact_rows)

    checked = np.arange(len(current))
    if len(current) > max_near_checks:
        checked = np.sort(generator.choice(len(current), size=max_near_checks, replace=False))
    near_rows, near_ref, near_distance, capped = _near_matches(
        ref, cur, checked[(exact[checked] < 0) & ~same_record[checked]], near_tolerance, generator
    )

    example_rows = zip(
        np.concatenate([exact[exact_rows], near_ref])[:_MAX_EXAMPLES].tolist(),
        np.concatenate([exact_rows, near_rows])[:_MAX_EXAMPLES].tolist(),
        np.concatenate([np.zeros(exact_rows.size), near_distance])[:_MAX_EXAMPLES].tolist(),
        strict=True,
    )
    return DuplicateReport(
        reference_rows=len(reference),
        current_rows=len(current),
        within_reference=within_reference,
        within_current=within_current,
        exact_between=int(exact_rows.size),
        near_between=int(near_rows.size),
        near_checked=int(checked.size),
        near_capped=capped,
        near_tolerance=float(near_tolerance),
        conflicting_labels=0 if differ is None else int(differ.sum()),
        examples=tuple(_example(reference, current, *row) for row in example_rows),
    )


def count_in_digests(reference_digests: np.ndarray, current: Records) -> int:
    """The number of current records whose `row_digests` value is among `reference_digests` (a sketch kept of
    the reference, whose records are no longer at hand to confirm a match): two different records share a
    64-bit digest with chance about n^2 / 2^65 over n records, so the count may, very rarely, be too high."""
    return int(np.isin(row_digests(current), reference_digests).sum())


def _check_schemas(reference: Records, current: Records) -> None:
    where = f"{current.path} vs {reference.path}"
    if (reference.array is None) != (current.array is None):
        raise BadInputError(f"{where}: one holds images, the other tabular columns")
    if reference.array is not None and current.array is not None:
        if reference.array.shape[1:] != current.array.shape[1:]:
            raise BadInputError(
                f"{where}: image records of shape {list(current.array.shape[1:])} vs "
                f"{list(reference.array.shape[1:])}"
            )
        return
    kinds = {c.name: c.kind for c in reference.columns}
    other = {c.name: c.kind for c in current.columns}
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (
            ("only in the reference", sorted(kinds.keys() - other.keys())),
            ("only in the current data", sorted(other.keys() - kinds.keys())),
            (
                "numeric in one, categorical in the other",
                sorted(n for n in kinds if other.get(n, kinds[n]) != kinds[n]),
            ),
        )
        if names
    ]
    if problems:
        raise BadInputError(f"{where}: columns differ ({'; '.join(problems)})")


def _comparable_images(reference: Records, current: Records) -> tuple[Records, Records]:
    """Integer and float images as float64 both, so that equal values have equal digests."""
    if reference.array is None or current.array is None:
        return reference, current
    if (reference.array.dtype.kind == "f") == (current.array.dtype.kind == "f"):
        return reference, current
    return (
        dataclasses.replace(reference, array=reference.array.astype(np.float64)),
        dataclasses.replace(current, array=current.array.astype(np.float64)),
    )


def _features(reference: Records, current: Records) -> tuple[_Features, _Features]:
    if reference.array is not None and current.array is not None:
        n, m = len(reference), len(current)
        return (
            _Features(reference.array.reshape(n, -1), np.zeros(n, dtype=np.int64)),
            _Features(current.array.reshape(m, -1), np.zeros(m, dtype=np.int64)),
        )
    numeric = sorted(c.name for c in reference.columns if c.kind == "numeric")
    categorical = sorted(c.name for c in reference.columns if c.kind == "categorical")
    ref_columns = {c.name: c.values for c in reference.columns}
    cur_columns = {c.name: c.values for c in current.columns}
    n = len(reference)
    codes = np.zeros((n + len(current), len(categorical)), dtype=np.int64)
    for j, name in enumerate(categorical):
        tokens = ["\0" if v is None else "\1" + str(v) for v in ref_columns[name].tolist()]
        tokens += ["\0" if v is None else "\1" + str(v) for v in cur_columns[name].tolist()]
        codes[:, j] = np.unique(np.array(tokens), return_inverse=True)[1].reshape(-1)
    group = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)

    def matrix(columns: dict[str, np.ndarray], rows: int) -> np.ndarray:
        if not numeric:
            return np.zeros((rows, 0))
        return np.stack([np.asarray(columns[name], dtype=np.float64) for name in numeric], axis=1)

    return (
        _Features(matrix(ref_columns, n), group[:n]),
        _Features(matrix(cur_columns, len(current)), group[n:]),
    )


def _row_chunks(rows: int, width: int) -> list[slice]:
    step = max(1, _CHUNK_VALUES // max(width, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _rows_equal(a: _Features, a_rows: np.ndarray, b: _Features, b_rows: np.ndarray) -> np.ndarray:
    """Whether record a_rows[k] of `a` equals record b_rows[k] of `b`, feature by feature (NaN equals NaN)."""
    equal = a.group[a_rows] == b.group[b_rows]
    for chunk in _row_chunks(a_rows.size, a.numeric.shape[1]):
        x, y = a.numeric[a_rows[chunk]], b.numeric[b_rows[chunk]]
        same = x == y
        if x.dtype.kind == "f":
            same |= np.isnan(x) & np.isnan(y)
        equal[chunk] &= same.all(axis=1)
    return equal


def _first_equal(
    ref: _Features, ref_digests: np.ndarray, cur: _Features, cur_digests: np.ndarray
) -> np.ndarray:
    """Per current record, the first reference record with equal features, or -1: candidates share the
    digest, and each is confirmed on the values (a digest collision moves on to the next candidate)."""
    match = np.full(cur_digests.size, -1, dtype=np.int64)
    if ref_digests.size == 0:
        return match
    order = np.argsort(ref_digests, kind="stable")
    ordered = ref_digests[order]
    start = np.minimum(np.searchsorted(ordered, cur_digests), ordered.size - 1)
    rows = np.flatnonzero(ordered[start] == cur_digests)
    first = order[start[rows]]
    confirmed = _rows_equal(ref, first, cur, rows)
    match[rows[confirmed]] = first[confirmed]
    for row in rows[~confirmed].tolist():
        end = int(np.searchsorted(ordered, cur_digests[row], side="right"))
        for candidate in order[start[row] + 1 : end].tolist():
            if _rows_equal(ref, np.array([candidate]), cur, np.array([row]))[0]:
                match[row] = candidate
                break
    return match


def _same_key(reference: Records, current: Records) -> np.ndarray:
    """Per current record, whether the reference holds its key (False for all when either has no keys)."""
    if reference.keys is None or current.keys is None:
        return np.zeros(len(current), dtype=bool)
    return np.isin(current.keys.astype(str), reference.keys.astype(str))


def _count_repeats(features: _Features, digests: np.ndarray) -> int:
    """Records that repeat an earlier record of the same data set exactly."""
    first = _first_equal(features, digests, features, digests)
    return int((first < np.arange(digests.size)).sum())


def _labels_differ(
    reference: Records, current: Records, ref_rows: np.ndarray, cur_rows: np.ndarray
) -> np.ndarray | None:
    """Per pair, whether the labels differ, compared as text (1 and "1" agree); None without labels."""
    if reference.labels is None or current.labels is None:
        return None
    return np.asarray(
        reference.labels[ref_rows].astype(str) != current.labels[cur_rows].astype(str), dtype=bool
    )


def _near_matches(
    ref: _Features, cur: _Features, rows: np.ndarray, tolerance: float, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The current `rows` that are near duplicates of a reference record, the nearest such reference record
    of each and its Chebyshev distance in reference standard deviations, and the number of rows left unmatched
    whose candidates were capped. Exact copies are not passed in, so a zero tolerance finds nothing new."""
    none = np.zeros(0, dtype=np.int64)
    width = ref.numeric.shape[1]
    if width == 0 or tolerance == 0 or rows.size == 0 or ref.numeric.shape[0] == 0:
        return none, none, np.zeros(0), 0
    from scipy.spatial import cKDTree

    mean, std = _moments(ref.numeric)
    scale = np.where(std > 0, std, 1.0)
    n_ref = ref.numeric.shape[0]
    sample = np.sort(generator.choice(n_ref, size=min(n_ref, _SAMPLE), replace=False))
    index = _choose_index(_standardised(ref.numeric[sample], mean, scale), tolerance, generator)
    radius = index.radius * (1 + 1e-6)  # rounding in the projection must not drop a pair on the boundary
    ref_points = _project(ref.numeric, mean, scale, index.directions)
    cur_points = _project(cur.numeric[rows], mean, scale, index.directions)
    if max(int(ref.group.max()), int(cur.group.max())) > 0:  # unequal categorical values: beyond the radius
        spacing = 2 * radius + 1
        ref_points = np.column_stack([ref_points, ref.group * spacing])
        cur_points = np.column_stack([cur_points, cur.group[rows] * spacing])
    tree = cKDTree(ref_points)
    best = np.full(rows.size, np.inf)
    best_ref = np.full(rows.size, -1, dtype=np.int64)
    capped = np.zeros(rows.size, dtype=bool)
    for start in range(0, rows.size, _QUERY_ROWS):
        chunk = slice(start, min(start + _QUERY_ROWS, rows.size))
        _, found = tree.query(
            cur_points[chunk], k=min(_MAX_CANDIDATES, n_ref), p=index.p, distance_upper_bound=radius
        )
        found = found.reshape(found.shape[0], -1)
        capped[chunk] = found[:, -1] < n_ref
        query, slot = np.nonzero(found < n_ref)
        candidates = found[query, slot]
        query += chunk.start
        distance = _chebyshev(ref, candidates, cur, rows[query], std)
        nearest = np.lexsort((distance, query))
        query, candidates, distance = query[nearest], candidates[nearest], distance[nearest]
        first = np.flatnonzero(np.r_[True, query[1:] != query[:-1]]) if query.size else none
        best[query[first]] = distance[first]
        best_ref[query[first]] = candidates[first]
    near = best <= tolerance
    return rows[near], best_ref[near], best[near], int((capped & ~near).sum())


def _choose_index(sample: np.ndarray, tolerance: float, generator: np.random.Generator) -> _Index:
    """With at most 16 features, all of them under the Chebyshev distance within the tolerance. Otherwise the
    index, of two, that admits fewer pairs of the standardised reference `sample`: the 16 features on which
    the fewest sample pairs lie within the tolerance, under the Chebyshev distance (no coordinate of a near
    pair differs by more); or the principal directions under L2 within tolerance * sqrt(d). The first suits
    weakly correlated features, where the second's radius covers much of the data when the tolerance is
    large; the second suits strongly correlated features such as pixels."""
    from scipy.spatial import cKDTree

    width = sample.shape[1]
    if width <= _DIRECTIONS:
        return _Index(np.eye(width), np.inf, tolerance)
    considered = np.arange(width)
    if width > _AXIS_CANDIDATES:
        considered = np.sort(generator.choice(width, size=_AXIS_CANDIDATES, replace=False))
    close = [_close_pairs(sample[:, j], tolerance) for j in considered.tolist()]
    axes = np.sort(considered[np.argsort(close, kind="stable")[:_DIRECTIONS]])
    selection = np.zeros((width, _DIRECTIONS))
    selection[axes, np.arange(_DIRECTIONS)] = 1.0
    options = [
        _Index(selection, np.inf, tolerance),
        _Index(_principal_directions(sample, generator), 2.0, tolerance * math.sqrt(width)),
    ]
    pairs = []
    for option in options:
        tree = cKDTree(sample @ option.directions)
        pairs.append(int(tree.count_neighbors(tree, option.radius, p=option.p)))
    return options[int(np.argmin(pairs))]


def _close_pairs(values: np.ndarray, tolerance: float) -> int:
    """Pairs of `values` at most `tolerance` apart."""
    ordered = np.sort(values)
    reach = np.searchsorted(ordered, ordered + tolerance, side="right")
    return int((reach - np.arange(1, ordered.size + 1)).sum())


def _moments(numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the mean and standard deviation over the present values (0 and 0 for a feature never
    present)."""
    mean = np.zeros(numeric.shape[1])
    std = np.zeros(numeric.shape[1])
    for chunk in _row_chunks(numeric.shape[1], numeric.shape[0]):
        values = numeric[:, chunk].astype(np.float64)
        present = (~np.isnan(values)).sum(axis=0)
        filled = np.where(np.isnan(values), 0.0, values)
        mean[chunk] = filled.sum(axis=0) / np.maximum(present, 1)
        centred = np.where(np.isnan(values), 0.0, values - mean[chunk])
        std[chunk] = np.sqrt((centred**2).sum(axis=0) / np.maximum(present, 1))
    return mean, std


def _standardised(numeric: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - mean) / scale as float64, missing values at 0 (a pair with NaN in the same places keeps its
    distance)."""
    z = (numeric.astype(np.float64) - mean) / scale
    z[np.isnan(z)] = 0.0
    return z


def _project(numeric: np.ndarray, mean: np.ndarray, scale: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The standardised records' coordinates in the search index."""
    out = np.empty((numeric.shape[0], directions.shape[1]))
    for chunk in _row_chunks(numeric.shape[0], numeric.shape[1]):
        out[chunk] = _standardised(numeric[chunk], mean, scale) @ directions
    return out


def _principal_directions(z: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """Orthonormal columns spanning (about) the top principal directions of the standardised sample `z`: the
    randomized range finder with two power iterations (Halko, Martinsson & Tropp, 2011, Algorithms 4.4, 5.1).
    Any orthonormal columns keep the search exact; good ones keep it fast."""
    centred = z - z.mean(axis=0)
    range_basis = np.linalg.qr(centred @ generator.standard_normal((z.shape[1], _DIRECTIONS + 8)))[0]
    for _ in range(2):
        range_basis = np.linalg.qr(centred @ np.linalg.qr(centred.T @ range_basis)[0])[0]
    directions = np.linalg.svd(range_basis.T @ centred, full_matrices=False)[2][:_DIRECTIONS]
    return np.ascontiguousarray(directions.T)


def _chebyshev(
    ref: _Features, ref_rows: np.ndarray, cur: _Features, cur_rows: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """Per pair, the largest absolute numeric feature difference in reference standard deviations: 0 where
    both are equal or both missing, infinite where one is missing or a constant feature differs (the index
    never pairs records whose categorical values differ)."""
    out = np.zeros(ref_rows.size)
    for chunk in _row_chunks(ref_rows.size, ref.numeric.shape[1]):
        x = ref.numeric[ref_rows[chunk]].astype(np.float64)
        y = cur.numeric[cur_rows[chunk]].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            units = np.abs(x - y) / std
        units[(x == y) | (np.isnan(x) & np.isnan(y))] = 0.0
        units[np.isnan(units)] = np.inf
        out[chunk] = units.max(axis=1, initial=0.0)
    return out


def _example(
    reference: Records, current: Records, ref_row: int, cur_row: int, distance: float
) -> DuplicatePair:
    keyed = reference.keys is not None and current.keys is not None
    differ = _labels_differ(reference, current, np.array([ref_row]), np.array([cur_row]))
    return DuplicatePair(
        reference=_name(reference, ref_row, keyed),
        current=_name(current, cur_row, keyed),
        distance=distance,
        same_label=None if differ is None else not bool(differ[0]),
    )


def _name(records: Records, row: int, keyed: bool) -> str:
    """The record's key when both data sets have keys, else "row <i>" (1-based)."""
    return str(records.keys[row]) if keyed and records.keys is not None else f"row {row + 1}"
