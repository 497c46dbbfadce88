"""MM-BD: does one class reach an abnormally large logit margin? (Wang, Xiang, Miller and Kesidis 2024,
"MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary Backdoor Pattern Types Using a Maximum
Margin Statistic", IEEE S&P; arXiv 2205.06900.)

A backdoor teaches the model that a small pattern outweighs everything else in the input, so inputs exist on
which the target's logit towers over every other: for each class k the statistic is the largest margin any
input in the domain reaches, r_k = max_x [z_k(x) - max_{j != k} z_j(x)] over the logits z. It needs no clean
data and assumes nothing about how the trigger is embedded. Each r_k is estimated by projected gradient ascent
from `restarts` starts drawn uniformly in the input bounds, keeping the largest margin reached at any iterate.

Detection: a null is fitted to the K - 1 statistics other than the largest, r_max, by maximum likelihood as a
Gamma distribution H0 with free shape, location and scale (the authors' code, github.com/wanghangpsu/MM-BD
`univ_bd.py`, calls `gamma.fit(r_null)`, location free), and r_max gets the paper's order-statistic p-value
1 - H0(r_max)^(K-1) (that code raises H0 to the K-th power, a slightly smaller p-value); the model is flagged
when it is below alpha (the paper's 0.05). Where the other statistics are all equal (a degenerate null: a
point mass) the p-value is 0 if r_max exceeds them, else 1.

The ascent uses Adam on the input, clipped into the bounds after each step, rather than the authors' SGD (30
starts per class, up to 300 steps of lr 0.01 on the raw logits): Adam's steps are per-pixel and scale-free,
so one learning rate (a fraction of the input range) fits any model's logit scale, and they shrink where the
gradient's sign flips, so the iterates settle on a maximum instead of circling it as fixed signed steps do
(on the digits CNN 100 steps came within 1 % of 1000). All classes and restarts run in one batch of
K x restarts inputs per step; the model's weights get no gradients and the model is left in the mode it was
given.

On the digits CNN (tests/test_max_margin.py) a default scan takes 1-2 s on one CPU thread. The BadNets
target (a 3x3 patch, rates 0.03-0.1) had the largest statistic on every victim, but the p-value flagged only
about half of them at 0.05 (rate 0.1: 6 of 12 trainings), and 1 of 12 clean models: on 8x8 digits the natural
classes' margins spread widely (largest 1.00-1.26 times the runner-up), and the Gamma maximum likelihood on
nine values often degenerates (shape < 1, location at the smallest), so noise of +-0.3 on the statistics
moved one clean model's p-value between 0.004 and 0.43.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import gamma
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.progress import NullProgress, Progress
from aisec.core.training import evaluating


@dataclass(frozen=True)
class MaxMarginConfig:
    """restarts: random starts per class (the authors' 30); steps: Adam steps of the ascent; lr: Adam's step as
    a fraction of the input range (upper - lower); alpha: the significance level below which the largest
    statistic's p-value flags the model (the paper's 0.05)."""

    restarts: int = 30
    steps: int = 100
    lr: float = 0.05
    alpha: float = 0.05

    def __post_init__(self) -> None:
        for name in ("restarts", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInputError(f"max margin: {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise BadInputError(f"max margin: lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise BadInputError(f"max margin: alpha must be in (0, 1), got {self.alpha!r}")


@dataclass(frozen=True)
class MaxMarginResult:
    """`statistics[k]` is r_k, the largest margin of class k found; `p_value` that of the largest statistic
    under the Gamma null fitted to the others; `flagged` is p_value < alpha; `suspected_target` the class of
    the largest statistic (reported whether flagged or not); `maximisers[k]` the input that reached r_k."""

    statistics: tuple[float, ...]
    p_value: float
    alpha: float
    flagged: bool
    suspected_target: int
    maximisers: torch.Tensor


def max_margin_scan(
    model: nn.Module,
    input_shape: tuple[int, ...],
    config: MaxMarginConfig = MaxMarginConfig(),
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> MaxMarginResult:
    """Estimate each class's maximum logit margin over inputs of `input_shape` in [lower, upper] and test the
    largest against a Gamma null fitted to the others.

    Raises before any optimisation: a shape that is not positive integers, bounds not finite with
    lower < upper, a model that fails on one input of that shape or whose output for it is not (1, K) with
    K >= 3 (the null is fitted to the K - 1 statistics other than the largest and needs at least two), or
    non-finite logits there; after it, a statistic that is not finite (logits overflowing inside the bounds).
    """
    shape = _check_shape(input_shape)
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise BadInputError(
            f"max margin: input bounds must be finite with lower < upper, got [{lower}, {upper}]"
        )
    with evaluating(model):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        num_classes = _check_model(model, shape, lower, upper, device)
        generator = generator or torch.Generator().manual_seed(0)
        with (progress or NullProgress()).task(
            "max margin: ascending class margins", total=config.steps
        ) as task:
            statistics, maximisers = _ascend(
                model, shape, num_classes, config, lower, upper, generator, device, task.advance
            )
    if not torch.isfinite(statistics).all():
        bad = int((~torch.isfinite(statistics)).nonzero()[0])
        raise DataError(f"max margin: the model's logits became non-finite while ascending class {bad}")
    values = statistics.double().numpy()
    p_value = order_statistic_p_value(values)
    return MaxMarginResult(
        tuple(float(v) for v in values),
        p_value,
        config.alpha,
        p_value < config.alpha,
        int(values.argmax()),
        maximisers,
    )


def order_statistic_p_value(statistics: np.ndarray) -> float:
    """The paper's p-value of the largest of K statistics: 1 - H0(r_max)^(K-1), H0 the Gamma distribution
    (shape, location and scale by maximum likelihood) of the other K - 1. Computed from H0's survival
    function, so p-values far below 1e-16 do not round to 0. When the others are all equal, H0 is a point
    mass: 0 if r_max exceeds it, else 1."""
    top = int(statistics.argmax())
    r_max, others = float(statistics[top]), np.delete(statistics, top)
    if np.ptp(others) == 0:
        return 0.0 if r_max > others[0] else 1.0
    with warnings.catch_warnings():  # the optimiser of scipy's fit warns on steps it then recovers from
        warnings.simplefilter("ignore", RuntimeWarning)
        a, loc, scale = gamma.fit(others)
    tail = float(gamma.sf(r_max, a, loc=loc, scale=scale))
    return float(-math.expm1(len(others) * math.log1p(-tail))) if tail < 1 else 1.0


def _check_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise BadInputError(
            f"max margin: input_shape must be one or more positive integers, got {input_shape!r}"
        )
    return shape


def _check_model(
    model: nn.Module, shape: tuple[int, ...], lower: float, upper: float, device: torch.device
) -> int:
    try:
        with torch.no_grad():
            out = model(torch.full((1, *shape), (lower + upper) / 2, device=device))
    except RuntimeError as exc:
        raise BadInputError(f"max margin: the model fails on an input of shape (1, *{shape}): {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 3:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInputError(
            f"max margin: the model must map one input of shape {shape} to logits of shape (1, K) with K >= 3 "
            f"classes (the null is fitted to the K - 1 statistics other than the largest), got {got}"
        )
    if not torch.isfinite(out).all():
        raise DataError(
            "max margin: the model's logits are NaN or infinite at the centre of the input bounds"
        )
    return int(out.shape[1])


def _margins(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """z_c(x) - max_{j != c} z_j(x) for each row and its class c."""
    own = logits.gather(1, classes[:, None]).squeeze(1)
    rest = logits.scatter(1, classes[:, None], -math.inf).amax(1)
    return own - rest


def _ascend(
    model: nn.Module,
    shape: tuple[int, ...],
    num_classes: int,
    config: MaxMarginConfig,
    lower: float,
    upper: float,
    generator: torch.Generator,
    device: torch.device,
    advance: Callable[[], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the largest margin reached by any restart at any iterate, and the input that reached it.
    Row c * restarts + i is the i-th start of class c."""
    k, r = num_classes, config.restarts
    starts = lower + (upper - lower) * torch.rand((k * r, *shape), generator=generator)
    x = starts.to(device).requires_grad_()
    classes = torch.arange(k, device=device).repeat_interleave(r)
    opt = torch.optim.Adam([x], lr=config.lr * (upper - lower))
    best = torch.full((k * r,), -math.inf, device=device)
    best_x = x.detach().clone()
    for step in range(config.steps + 1):
        margin = _margins(model(x), classes)
        with torch.no_grad():
            better = margin > best
            best = torch.where(better, margin, best)
            best_x[better] = x[better]
        if step == config.steps:
            break
        (x.grad,) = torch.autograd.grad(-margin.sum(), [x])
        opt.step()
        with torch.no_grad():
            x.clamp_(lower, upper)
        advance()
    top, index = best.view(k, r).max(1)
    maximisers = best_x.view(k, r, *shape)[torch.arange(k, device=device), index]
    return top.cpu(), maximisers.cpu()
