"""Per-client admission for `aisec guard serve`: a request rate and a daily row quota.

The rate is the generic cell rate algorithm (GCRA, ITU-T I.371's virtual scheduling; the form Brandur Leach's
"throttled" uses for HTTP): with emission interval T = 1 / requests_per_second and tolerance tau = T * (burst - 1),
each client has a theoretical arrival time TAT. A request at time t is admitted when max(TAT, t) - t <= tau,
and then TAT becomes max(TAT, t) + T; otherwise it may retry after max(TAT, t) - t - tau. So `burst` requests
may come at once, then one every T, and an idle client earns its burst back, never more. The state is one
number per client. Times are whole microseconds, so the arithmetic is exact in Python and in Redis's Lua alike.

The quota counts rows (a batch of 1,000 rows counts 1,000) per UTC day; a request that would exceed it may
retry at the next UTC midnight. The rate is checked first, and a denied request consumes neither.

`MemoryLimiter` keeps the state in this process; `RedisLimiter` keeps it in Redis and decides in one Lua
script on Redis's clock, so several workers sharing a Redis admit exactly as one process would;
`FailoverLimiter` says what happens while that Redis cannot be reached (through `redis_failover.RedisFailover`,
which the monitors' stream shares).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from aisec.core.errors import BadInputError
from aisec.guard.redis_failover import RedisFailover

if TYPE_CHECKING:
    import redis

_US = 1_000_000  # microseconds per second
_DAY_US = 86_400 * _US
_MAX_RATE = 1e6  # one request per microsecond, the clock's resolution
_MAX_BURST_WINDOW_S = 1e7  # burst / rate: the time a full burst takes to earn back (~116 days)
_MAX_ROWS = 10**15  # Lua's numbers are doubles: integers stay exact below 2**53
QUOTA_EXPIRY_MARGIN_S = 3_600  # a quota key outlives its UTC day by this much (clocks disagree a little)

logger = logging.getLogger("aisec.guard")


@dataclass(frozen=True)
class Limits:
    """What one client may do: `requests_per_second` on average, `burst` requests at once, and at most
    `rows_per_day` rows per UTC day (None: no quota)."""

    requests_per_second: float
    burst: int
    rows_per_day: int | None = None

    def __post_init__(self) -> None:
        rate = self.requests_per_second
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= _MAX_RATE:
            raise BadInputError(f"requests_per_second must be a number in (0, {_MAX_RATE:g}]; got {rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise BadInputError(f"burst must be a whole number >= 1; got {self.burst!r}")
        if self.burst / rate > _MAX_BURST_WINDOW_S:
            raise BadInputError(
                f"burst {self.burst} at requests_per_second {rate:g} takes {self.burst / rate:.3g} s to earn "
                f"back; at most {_MAX_BURST_WINDOW_S:g} s"
            )
        quota = self.rows_per_day
        if quota is not None and (
            isinstance(quota, bool) or not isinstance(quota, int) or not 1 <= quota <= _MAX_ROWS
        ):
            raise BadInputError(f"rows_per_day must be a whole number in [1, 1e15] or None; got {quota!r}")

    @property
    def interval_us(self) -> int:
        """The emission interval T in microseconds."""
        return max(1, round(_US / self.requests_per_second))

    @property
    def tolerance_us(self) -> int:
        """The tolerance tau = T * (burst - 1) in microseconds."""
        return self.interval_us * (self.burst - 1)


@dataclass(frozen=True)
class Admission:
    """A limiter's decision: `retry_after_s` is 0 when allowed; `rows_left` is the client's quota left today
    after this request (None without a quota)."""

    allowed: bool
    retry_after_s: float
    reason: Literal["rate", "quota"] | None
    rows_left: int | None


class Limiter(Protocol):
    def admit(self, client: str, rows: int) -> Admission:
        """Admit or deny one request of `rows` rows from `client`, consuming its rate and quota if admitted."""
        ...

    def close(self) -> None: ...


def decide(limits: Limits, now_us: int, tat_us: int, used: int, rows: int) -> tuple[Admission, int]:
    """GCRA then the quota, for a request of `rows` rows at `now_us` from a client whose theoretical arrival
    time is `tat_us` and who has used `used` rows today; returns the decision and the new TAT (kept only if
    admitted). The Lua script of `RedisLimiter` computes the same."""
    tat_us = max(tat_us, now_us)
    quota = limits.rows_per_day
    left = None if quota is None else quota - used
    if tat_us - now_us > limits.tolerance_us:
        return Admission(False, (tat_us - now_us - limits.tolerance_us) / _US, "rate", left), tat_us
    if left is not None and rows > left:
        midnight_us = (now_us // _DAY_US + 1) * _DAY_US
        return Admission(False, (midnight_us - now_us) / _US, "quota", left), tat_us
    return Admission(True, 0.0, None, None if left is None else left - rows), tat_us + limits.interval_us


class MemoryLimiter:
    """Limits kept in this process (one dict per state, under a lock); `clock` gives seconds since the epoch.
    Entries that no longer matter (TAT passed, an earlier day's quota) are swept as the dicts grow."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, int] = {}
        self._used: dict[str, tuple[int, int]] = {}  # client -> (UTC day number, rows used that day)
        self._sweep_at = 1024

    def admit(self, client: str, rows: int) -> Admission:
        _check_request(client, rows)
        with self._lock:
            now = round(self._clock() * _US)
            day = now // _DAY_US
            used_day, used = self._used.get(client, (day, 0))
            if used_day != day:
                used = 0
            admission, tat = decide(self.limits, now, self._tat.get(client, now), used, rows)
            if admission.allowed:
                self._tat[client] = tat
                if self.limits.rows_per_day is not None:
                    self._used[client] = (day, used + rows)
                if len(self._tat) + len(self._used) > self._sweep_at:
                    self._sweep(now, day)
            return admission

    def close(self) -> None:
        with self._lock:
            self._tat.clear()
            self._used.clear()

    def _sweep(self, now: int, day: int) -> None:
        self._tat = {client: tat for client, tat in self._tat.items() if tat > now}
        self._used = {client: entry for client, entry in self._used.items() if entry[0] == day}
        self._sweep_at = max(1024, 2 * (len(self._tat) + len(self._used)))


# KEYS[1]: the client's TAT (microseconds, a string); KEYS[2]: its quota, a hash {day, used}.
# ARGV: T (us), tau (us), rows, rows per day (-1: no quota), quota expiry margin (s).
# Returns {allowed 0/1, retry after (us), reason (0 none, 1 rate, 2 quota), rows left (-1: no quota)}.
# TIME inside a script that then writes needs Redis >= 5 (scripts replicate their effects).
_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local rows = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])
local day = math.floor(now / 86400000000)
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then tat = math.max(tonumber(stored), now) end
local used = 0
local left = -1
if quota >= 0 then
  local state = redis.call('HMGET', KEYS[2], 'day', 'used')
  if tonumber(state[1]) == day then used = tonumber(state[2]) end
  left = quota - used
