"""Explanations of a model's decisions: how much each input feature contributed to the class a sample is given.

White-box attributions, computed with Captum (Kokhlikyan et al., "Captum: A unified and generic model
interpretability library for PyTorch", 2020):

- integrated gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017): the
  gradient averaged along the straight path from a baseline to x, times (x - baseline). Complete: the
  attributions sum to f_t(x) - f_t(baseline), up to the error of the path integral's quadrature, which
  `completeness_error` measures;
- saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
  Classification Models and Saliency Maps", ICLR workshop 2014): |d f_t / d x|;
- occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014): how much
  f_t falls when a window of the input is set to the baseline, averaged over the windows covering a feature;
- DeepLIFT (Shrikumar, Greenside & Kundaje, "Learning Important Features Through Propagating Activation
  Differences", ICML 2017), Captum's Rescale rule, one backward pass: complete for networks of linear layers and
  ReLUs; Captum 0.9's max-pooling rule is not (on 100 digits, the digits CNN's largest error per seed was
  2.6-15.9 % of f_t(x) - f_t(0)).

For a model that answers only labels, permutation importance (Breiman, "Random Forests", Machine Learning 2001;
Fisher, Rudin & Dominici, "All Models are Wrong, but Many are Useful: Learning a Variable's Importance by
Studying an Entire Class of Prediction Models Simultaneously", JMLR 2019): the accuracy, and each class's
recall, lost when one feature is permuted across the samples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from captum.attr import DeepLift, IntegratedGradients, Occlusion, Saliency  # type: ignore[import-untyped]
from torch import nn

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import evaluating

METHODS = ("integrated_gradients", "saliency", "occlusion", "deeplift")
# The methods whose attributions sum to f_t(x) - f_t(baseline) (completeness, "summation to delta").
COMPLETE_METHODS = ("integrated_gradients", "deeplift")
# The module types whose gradients Captum's DeepLift replaces by its multipliers (Captum 0.9's
# `captum.attr._core.deep_lift.SUPPORTED_NON_LINEAR`): activations and max pooling.
NONLINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softmax,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
)
# Rows per forward pass where no gradient is taken: occlusion's occluded copies of a batch, completeness_error.
_MAX_ROWS = 4096
# The smallest |f_t(x) - f_t(baseline)| completeness_error divides by.
_EPS = 1e-12


@dataclass(frozen=True)
class ExplanationConfig:
    """method: one of METHODS. baseline: the value every feature of the baseline (integrated gradients, DeepLift)
    and of an occluded window takes; None: the input's lower bound (a black image for images in [0, 1]).

    steps: integrated gradients' n_steps, points of Captum's default Gauss-Legendre quadrature of the path
    integral, chosen as the smallest that met completeness within 1 % on every sample: on the digits CNN
    (`fit(..., epochs=10)`, seeds 0-9, all 540 test digits, each explaining its true class) the largest
    |sum(attr) - (f_t(x) - f_t(0))| / |f_t(x) - f_t(0)| was 4.3 % at 64 steps, 1.6 % at 128, 1.3 % at 200,
    1.2 % at 224 and 0.90 % at 256 (0.84 % under torch's portable kernels, where 240 reached 1.00 %). The error
    does not fall steadily with the steps (a ReLU kink on the path between two quadrature points), so a few
    samples keep it above 1 % long after the median is far below (0.02-0.05 % on 100 digits at 256).
    internal_batch_size: rows per forward pass inside integrated gradients (Captum's internal_batch_size), so
    that memory does not grow with samples x steps.
    window: occlusion's square window (pixels), slid with stride 1 over images (n, C, H, W) and covering every
    channel; inputs of any other shape are occluded one feature at a time.
    """

    method: str = "integrated_gradients"
    steps: int = 256
    internal_batch_size: int = 256
    baseline: float | None = None
    window: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(f"explanations.method: {self.method!r} is not one of {', '.join(METHODS)}")
        for field in ("steps", "internal_batch_size", "window"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadInputError(f"explanations.{field}: {value!r} is not a positive integer")
        if self.baseline is not None and (
            isinstance(self.baseline, bool)
            or not isinstance(self.baseline, (int, float))
            or not math.isfinite(self.baseline)
        ):
            raise BadInputError(f"explanations.baseline: {self.baseline!r} is not a finite number or None")


@dataclass(frozen=True)
class Attributions:
    """values: one attribution per input feature, the shape of x, on CPU (positive: the feature raised the
    target's score). target: (n,) the class each row explains. convergence_delta: integrated gradients'
    sum(values) - (f_t(x) - f_t(baseline)) per sample, as Captum returns it; None for the other methods."""

    method: str
    values: torch.Tensor
    target: torch.Tensor
    convergence_delta: torch.Tensor | None


@dataclass(frozen=True)
class PermutationImportance:
    """baseline_accuracy and baseline_recall (K,): the model's accuracy and per-class recall on the samples as
    given (a class without samples has recall 0). drop (F,) and drop_std (F,): the mean and the standard
    deviation (over the repeats) of the accuracy lost when feature f is permuted; recall_drop (F, K): the mean
    recall each class loses. Features left out of the measurement (`features`) are NaN."""

    baseline_accuracy: float
    baseline_recall: torch.Tensor
    drop: torch.Tensor
    drop_std: torch.Tensor
    recall_drop: torch.Tensor
    repeats: int


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    config: ExplanationConfig = ExplanationConfig(),
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    batch_size: int = 256,
) -> Attributions:
    """Attributions of the logits `model(x)[i, target[i]]` to the features of x (in [lower, upper]) by
    `config.method`, computed `batch_size` samples at a time (integrated gradients at most
    `config.internal_batch_size`) on the model's device, in eval mode; the model's mode is restored and its
    weights get no gradient.

    Raises BadInputError before any attribution is computed for an input that is not finite or leaves the
    bounds, a target out of range, a model whose output is not (n, classes), a baseline or an occlusion window
    that does not fit, and DeepLift on a model that calls a nonlinear module more than once in a forward pass:
    Captum's DeepLift stores each nonlinearity's input and output on the module from a forward hook and
    replaces its gradient by (output - baseline output) / (input - baseline input); a module called twice
    keeps one call's values only, so the other call's multipliers are wrong (Captum's documented limitation).
    """
    _check_bounds(lower, upper, "attribute")
    x = _check_inputs(x, lower, upper, "attribute.x")
    _check_batch_size(batch_size, "attribute.batch_size")
    baseline = _baseline(config.baseline, lower, upper)
    num_classes = _num_classes(model, x)
    target = _check_labels(target, len(x), num_classes, "attribute.target")
    if config.method == "occlusion" and x.dim() == 4 and config.window > min(x.shape[2:]):
        raise BadInputError(
            f"explanations.window: {config.window} is larger than the {x.shape[2]}x{x.shape[3]} images"
        )
    if config.method == "deeplift":
        reused = reused_modules(model, x[:1])
        if reused:
            raise BadInputError(
                f"explanations.method: DeepLift gives wrong attributions for this model, whose forward pass "
                f"calls {', '.join(reused)} more than once; use integrated_gradients"
            )
    chunk = batch_size
    if config.method == "integrated_gradients":
        chunk = min(batch_size, config.internal_batch_size)
    device = _device(model)
    values: list[torch.Tensor] = []
    deltas: list[torch.Tensor] = []
    with _frozen(model):
        for i in range(0, len(x), chunk):
            xb, tb = x[i : i + chunk].to(device), target[i : i + chunk].to(device)
            value, delta = _attribute_batch(model, xb, tb, config, baseline)
            values.append(value.detach().cpu())
            if delta is not None:
                deltas.append(delta.detach().cpu())
    delta = torch.cat(deltas) if deltas else None
    return Attributions(config.method, torch.cat(values), target.clone(), delta)


def completeness_error(
    model: nn.Module,
    x: torch.Tensor,
    attributions: Attributions,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    baseline: float | None = None,
) -> torch.Tensor:
    """(n,) per sample |sum(attr) - (f_t(x) - f_t(b))| / max(|f_t(x) - f_t(b)|, 1e-12), in float64 on CPU, where
    b is the baseline the attributions were computed from (`baseline`, None: `lower`) and t their target.
    Defined for the complete methods, integrated gradients and DeepLift. The ratio is ill-conditioned where the
    target's logit barely moves from the baseline (a misclassified sample's true class): an MLP on the digits
    gave |f_t(x) - f_t(0)| = 0.007 on one, where an absolute error of 0.0005 read as 8 %."""
    if attributions.method not in COMPLETE_METHODS:
        raise BadInputError(
            f"completeness_error: {attributions.method!r} attributions need not sum to f(x) - f(baseline); "
            f"only {' and '.join(COMPLETE_METHODS)} are complete"
        )
    _check_bounds(lower, upper, "completeness_error")
    x = _check_inputs(x, lower, upper, "completeness_error.x")
    if attributions.values.shape != x.shape:
        raise DataError(
            f"completeness_error.attributions: values of shape {tuple(attributions.values.shape)} do not "
            f"match x of shape {tuple(x.shape)}"
        )
    b = _baseline(baseline, lower, upper)
    _check_model(model, "completeness_error.model")
    target = attributions.target
    device = _device(model)
    gaps = []
    with evaluating(model), torch.no_grad():
        for i in range(0, len(x), _MAX_ROWS):
            xb, tb = x[i : i + _MAX_ROWS].to(device), target[i : i + _MAX_ROWS, None].to(device)
            fx = model(xb).gather(1, tb)[:, 0]
            fb = model(torch.full_like(xb, b)).gather(1, tb)[:, 0]
            gaps.append((fx - fb).double().cpu())
    gap = torch.cat(gaps)
    total = attributions.values.flatten(1).double().sum(1)
    return (total - gap).abs() / gap.abs().clamp_min(_EPS)


def reused_modules(model: nn.Module, sample: torch.Tensor) -> tuple[str, ...]:
    """The names (as `model.named_modules()` gives them) of the nonlinear modules DeepLift overrides (the
    activations and max pooling of NONLINEAR_MODULES) that one forward pass of `sample` calls more than once,
    counted by forward hooks, in eval mode and without gradients."""
    _check_model(model, "reused_modules.model")
    if not isinstance(sample, torch.Tensor) or sample.dim() < 2 or len(sample) == 0:
        raise BadInputError("reused_modules.sample: expected a non-empty batch tensor (n, ...)")
    calls: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, NONLINEAR_MODULES):
            calls[name] = 0
            hooks.append(module.register_forward_hook(_counter(calls, name)))
    try:
        with evaluating(model), torch.no_grad():
            model(sample.to(_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return tuple(name for name, count in calls.items() if count > 1)


def class_mean_maps(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, H, W): per class, the mean over its samples of |attribution| summed over channels, from image
    attributions (n, C, H, W) and each row's class `labels` (n,); a class with no sample gets zeros."""
    if not isinstance(values, torch.Tensor) or values.dim() != 4:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise DataError(f"class_mean_maps.values: expected image attributions (n, C, H, W), got {shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadInputError(f"class_mean_maps.num_classes: {num_classes!r} is not a positive integer")
    labels = _check_labels(labels, len(values), num_classes, "class_mean_maps.labels")
    maps = values.detach().cpu().abs().sum(1)
    sums = torch.zeros(num_classes, *maps.shape[1:], dtype=maps.dtype).index_add_(0, labels, maps)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    return sums / counts[:, None, None].to(maps.dtype)


def permutation_importance(
    labels: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    repeats: int = 5,
    generator: torch.Generator | None = None,
    features: Sequence[int] | None = None,
) -> PermutationImportance:
    """Permutation importance of each feature of x (flattened to (n, F)) for the black box `labels(x) -> (n,)`
    (an aisec Target's `.labels`, any callable over tensors): feature f's values are permuted across the
    samples, `repeats` times with permutations drawn from `generator`, and the labels re-read; what the model
    loses in accuracy against y, and in each class's recall, is that feature's importance. `features` limits
    the measurement to those features (the rest are NaN).

    Written here rather than taken from sklearn.inspection.permutation_importance, which needs an estimator or a
    scorer over numpy arrays and returns one score per feature: we need each class's recall drop (a feature
    only one class depends on) and any callable over tensors. All repeats of a feature go to `labels` in one
    call of repeats x n rows, so a served model is queried in batches: one call per measured feature and one
    for the samples as given.
    """
    if not callable(labels):
        raise BadInputError(
            f"permutation_importance.labels: expected a callable, got {type(labels).__name__}"
        )
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) < 2:
        raise DataError("permutation_importance.x: expected a tensor (n, ...) of at least 2 samples")
    if not torch.isfinite(x).all():
        raise DataError("permutation_importance.x: contains NaN or infinite values")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise BadInputError(f"permutation_importance.num_classes: {num_classes!r} is not an integer >= 2")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise BadInputError(f"permutation_importance.repeats: {repeats!r} is not a positive integer")
    y = _check_labels(y, len(x), num_classes, "permutation_importance.y")
    n = len(x)
    flat = x.detach().reshape(n, -1)
    measured = _check_features(features, flat.shape[1])
    generator = generator or torch.Generator().manual_seed(0)

    predicted = _read_labels(labels, x.detach(), n, num_classes)
    base_accuracy, base_recall = _accuracy_and_recall(predicted[None], y, num_classes)
    drop = torch.full((flat.shape[1],), math.nan, dtype=torch.float64)
    drop_std = drop.clone()
    recall_drop = torch.full((flat.shape[1], num_classes), math.nan, dtype=torch.float64)
    for f in measured:
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(repeats)])
        permuted = flat.repeat(repeats, 1)
        permuted[:, f] = flat[order.flatten().to(flat.device), f]
        relabelled = _read_labels(
            labels, permuted.reshape(repeats * n, *x.shape[1:]), repeats * n, num_classes
        )
        accuracy, recall = _accuracy_and_recall(relabelled.view(repeats, n), y, num_classes)
        lost = base_accuracy - accuracy
        drop[f], drop_std[f] = lost.mean(), lost.std(correction=0)
        recall_drop[f] = (base_recall - recall).mean(0)
    return PermutationImportance(
        baseline_accuracy=float(base_accuracy[0]),
        baseline_recall=base_recall[0],
        drop=drop,
        drop_std=drop_std,
        recall_drop=recall_drop,
        repeats=repeats,
    )


def _attribute_batch(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, config: ExplanationConfig, baseline: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch's attributions by config.method, and integrated gradients' convergence delta."""
    if config.method == "integrated_gradients":
        values, delta = IntegratedGradients(model).attribute(
            x,
            baselines=baseline,
            target=target,
            n_steps=config.steps,
            internal_batch_size=config.internal_batch_size,
            return_convergence_delta=True,
        )
        return values, delta
    if config.method == "saliency":
        return Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=True), None
    if config.method == "deeplift":
        with warnings.catch_warnings():
            # Captum announces, on every call, the hooks it sets on the nonlinearities and removes afterwards.
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
            values = DeepLift(model).attribute(x.clone().requires_grad_(), baselines=baseline, target=target)
        return values, None
    if x.dim() == 4:
        window: tuple[int, ...] = (x.shape[1], config.window, config.window)
        strides: tuple[int, ...] = (x.shape[1], 1, 1)
    else:
        window = strides = (1,) * (x.dim() - 1)
    values = Occlusion(model).attribute(
        x,
        sliding_window_shapes=window,
        strides=strides,
        baselines=baseline,
        target=target,
        perturbations_per_eval=max(1, _MAX_ROWS // len(x)),
    )
    return values, None


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode, and the weights' requires_grad off, so that attributions leave no gradient on them; both are
    restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with evaluating(model):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _counter(calls: dict[str, int], name: str) -> Callable[[nn.Module, object, object], None]:
    def count(_module: nn.Module, _inputs: object, _output: object) -> None:
        calls[name] += 1

    return count


def _check_model(model: object, field: str) -> None:
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{field}: expected a torch nn.Module, got {type(model).__name__}")


def _check_bounds(lower: float, upper: float, where: str) -> None:
    for name, bound in (("lower", lower), ("upper", upper)):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise BadInputError(f"{where}.{name}: {bound!r} is not a finite number")
    if not lower < upper:
        raise BadInputError(f"{where}: lower {lower!r} is not below upper {upper!r}")


def _check_inputs(x: object, lower: float, upper: float, field: str) -> torch.Tensor:
    """x as a detached floating tensor (n, ...), n >= 1, finite and inside [lower, upper]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise DataError(f"{field}: expected a non-empty floating-point tensor (n, ...)")
    if not torch.isfinite(x).all():
        raise DataError(f"{field}: contains NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < lower or high > upper:
        raise DataError(
            f"{field}: values span [{low:g}, {high:g}], outside the bounds [{lower:g}, {upper:g}]"
        )
    return x.detach()


def _check_labels(labels: object, n: int, num_classes: int, field: str) -> torch.Tensor:
    """labels as an int64 CPU tensor (n,) with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"{field}: expected an integer tensor of class indices")
    if tuple(labels.shape) != (n,):
        raise DataError(f"{field}: expected shape ({n},), got {tuple(labels.shape)}")
    labels = labels.detach().cpu().long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{field}: classes span [{int(labels.min())}, {int(labels.max())}], outside [0, {num_classes - 1}]"
        )
    return labels


def _check_batch_size(batch_size: object, field: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"{field}: {batch_size!r} is not a positive integer")


def _check_features(features: Sequence[int] | None, count: int) -> list[int]:
    if features is None:
        return list(range(count))
    chosen = list(features)
    if not chosen or any(isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < count for f in chosen):
        raise BadInputError(
            f"permutation_importance.features: {chosen!r} must be feature indices in [0, {count - 1}]"
        )
    if len(set(chosen)) != len(chosen):
        raise BadInputError(f"permutation_importance.features: {chosen!r} names a feature twice")
    return chosen


def _baseline(baseline: float | None, lower: float, upper: float) -> float:
    """The baseline value: `baseline`, or the lower bound for None; inside [lower, upper]."""
    value = lower if baseline is None else baseline
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lower <= value <= upper:
        raise BadInputError(f"explanations.baseline: {value!r} is outside the bounds [{lower:g}, {upper:g}]")
    return float(value)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The model's number of classes from one forward pass of x[:1]; BadInputError unless its output is 2-D."""
    _check_model(model, "attribute.model")
    with evaluating(model), torch.no_grad():
        out = model(x[:1].to(_device(model)))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInputError(f"attribute.model: expected an output of shape (n, classes), got {shape}")
    return int(out.shape[1])


def _read_labels(
    labels: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int, num_classes: int
) -> torch.Tensor:
    """The labels the black box gives x, checked: (n,) integers in [0, num_classes)."""
    answer = torch.as_tensor(labels(x))
    return _check_labels(answer, n, num_classes, "permutation_importance.labels(x)")


def _accuracy_and_recall(
    predicted: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For labels (r, n) against y (n,): accuracy (r,) and per-class recall (r, K), float64; a class without
    samples in y has recall 0."""
    correct = (predicted == y).double()
    per_class = torch.zeros(len(predicted), num_classes, dtype=torch.float64).index_add_(1, y, correct)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).double()
    return correct.mean(1), per_class / counts


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights (or, without weights, its buffers) are; the CPU for neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
