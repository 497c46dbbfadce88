"""`aisec data`: the data you did not make (docs/data-validation.md). `manifest` records where a data set came from
and what it held; `diff` compares two snapshots record by record, so a provider's relabelling is listed exactly;
`reference` saves a sketch of a reference data set once, and `monitor` checks windows of incoming data against it.

Exit codes: manifest and reference 0 written; diff 0 no label changed and no class appeared or vanished, 1 some
did (the provider changed its labels); monitor 0 the policy held, 1 a finding breaks it; 2 bad input (one line,
nothing written); 3 internal error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from aisec.cli.support import console, guarded, plain
from aisec.cli.validate import UnlabelledOption
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED

data_app = typer.Typer(
    help="Validate the data you did not make: provenance manifests and snapshot comparisons.",
    no_args_is_help=True,
)
_LABEL = Annotated[
    str, typer.Option("--label", help="The label column of a CSV or Parquet file (an .npz holds y).")
]
_KEY = Annotated[
    str | None,
    typer.Option("--key", help="The column whose values identify a record (an .npz holds ids)."),
]
_SHOWN = 20  # label changes printed; --json has them all


@data_app.command("manifest")
def manifest(
    paths: Annotated[list[Path], typer.Argument(help="The data set's files: .npz, .csv or .parquet.")],
    source: Annotated[str, typer.Option("--source", help="Who provided the data (a name or URL).")],
    licence: Annotated[str, typer.Option("--licence", help="Its licence, e.g. CC-BY-4.0.")],
    retrieved: Annotated[str, typer.Option("--retrieved", help="When you obtained it: YYYY-MM-DD.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the manifest (JSON).")
    ] = Path("data-manifest.json"),
    labeller: Annotated[str | None, typer.Option("--labeller", help="Who labelled it.")] = None,
    label: _LABEL = "label",
    key: _KEY = None,
    source_column: Annotated[
        str | None, typer.Option("--source-column", help="The column naming each record's source.")
    ] = None,
) -> None:
    """Write a provenance manifest: the files' and every record's hashes, counts per class, the schema and what
    you state about the data's origin. `aisec data diff` and reports cite it."""

    def run() -> int:
        from aisec.defend.data_validation.manifest import Provenance, build_manifest, write_manifest

        stated = Provenance(source=source, licence=licence, retrieved=retrieved, labeller=labeller)
        document = build_manifest(paths, stated, label=label, key=key, source=source_column)
        write_manifest(document, output)
        records = sum(f["records"] for f in document["files"])
        console.print(
            f"wrote {plain(output)}: {len(document['files'])} file(s), {records} records", highlight=False
        )
        return EXIT_OK

    guarded(run)


