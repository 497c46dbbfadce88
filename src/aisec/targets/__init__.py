"""Targets: the models under test, as an attacker sees them.

    TorchTarget      a torch module: white box (logits and input gradients)
    sklearn_target   a fitted scikit-learn classifier: converted exactly to torch (white box) where
                     possible, else SklearnTarget, a black box with scores or labels
    OnnxTarget       an ONNX model file run by onnxruntime: black box with scores
    CallableTarget   any Python function returning scores or labels: black box
    HttpTarget       a model served over HTTP (JSON in, scores or labels out), retrying what a service
                     sheds; ServiceRefused when it refuses for good (needs httpx, the guard extra)
    label_only, scores_only   restricted views of a target, for weaker attackers

All share `Target` (base.py): an `Access` level, an `InputSpec` and a query counter. Names are imported
on first use, so `import aisec.targets` loads neither torch, scikit-learn, onnxruntime nor httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time, __getattr__ imports each name on first use
    from aisec.targets.base import Access, InputSpec, QueryCounter, Target, WhiteBoxTarget
    from aisec.targets.callable_target import CallableTarget
    from aisec.targets.http_target import HttpTarget, ServiceRefused
    from aisec.targets.onnx_target import OnnxTarget
    from aisec.targets.sklearn_models import SklearnTarget, SklearnTorchTarget, sklearn_target
    from aisec.targets.torch_target import TorchTarget
    from aisec.targets.views import RestrictedView, label_only, scores_only

_EXPORTS = {
    "Access": "aisec.targets.base",
    "InputSpec": "aisec.targets.base",
    "QueryCounter": "aisec.targets.base",
    "Target": "aisec.targets.base",
    "WhiteBoxTarget": "aisec.targets.base",
    "TorchTarget": "aisec.targets.torch_target",
    "sklearn_target": "aisec.targets.sklearn_models",
    "SklearnTarget": "aisec.targets.sklearn_models",
    "SklearnTorchTarget": "aisec.targets.sklearn_models",
    "OnnxTarget": "aisec.targets.onnx_target",
    "CallableTarget": "aisec.targets.callable_target",
    "HttpTarget": "aisec.targets.http_target",
    "ServiceRefused": "aisec.targets.http_target",
    "RestrictedView": "aisec.targets.views",
    "label_only": "aisec.targets.views",
    "scores_only": "aisec.targets.views",
}

__all__ = [
    "Access",
    "CallableTarget",
    "HttpTarget",
    "InputSpec",
    "OnnxTarget",
    "QueryCounter",
    "RestrictedView",
    "ServiceRefused",
    "SklearnTarget",
    "SklearnTorchTarget",
    "Target",
    "TorchTarget",
    "WhiteBoxTarget",
    "label_only",
    "scores_only",
    "sklearn_target",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
