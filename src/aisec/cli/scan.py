"""`aisec scan` without typer: its command line (`parse`), what it does (`run_scan`) and how it prints.

`aisec.cli.main` runs a command line that `parse` accepts without importing typer; the typer command
(`supply_chain.scan`) checks its options and calls the same `run_scan`. `parse` accepts only plain lines
(options spelled out, each value a separate non-empty word or after `--name=`) and leaves everything else
to typer: `--help`, an unknown option, a missing or bad value, `--`, combined short options. So typer's
messages and exit codes stay the only ones, and a line means the same on both paths. `--executor`,
`--workers` and `--ray-address` (where the files are scanned, docs/scale.md) are checked together by
`scan_executor` on both paths: a choice that does not fit is one line of error, exit 2.

rich is imported only where it would change what is printed: a terminal (colours), the table of findings,
and text rich would restyle (markup, emoji codes, control characters) or wrap.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from aisec.cli import support
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED, BadInputError

if TYPE_CHECKING:
    from aisec.core.executor import Executor, ExecutorKind
    from aisec.defend.supply_chain.result import FileScan, ScanReport

FORMATS = ("text", "json", "sarif")
SEVERITIES = ("info", "low", "medium", "high", "critical")
VERDICT_STYLE = {"safe": "green", "suspicious": "yellow", "error": "magenta", "unsafe": "red"}
_FLAGS = {"-q": "quiet", "--quiet": "quiet", "--no-hash": "no_hash"}
_VALUES = {
    "-f": "format",
    "--format": "format",
    "--json": "json_out",
    "--sarif": "sarif_out",
    "--fail-on": "fail_on",
    "--audit-log": "audit_log",
    "--audit-key": "audit_key",
    "--executor": "executor",
    "--workers": "workers",
    "--ray-address": "ray_address",
}


@dataclass(frozen=True)
class ScanOptions:
    """`aisec scan`'s arguments (docs/cli.md)."""

    paths: tuple[Path, ...]
    format: str = "text"
    json_out: Path | None = None
    sarif_out: Path | None = None
    fail_on: str | None = None
    quiet: bool = False
    no_hash: bool = False
    audit_log: str | None = None  # the tamper-evident log this run is appended to (AISEC_AUDIT_LOG otherwise)
    audit_key: Path | None = None  # its signing key (AISEC_AUDIT_KEY otherwise)
    executor: str | None = None  # where the files are scanned: in_process (the default), pool or ray
    workers: int | None = None
    ray_address: str | None = None


def parse(args: list[str]) -> ScanOptions | None:
    """The options of a plain, valid `aisec scan` line (`args`: the words after `scan`); None leaves it to typer."""
    paths: list[Path] = []
    given: dict[str, Any] = {}
    words = iter(args)
    for word in words:
        name, equals, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if not word.startswith("-"):
            paths.append(Path(word))
        elif word in _FLAGS:
            given[_FLAGS[word]] = True
        elif name in _VALUES:
            value = value if equals else next(words, "")
            if not value or value.startswith("-"):  # typer says what is missing, or takes "-x" as the value
                return None
            given[_VALUES[name]] = value
        else:
            return None
    if (
        not paths
        or given.get("format", "text") not in FORMATS
        or given.get("fail_on", "info") not in SEVERITIES
    ):
        return None
    if "workers" in given:
        if not (given["workers"].isascii() and given["workers"].isdecimal() and int(given["workers"]) >= 1):
            return None  # typer says what is wrong with it, or reads it as click does ("+2", " 2")
        given["workers"] = int(given["workers"])
    for key in ("json_out", "sarif_out", "audit_key"):
        if key in given:
            given[key] = Path(given[key])
    return ScanOptions(tuple(paths), **given)


def scan_executor(options: ScanOptions) -> Executor | None:
    """The executor `--executor`, `--workers` and `--ray-address` ask for, checked as a plan's `executor` section
    is (BadInputError); None for this process, the default."""
    from aisec.core.executor import choice_problem, make_executor

    kind = "in_process" if options.executor is None else options.executor
    ray_options = ("--ray-address",) if options.ray_address is not None else ()
    problem = choice_problem(kind, workers=options.workers, ray_options=ray_options)
    if problem is not None:
        raise BadInputError(f"--executor: {problem}")
    if options.ray_address == "":
        raise BadInputError("--ray-address is empty: give local, auto, host:port or ray://host:port")
    if kind == "in_process":
        return None
    address = "local" if options.ray_address is None else options.ray_address
    return make_executor(cast("ExecutorKind", kind), workers=options.workers, address=address)


