"""Targets over fitted scikit-learn classifiers: converted exactly to torch when possible, else black box.

Converted exactly (white box, logits with gradients):
    linear classifiers (LogisticRegression(CV), LinearSVC, SGDClassifier, RidgeClassifier(CV), Perceptron,
    LinearDiscriminantAnalysis): logits are the decision function x @ coef_.T + intercept_;
    MLPClassifier with any of sklearn's activations: logits are the output layer before softmax/sigmoid;
    either one in a Pipeline after StandardScaler, MinMaxScaler (clip=False) or MaxAbsScaler steps,
    which are folded into the first layer.
Each conversion is checked against the estimator on random inputs; one that disagrees is not used.
For a binary classifier, whose decision function is one number z, the logits are [0, z]: their argmax is
sklearn's prediction and their softmax is predict_proba for LogisticRegression and MLPClassifier (and
multinomial LogisticRegression for any number of classes).

Anything else is a black box with SCORES (predict_proba, else decision_function) or only LABELS (predict).

Targets work on class indices 0..k-1: index i is `target.classes[i]`, sklearn's `classes_[i]`, which may be
any sorted labels (strings, non-contiguous integers).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import (
    LogisticRegression,
    LogisticRegressionCV,
    Perceptron,
    RidgeClassifier,
    RidgeClassifierCV,
    SGDClassifier,
)
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted
from torch import nn

from aisec.core.errors import DataError, ModelLoadError
from aisec.targets.base import InputSpec
from aisec.targets.callable_target import CallableTarget, check_labels
from aisec.targets.torch_target import TorchTarget

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}

# Classifiers whose decision function is x @ coef_.T + intercept_ and whose prediction is its argmax (its
# sign when binary). Exact types only: a subclass may change either.
LINEAR_CLASSIFIERS = (
    LogisticRegression,
    LogisticRegressionCV,
    LinearSVC,
    SGDClassifier,
    RidgeClassifier,
    RidgeClassifierCV,
    Perceptron,
    LinearDiscriminantAnalysis,
)

Layers = list[tuple[np.ndarray, np.ndarray]]  # (weight (out, in), bias (out,)) per dense layer, float64


def sklearn_target(
    estimator: Any, spec: InputSpec | None = None, *, dtype: torch.dtype = torch.float32
) -> SklearnTorchTarget | SklearnTarget:
    """A target over a fitted sklearn classifier (or any object with `predict`), white box when exact.

    Without `spec`, the sample shape is (n_features_in_,), the number of classes len(classes_) and the
    input bounds [0, 1]: pass a spec for other bounds. A spec may give the samples another shape with the
    same number of features (digits as (1, 8, 8)); samples are flattened for the estimator. `dtype` is the
    precision of a converted module.
    """
    name = type(estimator).__name__
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(f"{name} has no predict method; it is not a classifier")
    if isinstance(estimator, BaseEstimator):
        try:
            check_is_fitted(estimator)
        except NotFittedError as e:
            raise ModelLoadError(f"{name} is not fitted; fit it before assessing it") from e
    classes = getattr(estimator, "classes_", None)
    spec = _checked_spec(estimator, spec, classes)
    classes = np.arange(spec.num_classes) if classes is None else np.asarray(classes)
    module = _to_module(estimator, dtype)
    if module is None:
        return SklearnTarget(estimator, spec, classes)
    return SklearnTorchTarget(module, spec, estimator, classes)


class SklearnTorchTarget(TorchTarget):
    """A sklearn classifier converted exactly to a torch module computing its logits (white box)."""

    def __init__(self, module: nn.Module, spec: InputSpec, estimator: Any, classes: np.ndarray) -> None:
        super().__init__(module, spec)
        self.estimator = estimator
        self.classes = classes

    def describe(self) -> str:
        return f"{type(self.estimator).__name__} converted to torch ({self.access.value})"


class SklearnTarget(CallableTarget):
    """A sklearn classifier that cannot be converted to torch, seen as a black box.

    Scores are predict_proba, else the decision function ([0, z] for a binary one); without either the
    target gives labels only. Labels always come from `predict`, mapped to class indices.
    """

    def __init__(self, estimator: Any, spec: InputSpec, classes: np.ndarray) -> None:
        self.estimator = estimator
        self.classes = classes
        self._index = {c: i for i, c in enumerate(classes.tolist())}
        name = type(estimator).__name__
        if hasattr(estimator, "predict_proba"):
            super().__init__(self._predict_proba, spec, returns="scores", name=f"{name}.predict_proba")
        elif hasattr(estimator, "decision_function"):
            super().__init__(
                self._decision_function,
                spec,
                returns="scores",
                score_kind="logits",
                name=f"{name}.decision_function",
            )
        else:
            super().__init__(self._predict, spec, returns="labels", name=f"{name}.predict")

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._predict, x, check_labels)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(_features(x))

    def _decision_function(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(self.estimator.decision_function(_features(x)))
        return np.stack([np.zeros_like(z), z], axis=1) if z.ndim == 1 else z

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class indices; DataError when predict returns anything but one known class per sample."""
        source = f"{type(self.estimator).__name__}.predict"
        predicted = np.asarray(self.estimator.predict(_features(x)))
        if predicted.shape != (len(x),):
            raise DataError(
                f"{source} returned shape {predicted.shape} for {len(x)} samples, expected ({len(x)},)"
            )
        unknown = [v for v in predicted.tolist() if v not in self._index]
        if unknown:
            raise DataError(
                f"{source} returned {unknown[0]!r}, which is not one of its classes {self.classes.tolist()}"
            )
        return np.array([self._index[v] for v in predicted.tolist()], dtype=np.int64)

    def describe(self) -> str:
        return f"{type(self.estimator).__name__} ({self.access.value})"


