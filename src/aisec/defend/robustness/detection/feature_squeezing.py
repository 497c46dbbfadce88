"""Feature squeezing (Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", NDSS 2018): an input is suspicious when squeezing it (fewer bits per pixel, a median filter) moves the
model's softmax a lot; clean inputs barely notice the squeeze, adversarial perturbations tuned to the model often
do. The score is the largest L1 distance between the softmax on x and on a squeezed x, the threshold is set on
clean inputs at a stated false-positive rate.

The bit-depth squeezer has a zero gradient almost everywhere; `surrogate_score` replaces it by the identity in
the backward pass only (BPDA, Athalye, Carlini & Wagner, ICML 2018), so an adaptive attacker can descend the
score (He et al., "Adversarial Example Defenses: Ensembles of Weak Defenses are not Strong", WOOT 2017, broke
feature squeezing so). The median filter is piecewise linear and keeps its exact gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import evaluating
from aisec.defend.robustness.detection.detector import (
    calibrate_threshold,
    check_batch,
    check_calibration_size,
    check_fpr,
)

_BATCH = 4096
_MAX_BITS = 16


@dataclass(frozen=True)
class FeatureSqueezingDetector:
    """Squeezers: `bit_depth` bits per value (0: off) and a `median` x `median` median filter (0: off), on inputs
    in [lower, upper]. Inputs whose score exceeds `threshold`, the (1 - false_positive_rate) quantile of
    `calibration_scores` (the clean inputs' scores), are flagged."""

    model: nn.Module
    bit_depth: int
    median: int
    threshold: float
    false_positive_rate: float
    calibration_scores: torch.Tensor
    sample_shape: tuple[int, ...]
    lower: float = 0.0
    upper: float = 1.0
    name: str = "feature_squeezing"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) max over the squeezers of ||softmax(f(x)) - softmax(f(squeeze(x)))||_1, without gradients."""
        x = self._inputs(x)
        _check_bounds(x, self.lower, self.upper, "feature_squeezing.x")
        with torch.no_grad():
            return torch.cat(
                [self._score(x[i : i + _BATCH], straight_through=False) for i in range(0, len(x), _BATCH)]
            )

    def surrogate_score(self, x: torch.Tensor) -> torch.Tensor:
        """The score with the autograd graph, the bit-depth squeezer passed straight through in the backward pass
        (BPDA): equal to `score` in value, differentiable with respect to x."""
        return self._score(self._inputs(x), straight_through=True)

    def flags(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the score exceeds the threshold."""
        return self.score(x) > self.threshold

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise BadInputError(f"feature_squeezing.x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or tuple(x.shape[1:]) != self.sample_shape:
            raise DataError(
                f"feature_squeezing.x: expected samples of shape {self.sample_shape}, got {tuple(x.shape)}"
            )
        return x.to(_device(self.model))

    def _squeezed(self, x: torch.Tensor, *, straight_through: bool) -> list[torch.Tensor]:
        out = []
        if self.bit_depth:
            if straight_through:
                # Value: exactly the squeezed input (x - x.detach() is 0); gradient: the identity.
                out.append(
                    reduce_bit_depth(x.detach(), self.bit_depth, self.lower, self.upper) + (x - x.detach())
                )
            else:
                out.append(reduce_bit_depth(x, self.bit_depth, self.lower, self.upper))
        if self.median:
            out.append(median_filter(x, self.median))
        return out

    def _score(self, x: torch.Tensor, *, straight_through: bool) -> torch.Tensor:
        squeezed = self._squeezed(x, straight_through=straight_through)
        with evaluating(self.model):
            p = self.model(torch.cat([x, *squeezed])).softmax(1)
        p = p.view(1 + len(squeezed), len(x), -1)
        return (p[1:] - p[:1]).abs().sum(2).amax(0)


def reduce_bit_depth(x: torch.Tensor, bits: int, lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
    """Round each value of x in [lower, upper] to the nearest of 2**bits evenly spaced levels (Xu et al.)."""
    levels = 2**bits - 1
    unit = (x - lower) / (upper - lower)
    return torch.round(unit * levels) / levels * (upper - lower) + lower


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel size x size median filter of images (n, c, h, w), placed as scipy.ndimage.median_filter
    places it (the window spans size // 2 pixels before a pixel and the rest after; of an even window's two
    middle values, the upper), edge pixels repeated (as scipy's 'reflect' mode, which Xu et al.'s code uses, does
    for windows up to 3). Differentiable: the gradient reaches the pixel each median selects."""
    before = size // 2
    after = size - 1 - before
    padded = F.pad(x, (before, after, before, after), mode="replicate")
    patches = padded.unfold(2, size, 1).unfold(3, size, 1).flatten(-2)
    return patches.kthvalue(size * size // 2 + 1, dim=-1).values


def fit_feature_squeezing(
    model: nn.Module,
    clean_x: torch.Tensor,
    *,
    bit_depth: int = 3,
    median: int = 0,
    fpr: float = 0.05,
    lower: float = 0.0,
    upper: float = 1.0,
) -> FeatureSqueezingDetector:
    """Feature squeezing with its threshold set on the clean inputs `clean_x` at the false-positive rate `fpr`
    (Xu et al. chose theirs at 5 %). Either squeezer is turned off by 0, not both. Raises BadInputError naming
    the field before any model call.

    bit_depth: Xu et al. squeeze MNIST to 1 bit, CIFAR-10 to 5 and ImageNet to 4. The 8x8 digits carry 17 grey
    levels (pixel counts of 4x4 blocks of a 32x32 bitmap); on the digits CNN (seeds 0-2) 1 bit costs 7 points of
    clean accuracy, 2 bits up to 2, 3 bits (8 levels) at most 0.4, and 3 bits detected the most APGD examples at
    5 % false positives (eps 0.1 and 0.2; 2 bits more at 0.1 but far fewer at 0.2, 4 bits fewer at 0.2).
    median: the window of the median filter, off by default. Xu et al. filter 28x28 MNIST with a 2x2 window; on
    8x8 digits that window erases strokes (the CNN answers 73-81 % of the filtered test inputs correctly), clean
    scores pile up at the maximum 2, the threshold lands there, and as the score is the max over the squeezers the
    filter hides what the bit-depth squeezer sees (joint detection 1-3 % at eps 0.2). Turn it on for images that
    survive it (check the model's accuracy on median_filter(x, size)).
    """
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"feature_squeezing.model: expected a torch nn.Module, got {type(model).__name__}"
        )
    fpr = check_fpr(fpr, "feature_squeezing.fpr")
    for field, value in (("bit_depth", bit_depth), ("median", median)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInputError(
                f"feature_squeezing.{field}: {value!r} is not a non-negative integer (0: off)"
            )
    if not bit_depth and not median:
        raise BadInputError(
            "feature_squeezing.bit_depth, median: both are 0; at least one squeezer must be on"
        )
    if bit_depth > _MAX_BITS:
        raise BadInputError(f"feature_squeezing.bit_depth: {bit_depth} exceeds {_MAX_BITS} bits")
    if not lower < upper:
        raise BadInputError(f"feature_squeezing.lower, upper: need lower < upper, got [{lower}, {upper}]")
    clean_x = check_batch(clean_x, "feature_squeezing.clean_x")
    if median and (clean_x.dim() != 4 or median == 1 or median > min(clean_x.shape[2:])):
        raise BadInputError(
            f"feature_squeezing.median: a {median}x{median} median filter needs images (n, c, h, w) at least that "
            f"large and a window of at least 2, got inputs of shape {tuple(clean_x.shape)}"
        )
    _check_bounds(clean_x, lower, upper, "feature_squeezing.clean_x")
    check_calibration_size(len(clean_x), fpr, "feature_squeezing.clean_x")
    uncalibrated = FeatureSqueezingDetector(
        model,
        bit_depth,
        median,
        0.0,
        fpr,
        torch.empty(0),
        tuple(clean_x.shape[1:]),
        float(lower),
        float(upper),
    )
    scores = uncalibrated.score(clean_x).cpu()
    return replace(uncalibrated, threshold=calibrate_threshold(scores, fpr), calibration_scores=scores)


def _check_bounds(x: torch.Tensor, lower: float, upper: float, field: str) -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{field}: contains NaN or infinite values")
    if x.min() < lower - 1e-6 or x.max() > upper + 1e-6:
        raise DataError(
            f"{field}: values range over [{float(x.min()):g}, {float(x.max()):g}], outside [{lower:g}, {upper:g}]"
        )


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
