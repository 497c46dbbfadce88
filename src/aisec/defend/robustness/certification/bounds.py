"""Certified L-inf robustness of a feed-forward torch model by bound propagation, and IBP training.

`certify`: for every input in the box B = {x' : |x' - x|_inf <= eps} intersected with the input range [lower,
upper], a lower bound on each margin z_y - z_j (j != y) of the logits z, by IBP (Gowal et al., 2018 / ICCV
2019) or CROWN (Zhang et al., NeurIPS 2018; propagation.py); a sample is certified when the smallest of these
bounds is positive and the model classifies it correctly, so no input in B can change its class.

`ibp_step` / `train_ibp`: IBP training (Gowal et al.), minimising kappa * CE(z(x), y) + (1 - kappa) *
CE(z_hat, y), where z_hat_j = -lower(z_y - z_j) are the worst-case logits over the eps-box that IBP proves
(the paper's elision of the last layer); eps ramps linearly from 0 and kappa from 1 to `final_kappa` over the
warm-up, as in the paper's schedule, so the network first learns the task and then to keep its bounds tight.
It runs through the one training loop, with this loss as its batch step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import BatchStep, Examples, TrainingConfig, TrainingResult, evaluating, train
from aisec.defend.robustness.budget import check_budget
from aisec.defend.robustness.certification.layers import sequential_layers
from aisec.defend.robustness.certification.propagation import (
    Method,
    feature_bound,
    input_box,
    margin_spec,
    spec_lower_bound,
)

METHODS: tuple[str, ...] = ("ibp", "crown")


@dataclass(frozen=True)
class CertificationResult:
    """Per sample: `certified` (correctly classified and provably so on the whole eps-box within the input
    range) and `margin_lower`, a lower bound of min_{j != y} (z_y - z_j) over that box; the wall time."""

    method: str
    eps: float
    certified: torch.Tensor
    margin_lower: torch.Tensor
    seconds: float

    @property
    def certified_accuracy(self) -> float:
        """The share of samples certified."""
        return float(self.certified.float().mean()) if len(self.certified) else 0.0


def check_supported(model: nn.Module) -> None:
    """Raise BadInputError naming the first layer of `model` bound propagation cannot handle (its index among
    the flattened layers and its class), e.g. "bound propagation: unsupported layer 3 (BatchNorm2d); ..."."""
    sequential_layers(model)


def certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    method: Method = "crown",
    *,
    lower: float | torch.Tensor = 0.0,
    upper: float | torch.Tensor = 1.0,
    batch_size: int = 256,
) -> CertificationResult:
    """Certify each sample of `x` (labels `y`) against every L-inf perturbation of size `eps` that stays in
    [lower, upper] (scalars or one value per feature), by IBP or CROWN (module docstring). Runs in eval mode
    without gradients on the model's device, `batch_size` samples at a time (CROWN chunks its coefficient
    tensors to about 64 MiB each, so memory stays near 1 GB whatever the batch).

    Raises BadInputError for an unsupported layer, a method, budget or batch size that cannot certify, and
    DataError for data the model cannot take, before any bound is computed."""
    started = time.perf_counter()
    layers = sequential_layers(model)
    if method not in METHODS:
        raise BadInputError(f"certification.method: {method!r} is not one of {', '.join(METHODS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"certification.batch_size: must be a positive integer, got {batch_size!r}")
    check_budget(eps, lower, upper, field="certification.eps")
    first = next(model.parameters(), None)
    device = first.device if first is not None else x.device
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    _check_data(x, y, lower, upper)
    with evaluating(model), torch.no_grad():
        classes = _classes(model, x, y)
        margins = []
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            lo, hi = input_box(xb, eps, lower, upper)
            bound = spec_lower_bound(layers, lo, hi, margin_spec(yb, classes), method)
            bound[torch.arange(len(yb), device=yb.device), yb] = (
                torch.inf
            )  # the row of the true class itself (always 0)
            margins.append(bound.amin(1))
    margin = torch.cat(margins) if margins else x.new_zeros(0)
    # the box contains x, so a positive margin bound also proves that x itself is classified correctly
    return CertificationResult(method, float(eps), margin > 0, margin, time.perf_counter() - started)


def _check_data(
    x: torch.Tensor, y: torch.Tensor, lower: float | torch.Tensor, upper: float | torch.Tensor
) -> None:
    """DataError (BadInputError for the bounds) naming the problem with `x`, `y` or the input bounds."""
    if x.dim() < 2 or len(x) != len(y) or y.dim() != 1:
        raise DataError(
            f"certification: x must be (n, ...) with labels y of shape (n,); got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex():
        raise DataError(f"certification: labels must be integer class indices, got {y.dtype}")
    if not torch.isfinite(x).all():
        raise DataError("certification: inputs contain NaN or infinite values")
    for name, value in (("lower", lower), ("upper", upper)):
        bound = torch.as_tensor(value)
        if bound.dim() > 0 and bound.numel() != x[0].numel():
            raise BadInputError(
                f"certification.{name}: {bound.numel()} values, but a sample has {x[0].numel()} features"
            )
    if len(x) and bool(((x < feature_bound(lower, x)) | (x > feature_bound(upper, x))).any()):
        raise DataError("certification: inputs lie outside the input range [lower, upper]")


def _classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The number of classes the model scores; DataError when it cannot take `x` or `y` holds a label it does
    not have."""
    try:
        out = model(x[:1])
    except RuntimeError as e:
        raise DataError(
            f"certification: the model cannot take inputs of shape {tuple(x.shape[1:])}: {e}"
        ) from None
    if out.dim() != 2:
        raise DataError(f"certification: the model must output (n, classes) logits, got {tuple(out.shape)}")
    classes = out.shape[1]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise DataError(
            f"certification: labels must lie in [0, {classes - 1}], got {int(y.min())}..{int(y.max())}"
        )
    return classes