end
if tat - now > tolerance then return {0, tat - now - tolerance, 1, left} end
if quota >= 0 and rows > left then return {0, (day + 1) * 86400000000 - now, 2, left} end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
if quota >= 0 then
  redis.call('HSET', KEYS[2], 'day', string.format('%d', day), 'used', string.format('%d', used + rows))
  redis.call('EXPIREAT', KEYS[2], (day + 1) * 86400 + tonumber(ARGV[5]))
  left = left - rows
end
return {1, 0, 0, left}
"""
_REASONS: dict[int, Literal["rate", "quota"] | None] = {0: None, 1: "rate", 2: "quota"}


class RedisLimiter:
    """Limits kept in Redis (>= 5) and decided by one Lua script (EVALSHA) on Redis's clock, so that every
    worker sharing the Redis admits exactly as one process would. Keys: `<prefix>{<client>}:tat`, which
    expires when the TAT passes, and `<prefix>{<client>}:rows`, which expires after its UTC day (the hash tag
    keeps a client's two keys in one Redis Cluster slot). `close` closes the client."""

    def __init__(self, limits: Limits, client: redis.Redis, *, prefix: str = "aisec:guard:") -> None:
        self.limits = limits
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)

    def admit(self, client: str, rows: int) -> Admission:
        _check_request(client, rows)
        quota = -1 if self.limits.rows_per_day is None else self.limits.rows_per_day
        key = f"{self._prefix}{{{client}}}"
        allowed, retry_us, reason, left = self._script(
            keys=[f"{key}:tat", f"{key}:rows"],
            args=[self.limits.interval_us, self.limits.tolerance_us, rows, quota, QUOTA_EXPIRY_MARGIN_S],
        )
        return Admission(
            bool(allowed), int(retry_us) / _US, _REASONS[int(reason)], None if left < 0 else left
        )

    def close(self) -> None:
        self._client.close()


class FailoverLimiter:
    """A `RedisLimiter` that survives its Redis going away: while Redis cannot be reached, `failover` (shared
    with the monitors' stream) raises `RedisUnavailable` or admits by the `local` limiter of this process."""

    def __init__(self, redis_limiter: RedisLimiter, local: MemoryLimiter, *, failover: RedisFailover) -> None:
        self._redis = redis_limiter
        self._local = local
        self.failover = failover

    def admit(self, client: str, rows: int) -> Admission:
        _check_request(client, rows)
        return self.failover.call(
            lambda: self._redis.admit(client, rows), lambda: self._local.admit(client, rows)
        )

    def close(self) -> None:
        self._redis.close()
        self._local.close()


def _check_request(client: str, rows: int) -> None:
    if not isinstance(client, str) or not client:
        raise BadInputError(f"client must be a non-empty string; got {client!r}")
    if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= _MAX_ROWS:
        raise BadInputError(f"rows must be a whole number in [0, 1e15]; got {rows!r}")
