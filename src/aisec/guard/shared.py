"""Monitor state shared by several guard workers through Redis.

Each client's stream of answered batches is a Redis stream (XADD, capped at `max_batches`): a worker adds its
batch, then reads every entry after the last one it has seen, so every worker feeds its detectors the same
batches in the same order and computes the same alarms. A client's level (the escalation step the monitors
reached) is the maximum any worker set, raised atomically. Rows travel as float32 bytes and labels as int32
bytes, read back with `np.frombuffer`: nothing from Redis is ever unpickled or evaluated.

When Redis cannot be reached the stream fails closed (`SharedStateUnavailable`, the guard answers 503) or
falls back to this process's own stream and levels, as configured, logging the outage and the recovery.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np

from aisec.guard.monitoring import LocalStream

log = logging.getLogger("aisec.guard")

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


class SharedStateUnavailable(Exception):
    """Redis could not be reached and the guard fails closed."""


class RedisStream:
    """The monitors' stream and levels in Redis (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        width: int,
        *,
        prefix: str = "aisec:guard:",
        on_failure: Literal["fail_closed", "local"] = "fail_closed",
        max_batches: int = 10_000,
        retry_s: float = 5.0,
    ) -> None:
        self.client = client
        self.width = width
        self.prefix = prefix
        self.on_failure = on_failure
        self.max_batches = max_batches
        self.retry_s = retry_s
        self._seen: dict[str, bytes] = {}
        self._raise = client.register_script(_RAISE_LEVEL)
        self._local = LocalStream()
        self._down_since: float | None = None

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

        return self._call(shared, lambda: self._local.exchange(client, rows, labels))

    def level(self, client: str) -> int:
        def shared() -> int:
            value = self.client.get(f"{self.prefix}level:{client}")
            return (
                max(int(value), self._local.level(client)) if value is not None else self._local.level(client)
            )

        return self._call(shared, lambda: self._local.level(client))

    def raise_level(self, client: str, level: int) -> int:
        self._local.raise_level(client, level)
        return self._call(
            lambda: int(self._raise(keys=[f"{self.prefix}level:{client}"], args=[level])),
            lambda: self._local.level(client),
        )

    def _call(self, shared: Any, local: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        now = time.monotonic()
        if self._down_since is not None and now - self._down_since < self.retry_s:
            if self.on_failure == "fail_closed":
                raise SharedStateUnavailable("Redis is unreachable")
            return local()
        try:
            result = shared()
        except (RedisConnectionError, RedisTimeoutError) as e:
            if self._down_since is None:
                what = (
                    "answers 503"
                    if self.on_failure == "fail_closed"
                    else "monitors with this worker's state only"
                )
                log.warning("guard: Redis unreachable (%s); the guard %s until it is back", e, what)
            self._down_since = now
            if self.on_failure == "fail_closed":
                raise SharedStateUnavailable("Redis is unreachable") from None
            return local()
        if self._down_since is not None:
            log.warning("guard: Redis reachable again; monitor state is shared again")
            self._down_since = None
        return result
