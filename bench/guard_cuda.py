"""The guard and the query attacks on a GPU: the one training loop on CUDA, the guard in front of a CUDA model
(screening, monitors, hardening) beside the same guard on the CPU, the guard attacked over HTTP, and the
extraction sources and query-based evasion attacks against a CUDA target. Prints one JSON line per check and
writes them to $OUT/cuda_guard.json (or ./cuda_guard.json).

Run on a machine with a GPU: `PYTHONPATH=src python bench/guard_cuda.py` (docs/benchmarks.md, "Guard on a GPU").
"""

import asyncio
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn
import yaml

from aisec.attacks.evasion.hopskipjump import HSJConfig, hopskipjump
from aisec.attacks.evasion.square import SquareConfig, square
from aisec.attacks.extraction.learning import LearningConfig, extract_surrogate
from aisec.attacks.extraction.metrics import agreement
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.demo.models import digits_cnn
from aisec.guard.app import create_app
from aisec.guard.config import load_config
from aisec.guard.keys import add_key
from aisec.guard.service import build_guard
from aisec.targets import InputSpec, TorchTarget
from aisec.targets.http_target import HttpTarget, ServiceRefused
from aisec.targets.views import scores_only

results = []


def report(name, **figures):
    line = {"check": name, **figures}
    print(json.dumps(line), flush=True)
    results.append(line)


report("device", torch=torch.__version__, cuda=torch.cuda.is_available(), gpu=torch.cuda.get_device_name(0))
digits = load_builtin("digits", seed=0)
t0 = time.perf_counter()
model = fit(build_model(digits_cnn, 0), digits.train, seed=0).to("cuda")
report(
    "training on cuda",
    seconds=round(time.perf_counter() - t0, 2),
    device=str(next(model.parameters()).device),
    accuracy=float((model(digits.test.x.cuda()).argmax(1).cpu() == digits.test.y).float().mean()),
)
spec = InputSpec((1, 8, 8), 10)
folder = Path(tempfile.mkdtemp())
torch.save(model.state_dict(), folder / "model.pt")
np.savez(folder / "natural.npz", x=digits.train.x.numpy(), y=digits.train.y.numpy())
np.savez(folder / "held_out.npz", x=digits.test.x[:270].numpy(), y=digits.test.y[:270].numpy())
token = add_key(folder / "keys.json", "alice")
latency = {}
for device in ("cuda", "cpu"):
    config = {
        "model": {
            "kind": "torch",
            "path": "model.pt",
            "factory": "aisec.demo.models:digits_cnn",
            "device": device,
            "input": {"shape": [1, 8, 8], "num_classes": 10},
        },
        "keys": "keys.json",
        "limits": {"requests_per_second": 10000, "burst": 10000},
        "output": {"top_k": 3, "decimals": 2},
        "screening": {"reference": "held_out.npz", "input_detectors": ["feature_squeezing", "mahalanobis"]},
        "monitor": {
            "reference": "natural.npz",
            "prada": {},
            "stateful": {},
            "coverage": {},
            "action": "log",
            "first_action": "log",
        },
    }
    (folder / "guard.yaml").write_text(yaml.safe_dump(config))
    guard = build_guard(load_config(folder / "guard.yaml"))
    assert str(guard.model.target.device).startswith(device)
    times, statuses = [], []
    for i in range(270, 540):
        body = json.dumps({"inputs": digits.test.x[i : i + 1].tolist()}).encode()
        t = time.perf_counter()
        reply = guard.predict(f"Bearer {token}", body)
        times.append(time.perf_counter() - t)
        statuses.append(reply.status)
    latency[device] = {
        "p50_ms": round(1e3 * float(np.median(times)), 3),
        "p99_ms": round(1e3 * float(np.quantile(times, 0.99)), 3),
        "statuses": {s: statuses.count(s) for s in set(statuses)},
    }
report(
    "guard.predict per request, one row, every step on (screening: squeezing + mahalanobis, 3 monitors)",
    **latency,
)

sock = socket.socket(
    socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
)  # TCP_NODELAY on accepted sockets
sock.bind(("127.0.0.1", 0))
config["model"]["device"] = "cuda"
config["monitor"] |= {"action": "block", "escalate": True, "first_action": "slow", "slow_down_s": 0.05}
config.pop("screening")
(folder / "guard.yaml").write_text(yaml.safe_dump(config))
guard = build_guard(load_config(folder / "guard.yaml"))
server = uvicorn.Server(uvicorn.Config(create_app(guard), log_level="warning"))
threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
while not server.started:
    time.sleep(0.05)
url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/predict"
served = HttpTarget(url, spec, headers={"Authorization": f"Bearer {token}"}, batch_size=20)
attack = LearningConfig(source="perturbation")
try:
    extract_surrogate(
        served, 2000, attack, data=digits.test.x[:50], generator=torch.Generator().manual_seed(0)
    )
    report("extraction over HTTP against the CUDA-backed guard", stopped=False)
except ServiceRefused as refused:
    report(
        "extraction over HTTP against the CUDA-backed guard",
        stopped=True,
        status=refused.status,
        answered=refused.answered,
        alarms=guard.monitors.figures("alice")["alarms"],
    )
server.should_exit = True

bare = scores_only(TorchTarget(model, spec))
for source, data in (("perturbation", digits.test.x[:50]), ("synthetic", None), ("active", digits.train.x)):
    t = time.perf_counter()
    copy = extract_surrogate(
        bare, 1000, LearningConfig(source=source), data=data, generator=torch.Generator().manual_seed(0)
    )
    report(
        f"extraction {source} on a CUDA target",
        agreement=round(agreement(copy, bare, digits.test.x), 3),
        queries=copy.queries,
        seconds=round(time.perf_counter() - t, 2),
    )
x, y = digits.test.x[:50].cuda(), digits.test.y[:50].cuda()
target = TorchTarget(model, spec)
for name, run in (
    (
        "square",
        lambda: square(
            scores_only(target),
            x,
            y,
            SquareConfig(eps=0.1, queries=500),
            generator=torch.Generator("cuda").manual_seed(0),
        ),
    ),
    (
        "hopskipjump",
        lambda: hopskipjump(
            TorchTarget(model, spec),
            x,
            y,
            HSJConfig(max_queries=500),
            generator=torch.Generator("cuda").manual_seed(0),
        ),
    ),
):
    t = time.perf_counter()
    try:
        result = run()
        report(
            f"{name} on a CUDA target",
            success_rate=float(result.success.float().mean()),
            device=str(result.x_adv.device),
            seconds=round(time.perf_counter() - t, 2),
        )
    except Exception as e:  # noqa: BLE001 - the check reports whatever breaks
        report(f"{name} on a CUDA target", error=f"{type(e).__name__}: {e}")
Path(os.environ.get("OUT", "."), "cuda_guard.json").write_text(json.dumps(results, indent=1))
