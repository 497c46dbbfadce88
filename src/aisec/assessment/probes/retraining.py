"""What the training-time probes (poisoning, backdoor) share: the plan's recipe run on a changed training set,
the split of the assessment data into a trusted reference and an evaluation half, and scalar input bounds."""

from __future__ import annotations

from torch import nn

from aisec.assessment.probe import AssessmentContext, Training
from aisec.assessment.probes.served import split
from aisec.core.errors import BadInputError, DataError
from aisec.core.seeding import build_model
from aisec.data.dataset import LabelledData
from aisec.targets.base import InputSpec

MIN_HALF = 50  # samples in each half of the assessment data


def required_training(context: AssessmentContext, probe: str) -> Training:
    """The plan's training set, model factory and recipe; BadInputError naming what is missing."""
    training = context.training
    if training is None or training.model_fn is None or training.fit is None:
        raise BadInputError(
            f"probes.{probe} retrains the model: give the target's `factory`, `training.data` and `training.recipe`"
        )
    return training


def retrain(training: Training, data: LabelledData, seed: int) -> nn.Module:
    """A fresh model from the factory, trained on `data` with the plan's recipe; the initial weights are
    seeded too, so that two runs of a plan retrain identical models."""
    assert training.model_fn is not None and training.fit is not None
    model = training.fit(build_model(training.model_fn, seed), data, seed=seed)
    return model.eval()


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
