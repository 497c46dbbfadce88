"""aisec: attack your own AI system the way an adversary would, apply the controls, and prove both.

Importing aisec is cheap: torch, scikit-learn and onnxruntime load only when a command needs them.
"""

from __future__ import annotations

from typing import Any

from aisec.core.version import __version__

__all__ = ["__version__", "assess", "load_model"]


def __getattr__(name: str) -> Any:
    """`aisec.assess` (docs/python.md) and `aisec.load_model` (docs/supply-chain.md), imported on first use so
    that `import aisec` stays cheap."""
    if name == "assess":
        from aisec.api import assess

        return assess
    if name == "load_model":
        from aisec.defend.supply_chain.loading import load_model

        return load_model
    raise AttributeError(f"module 'aisec' has no attribute {name!r}")
