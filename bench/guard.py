"""Guard benchmark (issue 16): what `aisec guard serve` costs and whether it holds under load and faults.

* overhead: a trivial model (an ONNX 64 -> 10 linear layer and softmax) served (a) by the guard with everything on
  (API key, limits too high to bite, validation, top-3 scores to two decimals, PRADA, stateful detection and
  coverage calibrated on the digits, action `log`, the audit log in SQLite) and (b) bare: a minimal Starlette app
  that parses the same JSON and calls the same model through the same OnnxTarget; one uvicorn worker each on
  loopback. Open loop: this script's own generator (processes, each with a keep-alive http.client connection,
  requests on a fixed schedule, latency from the scheduled time, so a stalled answer delays and counts against
  the ones behind it), one row per request, at --rate for --seconds; then closed loop with wrk (one thread, 8
  connections, a Lua script posting the same bodies) for the maximum throughput. The configurations are run
  interleaved --repeats times; medians. Target: p99 added by the guard <= 2 ms at 300 requests/s.
* limits: --workers guard workers sharing a redis-server; client processes hammer one key whose rate limit binds
  (50 requests/s, burst 10) and one whose row quota binds (5,000 rows a day, batches of 10 rows). Target: at most
  1 % over the configured limit.
* faults: (a) kill -9 of a worker under load: uvicorn starts another, `aisec audit verify` passes, and every 200
  answer the clients received is in the log (per key, by the SHA-256 of its body); (b) Redis stopped under load,
  with `on_failure: fail_closed` (503, never an answer under unshared limits) and `local` (per-process limits),
  each saying so on stderr, then Redis started again: shared again.
* monitors: the cost a query of each per-client detector, on a stream of --queries natural digits (resampled
  with a little noise, so none repeats), one query at a time as a request of one row feeds them: PRADA with the
  guard's settings (window 1000, a test every 10 queries, 500 growing points a class) beside the paper's (a test
  at every query over all distances: the anchor), the stateful detector, and coverage (also in batches of 32).
  Medians of --repeats runs.
* fuzz: --cases fuzzed requests (tests/guard/test_guard_fuzz.py's generator) over HTTP against a guard served in
  this process whose model checks every batch it is given: never a 5xx, never a model call with a batch that is
  not float32 of the spec's shape, finite and inside the bounds.

    .venv/bin/python bench/guard.py [limits] [faults] [monitors] [fuzz] [overhead]   # all by default, this order
Results are recorded in docs/benchmarks.md ("Guard").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "guard"))

from conftest import RedisServer  # noqa: E402
from guard_setup import serving  # noqa: E402
from test_guard_fuzz import CheckedModel, fuzz_cases, fuzz_guard, judge, over_http  # noqa: E402
from test_guard_workers import (  # noqa: E402
    Client,
    answers_from,
    audit_entries,
    cpu_seconds,
    digits_rows,
    free_port,
    healthy,
    served,
    unique_bodies,
    verify_audit,
    write_tiny_guard,
)

from aisec.data.builtin import load_builtin  # noqa: E402
from aisec.guard.app import create_app  # noqa: E402

PARTS = (
    "limits",
    "faults",
    "monitors",
    "fuzz",
    "overhead",
)  # the order they run in: overhead, the timing, last
TARGET_ADDED_P99_MS = 2.0
TARGET_OVER = 0.01


def load_averages() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load averages {one:.2f} {five:.2f} {fifteen:.2f}"


# --- the bare model -------------------------------------------------------------------------------------------


def bare_app(model: Path) -> Any:
    """The same model with nothing in front: parse the JSON body, call the OnnxTarget, answer labels and scores."""
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from aisec.targets.base import InputSpec
    from aisec.targets.onnx_target import OnnxTarget

    target = OnnxTarget(model, InputSpec((64,), 10))

    async def predict(request: Request) -> Response:
        x = np.asarray(json.loads(await request.body())["inputs"], dtype=np.float32)
        probabilities = target.probabilities(torch.from_numpy(x)).numpy()
        body = {"labels": probabilities.argmax(1).tolist(), "scores": probabilities.tolist()}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz)])


def serve_bare(model: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(model), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Bare:
    process: subprocess.Popen[bytes]
    host: str
    port: int


@contextmanager
def served_bare(model: Path) -> Iterator[Bare]:
    """This script serving the bare model in a subprocess (one uvicorn worker, as `aisec guard serve`)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(model), "--port", str(port)], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not healthy("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare model server did not start")
            time.sleep(0.1)
        yield Bare(process, "127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(30)


# --- load ----------------------------------------------------------------------------------------------------


def _open_loop_client(args: tuple[Any, ...]) -> np.ndarray:
    """One load process: requests at start + offset + i * interval (time.monotonic(), the same clock in every
    process), on one keep-alive connection; rows of (scheduled, sent, answered, status)."""
    host, port, token, bodies, start, interval, offset, count, deadline = args
    client = Client(host, port, token, timeout_s=10.0)
    rows = np.full((count, 4), np.nan)
    for i in range(count):
        scheduled = start + offset + i * interval
        if time.monotonic() > deadline:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic()
        status, _ = client.post(bodies[i % len(bodies)])
        rows[i] = (scheduled, sent, time.monotonic(), status)
    client.close()
    return rows


def open_loop(
    host: str, port: int, tokens: list[str | None], bodies: list[bytes], rate: float, seconds: float
) -> np.ndarray:
    """`rate` requests a second for `seconds` from one process per token (at most rate * seconds requests, none
    sent after seconds + 10); rows of (scheduled, sent, answered, status) of every process."""
    processes = len(tokens)
    count = int(rate * seconds) // processes
    start = time.monotonic() + 1.0
    deadline = start + seconds + 10.0
    share = len(bodies) // processes
    jobs = [
        (
            host,
            port,
            token,
            bodies[p * share : (p + 1) * share],
            start,
            processes / rate,
            p / rate,
            count,
            deadline,
        )
        for p, token in enumerate(tokens)
    ]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return np.concatenate(pool.map(_open_loop_client, jobs))


def wrk(host: str, port: int, token: str | None, bodies: list[bytes], folder: Path, seconds: float) -> float:
    """Requests a second that wrk 4 (one thread, 8 connections) gets through in `seconds`, posting `bodies` in
    turn; RuntimeError when any answer is not 2xx or a socket failed."""
    lines = folder / "bodies.txt"
    lines.write_bytes(b"\n".join(bodies) + b"\n")
    auth = f', ["Authorization"] = "Bearer {token}"' if token else ""
    script = folder / "post.lua"
    script.write_text(
        f'local bodies = {{}}\nfor line in io.lines("{lines}") do bodies[#bodies + 1] = line end\n'
        f'local headers = {{["Content-Type"] = "application/json"{auth}}}\nlocal i = 0\n'
        "request = function()\n  i = i + 1\n"
        '  return wrk.format("POST", "/v1/predict", headers, bodies[(i % #bodies) + 1])\nend\n'
    )
    result = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{seconds:g}s", "-s", str(script), f"http://{host}:{port}/v1/predict"],
        capture_output=True,
        text=True,
        check=True,
    )
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        raise RuntimeError(f"wrk saw failed requests:\n{result.stdout}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert found is not None, result.stdout
    return float(found.group(1))


def percentiles_ms(rows: np.ndarray) -> tuple[float, float, float, int, int]:
    """p50, p90, p99 of (answered - scheduled) in ms over the answered rows, answered 200 and requests not 200."""
    done = rows[~np.isnan(rows[:, 0])]
    latency = (done[:, 2] - done[:, 0]) * 1000
    p50, p90, p99 = np.percentile(latency, [50, 90, 99])
    ok = int((done[:, 3] == 200).sum())
    return float(p50), float(p90), float(p99), ok, len(rows) - ok


# --- overhead ------------------------------------------------------------------------------------------------


def overhead(args: argparse.Namespace, folder: Path) -> None:
    names = tuple(f"client{i}" for i in range(args.clients))
    config, tokens = write_tiny_guard(folder / "guard", keys=names)
    _, test = digits_rows()
    bodies = unique_bodies(test, int(args.rate * args.seconds) + 2000, 1, 0)
    warm = bodies[-2000:]
    figures: dict[str, list[tuple[float, ...]]] = {"bare": [], "guard": []}
    throughput: dict[str, list[float]] = {"bare": [], "guard": []}
    print(f"overhead: {load_averages()} before", flush=True)
    with served(config) as guard, served_bare(folder / "guard" / "tiny.onnx") as bare:
        servers: dict[str, tuple[str, int, list[str | None]]] = {
            "bare": (bare.host, bare.port, [None] * args.clients),
            "guard": (guard.host, guard.port, list(tokens.values())),
        }
        for host, port, keys in servers.values():  # warm up: first calls, lazy imports
            open_loop(host, port, keys, warm, args.rate, 2.0)
        for repeat in range(args.repeats):
            for name, (host, port, keys) in servers.items():
                rows = open_loop(host, port, keys, bodies, args.rate, args.seconds)
                figures[name].append(percentiles_ms(rows))
                p50, p90, p99, ok, failed = figures[name][-1]
                print(
                    f"  repeat {repeat} {name}: p50 {p50:.2f} p90 {p90:.2f} p99 {p99:.2f} ms, {ok} ok, {failed} not",
                    flush=True,
                )
            for name, (host, port, keys) in servers.items():
                throughput[name].append(wrk(host, port, keys[0], warm, folder, args.wrk_seconds))
                print(
                    f"  repeat {repeat} {name}: {throughput[name][-1]:.0f} requests/s closed loop", flush=True
                )
    print(f"overhead: {load_averages()} after\n")
    med = {name: [statistics.median(f[i] for f in runs) for i in range(5)] for name, runs in figures.items()}
    added = [g[2] - b[2] for g, b in zip(figures["guard"], figures["bare"], strict=True)]
    print(
        f"Open loop, {args.rate:g} requests/s for {args.seconds:g} s, {args.clients} client processes, one row per request, "
        f"median of {args.repeats} interleaved runs (latency from the scheduled send time):\n"
    )
    print("| server | p50 ms | p90 ms | p99 ms | answered 200 | other |\n|---|---|---|---|---|---|")
    for name in ("bare", "guard"):
        p50, p90, p99, ok, failed = med[name]
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {ok:.0f} | {failed:.0f} |")
    print(
        f"\np99 added by the guard: {med['guard'][2] - med['bare'][2]:.2f} ms (difference of the medians; per run "
        f"{', '.join(f'{a:.2f}' for a in added)}); p50 added {med['guard'][0] - med['bare'][0]:.2f} ms; "
        f"target <= {TARGET_ADDED_P99_MS:g} ms\n"
    )
    print(f"Closed loop (wrk -t1 -c8 -d{args.wrk_seconds:g}s), median of {args.repeats}:\n")
    print("| server | requests/s | runs |\n|---|---|---|")
    for name in ("bare", "guard"):
        print(
            f"| {name} | {statistics.median(throughput[name]):.0f} | {', '.join(f'{t:.0f}' for t in throughput[name])} |"
        )
    ratio = statistics.median(throughput["guard"]) / statistics.median(throughput["bare"])
    print(f"\nguard / bare throughput: {ratio:.2f}\n")
    p50, p90, p99 = in_process(folder / "in-process", names, bodies)
    print(
        f"The same guard's steps in this process (`Guard.predict`, no HTTP), {len(bodies)} requests in turn over "
        f"the same keys: p50 {p50:.3f} ms, p90 {p90:.3f} ms, p99 {p99:.3f} ms\n"
    )


def in_process(folder: Path, names: tuple[str, ...], bodies: list[bytes]) -> tuple[float, float, float]:
    """p50, p90, p99 in ms of `Guard.predict` over `bodies`, the keys `names` in turn, on a guard configured as the
    served one."""
    from aisec.guard.config import load_config
    from aisec.guard.service import build_guard

    config, tokens = write_tiny_guard(folder, keys=names)
    guard = build_guard(load_config(config))
    headers = [f"Bearer {tokens[name]}" for name in names]
    times = []
    for i, body in enumerate(bodies):
        started = time.perf_counter()
        reply = guard.predict(headers[i % len(headers)], body)
        times.append(time.perf_counter() - started)
        assert reply.status == 200, reply
    guard.close()
    p50, p90, p99 = np.percentile(np.array(times) * 1000, [50, 90, 99])
    return float(p50), float(p90), float(p99)


# --- limits --------------------------------------------------------------------------------------------------


def _hammer_client(args: tuple[Any, ...]) -> list[tuple[float, float, int, str]]:
    """One client process: `threads` keep-alive connections posting bodies as fast as answers come until
    `until` (time.monotonic()); (sent, answered, status, body SHA-256) per request."""
    host, port, token, bodies, threads, until = args
    results: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()

    def run(offset: int) -> None:
        client = Client(host, port, token)
        i = offset
        while time.monotonic() < until:
            body = bodies[i % len(bodies)]
            i += threads
            sent = time.monotonic()
            status, _ = client.post(body)
            with lock:
                results.append((sent, time.monotonic(), status, hashlib.sha256(body).hexdigest()))
            if status != 200:
                time.sleep(0.005 if status else 0.05)
        client.close()

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def hammer(
    host: str, port: int, plan: list[tuple[str, str, list[bytes]]], processes: int, seconds: float
) -> dict[str, list[tuple[float, float, int, str]]]:
    """`processes` client processes (two connections each) per (name, token, bodies) of `plan`, for `seconds`;
    every request's (sent, answered, status, body SHA-256) by name."""
    until = time.monotonic() + seconds
    jobs = [
        (host, port, token, bodies[p::processes], 2, until)
        for _, token, bodies in plan
        for p in range(processes)
    ]
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        out = pool.map(_hammer_client, jobs)
    return {
        name: [r for part in out[i * processes : (i + 1) * processes] for r in part]
        for i, (name, _, _) in enumerate(plan)
    }


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    server = RedisServer(binary, folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def limits(args: argparse.Namespace, folder: Path) -> None:
    rate, burst, quota, batch = 50.0, 10, 5000, 10
    print(f"limits: {load_averages()} before", flush=True)
    _, test = digits_rows()
    with redis_server(folder) as redis:
        config, tokens = write_tiny_guard(
            folder / "limits",
            keys=("rate", "quota"),
            redis={"url": redis.url},
            limits={"requests_per_second": rate, "burst": burst, "rows_per_day": quota},
            monitor=False,
            audit=False,
        )
        with served(config, workers=args.workers) as server:
            workers = server.worker_pids()
            cpu = {pid: cpu_seconds(pid) for pid in workers}
            plan = [
                ("rate", tokens["rate"], unique_bodies(test, 50_000, 1, 1)),
                ("quota", tokens["quota"], unique_bodies(test, 20_000, batch, 2)),
            ]
            results = hammer(server.host, server.port, plan, args.processes, args.limit_seconds)
            busy = [cpu_seconds(pid) - cpu[pid] for pid in workers]
    print(f"limits: {load_averages()} after\n")
    print(
        f"{args.workers} workers sharing redis-server, {args.processes} client processes x 2 connections per key, "
        f"{args.limit_seconds:g} s; limits {rate:g} requests/s, burst {burst}, {quota} rows a day:\n"
    )
    print(
        "| key | requests | answered 200 | 429 | other | configured at most | admitted | over |\n|---|---|---|---|---|---|---|---|"
    )
    for name, rows in results.items():
        statuses = Counter(r[2] for r in rows)
        window = max(r[1] for r in rows) - min(r[0] for r in rows)
        if name == "rate":
            allowed, admitted, unit = burst + rate * window, statuses[200], f"requests in {window:.2f} s"
        else:
            allowed, admitted, unit = quota, statuses[200] * batch, "rows"
        other = len(rows) - statuses[200] - statuses[429]
        print(
            f"| {name} | {len(rows)} | {statuses[200]} | {statuses[429]} | {other} | {allowed:.1f} {unit} | "
            f"{admitted} | {100 * (admitted / allowed - 1):+.2f} % |"
        )
    print(
        f"\nCPU seconds per worker during the run: {', '.join(f'{b:.1f}' for b in busy)}; target: at most "
        f"{100 * TARGET_OVER:g} % over\n"
    )


# --- faults --------------------------------------------------------------------------------------------------


def kill_worker(args: argparse.Namespace, folder: Path, redis: RedisServer) -> None:
    _, test = digits_rows()
    config, tokens = write_tiny_guard(
        folder / "kill", keys=("alice", "bob"), redis={"url": redis.url, "prefix": "kill:"}
    )
    with served(config, workers=args.workers) as server:
        before = server.worker_pids()
        plan = [
            (k, tokens[k], unique_bodies(test, 50_000, 2, seed)) for seed, k in enumerate(("alice", "bob"))
        ]
        outcome: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: outcome.update(hammer(server.host, server.port, plan, 2, 12.0))
        )
        load.start()
        time.sleep(4.0)
        os.kill(before[0], signal.SIGKILL)
        killed = time.monotonic()
        while not set(server.worker_pids()) - set(before) and time.monotonic() < killed + 60:
            time.sleep(0.01)
        new = sorted(set(server.worker_pids()) - set(before))
        spawned_s = time.monotonic() - killed
        ready = answers_from(server.host, server.port, new[0]) if new else None
        ready_s = None if ready is None else time.monotonic() - killed
        load.join()
        answers = healthy(server.host, server.port) and len(server.worker_pids()) == args.workers
    verify = verify_audit(folder / "kill")
    entries = audit_entries(folder / "kill" / "audit.db")
    logged = {
        k: Counter(e["body_sha256"] for e in entries if e["key"] == k and e["status"] == 200) for k in tokens
    }
    print(
        f"kill -9 of worker {before[0]} of {args.workers} under load (2 keys x 2 client processes x 2 connections, "
        f"12 s, killed at 4 s): uvicorn started worker {new} {spawned_s:.1f} s later, which answered "
        f"{'never' if ready_s is None else f'{ready_s:.1f} s after the kill'}; all answering afterwards: {answers}; "
        f"`aisec audit verify`: exit {verify.returncode} ({verify.stdout.strip().splitlines()[0] if verify.stdout.strip() else verify.stderr.strip()})\n"
    )
    print(
        "| key | requests | answered 200 | no answer (connection lost) | 200 entries in the log | answered, not in the log |\n|---|---|---|---|---|---|"
    )
    for key, rows in outcome.items():
        received = Counter(r[3] for r in rows if r[2] == 200)
        missing = sum((received - logged[key]).values())
        lost = sum(r[2] == 0 for r in rows)
        print(
            f"| {key} | {len(rows)} | {sum(received.values())} | {lost} | {sum(logged[key].values())} | {missing} |"
        )
    print()


def redis_outage(args: argparse.Namespace, folder: Path, redis: RedisServer, on_failure: str) -> None:
    rate, burst = 50.0, 10
    _, test = digits_rows()
    config, tokens = write_tiny_guard(
        folder / on_failure,
        keys=("alice",),
        redis={"url": redis.url, "on_failure": on_failure, "prefix": f"{on_failure}:"},
        limits={"requests_per_second": rate, "burst": burst, "rows_per_day": 10**9},
        audit=False,
    )
    with served(config, workers=args.workers) as server:
        plan = [("alice", tokens["alice"], unique_bodies(test, 50_000, 1, 5))]
        outcome: dict[str, Any] = {}
        start = time.monotonic()
        load = threading.Thread(
            target=lambda: outcome.update(hammer(server.host, server.port, plan, 3, 20.0))
        )
        load.start()
        time.sleep(4.0)
        stopping = time.monotonic()
        redis.stop()  # SIGTERM; Redis answers until it has shut down (about 0.1 s)
        stopped = time.monotonic()
        time.sleep(6.0)
        redis.start()
        restarted = time.monotonic()
        load.join()
        end = time.monotonic()
        log = server.log()
    rows = outcome["alice"]
    phases = [
        ("before", start, stopping),
        ("Redis shutting down", stopping, stopped),
        ("Redis stopped", stopped, restarted),
        ("Redis back, first 5 s (retry_s)", restarted, restarted + 5.0),
        ("Redis back, then", restarted + 5.0, end),
    ]
    back = [r[1] for r in rows if r[0] >= restarted and r[2] == 200]
    print(
        f"on_failure: {on_failure} ({args.workers} workers, 3 client processes x 2 connections, one key limited to "
        f"{rate:g} requests/s, burst {burst}; Redis stopped at 4 s for 6 s):\n"
    )
    print(
        "| phase | seconds | 200 | 429 | 503 | no answer | admitted per second |\n|---|---|---|---|---|---|---|"
    )
    for name, t0, t1 in phases:
        statuses = Counter(r[2] for r in rows if t0 <= r[0] < t1)
        print(
            f"| {name} | {t1 - t0:.1f} | {statuses[200]} | {statuses[429]} | {statuses[503]} | {statuses[0]} | "
            f"{statuses[200] / (t1 - t0):.1f} |"
        )
    first = f"{min(back) - restarted:.1f} s" if back else "never"
    said = [line for line in log.splitlines() if "Redis" in line]
    print(
        f"\nfirst 200 after Redis came back: {first}; the guard's stderr ({len(said)} lines about Redis, first of each kind):"
    )
    for line in dict.fromkeys(re.sub(r" \(.*\)(?=[:;])", " (...)", line) for line in said):
        print(f"    {line}")
    print()


def faults(args: argparse.Namespace, folder: Path) -> None:
    print(f"faults: {load_averages()} before\n", flush=True)
    with redis_server(folder) as redis:
        kill_worker(args, folder, redis)
        for on_failure in ("fail_closed", "local"):
            redis_outage(args, folder, redis, on_failure)
    print(f"faults: {load_averages()} after\n")


# --- fuzz ----------------------------------------------------------------------------------------------------


def fuzz(args: argparse.Namespace, folder: Path) -> None:
    print(f"fuzz: {load_averages()} before", flush=True)
    guard, token, spec = fuzz_guard(folder, load_builtin("digits", seed=0))
    checked = CheckedModel(spec)
    checked.install(guard)
    cases = fuzz_cases(args.seed, args.cases, token, spec, http=True)
    started = time.perf_counter()
    statuses: list[int] = [0] * len(cases)
    connections = 4

    def send_share(c: int) -> None:
        for i, status in zip(
            range(c, len(cases), connections), over_http(url, cases[c::connections]), strict=True
        ):
            statuses[i] = status

    with serving(create_app(guard)) as url:
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)  # not a line per unparsable request
        senders = [threading.Thread(target=send_share, args=(c,)) for c in range(connections)]
        for s in senders:
            s.start()
        for s in senders:
            s.join()
    seconds = time.perf_counter() - started
    wrong = judge(cases, statuses)
    print(f"fuzz: {load_averages()} after\n")
    by_kind: dict[str, Counter[int]] = {}
    for case, status in zip(cases, statuses, strict=True):
        by_kind.setdefault(case.kind.split(" / ")[0].split(" ")[0], Counter())[status] += 1
    print(
        f"{len(cases)} fuzzed requests (seed {args.seed}) over {connections} keep-alive connections in {seconds:.0f} s; "
        f"statuses {dict(sorted(Counter(statuses).items()))}\n"
    )
    print("| body kind | requests | statuses |\n|---|---|---|")
    for kind, counts in sorted(by_kind.items()):
        print(
            f"| {kind} | {sum(counts.values())} | {', '.join(f'{s}: {n}' for s, n in sorted(counts.items()))} |"
        )
    fives = sum(s >= 500 or s == 0 for s in statuses)
    print(
        f"\n5xx or no answer: {fives}; wrongly answered or refused: {len(wrong) - fives}; model calls: {checked.calls} "
        f"(answers 200: {statuses.count(200)}); forward passes: {checked.forwards}; batches outside the spec: "
        f"{len(checked.violations)}"
    )
    for line, n in Counter(wrong + checked.violations).most_common(8):
        print(f"    {n} x {line}")
    print()


