"""Per-feature drift of a current sample against a reference sketch: binned Kolmogorov-Smirnov and
Mann-Whitney tests for numeric features, a chi-squared test for categorical ones, the false-discovery rate
controlled across features (Benjamini & Hochberg 1995), and a feature flagged only when its effect size also
reaches a floor, so that very large samples do not flag every feature for a shift nobody cares about."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.image_summary import tabular_view
from aisec.defend.data_validation.records import Column, Records
from aisec.defend.data_validation.reference_sketch import (
    CategoricalSketch,
    NumericSketch,
    ReferenceSketch,
    category_counts,
)

_MIN_EXPECTED = 5.0  # Cochran (1954): categories expected fewer times than this are pooled for chi-squared


@dataclass(frozen=True)
class DriftConfig:
    """`fdr`: the Benjamini-Hochberg level across features (the data set's false-alarm budget is 0.05, the
    multivariate tests take the other 0.01). `min_effect`: the smallest numeric effect flagged, Wasserstein-1
    distance in reference standard deviations. `min_js`: the smallest categorical effect, Jensen-Shannon
    distance (base 2)."""

    fdr: float = 0.04
    min_effect: float = 0.05
    min_js: float = 0.05


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test. `statistic` is the binned KS D ("ks+mann-whitney") or chi-squared ("chi2");
    `q_value` the Benjamini-Hochberg adjusted p-value; `drifted` when q <= fdr and the effect reaches its
    floor. Means are of non-missing values, numeric features only; `new_categories` are current categories the
    reference lacks. A feature with no values on one side has p = 1 and NaN statistic and effect."""

    name: str
    kind: Literal["numeric", "categorical"]
    test: str
    statistic: float
    p_value: float
    q_value: float
    effect: float
    effect_name: str
    drifted: bool
    reference_n: int
    current_n: int
    reference_mean: float | None
    current_mean: float | None
    new_categories: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a non-finite number (an infinite effect, a statistic without data) becomes None."""
        return {
            "name": self.name,
            "kind": self.kind,
            "test": self.test,
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "q_value": _finite(self.q_value),
            "effect": _finite(self.effect),
            "effect_name": self.effect_name,
            "drifted": self.drifted,
            "reference_n": self.reference_n,
            "current_n": self.current_n,
            "reference_mean": _finite(self.reference_mean),
            "current_mean": _finite(self.current_mean),
            "new_categories": list(self.new_categories),
        }


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class _Statistics:
    """One feature's test before the p-values are computed together (scipy once, not once per feature)."""

    statistic: float
    effect: float
    current_n: int
    current_mean: float | None = None
    effective_n: float = 0.0  # KS: n_r n_c / (n_r + n_c); 0 when a side is empty
    rank_z: float = 0.0  # the Mann-Whitney statistic, standardised
    degrees: int = 0  # chi-squared degrees of freedom; 0 when there is nothing to test
    new_categories: tuple[str, ...] = ()


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini & Hochberg (1995) adjusted p-values: q_(i) = min over j >= i of p_(j) m / j for the sorted
    p-values, clipped to 1, in the input's order; rejecting q <= alpha controls the false-discovery rate."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.empty_like(p)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def feature_drift(
    sketch: ReferenceSketch, current: Records, config: DriftConfig = DriftConfig()
) -> tuple[FeatureDrift, ...]:
    """Test every feature of `sketch` against `current` (images through `tabular_view`), numeric features
    first, on non-missing values. Numeric ("ks+mann-whitney"): p = min(1, 2 min(p_KS, p_MW)) (Bonferroni),
    where p_KS is the two-sample Kolmogorov-Smirnov test (Smirnov 1948) with D taken at the sketch's bin edges
    only (a lower bound on the exact D) and the asymptotic Kolmogorov distribution at D sqrt(n_r n_c / (n_r +
    n_c)) (both conservative), and p_MW the two-sided Mann-Whitney test, values in one bin tied: it has the
    power KS lacks for small location shifts (95 % of the t-test's on normal data) and, unlike a test of the
    means, keeps its false-alarm rate on skewed data and unequal sample sizes. The effect is the Wasserstein-1
    distance of the binned distributions over the reference's standard deviation (inf when a constant
    reference changed).
    Categorical ("chi2"): Pearson's chi-squared on the 2 x categories table, categories expected fewer than 5
    times pooled (Cochran 1954); the effect is the Jensen-Shannon distance (base 2) of the category shares
    (Lin 1991). Then Benjamini-Hochberg at `config.fdr` across all features."""
    from scipy import stats

    columns = {c.name: c for c in tabular_view(current).columns}
    numeric = [
        _numeric_statistics(s, _current_column(current, columns, s.name, "numeric")) for s in sketch.numeric
    ]
    categorical = [
        _categorical_statistics(s, _current_column(current, columns, s.name, "categorical"))
        for s in sketch.categorical
    ]
    effective = np.array([t.effective_n for t in numeric], dtype=np.float64)
    ks_d = np.nan_to_num(np.array([t.statistic for t in numeric], dtype=np.float64))
    p_ks = stats.kstwobign.sf(ks_d * np.sqrt(effective))
    p_rank = 2 * stats.norm.sf(np.abs(np.array([t.rank_z for t in numeric], dtype=np.float64)))
    p_numeric = np.minimum(1.0, 2 * np.minimum(p_ks, p_rank))
    degrees = np.array([t.degrees for t in categorical], dtype=np.int64)
    chi2 = np.array([t.statistic for t in categorical], dtype=np.float64)
    p_categorical = np.ones(len(categorical))
    p_categorical[degrees > 0] = stats.chi2.sf(chi2[degrees > 0], degrees[degrees > 0])
    q = benjamini_hochberg(np.concatenate([p_numeric, p_categorical]))
    results = [
        _result(s, t, float(p), float(qv), t.effect >= config.min_effect and qv <= config.fdr)
        for s, t, p, qv in zip(sketch.numeric, numeric, p_numeric, q[: len(numeric)], strict=True)
    ]
    results += [
        _result(s, t, float(p), float(qv), t.effect >= config.min_js and qv <= config.fdr)
        for s, t, p, qv in zip(sketch.categorical, categorical, p_categorical, q[len(numeric) :], strict=True)
    ]
    return tuple(results)