def ibp_step(
    eps: float,
    lower: float | torch.Tensor,
    upper: float | torch.Tensor,
    *,
    total_steps: int,
    warmup_fraction: float = 0.5,
    final_kappa: float = 0.5,
) -> BatchStep:
    """Gowal et al.'s batch step for `aisec.core.training.train`: kappa * CE(clean logits) + (1 - kappa) *
    CE(IBP worst-case logits over the eps-box within [lower, upper]); over the first
    round(warmup_fraction * total_steps) calls eps ramps linearly from 0 to `eps` and kappa from 1 to
    `final_kappa`, then both stay. Raises BadInputError for a schedule or budget that cannot train."""
    check_budget(eps, lower, upper, field="ibp_training.eps")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise BadInputError(f"ibp_training.total_steps: must be a positive integer, got {total_steps!r}")
    for name, value in (("warmup_fraction", warmup_fraction), ("final_kappa", final_kappa)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise BadInputError(f"ibp_training.{name}: must be a number in [0, 1], got {value!r}")
    return _IBPStep(eps, lower, upper, round(warmup_fraction * total_steps), final_kappa)


def train_ibp(
    model: nn.Module,
    data: Examples,
    eps: float,
    training: TrainingConfig | None = None,
    *,
    lower: float | torch.Tensor = 0.0,
    upper: float | torch.Tensor = 1.0,
    generator: torch.Generator,
    warmup_fraction: float = 0.5,
    final_kappa: float = 0.5,
) -> TrainingResult:
    """Train `model` (an `nn.Sequential` bound propagation supports) with `ibp_step` through the training
    loop, the schedule spread over all its steps (epochs * ceil(n / batch_size)). Checks the layers and the
    budget before any step."""
    sequential_layers(model)  # refuses an unsupported layer by name before any step
    training = training or TrainingConfig()
    steps = training.epochs * math.ceil(len(data.y) / max(training.batch_size, 1))
    step = ibp_step(
        eps, lower, upper, total_steps=max(steps, 1), warmup_fraction=warmup_fraction, final_kappa=final_kappa
    )
    return train(model, data, training, generator=generator, step=step)


class _IBPStep:
    """The batch step with its schedule position (the number of batches it has seen)."""

    def __init__(
        self,
        eps: float,
        lower: float | torch.Tensor,
        upper: float | torch.Tensor,
        warmup: int,
        final_kappa: float,
    ) -> None:
        self.eps, self.lower, self.upper = eps, lower, upper
        self.warmup, self.final_kappa, self.calls = warmup, final_kappa, 0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        ramp = min(1.0, self.calls / self.warmup) if self.warmup > 0 else 1.0
        self.calls += 1
        kappa = 1.0 - (1.0 - self.final_kappa) * ramp
        logits = model(x)
        loss = kappa * F.cross_entropy(logits, y)
        if kappa < 1.0:
            lo, hi = input_box(x, self.eps * ramp, self.lower, self.upper)
            spec = margin_spec(y, logits.shape[1])
            worst = -spec_lower_bound(sequential_layers(model), lo, hi, spec, "ibp")
            loss = loss + (1.0 - kappa) * F.cross_entropy(worst, y)
        return loss
