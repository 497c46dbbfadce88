"""One model trained as an independent job: what the retraining probes, the shadow models' owners and the
robustness comparison hand to a `TaskRunner`, so that any executor can train it and a rerun reads it back.

A job names a factory, the recipe `fit(model, data, seed=...)`, the data and the seed; its result is the trained
model's weights (a state dict on the CPU), which `trained_models` loads into a fresh model from the same factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aisec.core.seeding import build_model
from aisec.core.tasks import TaskRunner


@dataclass(frozen=True)
class TrainJob:
    """Train `model_fn()` (initial weights from `seed`) with `fit(model, data, seed=seed)` on `device`."""

    model_fn: Callable[[], nn.Module]
    fit: Callable[..., nn.Module]
    data: Any  # LabelledData (the data layer sits above core)
    seed: int
    device: str = "cpu"


def run_train_job(job: TrainJob) -> dict[str, torch.Tensor]:
    """Train one job's model (top-level, so that executors can ship it); its weights on the CPU."""
    model = build_model(job.model_fn, job.seed).to(job.device)
    trained = job.fit(model, job.data, seed=job.seed)
    return {name: value.detach().cpu() for name, value in trained.state_dict().items()}


def trained_models(
    runner: TaskRunner, jobs: Sequence[TrainJob], *, what: str = "training"
) -> list[nn.Module]:
    """Every job's trained model, through `runner` (cached results read back), in evaluation mode on the CPU."""
    states = runner.map(run_train_job, jobs, what=what)
    models = []
    for job, state in zip(jobs, states, strict=True):
        model = build_model(job.model_fn, job.seed)
        model.load_state_dict(state)
        models.append(model.eval())
    return models
