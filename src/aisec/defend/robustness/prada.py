"""PRADA: detecting model-extraction query streams by the distribution of their distances (Juuti et al.,
"PRADA: Protecting Against DNN Model Stealing Attacks", IEEE EuroS&P 2019).

For each client, PRADA keeps per predicted class a growing set of that client's queries. A new query's
minimum L2 distance to the growing set of its class joins the set D of distances; the query itself joins
the growing set when that distance exceeds the class's threshold (mean minus standard deviation of the
distances that grew the set). Natural queries give distances whose distribution is close to normal;
synthetic extraction queries (random, or small perturbations of a few seeds) do not. Once D holds
`min_queries` distances, an alarm is raised as soon as the Shapiro-Wilk statistic W of D falls below
`delta`. Calibrate `delta` below the smallest W of benign clients' streams: the default 0.92 sits under the
digits benign minimum we measured (0.945 over 20 clients of 500 natural queries; tests/test_prada.py).

In a service, `window` runs the test over the client's last `window` distances only (None: all of them, as
in the paper), `test_every` runs it every n-th query once `min_queries` distances are held (the test is the
cost: Shapiro-Wilk over n distances is O(n log n)), and `max_growing` bounds each class's growing set (when
full, the oldest point is dropped). With the defaults (None, 1, None) the detector is the paper's; memory is
then unbounded, as the paper's is. `observe_batch` takes a batch of queries in order.

Known blind spots, as later work showed: attackers whose queries are natural data (Knockoff Nets) or
uniform noise give normal-looking distances and are not flagged; PRADA catches the perturbation-based
synthetic queries of Papernot et al. (2017) and Juuti et al. (2019).
"""

from __future__ import annotations

import warnings

import numpy as np

from aisec.core.errors import BadInputError


class _Points:
    """A set of vectors kept in one array: it grows by doubling, or is a ring of `limit` rows (the oldest
    row is overwritten when full)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.rows: np.ndarray | None = None
        self.count = 0
        self._next = 0

    def add(self, point: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.empty((self.limit or 16, *point.shape), dtype=point.dtype)
        elif self.limit is None and self.count == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
        self.rows[self._next] = point
        self.count = min(self.count + 1, len(self.rows))
        self._next = (self._next + 1) % self.limit if self.limit else self.count

    def held(self) -> np.ndarray:
        """The rows held (in storage order, which no caller depends on)."""
        return np.empty(0) if self.rows is None else self.rows[: self.count]


class _ClassState:
    """One class's growing set and its threshold: mean minus standard deviation of the distances that grew
    it (kept as running moments, so memory does not grow with them)."""

    def __init__(self, max_growing: int | None) -> None:
        self.growing = _Points(max_growing)
        self.grown = 0
        self.grown_mean = 0.0
        self.grown_m2 = 0.0
        self.threshold = 0.0

    def grow(self, point: np.ndarray, distance: float) -> None:
        self.growing.add(point)
        self.grown += 1
        delta = distance - self.grown_mean
        self.grown_mean += delta / self.grown
        self.grown_m2 += delta * (distance - self.grown_mean)
        std = float(np.sqrt(self.grown_m2 / self.grown))
        self.threshold = max(self.threshold, self.grown_mean - std)


class PradaDetector:
    """PRADA over one client's stream of queries. `observe` returns True once the client is flagged."""

    def __init__(
        self,
        delta: float = 0.92,
        min_queries: int = 100,
        *,
        window: int | None = None,
        test_every: int = 1,
        max_growing: int | None = None,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise BadInputError(f"PRADA's delta must be in (0, 1), got {delta}")
        if min_queries < 3:
            raise BadInputError(f"PRADA needs at least 3 distances for its normality test, got {min_queries}")
        if window is not None and window < min_queries:
            raise BadInputError(
                f"PRADA's window ({window}) must hold at least min_queries ({min_queries}) distances"
            )
        if test_every < 1:
            raise BadInputError(f"PRADA's test_every must be at least 1, got {test_every}")
        if max_growing is not None and max_growing < 1:
            raise BadInputError(f"PRADA's max_growing must be at least 1 or None, got {max_growing}")
        self.delta = delta
        self.min_queries = min_queries
        self.window = window
        self.test_every = test_every
        self.max_growing = max_growing
        self.queries = 0
        self.alarm_at: int | None = None  # the query (1-based) at which the alarm was first raised
        self.last_w: float | None = None
        self._distances = _Points(window)
        self._seen = 0  # distances recorded, including those the window has dropped
        self._ready_at: int | None = None  # the query at which min_queries distances were first held
        self._classes: dict[int, _ClassState] = {}

    @property
    def distances(self) -> np.ndarray:
        """The distances the normality test runs on (all, or the last `window`), in no particular order."""
        return self._distances.held()

    def observe(self, x: np.ndarray, predicted: int) -> bool:
        """Record one query and the class the model answered; True if the client is (now or already) flagged."""
        from scipy.stats import shapiro

        self.queries += 1
        point = np.asarray(x, dtype=np.float64).ravel()
        state = self._classes.get(int(predicted))
        if state is None:
            state = self._classes[int(predicted)] = _ClassState(self.max_growing)
            state.growing.add(point)
        else:
            d_min = float(np.min(np.linalg.norm(state.growing.held() - point, axis=1)))
            self._distances.add(np.float64(d_min))
            self._seen += 1
            if d_min > state.threshold:
                state.grow(point, d_min)
        if self._ready_at is None and self._seen >= self.min_queries:
            self._ready_at = self.queries
        if self.alarm_at is None and self._ready_at is not None:
            if (self.queries - self._ready_at) % self.test_every == 0:
                values = self.distances
                with warnings.catch_warnings():  # past 5000 distances scipy warns of the p-value, unused here
                    warnings.simplefilter("ignore", UserWarning)
                    self.last_w = 1.0 if np.ptp(values) == 0 else float(shapiro(values).statistic)
                if np.ptp(values) == 0 or self.last_w < self.delta:
                    self.alarm_at = self.queries
        return self.alarm_at is not None

    def observe_batch(self, rows: np.ndarray, predicted: np.ndarray) -> bool:
        """Record a batch of queries in order with the classes the model answered; True if the client is (now
        or already) flagged."""
        rows, predicted = np.asarray(rows), np.asarray(predicted)
        if predicted.shape != (len(rows),) or not np.issubdtype(predicted.dtype, np.integer):
            raise BadInputError(
                f"PRADA: {len(rows)} queries need {len(rows)} integer answers, got shape {predicted.shape} "
                f"of {predicted.dtype}"
            )
        for x, label in zip(rows, predicted, strict=True):
            self.observe(x, int(label))
        return self.alarm_at is not None


def replay(
    queries: np.ndarray, predicted: np.ndarray, delta: float = 0.92, min_queries: int = 100
) -> int | None:
    """Run PRADA over a logged stream (queries in order, with the classes the model answered); returns the
    1-based index of the query that raised the alarm, or None."""
    if len(queries) != len(predicted):
        raise BadInputError(f"{len(queries)} queries but {len(predicted)} answers in the log")
    detector = PradaDetector(delta, min_queries)
    for x, label in zip(queries, predicted, strict=True):
        if detector.observe(x, int(label)):
            break
    return detector.alarm_at
