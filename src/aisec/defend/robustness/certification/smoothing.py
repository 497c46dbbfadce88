"""Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019): the smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), and its
certified L2 radius.

- `noise_step` / `train_with_noise`: Gaussian data augmentation through the training loop's batch step, so
  the base classifier f is accurate under the noise it is smoothed with (the noise is not clamped to the
  input range, as in the paper);
- `smoothing_certify` (the paper's CERTIFY): n0 noisy samples select the class cA, n fresh samples estimate
  it; pA_lower is the one-sided (1 - alpha) Clopper-Pearson lower bound of counts[cA] / n; below 1/2 the
  point abstains (-1), else g is constant on the L2 ball of radius sigma * Phi^-1(pA_lower), with
  probability at least 1 - alpha over the noise;
- `smoothing_predict` (PREDICT): the top class of n samples, unless the two-sided binomial test of the top
  two counts cannot tell them apart at alpha (then -1); it returns a class other than g(x) with probability
  at most alpha.

Counting runs on the model's device without gradients: the n samples of several inputs share one forward
pass of `batch_size` noisy inputs, and counts are gathered with one `bincount` per pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import draw_seed
from aisec.core.training import BatchStep, Examples, TrainingConfig, TrainingResult, evaluating, train


def noise_step(sigma: float) -> BatchStep:
    """The batch step of Gaussian data augmentation (Cohen et al. 2019): cross-entropy on x + N(0, sigma^2 I),
    the noise drawn from the loop's generator and not clamped to the input range."""
    _check_sigma("noise_step", sigma)

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        return nn.functional.cross_entropy(model(x + sigma * noise.to(x.device)), y)

    return step


def train_with_noise(
    model: nn.Module,
    data: Examples,
    sigma: float,
    training: TrainingConfig | None = None,
    *,
    generator: torch.Generator,
) -> TrainingResult:
    """Train `model` with Gaussian noise of standard deviation `sigma` added to every batch (the base
    classifier of a smoothed classifier at that sigma); the model comes back in eval mode."""
    return train(model, data, training, generator=generator, step=noise_step(sigma))


@dataclass(frozen=True)
class SmoothingResult:
    """Per input: the smoothed prediction (-1 where CERTIFY abstains), its certified L2 radius (0 where it
    abstains) and the Clopper-Pearson lower bound pA_lower on the probability of the predicted class; the
    settings, and the wall time in seconds."""

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    seconds: float

    def certified_accuracy(self, y: torch.Tensor, radius: float = 0.0) -> float:
        """The share of inputs predicted correctly with a certified radius of at least `radius` (Cohen et
        al.'s certified accuracy at that radius; an abstention is never correct)."""
        y = torch.as_tensor(y, device=self.prediction.device)
        if y.shape != self.prediction.shape:
            shape, inputs = tuple(y.shape), len(self.prediction)
            raise BadInputError(f"certified_accuracy.y: shape {shape} does not match the {inputs} inputs")
        if len(y) == 0:
            return 0.0
        return float(((self.prediction == y) & (self.radius >= radius)).double().mean())


def smoothing_certify(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    generator: torch.Generator,
) -> SmoothingResult:
    """CERTIFY of Cohen et al. (ICML 2019) for every input of `x` (n_inputs, ...): cA = the top class of n0
    noisy copies, pA_lower = the one-sided (1 - alpha) Clopper-Pearson lower bound of cA's share of n further
    copies; abstain (-1, radius 0) if pA_lower < 1/2, else certify the L2 radius sigma * Phi^-1(pA_lower).
    `batch_size` noisy inputs go through the model per forward pass. Raises BadInputError before any
    sample."""
    _check("smoothing_certify", x, sigma=sigma, n=n, alpha=alpha, batch_size=batch_size, n0=n0)
    start = time.perf_counter()
    noise = _device_generator(model, generator)
    selection = _counts(model, x, sigma, n0, batch_size, noise)
    chosen = selection.argmax(1)
    counts = _counts(model, x, sigma, n, batch_size, noise)
    hits = counts.gather(1, chosen.unsqueeze(1)).squeeze(1)
    p_lower = torch.as_tensor(clopper_pearson_lower(hits.cpu().numpy(), n, alpha), dtype=torch.float64)
    p_lower = p_lower.to(chosen.device)
    certified = p_lower >= 0.5
    radius = torch.where(certified, sigma * _phi_inverse(p_lower), torch.zeros_like(p_lower))
    prediction = torch.where(certified, chosen, torch.full_like(chosen, -1))
    return SmoothingResult(
        prediction, radius, p_lower, float(sigma), n0, n, float(alpha), time.perf_counter() - start
    )


