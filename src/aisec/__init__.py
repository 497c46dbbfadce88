"""aisec: attack your own AI system the way an adversary would, apply the controls, and prove both.

Importing aisec is cheap: torch, scikit-learn and onnxruntime load only when a command needs them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aisec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy export
    """`aisec.load_model` (docs/supply-chain.md), imported on first use so `import aisec` stays cheap."""
    if name == "load_model":
        from aisec.defend.supply_chain.loading import load_model

        return load_model
    raise AttributeError(f"module 'aisec' has no attribute {name!r}")
