"""What a backdoor achieves: attack success rate on triggered inputs, and the clean accuracy it keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aisec.attacks.backdoor.triggers import Trigger
from aisec.data.dataset import LabelledData

Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackdoorMeasurement:
    """attack_success: share of test samples not of the target class that the trigger sends to it;
    clean_accuracy: accuracy on the untouched test set; `triggered` samples were attacked."""

    attack_success: float
    clean_accuracy: float
    triggered: int


def predicted_labels(
    model: torch.nn.Module | Predict, x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Labels from a module's logits (no grad, batched) or from a labelling function such as `target.labels`."""
    if not isinstance(model, torch.nn.Module):
        return model(x)
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def measure_backdoor(
    model: torch.nn.Module | Predict,
    test: LabelledData,
    trigger: Trigger,
    target_class: int,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
) -> BackdoorMeasurement:
    """Attack success rate (Gu et al. 2017) over the test samples whose true class is not the target, and clean
    accuracy over all of them."""
    others = test.y != target_class
    triggered = trigger.apply(test.x[others], lower, upper)
    success = (predicted_labels(model, triggered) == target_class).float().mean()
    clean = (predicted_labels(model, test.x) == test.y).float().mean()
    return BackdoorMeasurement(float(success), float(clean), int(others.sum()))
