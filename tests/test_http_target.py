"""HttpTarget against a model served on the loopback: scores and labels, the request and query counts, retries
of 429/503 and broken connections with back-off and Retry-After, refusals and malformed answers, and a plan
with `target: {kind: http}` assessed end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aisec.assessment.plan import load_plan
from aisec.assessment.subject import http_target, load_target
from aisec.cli import app
from aisec.core.errors import BadInputError, CapabilityError, DataError, ModelLoadError, PlanError
from aisec.targets.base import Access, InputSpec
from aisec.targets.http_target import HttpTarget, ServiceRefused

SPEC = InputSpec((1, 8, 8), 10)
# A reply: status, headers, body (a JSON-ready value, or bytes sent as they are).
Reply = tuple[int, dict[str, str], Any]
Behaviour = Callable[[dict[str, Any], dict[str, str]], Reply]


class Server:
    """A model behind ThreadingHTTPServer on 127.0.0.1 (a free port); each test sets `behave`."""

    def __init__(self) -> None:
        self.behave: Behaviour = lambda body, headers: (500, {}, {"error": "no behaviour set"})
        self.seen: list[tuple[dict[str, Any], dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body, headers = json.loads(raw), dict(self.headers.items())
                owner.seen.append((body, headers))
                status, extra, payload = owner.behave(body, headers)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/predict"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture()
def fresh(server: Server) -> Server:
    server.seen.clear()
    return server


def model_scores(model: torch.nn.Module) -> Callable[[dict[str, Any]], np.ndarray]:
    def probabilities(body: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor(body["inputs"], dtype=torch.float32)).softmax(1).numpy()

    return probabilities


def mean_scores(body: dict[str, Any]) -> np.ndarray:
    """A cheap stand-in model for the tests that need no trained one: class = mean pixel bucket."""
    x = np.asarray(body["inputs"], dtype=np.float32).reshape(len(body["inputs"]), -1)
    logits = -np.abs(x.mean(1, keepdims=True) * 10 - np.arange(10))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ok(scores: Callable[[dict[str, Any]], np.ndarray]) -> Behaviour:
    return lambda body, headers: (200, {}, {"scores": scores(body).tolist()})


def then(replies: list[Reply], after: Behaviour) -> Behaviour:
    """The replies in order, then `after` for every later request."""
    queue = list(replies)
    return lambda body, headers: queue.pop(0) if queue else after(body, headers)


class Sleeps(list[float]):
    """Records the back-off instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def target(server: Server, sleep: Sleeps | None = None, **kwargs: Any) -> HttpTarget:
    return HttpTarget(server.url, SPEC, sleep=sleep if sleep is not None else Sleeps(), **kwargs)


def batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SPEC.shape, generator=torch.Generator().manual_seed(seed))


def test_scores_in_chunks_match_the_served_model(fresh, digits, digits_model):
    fresh.behave = ok(model_scores(digits_model))
    x = digits.test.x[:300]
    with target(fresh, batch_size=128, headers={"Authorization": "Bearer k"}) as t:
        scores = t.scores(x)
        assert t.access is Access.SCORES and t.queries.total == 300 and t.requests == 3 and t.retried == 0
        with torch.no_grad():
            expected = digits_model(x).softmax(1)
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
        assert torch.equal(t.labels(x[:10]), expected[:10].argmax(1))
        assert t.queries.total == 310 and t.requests == 4
    assert [len(body["inputs"]) for body, _ in fresh.seen] == [128, 128, 44, 10]
    assert all(h["Authorization"] == "Bearer k" for _, h in fresh.seen)
    assert "HttpTarget" in t.describe() and fresh.url in t.describe()


def test_labels_only_service(fresh):
    fresh.behave = lambda body, headers: (200, {}, {"labels": mean_scores(body).argmax(1).tolist()})
    t = target(fresh, returns="labels")
    x = batch(5)
    assert t.access is Access.LABELS
    assert torch.equal(t.labels(x), torch.from_numpy(mean_scores({"inputs": x.tolist()}).argmax(1)))
    with pytest.raises(CapabilityError, match="labels only"):
        t.scores(x)
    assert t.requests == 1


