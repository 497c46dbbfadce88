"""Per-client monitoring of the query stream, and the escalating actions it takes.

Each client (API key) gets its own detectors, fitted or calibrated once for all clients:

* PRADA (Juuti et al. 2019): the distribution of distances between a client's queries; catches synthetic,
  perturbation-based extraction queries;
* stateful detection (Chen, Carlini & Wagner 2020): a query too close to the client's recent queries; catches
  query-based evasion (Square, HopSkipJump), whose queries cluster around the image under attack;
* feature-space coverage (Kesarwani et al. 2018): the share of a client's queries that lie off the natural
  data's manifold; catches random and synthetic queries.

The first alarm takes the client to the configured action (block, by default). With escalation on, it takes it
to the first action instead (slow, by default), and every further alarm raises its level one step along log ->
slow -> labels only -> block, up to the configured action, and so does every `escalate_every` rows a flagged
client goes on sending: a client that keeps querying after its stream was found anomalous is answered ever more
sparingly. A detector re-arms after it fires, so a client that goes on raises further alarms. The level is a
function of the client's stream alone (its alarms and rows), so every worker computes the same one. With several workers the stream reaches every worker through Redis in one order
(`shared.py`), so each computes the same alarms and levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from aisec.core.errors import BadInputError
from aisec.defend.robustness.prada import PradaDetector
from aisec.defend.robustness.query_coverage import (
    CoverageConfig,
    CoverageModel,
    CoverageMonitor,
    fit_coverage,
)
from aisec.defend.robustness.stateful_detection import StatefulConfig, StatefulDetector, calibrate_threshold
from aisec.guard.config import ACTIONS, Action, MonitorSection


@dataclass(frozen=True)
class Alarm:
    """A detector that fired for a client, at the client's `at_query`-th row."""

    detector: str
    at_query: int