@data_app.command("diff")
def diff(
    old: Annotated[Path, typer.Argument(help="The earlier snapshot.")],
    new: Annotated[Path, typer.Argument(help="The later snapshot.")],
    label: _LABEL = "label",
    key: _KEY = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the whole comparison here (JSON).")
    ] = None,
) -> None:
    """Compare two snapshots record by record (by key, else by the content of each record's features): records
    added, removed and changed, every label that changed with its class-transition matrix, classes that
    appeared or vanished, schema changes. Exit 1 when a label changed or a class appeared or vanished."""

    def run() -> int:
        from aisec.core.atomic import write_atomic
        from aisec.defend.data_validation.records import read_records
        from aisec.defend.data_validation.snapshot_diff import diff_snapshots

        result = diff_snapshots(
            read_records(old, label=label, key=key), read_records(new, label=label, key=key)
        )
        if json_out is not None:
            write_atomic(json_out, json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
        _print_diff(result, old, new)
        relabelled = result.label_changes or result.classes_added or result.classes_removed
        return EXIT_POLICY_FAILED if relabelled else EXIT_OK

    guarded(run)


def _print_diff(result: Any, old: Path, new: Path) -> None:
    from rich.table import Table

    console.print(
        f"{plain(old)} ({result.old_count} records) -> {plain(new)} ({result.new_count} records), matched by "
        f"{result.matched_by}: {len(result.added)} added, {len(result.removed)} removed, {len(result.changed)} "
        f"changed, {len(result.label_changes)} relabelled",
        highlight=False,
    )
    for what, classes in (("appeared", result.classes_added), ("vanished", result.classes_removed)):
        if classes:
            console.print(f"classes that {what}: {plain(', '.join(map(str, classes)))}", highlight=False)
    for change in result.schema_changes:
        console.print(f"schema: {plain(change)}", highlight=False)
    if result.label_changes:
        table = Table(title=f"labels changed (first {min(_SHOWN, len(result.label_changes))})")
        for column in ("record", "old label", "new label"):
            table.add_column(column)
        for change in result.label_changes[:_SHOWN]:
            table.add_row(plain(change.key), plain(change.old), plain(change.new))
        console.print(table)
        transitions = Table(title="class transitions (old -> new: records)")
        for column in ("old", "new", "records"):
            transitions.add_column(column)
        for before, after_counts in result.transitions.items():
            for after, count in after_counts.items():
                transitions.add_row(plain(before), plain(after), str(count))
        console.print(transitions)


@data_app.command("reference")
def reference(
    path: Annotated[Path, typer.Argument(help="The reference data set: .npz, .csv or .parquet.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the sketch.")] = Path(
        "reference.sketch"
    ),
    label: _LABEL = "label",
    unlabelled: UnlabelledOption = False,
    key: _KEY = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample the sketch keeps.")] = 0,
) -> None:
    """Save a sketch of a reference data set (per-feature histograms and statistics, class counts, a sample for
    the multivariate tests, record digests for leakage), so that windows of incoming data are checked against
    it without re-reading the reference (`aisec data monitor`)."""

    def run() -> int:
        import numpy as np

        from aisec.defend.data_validation.records import read_records
        from aisec.defend.data_validation.reference_sketch import build_sketch, save_sketch

        records = read_records(path, label=None if unlabelled else label, key=key)
        sketch = build_sketch(records, generator=np.random.default_rng(seed))
        save_sketch(sketch, output)
        console.print(
            f"wrote {plain(output)}: {sketch.rows} records, {len(sketch.numeric)} numeric and "
            f"{len(sketch.categorical)} categorical features",
            highlight=False,
        )
        return EXIT_OK

    guarded(run)


@data_app.command("monitor")
def monitor(
    sketch: Annotated[Path, typer.Argument(help="The reference sketch (`aisec data reference`).")],
    window: Annotated[Path, typer.Argument(help="A window of incoming data: .npz, .csv or .parquet.")],
    history: Annotated[
        Path | None,
        typer.Option("--history", help="JSON-lines file of earlier windows; this window is appended."),
    ] = None,
    label: _LABEL = "label",
    unlabelled: UnlabelledOption = False,
    key: _KEY = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="YAML of thresholds (docs/data-validation.md).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the reports.")] = Path("out"),
) -> None:
    """Check a window of incoming data against a reference sketch: schema, drift, labels, records repeated from
    the reference. The report charts every window of --history. Exit 1 when a finding breaks the policy."""

    def run() -> int:
        from aisec.assessment.plan import DataFileSection
        from aisec.assessment.validate_data import monitor_window
        from aisec.cli.validate import REPORT_FORMATS, read_policy, write_validation
        from aisec.core.atomic import write_atomic

        policy = read_policy(policy_file)
        earlier = _read_history(history)
        section = DataFileSection(path=window, label=None if unlabelled else label, key=key)
        assessment, result, entry = monitor_window(sketch, section, history=earlier, policy=policy, seed=seed)
        write_validation(assessment, result, output, REPORT_FORMATS)
        if history is not None:
            lines = [json.dumps(e, sort_keys=True, allow_nan=False) for e in (*earlier, entry)]
            write_atomic(history, "\n".join(lines) + "\n")
        return EXIT_OK if assessment.passed else EXIT_POLICY_FAILED

    guarded(run)


def _read_history(path: Path | None) -> list[dict[str, Any]]:
    """The windows checked so far; a history that is not this command's JSON lines is bad input."""
    from aisec.core.errors import BadInputError

    if path is None or not path.exists():
        return []
    entries = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: cannot read the monitoring history: {e}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise BadInputError(f"{path}:{number}: not a JSON line of a monitoring history") from None
        if not isinstance(entry, dict) or not {"window", "drifted_features", "checked_at"} <= set(entry):
            raise BadInputError(f"{path}:{number}: not an entry of `aisec data monitor`'s history")
        entries.append(entry)
    return entries


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
