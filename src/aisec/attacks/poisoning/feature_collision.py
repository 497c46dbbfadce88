"""Clean-label feature collision (Shafahi et al. 2018, "Poison Frogs! Targeted Clean-Label Poisoning Attacks on
Neural Networks", NeurIPS).

The attacker wants one target input t classified as a base class. Each poison starts from a base sample b of
that class, optionally watermarked toward the target (b <- (1 - opacity) b + opacity t), and is optimised to
x = argmin ||f(x) - f(t)||^2 + beta ||x - b||^2 by forward-backward splitting: a gradient step on the feature
term, then the proximal step of the distance term, x <- (x + lr beta b) / (1 + lr beta). The poisons keep
their correct base label and replace their bases in the training set. The paper's threat setting is transfer
learning: the victim retrains only the last layer over the fixed feature extractor f (`retrain_last_layer`),
so the poisons, sitting next to t in feature space with the base label, pull t across the boundary.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from aisec.attacks.poisoning.result import PoisonedData, check_classes, check_rate, poison_count
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import global_rng
from aisec.core.training import TrainingConfig, train
from aisec.data.dataset import LabelledData


@dataclass(frozen=True)
class FeatureCollision:
    """`poisoned`: the training set with the poisons in place of their bases (same indices, same labels);
    `poisons`: the poison inputs (count, *sample_shape), in the order of `poisoned.indices`;
    `feature_distance`: ||f(poison) - f(target)|| per poison, and `base_distance` the same for its base
    before optimisation, so the collision achieved can be read off."""

    poisoned: PoisonedData
    poisons: torch.Tensor
    feature_distance: torch.Tensor
    base_distance: torch.Tensor


def feature_collision(
    feature_extractor: nn.Module,
    data: LabelledData,
    target_x: torch.Tensor,
    base_class: int,
    rate: float | None = None,
    *,
    count: int | None = None,
    beta: float = 0.25,
    steps: int = 500,
    lr: float = 1e-3,
    opacity: float = 0.0,
    bases: Literal["random", "nearest"] = "random",
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator | None = None,
) -> FeatureCollision:
    """Poison `data` so that a model retrained on it puts `target_x` (one sample) in `base_class`.

    Exactly one of `rate` (fraction of the training set) or `count` poisons are made from samples of
    `base_class`: drawn at random (`bases="random"`, as in the paper) or the ones nearest the target in
    feature space (`bases="nearest"`, less to move). beta weighs the input-space distance to the base
    (Shafahi et al. use beta0 (2048 / input dimension)^2 with beta0 = 0.25 for 2048 features: 0.25 where
    features and inputs have the same dimension, as the digits CNN's 64); lr is the gradient step on the
    feature term and suits features of norm ~50; `opacity` > 0 watermarks the bases toward the target first,
    as the paper does when many poisons are needed. Raises before any work on a target that is not one finite
    sample of the data's shape, an absent base class, fewer than two classes, a bad rate or count, an unknown
    base selection, or non-positive beta, lr or steps.
    """
    sample_shape = tuple(data.x.shape[1:])
    target = _one_sample(target_x, sample_shape)
    check_classes(data)
    if not (data.y == base_class).any():
        raise DataError(f"{data.name}: base class {base_class} does not occur in the labels")
    for what, value in (("beta", beta), ("lr", lr)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise BadInputError(f"feature collision: {what} must be a positive number, got {value!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BadInputError(f"feature collision: steps must be a positive integer, got {steps!r}")
    if not (isinstance(opacity, (int, float)) and 0 <= opacity < 1):
        raise BadInputError(f"feature collision: watermark opacity must be in [0, 1), got {opacity!r}")
    if bases not in ("random", "nearest"):
        raise BadInputError(f"feature collision: bases must be 'random' or 'nearest', got {bases!r}")
    pool = (data.y == base_class).nonzero().flatten()
    n = _count(len(data), rate, count, len(pool), base_class)
    generator = generator or torch.Generator().manual_seed(0)
    with torch.no_grad():
        target_features = feature_extractor(target).flatten(1)
        if bases == "nearest":
            gap = (feature_extractor(data.x[pool]).flatten(1) - target_features).norm(dim=1)
            chosen = pool[gap.argsort(stable=True)[:n]].sort().values
        else:
            chosen = pool[torch.randperm(len(pool), generator=generator)[:n]].sort().values
        starts = (1 - opacity) * data.x[chosen] + opacity * target
        base_distance = (feature_extractor(starts).flatten(1) - target_features).norm(dim=1)
    poisons = _forward_backward(feature_extractor, starts, target_features, beta, steps, lr, lower, upper)
    with torch.no_grad():
        feature_distance = (feature_extractor(poisons).flatten(1) - target_features).norm(dim=1)

    x = data.x.clone()
    x[chosen] = poisons
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[chosen] = True
    name = f"{data.name} + {n} feature-collision poisons (class {base_class})"
    result = PoisonedData(LabelledData(x, data.y, name), mask, "poisoning/feature_collision", n / len(data))
    return FeatureCollision(result, poisons, feature_distance, base_distance)


def _forward_backward(
    f: nn.Module,
    bases: torch.Tensor,
    target_features: torch.Tensor,
    beta: float,
    steps: int,
    lr: float,
    lower: float,
    upper: float,
) -> torch.Tensor:
    """Shafahi et al.'s Algorithm 1 on a batch of bases, clamped to [lower, upper] after every iteration."""
    x = bases.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = (f(x).flatten(1) - target_features).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x - lr * grad
            x = ((x + lr * beta * bases) / (1 + lr * beta)).clamp(lower, upper)
    return x.detach()


def retrain_last_layer(
    model: nn.Module,
    data: LabelledData,
    *,
    epochs: int = 50,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """The transfer-learning victim: a copy of `model` whose final layer (its last `nn.Linear`, which must
    produce the logits) is re-initialised and trained with Adam on `data`, every other weight frozen.

    The layer's inputs are computed once over the frozen network, so each epoch costs only the linear layer.
    """
    victim = copy.deepcopy(model).eval()
    head = _last_linear(victim)
    features = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].detach()))
    with torch.no_grad():
        victim(data.x)
    hook.remove()
    z = features[0].flatten(1)
    with global_rng(seed):  # nn.Linear draws its initial weights from torch's global generator
        head.reset_parameters()
    for p in victim.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    config = TrainingConfig(epochs=epochs, lr=lr, batch_size=batch_size)
    train(
        head,
        LabelledData(z, data.y, f"{data.name} (features)"),
        config,
        generator=torch.Generator().manual_seed(seed),
    )
    return victim.eval()


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInputError(f"retrain_last_layer: {type(model).__name__} has no nn.Linear layer to retrain")
    return linears[-1]


def _one_sample(target_x: torch.Tensor, sample_shape: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(target_x, dtype=torch.float32)
    if tuple(t.shape) == sample_shape:
        t = t[None]
    if tuple(t.shape) != (1, *sample_shape):
        raise DataError(
            f"feature collision: the target must be one sample of shape {sample_shape}, got {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise DataError("feature collision: the target input contains NaN or infinite values")
    return t


def _count(n: int, rate: float | None, count: int | None, available: int, base_class: int) -> int:
    if (rate is None) == (count is None):
        raise BadInputError(
            f"feature collision: give exactly one of rate or count, got rate={rate}, count={count}"
        )
    what = f"of base class {base_class}"
    if rate is not None:
        return poison_count(n, check_rate(rate), available, what)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadInputError(f"feature collision: poison count must be a positive integer, got {count!r}")
    if count > available:
        raise DataError(f"{count} poisons need {count} base samples, but only {available} are {what}")
    return count
