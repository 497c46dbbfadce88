"""Black-box target over a model served over HTTP: each batch is POSTed as JSON, the answer read from JSON.

A served model is attacked as any black box (SCORES or LABELS access), but a service pushes back: it sheds
load (503), rate-limits (429, often with `Retry-After`), refuses credentials (401, 403) or, behind a guard
that watches for extraction, stops giving scores. Transient refusals and broken connections are retried with
exponential back-off; a refusal that persists, or one that asks for a longer wait than `max_wait_s` (a quota
spent until tomorrow), ends the attack with `ServiceRefused`, which says how many samples were answered first.
httpx is imported when a target is made, so that code which only catches `ServiceRefused` (the assessment
runner) needs no httpx; `aisec.targets` stays light.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import torch

from aisec.core.errors import EXIT_BAD_INPUT, AisecError, BadInputError, DataError, ModelLoadError
from aisec.targets.base import Access, InputSpec, ScoreKind, Target
from aisec.targets.callable_target import check_labels, check_scores

if TYPE_CHECKING:
    import httpx

RETRIED_STATUSES = (429, 503)
REFUSAL_STATUSES = (401, 403, 429, 503)
REASON_CHARS = 200  # of a body quoted in an error


class ServiceRefused(AisecError):
    """The service refused to answer: credentials refused (401, 403), or rate-limited or unavailable (429, 503)
    after every retry, or answers labels where scores were asked (`status` 200). `reason` is the service's own
    word, `retry_after_s` its `Retry-After`, `answered` the samples it answered this target before. Not a bug
    in aisec (exit 3) but a service the user must reach differently (keys, quota, time): the CLI exits 2."""

    exit_code = EXIT_BAD_INPUT

    def __init__(
        self, status: int, reason: str, *, url: str, retry_after_s: float | None = None, answered: int = 0
    ) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.answered = answered
        wait = f"; it asks to retry after {retry_after_s:g} s" if retry_after_s is not None else ""
        super().__init__(
            f"{url} refused the request ({status}: {reason}){wait}; {answered} sample(s) were answered before"
        )


class HttpTarget(Target):
    """A model behind an HTTP endpoint, seen as a black box.

    Each chunk of `batch_size` rows is one POST of `{input_field: rows}` (float32 values as nested lists);
    the answer is JSON holding class scores (n, num_classes) at `scores_field` (returns="scores": SCORES
    access) or class indices (n,) at `labels_field` (returns="labels": LABELS access). Fields may be dotted
    paths (`outputs.probs`). Every answer is checked as a callable's is (shape, dtype, NaN, class range).

    `queries.total` counts samples as every target does; `requests` counts POSTs sent (retries included) and
    `retried` the retries. 429 and 503 answers and connection errors or timeouts are retried up to `retries`
    times after `backoff_s * 2**attempt` seconds (at most `max_wait_s`), or after the `Retry-After` the
    service asks for; a `Retry-After` beyond `max_wait_s` raises at once. Raises ServiceRefused for 401/403,
    for 429/503 once the retries are spent, and when a scores target gets labels only; DataError for any
    other status, for an answer that is not JSON or lacks the field; ModelLoadError when the service cannot
    be reached. `client` replaces the target's own httpx client (and is not closed by it).
    """

    def __init__(
        self,
        url: str,
        spec: InputSpec,
        *,
        returns: Literal["scores", "labels"] = "scores",
        score_kind: ScoreKind = "probabilities",
        headers: Mapping[str, str] | None = None,
        input_field: str = "inputs",
        scores_field: str = "scores",
        labels_field: str = "labels",
        batch_size: int = 256,
        timeout_s: float = 10.0,
        retries: int = 5,
        backoff_s: float = 0.2,
        max_wait_s: float = 30.0,
        client: httpx.Client | None = None,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise BadInputError(f"url must start with http:// or https://, got {url!r}")
        if returns not in ("scores", "labels"):
            raise BadInputError(f"returns must be 'scores' or 'labels', got {returns!r}")
        if score_kind not in ("probabilities", "logits"):
            raise BadInputError(f"score_kind must be 'probabilities' or 'logits', got {score_kind!r}")
        fields = {"input_field": input_field, "scores_field": scores_field, "labels_field": labels_field}
        for field, value in fields.items():
            if not value or "" in value.split("."):
                raise BadInputError(f"{field} must be a field name or a dotted path, got {value!r}")
        if batch_size < 1:
            raise BadInputError(f"batch_size must be a positive integer, got {batch_size}")
        if not timeout_s > 0:
            raise BadInputError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise BadInputError(f"retries must be 0 or more, got {retries}")
        if not (backoff_s >= 0 and max_wait_s >= 0):
            raise BadInputError(f"backoff_s and max_wait_s must be 0 or more, got {backoff_s}, {max_wait_s}")
        super().__init__(spec, Access.SCORES if returns == "scores" else Access.LABELS)
        self.url = url
        self.returns = returns
        self.score_kind = score_kind
        self.headers = dict(headers or {})
        self.input_field = input_field
        self.scores_field = scores_field
        self.labels_field = labels_field
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.name = name or url
        self.requests = 0
        self.retried = 0
        self._answered = 0
        self._sleep = sleep
        self._own_client = client is None
        import httpx

        self._client = client if client is not None else httpx.Client(timeout=timeout_s)

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self.scores_field, check_scores)

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        if self.returns == "labels":
            return self._run(x, self.labels_field, check_labels)
        return self._scores(x).argmax(1)

    def _run(
        self, x: torch.Tensor, field: str, check: Callable[[Any, int, int, str], torch.Tensor]
    ) -> torch.Tensor:
        """POST `x` chunk by chunk and check the values each answer holds at `field`."""
        x = x.detach().to(device="cpu", dtype=torch.float32)
        if not len(x):  # nothing to ask the service
            if check is check_labels:
                return torch.empty(0, dtype=torch.int64)
            return torch.empty(0, self.spec.num_classes)
        parts = []
        for chunk in x.split(self.batch_size):
            answer = self._post(_nested(self.input_field, chunk.numpy().tolist()))
            values = _field(answer, field)
            if values is _MISSING:
                if field == self.scores_field and _field(answer, self.labels_field) is not _MISSING:
                    raise ServiceRefused(
                        200,
                        f"the service stopped returning scores (it answers `{self.labels_field}` only); "
                        "a guard may have downgraded this client to labels",
                        url=self.url,
                        answered=self._answered,
                    )
                raise DataError(f"{self.url}: the answer has no field `{field}`")
            parts.append(check(values, len(chunk), self.spec.num_classes, self.name))
            self._answered += len(chunk)
        return torch.cat(parts)

    def _post(self, payload: dict[str, Any]) -> Any:
        """One JSON answer to `payload`, retrying what a service may answer later."""
        import httpx

        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            self.requests += 1
            try:
                response = self._client.post(
                    self.url, json=payload, headers=self.headers, timeout=self.timeout_s
                )
            except httpx.TransportError as e:  # refused connections, resets, timeouts
                if last:
                    raise ModelLoadError(
                        f"{self.url}: no answer after {attempt + 1} attempt(s) ({type(e).__name__}: {e})"
                    ) from None
                self._wait(min(self.backoff_s * 2**attempt, self.max_wait_s))
                continue
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return response.json()
                except (ValueError, UnicodeDecodeError):
                    raise DataError(
                        f"{self.url}: the answer is not JSON ({response.text[:REASON_CHARS]!r}); expected the "
                        f"field `{self.scores_field if self.returns == 'scores' else self.labels_field}`"
                    ) from None
            reason = _reason(response)
            if status not in REFUSAL_STATUSES:
                raise DataError(f"{self.url} answered {status}: {reason}")
            retry_after = _retry_after(response.headers.get("Retry-After"))
            too_long = retry_after is not None and retry_after > self.max_wait_s
            if status not in RETRIED_STATUSES or last or too_long:
                raise ServiceRefused(
                    status, reason, url=self.url, retry_after_s=retry_after, answered=self._answered
                )
            self._wait(
                retry_after if retry_after is not None else min(self.backoff_s * 2**attempt, self.max_wait_s)
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, seconds: float) -> None:
        self.retried += 1
        self._sleep(seconds)

    def close(self) -> None:
        """Close the target's own HTTP client (a client passed in is left open)."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def describe(self) -> str:
        named = self.url if self.name == self.url else f"{self.name} at {self.url}"
        return f"HttpTarget({named}, {self.access.value})"


_MISSING = object()


def _nested(path: str, value: Any) -> dict[str, Any]:
    """`{"a": {"b": value}}` for the dotted path "a.b"."""
    head, _, rest = path.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _field(answer: Any, path: str) -> Any:
    """The value at a dotted path of a JSON answer, or _MISSING."""
    for key in path.split("."):
        if not isinstance(answer, dict) or key not in answer:
            return _MISSING
        answer = answer[key]
    return answer


def _reason(response: httpx.Response) -> str:
    """The service's own words: its JSON `error` or `detail`, else the body's first 200 characters."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail"):
            if body.get(key):
                said = body[key]
                return (said if isinstance(said, str) else json.dumps(said))[:REASON_CHARS]
    return response.text.strip()[:REASON_CHARS] or response.reason_phrase or "no reason given"


def _retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date, RFC 9110), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return max(seconds, 0.0) if math.isfinite(seconds) or seconds > 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)
