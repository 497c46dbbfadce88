"""The one training loop: every model aisec trains (demo and shadow models, poisoned and repaired models,
surrogates, DP-SGD and gradient shaping) goes through `train`.

What differs between the methods is one of three things, each an argument of the same loop:

- the batch step: `step(model, x, y, generator) -> loss` is where an adversarial or noised batch is made
  (the default is cross-entropy on the batch as drawn);
- private training: `private=PrivateTraining(...)` clips per-example gradients and adds Gaussian noise
  (DP-SGD, Abadi et al. 2016) through Opacus, with Poisson-sampled batches and the RDP accountant;
- which parameters move (`parameters`, e.g. only the last layer).

All randomness comes from `generator`: the batch order (or Poisson batches), the step's own draws, the DP noise,
and (through `seeding.global_rng`) dropout masks, which torch draws from its global generator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import draw_seed, global_rng


class Examples(Protocol):
    """Labelled examples: inputs `x` (n, ...) and labels `y`, class indices (n,) or probabilities (n, classes)
    (e.g. `LabelledData`)."""

    @property
    def x(self) -> torch.Tensor: ...

    @property
    def y(self) -> torch.Tensor: ...


class BatchStep(Protocol):
    """The loss of one batch; where adversarial training makes its adversarial batch, noise training its
    noised one. Called with the model in training mode; it may switch modes but must leave it training."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor: ...


def cross_entropy_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Plain training: the mean cross-entropy of the batch as drawn."""
    return nn.functional.cross_entropy(model(x), y)


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser and schedule. The defaults are the demo recipe (Adam, lr 0.01, 30 epochs of batches of 64)."""

    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0


# Opacus warns when the best RDP order it tried is its largest: the epsilon it reports is then a valid upper
# bound that a wider range of orders would only tighten, not a wrong one, so a user need not see it.
LARGEST_ORDER_WARNING = "Optimal order is the largest alpha"


@dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD: per-example gradients clipped to `max_grad_norm`, Gaussian noise of standard deviation
    `noise_multiplier * max_grad_norm` added to each batch's summed gradient. `delta` is the delta the spent
    epsilon is reported at (default 1/(10 n))."""

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float | None = None


@dataclass(frozen=True)
class TrainingResult:
    """The trained model (in eval mode) and what training did. For private training, the (epsilon, delta)
    that Opacus's RDP accountant gives the steps taken, and the Poisson sample rate."""

    model: nn.Module
    epochs: int
    steps: int
    epsilon: float | None = None
    delta: float | None = None
    sample_rate: float | None = None


def train(
    model: nn.Module,
    data: Examples,
    config: TrainingConfig | None = None,
    *,
    generator: torch.Generator,
    step: BatchStep = cross_entropy_step,
    private: PrivateTraining | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> TrainingResult:
    """Train `model` on `data` and return it in eval mode.

    Batches are a shuffled pass over the data each epoch, or with `private`, ceil(n / batch_size) Poisson
    samples of rate 1 / ceil(n / batch_size) per epoch, as Opacus draws them. Layers Opacus cannot clip per
    example (BatchNorm) are replaced by GroupNorm first, so with `private` the returned model may differ from
    `model` in those layers. `epoch_end(epoch, model)` runs after each epoch (a check, a rollback).

    Raises BadInputError for settings that cannot train, DataError for data the model cannot take, before any
    step.
    """
    config = config or TrainingConfig()
    n = _check(model, data, config, private)
    device = _device(model)
    with global_rng(draw_seed(generator)), warnings.catch_warnings():
        # Opacus's per-example gradient hooks fire on the first layer, whose input needs no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        if private is None:
            chosen = list(parameters) if parameters is not None else list(model.parameters())
            optimizer = _optimizer(chosen, config)
            batches: Callable[[], Iterator[torch.Tensor]] = lambda: _shuffled(n, config.batch_size, generator)  # noqa: E731
            trained, sample_rate, accountant = model, None, None
        else:
            trained, optimizer, accountant, sample_rate = _make_private(
                model, parameters, config, private, n, generator
            )
            batches = lambda: _poisson(n, sample_rate, generator)  # noqa: E731
        steps = 0
        trained.train()
        for epoch in range(config.epochs):
            for idx in batches():
                if len(idx) == 0:
                    continue  # a Poisson sample can be empty (probability (1 - q)^n)
                x, y = data.x[idx].to(device), data.y[idx].to(device)
                optimizer.zero_grad()
                step(trained, x, y, generator).backward()
                optimizer.step()
                steps += 1
            if epoch_end is not None:
                epoch_end(epoch, trained)
                trained.train()
    result_model = getattr(trained, "_module", trained)  # Opacus's GradSampleModule wraps the model
    result_model.eval()
    if accountant is None:
        return TrainingResult(result_model, config.epochs, steps)
    delta = private.delta if private is not None and private.delta is not None else 1.0 / (10 * n)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=LARGEST_ORDER_WARNING, category=UserWarning)
        epsilon = float(accountant.get_epsilon(delta))
    return TrainingResult(result_model, config.epochs, steps, epsilon, delta, sample_rate)


