"""STRIP: flag backdoor-triggered inputs at run time by how little superimposed images change the answer
(Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC).

An input is superimposed on N clean images (additively, as in the paper, clamped to the input bounds) and the
model's softmax entropy is averaged over the N blends. A clean input's class is washed out by the blends
(high entropy); a triggered input keeps answering the attacker's class whatever it is blended with (low
entropy). The threshold is the `frr` quantile of the entropies of clean held-out inputs: the detector rejects
that share of clean inputs and flags every input below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import evaluating
from aisec.data.dataset import LabelledData

_BLENDS_PER_BATCH = 8192


@dataclass(frozen=True)
class StripDetector:
    """`overlays` are the N clean images every input is superimposed on; inputs whose mean entropy (bits) lies
    below `threshold` are flagged. `threshold` is the `frr` quantile of `calibration_entropy`, the entropies
    of the clean inputs held out from the overlays."""

    model: nn.Module
    overlays: torch.Tensor
    threshold: float
    frr: float
    calibration_entropy: torch.Tensor
    lower: float = 0.0
    upper: float = 1.0

    def entropy(self, x: torch.Tensor) -> torch.Tensor:
        """Mean Shannon entropy (bits) of the model's softmax over the superimpositions of each input."""
        _check_inputs(x, tuple(self.overlays.shape[1:]), self.lower, self.upper, "STRIP inputs")
        return strip_entropy(self.model, x, self.overlays, lower=self.lower, upper=self.upper)

    def flags(self, x: torch.Tensor) -> torch.Tensor:
        """True for inputs the detector takes for triggered (entropy below the threshold)."""
        return self.entropy(x) < self.threshold


@dataclass(frozen=True)
class StripEvaluation:
    """detection_rate: share of triggered inputs flagged (1 - FAR, the false acceptance rate); frr: share of
    clean inputs flagged; auc: ROC AUC of low entropy as a score for triggered against clean."""

    detection_rate: float
    far: float
    frr: float
    auc: float
    threshold: float
    clean: int
    triggered: int


def strip_entropy(
    model: nn.Module, x: torch.Tensor, overlays: torch.Tensor, *, lower: float = 0.0, upper: float = 1.0
) -> torch.Tensor:
    """(n,) mean entropy in bits of softmax(model(clamp(x + o - lower))) over the overlays o, batched."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, overlays = x.to(device), overlays.to(device)
    per_batch = max(1, _BLENDS_PER_BATCH // len(overlays))
    out = []
    with torch.no_grad(), evaluating(model):
        for i in range(0, len(x), per_batch):
            xb = x[i : i + per_batch]
            blends = (xb[:, None] + overlays[None] - lower).clamp(lower, upper)
            p = model(blends.flatten(0, 1)).softmax(1)
            h = -(p * p.clamp_min(1e-12).log2()).sum(1)
            out.append(h.view(len(xb), len(overlays)).mean(1))
    return torch.cat(out).cpu()


def fit_strip(
    model: nn.Module,
    clean: LabelledData,
    *,
    overlays: int = 32,
    frr: float = 0.01,
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator | None = None,
) -> StripDetector:
    """Draw `overlays` clean images as the superimposition bank and set the threshold at the `frr` quantile of
    the other clean images' entropies. Raises before any model call: overlays < 1, frr outside (0, 0.5), NaN
    or out-of-bounds inputs, or fewer than ceil(1 / frr) clean images left to calibrate on."""
    if not isinstance(overlays, int) or overlays < 1:
        raise BadInputError(f"STRIP: overlays must be a positive integer, got {overlays!r}")
    if not (isinstance(frr, (int, float)) and 0 < frr < 0.5):
        raise BadInputError(f"STRIP: the false rejection rate must be in (0, 0.5), got {frr!r}")
    if not lower < upper:
        raise BadInputError(f"STRIP: input bounds must satisfy lower < upper, got [{lower}, {upper}]")
    _check_inputs(clean.x, tuple(clean.x.shape[1:]), lower, upper, clean.name)
    needed = overlays + math.ceil(1 / frr)
    if len(clean) < needed:
        raise DataError(
            f"{clean.name}: STRIP needs {overlays} overlays plus {math.ceil(1 / frr)} images to set a threshold "
            f"at a {frr:g} false rejection rate, {needed} in all; got {len(clean)}"
        )
    generator = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(len(clean), generator=generator)
    bank, held_out = clean.x[order[:overlays]], clean.x[order[overlays:]]
    entropy = strip_entropy(model, held_out, bank, lower=lower, upper=upper)
    threshold = float(torch.quantile(entropy.double(), frr))
    return StripDetector(model, bank, threshold, float(frr), entropy, float(lower), float(upper))


def evaluate_strip(detector: StripDetector, clean: torch.Tensor, triggered: torch.Tensor) -> StripEvaluation:
    """Detection rate on triggered inputs, false rejection rate on clean ones and the ROC AUC between them."""
    from sklearn.metrics import roc_auc_score

    shape = tuple(detector.overlays.shape[1:])
    _check_inputs(clean, shape, detector.lower, detector.upper, "STRIP clean inputs")
    _check_inputs(triggered, shape, detector.lower, detector.upper, "STRIP triggered inputs")
    h_clean, h_triggered = detector.entropy(clean), detector.entropy(triggered)
    detected = float((h_triggered < detector.threshold).float().mean())
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(triggered))])
    auc = float(roc_auc_score(labels.numpy(), (-torch.cat([h_clean, h_triggered])).numpy()))
    return StripEvaluation(
        detection_rate=detected,
        far=1 - detected,
        frr=float((h_clean < detector.threshold).float().mean()),
        auc=auc,
        threshold=detector.threshold,
        clean=len(clean),
        triggered=len(triggered),
    )


def _check_inputs(x: torch.Tensor, shape: tuple[int, ...], lower: float, upper: float, name: str) -> None:
    if x.dim() < 2 or tuple(x.shape[1:]) != shape or len(x) == 0:
        raise DataError(
            f"{name}: expected a non-empty batch of samples of shape {shape}, got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise DataError(f"{name}: the inputs contain NaN or infinite values")
    if x.min() < lower or x.max() > upper:
        raise DataError(
            f"{name}: inputs range over [{float(x.min()):g}, {float(x.max()):g}], outside [{lower:g}, {upper:g}]"
        )
