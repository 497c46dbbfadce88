"""One request through the guard, in order: authenticate, apply the client's standing action, rate limit and
row quota, validate the input, screen it, ask the model, harden the output, monitor the client's stream, and
record the decision in the audit log before the client reads it. No HTTP here (`app.py` serves it), so every
path can be tested and fuzzed directly.

Decisions: "allowed", "flagged" (answered, but a detector fired or a screen flagged a row), "limited" (429),
"rejected" (400, 413 or 422: the input, or a screen that rejects), "blocked" (403: the monitors blocked the
key), "unauthenticated" (401), "unavailable" (503: shared state unreachable and the guard fails closed),
"failed" (502 or 500: the upstream model or the guard itself).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from aisec.core.errors import AisecError
from aisec.core.version import __version__
from aisec.defend.auditability.audit_log.log import AuditLog
from aisec.defend.robustness.output_hardening import harden_probabilities
from aisec.guard.config import GuardConfig, OutputSection
from aisec.guard.inputs import Refused, check_batch, parse_body
from aisec.guard.keys import ApiKey, KeyRing
from aisec.guard.limits import Limiter
from aisec.guard.metrics import Metrics
from aisec.guard.model import GuardedModel
from aisec.guard.monitoring import Monitors
from aisec.guard.redis_failover import RedisUnavailable
from aisec.guard.screening import Screening

log = logging.getLogger("aisec.guard")


@dataclass(frozen=True)
class Reply:
    """What the client gets: a status, a JSON body, headers, and a delay to wait before answering (slow-down)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class _Request:
    """What the audit entry and metrics say of one request."""

    started: float
    body_sha256: str
    key: ApiKey | None = None
    rows: int = 0
    alarms: list[str] = field(default_factory=list)
    flagged: dict[str, list[int]] = field(default_factory=dict)
    action: str | None = None