def monitors(args: argparse.Namespace, folder: Path) -> None:
    """Microseconds a query for each detector over one natural stream (see the module docstring)."""
    from aisec.defend.robustness.prada import PradaDetector
    from aisec.defend.robustness.query_coverage import CoverageMonitor, fit_coverage
    from aisec.defend.robustness.stateful_detection import (
        StatefulConfig,
        StatefulDetector,
        calibrate_threshold,
    )

    digits = load_builtin("digits", seed=0)
    reference = digits.train.x.flatten(1).numpy().astype(np.float64)
    rng = np.random.default_rng(args.seed)
    pool = np.concatenate([reference, digits.test.x.flatten(1).numpy()])
    stream = np.clip(
        pool[rng.integers(0, len(pool), args.queries)] + rng.normal(0, 0.01, (args.queries, 64)), 0, 1
    )
    labels = rng.integers(
        0, 10, args.queries
    )  # the class answered: PRADA's cost does not depend on the model
    threshold = calibrate_threshold(reference, 50, 0.001)
    coverage_model = fit_coverage(reference, generator=np.random.default_rng(args.seed))

    def per_query(make: Any, batch: int = 1) -> float:
        """Median microseconds a query over --repeats runs, each feeding a fresh detector from `make`."""
        times = []
        for _ in range(args.repeats):
            observe = make()
            started = time.perf_counter()
            for i in range(0, args.queries, batch):
                observe(i, i + batch)
            times.append((time.perf_counter() - started) / args.queries * 1e6)
        return statistics.median(times)

    def prada(**settings: Any) -> Any:
        detector = PradaDetector(**settings)
        return lambda i, j: detector.observe_batch(stream[i:j], labels[i:j])

    def stateful() -> Any:
        detector = StatefulDetector(StatefulConfig(threshold=threshold))
        return lambda i, j: detector.observe(stream[i:j])

    def coverage() -> Any:
        monitor = CoverageMonitor(coverage_model)
        return lambda i, j: monitor.observe(stream[i:j])

    costs = {
        "PRADA, the paper's settings (anchor)": per_query(prada),
        "PRADA, the guard's settings": per_query(lambda: prada(window=1000, test_every=10, max_growing=500)),
        "stateful (k 50, buffer 1,000)": per_query(stateful),
        "coverage (50 cells)": per_query(coverage),
        "coverage, batches of 32": per_query(coverage, batch=32),
    }
    print(f"## monitors: microseconds a query, {args.queries:,} natural queries, median of {args.repeats}")
    print(f"   {load_averages()}")
    for name, us in costs.items():
        print(f"   {name:40s} {us:8.1f} us")
    paper, guard = costs["PRADA, the paper's settings (anchor)"], costs["PRADA, the guard's settings"]
    print(
        f"   PRADA: the guard's settings cost {guard / paper:.2f} of the paper's ({paper / guard:.1f}x faster)"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop requests a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="open-loop run length")
    parser.add_argument("--clients", type=int, default=4, help="open-loop client processes (a key each)")
    parser.add_argument("--wrk-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="guard workers for limits and faults")
    parser.add_argument("--processes", type=int, default=3, help="client processes per key for limits")
    parser.add_argument("--limit-seconds", type=float, default=12.0)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=10_000, help="natural queries for the monitors part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.port)
        return
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in (args.parts or PARTS)]
    with tempfile.TemporaryDirectory(prefix="aisec-bench-guard-") as tmp:
        for part in parts:
            folder = Path(tmp) / part
            folder.mkdir()
            parts_run = {
                "overhead": overhead,
                "limits": limits,
                "faults": faults,
                "monitors": monitors,
                "fuzz": fuzz,
            }
            parts_run[part](args, folder)


if __name__ == "__main__":
    main()
