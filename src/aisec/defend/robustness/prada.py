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

Known blind spots, as later work showed: attackers whose queries are natural data (Knockoff Nets) or
uniform noise give normal-looking distances and are not flagged; PRADA catches the perturbation-based
synthetic queries of Papernot et al. (2017) and Juuti et al. (2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aisec.core.errors import BadInputError


@dataclass
class _ClassState:
    growing: list[np.ndarray] = field(default_factory=list)
    grown_by: list[float] = field(default_factory=list)
    threshold: float = 0.0


class PradaDetector:
    """PRADA over one client's stream of queries. `observe` returns True once the client is flagged."""

    def __init__(self, delta: float = 0.92, min_queries: int = 100) -> None:
        if not 0.0 < delta < 1.0:
            raise BadInputError(f"PRADA's delta must be in (0, 1), got {delta}")
        if min_queries < 3:
            raise BadInputError(f"PRADA needs at least 3 distances for its normality test, got {min_queries}")
        self.delta = delta
        self.min_queries = min_queries
        self.queries = 0
        self.distances: list[float] = []
        self.alarm_at: int | None = None  # the query (1-based) at which the alarm was first raised
        self.last_w: float | None = None
        self._classes: dict[int, _ClassState] = {}

    def observe(self, x: np.ndarray, predicted: int) -> bool:
        """Record one query and the class the model answered; True if the client is (now or already) flagged."""
        from scipy.stats import shapiro

        self.queries += 1
        point = np.asarray(x, dtype=np.float64).ravel()
        state = self._classes.setdefault(int(predicted), _ClassState())
        if not state.growing:
            state.growing.append(point)
        else:
            d_min = float(np.min(np.linalg.norm(np.stack(state.growing) - point, axis=1)))
            self.distances.append(d_min)
            if d_min > state.threshold:
                state.growing.append(point)
                state.grown_by.append(d_min)
                state.threshold = max(
                    state.threshold, float(np.mean(state.grown_by) - np.std(state.grown_by))
                )
        if self.alarm_at is None and len(self.distances) >= self.min_queries:
            values = np.asarray(self.distances)
            self.last_w = 1.0 if np.ptp(values) == 0 else float(shapiro(values).statistic)
            if np.ptp(values) == 0 or self.last_w < self.delta:
                self.alarm_at = self.queries
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
