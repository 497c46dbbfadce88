"""Rate limits (GCRA) and row quotas: a burst then a steady rate, the quota by rows and its Retry-After, denied
requests consuming nothing; the same decisions in Redis, exact across four processes hammering one client; and
what happens while Redis is down."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
import uuid
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any

import pytest

from aisec.core.errors import BadInputError
from aisec.guard.limits import (
    Admission,
    FailoverLimiter,
    Limits,
    MemoryLimiter,
    RedisLimiter,
)
from aisec.guard.redis_failover import RedisFailover, RedisUnavailable

NOON = datetime(2025, 3, 14, 12, 0, tzinfo=timezone.utc).timestamp()  # 12 h before a UTC midnight


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decisions(limiter: Any, requests: list[tuple[str, int]]) -> list[tuple[bool, str | None, int | None]]:
    return [(a.allowed, a.reason, a.rows_left) for a in (limiter.admit(c, rows) for c, rows in requests)]


def redis_client(url: str, timeout_s: float = 1.0) -> Any:
    """A client that fails at once when the server is gone (the default retries ten times with backoff)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ((0, 1), "requests_per_second"),
        ((-1, 1), "requests_per_second"),
        ((float("nan"), 1), "requests_per_second"),
        ((float("inf"), 1), "requests_per_second"),
        ((2e6, 1), "requests_per_second"),
        ((True, 1), "requests_per_second"),
        (("5", 1), "requests_per_second"),
        ((1, 0), "burst"),
        ((1, 1.5), "burst"),
        ((1, True), "burst"),
        ((1e-6, 100), "earn back"),
        ((1, 1, 0), "rows_per_day"),
        ((1, 1, -5), "rows_per_day"),
        ((1, 1, 1.5), "rows_per_day"),
        ((1, 1, True), "rows_per_day"),
    ],
)
def test_limits_are_validated(arguments: tuple[Any, ...], field: str) -> None:
    with pytest.raises(BadInputError, match=field):
        Limits(*arguments)


def test_requests_are_validated() -> None:
    limiter = MemoryLimiter(Limits(1, 1))
    for client, rows in (("", 1), (None, 1), ("a", -1), ("a", 1.0), ("a", True), ("a", 10**16)):
        with pytest.raises(BadInputError, match="client" if not client else "rows"):
            limiter.admit(client, rows)  # type: ignore[arg-type]


def test_a_burst_then_one_every_interval() -> None:
    clock = Clock(NOON)
    limiter = MemoryLimiter(Limits(requests_per_second=10, burst=3), clock=clock)
    assert [limiter.admit("a", 1).allowed for _ in range(4)] == [True, True, True, False]
    denied = limiter.admit("a", 1)
    assert denied == Admission(False, pytest.approx(0.1), "rate", None)  # type: ignore[arg-type]
    assert limiter.admit("b", 1).allowed  # clients are independent
    clock.now = NOON + 0.05
    assert limiter.admit("a", 1).retry_after_s == pytest.approx(0.05)
    clock.now = NOON + 0.1  # exactly the Retry-After: admitted, and only one
    assert decisions(limiter, [("a", 1), ("a", 1)]) == [(True, None, None), (False, "rate", None)]
    for step in range(2, 12):  # then one every T = 0.1 s
        clock.now = NOON + step * 0.1
        assert decisions(limiter, [("a", 1), ("a", 1)]) == [(True, None, None), (False, "rate", None)]
    clock.now += 60.0  # an idle client earns its burst back, never more
    assert [limiter.admit("a", 1).allowed for _ in range(4)] == [True, True, True, False]


def test_sending_twice_the_rate_for_ten_seconds() -> None:
    """Requests every 50 ms for 9.95 s at 10/s, burst 3: burst + elapsed * rate = 3 + 99 admitted."""
    clock = Clock(NOON)
    limiter = MemoryLimiter(Limits(requests_per_second=10, burst=3), clock=clock)
    admitted = 0
    for step in range(200):
        clock.now = NOON + step * 0.05
        admitted += limiter.admit("a", 1).allowed
    assert admitted == 102


def test_the_quota_counts_rows_until_utc_midnight() -> None:
    clock = Clock(NOON)
    limiter = MemoryLimiter(Limits(requests_per_second=1000, burst=1000, rows_per_day=1000), clock=clock)
    assert decisions(limiter, [("a", 600), ("a", 500), ("a", 400), ("a", 0), ("a", 1), ("b", 1000)]) == [
        (True, None, 400),
        (False, "quota", 400),
        (True, None, 0),
        (True, None, 0),
        (False, "quota", 0),
        (True, None, 0),
    ]
    assert limiter.admit("a", 1).retry_after_s == pytest.approx(12 * 3600)
    clock.now = NOON + 12 * 3600 - 0.5
    assert limiter.admit("a", 1).retry_after_s == pytest.approx(0.5)
    clock.now = NOON + 12 * 3600  # the next UTC day
    assert decisions(limiter, [("a", 1000), ("a", 1)]) == [(True, None, 0), (False, "quota", 0)]


