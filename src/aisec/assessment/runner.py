"""Runs probes over a target and data and collects their findings into an Assessment."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from aisec.assessment.finding import Assessment, SubjectInfo
from aisec.assessment.plan import DefencesSection, Plan, PolicySection, ProbesSection
from aisec.assessment.probe import AssessmentContext, Probe, Training
from aisec.assessment.threat_model import ThreatModel
from aisec.core.progress import NullProgress, Progress
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
    findings = [f for probe in enabled for f in probe.run(context)]
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
    import dataclasses

    from aisec.assessment.subject import load_data, load_target

    target, digest = load_target(plan.target)
    data = load_data(plan.data, seed=plan.seed)
    training = _training(plan)
    assessment = run_assessment(
        target,
        data,
        plan.probes,
        threat_model=plan.threat_model,
        policy=plan.policy,
        seed=plan.seed,
        training=training,
        defences=plan.defences,
        name=plan.name,
        model_source=str(plan.target.path),
        model_sha256=digest,
        progress=progress,
    )
    return dataclasses.replace(
        assessment, plan_path=str(plan_path) if plan_path else None, plan_sha256=plan_sha256
    )


def _training(plan: Plan) -> Training | None:
    """The plan's `training` section with its data loaded and its functions imported."""
    import functools

    from aisec.assessment.subject import load_data
    from aisec.core.user_code import import_callable

    section = plan.training
    if section is None:
        return None
    fit = None
    if section.recipe is not None:
        fit = functools.partial(import_callable(section.recipe, "training.recipe"), **section.recipe_args)
    factory = plan.target.factory
    return Training(
        data=load_data(section.data, seed=plan.seed),
        model_fn=import_callable(factory, "target.factory") if factory else None,
        fit=fit,
    )
