"""Gradient shaping against data poisoning (Hong et al. 2020, "On the Effectiveness of Mitigating Data
Poisoning Attacks with Gradient Shaping", arXiv:2002.11497).

Poisoned samples steer training through gradients that differ from the clean ones in magnitude and
direction. Gradient shaping bounds both: every per-example gradient is clipped to L2 norm `max_grad_norm` (C)
and Gaussian noise of standard deviation `noise_multiplier * C` is added to the summed batch gradient, which
is DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") run through Opacus (Yousefpour et
al. 2021) for its effect on a poisoned minority, with no privacy target to reach. The (epsilon, delta) these
settings happen to give is reported beside the model as a side figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from aisec.core.errors import BadInputError
from aisec.core.training import PrivateTraining, TrainingConfig, train
from aisec.data.dataset import LabelledData


@dataclass(frozen=True)
class GradientShapingConfig:
    """Clip bound C (`max_grad_norm`), noise standard deviation as a multiple of C, and the optimiser.

    The defaults, measured on the digits CNN over five seeds and three kernel sets (tests/test_gradient_shaping.py),
    cut a 1 % BadNets backdoor's success from 88-99 % to 11-38 % (median 27 %) and cost 4-8 points of clean
    accuracy (91-94 % against 97-99 % for plain Adam); less noise keeps more accuracy and stops less of the
    backdoor, and no setting tried stops a backdoor in 5 % of the training set."""

    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.7
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 128
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only

    def __post_init__(self) -> None:
        for field in ("max_grad_norm", "noise_multiplier", "lr"):
            value = getattr(self, field)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise BadInputError(f"gradient shaping: {field} must be a positive number, got {value!r}")
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise BadInputError(f"gradient shaping: {field} must be an integer >= 1, got {value!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise BadInputError(
                f"gradient shaping: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}"
            )
        if not 0 <= self.momentum < 1:
            raise BadInputError(f"gradient shaping: momentum must be in [0, 1), got {self.momentum!r}")


@dataclass(frozen=True)
class GradientShapingResult:
    """The trained model (eval mode), the settings, and the (epsilon, delta) that Opacus's RDP accountant
    gives them: informative only, since gradient shaping aims at no privacy target."""

    model: nn.Module
    config: GradientShapingConfig
    epsilon: float
    delta: float
    sample_rate: float


def train_with_gradient_shaping(
    model: nn.Module, data: LabelledData, config: GradientShapingConfig | None = None, *, seed: int = 0
) -> GradientShapingResult:
    """Train `model` on `data` with per-example gradients clipped to `config.max_grad_norm` and Gaussian noise
    of standard deviation `noise_multiplier * max_grad_norm` added to each Poisson-sampled batch's summed
    gradient (Hong et al. 2020): `aisec.core.training.train` with private training. Layers Opacus cannot clip
    per example (BatchNorm) are replaced by GroupNorm first, so the returned model may differ from `model` in
    those layers. delta is 1/(10 n).

    Raises before training: a batch larger than the data, non-finite inputs, negative labels, or data the
    model cannot take (its forward pass fails, or labels reach past its outputs)."""
    config = config or GradientShapingConfig()
    momentum = config.momentum if config.optimizer == "sgd" else 0.0
    result = train(
        model,
        data,
        TrainingConfig(config.epochs, config.lr, config.batch_size, config.optimizer, momentum),
        generator=torch.Generator().manual_seed(seed),
        private=PrivateTraining(config.noise_multiplier, config.max_grad_norm),
    )
    assert result.epsilon is not None and result.delta is not None and result.sample_rate is not None
    return GradientShapingResult(result.model, config, result.epsilon, result.delta, result.sample_rate)


def fit_with_gradient_shaping(
    model: nn.Module, data: LabelledData, *, seed: int, **settings: float | str
) -> nn.Module:
    """`train_with_gradient_shaping` as a training recipe, fit(model, data, seed=...) -> model, with the
    `GradientShapingConfig` fields as keywords. Top-level, so that executors can pickle it with
    `functools.partial`."""
    config = GradientShapingConfig(**settings)  # type: ignore[arg-type]
    return train_with_gradient_shaping(model, data, config, seed=seed).model


def private_model(model_fn: Callable[[], nn.Module]) -> nn.Module:
    """`model_fn()` with the layers that private training replaces (BatchNorm by GroupNorm: Opacus's
    `ModuleValidator.fix`, as aisec.core.training applies it) replaced already, so that a gradient-shaped job's
    weights load into it; the layers it keeps keep their initial weights, and training replaces nothing more."""
    try:
        from opacus.validators import ModuleValidator
    except ImportError:
        raise BadInputError("gradient shaping needs Opacus: pip install 'aisec[privacy]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus logs and warns about the layers it replaces
        fixed: nn.Module = ModuleValidator.fix(model_fn())
    return fixed
