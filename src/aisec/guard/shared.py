"""Monitor state shared by several guard workers through Redis.

Each client's stream of answered batches is a Redis stream (XADD, capped at `max_batches`): a worker adds its
batch, then reads every entry after the last one it has seen, so every worker feeds its detectors the same
batches in the same order and computes the same alarms. A client's level (the escalation step the monitors
reached) is the maximum any worker set, raised atomically. Rows travel as float32 bytes and labels as int32
bytes, read back with `np.frombuffer`: nothing from Redis is ever unpickled or evaluated.

When Redis cannot be reached, the worker's `RedisFailover` (shared with the limiter) fails closed
(`RedisUnavailable`: the guard answers 503) or falls back to this process's own stream and levels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aisec.guard.monitoring import LocalStream
from aisec.guard.redis_failover import RedisFailover

# Atomically raise a client's level to ARGV[1] if higher; returns the level now stored.
_RAISE_LEVEL = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], wanted)
  return wanted
end
return current
"""


class RedisStream:
    """The monitors' stream and levels in Redis (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        width: int,
        *,
        failover: RedisFailover,
        prefix: str = "aisec:guard:",
        max_batches: int = 10_000,
    ) -> None:
        self.client = client
        self.width = width
        self.failover = failover
        self.prefix = prefix
        self.max_batches = max_batches
        self._seen: dict[str, bytes] = {}
        self._raise = client.register_script(_RAISE_LEVEL)
        self._local = LocalStream()

    def exchange(
        self, client: str, rows: np.ndarray, labels: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        def shared() -> list[tuple[np.ndarray, np.ndarray]]:
            key = f"{self.prefix}stream:{client}"
            fields = {
                "rows": np.ascontiguousarray(rows, dtype=np.float32).tobytes(),
                "labels": np.ascontiguousarray(labels, dtype=np.int32).tobytes(),
            }
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=self.max_batches, approximate=True)
            pipe.xrange(key, min=b"(" + self._seen[client] if client in self._seen else "-", max="+")
            _, entries = pipe.execute()
            batches = []
            for entry_id, entry in entries:
                self._seen[client] = entry_id
                x = np.frombuffer(entry[b"rows"], dtype=np.float32).reshape(-1, self.width)
                y = np.frombuffer(entry[b"labels"], dtype=np.int32)
                if len(x) == len(y):  # an entry that is not ours to read is skipped, never trusted
                    batches.append((x, y))
            return batches

        return self.failover.call(shared, lambda: self._local.exchange(client, rows, labels))

    def level(self, client: str) -> int:
        def shared() -> int:
            return max(int(self.client.get(f"{self.prefix}level:{client}") or 0), self._local.level(client))

        return self.failover.call(shared, lambda: self._local.level(client))

    def raise_level(self, client: str, level: int) -> int:
        self._local.raise_level(client, level)
        return self.failover.call(
            lambda: int(self._raise(keys=[f"{self.prefix}level:{client}"], args=[level])),
            lambda: self._local.level(client),
        )
