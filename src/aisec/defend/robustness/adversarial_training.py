"""Adversarial training of torch models: every method is the one training loop (`aisec.core.training.train`)
with a different batch step, and an epoch-end guard against catastrophic overfitting.

pgd     PGD-AT (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018):
        cross-entropy on PGD examples (random start, `steps` steps of `step_size`) instead of the clean batch.
trades  TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
        ICML 2019):
        CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), where x' maximises that KL (not the
        cross-entropy) by sign-gradient steps from x + 0.001 N(0, 1).
fast    fast AT (Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020):
        one FGSM step of 1.25 eps from a uniform random start in the ball, clamped into the ball and bounds.

Budgets are L-inf, in input units, and checked against the input bounds before any training: an eps of 8
meant for 0-255 pixels is refused on [0, 1] data instead of training against a ball covering every input.

The guard (Wong et al.'s early stopping): a fixed batch of training samples, drawn once, is attacked by PGD-10
before training (epoch 0: the weights as given, which matters when fine-tuning a robust model) and after every
epoch. When its PGD accuracy falls more than `GUARD_DROP` (0.2, the drop Wong et al. stop at) below the best
accuracy so far, the best epoch's weights are restored at once and the remaining epochs make no update (their
batch step returns a loss with no path to the parameters, so the optimiser skips them); the report says which
epoch was kept. The rule cannot tell catastrophic overfitting (PGD accuracy collapses while FGSM accuracy
stays high) from training that diverges (both collapse); it rolls back either.

Examples are crafted with the model in eval mode (as Zhang et al. do) and the loss is taken in training mode;
for the demo CNN, which has no BatchNorm or dropout, the mode changes nothing.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aisec.core.errors import BadInputError
from aisec.core.seeding import draw_seed
from aisec.core.training import BatchStep, Examples, TrainingConfig, evaluating, train
from aisec.defend.robustness.budget import check_budget
from aisec.defend.robustness.perturbation import perturb

Method = Literal["pgd", "trades", "fast"]
METHODS: tuple[Method, ...] = ("pgd", "trades", "fast")
GUARD_DROP = 0.2  # a fall of the guard's PGD accuracy this far below its best so far triggers the rollback
GUARD_STEPS = 10  # the guard's PGD steps
TRADES_START_STD = 0.001  # Zhang et al. start the KL maximisation at x + 0.001 N(0, 1)


@dataclass(frozen=True)
class AdversarialTrainingConfig:
    """The method and its inner maximisation. `eps` is the L-inf budget in input units; `steps` the inner
    steps of pgd and trades (fast always takes one); `step_size` defaults to 2.5 eps / steps (pgd, trades) and
    to 1.25 eps (fast, as Wong et al.); `beta` weighs TRADES's KL term; `guard` checks every method for
    catastrophic overfitting on `guard_samples` fixed training samples."""

    method: Method
    eps: float
    steps: int = 10
    step_size: float | None = None
    beta: float = 6.0
    guard: bool = True
    guard_samples: int = 256

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(
                f"adversarial_training.method: {self.method!r} is not one of {', '.join(METHODS)}"
            )
        _check_number("eps", self.eps, positive=True)
        if self.step_size is not None:
            _check_number("step_size", self.step_size, positive=True)
        _check_number("beta", self.beta, positive=False)
        for field in ("steps", "guard_samples"):
            value = getattr(self, field)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise BadInputError(f"adversarial_training.{field}: must be an integer >= 1, got {value!r}")

    @property
    def inner_steps(self) -> int:
        return 1 if self.method == "fast" else self.steps

    @property
    def inner_step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.method == "fast" else 2.5 * self.eps / self.steps


@dataclass(frozen=True)
class GuardReport:
    """What the catastrophic-overfitting guard saw: `pgd_accuracy[e]`, PGD-10 accuracy on its fixed batch
    after e epochs (e = 0: the weights as given), up to the epoch where it fired; the epoch whose weights were
    restored (0: the weights as given) or None; and one sentence for the report."""

    pgd_accuracy: tuple[float, ...]
    rolled_back_to: int | None
    message: str


@dataclass(frozen=True)
class AdversarialTrainingResult:
    """The trained model (eval mode), the method and budget, the epochs the returned weights were trained for
    (fewer than asked when the guard rolled back), the wall time of training (guard included), the guard's
    report (None without the guard)."""

    model: nn.Module
    method: str
    eps: float
    epochs: int
    seconds: float
    guard: GuardReport | None


def adversarial_step(
    config: AdversarialTrainingConfig, lower: float | torch.Tensor, upper: float | torch.Tensor
) -> BatchStep:
    """The batch step of `config.method` for `aisec.core.training.train`: craft the batch's adversarial
    examples (model in eval mode) and return the method's loss with the model back in training mode."""
    return _AdversarialStep(config, lower, upper)