def test_dotted_fields(fresh):
    def nested(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, {}, {"outputs": {"probs": mean_scores({"inputs": body["data"]["rows"]}).tolist()}}

    fresh.behave = nested
    t = target(fresh, input_field="data.rows", scores_field="outputs.probs")
    assert t.scores(batch(3)).shape == (3, 10)


def test_503_twice_then_ok_backs_off_exponentially(fresh):
    busy = (503, {}, {"error": "overloaded"})
    fresh.behave = then([busy, busy], ok(mean_scores))
    sleeps = Sleeps()
    t = target(fresh, sleep=sleeps, backoff_s=0.2)
    assert t.scores(batch(4)).shape == (4, 10)
    assert t.requests == 3 and t.retried == 2 and t.queries.total == 4
    assert sleeps == [0.2, 0.4]


def test_429_honours_retry_after(fresh):
    fresh.behave = then([(429, {"Retry-After": "1"}, {"error": "slow down"})], ok(mean_scores))
    sleeps = Sleeps()
    t = target(fresh, sleep=sleeps)
    t.scores(batch(2))
    assert sleeps == [1.0] and t.requests == 2 and t.retried == 1


def test_retry_after_beyond_max_wait_refuses_at_once(fresh):
    fresh.behave = then([], ok(mean_scores))
    t = target(fresh, max_wait_s=30, batch_size=4)
    t.scores(batch(8))  # two requests answered
    fresh.behave = lambda body, headers: (429, {"Retry-After": "3600"}, {"error": "daily quota spent"})
    with pytest.raises(ServiceRefused, match="daily quota spent") as refused:
        t.scores(batch(4))
    e = refused.value
    assert (e.status, e.reason, e.retry_after_s, e.answered) == (429, "daily quota spent", 3600.0, 8)
    assert e.exit_code == 2 and "3600" in str(e) and "8 sample(s)" in str(e)
    assert t.requests == 3 and t.retried == 0


def test_429_after_every_retry_refuses(fresh):
    fresh.behave = lambda body, headers: (429, {}, {"detail": "rate limited"})
    sleeps = Sleeps()
    t = target(fresh, sleep=sleeps, retries=2, backoff_s=1.0, max_wait_s=1.5)
    with pytest.raises(ServiceRefused, match=r"\(429: rate limited\)") as refused:
        t.scores(batch(2))
    assert refused.value.answered == 0 and refused.value.retry_after_s is None
    assert t.requests == 3 and t.retried == 2 and sleeps == [1.0, 1.5]  # 2.0 capped at max_wait_s


def test_401_refuses_without_retrying(fresh):
    fresh.behave = lambda body, headers: (401, {}, {"detail": "unknown API key"})
    t = target(fresh)
    with pytest.raises(ServiceRefused, match="401: unknown API key"):
        t.scores(batch(2))
    assert t.requests == 1 and t.retried == 0


def test_scores_downgraded_to_labels_is_a_refusal(fresh):
    def downgrade(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, {}, {"labels": mean_scores(body).argmax(1).tolist()}

    fresh.behave = then([ok(mean_scores)({"inputs": batch(4).tolist()}, {})], downgrade)
    t = target(fresh, batch_size=4)
    with pytest.raises(ServiceRefused, match="stopped returning scores") as refused:
        t.scores(batch(12))
    assert refused.value.status == 200 and refused.value.answered == 4 and t.requests == 2


@pytest.mark.parametrize(
    "reply,error,expected",
    [
        ((422, {}, {"detail": "inputs must be 8x8"}), DataError, r"answered 422: inputs must be 8x8"),
        ((500, {}, b"Traceback: boom"), DataError, r"answered 500: Traceback: boom"),
        ((200, {}, b"<html>hello</html>"), DataError, r"predict: the answer is not JSON.*field `scores`"),
        ((200, {}, {"probs": [[0.1] * 10]}), DataError, r"predict: the answer has no field `scores`"),
        ((200, {}, {"scores": [[0.5, 0.5]] * 2}), DataError, r"shape \(2, 2\) for 2 samples"),
        ((200, {}, {"scores": [[float("nan")] * 10] * 2}), DataError, r"NaN"),
    ],
    ids=["422", "500", "not-json", "no-field", "wrong-shape", "nan"],
)
def test_bad_answers_are_data_errors_naming_the_url(fresh, reply, error, expected):
    fresh.behave = lambda body, headers: reply
    t = target(fresh)
    with pytest.raises(error, match=expected) as raised:
        t.scores(batch(2))
    assert fresh.url in str(raised.value) and t.requests == 1


def test_a_slow_answer_times_out_and_is_retried(fresh):
    def slow(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        time.sleep(0.5)
        return ok(mean_scores)(body, headers)

    fresh.behave = slow
    sleeps = Sleeps()
    t = target(fresh, sleep=sleeps, timeout_s=0.1, retries=1)
    with pytest.raises(ModelLoadError, match=r"no answer after 2 attempt\(s\) \(ReadTimeout"):
        t.scores(batch(2))
    assert t.requests == 2 and t.retried == 1 and sleeps == [0.2]


def test_an_unreachable_service_and_bad_settings():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}/"
    t = HttpTarget(url, SPEC, retries=1, sleep=Sleeps())
    with pytest.raises(ModelLoadError, match="ConnectError"):
        t.scores(batch(1))
    assert t.requests == 2
    for bad, match in [
        ({"url": "ftp://h/x"}, "http:// or https://"),
        ({"batch_size": 0}, "batch_size"),
        ({"retries": -1}, "retries"),
        ({"scores_field": "a..b"}, "scores_field"),
        ({"returns": "logits"}, "returns"),
    ]:
        with pytest.raises(BadInputError, match=match):
            HttpTarget(**{"url": "http://h/x", "spec": SPEC, **bad})


def test_a_given_client_is_used_and_left_open(fresh):
    fresh.behave = ok(mean_scores)
    client = httpx.Client(headers={"X-Client": "mine"})
    with target(fresh, client=client) as t:
        t.scores(batch(1))
    assert fresh.seen[0][1]["X-Client"] == "mine" and not client.is_closed
    client.close()


def test_import_aisec_targets_and_a_plan_load_no_httpx():
    code = "import sys, aisec.targets, aisec.assessment.plan; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


PLAN = """\
name: served
target:
  kind: http
  url: {url}
  headers: {{Authorization: "Bearer ${{AISEC_TEST_GUARD_KEY}}", X-Tenant: red-team}}
  input: {{shape: [1, 8, 8], num_classes: 10}}
  batch_size: 64
  retries: 2
data: {{builtin: digits, samples: 100}}
threat_model: {{knowledge: scores}}
probes:
  extraction: {{query_budget: 100, strategies: [natural], transfer: false}}
"""


def write_plan(tmp_path, url: str, text: str = PLAN):
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text.format(url=url)))
    return path


