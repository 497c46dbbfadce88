"""`aisec guard serve --workers N` against a real redis-server: the workers admit together what one process would
(a request rate and a row quota), Redis stopped under load fails closed (503) or falls back to per-process limits
as configured and says so on stderr, and Redis back shares again; a worker killed with SIGKILL under load leaves
an audit log that verifies and holds every answered request, and uvicorn starts another.

The guard fronts a tiny ONNX model (a 64 -> 10 linear layer and a softmax, weights drawn from a seeded generator)
on the digits' flattened 8x8 images. The helpers here (`write_tiny_guard`, `served`, `Client`) serve
bench/guard.py as well.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from aisec.data.builtin import load_builtin
from aisec.defend.auditability.audit_log.entry import decode_entry
from aisec.defend.auditability.audit_log.keys import generate_ed25519_key_pair
from aisec.defend.auditability.audit_log.log import AuditLog
from aisec.guard.keys import add_key

START_TIMEOUT_S = 90.0  # several workers importing torch on a busy 2-core machine
HIGH_LIMITS = {"requests_per_second": 100_000, "burst": 100_000, "rows_per_day": 10**12}


def write_tiny_model(path: Path, *, seed: int = 0) -> None:
    """An ONNX classifier of 64 inputs: one linear layer (Gemm, what torch's nn.Linear(64, 10) exports to, with
    weights from a generator seeded `seed`) and a softmax, over a dynamic batch dimension."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.5, size=(10, 64)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=10).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "weight", "bias"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 10])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def digits_rows() -> tuple[np.ndarray, np.ndarray]:
    """The digits' training and held-out images, flattened to 64 values in [0, 1] (float32)."""
    split = load_builtin("digits", seed=0)
    return (
        split.train.x.reshape(len(split.train.x), -1).numpy(),
        split.test.x.reshape(len(split.test.x), -1).numpy(),
    )


def write_tiny_guard(
    folder: Path,
    *,
    keys: tuple[str, ...] = ("alice",),
    limits: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    monitor: bool = True,
    audit: bool = True,
    **sections: Any,
) -> tuple[Path, dict[str, str]]:
    """A guard configuration in `folder` over the tiny model: a key per name, `limits` (default: too high to
    bite), top-3 scores to two decimals, monitoring (PRADA, stateful detection and coverage calibrated on the
    digits' training images, action `log`: alarms never change an answer), an audit log; returns its path and
    the tokens by key name."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_model(folder / "tiny.onnx")
    train, _ = digits_rows()
    np.savez(folder / "natural.npz", x=train)
    tokens = {name: add_key(folder / "keys.json", name) for name in keys}
    config: dict[str, Any] = {
        "model": {
            "kind": "onnx",
            "path": "tiny.onnx",
            "input": {"shape": [64], "num_classes": 10, "lower": 0, "upper": 1},
        },
        "keys": "keys.json",
        "limits": limits or HIGH_LIMITS,
        "output": {"top_k": 3, "decimals": 2},
    }
    if monitor:
        config["monitor"] = {
            "reference": "natural.npz",
            "prada": {},
            "stateful": {},
            "coverage": {},
            "first_action": "log",
            "action": "log",
        }
    if audit:
        generate_ed25519_key_pair(folder / "audit.key", folder / "audit.pub")
        config |= {"audit_log": "audit.db", "audit_key": "audit.key"}
    if redis is not None:
        config["redis"] = redis
    config |= sections
    path = folder / "guard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tokens


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """A running `aisec guard serve`: its process (the uvicorn supervisor with several workers), its URL and
    the file its stderr goes to."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The uvicorn workers: the serve process's children started by multiprocessing's spawn (its resource
        tracker, also a child, is not one)."""
        return [pid for pid in children(self.process.pid) if b"spawn_main" in _cmdline(pid)]


def children(pid: int) -> list[int]:
    """The process ids whose parent is `pid` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthy(host: str, port: int) -> bool:
    try:
        connection = http.client.HTTPConnection(host, port, timeout=2)
        connection.request("GET", "/healthz")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except OSError:
        return False


