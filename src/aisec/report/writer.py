"""Write an assessment's reports into a folder, all of them or none."""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from aisec.assessment.finding import Assessment
from aisec.core.errors import BadInputError

# format: its files, each (file name, "module:function" rendering it to text); a renderer is imported only when
# its format is asked for, so that JSON or SARIF alone never loads matplotlib. The first file is the format's own.
_FORMATS: dict[str, tuple[tuple[str, str], ...]] = {
    "json": (("report.json", "aisec.report.json_report:render_json"),),
    "html": (("report.html", "aisec.report.html:render_html"),),
    "sarif": (("report.sarif", "aisec.report.sarif:render_sarif"),),
    "junit": (("report.junit.xml", "aisec.report.junit:render_junit"),),
    "card": (
        ("model_card.md", "aisec.report.model_card:render_model_card"),
        ("model_card.json", "aisec.report.model_card:render_model_card_json"),
    ),
}
# format -> the file write_reports returns for it; FORMAT_FILES: format -> every file it writes
FILE_NAMES: dict[str, str] = {fmt: files[0][0] for fmt, files in _FORMATS.items()}
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    fmt: tuple(name for name, _ in files) for fmt, files in _FORMATS.items()
}
MODELS = "models"  # the folder, inside the report folder, of the models an assessment trained


def write_reports(
    assessment: Assessment,
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] = tuple(FILE_NAMES),
    *,
    extra: Mapping[str, bytes] | None = None,
) -> dict[str, Path]:
    """Write the reports in `formats` into `out_dir` (created if missing) and return each format's path (its
    `FILE_NAMES` file; `FORMAT_FILES` lists all it writes: the model card is `model_card.md` and its data
    `model_card.json`); the models the assessment trained (its findings' `models`, e.g. adversarially trained
    ones) go to `out_dir/models/`. `extra` maps further file names to their bytes (e.g. `aisec validate`'s
    `validation.json`), written with the reports, all or none.

    All of them are rendered and written into a temporary folder beside `out_dir` before any is moved in.
    On any error, KeyboardInterrupt included, nothing is left behind: no temporary folder, no new folder,
    no partial or mixed set of reports (a report this call replaced is put back). Files in `out_dir` other
    than the reports written are never touched.
    """
    chosen = list(dict.fromkeys(formats))
    unknown = ", ".join(repr(fmt) for fmt in chosen if fmt not in _FORMATS)
    if unknown or not chosen:
        problem = f"unknown report format {unknown}" if unknown else "no report format given"
        raise BadInputError(f"{problem}; choose from {', '.join(_FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"report folder {out} exists and is not a folder")

    files = {
        name: _render(renderer, assessment).encode("utf-8")
        for fmt in chosen
        for name, renderer in _FORMATS[fmt]
    }
    models = {f"{MODELS}/{m.file_name}": m.content for f in assessment.findings for m in f.models}
    files |= models
    for name in extra or {}:
        if "/" in name or name in files or name.startswith("."):
            raise ValueError(f"extra report file {name!r} is not a plain file name of its own")
    files |= dict(extra or {})
    folders = (out / MODELS, out, *out.parents) if models else (out, *out.parents)
    created = [folder for folder in folders if not folder.exists()]  # innermost first
    undo: list[tuple[Path, Path | None]] = []  # (report, where the report it replaced waits) in move order
    staging: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".aisec-tmp", dir=out.parent))
        (staging / MODELS).mkdir()
        for name, content in files.items():
            (staging / name).write_bytes(content)
        out.mkdir(exist_ok=True)
        if models:
            (out / MODELS).mkdir(exist_ok=True)
        for name in files:
            target = out / name
            previous = staging / f"previous-{name.replace('/', '-')}" if os.path.lexists(target) else None
            undo.append((target, previous))
            if previous is not None:
                os.replace(target, previous)
            os.replace(staging / name, target)
    except BaseException:
        _roll_back(undo, staging, created)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return {fmt: out / FILE_NAMES[fmt] for fmt in chosen}


def _render(renderer: str, assessment: Assessment) -> str:
    module, function = renderer.split(":")
    return getattr(importlib.import_module(module), function)(assessment)


def _roll_back(undo: list[tuple[Path, Path | None]], staging: Path | None, created: list[Path]) -> None:
    """Undo a failed write: put replaced reports back, remove new ones, the staging folder and new folders."""
    for target, previous in reversed(undo):
        if previous is None:
            target.unlink(missing_ok=True)
        elif os.path.lexists(previous):
            os.replace(previous, target)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not there, or not empty: it holds something this call did not write
            pass