def fit(
    model: nn.Module,
    data: Examples,
    *,
    seed: int = 0,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
) -> nn.Module:
    """The default training recipe, `fit(model, data, seed=...) -> model` as plans name it
    (`training.recipe: aisec.core.training:fit`): Adam with a seeded batch order; the model in eval mode."""
    config = TrainingConfig(epochs=epochs, lr=lr, batch_size=batch_size)
    return train(model, data, config, generator=torch.Generator().manual_seed(seed)).model


def accuracy(model: nn.Module, data: Examples, *, batch_size: int = 4096) -> float:
    """Top-1 accuracy of `model` on `data`, in eval mode, without gradients; the model's mode is restored."""
    device = _device(model)
    correct = 0
    with evaluating(model), torch.no_grad():
        for i in range(0, len(data.y), batch_size):
            x, y = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(data.y), 1)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The block runs with `model` in eval mode; its previous mode (train or eval) is restored on exit."""
    was_training = model.training
    model.train(False)
    try:
        yield model
    finally:
        model.train(was_training)


def _check(model: nn.Module, data: Examples, config: TrainingConfig, private: PrivateTraining | None) -> int:
    """The number of examples; BadInputError or DataError (naming the data) for anything that cannot train."""
    name = getattr(data, "name", "training data")
    n = len(data.y)
    if len(data.x) != n or n == 0:
        raise DataError(
            f"{name}: training needs as many inputs as labels, at least one; got {len(data.x)} and {n}"
        )
    if not (config.epochs >= 1 and config.lr > 0 and config.batch_size >= 1):
        raise BadInputError(
            f"training needs epochs >= 1, lr > 0 and batch_size >= 1; got {config.epochs}, {config.lr}, "
            f"{config.batch_size}"
        )
    if private is not None:
        if config.batch_size > n:
            raise BadInputError(
                f"private training: batch_size {config.batch_size} exceeds the {n} samples of {name}"
            )
        if not (private.max_grad_norm > 0 and private.noise_multiplier >= 0):
            raise BadInputError("private training needs max_grad_norm > 0 and noise_multiplier >= 0")
        if private.delta is not None and not 0 < private.delta < 1.0 / n:
            raise BadInputError(
                f"delta must be in (0, 1/n = {1.0 / n:.2g}) for {n} records, got {private.delta}"
            )
    if data.x.is_floating_point() and not torch.isfinite(data.x).all():
        raise DataError(f"{name}: inputs contain NaN or infinite values")
    if data.y.is_floating_point():  # soft labels: a probability row per sample (e.g. a victim's answers)
        if data.y.dim() != 2 or bool((data.y < 0).any()):
            raise DataError(f"{name}: soft labels must be an (n, classes) array of probabilities")
        classes, labels = data.y.shape[1], f"soft labels over {data.y.shape[1]} classes"
    else:
        if int(data.y.min()) < 0:
            raise DataError(f"{name}: labels must be class indices >= 0, got {int(data.y.min())}")
        classes, labels = int(data.y.max()) + 1, f"labels range up to {int(data.y.max())}"
    device = _device(model)
    try:
        with evaluating(model), torch.no_grad():
            out = model(data.x[:2].to(device))
    except RuntimeError as e:
        raise DataError(
            f"{name}: the model cannot take inputs of shape {tuple(data.x.shape[1:])}: {e}"
        ) from None
    if out.dim() != 2 or classes > out.shape[1]:
        raise DataError(f"{name}: {labels} but the model gives outputs of shape {tuple(out.shape[1:])}")
    return n


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _optimizer(parameters: list[nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _shuffled(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def _poisson(n: int, sample_rate: float, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """ceil(1 / sample_rate) batches, each taking every record independently with probability sample_rate."""
    for _ in range(round(1 / sample_rate)):
        yield torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


def _make_private(
    model: nn.Module,
    parameters: Iterable[nn.Parameter] | None,
    config: TrainingConfig,
    private: PrivateTraining,
    n: int,
    generator: torch.Generator,
) -> tuple[nn.Module, torch.optim.Optimizer, Any, float]:
    """Opacus's per-example gradient module, DP optimiser and RDP accountant over `model` (Opacus's
    `make_private` without its data loader: batches come from `generator`)."""
    try:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator
    except ImportError:
        raise BadInputError(
            "private training (DP-SGD, gradient shaping) needs Opacus: pip install 'aisec[privacy]'"
        ) from None
    if parameters is not None:
        raise BadInputError("private training trains every parameter of the model; do not pass `parameters`")
    sample_rate = 1 / math.ceil(n / config.batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG and full backward hooks
        fixed = ModuleValidator.fix(model)
        wrapped = GradSampleModule(fixed)
        optimizer = DPOptimizer(
            _optimizer(list(wrapped.parameters()), config),
            noise_multiplier=private.noise_multiplier,
            max_grad_norm=private.max_grad_norm,
            expected_batch_size=config.batch_size,
            generator=torch.Generator(device=_device(fixed)).manual_seed(draw_seed(generator)),
        )
    accountant = RDPAccountant()
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return wrapped, optimizer, accountant, sample_rate
