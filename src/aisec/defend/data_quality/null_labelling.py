"""NULL labelling (Hosseini, Chen, Kannan, Zhang & Poovendran, "Blocking Transferability of Adversarial
Examples in Black-Box Learning Systems", arXiv:1703.04318, 2017).

A black-box attacker crafts adversarial examples on a substitute model of its own and sends them to the
victim, counting on transferability. NULL labelling gives the classifier one more output, NULL ("invalid
input"), and trains it on perturbed copies of its training inputs whose label moves from the true class to
NULL as the perturbation grows: the label of x + delta is (1 - f(|delta|)) * onehot(y) + f(|delta|) *
onehot(NULL), with f zero for small perturbations and one for large ones. A transferred example, which has to
move far from the clean input to cross the substitute's boundary, is then answered NULL (blocked) rather than
with a wrong class.

What we take from the paper, and what we change:

- the extra NULL output and the soft label mixing the true class and NULL through a function f of the
  perturbation's size that is zero below one threshold and one above another (the paper's f over the number
  of perturbed pixels); here f ramps linearly between `null_from * eps` and `null_to * eps`;
- training on clean and perturbed copies of every batch (the paper augments the training set with perturbed
  copies and keeps the clean ones, so clean inputs keep their labels);
- perturbations at random sizes, some random and some adversarial (the paper perturbs a random number of
  pixels, and crafts perturbations along the classifier's gradient); since our threat model bounds the L-inf
  norm, the size drawn is the L-inf radius, uniform in [0, eps], not a pixel count. A copy is perturbed along
  uniform random signs with probability `random_share`, otherwise along the sign of the gradient of the
  cross-entropy over the original classes (an FGSM step of that size on the model being trained, so the
  directions follow it as it learns).

The paper trains on clean data first and then on the augmented set, with f's thresholds chosen for the data
set; here training runs once, from scratch, through `aisec.core.training.train` with a batch step, and the
thresholds are fractions of the budget. NULL labelling is meant for black-box attackers: a white-box attacker
who knows about NULL aims at any other class and breaks it (`aisec.attacks.evasion.null_aware`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import TrainingConfig, evaluating, train
from aisec.data.dataset import LabelledData


@dataclass(frozen=True)
class NullLabellingConfig:
    """eps: the largest L-inf perturbation trained on, in input units (the attacker's budget); each perturbed
    copy gets a size drawn uniformly from [0, eps]. null_from, null_to: f's thresholds as fractions of eps;
    a copy of size s is labelled NULL with probability f(s) = clamp((s / eps - null_from) / (null_to -
    null_from), 0, 1) and its true class with the rest. random_share: the probability that a copy is
    perturbed along uniform random signs; the others follow the sign of the input gradient of the
    cross-entropy over the original classes (FGSM on the model being trained).

    The defaults, measured on the digits CNN over five seeds and two kernel sets
    (tests/test_null_labelling.py), cut the success of APGD examples transferred from a substitute trained on
    disjoint data from 15-19 % to 0-0.2 % at eps 0.1 and from 62-75 % to 0-0.2 % at eps 0.2, and answer NULL
    on 0-1.5 % of clean test inputs. All-random copies (random_share=1) block as well at less cost (no
    gradient) but leave the model easier for a white-box attacker than plain training; all-FGSM copies (0)
    answer NULL on 4-5 % of clean inputs at eps 0.1."""

    eps: float
    null_from: float = 0.3
    null_to: float = 0.7
    random_share: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and 0 < self.eps < math.inf):
            raise BadInputError(f"null_labelling.eps must be a positive number, got {self.eps!r}")
        if not 0 <= self.null_from < self.null_to <= 1:
            raise BadInputError(
                "null_labelling: need 0 <= null_from < null_to <= 1 (fractions of eps), got "
                f"null_from {self.null_from!r}, null_to {self.null_to!r}"
            )
        if not 0 <= self.random_share <= 1:
            raise BadInputError(f"null_labelling.random_share must be in [0, 1], got {self.random_share!r}")

    def null_share(self, size: torch.Tensor) -> torch.Tensor:
        """f: the NULL probability of the label of a copy perturbed by `size` (L-inf, input units)."""
        ramp = (size / self.eps - self.null_from) / (self.null_to - self.null_from)
        return ramp.clamp(0.0, 1.0)


@dataclass(frozen=True)
class NullLabellingResult:
    """The trained model (eval mode) with one more output than the original, the NULL output's index (the
    original number of classes), and the wall-clock seconds training took."""

    model: nn.Module
    null_class: int
    seconds: float


def with_null_class(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose last layer, an nn.Linear with k outputs, has k + 1: the first k keep the
    original weights and biases, the new one (the NULL class, index k) starts at zero weight and bias.

    "Last layer" is the last leaf module in registration order (the output layer of an nn.Sequential).
    Raises BadInputError naming that layer when it is not an nn.Linear."""
    name, old = [(name, m) for name, m in model.named_modules() if not list(m.children())][-1]
    if not isinstance(old, nn.Linear):
        raise BadInputError(
            "null_labelling: the model's last layer must be an nn.Linear to add a NULL output; its last layer "
            f"is {name or '<model>'} ({type(old).__name__})"
        )
    # skip_init: no draw from torch's global generator, every value is set below
    new = nn.utils.skip_init(
        nn.Linear,
        old.in_features,
        old.out_features + 1,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: old.out_features] = old.weight
        if new.bias is not None and old.bias is not None:
            new.bias.zero_()
            new.bias[: old.out_features] = old.bias
    if not name:  # the model is itself the Linear layer
        return new
    copied = copy.deepcopy(model)
    parent, _, child = name.rpartition(".")
    setattr(copied.get_submodule(parent), child, new)
    return copied


