"""Runs probes over a target and data and collects their findings into an Assessment."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aisec.assessment.finding import Assessment, Finding, PolicyCheck, Provenance, SubjectInfo
from aisec.assessment.model_file import FileChecks, check_model_file
from aisec.assessment.plan import (
    DefencesSection,
    HttpTargetSection,
    InspectionProbeSection,
    ObjectTrainingSection,
    Plan,
    PolicySection,
    ProbesSection,
    TargetSection,
    TrainingSection,
)
from aisec.assessment.probe import AssessmentContext, Probe, Training
from aisec.assessment.service_controls import side_by_side, stopped_by_service
from aisec.assessment.subject import load_data
from aisec.assessment.threat_model import ThreatModel
from aisec.core.executor import make_executor
from aisec.core.progress import NullProgress, Progress
from aisec.core.severity import Severity
from aisec.core.tasks import TaskCache, TaskRunner
from aisec.core.user_code import import_callable
from aisec.core.version import __version__
from aisec.data.dataset import LabelledData, check_labels
from aisec.targets.base import InputSpec, Target

# A served model's answers that mean its controls stopped an attack: blocked (403), limited (429), or answering
# labels where it answered scores before (200: `ServiceRefused` from an HTTP target that expects scores).
STOPPING_STATUSES = (200, 403, 429)


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
    tasks: TaskRunner | None = None,
) -> Assessment:
    """Check the data against the model's input spec, run every probe, and return the assessment. The probes'
    independent jobs run through `tasks` (default: one after another in this process, nothing cached).

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
        tasks=tasks or TaskRunner(progress=progress or NullProgress()),
    )
    enabled = build_probes(probes)
    for probe in enabled:
        probe.check(context)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    findings = []
    from aisec.targets.http_target import ServiceRefused  # imports httpx: only when a plan runs

    for probe in enabled:
        with context.progress.task(f"probe {probe.name}", total=1) as task:
            try:
                findings.extend(probe.run(context))
            except ServiceRefused as refused:
                if refused.status not in STOPPING_STATUSES:  # a wrong key or a service down: bad input
                    raise
                # the service's controls (a block, a limit, scores withdrawn) stopped the attack: a figure
                settings = {"attack_class": probe.attack_class.value, "status": refused.status}
                findings.append(
                    stopped_by_service(probe.name, refused, context.provenance(len(data), settings))
                )
            task.advance()
    findings = apply_fail_on(findings, context.policy.fail_on)
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


def apply_fail_on(findings: Iterable[Finding], fail_on: Severity | None) -> list[Finding]:
    """The findings, each at least as severe as `policy.fail_on` with a failed policy check added."""
    return [f if fail_on is None else _severity_check(f, fail_on) for f in findings]


def _severity_check(finding: Finding, fail_on: Severity) -> Finding:
    """The finding with a failed policy check added when its severity is at least `policy.fail_on`."""
    if finding.severity.rank < fail_on.rank:
        return finding
    check = PolicyCheck(
        rule="fail_on",
        threshold=fail_on.rank,
        observed=finding.severity.rank,
        passed=False,
        description=f"severity {finding.severity.value} is at or above policy.fail_on ({fail_on.value})",
    )
    return dataclasses.replace(finding, policy=(*finding.policy, check))


def run_plan(
    plan: Plan,
    *,
    plan_path: Path | None = None,
    plan_sha256: str | None = None,
    progress: Progress | None = None,
    tasks: TaskRunner | None = None,
) -> Assessment:
    """Load the plan's target and data (failing on bad input before any attack) and run its probes. With
    `probes.inspection`, the model file is scanned (and its signature verified) before it is loaded
    (`behind_file_checks`). A served model (`kind: http`) is queried through an HttpTarget, closed after.
    Independent jobs run through `tasks` (the caller's, e.g. `task_runner(plan, cache)` with a cache a rerun
    resumes from), else through the plan's executor without a cache."""
    if tasks is None:
        with contextlib.closing(task_runner(plan, None, progress)) as own:
            assessment = _run_plan(plan, own, progress)
    else:
        assessment = _run_plan(plan, tasks, progress)
    return dataclasses.replace(
        assessment, plan_path=str(plan_path) if plan_path else None, plan_sha256=plan_sha256
    )


def task_runner(plan: Plan, cache: Path | None, progress: Progress | None) -> TaskRunner:
    """The plan's executor, the cache under `cache`, and the device its training jobs use: CUDA when Ray gives
    each task a share of a GPU, else the target's device."""
    section = plan.executor
    executor = make_executor(
        section.kind,
        workers=section.workers,
        threads=section.threads,
        address=section.address,
        cpus_per_task=section.cpus_per_task,
        gpus_per_task=section.gpus_per_task,
    )
    device = "cuda" if section.gpus_per_task > 0 else getattr(plan.target, "device", "cpu")
    return TaskRunner(
        executor,
        cache=TaskCache(cache) if cache is not None else None,
        progress=progress or NullProgress(),
        device=device,
    )


