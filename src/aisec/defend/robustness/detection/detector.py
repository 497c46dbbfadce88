"""What every detector of manipulated input shares: the protocol, the threshold set on clean data at a stated
false-positive rate, and the rates a detector achieves against an attack's adversarial examples."""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch

from aisec.core.errors import BadInputError, DataError


class Detector(Protocol):
    """A detector scores each input (higher = more suspicious) and flags those scoring above `threshold`, which
    was set at `false_positive_rate` on clean calibration data. `surrogate_score` is the differentiable stand-in
    an adaptive attacker descends (BPDA through non-differentiable parts); it equals `score` in value."""

    @property
    def name(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    @property
    def false_positive_rate(self) -> float: ...

    def score(self, x: torch.Tensor) -> torch.Tensor: ...

    def surrogate_score(self, x: torch.Tensor) -> torch.Tensor: ...

    def flags(self, x: torch.Tensor) -> torch.Tensor: ...


class DetectionRates(NamedTuple):
    """clean_fpr: share of clean inputs flagged; detection_rate: share of the fooling adversarial examples
    flagged (NaN when none fooled the model); fooled_undetected_share: share of all attacked points whose
    adversarial example fools the model and is not flagged (the attack's success against model + detector)."""

    clean_fpr: float
    detection_rate: float
    fooled_undetected_share: float


def check_fpr(fpr: object, field: str) -> float:
    """`fpr` as a float in (0, 1), or BadInputError naming `field`."""
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1:
        raise BadInputError(f"{field}: {fpr!r} is not a false-positive rate in (0, 1)")
    return float(fpr)


def calibrate_threshold(clean_scores: torch.Tensor, fpr: float) -> float:
    """The (1 - fpr) quantile of the clean scores, taken as the order statistic s_(k), k = ceil((1 - fpr) n), so
    that exactly at most floor(fpr * n) of these n clean inputs score above it and are flagged. Needs at least
    ceil(1 / fpr) finite scores (fewer could not flag a single clean input at that rate)."""
    fpr = check_fpr(fpr, "calibrate_threshold.fpr")
    scores = check_batch(clean_scores, "calibrate_threshold.clean_scores", dims=1)
    check_calibration_size(len(scores), fpr, "calibrate_threshold.clean_scores")
    k = math.ceil((1 - fpr) * len(scores) - 1e-9)
    return float(scores.detach().double().sort().values[k - 1])


def check_calibration_size(n: int, fpr: float, field: str) -> None:
    """DataError naming `field` unless n >= ceil(1 / fpr): fewer clean inputs could not flag a single one at
    that rate."""
    needed = math.ceil(1 / fpr - 1e-9)
    if n < needed:
        raise DataError(
            f"{field}: {n} clean inputs cannot set a threshold at a {fpr:g} false-positive rate; "
            f"at least {needed} are needed"
        )


def detection_rates(
    detector: Detector, x_clean: torch.Tensor, x_adv: torch.Tensor, fooled: torch.Tensor
) -> DetectionRates:
    """The detector's rates against an attack: `x_clean` are held-out clean inputs (not those the threshold was
    set on), `x_adv` the attack's output on the points it attacked (clean-correct points, as a cascade returns
    them) and `fooled` (bool, one per row of `x_adv`) where that output fools the model."""
    fooled = torch.as_tensor(fooled, dtype=torch.bool)
    if fooled.shape != (len(x_adv),):
        raise DataError(f"detection_rates.fooled: shape {tuple(fooled.shape)}, expected ({len(x_adv)},)")
    flagged_clean = detector.flags(x_clean)
    flagged = detector.flags(x_adv).to(fooled.device)
    n_fooled = int(fooled.sum())
    return DetectionRates(
        clean_fpr=float(flagged_clean.float().mean()),
        detection_rate=float(flagged[fooled].float().mean()) if n_fooled else math.nan,
        fooled_undetected_share=float((fooled & ~flagged).float().mean()),
    )


def check_batch(x: object, field: str, *, dims: int | None = None) -> torch.Tensor:
    """`x` as a non-empty tensor of finite values (with `dims` dimensions when given), or BadInputError
    (DataError) naming `field`."""
    if not isinstance(x, torch.Tensor):
        raise BadInputError(f"{field}: expected a torch.Tensor, got {type(x).__name__}")
    if (dims is not None and x.dim() != dims) or x.dim() == 0 or len(x) == 0:
        wanted = f"{dims}-dimensional" if dims is not None else "batched"
        raise DataError(f"{field}: expected a non-empty {wanted} tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError(f"{field}: contains NaN or infinite values")
    return x
