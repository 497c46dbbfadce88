"""One model trained as an independent job: what the retraining probes, the robustness comparison and the
inspection zoo hand to a `TaskRunner`, so that any executor can train it and a rerun reads it back.

A job names a factory, the recipe `fit(model, data, seed=...)`, the data and the seed. Its result is the trained
model's weights (a state dict on the CPU), the seconds the recipe took where the job ran, and a note: a recipe
may return `(model, note)` to carry a sentence for the report (adversarial training's overfitting guard). A
job's model is built from the same factory and seed again to take its weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from aisec.core.seeding import build_model
from aisec.core.tasks import TaskRunner


@dataclass(frozen=True)
class TrainJob:
    """Train `model_fn()` (initial weights from `seed`) with `fit(model, data, seed=seed)` on `device`."""

    model_fn: Callable[[], nn.Module]
    fit: Callable[..., nn.Module | tuple[nn.Module, str]]
    data: Any  # LabelledData (the data layer sits above core)
    seed: int
    device: str = "cpu"


@dataclass(frozen=True)
class Trained:
    """A job's model (evaluation mode, on the CPU), the seconds its recipe took where the job ran (as measured
    then, for a job read back from the cache), and the recipe's note ("" without one)."""

    model: nn.Module
    seconds: float
    note: str


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Train one job's model (top-level, so that executors can ship it): its weights on the CPU, the seconds of
    its recipe, and its note."""
    model = build_model(job.model_fn, job.seed).to(job.device)
    start = time.perf_counter()
    result = job.fit(model, job.data, seed=job.seed)
    seconds = time.perf_counter() - start
    trained, note = result if isinstance(result, tuple) else (result, "")
    state = {name: value.detach().cpu() for name, value in trained.state_dict().items()}
    return {"state": state, "seconds": seconds, "note": note}


def train_all(runner: TaskRunner, jobs: Sequence[TrainJob], *, what: str = "training") -> list[Trained]:
    """Every job trained through `runner` (cached results read back), in job order."""
    results = runner.map(run_train_job, jobs, what=what)
    trained = []
    for job, result in zip(jobs, results, strict=True):
        model = build_model(job.model_fn, job.seed)
        model.load_state_dict(result["state"])
        trained.append(Trained(model.eval(), float(result["seconds"]), str(result["note"])))
    return trained


def trained_models(
    runner: TaskRunner, jobs: Sequence[TrainJob], *, what: str = "training"
) -> list[nn.Module]:
    """Every job's trained model, through `runner`, in evaluation mode on the CPU."""
    return [trained.model for trained in train_all(runner, jobs, what=what)]
