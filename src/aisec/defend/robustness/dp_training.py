"""Differentially private training with DP-SGD (Abadi et al., "Deep Learning with Differential Privacy",
CCS 2016) through Opacus (Yousefpour et al. 2021): per-example gradients clipped to `max_grad_norm`,
Gaussian noise added, Poisson-sampled batches, and the privacy spent accounted with the RDP accountant.

The result states the (epsilon, delta) guarantee actually spent, so a report can set the privacy gained
(membership inference re-run on the DP model) against the accuracy paid.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from aisec.core.errors import BadInputError
from aisec.core.training import LARGEST_ORDER_WARNING, PrivateTraining, TrainingConfig, train
from aisec.data.dataset import LabelledData


@dataclass(frozen=True)
class DPTrainingResult:
    """The trained model (eval mode) and the guarantee it was trained under."""

    model: nn.Module
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    epochs: int
    sample_rate: float


def train_dp(
    model: nn.Module,
    data: LabelledData,
    *,
    target_epsilon: float,
    delta: float | None = None,
    max_grad_norm: float = 1.0,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> DPTrainingResult:
    """Train `model` with DP-SGD (SGD, momentum 0.9) to spend at most `target_epsilon` (delta defaults to
    1/(10 n), below the 1/n that would allow publishing a record). Layers Opacus cannot clip per example
    (BatchNorm) are replaced by GroupNorm first. Raises BadInputError for settings that cannot give a
    guarantee."""
    n = len(data)
    delta = 1.0 / (10 * n) if delta is None else delta
    if not target_epsilon > 0:
        raise BadInputError(f"target_epsilon must be positive, got {target_epsilon}")
    if not 0 < delta < 1.0 / n:
        raise BadInputError(f"delta must be in (0, 1/n = {1.0 / n:.2g}) for {n} records, got {delta}")
    if not (max_grad_norm > 0 and epochs >= 1 and 1 <= batch_size <= n):
        raise BadInputError("max_grad_norm must be positive, epochs >= 1 and 1 <= batch_size <= len(data)")
    sample_rate = 1 / math.ceil(
        n / batch_size
    )  # Poisson sampling at the expected batch share, as Opacus does
    noise_multiplier = _noise_multiplier(target_epsilon, delta, sample_rate, epochs)
    result = train(
        model,
        data,
        TrainingConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer="sgd", momentum=0.9),
        generator=torch.Generator().manual_seed(seed),
        private=PrivateTraining(noise_multiplier, max_grad_norm, delta),
    )
    assert result.epsilon is not None and result.sample_rate is not None
    return DPTrainingResult(
        model=result.model,
        epsilon=result.epsilon,
        delta=delta,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        epochs=epochs,
        sample_rate=result.sample_rate,
    )


def fit_with_dp(model: nn.Module, data: LabelledData, *, seed: int, **settings: float) -> nn.Module:
    """`train_dp` as a training recipe, fit(model, data, seed=...) -> model: the shadow models of an attacker
    who mimics a DP-SGD victim. Top-level, so that executors can pickle it with `functools.partial`."""
    return train_dp(model, data, seed=seed, **settings).model  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def _noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, epochs: int) -> float:
    """The smallest noise multiplier that spends at most `target_epsilon` (Opacus's search with the RDP
    accountant). The search is most of a small model's DP training time, so it is cached: shadow models
    trained with one recipe on equal-sized sets share it."""
    try:
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError:
        raise BadInputError("DP training needs Opacus: pip install 'aisec[privacy]'") from None

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=LARGEST_ORDER_WARNING, category=UserWarning)
        return get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant="rdp",
        )
