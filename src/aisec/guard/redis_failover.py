"""One worker's view of the Redis its limits and monitors share: whether it can be reached, and what to do
while it cannot.

The limiter and the monitors' stream call Redis through one `RedisFailover`, so an outage is noticed, logged
and retried once per worker, not once per user of the connection. While Redis cannot be reached (a connection
error or a timeout) a call either raises `RedisUnavailable` (`on_failure="fail_closed"`: the guard answers 503)
or runs its local stand-in (`"local"`: this process's limits and monitor state). Redis is tried again every
`retry_s` seconds (one call probes while the others go on without it); the outage and the recovery are logged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from aisec.core.errors import BadInputError

logger = logging.getLogger("aisec.guard")
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis could not be reached and the guard fails closed."""


class RedisFailover:
    """The outage state of one worker's Redis and the policy while it lasts (see the module docstring)."""

    def __init__(
        self,
        on_failure: Literal["fail_closed", "local"],
        *,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_failure not in ("fail_closed", "local"):
            raise BadInputError(f"on_failure must be 'fail_closed' or 'local'; got {on_failure!r}")
        if not (isinstance(retry_s, (int, float)) and math.isfinite(retry_s) and retry_s >= 0):
            raise BadInputError(f"retry_s must be a number >= 0; got {retry_s!r}")
        import redis.exceptions

        self._unreachable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.on_failure = on_failure
        self._retry_s = float(retry_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._down = False
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        """Whether the last attempt to reach Redis failed."""
        return self._down

    def call(self, shared: Callable[[], T], local: Callable[[], T]) -> T:
        """`shared()` (which talks to Redis) when Redis may be reached; else `local()`, or RedisUnavailable."""
        with self._lock:
            now = self._clock()
            probe = not self._down or now >= self._next_try
            if probe and self._down:
                self._next_try = now + self._retry_s
        if not probe:
            return self._without_redis(local, None)
        try:
            result = shared()
        except self._unreachable as error:
            with self._lock:
                if not self._down:
                    self._down = True
                    action = (
                        "refusing requests"
                        if self.on_failure == "fail_closed"
                        else "admitting and monitoring with this process's state"
                    )
                    logger.warning("guard: Redis is unreachable (%s): %s until it is back", error, action)
                self._next_try = self._clock() + self._retry_s
            return self._without_redis(local, error)
        with self._lock:
            if self._down:
                self._down = False
                logger.warning("guard: Redis is reachable again: limits and monitor state are shared again")
        return result

    def _without_redis(self, local: Callable[[], T], error: Exception | None) -> T:
        if self.on_failure == "fail_closed":
            raise RedisUnavailable("Redis is unreachable") from error
        return local()
