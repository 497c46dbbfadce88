"""What the training-time probes (poisoning, backdoor, data validation) share: the plan's recipe run on changed
training sets as one batch of jobs of the assessment's task runner (any executor trains them, a rerun reads them
back from its cache), the detection table of their poison screening, the split of the assessment data into a
trusted reference and an evaluation half, and scalar input bounds."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from aisec.assessment.plan import GradientShapingSection
from aisec.assessment.probe import AssessmentContext, Training
from aisec.assessment.probes.served import split
from aisec.core.errors import BadInputError, DataError
from aisec.core.tasks import TaskRunner
from aisec.core.train_jobs import TrainJob, trained_models
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.gradient_shaping import fit_with_gradient_shaping, private_model
from aisec.defend.data_quality.suspects import SuspectRanking
from aisec.targets.base import InputSpec

MIN_HALF = 50  # samples in each half of the assessment data
K = TypeVar("K", bound=Hashable)


def required_training(context: AssessmentContext, probe: str) -> Training:
    """The plan's training set, model factory and recipe; BadInputError naming what is missing."""
    training = context.training
    if training is None or training.model_fn is None or training.fit is None:
        raise BadInputError(
            f"probes.{probe} retrains the model: give the target's `factory`, `training.data` and `training.recipe`"
        )
    return training


@dataclass(frozen=True)
class Retraining:
    """One model to retrain from the plan's factory on `data`, its initial weights and its recipe seeded by
    `seed`: with the plan's recipe, or with `shaping`, gradient shaping (Hong et al. 2020) at those settings."""

    data: LabelledData
    seed: int
    shaping: GradientShapingSection | None = None


def retrain_all(
    tasks: TaskRunner, training: Training, work: Mapping[K, Retraining], *, what: str
) -> dict[K, nn.Module]:
    """Every retraining of `work` as one batch of `tasks` (run in parallel by a pool or Ray, read back from its
    cache on a rerun), each model under its key, in evaluation mode on the CPU. The initial weights are
    `build_model(factory, seed)`, so that two runs of a plan retrain identical models."""
    model_fn, fit = training.model_fn, training.fit
    assert model_fn is not None and fit is not None
    jobs = [
        TrainJob(model_fn, fit, item.data, item.seed, tasks.device)
        if item.shaping is None
        else TrainJob(
            functools.partial(private_model, model_fn),
            functools.partial(fit_with_gradient_shaping, **item.shaping.model_dump()),
            item.data,
            item.seed,
            tasks.device,
        )
        for item in work.values()
    ]
    return dict(zip(work, trained_models(tasks, jobs, what=what), strict=True))


def detection_rows(
    rankings: Sequence[SuspectRanking], combined: SuspectRanking, poisoned: torch.Tensor, union: str
) -> tuple[tuple[str, int, float, float], ...]:
    """Each detector's (name, flagged, precision, recall) against the planted poison, then their union's (named
    `union`): the detection table of the poisoning and backdoor findings."""
    rows = []
    for ranking in (*rankings, combined):
        score = ranking.score_against(poisoned)
        rows.append(
            (union if ranking is combined else ranking.method, score.flagged, score.precision, score.recall)
        )
    return tuple(rows)


def reference_and_evaluation(context: AssessmentContext) -> tuple[LabelledData, LabelledData]:
    """The assessment data cut in two seeded halves: a trusted reference the defences may use (the
    defender's clean held-out data) and the half every figure is measured on."""
    half = len(context.data) // 2
    if half < MIN_HALF:
        raise DataError(
            f"{context.data.name}: {len(context.data)} samples; the training-time probes need at least "
            f"{2 * MIN_HALF} (half as the defender's trusted reference, half to measure on)"
        )
    reference, evaluation = split(context.data, half, context.seed + 5)
    return (
        LabelledData(reference.x, reference.y, f"{context.data.name} (reference half)"),
        LabelledData(evaluation.x, evaluation.y, f"{context.data.name} (evaluation half)"),
    )


def scalar_bounds(spec: InputSpec, probe: str) -> tuple[float, float]:
    """The input range as two numbers; BadInputError for per-feature bounds, which triggers (stamped, blended
    and warped images) and STRIP's overlays do not apply to."""
    if isinstance(spec.lower, tuple) or isinstance(spec.upper, tuple):
        raise BadInputError(f"probes.{probe} needs one input range for every pixel, not bounds per feature")
    return float(spec.lower), float(spec.upper)
