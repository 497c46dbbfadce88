"""The `aisec` typer app: `assess` and `demo` here, the supply-chain commands from `supply_chain.py`, `inspect`
from `inspect.py`, `audit` from `audit.py`.

Heavy libraries are imported inside commands, so `aisec --help` stays fast. Exit codes: 0 policy held,
1 a finding breaks the policy, 2 bad input, 3 internal error, 130 interrupted.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from aisec.cli import audit as cli_audit
from aisec.cli import data as cli_data
from aisec.cli import guard as cli_guard
from aisec.cli import inspect as cli_inspect
from aisec.cli import supply_chain as cli_supply_chain
from aisec.cli import validate as cli_validate
from aisec.cli.assessment_output import progress_for, record_assessment, report_formats, summarise
from aisec.cli.audit import AuditKeyOption, AuditLogOption
from aisec.cli.scale import (
    ExecutorOption,
    MlflowOption,
    NoCacheOption,
    RayAddressOption,
    WorkersOption,
    report_tasks,
    task_cache,
    track,
    with_overrides,
)
from aisec.cli.support import console, guarded, plain
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED
from aisec.core.version import __version__
from aisec.report import FILE_NAMES

app = typer.Typer(
    name="aisec",
    help="Red-team your AI system and verify its controls. Assessments: evasion, poisoning and backdoors, "
    "model extraction, model inversion, membership and attribute inference, each with the controls that stop "
    "them. Model files: scanning, safe loading, signing and verification, ML bills of materials. Reports in "
    "HTML, JSON, SARIF and JUnit XML, for security and data science.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
FORMATS = tuple(FILE_NAMES)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aisec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an internal error (exit 3), show the traceback.")
    ] = False,
) -> None:
    """aisec: attack your own AI system the way an adversary would, and prove what holds."""


@app.command()
def assess(
    plan: Annotated[Path, typer.Argument(help="The assessment plan (YAML); see docs/plan.md.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the reports.")] = Path("out"),
    format: Annotated[
        str,
        typer.Option("--format", "-f", help="Comma-separated: json,html,sarif,junit,card (the model card)."),
    ] = ",".join(FORMATS),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
    executor: ExecutorOption = None,
    workers: WorkersOption = None,
    ray_address: RayAddressOption = None,
    no_cache: NoCacheOption = False,
    mlflow: MlflowOption = None,
) -> None:
    """Red-team a model as the plan says; exit 1 when a finding breaks the plan's policy."""

    def run() -> int:
        formats = report_formats(format)
        from aisec.assessment.plan import load_plan
        from aisec.assessment.runner import run_plan, task_runner
        from aisec.cli.audit_trail import AuditTrail
        from aisec.report.writer import write_reports

        loaded, digest = load_plan(plan)
        loaded = with_overrides(
            loaded, executor=executor, workers=workers, ray_address=ray_address, mlflow=mlflow
        )
        trail = AuditTrail.open(audit_log, audit_key)
        with (
            progress_for(quiet) as progress,
            closing(task_runner(loaded, task_cache(output, no_cache), progress)) as tasks,
        ):
            assessment = run_plan(loaded, plan_path=plan, plan_sha256=digest, progress=progress, tasks=tasks)
        paths = write_reports(assessment, output, formats)
        record_assessment(
            trail, "assess", {"plan": plan, "output": output, "format": formats}, assessment, paths
        )
        summarise(assessment, paths)
        report_tasks(tasks)
        if loaded.tracking is not None:
            track(assessment, paths, loaded)
        return EXIT_OK if assessment.passed else EXIT_POLICY_FAILED

    guarded(run)


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the model, plan and reports.")
    ] = Path("out/demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    full: Annotated[
        bool,
        typer.Option("--full", help="The thorough assessment (more samples, attacks, rates, shadow models)."),
    ] = False,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
) -> None:
    """Train a small CNN on the built-in digits set, assess it, and write the report (exit 0 unless it fails)."""

    def run() -> int:
        from aisec.cli.audit_trail import AuditTrail
        from aisec.demo.run import run_demo
        from aisec.report.writer import write_reports

        trail = AuditTrail.open(audit_log, audit_key)

        duration = "ten minutes or more" if full else "about two minutes"
        console.print(
            "training the demo CNN on digits and assessing it: evasion, extraction, inversion, membership "
            f"inference, poisoning and backdoors, with their defences ({duration} on 2 CPU cores)..."
        )
        with progress_for(quiet) as progress:
            plan_path, assessment = run_demo(output, progress, full=full)
        paths = write_reports(assessment, output, FORMATS)
        record_assessment(trail, "demo", {"output": output, "full": full}, assessment, paths)
        summarise(assessment, paths)
        console.print(f"plan used: {plain(plan_path)}\nopen {plain(paths['html'])}")
        return EXIT_OK

    guarded(run)


cli_supply_chain.register(app)
cli_inspect.register(app)
cli_audit.register(app)
cli_data.register(app)
cli_validate.register(app)
cli_guard.register(app)
