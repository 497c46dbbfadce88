"""What the commands that run an assessment (`assess`, `demo`, `inspect`) share: the report formats they
accept, progress while it runs, the audit-log entry and the summary table of its findings and reports
afterwards."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisec.cli.support import console, plain
from aisec.core.errors import BadInputError
from aisec.report import FILE_NAMES

if TYPE_CHECKING:
    from aisec.assessment.finding import Assessment
    from aisec.cli.audit_trail import AuditTrail
    from aisec.core.progress import Progress


def report_formats(value: str) -> tuple[str, ...]:
    """--format: a comma-separated list of json, html, sarif, junit; BadInputError (exit 2) naming a bad one."""
    chosen = tuple(part.strip() for part in value.split(",") if part.strip())
    bad = [f for f in chosen if f not in FILE_NAMES]
    if bad or not chosen:
        raise BadInputError(f"--format {value!r}: choose from {', '.join(FILE_NAMES)}")
    return chosen


@contextmanager
def progress_for(quiet: bool) -> Iterator[Progress]:
    """Bars on a terminal; one line per step where standard error is a log (CI, a pipe); nothing if quiet."""
    from aisec.core.progress import LineProgress, NullProgress, RichProgress

    if quiet:
        yield NullProgress()
        return
    if not console.is_terminal:
        yield LineProgress(sys.stderr)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        yield RichProgress(bars)


def record_assessment(
    trail: AuditTrail,
    command: str,
    arguments: Mapping[str, Any],
    assessment: Assessment,
    paths: Mapping[str, Path],
    extra_files: tuple[Path, ...] = (),
) -> None:
    """Append the assessment's entry (hashes, verdict, headline figures, reports and `extra_files` written with
    them) to the audit log, if any."""
    if not trail.enabled:
        return
    from aisec.report import FORMAT_FILES
    from aisec.report.audit_record import assessment_record

    written = [paths[fmt].parent / name for fmt in paths for name in FORMAT_FILES[fmt]] + list(extra_files)
    seq = trail.record(command, arguments, assessment_record(assessment, written))
    console.print(f"audit log: entry {seq} appended and a checkpoint signed")


def summarise(assessment: Assessment, paths: dict[str, Path]) -> None:
    from rich.table import Table

    table = Table(title=f"{assessment.name}: {len(assessment.findings)} finding(s)")
    for column in ("rule", "severity", "finding", "policy"):
        table.add_column(column)
    for f in assessment.findings:
        verdict = "[red]broken[/red]" if f.breaks_policy else "held" if f.policy else "-"
        table.add_row(
            f.rule_id,
            f.severity.value,
            f.title + ("" if f.reliable else " [yellow](unreliable)[/yellow]"),
            verdict,
        )
    console.print(table)
    verdict = "[green]policy held[/green]" if assessment.passed else "[red]policy broken[/red]"
    console.print(f"{verdict}; reports:")
    for kind, path in paths.items():
        console.print(f"  {kind:6} {plain(path)}")
