"""A guard in front of the session's digits CNN, written to a temporary folder: the model's state dict, natural
reference data, a key file and a configuration; and a uvicorn server on a free loopback port in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
import yaml
from torch import nn

from aisec.data.builtin import Split
from aisec.defend.auditability.audit_log.keys import generate_ed25519_key_pair
from aisec.guard.keys import add_key


def write_guard(
    folder: Path, model: nn.Module, digits: Split, *, audit: bool = True, **sections: Any
) -> tuple[Path, dict[str, str]]:
    """The configuration's path and a key per tier ("default", and "basic" for labels only)."""
    torch.save(model.state_dict(), folder / "model.pt")
    np.savez(folder / "natural.npz", x=digits.train.x.numpy(), y=digits.train.y.numpy())
    tokens = {
        "default": add_key(folder / "keys.json", "alice"),
        "basic": add_key(folder / "keys.json", "bob", tier="basic"),
    }
    config: dict[str, Any] = {
        "model": {
            "kind": "torch",
            "path": "model.pt",
            "factory": "aisec.demo.models:digits_cnn",
            "input": {"shape": [1, 8, 8], "num_classes": 10, "lower": 0, "upper": 1},
        },
        "keys": "keys.json",
        "limits": {"requests_per_second": 1000, "burst": 1000, "rows_per_day": 1_000_000},
        "output": {"top_k": 3, "decimals": 2},
        "tiers": {"basic": {"labels_only": True}},
    }
    if audit:
        generate_ed25519_key_pair(folder / "audit.key", folder / "audit.pub")
        config |= {"audit_log": "audit.db", "audit_key": "audit.key"}
    config |= sections
    path = folder / "guard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tokens


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 and a free port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the guard did not start within 20 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
