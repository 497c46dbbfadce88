"""Whether the current data differ from the reference as a whole, even where no single feature does (a
correlation that flipped, a change in how values go missing together): two permutation two-sample tests on the
numeric feature matrix, a classifier test (Lopez-Paz & Oquab 2017; Friedman 2003) and a kernel MMD test
(Gretton et al. 2012), combined by Bonferroni.

Both sides are prepared with the reference's statistics: each column standardised by the reference's mean and
standard deviation (a constant column by 1), NaN made 0 afterwards, and a 0/1 missing-indicator column added
for every column with NaN on either side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aisec.core.errors import BadInputError

MIN_ROWS = 20
_PERMUTATION_CHUNK = 128


@dataclass(frozen=True)
class TwoSampleTest:
    """One two-sample test. `statistic` is the held-out ROC AUC of the classifier test or the (biased) MMD^2
    estimate; `p_value` the permutation p, (1 + #{permuted >= observed}) / (1 + permutations);
    `reference_rows` and `current_rows` the rows the test used after subsampling."""

    name: Literal["classifier", "mmd"]
    statistic: float
    p_value: float
    permutations: int
    reference_rows: int
    current_rows: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class MultivariateDrift:
    """The tests run and their verdict: `p_value` is Bonferroni's min(1, len(tests) * smallest p) and
    `drifted` whether it is at most `alpha`."""

    tests: tuple[TwoSampleTest, ...]
    p_value: float
    alpha: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "tests": [test.to_dict() for test in self.tests],
            "p_value": self.p_value,
            "alpha": self.alpha,
            "drifted": self.drifted,
        }


def classifier_two_sample_test(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    generator: np.random.Generator,
    max_rows: int = 5000,
    permutations: int = 1000,
) -> TwoSampleTest:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017; Friedman 2003): label reference 0 and current 1, take
    the same number of rows from each side (at most `max_rows`), fit a histogram gradient-boosted classifier on
    a stratified half and score the other half. The statistic is the held-out ROC AUC (Mann-Whitney U); its
    one-sided p permutes the held-out labels against the fixed scores, an exact test conditional on the
    classifier, since under no drift those labels are exchangeable."""
    from scipy.stats import rankdata
    from sklearn.ensemble import HistGradientBoostingClassifier

    _check_settings(max_rows, permutations)
    prepared_reference, prepared_current = _prepare(reference, current)
    rows = min(max_rows, len(prepared_reference), len(prepared_current))
    sample_reference = _subsample(prepared_reference, rows, generator)
    sample_current = _subsample(prepared_current, rows, generator)
    train_rows = rows // 2
    held_out_rows = rows - train_rows
    model = HistGradientBoostingClassifier(
        max_iter=100, early_stopping=False, random_state=int(generator.integers(0, 2**31 - 1))
    )
    model.fit(
        np.concatenate([sample_reference[:train_rows], sample_current[:train_rows]]),
        np.repeat([0, 1], train_rows),
    )
    scores = model.predict_proba(
        np.concatenate([sample_reference[train_rows:], sample_current[train_rows:]])
    )[:, 1]
    ranks = rankdata(scores)
    labels = np.repeat([0.0, 1.0], held_out_rows)
    # Rank sums are multiples of 1/2, so comparing them is exact; AUC = (rank sum - n1(n1+1)/2) / (n1 n0).
    observed = float(labels @ ranks)
    exceeding = 0
    for chunk in _chunks(permutations):
        permuted = generator.permuted(np.tile(labels, (chunk, 1)), axis=1)
        exceeding += int(np.count_nonzero(permuted @ ranks >= observed))
    auc = (observed - held_out_rows * (held_out_rows + 1) / 2) / held_out_rows**2
    return TwoSampleTest(
        name="classifier",
        statistic=float(auc),
        p_value=(1 + exceeding) / (1 + permutations),
        permutations=permutations,
        reference_rows=rows,
        current_rows=rows,
        detail=(
            f"held-out AUC {auc:.3f} (0.5 = indistinguishable), trained on {train_rows:,} and scored on "
            f"{held_out_rows:,} rows per side"
        ),
    )


def mmd_test(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    generator: np.random.Generator,
    max_rows: int = 1000,
    permutations: int = 500,
) -> TwoSampleTest:
    """Kernel two-sample test (Gretton et al. 2012): the biased (V-statistic) MMD^2 between the sides, each
    subsampled to at most `max_rows`, with a Gaussian RBF kernel whose bandwidth is the median pairwise
    distance of the pooled rows (the median heuristic). With s the +1/n_reference, -1/n_current sign vector,
    MMD^2 = s'Ks; its p comes from `permutations` random relabellings, all evaluated as K @ S in chunks."""
    _check_settings(max_rows, permutations)
    prepared_reference, prepared_current = _prepare(reference, current)
    sample_reference = _subsample(prepared_reference, min(max_rows, len(prepared_reference)), generator)
    sample_current = _subsample(prepared_current, min(max_rows, len(prepared_current)), generator)
    pooled = np.concatenate([sample_reference, sample_current])
    squared_norms = np.einsum("ij,ij->i", pooled, pooled)
    squared_distances = np.maximum(
        squared_norms[:, None] + squared_norms[None, :] - 2 * pooled @ pooled.T, 0.0
    )
    bandwidth = float(np.sqrt(np.median(squared_distances[np.triu_indices(len(pooled), k=1)])))
    if bandwidth == 0.0:
        bandwidth = 1.0
    kernel = np.exp(-squared_distances / (2 * bandwidth**2))
    signs = np.concatenate(
        [
            np.full(len(sample_reference), 1 / len(sample_reference)),
            np.full(len(sample_current), -1 / len(sample_current)),
        ]
    )
    observed = float(signs @ kernel @ signs)
    # A relative tolerance so that a relabelling equal to the observed one counts as >= despite rounding.
    threshold = observed - 1e-12 * abs(observed)
    exceeding = 0
    for chunk in _chunks(permutations):
        permuted = generator.permuted(np.tile(signs, (chunk, 1)), axis=1).T
        statistics = np.einsum("ij,ij->j", permuted, kernel @ permuted)
        exceeding += int(np.count_nonzero(statistics >= threshold))
    return TwoSampleTest(
        name="mmd",
        statistic=observed,
        p_value=(1 + exceeding) / (1 + permutations),
        permutations=permutations,
        reference_rows=len(sample_reference),
        current_rows=len(sample_current),
        detail=(
            f"MMD^2 {observed:.4g} (biased; near 0 = indistinguishable), RBF bandwidth {bandwidth:.3g}, "
            f"{len(sample_reference):,} reference and {len(sample_current):,} current rows"
        ),
    )


def multivariate_drift(
    reference: np.ndarray, current: np.ndarray, *, generator: np.random.Generator, alpha: float = 0.01
) -> MultivariateDrift:
    """The classifier and MMD tests at their default sizes, combined by Bonferroni: drifted when
    min(1, 2 * smallest p) <= `alpha`."""
    if not 0 < alpha < 1:
        raise BadInputError(f"multivariate drift: alpha must be between 0 and 1, got {alpha}")
    tests = (
        classifier_two_sample_test(reference, current, generator=generator),
        mmd_test(reference, current, generator=generator),
    )
    p_value = min(1.0, len(tests) * min(test.p_value for test in tests))
    return MultivariateDrift(tests=tests, p_value=p_value, alpha=alpha, drifted=p_value <= alpha)


def _check_settings(max_rows: int, permutations: int) -> None:
    if max_rows < MIN_ROWS:
        raise BadInputError(f"multivariate drift: max_rows must be at least {MIN_ROWS}, got {max_rows}")
    if permutations < 1:
        raise BadInputError(f"multivariate drift: permutations must be at least 1, got {permutations}")


def _prepare(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices standardised by the reference's column means and standard deviations (NaN ignored; a
    constant or all-missing column by mean 0 and std 1), NaN then 0, with a 0/1 missing-indicator column
    appended for each column that has NaN on either side."""
    reference = _as_matrix(reference, "reference")
    current = _as_matrix(current, "current")
    if reference.shape[1] != current.shape[1]:
        raise BadInputError(
            f"multivariate drift: reference has {reference.shape[1]} columns but current has {current.shape[1]}"
        )
    missing_reference = np.isnan(reference)
    missing_current = np.isnan(current)
    present = np.count_nonzero(~missing_reference, axis=0)
    filled = np.where(missing_reference, 0.0, reference)
    mean = filled.sum(axis=0) / np.maximum(present, 1)
    variance = (np.where(missing_reference, 0.0, reference - mean) ** 2).sum(axis=0) / np.maximum(present, 1)
    std = np.sqrt(variance)
    std[std == 0] = 1.0
    with_missing = missing_reference.any(axis=0) | missing_current.any(axis=0)
    prepared = []
    for matrix, missing in ((reference, missing_reference), (current, missing_current)):
        standardised = np.where(missing, 0.0, (matrix - mean) / std)
        prepared.append(np.concatenate([standardised, missing[:, with_missing].astype(np.float64)], axis=1))
    return prepared[0], prepared[1]


def _as_matrix(values: np.ndarray, side: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise BadInputError(
            f"multivariate drift: {side} must be a (rows, features) matrix with at least one feature, "
            f"got shape {matrix.shape}"
        )
    if len(matrix) < MIN_ROWS:
        raise BadInputError(
            f"multivariate drift: {side} has {len(matrix)} rows, at least {MIN_ROWS} are needed"
        )
    if np.isinf(matrix).any():
        raise BadInputError(f"multivariate drift: {side} has infinite values; use NaN for missing ones")
    return matrix


def _subsample(matrix: np.ndarray, rows: int, generator: np.random.Generator) -> np.ndarray:
    """`rows` rows drawn uniformly without replacement, in random order."""
    return matrix[generator.choice(len(matrix), size=rows, replace=False)]


def _chunks(permutations: int) -> list[int]:
    """`permutations` split into chunk sizes of at most `_PERMUTATION_CHUNK`."""
    full, rest = divmod(permutations, _PERMUTATION_CHUNK)
    return [_PERMUTATION_CHUNK] * full + ([rest] if rest else [])
