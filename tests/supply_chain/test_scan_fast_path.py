"""`aisec scan` without typer (aisec.cli.scan) behaves as the typer command: same options from the same
command line, same output, same exit codes; and it imports neither typer, rich nor any ML library."""

from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from aisec.cli import app, supply_chain
from aisec.cli import scan as fast

runner = CliRunner()


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def _typer_options(args: list[str], monkeypatch: pytest.MonkeyPatch) -> fast.ScanOptions | None:
    """The options the typer command passes to `run_scan` for `aisec scan ARGS`; None if typer refuses the line."""
    seen: list[fast.ScanOptions] = []
    monkeypatch.setattr(supply_chain, "run_scan", lambda options: seen.append(options) or 0)
    result = runner.invoke(app, ["scan", *args])
    if seen:
        assert result.exit_code == 0, result.output
        return seen[0]
    assert result.exit_code != 0 or "--help" in args
    return None


ACCEPTED = [
    ["m.pt"],
    ["m.pt", "models/", "-q"],
    ["-q", "m.pt", "--no-hash", "--quiet"],
    ["m.pt", "--format", "json", "--json", "out/r.json", "--sarif", "r.sarif"],
    ["--format=sarif", "m.pt", "--fail-on=high", "--json=r.json"],
    ["m.pt", "-f", "json", "-f", "text"],  # the last value wins, as in click
    ["m.pt", "--fail-on", "info"],
]
LEFT_TO_TYPER = [
    [],
    ["--help"],
    ["m.pt", "--help"],
    ["m.pt", "-h"],
    ["m.pt", "--bogus"],
    ["--", "m.pt"],
    ["-"],
    ["m.pt", "-fjson"],
    ["-qf", "json", "m.pt"],
    ["m.pt", "--format", "xml"],
    ["m.pt", "--fail-on", "severe"],
    ["m.pt", "--json"],
    ["m.pt", "--json", "-q"],  # click takes "-q" as the file name
    ["m.pt", "--json="],
    ["m.pt", "--quiet=yes"],
    ["m.pt", "--debug"],
]


@pytest.mark.parametrize("args", ACCEPTED)
def test_accepted_lines_give_typers_options(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast.parse(args) == _typer_options(args, monkeypatch) is not None


@pytest.mark.parametrize("args", LEFT_TO_TYPER)
def test_unusual_lines_are_left_to_typer(args: list[str]) -> None:
    assert fast.parse(args) is None


WORDS = ["m.pt", "dir/", "x y.pkl", "-q", "--quiet", "--no-hash", "-f", "--format", "--json", "--sarif",
         "--fail-on", "json", "sarif", "text", "xml", "high", "info", "severe", "out.json", "-", "--", "-h",
         "--help", "-x", "--format=json", "--fail-on=low", "--json=", "--sarif=s.sarif", "-qf", "-fjson", "",
         "--executor", "pool", "ray", "in_process", "--workers", "2", "0", "--workers=3", "--ray-address",
         "auto", "--executor=pool"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=7))
