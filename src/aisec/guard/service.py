"""Building a guard from its configuration: the model, the key ring, the limiter (per process, or shared in
Redis), the screening and monitors calibrated on their reference data, and the audit log."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aisec.core.errors import BadInputError, DataError
from aisec.guard.config import GuardConfig
from aisec.guard.keys import KeyRing
from aisec.guard.limits import FailoverLimiter, Limiter, Limits, MemoryLimiter, RedisLimiter
from aisec.guard.metrics import Metrics
from aisec.guard.model import load_guarded_model
from aisec.guard.monitoring import Monitors, Stream
from aisec.guard.pipeline import Guard
from aisec.guard.redis_failover import RedisFailover
from aisec.guard.screening import Screening
from aisec.guard.shared import RedisStream


def build_guard(config: GuardConfig, *, workers: int = 1) -> Guard:
    """The guard a configuration describes. Several workers need `redis` (limits and monitors must be shared);
    BadInputError naming the field for anything that cannot work, before the service starts."""
    if workers > 1 and config.redis is None:
        raise BadInputError(
            f"{workers} workers need `redis` in the configuration: limits and monitor state must be shared"
        )
    keyring = KeyRing.load(config.keys)
    model = load_guarded_model(config)
    limits = Limits(config.limits.requests_per_second, config.limits.burst, config.limits.rows_per_day)
    limiter: Limiter = MemoryLimiter(limits)
    stream: Stream | None = None
    if config.redis is not None:
        import redis

        client = redis.Redis.from_url(config.redis.url, socket_timeout=0.25, socket_connect_timeout=0.25)
        failover = RedisFailover(config.redis.on_failure)  # one outage state for the limits and the monitors
        limiter = FailoverLimiter(
            RedisLimiter(limits, client, prefix=config.redis.prefix), MemoryLimiter(limits), failover=failover
        )
        width = int(np.prod(model.spec.shape))
        stream = RedisStream(client, width, failover=failover, prefix=config.redis.prefix)
    screening = None
    if config.screening is not None:
        x, y = _reference(config.screening.reference, "screening.reference", labels=True)
        screening = Screening(config.screening, model, _fitting(x, model.spec.shape), y)
    monitors = None
    if config.monitor is not None:
        reference = None
        if config.monitor.reference is not None:
            x, _ = _reference(config.monitor.reference, "monitor.reference", labels=False)
            reference = _fitting(x, model.spec.shape).reshape(len(x), -1)
        monitors = Monitors(config.monitor, reference, stream)
    audit = None
    if config.audit_log is not None:
        assert config.audit_key is not None  # GuardConfig requires both
        from aisec.defend.auditability.audit_log.keys import load_signing_key
        from aisec.defend.auditability.audit_log.log import AuditLog

        audit = AuditLog.open(
            config.audit_log,
            load_signing_key(config.audit_key),
            create=True,
            checkpoint_every=config.audit_checkpoint_every,
        )
    return Guard(
        config,
        model,
        keyring,
        limiter,
        screening=screening,
        monitors=monitors,
        audit=audit,
        metrics=Metrics(),
    )


def _reference(path: Path, field: str, *, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """An .npz's `x` (and `y` when present and asked for), read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                raise DataError(f"{field}: {path} has no array `x`")
            x = np.asarray(arrays["x"], dtype=np.float32)
            y = np.asarray(arrays["y"]) if labels and "y" in arrays.files else None
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{field}: {path} is not a readable .npz of numeric arrays ({e})") from None
    return x, y


def _fitting(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reference inputs in the model's sample shape (given so, or flat)."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    if x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
        return x.reshape(len(x), *shape)
    raise DataError(
        f"reference inputs of shape {list(x.shape[1:])} do not fit the model's input {list(shape)}"
    )
