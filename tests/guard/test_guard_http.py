"""The guard over HTTP: the Starlette app under uvicorn, reached through aisec's HTTP target; the CLI that makes
keys and serves it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from guard_setup import serving, write_guard
from typer.testing import CliRunner

from aisec.cli import app as cli_app
from aisec.defend.auditability.audit_log.keys import load_verifying_key
from aisec.defend.auditability.audit_log.verify import verify_log
from aisec.guard.app import create_app
from aisec.guard.config import load_config
from aisec.guard.keys import list_keys
from aisec.guard.service import build_guard
from aisec.targets.base import Access, InputSpec
from aisec.targets.http_target import HttpTarget, ServiceRefused

pytestmark = pytest.mark.training  # the session's digits CNN answers
SPEC = InputSpec((1, 8, 8), 10)


def _target(url: str, token: str, **kwargs) -> HttpTarget:
    return HttpTarget(f"{url}/v1/predict", SPEC, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def test_http_target_attacks_the_guard_and_reads_what_its_key_may_see(tmp_path, digits_model, digits):
    path, tokens = write_guard(tmp_path, digits_model, digits)
    guard = build_guard(load_config(path))
    with serving(create_app(guard)) as url:
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        x = digits.test.x[:40]
        with _target(url, tokens["default"], batch_size=16) as target:
            probabilities = target.probabilities(x)
            assert target.queries.total == 40 and target.requests == 3
        assert probabilities.shape == (40, 10) and ((probabilities > 0).sum(1) <= 3).all()
        assert torch.equal(probabilities.argmax(1), digits_model(x).argmax(1))
        with _target(url, tokens["basic"], returns="labels") as labels_only:
            assert labels_only.access is Access.LABELS
            assert torch.equal(labels_only.labels(x), digits_model(x).argmax(1))
        with _target(url, tokens["basic"]) as wants_scores, pytest.raises(ServiceRefused, match="scores"):
            wants_scores.scores(x)
        with _target(url, "aisec_0123456789ab_nope") as stranger, pytest.raises(ServiceRefused) as refused:
            stranger.scores(x)
        assert refused.value.status == 401
        metrics = httpx.get(f"{url}/metrics").text
        assert 'decision="allowed",status="200"' in metrics and "aisec_guard_rows_total" in metrics
        bad = httpx.post(
            f"{url}/v1/predict", content=b"{", headers={"Authorization": f"Bearer {tokens['default']}"}
        )
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
        two_keys = httpx.post(
            f"{url}/v1/predict",
            content=b'{"inputs": [[0.5]]}',
            headers=[("Authorization", f"Bearer {tokens['default']}"), ("Authorization", "Bearer other")],
        )
        assert two_keys.status_code == 401  # two Authorization headers: neither is taken
    verification = verify_log(tmp_path / "audit.db", public_key=load_verifying_key(tmp_path / "audit.pub"))
    assert verification.ok and verification.unsigned_tail == 0  # the last checkpoint is signed at shutdown


def test_rate_limited_client_is_told_when_to_retry(tmp_path, digits_model, digits):
    path, tokens = write_guard(tmp_path, digits_model, digits, limits={"requests_per_second": 2, "burst": 2})
    with serving(create_app(build_guard(load_config(path)))) as url:
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(seconds)

        with _target(url, tokens["default"], batch_size=1, sleep=sleep) as target:
            target.labels(digits.test.x[:4])  # 4 requests against a burst of 2: the target waits as told
        assert waits and all(w >= 0.5 for w in waits) and target.retried == len(waits)
        with (
            _target(url, tokens["default"], batch_size=1, retries=0) as impatient,
            pytest.raises(ServiceRefused) as e,
        ):
            for _ in range(5):
                impatient.labels(digits.test.x[:1])
        assert e.value.status == 429 and e.value.retry_after_s is not None


def test_key_commands(tmp_path):
    runner = CliRunner()
    keys = tmp_path / "keys.json"
    added = runner.invoke(cli_app, ["guard", "key", "add", str(keys), "carol", "--tier", "basic"])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("aisec_") and token not in keys.read_text()  # only its hash is stored
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert runner.invoke(cli_app, ["guard", "key", "add", str(keys), "carol"]).exit_code == 2
    listed = runner.invoke(cli_app, ["guard", "key", "list", str(keys)])
    assert "carol" in listed.stdout and "basic" in listed.stdout and "active" in listed.stdout
    assert runner.invoke(cli_app, ["guard", "key", "revoke", str(keys), "carol"]).exit_code == 0
    assert list_keys(keys)[0].revoked is not None
    assert runner.invoke(cli_app, ["guard", "key", "revoke", str(keys), "carol"]).exit_code == 2


def test_check_names_a_bad_configuration(tmp_path, digits_model, digits):
    path, _ = write_guard(tmp_path, digits_model, digits)
    runner = CliRunner()
    assert runner.invoke(cli_app, ["guard", "check", str(path)]).exit_code == 0
    path.write_text(path.read_text().replace("keys.json", "missing.json"))
    result = runner.invoke(cli_app, ["guard", "check", str(path)])
    assert result.exit_code == 2 and "missing.json" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_answers_and_signs_its_log_when_stopped(tmp_path, digits_model, digits):
    path, tokens = write_guard(tmp_path, digits_model, digits)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "aisec", "guard", "serve", str(path), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert time.monotonic() < deadline, "the guard did not start"
                time.sleep(0.2)
        with _target(url, tokens["default"]) as target:
            labels = target.labels(digits.test.x[:8])
        assert labels.tolist() == digits_model(digits.test.x[:8]).argmax(1).tolist()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    verification = verify_log(tmp_path / "audit.db", public_key=load_verifying_key(tmp_path / "audit.pub"))
    assert verification.ok and verification.entries == 1 and verification.unsigned_tail == 0


def test_the_example_guards_a_model_and_stops_an_extraction():
    """examples/guard_and_attack.py, as docs/guard.md tells users to run it."""
    example = Path(__file__).parents[2] / "examples" / "guard_and_attack.py"
    run = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert "the guard stopped the attacker" in run.stdout
    answered = int(run.stdout.split(" after ")[1].split(" queries")[0])
    assert answered < 2000