def adversarial_train(
    model: nn.Module,
    data: Examples,
    config: AdversarialTrainingConfig,
    training: TrainingConfig | None = None,
    *,
    lower: float | torch.Tensor = 0.0,
    upper: float | torch.Tensor = 1.0,
    generator: torch.Generator,
) -> AdversarialTrainingResult:
    """Train `model` on `data` with `config.method` (see the module docstring) through the one training loop
    (`training`: optimiser and schedule, the demo recipe by default), inputs bounded by [lower, upper].

    The budget is checked first (BadInputError before any step). The guard's batch and its PGD start points
    come from a generator seeded once from `generator`, drawn whether or not the guard is on, so a run with
    the guard trains exactly as one without it until the guard fires."""
    check_budget(config.eps, lower, upper, field="adversarial_training.eps")
    if data.y.is_floating_point():
        raise BadInputError("adversarial_training: needs class-index labels, got soft labels (probabilities)")
    guard_generator = torch.Generator().manual_seed(draw_seed(generator))
    guard = _Guard(data, config, lower, upper, guard_generator) if config.guard else None
    batch_step = adversarial_step(config, lower, upper)

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if guard is not None and not guard.accuracy:
            guard.start(model)
        if guard is not None and guard.rolled_back_to is not None:
            return torch.zeros((), device=x.device, requires_grad=True)  # stopped: no parameter moves
        return batch_step(model, x, y, generator)

    training = training or TrainingConfig()
    start = time.perf_counter()
    trained = train(model, data, training, generator=generator, step=step, epoch_end=guard).model
    if guard is not None and guard.rolled_back_to is not None:
        guard.restore(trained)
    seconds = time.perf_counter() - start
    report = guard.report() if guard is not None else None
    epochs = training.epochs if report is None or report.rolled_back_to is None else report.rolled_back_to
    return AdversarialTrainingResult(trained, config.method, config.eps, epochs, seconds, report)


@dataclass(frozen=True)
class _AdversarialStep:
    config: AdversarialTrainingConfig
    lower: float | torch.Tensor
    upper: float | torch.Tensor

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        c = self.config
        if c.method == "trades":
            return _trades_loss(model, x, y, c, self.lower, self.upper, generator)
        x_adv = perturb(
            model,
            x,
            lambda logits: F.cross_entropy(logits, y),
            eps=c.eps,
            steps=c.inner_steps,
            step_size=c.inner_step_size,
            lower=self.lower,
            upper=self.upper,
            random_start=True,
            generator=generator,
        )
        return F.cross_entropy(model(x_adv), y)


