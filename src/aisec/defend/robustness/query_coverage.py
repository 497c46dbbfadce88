"""How much of the input space a client's queries cover, and how many of them lie off the data manifold; after
Kesarwani et al., "Model Extraction Warning in MLaaS Paradigm" (ACSAC 2018).

Kesarwani et al. partition the feature space into cells (the leaves of a decision tree) and warn when a
client's queries have explored a large share of it, the mark of an extraction attack that needs the whole
decision surface. Here the partition is learnt from the model's natural inputs: k-means cells, each with a
radius (a high quantile of its reference points' distances to the centroid). A query farther than the radius
from every centroid is off-manifold: synthetic extraction queries (uniform or Gaussian noise, perturbations
that have drifted far from their seeds) are, natural inputs mostly are not. An on-manifold query visits its
nearest cell, and the client's coverage is the fraction of cells visited (off-manifold queries visit none: a
noise query is nearest to some centroid but explores no part of the data). The alarm is on the off-manifold
fraction of the client's last `window` queries, once `min_queries` have been seen. Coverage is reported beside
it as a curve: on digits, natural clients cover nearly every cell within 500 queries, clients perturbing a few
seeds a quarter of them, and a natural-data attacker (Knockoff Nets) would cover them as a natural client
does, so coverage is a figure to read, not an alarm.

Fitting needs scikit-learn (KMeans); monitoring needs numpy only, with memory bounded per client: a visited
flag per cell, the last `window` off-manifold flags and at most `curve_points` points of the curve. A batch
costs one (batch x cells) distance matrix: about 35 us for a query alone, 1.6 us a query in batches of 32 (bench/guard.py monitors)
(50 cells, 8x8 inputs).

Defaults, measured on digits (tests/test_query_coverage.py; docs/robustness.md, "Monitoring query streams"):
50 cells with the 0.99 quantile as radius leave 4-7 % of held-out natural digits off-manifold (their worst
100-query window 9-14 %) and every uniform or Gaussian synthetic query off it, so an alarm above half of the
last 100 queries, from query 50, has a wide margin on both sides. More cells make the radii tighter (100
cells: natural 13 % off, worst window 21 %); fewer let more synthetic data in (20 cells: a Gaussian with the
data's mean and covariance 1.4 % off, against 12 % with 50).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aisec.core.errors import BadInputError


@dataclass(frozen=True)
class CoverageModel:
    """centroids (cells, m) of the flattened reference inputs, and each cell's radius (cells,)."""

    centroids: np.ndarray
    radii: np.ndarray

    def __post_init__(self) -> None:
        if self.centroids.ndim != 2 or self.radii.shape != (len(self.centroids),):
            raise BadInputError(
                f"coverage model: centroids {self.centroids.shape} and radii {self.radii.shape} do not match"
            )

    @property
    def cells(self) -> int:
        return len(self.centroids)

    def assign(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's nearest cell, and whether it lies outside every cell's radius (off-manifold)."""
        z = _flat(rows, "coverage")
        if z.shape[1] != self.centroids.shape[1]:
            raise BadInputError(
                f"coverage: queries have {z.shape[1]} features, the reference had {self.centroids.shape[1]}"
            )
        d2 = (
            np.einsum("ij,ij->i", z, z)[:, None]
            - 2.0 * z @ self.centroids.T
            + np.einsum("ij,ij->i", self.centroids, self.centroids)[None, :]
        )
        d = np.sqrt(np.maximum(d2, 0.0))
        return d.argmin(axis=1), (d > self.radii[None, :]).all(axis=1)


def _flat(rows: np.ndarray, what: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim < 1 or len(rows) == 0:
        raise BadInputError(f"{what}: expected a non-empty batch of inputs, got shape {rows.shape}")
    z = rows.reshape(len(rows), -1).astype(np.float64)
    if not np.isfinite(z).all():
        raise BadInputError(f"{what}: inputs contain NaN or infinite values")
    return z


def fit_coverage(
    reference: np.ndarray, cells: int = 50, quantile: float = 0.99, *, generator: np.random.Generator
) -> CoverageModel:
    """k-means cells over the reference inputs (scikit-learn's KMeans, seeded from `generator`), each with the
    `quantile` of its members' distances to the centroid as radius."""
    from sklearn.cluster import KMeans

    z = _flat(reference, "coverage reference")
    if not 1 <= cells <= len(z) // 2:
        raise BadInputError(
            f"coverage: cells must be in [1, {len(z) // 2}] for {len(z)} reference inputs, got {cells}"
        )
    if not 0.0 < quantile <= 1.0:
        raise BadInputError(f"coverage: quantile must be in (0, 1], got {quantile}")
    km = KMeans(n_clusters=cells, n_init=4, random_state=int(generator.integers(2**31 - 1))).fit(z)
    centroids = np.asarray(km.cluster_centers_, dtype=np.float64)
    dist = np.linalg.norm(z - centroids[km.labels_], axis=1)
    radii = np.array([np.quantile(dist[km.labels_ == c], quantile) for c in range(cells)])
    return CoverageModel(centroids, radii)


@dataclass(frozen=True)
class CoverageConfig:
    """Alarm when, after `min_queries`, more than `max_off_manifold` of the last `window` queries are
    off-manifold. The curve records coverage every `curve_every` queries, at most `curve_points` points: when
    full, the next point on twice the interval drops every other point and the interval doubles."""

    max_off_manifold: float = 0.5
    window: int = 100
    min_queries: int = 50
    curve_every: int = 100
    curve_points: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_off_manifold < 1.0:
            raise BadInputError(f"coverage: max_off_manifold must be in [0, 1), got {self.max_off_manifold}")
        for name in ("window", "min_queries", "curve_every"):
            if getattr(self, name) < 1:
                raise BadInputError(f"coverage: {name} must be at least 1, got {getattr(self, name)}")
        if self.curve_points < 2 or self.curve_points % 2:
            raise BadInputError(
                f"coverage: curve_points must be even and at least 2, got {self.curve_points}"
            )


class CoverageMonitor:
    """Coverage and off-manifold share of one client's queries; `observe` returns True once it alarms."""

    def __init__(self, model: CoverageModel, config: CoverageConfig | None = None) -> None:
        self.model = model
        self.config = config or CoverageConfig()
        self.queries = 0
        self.alarm_at: int | None = None  # 1-based index of the query that raised the alarm
        self._visited = np.zeros(model.cells, dtype=bool)
        self._off_total = 0
        self._recent = np.zeros(self.config.window, dtype=np.int64)  # off-manifold flags, a ring
        self._curve = np.zeros((self.config.curve_points, 2))
        self._curve_len = 0
        self._every = self.config.curve_every

    @property
    def coverage(self) -> float:
        """Fraction of cells visited so far."""
        return float(self._visited.mean())

    @property
    def off_manifold_fraction(self) -> float:
        """Fraction of all the client's queries that lay off-manifold."""
        return self._off_total / self.queries if self.queries else 0.0

    @property
    def curve(self) -> np.ndarray:
        """(points, 2): query count and coverage after it."""
        return self._curve[: self._curve_len].copy()

    def observe(self, rows: np.ndarray) -> bool:
        """Record a batch of queries in order; True if the client is (now or already) alarmed."""
        nearest, off = self.model.assign(rows)
        n, start, w = len(nearest), self.queries, self.config.window
        visits = np.where(off, -1, nearest)  # -1: off-manifold, no cell visited
        self._curve_record(visits, start, n)
        self._visited[visits[visits >= 0]] = True
        self._off_total += int(off.sum())
        # The off flags of the last `window` queries before this batch, oldest first, then the batch's.
        held = min(start, w)
        past = np.roll(self._recent, -(start % w))[w - held :]
        flags = np.concatenate([past, off.astype(np.int64)])
        sums = np.cumsum(np.concatenate([[0], flags]))
        ends = np.arange(held + 1, held + n + 1)  # position just after each new query in `flags`
        seen = np.minimum(start + np.arange(1, n + 1), w)
        fraction = (sums[ends] - sums[ends - seen]) / seen
        alarm = (start + np.arange(1, n + 1) >= self.config.min_queries) & (
            fraction > self.config.max_off_manifold
        )
        if self.alarm_at is None and alarm.any():
            self.alarm_at = start + int(alarm.argmax()) + 1
        tail = off[-w:].astype(np.int64)
        self._recent[(start + n - len(tail) + np.arange(len(tail))) % w] = tail
        self.queries += n
        return self.alarm_at is not None

    def _curve_record(self, visits: np.ndarray, start: int, n: int) -> None:
        """Append coverage at every multiple of the curve interval that this batch reaches."""
        new, first = np.unique(visits, return_index=True)
        fresh = (new >= 0) & ~self._visited[np.maximum(new, 0)]
        first_seen = np.sort(first[fresh])  # batch positions where a cell was visited for the first time
        before = int(self._visited.sum())
        mark = (start // self._every + 1) * self._every
        while mark <= start + n:
            if self._curve_len == self.config.curve_points:
                if mark % (2 * self._every):  # not on the coarser grid: skip it, keep the finer one
                    mark += self._every
                    continue
                self._curve[: self._curve_len // 2] = self._curve[1 : self._curve_len : 2]
                self._curve_len //= 2
                self._every *= 2
            visited = before + int(np.searchsorted(first_seen, mark - start - 1, side="right"))
            self._curve[self._curve_len] = (mark, visited / self.model.cells)
            self._curve_len += 1
            mark += self._every