class Guard:
    """The guard's steps over a model, keys, a limiter, optional screening and monitors, and an audit log."""

    def __init__(
        self,
        config: GuardConfig,
        model: GuardedModel,
        keyring: KeyRing,
        limiter: Limiter,
        *,
        screening: Screening | None = None,
        monitors: Monitors | None = None,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.keyring = keyring
        self.limiter = limiter
        self.screening = screening
        self.monitors = monitors
        self.audit = audit
        self.metrics = metrics or Metrics()

    def predict(self, authorization: str | None, body: bytes) -> Reply:
        """Answer one `POST /v1/predict`; every outcome, including an internal error, is audited first."""
        request = _Request(time.perf_counter(), hashlib.sha256(body).hexdigest())
        try:
            reply, decision = self._steps(request, authorization, body)
        except Refused as refused:
            decision = _decision_of(refused.status)
            reply = Reply(refused.status, {"error": refused.reason}, _headers_of(refused))
        except Exception:  # a bug, or a model that failed: audited, logged, a 500 without details
            log.exception("guard: internal error while answering a request")
            reply, decision = Reply(500, {"error": "internal error"}), "failed"
        self._record(request, decision, reply)
        return reply

    def _steps(self, request: _Request, authorization: str | None, body: bytes) -> tuple[Reply, str]:
        limits = self.config.limits
        self.keyring.refresh()
        key = self.keyring.authenticate(authorization)
        if key is None:
            raise _Unauthenticated()
        request.key = key
        monitors = self.monitors
        try:
            if monitors is not None and monitors.action(key.name) == "block":
                raise Refused(403, "this API key is blocked: its queries looked like an attack")
            most = min(limits.max_rows_per_request, limits.rows_per_day or limits.max_rows_per_request)
            batch = parse_body(body, max_bytes=limits.max_body_bytes, max_rows=most)
            request.rows = len(batch)
            admission = self.limiter.admit(key.name, len(batch))
            if not admission.allowed:
                raise _Limited(admission.reason or "rate", admission.retry_after_s)
            x = check_batch(batch, self.model.spec)
            screen = self.screening.before(x) if self.screening is not None else None
            if screen is not None and screen.any:
                request.flagged.update(screen.flagged)
                self._reject_if_screened()
            try:
                answer = self.model.answer(x)
            except AisecError as e:  # an upstream service that failed or answered nonsense
                raise Refused(502, f"the model behind the guard failed: {e}") from None
            if self.screening is not None:
                after = self.screening.after(answer.probabilities)
                if after.any:
                    request.flagged.update(after.flagged)
                    self._reject_if_screened()
            action = None
            if monitors is not None:
                alarms, action = monitors.observe(key.name, x.reshape(len(x), -1), answer.labels)
                request.alarms = [a.detector for a in alarms]
                request.action = action
                if action == "block":
                    raise Refused(403, "this API key is blocked: its queries looked like an attack")
        except RedisUnavailable as e:
            raise Refused(503, f"the guard cannot reach its shared state ({e}); try again later") from None
        output = self._output(key, action)
        payload: dict[str, Any] = {"labels": answer.labels.astype(int).tolist()}
        if not output.labels_only and answer.probabilities is not None:
            hardened = harden_probabilities(
                torch.from_numpy(answer.probabilities), top_k=output.top_k, decimals=output.decimals
            )
            payload["scores"] = hardened.tolist()
        delay = 0.0
        if self.monitors is not None and action == "slow":  # per 100 rows: a large batch is no way around it
            delay = self.monitors.section.slow_down_s * max(1, math.ceil(len(x) / 100))
        decision = "flagged" if request.alarms or request.flagged else "allowed"
        return Reply(200, payload, delay_s=delay), decision

    def _reject_if_screened(self) -> None:
        assert self.screening is not None
        if self.screening.section.action == "reject":
            raise Refused(422, "the input was rejected by the guard's input screening")

    def _output(self, key: ApiKey, action: str | None) -> OutputSection:
        output = self.config.output_for(key.tier)
        if action == "labels_only":
            return output.model_copy(update={"labels_only": True})
        return output

    def _record(self, request: _Request, decision: str, reply: Reply) -> None:
        """Append the audit entry (before the client reads the reply) and count the request."""
        seconds = time.perf_counter() - request.started
        if self.audit is not None:
            entry: dict[str, Any] = {
                "command": "guard",
                "tool": "aisec",
                "tool_version": __version__,
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "key": request.key.name if request.key is not None else None,
                "decision": decision,
                "status": reply.status,
                "rows": request.rows,
                "body_sha256": request.body_sha256,
            }
            if reply.status != 200:
                entry["reason"] = str(reply.body.get("error", ""))[:300]
            if request.alarms:
                entry["alarms"] = request.alarms
            if request.flagged:
                entry["screened"] = {name: len(rows) for name, rows in request.flagged.items()}
            if request.action is not None:
                entry["action"] = request.action
            self.audit.append(entry)
        self.metrics.record(
            decision, reply.status, request.rows if reply.status == 200 else 0, seconds, request.alarms
        )

    def close(self) -> None:
        """Sign a last checkpoint over the audit log and release the limiter."""
        self.limiter.close()
        if self.audit is not None:
            self.audit.close()


class _Unauthenticated(Refused):
    def __init__(self) -> None:
        super().__init__(401, "missing or invalid API key (Authorization: Bearer <key>)")


class _Limited(Refused):
    def __init__(self, reason: str, retry_after_s: float) -> None:
        what = "the rate limit" if reason == "rate" else "the daily row quota"
        super().__init__(429, f"{what} of this API key is exhausted; retry after {retry_after_s:.3g} s")
        self.retry_after_s = retry_after_s


_DECISIONS = {401: "unauthenticated", 403: "blocked", 429: "limited", 503: "unavailable"}


def _decision_of(status: int) -> str:
    return _DECISIONS.get(status, "rejected" if 400 <= status < 500 else "failed")


def _headers_of(refused: Refused) -> dict[str, str]:
    if isinstance(refused, _Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="aisec-guard"'}
    if isinstance(refused, _Limited):
        return {"Retry-After": str(max(1, int(np.ceil(refused.retry_after_s))))}
    if refused.status == 503:
        return {"Retry-After": "1"}
    return {}
