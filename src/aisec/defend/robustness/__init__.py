"""The robustness principle ("make your model robust against attacks"): controls at training and at serving time.

budget                the perturbation budget checked against the input bounds
adversarial_training  PGD-AT, TRADES and fast adversarial training, with a catastrophic-overfitting guard
perturbation          the training-time inner maximisation they share
certification/        what a model provably withstands: bound propagation (IBP, CROWN), randomised smoothing
detection/            detectors of manipulated input (feature squeezing, Mahalanobis)
input_transforms      bit-depth reduction and median filtering in front of a model (and their BPDA variant)
output_hardening      top-k, rounded and label-only answers of a served model
prada                 a query monitor that catches extraction in one client's query stream (PRADA)
stateful_detection    a query monitor that catches query-based evasion attacks (Chen, Carlini & Wagner)
query_coverage        a query monitor of off-manifold queries and coverage of the data (after Kesarwani et al.)
strip                 a run-time input filter that catches triggered inputs (STRIP)
dp_training           private training (DP-SGD) that bounds what the model reveals about any one record

`certify` and `smoothing_certify` are importable from here; they are loaded on first use, so importing this
package imports no torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "certify": "aisec.defend.robustness.certification.bounds",
    "smoothing_certify": "aisec.defend.robustness.certification.smoothing",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
