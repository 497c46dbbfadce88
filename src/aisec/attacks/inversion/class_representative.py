"""Class-representative inversion (Fredrikson, Jha and Ristenpart, "Model Inversion Attacks that Exploit
Confidence Information and Basic Countermeasures", CCS 2015, section 5).

Starting from a blank (or given) input, minimise c(x) = 1 - p_c(x) + lambda * ||x - x0||^2 by projected
signed-gradient descent within the input bounds, the confidence p_c read from the target. With white-box access the
gradient is exact; with scores only it is estimated from queries by antithetic Gaussian smoothing (the NES
estimator of Ilyas et al. 2018), 2 * `samples` queries per step, within a query budget.

How close a reconstruction comes to the class's real training data is measured by `identification`: the
reconstruction is compared with every class's mean training example, and counts as identifying its class
when its own class's mean is the nearest (L2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.attacks.evasion.gradients import input_gradient
from aisec.core.errors import BadInputError, CapabilityError
from aisec.targets.base import Access, Target, WhiteBoxTarget


@dataclass(frozen=True)
class InversionConfig:
    steps: int = 300
    step_size: float = 0.05
    l2_weight: float = 0.0  # lambda: keeps the reconstruction near its start
    samples: int = 20  # score-only: Gaussian directions per gradient estimate (2 queries each)
    sigma: float = 0.05  # score-only: smoothing radius
    query_budget: int | None = None  # score-only: stop when spent


@dataclass(frozen=True)
class InversionResult:
    """One reconstruction per requested class, the target's confidence in it, and the queries spent."""

    classes: tuple[int, ...]
    images: torch.Tensor  # (len(classes), *spec.shape), within the input bounds
    confidence: torch.Tensor  # p_c of each reconstruction
    queries: int


def invert_classes(
    target: Target,
    classes: list[int] | None = None,
    config: InversionConfig | None = None,
    *,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> InversionResult:
    """Reconstruct a representative input of each class (all classes by default)."""
    config = config or InversionConfig()
    spec = target.spec
    classes = list(range(spec.num_classes)) if classes is None else list(classes)
    if not target.access.allows(Access.SCORES):
        raise CapabilityError(f"inversion needs class scores; {target.describe()} gives labels only")
    if any(not 0 <= c < spec.num_classes for c in classes):
        raise BadInputError(f"classes must be in [0, {spec.num_classes}), got {classes}")
    white_box = isinstance(target, WhiteBoxTarget) and target.access is Access.WHITE_BOX
    if not white_box and config.query_budget is not None and config.query_budget < 2 * config.samples + 1:
        raise BadInputError(f"a query budget of {config.query_budget} cannot pay for one gradient estimate "
                            f"({2 * config.samples + 1} queries)")  # fmt: skip
    before = target.queries.total
    x0 = (
        torch.zeros((len(classes), *spec.shape)) if start is None else start.expand(len(classes), *spec.shape)
    )
    x0 = x0.to(target.device).float()
    lo, hi = spec.bounds(x0)
    x0 = torch.max(torch.min(x0, hi), lo)
    labels = torch.tensor(classes, device=x0.device)
    x = x0.clone()

    def cost(candidate: torch.Tensor) -> torch.Tensor:
        p = _class_probability(target, candidate, labels, white_box)
        return 1 - p + config.l2_weight * (candidate - x0).flatten(1).pow(2).sum(1)

    for _ in range(config.steps):
        if white_box:
            x_var = x.clone().requires_grad_(True)
            grad = input_gradient(cost(x_var).sum(), x_var)
        else:
            if (
                config.query_budget is not None
                # a step's estimates, and the final confidence query (len(x)), must fit in the budget
                and target.queries.total - before + (2 * config.samples + 1) * len(x) > config.query_budget
            ):
                break
            grad = _nes_gradient(cost, x, config, generator)
        x = torch.max(torch.min(x - config.step_size * grad.sign(), hi), lo)
    with torch.no_grad():
        confidence = _class_probability(target, x, labels, white_box=False)
    return InversionResult(tuple(classes), x.detach(), confidence.detach(), target.queries.total - before)


def _class_probability(
    target: Target, x: torch.Tensor, labels: torch.Tensor, white_box: bool
) -> torch.Tensor:
    if white_box:
        return target.logits(x).softmax(1).gather(1, labels[:, None]).squeeze(1)  # type: ignore[attr-defined]
    return target.probabilities(x).gather(1, labels[:, None]).squeeze(1)


def _nes_gradient(
    cost, x: torch.Tensor, config: InversionConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Antithetic Gaussian estimate of the cost's gradient at each row of x (Ilyas et al. 2018)."""
    total = torch.zeros_like(x)
    for _ in range(config.samples):
        u = torch.randn(x.shape, generator=generator, device=x.device)
        with torch.no_grad():
            diff = cost(x + config.sigma * u) - cost(x - config.sigma * u)
        total += diff.view(-1, *([1] * (x.dim() - 1))) * u
    return total / (2 * config.sigma * config.samples)


def identification(images: torch.Tensor, classes: tuple[int, ...], x_train: torch.Tensor,
                   y_train: torch.Tensor) -> tuple[float, torch.Tensor]:  # fmt: skip
    """(share of reconstructions whose nearest class mean is their own class's, each one's L2 distance to its
    own class's mean training example)."""
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(int(y_train.max()) + 1)])
    distances = torch.cdist(images.flatten(1).float(), means.flatten(1).float())
    own = torch.tensor(classes)
    hits = int((distances.argmin(1) == own).sum()) / len(classes)  # exact: 7 of 10 is 0.7, not 0.6999999
    return hits, distances.gather(1, own[:, None]).squeeze(1)