def test_any_line_parses_as_typer_parses_it_or_is_left_to_typer(args: list[str]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        options = fast.parse(args)
        if options is not None:
            assert options == _typer_options(args, monkeypatch)


TEXTS = [
    "safe       models/m.pt (pickle)",
    "1 file(s) scanned in 0.01 s: 1 safe",
    "3 file(s) scanned in 12.50 s: 1 safe, 1 suspicious, 1 unsafe",
    "safe       a[red]b.pkl (pickle)",
    "safe       a[/red]b.pkl (pickle)",
    "safe       :smile:.pkl (pickle)",
    "safe       C:/models/a:b.pkl (pickle)",
    "safe       tab\there.pkl (pickle)",
    "safe       bell\x07.pkl (pickle)",
    "safe       模型/权重.pt (pickle)",
    "safe       " + "x" * 200 + ".pt (pickle)",
    "12345 file(s) scanned in 1234.56 s: 9999 safe, 999 suspicious, 99 error, 9 unsafe",
]
ENVIRONMENTS = [{}, {"COLUMNS": "20"}, {"COLUMNS": "0"}, {"COLUMNS": "1"}, {"COLUMNS": "300"},
                {"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "0"}, {"NO_COLOR": "1"}]  # fmt: skip


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("soft_wrap", [True, False])
def test_echo_prints_what_rich_prints(environment: dict[str, str], soft_wrap: bool, monkeypatch) -> None:
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for text in TEXTS:
        markup = re.sub(r"^(\w+)", r"[green]\1[/green]", text)
        expected, ours = io.StringIO(), io.StringIO()
        try:
            Console(file=expected).print(markup, soft_wrap=soft_wrap, highlight=not soft_wrap)
        except Exception as error:  # noqa: BLE001 - rich refuses the markup: so must we
            monkeypatch.setattr(sys, "stdout", ours)
            with pytest.raises(type(error)):
                fast.echo(markup, text, soft_wrap=soft_wrap, highlight=not soft_wrap)
            continue
        monkeypatch.setattr(sys, "stdout", ours)
        fast.echo(markup, text, soft_wrap=soft_wrap, highlight=not soft_wrap)
        assert ours.getvalue() == expected.getvalue(), (environment, text)


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    (folder / "dir").mkdir(parents=True)
    (folder / "safe.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    (folder / "evil.pt").write_bytes(pickle.dumps(_System(), protocol=2))
    (folder / "odd.pkl").write_bytes(pickle.dumps(Path, protocol=4) + b"tail")
    (folder / "a[red]b.pkl").write_bytes(pickle.dumps([1]))
    (folder / "dir" / "README.md").write_text("# notes\n")
    return folder


def _run(path: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`aisec ARGS` in a new process, through `main` (fast path) or straight through the typer app."""
    call = "main()" if path == "fast" else "app()"
    code = f"import sys; sys.argv[0] = 'aisec'; from aisec.cli import app, main; {call}"
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip
    return result.returncode, _normalise(result.stdout), _normalise(result.stderr)


def _normalise(text: str) -> str:
    """Durations and start times differ from run to run."""
    return re.sub(r'\d+\.\d+|"(started_at|startTimeUtc)": "[^"]*"', "X", text)


CASES = [
    ["scan", "safe.pkl"],
    ["scan", "-q", "safe.pkl", "dir"],
    ["scan", "evil.pt", "odd.pkl", "a[red]b.pkl"],
    ["scan", "odd.pkl", "--fail-on", "high"],
    ["scan", ".", "--format", "json", "--sarif", "../out/s.sarif"],
    ["scan", "evil.pt", "-f", "sarif", "--no-hash"],
    ["scan", "missing.pkl"],
    ["scan", "safe.pkl", "--format", "xml"],
    ["scan", "--help"],
]


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_both_paths_print_the_same_and_exit_the_same(args: list[str], files: Path) -> None:
    typer_result = _run("typer", args, files)
    for written in files.parent.glob("out/*"):
        written.rename(written.with_suffix(".typer"))
    fast_result = _run("fast", args, files)
    assert fast_result == typer_result
    for written in files.parent.glob("out/*.sarif"):
        assert _normalise(written.read_text()) == _normalise(written.with_suffix(".typer").read_text())


def test_both_paths_agree_on_a_terminal(files: Path) -> None:
    forced = {"FORCE_COLOR": "1", "COLUMNS": "100"}
    assert _run("fast", ["scan", "safe.pkl", "evil.pt"], files, forced) == _run(
        "typer", ["scan", "safe.pkl", "evil.pt"], files, forced
    )


def test_fast_path_imports_no_typer_rich_or_ml_library(files: Path) -> None:
    code = (
        "import sys; sys.argv = ['aisec', 'scan', 'safe.pkl', 'dir']; from aisec.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "heavy = ('typer', 'click', 'rich', 'pydantic', 'jinja2', 'numpy', 'torch', 'sklearn', 'onnxruntime')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=files, timeout=120
    )
    assert result.stdout.splitlines()[-1] == "[]", result.stderr
