"""The guard's counters and its latency histogram, in the Prometheus text exposition format (version 0.0.4).

Written here rather than through prometheus-client: a handful of counters needs no dependency, and each worker
exposes its own figures labelled with its process id (Prometheus sums them), with no multiprocess directory.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import Counter

# Seconds; the guard's own overhead is sub-millisecond, a model call can take seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests by decision and status, rows answered, alarms by detector, and request latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.rows = 0
        self.alarms: Counter[str] = Counter()
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0

    def record(self, decision: str, status: int, rows: int, seconds: float, alarms: list[str]) -> None:
        with self._lock:
            self.requests[(decision, status)] += 1
            self.rows += rows
            self.alarms.update(alarms)
            self._buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum += seconds
            self._count += 1

    def text(self) -> str:
        """The exposition text."""
        pid = f'worker="{os.getpid()}"'
        lines = [
            "# HELP aisec_guard_requests_total Requests by decision and HTTP status.",
            "# TYPE aisec_guard_requests_total counter",
        ]
        with self._lock:
            for (decision, status), n in sorted(self.requests.items()):
                lines.append(
                    f'aisec_guard_requests_total{{{pid},decision="{decision}",status="{status}"}} {n}'
                )
            lines += [
                "# HELP aisec_guard_rows_total Rows (queries) answered by the model.",
                "# TYPE aisec_guard_rows_total counter",
                f"aisec_guard_rows_total{{{pid}}} {self.rows}",
                "# HELP aisec_guard_alarms_total Monitor alarms by detector.",
                "# TYPE aisec_guard_alarms_total counter",
            ]
            lines += [
                f'aisec_guard_alarms_total{{{pid},detector="{d}"}} {n}'
                for d, n in sorted(self.alarms.items())
            ]
            lines += [
                "# HELP aisec_guard_request_seconds Time from request to answer inside the guard.",
                "# TYPE aisec_guard_request_seconds histogram",
            ]
            total = 0
            for bound, n in zip((*BUCKETS, float("inf")), self._buckets, strict=True):
                total += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'aisec_guard_request_seconds_bucket{{{pid},le="{le}"}} {total}')
            lines.append(f"aisec_guard_request_seconds_sum{{{pid}}} {self._sum:.6f}")
            lines.append(f"aisec_guard_request_seconds_count{{{pid}}} {self._count}")
        return "\n".join(lines) + "\n"
