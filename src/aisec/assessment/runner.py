"""Runs probes over a target and data and collects their findings into an Assessment."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aisec.assessment.finding import Assessment, SubjectInfo
from aisec.assessment.plan import (
    DefencesSection,
    ObjectTrainingSection,
    Plan,
    PolicySection,
    ProbesSection,
    TrainingSection,
)
from aisec.assessment.probe import AssessmentContext, Probe, Training
from aisec.assessment.subject import load_data
from aisec.assessment.threat_model import ThreatModel
from aisec.core.progress import NullProgress, Progress
from aisec.core.user_code import import_callable
from aisec.core.version import __version__
from aisec.data.dataset import LabelledData, check_labels
from aisec.targets.base import Target


def build_probes(probes: ProbesSection) -> list[Probe]:
    """The probes a plan enables, in the order of the registry (aisec.assessment.registry)."""
    return [spec.build(section) for spec, section in probes.enabled()]


def run_assessment(
    target: Target,
    data: LabelledData,
    probes: ProbesSection,
    *,
    threat_model: ThreatModel | None = None,
    policy: PolicySection | None = None,
    seed: int = 0,
    training: Training | None = None,
    defences: DefencesSection | None = None,
    name: str = "assessment",
    model_source: str | None = None,
    model_sha256: str | None = None,
    progress: Progress | None = None,
    input_spec_source: str = "plan",
) -> Assessment:
    """Check the data against the model's input spec, run every probe, and return the assessment.

    The data is validated, and every probe checks that it can run, before any attack runs: bad input fails
    fast and nothing is spent on it.
    """
    for labelled in (data, training.data) if training is not None else (data,):
        target.spec.check(labelled.x, what=labelled.name)
        check_labels(labelled, target.spec.num_classes)
    context = AssessmentContext(
        target=target,
        data=data,
        threat_model=threat_model or ThreatModel(),
        policy=policy or PolicySection(),
        seed=seed,
        model_sha256=model_sha256,
        progress=progress or NullProgress(),
        training=training,
        defences=defences,
    )
    enabled = build_probes(probes)
    for probe in enabled:
        probe.check(context)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    findings = []
    for probe in enabled:
        with context.progress.task(f"probe {probe.name}", total=1) as task:
            findings.extend(probe.run(context))
            task.advance()
    return Assessment(
        name=name,
        tool_version=__version__,
        started_at=started.isoformat(timespec="seconds"),
        duration_s=round(time.perf_counter() - t0, 3),
        subject=SubjectInfo(
            target_kind=type(target).__name__,
            access=target.access.value,
            input_shape=tuple(target.spec.shape),
            num_classes=target.spec.num_classes,
            model_source=model_source,
            model_sha256=model_sha256,
            data_name=data.name,
            data_samples=len(data),
            data_sha256=data.sha256,
            input_spec_source=input_spec_source,
        ),
        threat_model=context.threat_model.model_dump(mode="json"),
        findings=tuple(findings),
    )


def run_plan(
    plan: Plan,
    *,
    plan_path: Path | None = None,
    plan_sha256: str | None = None,
    progress: Progress | None = None,
) -> Assessment:
    """Load the plan's target and data (failing on bad input before any attack) and run its probes."""
    from aisec.assessment.subject import load_target

    target, digest = load_target(plan.target)
    data = load_data(plan.data, seed=plan.seed)
    assessment = run_plan_on(
        target, data, plan, model_source=str(plan.target.path), model_sha256=digest, progress=progress
    )
    return dataclasses.replace(
        assessment, plan_path=str(plan_path) if plan_path else None, plan_sha256=plan_sha256
    )


def run_plan_on(
    target: Target,
    data: LabelledData,
    plan: Plan,
    *,
    model_source: str,
    model_sha256: str | None,
    progress: Progress | None = None,
    input_spec_source: str = "plan",
) -> Assessment:
    """Run a validated plan's probes, threat model, policy, training and defences on a target and data that
    are already loaded (from the plan's sections, or the objects given to aisec.assess)."""
    return run_assessment(
        target,
        data,
        plan.probes,
        threat_model=plan.threat_model,
        policy=plan.policy,
        seed=plan.seed,
        training=training_from(plan.training, plan.target.factory, seed=plan.seed),
        defences=plan.defences,
        name=plan.name,
        model_source=model_source,
        model_sha256=model_sha256,
        progress=progress,
        input_spec_source=input_spec_source,
    )


def training_from(
    section: TrainingSection | ObjectTrainingSection | None,
    factory: str | Callable[[], Any] | None,
    *,
    seed: int,
) -> Training | None:
    """A plan's `training` section with its data loaded and its functions imported (a plan given to
    aisec.assess may hold the training set and the functions themselves)."""
    if section is None:
        return None
    data = section.data if isinstance(section.data, LabelledData) else load_data(section.data, seed=seed)
    recipe = _function(section.recipe, "training.recipe")
    return Training(
        data=data,
        model_fn=_function(factory, "target.factory"),
        fit=functools.partial(recipe, **section.recipe_args) if recipe is not None else None,
    )


def _function(given: str | Callable[..., Any] | None, field: str) -> Callable[..., Any] | None:
    return import_callable(given, field) if isinstance(given, str) else given