def train_null_labelling(
    model: nn.Module,
    data: LabelledData,
    config: NullLabellingConfig,
    training: TrainingConfig | None = None,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    generator: torch.Generator,
) -> NullLabellingResult:
    """Train `with_null_class(model)` (untrained, k outputs) on `data` with NULL labelling (Hosseini et al.
    2017): every batch is the clean inputs with their labels and one perturbed copy of each, of L-inf size
    s ~ U[0, eps] along random or gradient signs (`config.random_share`), kept in [lower, upper], labelled
    with NULL probability f(s) and the true class with the rest; the loss is the mean cross-entropy over both
    halves. Training goes through `aisec.core.training.train` (`training`, default the demo recipe) with
    `generator` drawing the batch order, the sizes and the signs. The result has k + 1 outputs, NULL at index
    k; `model` itself is left untouched.

    Raises BadInputError before training for a budget wider than the input range, inputs outside it, labels
    that are not class indices of the model's k outputs, or a last layer that is not nn.Linear."""
    if not lower < upper:
        raise BadInputError(f"null_labelling: lower {lower:g} must be below upper {upper:g}")
    if config.eps > upper - lower:
        raise BadInputError(
            f"null_labelling.eps: {config.eps:g} exceeds the input range [{lower:g}, {upper:g}] (width "
            f"{upper - lower:g}); budgets are in input units"
        )
    defended = with_null_class(model)
    classes = _outputs(model, data)
    _check_data(data, classes, lower, upper)
    step = _NullStep(config, classes, lower, upper)
    start = time.perf_counter()
    trained = train(defended, data, training, generator=generator, step=step).model
    return NullLabellingResult(trained, classes, time.perf_counter() - start)


def null_rate(model: nn.Module, x: torch.Tensor, null_class: int, *, batch_size: int = 4096) -> float:
    """The share of the inputs `x` that `model` answers with `null_class` (top-1), in eval mode without
    gradients; the model's mode is restored. On clean inputs this is the defence's cost; on transferred
    adversarial examples, the share it blocks."""
    if len(x) == 0:
        return 0.0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    hits = 0
    with evaluating(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            hits += int((model(x[i : i + batch_size].to(device)).argmax(1) == null_class).sum())
    return hits / len(x)


class _NullStep:
    """The batch step of NULL labelling: the clean batch plus one perturbed, soft-labelled copy of it."""

    def __init__(self, config: NullLabellingConfig, classes: int, lower: float, upper: float) -> None:
        self.config, self.classes, self.lower, self.upper = config, classes, lower, upper

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        n, k = len(x), self.classes
        size = self.config.eps * torch.rand(n, generator=generator, device=generator.device).to(x)
        signs = 2 * torch.randint(0, 2, x.shape, generator=generator, device=generator.device).to(x) - 1
        at_random = (
            torch.rand(n, generator=generator, device=generator.device).to(x.device)
            < self.config.random_share
        )
        if not bool(at_random.all()):
            signs = torch.where(_rows(at_random, x), signs, _gradient_sign(model, x, y, k))
        perturbed = (x + _rows(size, x) * signs).clamp(self.lower, self.upper)
        null = self.config.null_share(size)
        soft = torch.zeros(n, k + 1, dtype=x.dtype, device=x.device)
        soft[torch.arange(n, device=x.device), y] = 1 - null
        soft[:, k] = null
        targets = torch.cat([nn.functional.one_hot(y, k + 1).to(x.dtype), soft])
        return nn.functional.cross_entropy(model(torch.cat([x, perturbed])), targets)


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An (n,) tensor viewed to broadcast over a batch like `like`."""
    return values.view(-1, *[1] * (like.dim() - 1))


def _gradient_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """sign(d CE(logits over the original classes, y) / dx), in eval mode, with no parameter gradient."""
    x_in = x.detach().requires_grad_(True)
    with evaluating(model):
        loss = nn.functional.cross_entropy(model(x_in)[:, :classes], y)
        (grad,) = torch.autograd.grad(loss, x_in)
    return grad.sign()


def _outputs(model: nn.Module, data: LabelledData) -> int:
    """The number of outputs of `model` on data's inputs (DataError when it cannot take them)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with evaluating(model), torch.no_grad():
            out = model(data.x[:2].to(device))
    except RuntimeError as e:
        raise DataError(
            f"{data.name}: the model cannot take inputs of shape {tuple(data.x.shape[1:])}: {e}"
        ) from None
    if out.dim() != 2:
        raise DataError(
            f"{data.name}: the model gives outputs of shape {tuple(out.shape[1:])}, not class scores"
        )
    return int(out.shape[1])


def _check_data(data: LabelledData, classes: int, lower: float, upper: float) -> None:
    if data.y.is_floating_point() or data.y.dim() != 1:
        raise DataError(f"{data.name}: NULL labelling needs class indices as labels, got {data.y.dtype}")
    if int(data.y.min()) < 0 or int(data.y.max()) >= classes:
        raise DataError(
            f"{data.name}: labels must lie in [0, {classes - 1}] (the model's {classes} outputs), got "
            f"[{int(data.y.min())}, {int(data.y.max())}]"
        )
    if not bool(torch.isfinite(data.x).all()):
        raise DataError(f"{data.name}: inputs contain NaN or infinite values")
    low, high = float(data.x.min()), float(data.x.max())
    if low < lower - 1e-6 or high > upper + 1e-6:
        raise DataError(
            f"{data.name}: inputs lie in [{low:.4g}, {high:.4g}], outside the input range "
            f"[{lower:g}, {upper:g}]"
        )
