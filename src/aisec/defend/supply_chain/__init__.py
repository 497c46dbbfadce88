"""The supply-chain principle: scan model files without executing them, load them safely, sign and verify
them, and describe them in an ML bill of materials. Nothing here imports torch.

Names are imported on first use, so `import aisec.defend.supply_chain` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ScanLimits": "limits",
    "FileScan": "result",
    "ScanFinding": "result",
    "ScanReport": "result",
    "Verdict": "result",
    "scan_bytes": "scanner",
    "scan_file": "scanner",
    "scan_paths": "scanner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
