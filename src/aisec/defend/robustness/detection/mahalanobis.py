"""The Mahalanobis detector (Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks", NeurIPS 2018): fit a Gaussian per class with one shared (tied) covariance to the
penultimate features of clean training data; an input whose features lie far, in Mahalanobis distance, from every
class mean is suspicious.

This is the paper's single-layer detector without its input pre-processing: the features are the input of the
model's last nn.Linear layer, the score is min_c (f(x) - mu_c)^T Sigma^+ (f(x) - mu_c) (the squared distance, the
negative of the paper's confidence score M(x)); the paper's feature ensemble over several layers, weighted by a
logistic regression fitted on adversarial examples, and its small gradient step on the input before scoring are
left out (the threshold here is set on clean data only). The score is differentiable as it stands, so
`surrogate_score` is the score itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import evaluating
from aisec.data.dataset import LabelledData
from aisec.defend.robustness.detection.detector import (
    calibrate_threshold,
    check_batch,
    check_calibration_size,
    check_fpr,
)

_BATCH = 4096


@dataclass(frozen=True)
class MahalanobisDetector:
    """`means` (classes, d) and `precision` (d, d, the pseudo-inverse of the tied covariance) of the features
    entering `layer`, the model's last nn.Linear; inputs scoring above `threshold`, the (1 - false_positive_rate)
    quantile of `calibration_scores` (clean held-out inputs), are flagged."""

    model: nn.Module
    layer: nn.Linear
    means: torch.Tensor
    precision: torch.Tensor
    threshold: float
    false_positive_rate: float
    calibration_scores: torch.Tensor
    sample_shape: tuple[int, ...]
    name: str = "mahalanobis"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) the activations entering the last linear layer, with the autograd graph."""
        return penultimate(self.model, self.layer, self._inputs(x))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) squared Mahalanobis distance of the features to the nearest class mean, without gradients."""
        x = self._inputs(x)
        if not torch.isfinite(x).all():
            raise DataError("mahalanobis.x: contains NaN or infinite values")
        with torch.no_grad():
            return torch.cat([self.surrogate_score(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)])

    def surrogate_score(self, x: torch.Tensor) -> torch.Tensor:
        """The score with the autograd graph (it is differentiable as it stands; no stand-in is needed)."""
        f = self.features(x)
        diff = f[:, None, :] - self.means[None]
        return ((diff @ self.precision) * diff).sum(2).amin(1)

    def flags(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the score exceeds the threshold."""
        return self.score(x) > self.threshold

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise BadInputError(f"mahalanobis.x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or tuple(x.shape[1:]) != self.sample_shape:
            raise DataError(
                f"mahalanobis.x: expected samples of shape {self.sample_shape}, got {tuple(x.shape)}"
            )
        return x.to(self.means.device)


def penultimate(model: nn.Module, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """(n, d) the input of `layer` when the model (in eval mode) runs on x, captured by a forward hook with the
    autograd graph kept."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        with evaluating(model):
            model(x)
    finally:
        hook.remove()
    return captured[-1].flatten(1)


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear layer, or BadInputError naming the model when it has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInputError(
            f"mahalanobis.model: {type(model).__name__} has no nn.Linear layer, so it has no penultimate "
            "features (the input of its last linear layer) to fit class Gaussians to"
        )
    return linears[-1]


def fit_mahalanobis(
    model: nn.Module, data: LabelledData, calibration_x: torch.Tensor, *, fpr: float = 0.05
) -> MahalanobisDetector:
    """Class means and the tied covariance of the penultimate features of `data` (clean training data, every
    class of the last linear layer's outputs present), and the threshold at the false-positive rate `fpr` on the
    clean held-out inputs `calibration_x`. Raises BadInputError naming the field before any model call."""
    if not isinstance(model, nn.Module):
        raise BadInputError(f"mahalanobis.model: expected a torch nn.Module, got {type(model).__name__}")
    fpr = check_fpr(fpr, "mahalanobis.fpr")
    if not isinstance(data, LabelledData):
        raise BadInputError(f"mahalanobis.data: expected LabelledData, got {type(data).__name__}")
    layer = last_linear(model)
    calibration_x = check_batch(calibration_x, "mahalanobis.calibration_x")
    check_batch(data.x, f"mahalanobis.data ({data.name})")
    if calibration_x.shape[1:] != data.x.shape[1:]:
        raise DataError(
            f"mahalanobis.calibration_x: samples of shape {tuple(calibration_x.shape[1:])}, but the data's are "
            f"{tuple(data.x.shape[1:])}"
        )
    check_calibration_size(len(calibration_x), fpr, "mahalanobis.calibration_x")
    classes = layer.out_features
    if data.y.min() < 0 or data.y.max() >= classes:
        raise DataError(
            f"mahalanobis.data ({data.name}): labels range over [{int(data.y.min())}, {int(data.y.max())}], "
            f"outside the {classes} classes of the model's last linear layer"
        )
    missing = (torch.bincount(data.y, minlength=classes) == 0).nonzero().flatten().tolist()
    if missing:
        raise DataError(
            f"mahalanobis.data ({data.name}): no sample of class(es) {missing}; every class needs a mean"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        x = data.x.to(device)
        f = torch.cat(
            [penultimate(model, layer, x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)]
        ).double()
    y = data.y.to(device)
    means = torch.stack([f[y == c].mean(0) for c in range(classes)])
    centred = f - means[y]
    covariance = centred.T @ centred / len(f)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    uncalibrated = MahalanobisDetector(
        model,
        layer,
        means.float(),
        precision.float(),
        0.0,
        fpr,
        torch.empty(0),
        tuple(data.x.shape[1:]),
    )
    scores = uncalibrated.score(calibration_x).cpu()
    return replace(uncalibrated, threshold=calibrate_threshold(scores, fpr), calibration_scores=scores)
