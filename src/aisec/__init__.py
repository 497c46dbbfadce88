"""aisec: attack your own AI system the way an adversary would, apply the controls, and prove both.

Importing aisec is cheap: torch, scikit-learn and onnxruntime load only when a command needs them.
"""

from __future__ import annotations

from typing import Any

from aisec.core.version import __version__

__all__ = ["__version__", "assess", "inspect", "inspect_file", "load_model"]


def __getattr__(name: str) -> Any:
    """`aisec.assess`, `aisec.inspect` and `aisec.inspect_file` (docs/python.md) and `aisec.load_model`
    (docs/supply-chain.md), imported on first use so that `import aisec` stays cheap."""
    if name in ("assess", "inspect", "inspect_file"):
        from aisec import api

        return getattr(api, name)
    if name == "load_model":
        from aisec.defend.supply_chain.loading import load_model

        return load_model
    raise AttributeError(f"module 'aisec' has no attribute {name!r}")