def trades_inner(
    model: nn.Module,
    x: torch.Tensor,
    config: AdversarialTrainingConfig,
    lower: float | torch.Tensor,
    upper: float | torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al. 2019): x' maximising KL(softmax f(x) || softmax f(x')) over
    the eps-ball and the bounds, by `config.steps` sign-gradient steps from x + 0.001 N(0, 1) (the first draw
    from `generator`)."""
    with evaluating(model), torch.no_grad():
        log_p = F.log_softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return perturb(
        model,
        x,
        lambda logits: F.kl_div(F.log_softmax(logits, dim=1), log_p, reduction="sum", log_target=True),
        eps=config.eps,
        steps=config.inner_steps,
        step_size=config.inner_step_size,
        lower=lower,
        upper=upper,
        random_start=False,
        generator=generator,
        start=x + TRADES_START_STD * noise,
    )


def _trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AdversarialTrainingConfig,
    lower: float | torch.Tensor,
    upper: float | torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), batch means, gradients through both terms."""
    x_adv = trades_inner(model, x, config, lower, upper, generator)
    logits = model(x)
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(model(x_adv), dim=1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return F.cross_entropy(logits, y) + config.beta * kl


class _Guard:
    """The epoch-end hook: PGD-10 accuracy on a fixed batch, the best epoch's weights, the rollback."""

    def __init__(
        self,
        data: Examples,
        config: AdversarialTrainingConfig,
        lower: float | torch.Tensor,
        upper: float | torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.idx = torch.randperm(len(data.y), generator=generator)[: config.guard_samples]
        self.data, self.config, self.lower, self.upper, self.generator = data, config, lower, upper, generator
        self.accuracy: list[float] = []
        self.best_epoch, self.best_state = 0, dict[str, torch.Tensor]()
        self.rolled_back_to: int | None = None

    def start(self, model: nn.Module) -> None:
        """Epoch 0: the fixed batch and the weights as given (called at the first batch, once the training
        loop has checked the data)."""
        device = next(model.parameters()).device
        self.x, self.y = self.data.x[self.idx].to(device), self.data.y[self.idx].to(device)
        self.accuracy.append(self._pgd_accuracy(model))
        self.best_state = copy.deepcopy(model.state_dict())

    def __call__(self, epoch: int, model: nn.Module) -> None:
        """The hook `train` calls after epoch `epoch` (counted from 0), i.e. after epoch + 1 epochs."""
        if self.rolled_back_to is not None:
            return
        accuracy = self._pgd_accuracy(model)
        self.accuracy.append(accuracy)
        best = self.accuracy[self.best_epoch]
        if accuracy > best:
            self.best_epoch, self.best_state = epoch + 1, copy.deepcopy(model.state_dict())
        elif accuracy < best - GUARD_DROP:
            self.rolled_back_to = self.best_epoch
            self.restore(model)

    def restore(self, model: nn.Module) -> None:
        model.load_state_dict(self.best_state)

    def report(self) -> GuardReport:
        n, acc, last = len(self.y), tuple(self.accuracy), len(self.accuracy) - 1
        attack = f"PGD-{GUARD_STEPS} accuracy on {n} fixed training samples"
        if self.rolled_back_to is None:
            message = (
                f"No sign of catastrophic overfitting: {attack} went from {acc[0]:.2f} to {acc[-1]:.2f} over "
                f"{last} epochs and never fell more than {GUARD_DROP:g} below its best."
            )
        else:
            kept = (
                "the weights as given"
                if self.rolled_back_to == 0
                else f"epoch {self.rolled_back_to}'s weights"
            )
            message = (
                f"Robustness collapsed (catastrophic overfitting or diverging training): {attack} fell from "
                f"{acc[self.rolled_back_to]:.2f} after {self.rolled_back_to} epoch(s) to {acc[-1]:.2f} after "
                f"{last}; {kept} were restored and training stopped."
            )
        return GuardReport(acc, self.rolled_back_to, message)

    def _pgd_accuracy(self, model: nn.Module) -> float:
        eps = self.config.eps
        x_adv = perturb(
            model,
            self.x,
            lambda logits: F.cross_entropy(logits, self.y),
            eps=eps,
            steps=GUARD_STEPS,
            step_size=2.5 * eps / GUARD_STEPS,
            lower=self.lower,
            upper=self.upper,
            random_start=True,
            generator=self.generator,
        )
        with evaluating(model), torch.no_grad():
            return float((model(x_adv).argmax(1) == self.y).float().mean())


def _check_number(field: str, value: object, *, positive: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (value <= 0 if positive else value < 0)
    ):
        bound = "a positive" if positive else "a non-negative"
        raise BadInputError(f"adversarial_training.{field}: must be {bound} finite number, got {value!r}")