def run_scan(options: ScanOptions) -> int:
    """Scan, write the reports asked for, print; the exit code (1: something at or above --fail-on)."""
    from aisec.core.severity import Severity
    from aisec.defend.supply_chain.scanner import scan_paths

    def progress(result: FileScan) -> None:
        if not options.quiet and options.format == "text":
            verdict, style = result.verdict.value, VERDICT_STYLE[result.verdict.value]
            where = f"{result.path} ({result.format})"
            echo(f"[{style}]{verdict:10}[/{style}] {support.plain(where)}", f"{verdict:10} {where}",
                 err=True, soft_wrap=True, highlight=False)  # fmt: skip

    from aisec.cli.audit_trail import AuditTrail

    executor = scan_executor(options)
    try:
        trail = AuditTrail.open(options.audit_log, options.audit_key)
        report = scan_paths(
            options.paths, on_file=progress, hash_content=not options.no_hash, executor=executor
        )
    finally:
        if executor is not None:
            executor.close()
    written: dict[str, Path] = {}
    for out_path, kind in ((options.json_out, "json"), (options.sarif_out, "sarif")):
        if out_path is not None:
            from aisec.core.atomic import write_atomic

            out_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out_path, _render(report, kind))
            written[kind] = out_path
    if options.format == "text":
        _print_findings(report)
    else:
        sys.stdout.write(_render(report, options.format))
    fails = report.fails(Severity(options.fail_on) if options.fail_on else None)
    if trail.enabled:
        from aisec.report.audit_record import scan_record

        arguments = {
            "paths": [str(p) for p in options.paths], "fail_on": options.fail_on, "no_hash": options.no_hash,
            "json": options.json_out, "sarif": options.sarif_out,
        }  # fmt: skip
        trail.record("scan", arguments, {**scan_record(report, written), "policy_failed": fails})
    return EXIT_POLICY_FAILED if fails else EXIT_OK


def _render(report: ScanReport, kind: str) -> str:
    from aisec.report.scan import render_scan_json, render_scan_sarif

    return render_scan_json(report) if kind == "json" else render_scan_sarif(report)


def _print_findings(report: ScanReport) -> None:
    flagged = [f for f in report.files if f.findings]
    if flagged:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title="findings", show_lines=False)
        for column in ("file", "severity", "rule", "finding", "where"):
            table.add_column(column, overflow="fold")
        for scan_result in flagged:
            for finding in sorted(scan_result.findings, key=lambda f: -f.severity.rank):
                # Text, never markup: paths and messages quote the scanned files, which an attacker writes
                cells = (
                    scan_result.path,
                    finding.severity.value,
                    finding.rule_id,
                    finding.message,
                    finding.location,
                )
                table.add_row(*(Text(str(cell)) for cell in cells))
        Console().print(table)
    counts = {v: sum(1 for f in report.files if f.verdict.value == v) for v in VERDICT_STYLE}
    styled = ", ".join(f"[{VERDICT_STYLE[v]}]{n} {v}[/{VERDICT_STYLE[v]}]" for v, n in counts.items() if n)
    plain = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    head = f"{len(report.files)} file(s) scanned in {report.duration_s:.2f} s: "
    echo(head + (styled or "nothing to scan"), head + (plain or "nothing to scan"))


def echo(
    markup: str, plain: str, *, err: bool = False, soft_wrap: bool = False, highlight: bool = True
) -> None:
    """Print `markup` as a rich console does (on stderr if `err`); `plain` is the text without its markup,
    written as it is where rich would write exactly that."""
    stream = sys.stderr if err else sys.stdout
    if prints_plainly(stream, plain, soft_wrap):
        stream.write(plain + "\n")
        stream.flush()
    elif err:
        from aisec.cli.support import stderr_console

        stderr_console().print(markup, soft_wrap=soft_wrap, highlight=highlight)
    else:
        from rich.console import Console

        Console().print(markup, soft_wrap=soft_wrap, highlight=highlight)


def prints_plainly(stream: TextIO, text: str, soft_wrap: bool) -> bool:
    """Whether a rich console would print `text` (markup-free) unchanged on `stream`: no terminal, so no
    styles (as rich.console.Console.is_terminal decides, without the environment variables that force one);
    nothing rich reads as markup or an emoji code; no control character; and, unless soft-wrapped, not
    wider than rich wraps at."""
    if sys.platform == "win32" or "FORCE_COLOR" in os.environ or "TTY_COMPATIBLE" in os.environ:
        return False
    try:
        if stream.isatty():
            return False
    except ValueError:  # a closed stream: let rich fail as it would
        return False
    if "[" in text or text.count(":") > 1 or not text.isprintable():
        return False
    width = _width()  # rich prints nothing at all on a console 0 wide
    return width > 0 and (soft_wrap or (text.isascii() and len(text) <= width))


def _width() -> int:
    """The width a rich console wraps at when it writes to no terminal (rich.console.Console.size)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    for fd in (0, 1, 2):
        try:
            return os.get_terminal_size(fd).columns or 80
        except (OSError, ValueError):
            continue
    return 80