def test_denied_requests_consume_nothing() -> None:
    clock = Clock(NOON)
    # A request denied by the rate moves neither the rate nor the quota.
    limiter = MemoryLimiter(Limits(requests_per_second=1, burst=1, rows_per_day=10), clock=clock)
    assert decisions(limiter, [("a", 4)]) == [(True, None, 6)]
    clock.now = NOON + 0.5
    assert decisions(limiter, [("a", 6)] * 50) == [(False, "rate", 6)] * 50
    clock.now = NOON + 1.0
    assert decisions(limiter, [("a", 6)]) == [(True, None, 0)]
    # A request denied by the quota takes no place in the burst; the rate is checked first.
    clock.now = NOON + 100
    limiter = MemoryLimiter(Limits(requests_per_second=10, burst=2, rows_per_day=10), clock=clock)
    assert decisions(limiter, [("a", 5), ("a", 6), ("a", 6), ("a", 5), ("a", 6)]) == [
        (True, None, 5),
        (False, "quota", 5),
        (False, "quota", 5),
        (True, None, 0),
        (False, "rate", 0),  # both would deny: the rate speaks
    ]


def test_memory_limiter_forgets_what_no_longer_matters() -> None:
    clock = Clock(NOON)
    limiter = MemoryLimiter(Limits(requests_per_second=1, burst=1, rows_per_day=10), clock=clock)
    for number in range(600):
        limiter.admit(f"old-{number}", 1)
    clock.now = NOON + 86_400  # their TATs have passed, their quotas were yesterday's
    for number in range(600):
        limiter.admit(f"new-{number}", 1)
    assert len(limiter._tat) + len(limiter._used) < 1300  # swept when it passed 1024 entries
    assert all(client.startswith("new-") for client in limiter._tat)


# The same requests, decided by Redis (on its own clock) and in memory (on this machine's), both real time:
# T = 1000 s, so the few milliseconds between the two runs change no decision.
SEQUENCE = [
    ("a", 10),
    ("a", 20),
    ("b", 100),
    ("a", 80),  # quota
    ("a", 70),
    ("a", 0),  # rate: the burst of 3 is spent
    ("b", 1),  # quota
    ("c", 0),
    ("c", 101),  # quota: more than a day's rows
]


def test_redis_decides_as_memory_does(redis_server: str) -> None:
    limits = Limits(requests_per_second=0.001, burst=3, rows_per_day=100)
    client = redis_client(redis_server)
    prefix = f"test:{uuid.uuid4().hex}:"
    shared = RedisLimiter(limits, client, prefix=prefix)
    local = MemoryLimiter(limits)
    in_redis = [shared.admit(c, rows) for c, rows in SEQUENCE]
    in_memory = [local.admit(c, rows) for c, rows in SEQUENCE]
    assert [(a.allowed, a.reason, a.rows_left) for a in in_redis] == [
        (True, None, 90),
        (True, None, 70),
        (True, None, 0),
        (False, "quota", 70),
        (True, None, 0),
        (False, "rate", 0),
        (False, "quota", 0),
        (True, None, 100),
        (False, "quota", 100),
    ]
    for redis_admission, memory_admission in zip(in_redis, in_memory, strict=True):
        assert (redis_admission.allowed, redis_admission.reason, redis_admission.rows_left) == (
            memory_admission.allowed,
            memory_admission.reason,
            memory_admission.rows_left,
        )
        assert redis_admission.retry_after_s == pytest.approx(memory_admission.retry_after_s, abs=1.0)
    assert in_redis[5].retry_after_s == pytest.approx(1000, abs=1.0)
    now = time.time()
    assert in_redis[3].retry_after_s == pytest.approx(86_400 - now % 86_400, abs=2.0)
    # The keys expire: the TAT when it has passed, the quota an hour after its UTC day.
    assert 2_999_000 < client.pttl(f"{prefix}{{a}}:tat") <= 3_000_000
    assert client.ttl(f"{prefix}{{a}}:rows") == pytest.approx(86_400 - now % 86_400 + 3600, abs=2.0)
    assert 0 < client.pttl(f"{prefix}{{c}}:tat") <= 1_000_000
    unlimited = RedisLimiter(Limits(1000, 1000), client, prefix=prefix + "u:")
    assert unlimited.admit("a", 5) == Admission(True, 0.0, None, None)
    assert not client.exists(f"{prefix}u:{{a}}:rows")
    shared.close()


# Four processes hammer one client through Redis for HAMMER_S at 50/s, burst 10.
HAMMER_S = 2.0


