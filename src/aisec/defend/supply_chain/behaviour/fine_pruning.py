"""Fine-pruning: remove a backdoor from a model one did not train, with a small clean set (Liu et al. 2018,
"Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks", RAID).

A backdoor tends to live in channels that clean inputs leave dormant. Pruning removes the channels of one
layer (by default the last convolution) in increasing order of their mean activation on clean data, as long
as clean accuracy on a validation part stays within `max_accuracy_drop` of the original; fine-tuning on
the clean data then repairs the accuracy and, as the paper found, erases much of what pruning left of the
backdoor.
A pruned channel's weights and bias are zeroed and held at zero during fine-tuning by a pruning mask
(`torch.nn.utils.prune`), made permanent afterwards. The input model is never modified: the result holds a
repaired deep copy. Fine-tuning is `aisec.core.training.train`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from aisec.core.errors import BadInputError, DataError
from aisec.core.training import TrainingConfig, accuracy, train
from aisec.data.dataset import LabelledData


@dataclass(frozen=True)
class FinePruningResult:
    """`model` is the repaired copy; `pruned` the channels of `layer` zeroed, in pruning order, out of
    `channels`. Accuracies are on the `validation` held-out clean samples: before, after pruning, and after
    fine-tuning on the other clean samples."""

    model: nn.Module
    layer: str
    pruned: tuple[int, ...]
    channels: int
    accuracy_before: float
    accuracy_pruned: float
    accuracy_fine_tuned: float
    validation: int

    @property
    def fraction_pruned(self) -> float:
        return len(self.pruned) / self.channels


def fine_prune(
    model: nn.Module,
    clean: LabelledData,
    *,
    layer: nn.Module | str | None = None,
    max_accuracy_drop: float = 0.04,
    fine_tune_epochs: int = 10,
    lr: float = 1e-2,
    batch_size: int = 32,
    validation_fraction: float = 0.3,
    seed: int = 0,
) -> FinePruningResult:
    """Prune `layer`'s least active channels within the accuracy budget, then fine-tune with Adam.

    Raises before any work: bad settings, NaN inputs, clean data of fewer than two classes, a layer that is
    not a Conv2d or Linear of the model, or a split that leaves either part empty.
    """
    _check_settings(max_accuracy_drop, fine_tune_epochs, lr, batch_size, validation_fraction)
    if not torch.isfinite(clean.x).all():
        raise DataError(f"{clean.name}: the inputs contain NaN or infinite values")
    if torch.unique(clean.y).numel() < 2:
        raise DataError(f"{clean.name}: fine-pruning needs clean samples of at least two classes")
    name = _layer_name(model, layer)
    n_val = round(validation_fraction * len(clean))
    if not 0 < n_val < len(clean):
        raise DataError(
            f"{clean.name}: a validation fraction of {validation_fraction} of {len(clean)} samples leaves a part empty"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(clean), generator=generator)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = clean.x.to(device), clean.y.to(device)
    validation = LabelledData(x[order[:n_val]], y[order[:n_val]], f"{clean.name} (validation)")
    tuning = LabelledData(x[order[n_val:]], y[order[n_val:]], f"{clean.name} (fine-tuning)")

    repaired = copy.deepcopy(model).requires_grad_(True)
    repaired.eval()
    with torch.no_grad():
        classes = repaired(x[:1]).shape[-1]
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise DataError(
            f"{clean.name}: labels range over [{int(y.min())}, {int(y.max())}] but the model has {classes} classes"
        )
    target = _prunable(repaired, name)
    before = accuracy(repaired, validation)
    ranking = _mean_activation(repaired, target, tuning.x).argsort().tolist()
    pruned: list[int] = []
    pruned_accuracy = before
    for channel in ranking[:-1]:  # never the last channel: the layer would carry nothing
        _zero(target, pruned + [channel])
        trial = accuracy(repaired, validation)
        if before - trial > max_accuracy_drop:
            _restore(target, channel, model, name)
            break
        pruned.append(channel)
        pruned_accuracy = trial
    if fine_tune_epochs > 0:
        config = TrainingConfig(epochs=fine_tune_epochs, lr=lr, batch_size=batch_size)
        with _held_at_zero(target, pruned):
            train(repaired, tuning, config, generator=generator)
    return FinePruningResult(
        repaired,
        name,
        tuple(pruned),
        len(ranking),
        before,
        pruned_accuracy,
        accuracy(repaired, validation),
        n_val,
    )


def _check_settings(drop: float, epochs: int, lr: float, batch_size: int, validation_fraction: float) -> None:
    if not (isinstance(drop, (int, float)) and 0 <= drop < 1):
        raise BadInputError(f"fine-pruning: max_accuracy_drop must be in [0, 1), got {drop!r}")
    if not isinstance(epochs, int) or epochs < 0:
        raise BadInputError(f"fine-pruning: fine_tune_epochs must be a non-negative integer, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise BadInputError(f"fine-pruning: lr must be a positive number, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"fine-pruning: batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(validation_fraction, (int, float)) and 0 < validation_fraction < 1):
        raise BadInputError(
            f"fine-pruning: validation_fraction must be in (0, 1), got {validation_fraction!r}"
        )


def _layer_name(model: nn.Module, layer: nn.Module | str | None) -> str:
    """The qualified name of the layer to prune: the one given, else the last Conv2d, else the last hidden
    Linear (every Linear but the final one)."""
    modules = dict(model.named_modules())
    if isinstance(layer, str):
        if not isinstance(modules.get(layer), (nn.Conv2d, nn.Linear)):
            raise BadInputError(f"fine-pruning: the model has no Conv2d or Linear layer named {layer!r}")
        return layer
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer and isinstance(module, (nn.Conv2d, nn.Linear)):
                return name
        raise BadInputError(
            f"fine-pruning: {type(layer).__name__} is not a Conv2d or Linear layer of the model"
        )
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if convs:
        return convs[-1]
    if len(linears) >= 2:
        return linears[-2]
    raise BadInputError("fine-pruning: the model has no Conv2d and no hidden Linear layer to prune")


def _mean_activation(model: nn.Module, layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Per output channel of `layer`, the mean over clean samples (and positions) of its positive part, the
    activation a ReLU passes on."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    out = seen[0].clamp_min(0)
    return out.transpose(0, 1).flatten(1).mean(1).cpu()


def _prunable(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    """The layer `_layer_name` chose, typed as what it checked."""
    layer = dict(model.named_modules())[name]
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise BadInputError(f"fine-pruning: {name!r} is not a Conv2d or Linear layer of the model")
    return layer


def _zero(layer: nn.Conv2d | nn.Linear, channels: list[int]) -> None:
    with torch.no_grad():
        layer.weight[channels] = 0
        if layer.bias is not None:
            layer.bias[channels] = 0


def _restore(layer: nn.Conv2d | nn.Linear, channel: int, original: nn.Module, name: str) -> None:
    source = _prunable(original, name)
    with torch.no_grad():
        layer.weight[channel] = source.weight[channel]
        if layer.bias is not None and source.bias is not None:
            layer.bias[channel] = source.bias[channel]


@contextmanager
def _held_at_zero(layer: nn.Conv2d | nn.Linear, channels: list[int]) -> Iterator[None]:
    """Within the block, `channels` of `layer` output zero whatever training does to their weights (a pruning
    mask over weight and bias); on exit the zeros are written into the weights and the masks removed."""
    names = [name for name in ("weight", "bias") if getattr(layer, name, None) is not None]
    for name in names:
        mask = torch.ones_like(getattr(layer, name))
        mask[channels] = 0
        prune.custom_from_mask(layer, name, mask)
    try:
        yield
    finally:
        for name in names:
            prune.remove(layer, name)
