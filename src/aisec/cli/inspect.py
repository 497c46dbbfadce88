"""`aisec inspect`: a model file you did not build, checked with the model and some clean data (docs/cli.md).

The file is scanned (and its signature verified, with --key) before it is loaded; a file that fails is never
loaded and the report says why. Then the behavioural backdoor scan, the shortcut check and explanations
(`probes.inspection`), and the four reports, written only at the end, all or none.

Exit codes: 0 nothing at or above --fail-on; 1 a finding at or above it, or a model the file checks kept from
being loaded; 2 bad input (one line, nothing written); 3 internal error; 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aisec.cli.assessment_output import progress_for, record_assessment, report_formats, summarise
from aisec.cli.audit import AuditKeyOption, AuditLogOption
from aisec.cli.scan import SEVERITIES
from aisec.cli.support import guarded
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED, BadInputError
from aisec.report import FILE_NAMES

KINDS = ("auto", "torch", "torchscript", "onnx", "sklearn")
# How a model file is loaded, for the commands that load one (inspect, validate --model).
FactoryOption = Annotated[
    str | None,
    typer.Option("--factory", help="package.module:function building the module of a torch state dict."),
]
KindOption = Annotated[
    str, typer.Option("--kind", help="auto (from the file's bytes), torch, torchscript, onnx or sklearn.")
]
TrustedOption = Annotated[
    bool,
    typer.Option("--trusted", help="Load a TorchScript file (it runs its own code): only files you trust."),
]


def inspect(
    model: Annotated[
        Path,
        typer.Argument(help="The model file: torch state dict, TorchScript, ONNX or scikit-learn pickle."),
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Clean labelled data: an .npz with x and y.")],
    factory: FactoryOption = None,
    kind: KindOption = "auto",
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Shape of one sample, e.g. 1,8,8 (default: inferred).")
    ] = None,
    classes: Annotated[
        int | None, typer.Option("--classes", help="Number of classes (with --input-shape).")
    ] = None,
    bounds: Annotated[
        str | None,
        typer.Option("--bounds", help="Input range LOWER,UPPER (with --input-shape; default 0,1)."),
    ] = None,
    trusted: TrustedOption = False,
    signature: Annotated[
        Path | None,
        typer.Option("--signature", help="The model's signature (default: MODEL.sig, with --key)."),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="The publisher's public key (PEM): verify before loading.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="Clean samples the checks use.")] = 500,
    no_backdoor_scan: Annotated[
        bool, typer.Option("--no-backdoor-scan", help="Skip the behavioural backdoor scan.")
    ] = False,
    no_shortcuts: Annotated[bool, typer.Option("--no-shortcuts", help="Skip the shortcut check.")] = False,
    explanations: Annotated[
        str,
        typer.Option(
            "--explanations", help="Comma-separated: integrated_gradients, saliency, occlusion; or none."
        ),
    ] = "integrated_gradients",
    fail_on: Annotated[
        str,
        typer.Option("--fail-on", help="Exit 1 for findings at or above: info, low, medium, high, critical."),
    ] = "medium",
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the reports.")] = Path("out"),
    format: Annotated[
        str,
        typer.Option("--format", "-f", help="Comma-separated: json,html,sarif,junit,card (the model card)."),
    ] = ",".join(FILE_NAMES),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
) -> None:
    """Inspect a model you did not build: static scan and signature before loading, then backdoor scan,
    shortcut check and explanations. Exit 1 when a finding is at or above --fail-on."""

    def run() -> int:
        from aisec.assessment.inspect_file import inspect_model_file, inspection_section
        from aisec.assessment.plan import DataSection, PolicySection
        from aisec.assessment.subject import load_data
        from aisec.cli.audit_trail import AuditTrail
        from aisec.core.severity import Severity
        from aisec.core.user_code import import_callable
        from aisec.report.writer import write_reports
        from aisec.targets.base import InputSpec

        formats = report_formats(format)
        if kind not in KINDS:
            raise BadInputError(f"--kind {kind!r}: choose {', '.join(KINDS)}")
        if fail_on not in SEVERITIES:
            raise BadInputError(f"--fail-on {fail_on!r}: choose {', '.join(SEVERITIES)}")
        if signature is not None and key is None:
            raise BadInputError("--signature needs --key, the publisher's public key (PEM) to verify it with")
        section = inspection_section(
            {
                "backdoor_scan": not no_backdoor_scan,
                "shortcuts": not no_shortcuts,
                "explanations": _names(explanations),
                "samples": samples,
                "signature": signature,
                "public_key": key,
            }
        )
        shape_classes_bounds = _spec(input_shape, classes, bounds)
        spec = InputSpec(*shape_classes_bounds) if shape_classes_bounds is not None else None
        build = import_callable(factory, "--factory") if factory is not None else None
        labelled = load_data(DataSection(path=data), seed=seed)
        trail = AuditTrail.open(audit_log, audit_key)
        with progress_for(quiet) as progress:
            assessment = inspect_model_file(
                model,
                labelled,
                kind=None if kind == "auto" else kind,
                factory=build,
                trusted=trusted,
                spec=spec,
                section=section,
                policy=PolicySection(fail_on=Severity(fail_on)),
                seed=seed,
                progress=progress,
            )
        paths = write_reports(assessment, output, formats)
        arguments = {
            "model": model, "data": data, "factory": factory, "kind": kind, "input_shape": input_shape,
            "classes": classes, "bounds": bounds, "trusted": trusted, "signature": signature, "key": key,
            "samples": samples, "backdoor_scan": not no_backdoor_scan, "shortcuts": not no_shortcuts,
            "explanations": explanations, "fail_on": fail_on, "seed": seed, "output": output, "format": formats,
        }  # fmt: skip
        record_assessment(trail, "inspect", arguments, assessment, paths)
        summarise(assessment, paths)
        return EXIT_OK if assessment.passed else EXIT_POLICY_FAILED

    guarded(run)


def _names(value: str) -> tuple[str, ...]:
    """A comma-separated list; "none" is the empty one."""
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    return () if names == ("none",) else names


def _spec(
    input_shape: str | None, classes: int | None, bounds: str | None
) -> tuple[tuple[int, ...], int, float, float] | None:
    """(shape, classes, lower, upper) from --input-shape, --classes and --bounds; None when none is given (the
    spec is then inferred from the model and the data)."""
    if input_shape is None and classes is None and bounds is None:
        return None
    if input_shape is None or classes is None:
        raise BadInputError(
            "--input-shape and --classes go together (with --bounds, default 0,1); leave all three out to infer "
            "the input spec from the model and the data"
        )
    try:
        shape = tuple(int(part) for part in input_shape.split(","))
    except ValueError:
        raise BadInputError(f"--input-shape {input_shape!r}: give positive integers, e.g. 1,8,8") from None
    if not shape or min(shape) < 1:
        raise BadInputError(f"--input-shape {input_shape!r}: give positive integers, e.g. 1,8,8")
    if classes < 2:
        raise BadInputError(f"--classes {classes}: a classifier has at least two classes")
    try:
        lower, upper = (float(part) for part in (bounds or "0,1").split(","))
    except ValueError:
        raise BadInputError(f"--bounds {bounds!r}: give LOWER,UPPER, e.g. 0,1") from None
    if not lower < upper:
        raise BadInputError(f"--bounds {bounds!r}: LOWER must be below UPPER")
    return shape, classes, lower, upper


def register(app: typer.Typer) -> None:
    app.command()(inspect)
