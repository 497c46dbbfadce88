"""A target from the model a Python user holds, and the input spec such a model and its data imply.

target_for(model, spec)     torch module -> TorchTarget (white box); fitted scikit-learn classifier ->
                            sklearn_target; path to an .onnx file -> OnnxTarget; any other callable
                            returning class scores -> CallableTarget; a Target is used as it is
infer_spec(model, x, y)     sample shape from x, classes from the model's output, bounds from the range
                            of x; with a sentence that says so, for the report
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import evaluating
from aisec.targets.base import InputSpec, Target

MODEL_KINDS = "a torch module, a fitted scikit-learn classifier, the path of an .onnx file or a callable"


def model_kind(model: Any) -> str:
    """ "torch", "sklearn", "onnx", "callable" or "target"; BadInputError for anything else."""
    if isinstance(model, Target):
        return "target"
    if isinstance(model, torch.nn.Module):
        return "torch"
    if isinstance(model, (str, os.PathLike)):
        if Path(model).suffix.lower() != ".onnx":
            raise BadInputError(f"{model}: a model given by path must be an .onnx file; load others first")
        return "onnx"
    if hasattr(model, "predict") and hasattr(model, "fit"):
        return "sklearn"
    if callable(model):
        return "callable"
    raise BadInputError(f"the model must be {MODEL_KINDS}; got {type(model).__name__}")


def target_for(model: Any, spec: InputSpec, *, device: str | None = None) -> Target:
    """The target over `model` (see the module docstring); a callable must return class scores (n, classes)
    for a float32 numpy batch."""
    kind = model_kind(model)
    if kind == "target":
        if tuple(model.spec.shape) != tuple(spec.shape) or model.spec.num_classes != spec.num_classes:
            raise DataError(f"the target's spec {model.spec} does not fit the data's {spec}")
        return model
    if kind == "torch":
        from aisec.targets.torch_target import TorchTarget

        return TorchTarget(model, spec, device=device)
    if kind == "onnx":
        from aisec.targets.onnx_target import OnnxTarget

        return OnnxTarget(model, spec)
    if kind == "sklearn":
        from aisec.targets.sklearn_models import sklearn_target

        return sklearn_target(model, spec)
    from aisec.targets.callable_target import CallableTarget

    return CallableTarget(model, spec)


def infer_spec(model: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[InputSpec, str]:
    """The input spec of `model` on data `x`, `y`, and a sentence saying how each part was inferred: the sample
    shape from x, the number of classes from the model's output on two samples (a scikit-learn classifier's
    `classes_`; an ONNX model's from the labels, which its declared output is then checked against), the
    input bounds from the smallest and largest value of x (pass `target.input` for per-feature bounds)."""
    kind = model_kind(model)
    if kind == "target":
        return model.spec, "input spec from the target passed"
    if len(x) == 0:
        raise DataError("no samples: x is empty")
    if not torch.isfinite(x).all():
        raise DataError("x contains NaN or infinite values")
    classes, source = _classes(model, kind, x, y)
    lower, upper = float(x.min()), float(x.max())
    if not lower < upper:
        raise DataError(
            f"every value of x is {lower:g}: the input bounds cannot be inferred; give target.input"
        )
    spec = InputSpec(shape=tuple(x.shape[1:]), num_classes=classes, lower=lower, upper=upper)
    said = (
        f"input spec inferred: sample shape {spec.shape} from x, {classes} classes from {source}, "
        f"bounds [{lower:g}, {upper:g}] from the range of x"
    )
    return spec, said


def _classes(model: Any, kind: str, x: torch.Tensor, y: torch.Tensor) -> tuple[int, str]:
    if kind == "sklearn":
        classes = getattr(model, "classes_", None)
        if classes is None:
            raise BadInputError(f"{type(model).__name__} has no classes_: fit it before assessing it")
        return len(classes), "the classifier's classes_"
    if kind == "onnx":
        return int(y.max()) + 1, "the labels (checked against the model's declared output)"
    sample = x[:2]
    try:
        if kind == "torch":
            first = next(model.parameters(), None)
            with evaluating(model), torch.no_grad():
                out = model(sample.to(first.device if first is not None else "cpu"))
        else:
            out = model(sample.detach().cpu().numpy().astype(np.float32))
    except Exception as e:  # the user's model failed on their own data: say so, with what it raised
        raise DataError(f"the model failed on two samples of x, shape {tuple(sample.shape)}: {e}") from None
    width = tuple(np.shape(out.detach().cpu() if isinstance(out, torch.Tensor) else out))
    if len(width) != 2 or width[0] != len(sample) or width[1] < 2:
        raise DataError(
            f"the model returned shape {width} for 2 samples; it must return class scores (2, classes)"
        )
    return int(width[1]), "the model's output"