def smallest_detectable_shift(
    n_reference: int, n_current: int, n_features: int, config: DriftConfig = DriftConfig(), power: float = 0.8
) -> float:
    """The mean shift, in reference standard deviations, at which one drifted normally distributed feature
    among `n_features` is flagged with probability `power` by its Mann-Whitney test alone (KS adds power):
        max(min_effect, (z(1 - fdr / (4 n_features)) + z(power)) sqrt((1/n_reference + 1/n_current) pi / 3)),
    z the standard normal quantile. A lone discovery passes Benjamini-Hochberg when p <= fdr / n_features; the
    Bonferroni combination with KS halves that for the rank test, and the test is two-sided, so each tail gets
    fdr / (4 n_features). On normal data the rank test has 3/pi of the t-test's squared noncentrality (its
    Pitman efficiency, Hodges & Lehmann 1956), hence the factor pi / 3."""
    from scipy.stats import norm

    if min(n_reference, n_current, n_features) < 1 or not 0 < power < 1:
        raise BadInputError(
            f"smallest_detectable_shift needs sample sizes and features >= 1 and 0 < power < 1 "
            f"(got {n_reference}, {n_current}, {n_features}, {power})"
        )
    z_sum = norm.isf(config.fdr / (4 * n_features)) + norm.ppf(power)
    return max(config.min_effect, float(z_sum * math.sqrt((1 / n_reference + 1 / n_current) * math.pi / 3)))


