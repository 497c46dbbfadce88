"""The options that say where an assessment's jobs run and where it is tracked (docs/scale.md): `--executor`,
`--workers`, `--ray-address`, `--no-cache` and `--mlflow`, and the plan they turn the loaded plan into."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aisec.cli.support import console, plain

if TYPE_CHECKING:
    from aisec.assessment.finding import Assessment
    from aisec.assessment.plan import Plan
    from aisec.core.tasks import TaskRunner

TASK_CACHE = "tasks"  # the folder under --output that keeps finished jobs' results

ExecutorOption = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where independent jobs (shadow models, retrained and defended models) run: in_process, pool "
        "(processes on this machine) or ray. Overrides the plan's `executor.kind`.",
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Jobs at once (pool processes, Ray tasks in flight).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="Ray to use: local (start one here), auto, host:port or ray://host:port."
    ),
]
NoCacheOption = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help=f"Neither read nor keep finished jobs in OUTPUT/{TASK_CACHE} (by default a rerun resumes from it).",
    ),
]
MlflowOption = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        help="Log the assessment as an MLflow run to this tracking URI (sqlite:///mlflow.db, postgresql://..., "
        "http://...). Overrides the plan's `tracking.mlflow`.",
    ),
]


def with_overrides(
    plan: Plan,
    *,
    executor: str | None,
    workers: int | None,
    ray_address: str | None,
    mlflow: str | None,
) -> Plan:
    """The plan with the command line's choices in its `executor` and `tracking` sections, validated as the
    plan's own fields are (a bad choice is bad input, exit 2)."""
    from aisec.assessment.plan import ExecutorSection, TrackingSection, validated_section

    changes: dict[str, object] = {}
    if executor is not None:
        changes["kind"] = executor
    if workers is not None:
        changes["workers"] = workers
    if ray_address is not None:
        changes["address"] = ray_address
    updates: dict[str, object] = {}
    if changes:
        settings = plan.executor.model_dump(exclude_unset=True)
        if "kind" in changes and changes["kind"] != plan.executor.kind:  # options of another executor go
            settings = {k: v for k, v in settings.items() if k in ("threads",)}
        updates["executor"] = validated_section(ExecutorSection, {**settings, **changes}, "--executor")
    if mlflow is not None:
        experiment = plan.tracking.experiment if plan.tracking is not None else "aisec"
        updates["tracking"] = validated_section(
            TrackingSection, {"mlflow": mlflow, "experiment": experiment}, "--mlflow"
        )
    return plan.model_copy(update=updates) if updates else plan


def task_cache(output: Path, no_cache: bool) -> Path | None:
    return None if no_cache else output / TASK_CACHE


def report_tasks(tasks: TaskRunner) -> None:
    """One line on how many jobs ran and how many a cache gave back (nothing when there were none)."""
    if tasks.executed or tasks.reused:
        where = f" from {plain(tasks.cache.folder)}" if tasks.cache is not None else ""
        console.print(
            f"jobs: {tasks.executed} run on {tasks.executor.kind}, {tasks.reused} read back{where}",
            highlight=False,
        )


def track(assessment: Assessment, paths: Mapping[str, Path], plan: Plan) -> None:
    """Log the assessment, its reports and model card as an MLflow run (docs/scale.md) and say where."""
    from aisec.report.mlflow_run import log_assessment

    assert plan.tracking is not None
    run_id = log_assessment(
        assessment, paths, plan, uri=plan.tracking.mlflow, experiment=plan.tracking.experiment
    )
    console.print(
        f"MLflow run {run_id} in experiment {plan.tracking.experiment!r} at {plain(plan.tracking.mlflow)}"
    )