def smoothing_predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    generator: torch.Generator,
) -> torch.Tensor:
    """PREDICT of Cohen et al. (ICML 2019): for every input, the top class of n noisy copies if the
    two-sided binomial test of the top two counts rejects p = 1/2 at level alpha, else -1 (abstain); int64,
    shape (n_inputs,)."""
    _check("smoothing_predict", x, sigma=sigma, n=n, alpha=alpha, batch_size=batch_size)
    counts = _counts(model, x, sigma, n, batch_size, _device_generator(model, generator))
    top = counts.topk(min(2, counts.shape[1]), dim=1)
    first = top.values[:, 0]
    second = top.values[:, 1] if counts.shape[1] > 1 else torch.zeros_like(first)
    p_value = binomial_test_half(first.cpu().numpy(), (first + second).cpu().numpy())
    decided = torch.as_tensor(p_value <= alpha, device=counts.device)
    return torch.where(decided, top.indices[:, 0], torch.full_like(first, -1))


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """The one-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial proportion,
    Beta^-1(alpha; k, n - k + 1), and 0 for k = 0 (Clopper & Pearson, Biometrika 1934)."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, np.maximum(k, 1.0), trials - k + 1.0)
    return np.where(k > 0, bound, 0.0)


def binomial_test_half(k: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """The two-sided exact binomial test's p-value of k successes in `trials` against p = 1/2 (as
    scipy.stats.binomtest; symmetric, so 2 P(X <= min(k, trials - k)), capped at 1), vectorised."""
    k, trials = np.asarray(k, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(k, trials - k), trials, 0.5))


def _phi_inverse(p: torch.Tensor) -> torch.Tensor:
    """Phi^-1(p) of the standard normal, with scipy's tails (p may equal 1 - eps)."""
    return torch.as_tensor(norm.ppf(p.cpu().numpy()), dtype=torch.float64).to(p.device)


@torch.inference_mode()
def _counts(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    samples: int,
    batch_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """(n_inputs, classes) int64: how often the model's top class is each class over `samples` copies of each
    input with N(0, sigma^2 I) noise. The n_inputs * samples copies are one stream cut into forward passes of
    `batch_size`, so a pass holds several inputs when `samples` < `batch_size`."""
    device = generator.device
    x = x.to(device)
    total = len(x) * samples
    counts: torch.Tensor | None = None
    with evaluating(model):
        for begin in range(0, total, batch_size):
            owner = torch.arange(begin, min(begin + batch_size, total), device=device) // samples
            clean = x[owner]
            noisy = clean + sigma * torch.randn(
                clean.shape, generator=generator, device=device, dtype=x.dtype
            )
            logits = model(noisy)
            if counts is None:
                counts = torch.zeros(len(x) * logits.shape[1], dtype=torch.int64, device=device)
            classes = logits.shape[1]
            counts += torch.bincount(owner * classes + logits.argmax(1), minlength=len(x) * classes)
    if counts is None:  # no inputs
        return torch.zeros((0, 1), dtype=torch.int64, device=device)
    return counts.view(len(x), -1)


def _device_generator(model: nn.Module, generator: torch.Generator) -> torch.Generator:
    """`generator` if it lives on the model's device, else a generator there seeded from it (noise is drawn
    where the model runs, without a copy per pass)."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else generator.device
    if device == generator.device:
        return generator
    return torch.Generator(device=device).manual_seed(draw_seed(generator))


def _check_sigma(where: str, sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise BadInputError(f"{where}.sigma: {sigma!r} must be a positive, finite noise standard deviation")


def _check(
    where: str, x: torch.Tensor, *, sigma: float, n: int, alpha: float, batch_size: int, n0: int = 1
) -> None:
    """BadInputError (one line naming the field and value) for settings CERTIFY or PREDICT cannot run with."""
    _check_sigma(where, sigma)
    for field, value in (("n0", n0), ("n", n), ("batch_size", batch_size)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise BadInputError(f"{where}.{field}: {value!r} must be an integer >= 1 (a number of samples)")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise BadInputError(f"{where}.alpha: {alpha!r} must be in (0, 1) (the failure probability)")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BadInputError(f"{where}.x: shape {shape} has no batch dimension; pass (n_inputs, ...)")
    if not x.is_floating_point():
        raise DataError(f"{where}.x: inputs must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{where}.x: inputs contain NaN or infinite values")
