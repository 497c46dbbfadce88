"""aisec: attack your own AI system the way an adversary would, apply the controls, and prove both.

Importing aisec is cheap: torch, scikit-learn and onnxruntime load only when a command needs them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aisec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
