"""Put a guard in front of a model and steal from it over HTTP, as an attacker would (docs/guard.md).

Run: .venv/bin/python examples/guard_and_attack.py

Trains the digits CNN, serves it behind `aisec guard` on a free loopback port (a key per client, limits, output
hardening, monitors, an audit log), then runs a perturbation-based model extraction (Papernot et al. 2017)
through aisec's HTTP target with one client's key. The monitors block the key; the same attack against the bare
model shows what the copy would have been worth without the guard.
"""

import asyncio
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn
import yaml

from aisec.attacks.extraction.learning import LearningConfig, extract_surrogate
from aisec.attacks.extraction.metrics import agreement
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.data.builtin import load_builtin
from aisec.defend.auditability.audit_log.keys import generate_ed25519_key_pair
from aisec.demo.models import digits_cnn
from aisec.guard.app import create_app
from aisec.guard.config import load_config
from aisec.guard.keys import add_key
from aisec.guard.service import build_guard
from aisec.targets import InputSpec, TorchTarget
from aisec.targets.http_target import HttpTarget, ServiceRefused
from aisec.targets.views import scores_only

torch.set_num_threads(1)
digits = load_builtin("digits", seed=0)
model = fit(build_model(digits_cnn, 0), digits.train, seed=0)
spec = InputSpec((1, 8, 8), 10)
folder = Path(tempfile.mkdtemp(prefix="aisec-guard-"))
torch.save(model.state_dict(), folder / "model.pt")
np.savez(folder / "natural.npz", x=digits.train.x.numpy())
key = add_key(folder / "keys.json", "mallory")
generate_ed25519_key_pair(folder / "audit.key", folder / "audit.pub")
config = {
    "model": {
        "kind": "torch",
        "path": "model.pt",
        "factory": "aisec.demo.models:digits_cnn",
        "input": {"shape": [1, 8, 8], "num_classes": 10},
    },
    "keys": "keys.json",
    "limits": {"requests_per_second": 100, "burst": 100, "rows_per_day": 100_000},
    "output": {"top_k": 3, "decimals": 2},
    "monitor": {"reference": "natural.npz", "prada": {}, "stateful": {}, "coverage": {}, "action": "block"},
    "audit_log": "audit.db",
    "audit_key": "audit.key",
}
(folder / "guard.yaml").write_text(yaml.safe_dump(config))
guard = build_guard(load_config(folder / "guard.yaml"))

# Serve it on a free loopback port, in a thread of this process (`aisec guard serve guard.yaml` does the same).
sock = socket.socket(
    socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
)  # TCP_NODELAY on accepted sockets
sock.bind(("127.0.0.1", 0))
server = uvicorn.Server(uvicorn.Config(create_app(guard), log_level="warning"))
threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
while not server.started:
    time.sleep(0.05)
url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/predict"

seeds = digits.test.x[:50]  # the attacker's few natural images
attack = LearningConfig(source="perturbation")
served = HttpTarget(url, spec, headers={"Authorization": f"Bearer {key}"}, batch_size=20)
answered = 2000
try:
    extract_surrogate(served, answered, attack, data=seeds, generator=torch.Generator().manual_seed(0))
    print("the attack ran to the end: the guard did not stop it")
except ServiceRefused as refused:
    answered = refused.answered
    print(
        f"the guard stopped the attacker (HTTP {refused.status}: {refused.reason}) after {answered} queries"
    )
assert guard.monitors is not None
print("the monitors' alarms (detector, at query):", guard.monitors.figures("mallory")["alarms"])

bare = scores_only(TorchTarget(model, spec))
copy = extract_surrogate(bare, answered, attack, data=seeds, generator=torch.Generator().manual_seed(0))
full = extract_surrogate(bare, 2000, attack, data=seeds, generator=torch.Generator().manual_seed(0))
print(
    f"a copy from the bare model at {answered} queries agrees on {agreement(copy, bare, digits.test.x):.1%}"
)
print(f"... and at 2,000 queries on {agreement(full, bare, digits.test.x):.1%}")
server.should_exit = True
print(
    f"every request is in the audit log: aisec audit verify {folder / 'audit.db'} --key {folder / 'audit.pub'}"
)