def test_http_plan_loads_and_expands_headers_from_the_environment(tmp_path, monkeypatch):
    plan, _ = load_plan(write_plan(tmp_path, "https://models.example/v1/predict"))
    section = plan.target
    assert section.kind == "http" and section.url == "https://models.example/v1/predict"
    assert section.headers["Authorization"] == "Bearer ${AISEC_TEST_GUARD_KEY}"  # the plan holds no secret
    assert (section.request.field, section.response.scores, section.batch_size) == ("inputs", "scores", 64)
    monkeypatch.setenv("AISEC_TEST_GUARD_KEY", "s3cret")
    built, digest = load_target(section)
    assert digest is None and isinstance(built, HttpTarget) and built.retries == 2
    assert built.headers == {"Authorization": "Bearer s3cret", "X-Tenant": "red-team"}
    built.close()
    monkeypatch.delenv("AISEC_TEST_GUARD_KEY")
    with pytest.raises(
        BadInputError, match=r"target.headers.Authorization: .*AISEC_TEST_GUARD_KEY is not set"
    ):
        http_target(section)


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("url: {url}", "url: ftp://h/x", r"plan.yaml:4: target.url: give an http:// or https:// URL"),
        ("url: {url}", "url: http://me:pw@h/x", r"plan.yaml:4: target.url: the URL holds credentials"),
        ("kind: http", "kind: grpc", r"plan.yaml:3: target.kind: unknown kind 'grpc'; choose one of .*http"),
        ("  batch_size: 64", "  batch_size: 64\n  path: m.pt", r"plan.yaml:8: target.path: Extra inputs"),
        ("false}}", "false}}\n  inspection: {{}}", r"probes.inspection .* http target has none"),
        ("[natural]", "[natural, jpeg]", r"probes.extraction.strategies.1"),
    ],
)
def test_bad_http_plans_name_line_and_field(tmp_path, old, new, expected):
    assert old in PLAN
    with pytest.raises(PlanError, match=expected):
        load_plan(write_plan(tmp_path, "http://h/x", PLAN.replace(old, new)))


def test_assess_a_served_model_end_to_end(tmp_path, fresh, digits_model, monkeypatch):
    probabilities = model_scores(digits_model)

    def guarded(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if headers.get("Authorization") != "Bearer s3cret":
            return 401, {}, {"detail": "unknown API key"}
        return 200, {}, {"scores": probabilities(body).tolist()}

    fresh.behave = guarded
    monkeypatch.setenv("AISEC_TEST_GUARD_KEY", "s3cret")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["assess", str(write_plan(tmp_path, fresh.url)), "-o", str(out), "-f", "json", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    subject = report["subject"]
    assert (subject["target_kind"], subject["access"]) == ("HttpTarget", "scores")
    assert subject["model_source"] == fresh.url and subject["model_sha256"] is None
    (finding,) = report["findings"]
    assert finding["rule_id"].startswith("AISEC-EXT")
    assert len(fresh.seen) >= 2 and all(h["Authorization"] == "Bearer s3cret" for _, h in fresh.seen)

    monkeypatch.setenv("AISEC_TEST_GUARD_KEY", "wrong")
    refused = CliRunner().invoke(
        app, ["assess", str(write_plan(tmp_path, fresh.url)), "-o", str(tmp_path / "no"), "--quiet"]
    )
    assert refused.exit_code == 2 and "refused the request (401: unknown API key)" in refused.output, (
        refused.output
    )
    assert not (tmp_path / "no").exists()


def test_retry_after_in_seconds_or_as_an_http_date():
    from email.utils import format_datetime

    from aisec.targets.http_target import _retry_after

    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    assert 100 < _retry_after(soon) <= 120
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: retry now
    assert (_retry_after(" 2 "), _retry_after("-3"), _retry_after("inf")) == (2.0, 0.0, float("inf"))
    assert _retry_after("nan") is None and _retry_after("soon") is None and _retry_after(None) is None


def test_assessing_a_local_model_needs_no_httpx():
    """The runner catches ServiceRefused in every assessment; httpx (the guard extra) is imported only when an
    HTTP target is made, so `make demo`'s install, which has no httpx, assesses local models."""
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from aisec.targets.http_target import ServiceRefused\n"
        "import aisec.assessment.runner\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