def _features(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def _checked_spec(estimator: Any, spec: InputSpec | None, classes: Any) -> InputSpec:
    """The caller's spec checked against what the estimator records, or one inferred from it."""
    name = type(estimator).__name__
    n_features = getattr(estimator, "n_features_in_", None)
    if spec is None:
        if n_features is None or classes is None:
            raise DataError(f"{name} records no n_features_in_ or classes_; pass an InputSpec")
        return InputSpec(shape=(int(n_features),), num_classes=len(classes))
    if n_features is not None and math.prod(spec.shape) != n_features:
        raise DataError(
            f"the spec's sample shape {spec.shape} does not have the {n_features} features of {name}"
        )
    if classes is not None and spec.num_classes != len(classes):
        raise DataError(f"the spec says {spec.num_classes} classes, but {name} has {len(classes)}")
    return spec


def _to_module(estimator: Any, dtype: torch.dtype) -> nn.Sequential | None:
    """The estimator as a torch module computing its logits, or None when no exact conversion is known.

    The module is built in float64 and checked against the estimator on random inputs before it is cast
    to `dtype`: a conversion that does not agree (say, after a change in scikit-learn) is not used.
    """
    steps = estimator.steps if isinstance(estimator, Pipeline) else [("", estimator)]
    *preprocessing, (_, classifier) = steps
    affine = _fold_scalers([step for _, step in preprocessing])
    converted = _classifier_layers(classifier)
    if affine is None or converted is None:
        return None
    layers, activation, binary = converted
    scale, shift = affine
    weight, bias = layers[0]
    layers[0] = (weight * scale, weight @ np.broadcast_to(shift, weight.shape[1:]) + bias)
    modules: list[nn.Module] = []
    for i, (weight, bias) in enumerate(layers):
        if i:
            modules.append(_ACTIVATIONS[activation]())
        linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
        linear.weight = nn.Parameter(torch.tensor(weight))
        linear.bias = nn.Parameter(torch.tensor(bias))
        modules.append(linear)
    if binary:
        modules.append(_BinaryLogits())
    module = _Logits(*modules)
    difference = _difference(module, estimator, n_features=layers[0][0].shape[1])
    if difference > 1e-6:
        warnings.warn(
            f"the torch conversion of {type(estimator).__name__} differs from it by {difference:.3g}; "
            "it is assessed as a black box instead",
            stacklevel=3,
        )
        return None
    return module.to(dtype)


def _difference(module: nn.Module, estimator: Any, n_features: int) -> float:
    """Largest relative difference between the module and the estimator on random inputs.

    Logits are compared with the decision function, or their softmax with predict_proba when there is none.
    """
    x = np.random.default_rng(0).random((64, n_features))
    with torch.no_grad():
        logits = module(torch.from_numpy(x))
    if hasattr(estimator, "decision_function"):
        expected = np.asarray(estimator.decision_function(x), np.float64)
        got = logits[:, 1] if expected.ndim == 1 else logits
    else:
        expected = np.asarray(estimator.predict_proba(x), np.float64)
        got = logits.softmax(1)
    return float(np.max(np.abs(got.numpy() - expected) / (1.0 + np.abs(expected))))


def _fold_scalers(steps: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-feature (scale, shift): the scaler steps map x to x * scale + shift; None if not affine."""
    scale, shift = np.float64(1.0), np.float64(0.0)
    for step in steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        if type(step) is StandardScaler:
            a = 1.0 / step.scale_ if step.with_std else np.float64(1.0)
            b = -step.mean_ * a if step.with_mean else np.float64(0.0)
        elif type(step) is MinMaxScaler and not step.clip:
            a, b = step.scale_, step.min_
        elif type(step) is MaxAbsScaler:
            a, b = 1.0 / step.scale_, np.float64(0.0)
        else:
            return None
        scale, shift = scale * a, shift * a + b
    return np.asarray(scale, np.float64), np.asarray(shift, np.float64)


def _classifier_layers(classifier: Any) -> tuple[Layers, str, bool] | None:
    """(dense layers, hidden activation, binary) that compute the logits; None if there is no conversion."""
    if type(classifier) is MLPClassifier:
        binary = classifier.out_activation_ == "logistic" and classifier.n_outputs_ == 1
        if (
            not (binary or classifier.out_activation_ == "softmax")
            or classifier.activation not in _ACTIVATIONS
        ):
            return None  # multilabel, or an activation added after this was written
        layers = [
            (np.asarray(w, np.float64).T, np.asarray(b, np.float64))
            for w, b in zip(classifier.coefs_, classifier.intercepts_, strict=True)
        ]
        return layers, classifier.activation, binary
    if type(classifier) in LINEAR_CLASSIFIERS:
        coef = classifier.coef_
        coef = np.atleast_2d(np.asarray(coef.toarray() if sparse.issparse(coef) else coef, np.float64))
        intercept = np.broadcast_to(np.asarray(classifier.intercept_, np.float64), coef.shape[:1])
        binary = coef.shape[0] == 1 and len(classifier.classes_) == 2
        if not (binary or coef.shape[0] == len(classifier.classes_)):
            return None
        return [(coef, intercept)], "identity", binary
    return None


class _Logits(nn.Sequential):
    """Dense layers over each sample flattened to the estimator's feature vector, in the layers' precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1).to(next(self.parameters()).dtype))


class _BinaryLogits(nn.Module):
    """[0, z] from a binary classifier's decision value z: their softmax is [1 - sigmoid(z), sigmoid(z)]."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(z), z], dim=1)