@contextmanager
def served(config: Path, *, workers: int = 1) -> Iterator[Served]:
    """`python -m aisec guard serve CONFIG --workers N` on 127.0.0.1 at a free port, its stderr in a file beside
    the configuration; yields once /healthz answers and all workers are up, stops it with SIGTERM."""
    port = free_port()
    log_path = config.parent / f"serve-{port}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aisec", "guard", "serve", str(config), "--host", "127.0.0.1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--workers", str(workers)], env=env, stderr=log
        )
    server = Served(process, "127.0.0.1", port, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(server.host, port) or (workers > 1 and len(server.worker_pids()) < workers):
            if process.poll() is not None:
                raise RuntimeError(f"aisec guard serve exited with {process.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"aisec guard serve did not start in {START_TIMEOUT_S:.0f} s:\n{server.log()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Client:
    """One keep-alive HTTP/1.1 connection posting to /v1/predict with a key; reconnects after a failure."""

    host: str
    port: int
    token: str | None
    timeout_s: float = 10.0
    _connection: http.client.HTTPConnection | None = field(default=None, repr=False)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, response body); status 0 when the connection failed (refused, reset, timed out)."""
        sent = {"Content-Type": "application/json"}
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        sent |= headers or {}
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._connection.request("POST", "/v1/predict", body, sent)
            response = self._connection.getresponse()
            answer = response.read()
            if response.will_close:
                self.close()
            return response.status, answer
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def worker(self) -> int | None:
        """The process id of the worker this connection reaches (its /metrics label); None on failure."""
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._connection.request("GET", "/metrics")
            text = self._connection.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            self.close()
            return None
        found = re.search(r'worker="(\d+)"', text)
        return int(found.group(1)) if found else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def answers_from(host: str, port: int, pid: int, timeout_s: float = 60.0) -> float | None:
    """Seconds until a fresh connection's /metrics came from worker `pid` (the kernel hands connections to the
    workers in turn, more or less), or None if none did within `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        client = Client(host, port, None, timeout_s=2.0)
        worker = client.worker()
        client.close()
        if worker == pid:
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def body_of(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": np.round(rows, 4).tolist()}, separators=(",", ":")).encode()


def unique_bodies(rows: np.ndarray, count: int, batch: int, seed: int) -> list[bytes]:
    """`count` request bodies of `batch` rows each, drawn from `rows` with a little noise (clipped to [0, 1]),
    so that no two bodies are alike and each names its request by its SHA-256."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(count, batch))
    noisy = np.clip(rows[picks] + rng.normal(0, 0.01, size=(count, batch, rows.shape[1])), 0, 1)
    return [body_of(x) for x in noisy]


def audit_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of a guard's audit log, decoded."""
    with AuditLog.open(path) as log:
        return [decode_entry(bytes(e.content)) for e in log.store.entries(0, log.size)]


def verify_audit(folder: Path) -> subprocess.CompletedProcess[str]:
    """`aisec audit verify` of the guard's log in `folder` against its public key, as an operator runs it."""
    command = [sys.executable, "-m", "aisec", "audit", "verify", str(folder / "audit.db"), "--key"]
    return subprocess.run([*command, str(folder / "audit.pub")], capture_output=True, text=True)


def unlogged_answers(answered: dict[str, list[bytes]], entries: list[dict[str, Any]]) -> dict[str, int]:
    """Per key, the 200 answers a client received that the audit log does not hold as a status-200 entry of
    that key with the body's SHA-256 (a multiset comparison: a body sent twice needs two entries)."""
    missing = {}
    for key, bodies in answered.items():
        received = Counter(hashlib.sha256(b).hexdigest() for b in bodies)
        logged = Counter(e["body_sha256"] for e in entries if e["key"] == key and e["status"] == 200)
        missing[key] = sum((received - logged).values())
    return missing


@dataclass(frozen=True)
class Answered:
    """One request a hammer sent: when (time.monotonic()), its body, and the status it got (0: no answer)."""

    sent: float
    body: bytes
    status: int


@dataclass
class Hammer:
    """Threads posting `bodies` (round and round) for one key as fast as answers come, each on its own
    keep-alive connection, until stopped; keeps every request, and which worker each thread's connection reached
    last with how many 200 answers (`admitted_by_worker`)."""

    host: str
    port: int
    token: str
    bodies: list[bytes]
    threads: int = 4
    pause_s: float = 0.005  # after a refusal, so that a hammer refused fast does not spin a core
    results: list[Answered] = field(default_factory=list)
    admitted_by_worker: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Hammer:
        for t in range(self.threads):
            worker = threading.Thread(target=self._run, args=(t,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, offset: int) -> None:
        client = Client(self.host, self.port, self.token)
        admitted = 0
        i = offset
        while not self._stop.is_set():
            body = self.bodies[i % len(self.bodies)]  # round again when out of bodies: the log check counts
            i += self.threads
            sent = time.monotonic()
            status, _ = client.post(body)
            admitted += status == 200
            with self._lock:
                self.results.append(Answered(sent, body, status))
            if status == 0:
                admitted = 0  # a new connection may reach another worker
            if status != 200:
                time.sleep(self.pause_s)
        worker = client.worker()
        client.close()
        if worker is not None:
            with self._lock:
                self.admitted_by_worker[worker] += admitted

    def stop(self) -> list[Answered]:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        return self.results

    def statuses(self, since: float = 0.0) -> Counter[int]:
        """The statuses of the requests sent at or after `since`."""
        with self._lock:
            return Counter(a.status for a in self.results if a.sent >= since)


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _outage(hammer: Hammer, server: Served, redis: Any) -> tuple[float, float]:
    """Stop Redis under the hammer's load and start it again on its port once 100 requests were answered
    without it; returns when it was stopped and started (time.monotonic()), after the guard answered 10
    requests with Redis back."""
    _wait(lambda: hammer.statuses()[200] >= 10, 30, "the guard answered no requests before the outage")
    redis.stop()
    stopped = time.monotonic()
    _wait(lambda: sum(hammer.statuses(stopped).values()) >= 100, 30, "no answers during the outage")
    redis.start()
    started = time.monotonic()
    _wait(lambda: "again" in server.log(), 30, "the guard did not say that Redis is back")
    back = time.monotonic()
    _wait(lambda: hammer.statuses(back)[200] >= 10, 30, "no answers after Redis came back")
    hammer.stop()
    return stopped, started


def test_two_workers_share_the_limits_and_fail_closed_without_redis(tmp_path, own_redis):
    rate, burst, quota, batch = 20.0, 5, 300, 10
    config, tokens = write_tiny_guard(
        tmp_path,
        keys=("rate", "quota", "probe"),
        limits={"requests_per_second": rate, "burst": burst, "rows_per_day": quota},
        redis={"url": own_redis.url, "on_failure": "fail_closed"},
        audit=False,
    )
    _, test = digits_rows()
    with served(config, workers=2) as server:
        started = time.monotonic()
        by_rate = Hammer(
            server.host, server.port, tokens["rate"], unique_bodies(test, 20_000, 1, 1), 6
        ).start()
        by_quota = Hammer(server.host, server.port, tokens["quota"], unique_bodies(test, 5_000, batch, 2), 4)
        by_quota.start()
        time.sleep(3.0)
        rate_results, quota_results = by_rate.stop(), by_quota.stop()
        elapsed = time.monotonic() - started
        probe = Hammer(
            server.host, server.port, tokens["probe"], unique_bodies(test, 20_000, 1, 3), 3
        ).start()
        stopped, restarted = _outage(probe, server, own_redis)
    admitted = sum(a.status == 200 for a in rate_results)
    bound = burst + rate * elapsed  # GCRA over the window the clients saw, which holds the server's
    assert {a.status for a in rate_results} == {200, 429}
    assert 0.8 * bound <= admitted <= bound, (admitted, bound)
    assert sum(a.status == 200 for a in quota_results) * batch == quota  # the quota binds exactly
    assert {a.status for a in quota_results} == {200, 429}
    workers = by_rate.admitted_by_worker + by_quota.admitted_by_worker
    assert len(+workers) == 2, workers  # both workers admitted requests of the same keys
    during = Counter(a.status for a in probe.results if stopped <= a.sent < restarted)
    assert during[503] >= 100 and set(during) == {503}, during  # never an answer under unshared limits
    log = server.log()  # the monitors' stream or the limiter, whichever reaches Redis first, says so
    assert "unreachable" in log and "refusing requests" in log
    assert "reachable again" in log


@pytest.mark.slow  # 12-22 s here (two workers started, Redis stopped and started): the module keeps < 30 s
def test_redis_down_falls_back_to_per_process_limits_and_says_so(tmp_path, own_redis):
    config, tokens = write_tiny_guard(
        tmp_path, redis={"url": own_redis.url, "on_failure": "local"}, audit=False
    )
    _, test = digits_rows()
    with served(config, workers=2) as server:
        hammer = Hammer(
            server.host, server.port, tokens["alice"], unique_bodies(test, 50_000, 1, 3), 3
        ).start()
        stopped, restarted = _outage(hammer, server, own_redis)
    during = Counter(a.status for a in hammer.results if stopped <= a.sent < restarted)
    assert during[200] >= 100 and set(during) == {200}, during
    log = server.log()
    # one outage state per worker for the limits and the monitors: one line for each change, per worker
    assert log.count("admitting and monitoring with this process's state") == 2, log
    assert log.count("limits and monitor state are shared again") == 2, log


@pytest.mark.slow  # 16-30 s here (two workers started, load before and after the kill)
def test_kill_9_of_a_worker_under_load_loses_no_answered_request(tmp_path, redis_server):
    config, tokens = write_tiny_guard(
        tmp_path, keys=("alice", "bob"), redis={"url": redis_server, "prefix": "aisec:test-kill:"}
    )
    _, test = digits_rows()
    with served(config, workers=2) as server:
        before = server.worker_pids()
        hammers = {
            key: Hammer(
                server.host, server.port, tokens[key], unique_bodies(test, 20_000, 2, seed), 3
            ).start()
            for seed, key in enumerate(("alice", "bob"))
        }
        _wait(
            lambda: all(h.statuses()[200] >= 50 for h in hammers.values()), 30, "no answers before the kill"
        )
        os.kill(before[0], signal.SIGKILL)
        killed = time.monotonic()
        _wait(lambda: len(set(server.worker_pids()) - set(before)) == 1, 30, "uvicorn started no new worker")
        (new,) = set(server.worker_pids()) - set(before)
        assert answers_from(server.host, server.port, new) is not None, "the new worker never answered"
        restarted = time.monotonic()
        _wait(lambda: all(h.statuses(restarted)[200] >= 50 for h in hammers.values()), 30, "no answers after")
        results = {key: hammer.stop() for key, hammer in hammers.items()}
        assert len(server.worker_pids()) == 2
    lost = sum(a.status == 0 for r in results.values() for a in r if a.sent >= killed)
    assert lost <= 6  # at most the requests in flight on the killed worker's connections
    verify = verify_audit(tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    answered = {key: [a.body for a in r if a.status == 200] for key, r in results.items()}
    assert unlogged_answers(answered, audit_entries(tmp_path / "audit.db")) == {"alice": 0, "bob": 0}