def _current_column(current: Records, columns: dict[str, Column], name: str, kind: str) -> Column:
    column = columns.get(name)
    if column is None:
        raise BadInputError(f"{current.path}: no column '{name}', which the reference has")
    if column.kind != kind:
        raise BadInputError(f"{current.path}: column '{name}' is {column.kind}; the reference's is {kind}")
    return column


def _numeric_statistics(reference: NumericSketch, column: Column) -> _Statistics:
    values = column.values[~np.isnan(column.values)]
    n_c, n_r = int(values.size), reference.n
    if n_c == 0 or n_r == 0:
        return _Statistics(math.nan, math.nan, n_c, float(values.mean()) if n_c else None)
    counts = reference.bin_counts(values)
    cdf_reference = np.cumsum(reference.counts[:-1]) / n_r
    cdf_current = np.cumsum(counts[:-1]) / n_c
    return _Statistics(
        statistic=float(np.max(np.abs(cdf_reference - cdf_current), initial=0.0)),
        effect=_wasserstein_sd(reference, cdf_reference, cdf_current, values),
        current_n=n_c,
        current_mean=float(values.mean()),
        effective_n=n_r * n_c / (n_r + n_c),
        rank_z=_mann_whitney_z(reference.counts, counts),
    )


def _mann_whitney_z(reference: np.ndarray, current: np.ndarray) -> float:
    """The Mann & Whitney (1947) U of the current sample over the reference from counts per bin, values in one
    bin tied, standardised with the tie-corrected variance n_r n_c / 12 ((N + 1) - sum(t^3 - t) / (N (N - 1)))
    (0 when every value is tied)."""
    n_r, n_c = float(reference.sum()), float(current.sum())
    total = n_r + n_c
    below = np.cumsum(reference) - reference
    u = float(np.dot(current, below + reference / 2))
    ties = (reference + current).astype(np.float64)
    variance = n_r * n_c / 12 * ((total + 1) - float(np.sum(ties**3 - ties)) / (total * (total - 1)))
    return (u - n_r * n_c / 2) / math.sqrt(variance) if variance > 0 else 0.0


def _wasserstein_sd(
    reference: NumericSketch, cdf_reference: np.ndarray, cdf_current: np.ndarray, current: np.ndarray
) -> float:
    """Wasserstein-1 distance (the integral of |F_ref - F_cur|) of the two binned distributions, divided by
    the reference's standard deviation. Each bin's share is spread uniformly over the bin: (e[k-1], e[k]], or
    [e[k-1] + 1, e[k]] when both samples hold whole numbers only (so a bin of one integer is an atom); an
    open-ended outer bin reaches from its edge to twice its mean's distance, so that its mean is right and
    mass far beyond the reference counts in full. A constant reference gives inf when `current` differs from
    it."""
    if reference.std == 0:
        return 0.0 if np.all(current == reference.minimum) else math.inf
    edges = reference.edges
    integral = reference.integral and bool(np.all(np.floor(current) == current))
    low, high = current[current <= edges[0]], current[current > edges[-1]]
    knots_r = _bin_supports(edges, reference.low_tail_mean, reference.high_tail_mean, integral)
    knots_c = _bin_supports(
        edges,
        float(low.mean()) if low.size else edges[0],
        float(high.mean()) if high.size else edges[-1],
        integral,
    )
    heights_r = np.concatenate(([0.0], np.repeat(cdf_reference, 2), [1.0]))
    heights_c = np.concatenate(([0.0], np.repeat(cdf_current, 2), [1.0]))
    x = np.union1d(knots_r, knots_c)
    start = _cdf(knots_r, heights_r, x[:-1], "right") - _cdf(knots_c, heights_c, x[:-1], "right")
    end = _cdf(knots_r, heights_r, x[1:], "left") - _cdf(knots_c, heights_c, x[1:], "left")
    magnitude = np.abs(start) + np.abs(end)
    crossing = np.divide(start**2 + end**2, magnitude, out=np.zeros_like(magnitude), where=magnitude > 0)
    area = np.where(start * end >= 0, magnitude, crossing) * np.diff(x) / 2  # |linear|, through 0 or not
    return float(area.sum() / reference.std)