def hammer(url: str, prefix: str, ready: Any, go: Any, results: Any) -> None:
    limiter = RedisLimiter(Limits(requests_per_second=50, burst=10), redis_client(url), prefix=prefix)
    limiter.admit("warm-up", 0)  # connected, script loaded
    ready.wait()
    go.wait()
    admitted = calls = 0
    first = time.time()
    while time.time() < first + HAMMER_S:
        admitted += limiter.admit("shared", 1).allowed
        calls += 1
    results.put((admitted, calls, first, time.time()))
    limiter.close()


def test_processes_sharing_redis_admit_as_one(redis_server: str) -> None:
    """Admitted / (elapsed * 50 + 10), measured over 6 runs of 4 processes x 2 s on a shared 2-core machine:
    0.981-0.999 (109-110 admitted, 16,000-42,000 calls). GCRA bounds it by 1; the 1 % above is slack for the
    edges of the elapsed time, the 5 % below for processes the scheduler holds back."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Barrier(5), context.Event(), context.Queue()
    prefix = f"test:{uuid.uuid4().hex}:"
    workers = [
        context.Process(target=hammer, args=(redis_server, prefix, ready, go, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=60)
        go.set()
        outcomes = [results.get(timeout=30) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    admitted = sum(outcome[0] for outcome in outcomes)
    calls = sum(outcome[1] for outcome in outcomes)
    elapsed = max(outcome[3] for outcome in outcomes) - min(outcome[2] for outcome in outcomes)
    allowed = elapsed * 50 + 10
    assert calls > 4 * admitted, (calls, admitted)  # they did hammer
    assert 0.95 * allowed <= admitted <= 1.01 * allowed, (admitted, allowed, elapsed)


@pytest.mark.parametrize("on_failure", ["fail_closed", "local"])
def test_failover_while_redis_is_down(
    own_redis: Any, on_failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(requests_per_second=0.001, burst=2)
    client = redis_client(own_redis.url)
    prefix = f"test:{uuid.uuid4().hex}:"
    clock = Clock(0.0)
    local = MemoryLimiter(limits)
    failover = RedisFailover(on_failure, retry_s=5.0, clock=clock)  # type: ignore[arg-type]
    limiter = FailoverLimiter(RedisLimiter(limits, client, prefix=prefix), local, failover=failover)
    caplog.set_level(logging.WARNING, logger="aisec.guard")
    assert decisions(limiter, [("a", 1)] * 3) == [(True, None, None)] * 2 + [(False, "rate", None)]
    assert not limiter.failover.down

    own_redis.stop()
    if on_failure == "fail_closed":
        for _ in range(3):
            with pytest.raises(RedisUnavailable):
                limiter.admit("a", 1)
    else:  # this process's limits: a fresh burst of 2 for "a" here
        assert decisions(limiter, [("a", 1)] * 3) == [(True, None, None)] * 2 + [(False, "rate", None)]
    assert limiter.failover.down
    clock.now = 5.0  # time to try Redis again: still down, no second warning
    with pytest.raises(RedisUnavailable) if on_failure == "fail_closed" else nullcontext():
        limiter.admit("b", 1)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "unreachable" in warnings[0], warnings

    own_redis.start()  # the same port, empty (no persistence)
    clock.now = 9.0  # too early: Redis is not tried yet
    assert not client.exists(f"{prefix}{{c}}:tat")
    if on_failure == "fail_closed":
        with pytest.raises(RedisUnavailable):
            limiter.admit("c", 1)
    else:
        limiter.admit("c", 1)
    assert not client.exists(f"{prefix}{{c}}:tat")
    clock.now = 10.0
    # Redis again: "a" is admitted (the local limiter would deny it) and its state is in Redis.
    assert decisions(limiter, [("a", 1)]) == [(True, None, None)]
    assert client.exists(f"{prefix}{{a}}:tat") and not limiter.failover.down
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "reachable again" in warnings[1], warnings
    limiter.close()


def test_a_frozen_redis_times_out_into_the_failover(own_redis: Any) -> None:
    limits = Limits(requests_per_second=0.001, burst=1)
    client = redis_client(own_redis.url, timeout_s=0.2)
    failover = RedisFailover("fail_closed")
    limiter = FailoverLimiter(RedisLimiter(limits, client), MemoryLimiter(limits), failover=failover)
    assert limiter.admit("a", 1).allowed
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable) as raised:
            limiter.admit("a", 1)
        assert time.perf_counter() - started < 1.0
        assert "Timeout" in type(raised.value.__cause__).__name__
    finally:
        own_redis.process.send_signal(signal.SIGCONT)


def test_failover_arguments_are_validated() -> None:
    with pytest.raises(BadInputError, match="on_failure"):
        RedisFailover("open")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="retry_s"):
        RedisFailover("local", retry_s=-1)