class Stream(Protocol):
    """How a client's batches reach the detectors: `exchange` records this worker's batch and returns every
    batch of the client's stream this worker has not yet observed, in stream order (its own included)."""

    def exchange(
        self, client: str, rows: np.ndarray, labels: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def level(self, client: str) -> int: ...

    def raise_level(self, client: str, level: int) -> int: ...


class LocalStream:
    """One process's stream and levels: the embedded default."""

    def __init__(self) -> None:
        self._levels: dict[str, int] = {}

    def exchange(
        self, client: str, rows: np.ndarray, labels: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(rows, labels)]

    def level(self, client: str) -> int:
        return self._levels.get(client, 0)

    def raise_level(self, client: str, level: int) -> int:
        self._levels[client] = max(self._levels.get(client, 0), level)
        return self._levels[client]


@dataclass
class _Client:
    prada: PradaDetector | None
    stateful: StatefulDetector | None
    coverage: CoverageMonitor | None
    rows: int = 0
    alarms: list[Alarm] = field(default_factory=list)


class Monitors:
    """The monitors of every client, built from the configuration's `monitor` section and its natural
    `reference` inputs (flattened rows)."""

    def __init__(
        self,
        section: MonitorSection,
        reference: np.ndarray | None,
        stream: Stream | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.section = section
        self.stream: Stream = stream or LocalStream()
        self._clients: dict[str, _Client] = {}
        self._threshold: float | None = None
        self._coverage: CoverageModel | None = None
        stateful = section.stateful
        if stateful is not None:
            self._threshold = stateful.threshold
            if self._threshold is None:
                assert reference is not None  # MonitorSection requires one
                _enough(reference, stateful.k + 1, "monitor.stateful")
                self._threshold = calibrate_threshold(reference, stateful.k, stateful.fpr)
        if section.coverage is not None:
            assert reference is not None
            _enough(reference, section.coverage.cells, "monitor.coverage")
            self._coverage = fit_coverage(
                reference,
                cells=section.coverage.cells,
                quantile=section.coverage.quantile,
                generator=np.random.default_rng(seed),
            )
        self.first_level = min(ACTIONS.index(section.first_action), ACTIONS.index(section.action)) + 1
        self.top_level = ACTIONS.index(section.action) + 1

    def action(self, client: str) -> Action | None:
        """The action the client's level calls for now (None: not flagged)."""
        level = self.stream.level(client)
        return ACTIONS[level - 1] if level else None

    def observe(self, client: str, rows: np.ndarray, labels: np.ndarray) -> tuple[list[Alarm], Action | None]:
        """Record a batch the model answered (rows flattened, labels as answered); the alarms it raised and the
        client's action after it."""
        state = self._clients.get(client) or self._new_client(client)
        alarms: list[Alarm] = []
        for batch, answered in self.stream.exchange(client, rows, labels):
            alarms.extend(self._feed(state, batch, answered))
        level = self.stream.level(client)
        wanted = self._wanted_level(state)
        if wanted > level:
            level = self.stream.raise_level(client, wanted)
        return alarms, (ACTIONS[level - 1] if level else None)

    def _wanted_level(self, state: _Client) -> int:
        """The level the client's alarms and the rows it sent since its first alarm call for."""
        if not state.alarms:
            return 0
        if not self.section.escalate:
            return self.top_level
        steps = len(state.alarms) - 1
        every = self.section.escalate_every
        if every is not None:
            steps += (state.rows - state.alarms[0].at_query) // every
        return min(self.first_level + steps, self.top_level)

    def _new_client(self, client: str) -> _Client:
        state = _Client(self._prada(), self._stateful(), self._coverage_monitor())
        self._clients[client] = state
        return state

    def _prada(self) -> PradaDetector | None:
        p = self.section.prada
        if p is None:
            return None
        return PradaDetector(
            p.delta, p.min_queries, window=p.window, test_every=p.test_every, max_growing=p.max_growing
        )

    def _stateful(self) -> StatefulDetector | None:
        s = self.section.stateful
        if s is None or self._threshold is None:
            return None
        return StatefulDetector(StatefulConfig(k=s.k, buffer_size=s.buffer_size, threshold=self._threshold))

    def _coverage_monitor(self) -> CoverageMonitor | None:
        c = self.section.coverage
        if c is None or self._coverage is None:
            return None
        config = CoverageConfig(
            min_queries=c.min_queries, window=c.window, max_off_manifold=c.max_off_manifold
        )
        return CoverageMonitor(self._coverage, config)

    def _feed(self, state: _Client, rows: np.ndarray, labels: np.ndarray) -> list[Alarm]:
        """Run the client's detectors over one batch; a detector that fires is re-armed (made anew)."""
        alarms: list[Alarm] = []
        start = state.rows
        state.rows += len(rows)
        if state.prada is not None and state.prada.observe_batch(rows, labels):
            fired = state.prada.alarm_at or state.prada.queries  # the detector's own count since it was armed
            alarms.append(Alarm("prada", state.rows - state.prada.queries + fired))
            state.prada = self._prada()
        if state.stateful is not None:
            hits = np.flatnonzero(state.stateful.observe(rows))
            alarms.extend(Alarm("stateful", start + int(i) + 1) for i in hits)
        alarms.sort(key=lambda alarm: alarm.at_query)
        if state.coverage is not None and state.coverage.observe(rows):
            fired = state.coverage.alarm_at or state.coverage.queries
            alarms.append(Alarm("coverage", state.rows - state.coverage.queries + fired))
            state.coverage = self._coverage_monitor()
        state.alarms.extend(alarms)
        return alarms

    def figures(self, client: str) -> dict[str, object]:
        """What the monitors know of a client: rows observed and its alarms, each with the query it fired at."""
        state = self._clients.get(client)
        if state is None:
            return {"rows": 0, "alarms": []}
        return {"rows": state.rows, "alarms": [(a.detector, a.at_query) for a in state.alarms]}


def _enough(reference: np.ndarray, needed: int, field: str) -> None:
    if len(reference) < needed:
        raise BadInputError(
            f"{field}: monitor.reference holds {len(reference)} inputs; at least {needed} are needed"
        )