def _run_plan(plan: Plan, tasks: TaskRunner, progress: Progress | None) -> Assessment:
    from aisec.assessment.subject import plan_spec, plan_target

    inspection = getattr(plan.probes, "inspection", None)
    section = plan.target
    if inspection is None:
        assessment = _run_on(section, plan, tasks, progress)
        if plan.baseline is not None:  # the same probes against the model without the service's controls
            bare = _run_on(plan.baseline, plan, tasks, progress)
            comparison = side_by_side(bare, assessment, seed=plan.seed)
            assessment = dataclasses.replace(assessment, findings=(*assessment.findings, comparison))
    else:
        assert isinstance(section, TargetSection)  # the plan refuses inspection of a served model
        data = load_data(plan.data, seed=plan.seed)
        assessment = behind_file_checks(
            section.path,
            data,
            inspection,
            plan.policy,
            seed=plan.seed,
            name=plan.name,
            spec=plan_spec(section),
            spec_source="plan",
            threat_model=plan.threat_model,
            assess=lambda checks: run_plan_on(
                plan_target(section),
                data,
                plan,
                model_source=str(section.path),
                model_sha256=checks.sha256,
                progress=progress,
                tasks=tasks,
            ),
            progress=progress,
        )
    return assessment


def _run_on(
    section: TargetSection | HttpTargetSection, plan: Plan, tasks: TaskRunner, progress: Progress | None
) -> Assessment:
    """The plan's probes against the model a target section names: a file loaded (the model first, so a bad
    one fails before the data is read), or a served model queried through an HttpTarget, closed after."""
    from aisec.assessment.subject import http_target, load_target

    if isinstance(section, HttpTargetSection):
        data = load_data(plan.data, seed=plan.seed)
        with http_target(section) as served:
            return run_plan_on(
                served,
                data,
                plan,
                model_source=section.url,
                model_sha256=None,
                progress=progress,
                tasks=tasks,
            )
    target, digest = load_target(section)
    data = load_data(plan.data, seed=plan.seed)
    return run_plan_on(
        target,
        data,
        plan,
        model_source=str(section.path),
        model_sha256=digest,
        progress=progress,
        tasks=tasks,
    )


def behind_file_checks(
    path: Path,
    data: LabelledData,
    inspection: InspectionProbeSection,
    policy: PolicySection,
    *,
    seed: int,
    name: str,
    spec: InputSpec | None,
    spec_source: str,
    threat_model: ThreatModel | None,
    assess: Callable[[FileChecks], Assessment],
    progress: Progress | None = None,
) -> Assessment:
    """The model file's checks (static scan, then the signature when `inspection.public_key` is given) before
    `assess(checks)` loads the model and runs the probes; their findings, with `policy.fail_on` applied, come
    first. A file that fails them is never loaded: the assessment then holds only their findings, and its
    subject is what is known without the model (`spec`, else the data's sample shape and no classes)."""
    started = datetime.now(timezone.utc)
    provenance = Provenance(
        tool_version=__version__,
        seed=seed,
        samples=0,
        model_sha256=None,
        data_sha256=data.sha256,
        settings={},
    )
    with (progress or NullProgress()).task("model file: static scan and signature", total=1) as task:
        checks = check_model_file(
            path, signature=inspection.signature, public_key=inspection.public_key, provenance=provenance
        )
        task.advance()
    file_findings = tuple(apply_fail_on(checks.findings, policy.fail_on))
    if checks.loadable:
        assessment = assess(checks)
        return dataclasses.replace(assessment, findings=(*file_findings, *assessment.findings))
    return Assessment(
        name=name,
        tool_version=__version__,
        started_at=started.isoformat(timespec="seconds"),
        duration_s=round((datetime.now(timezone.utc) - started).total_seconds(), 3),
        subject=SubjectInfo(
            target_kind="not loaded",
            access="none",
            input_shape=tuple(spec.shape) if spec is not None else tuple(data.x.shape[1:]),
            num_classes=spec.num_classes if spec is not None else 0,
            model_source=str(path),
            model_sha256=checks.sha256,
            data_name=data.name,
            data_samples=len(data),
            data_sha256=data.sha256,
            input_spec_source=spec_source,
        ),
        threat_model=(threat_model or ThreatModel()).model_dump(mode="json"),
        findings=file_findings,
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
    tasks: TaskRunner | None = None,
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
        training=training_from(
            plan.training,
            None if isinstance(plan.target, HttpTargetSection) else plan.target.factory,
            seed=plan.seed,
        ),
        defences=plan.defences,
        name=plan.name,
        model_source=model_source,
        model_sha256=model_sha256,
        progress=progress,
        input_spec_source=input_spec_source,
        tasks=tasks,
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