def _bin_supports(edges: np.ndarray, low_mean: float, high_mean: float, integral: bool) -> np.ndarray:
    """Where each bin's values lie, as CDF knots: [first bin start, e1, second bin start, e2, ..., eK, last
    bin start, last bin end], a bin starting at the edge below it (one above when `integral`), the outer bins
    closed so that their means are `low_mean` and `high_mean`."""
    starts = edges + 1.0 if integral else edges
    last_end = max(starts[-1], 2 * high_mean - starts[-1])
    return np.concatenate(([2 * low_mean - edges[0]], np.column_stack([edges, starts]).ravel(), [last_end]))


def _cdf(knots: np.ndarray, heights: np.ndarray, x: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
    """The piecewise-linear CDF through (knots, heights) at `x`, its limit from the `side` given: knots may
    repeat, where the CDF jumps (an atom, such as a bin holding one repeated value)."""
    j = np.searchsorted(knots, x, side=side)
    below, above = np.clip(j - 1, 0, knots.size - 1), np.clip(j, 0, knots.size - 1)
    span = knots[above] - knots[below]
    share = np.divide(x - knots[below], span, out=np.zeros_like(x), where=span > 0)
    return heights[below] + share * (heights[above] - heights[below])


def _categorical_statistics(reference: CategoricalSketch, column: Column) -> _Statistics:
    current = category_counts(column.values)
    n_c = sum(current.values())
    new = tuple(sorted(set(current) - set(reference.counts)))
    if n_c == 0 or reference.n == 0:
        return _Statistics(math.nan, math.nan, n_c, new_categories=new)
    chi2, degrees, effect = compare_counts(reference.counts, current)
    return _Statistics(chi2, effect, n_c, degrees=degrees, new_categories=new)


def compare_counts(reference: Mapping[str, float], current: Mapping[str, float]) -> tuple[float, int, float]:
    """Pearson's chi-squared statistic and its degrees of freedom for the 2 x categories table of two count
    dictionaries (counts may be fractional: expected counts), categories expected fewer than 5 times pooled
    into one (Cochran 1954), and the Jensen-Shannon distance (base 2; Lin 1991) of the two shares. Degrees 0:
    nothing to test (one category). Shared by categorical features and the labels' distribution."""
    from scipy.spatial.distance import jensenshannon

    names = sorted(set(reference) | set(current))
    table = np.array([[reference.get(k, 0.0) for k in names], [current.get(k, 0.0) for k in names]], float)
    table = table[:, table.sum(axis=0) > 0]
    effect = float(jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum(), base=2))
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    sparse = expected.min(axis=0) < _MIN_EXPECTED
    if sparse.any():
        table = np.column_stack([table[:, ~sparse], table[:, sparse].sum(axis=1)])
        expected = np.column_stack([expected[:, ~sparse], expected[:, sparse].sum(axis=1)])
    if table.shape[1] < 2:
        return 0.0, 0, 0.0 if math.isnan(effect) else effect
    chi2 = float(np.sum((table - expected) ** 2 / expected))
    return chi2, table.shape[1] - 1, 0.0 if math.isnan(effect) else effect


def _result(
    reference: NumericSketch | CategoricalSketch, found: _Statistics, p: float, q: float, drifted: bool
) -> FeatureDrift:
    numeric = isinstance(reference, NumericSketch)
    return FeatureDrift(
        name=reference.name,
        kind="numeric" if numeric else "categorical",
        test="ks+mann-whitney" if numeric else "chi2",
        statistic=found.statistic,
        p_value=p,
        q_value=q,
        effect=found.effect,
        effect_name="wasserstein_sd" if numeric else "jensen_shannon",
        drifted=bool(drifted),
        reference_n=reference.n,
        current_n=found.current_n,
        reference_mean=reference.mean if isinstance(reference, NumericSketch) else None,
        current_mean=found.current_mean,
        new_categories=found.new_categories,
    )
