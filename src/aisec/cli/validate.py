"""`aisec validate REFERENCE CURRENT`: data you did not make, checked against a reference (docs/data-validation.md).

Writes the reports (JSON, HTML, SARIF, JUnit) and `validation.json` into --output, all or none. Exit codes:
0 the policy held, 1 a finding breaks it, 2 bad input (one line naming the file and column; nothing written),
3 internal error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aisec.cli.assessment_output import record_assessment, report_formats, summarise
from aisec.cli.audit import AuditKeyOption, AuditLogOption
from aisec.cli.inspect import KINDS, FactoryOption, KindOption, TrustedOption
from aisec.cli.support import console, guarded, plain
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED, BadInputError

if TYPE_CHECKING:
    from aisec.assessment.finding import Assessment
    from aisec.assessment.plan import DataValidationPolicy, DataValidationProbeSection
    from aisec.defend.data_validation.records import Records
    from aisec.defend.data_validation.validate import Predict, ValidationResult

VALIDATION_JSON = "validation.json"
REPORT_FORMATS = ("json", "html", "sarif", "junit")
UnlabelledOption = Annotated[bool, typer.Option("--unlabelled", help="The data has no label column.")]


def validate(
    reference: Annotated[
        Path, typer.Argument(help="The reference data set (.npz, .csv or .parquet): what you trust.")
    ],
    current: Annotated[Path, typer.Argument(help="The data set to validate against it.")],
    key: Annotated[
        str | None, typer.Option("--key", help="The column identifying a record in both (an .npz holds ids).")
    ] = None,
    label: Annotated[
        str, typer.Option("--label", help="The label column of CSV and Parquet files (an .npz holds y).")
    ] = "label",
    unlabelled: UnlabelledOption = False,
    source_column: Annotated[
        str | None,
        typer.Option("--source-column", help="The column naming each reference record's source."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="A model to check on the data: prediction drift, accuracy per class."),
    ] = None,
    factory: FactoryOption = None,
    kind: KindOption = "auto",
    trusted: TrustedOption = False,
    policy_file: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="YAML of thresholds (docs/data-validation.md), e.g. max_label_change_rate."
        ),
    ] = None,
    fdr: Annotated[
        float, typer.Option("--fdr", help="False discovery rate of the per-feature drift tests.")
    ] = 0.04,
    min_effect: Annotated[
        float,
        typer.Option("--min-effect", help="Smallest drift that counts, in reference standard deviations."),
    ] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the reports.")] = Path("out"),
    format: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: json,html,sarif,junit.")
    ] = ",".join(REPORT_FORMATS),
    audit_log: AuditLogOption = None,
    audit_key: AuditKeyOption = None,
) -> None:
    """Validate CURRENT against REFERENCE: schema and ranges, per-feature drift (false-discovery-rate control and
    effect sizes) and drift of the data as a whole, label changes record by record, duplicates and leakage,
    dependence on one source. Exit 1 when a finding breaks the policy."""

    def run() -> int:
        from aisec.assessment.plan import DataFileSection
        from aisec.assessment.validate_data import model_predict, validate_data_files
        from aisec.cli.audit_trail import AuditTrail

        formats = report_formats(format)
        if "card" in formats:
            raise BadInputError(
                "--format card: a data validation has no model card; choose json,html,sarif,junit"
            )
        policy = read_policy(policy_file)
        column = None if unlabelled else label
        section = _section(
            reference=DataFileSection(path=reference, label=column, source=source_column),
            current=DataFileSection(path=current, label=column),
            key=key,
            fdr=fdr,
            min_effect=min_effect,
        )
        trail = AuditTrail.open(audit_log, audit_key)
        if kind not in KINDS:
            raise BadInputError(f"--kind {kind!r}: choose {', '.join(KINDS)}")
        load_model = None
        if model is not None:
            chosen_model = model

            def load_model(records: Records) -> tuple[Predict, str | None]:
                chosen = None if kind == "auto" else kind
                return model_predict(
                    chosen_model, records, kind=chosen, factory=factory, trusted=trusted, seed=seed
                )

        assessment, result = validate_data_files(
            section,
            policy=policy,
            seed=seed,
            load_model=load_model,
            model_source=None if model is None else str(model),
        )
        paths = write_validation(assessment, result, output, formats)
        arguments = {
            "reference": reference, "current": current, "key": key, "label": column, "source_column": source_column,
            "model": model, "factory": factory, "kind": kind, "trusted": trusted,
            "policy": policy_file, "fdr": fdr, "min_effect": min_effect, "seed": seed, "output": output,
            "format": formats,
        }  # fmt: skip
        record_assessment(trail, "validate", arguments, assessment, paths, (output / VALIDATION_JSON,))
        return EXIT_OK if assessment.passed else EXIT_POLICY_FAILED

    guarded(run)


def write_validation(
    assessment: Assessment, result: ValidationResult, output: Path, formats: tuple[str, ...]
) -> dict[str, Path]:
    """The reports and validation.json into `output`, all or none, then the summary table."""
    from aisec.assessment.validate_data import validation_summary
    from aisec.report.writer import write_reports

    summary = json.dumps(
        validation_summary(assessment, result), indent=2, ensure_ascii=False, allow_nan=False
    )
    paths = write_reports(assessment, output, formats, extra={VALIDATION_JSON: (summary + "\n").encode()})
    summarise(assessment, paths)
    console.print(f"  {'json':6} {plain(output / VALIDATION_JSON)} (the verdict and what changed)")
    return paths


def read_policy(path: Path | None) -> DataValidationPolicy:
    """The thresholds in a YAML file (the fields of `policy.data_validation`), or the defaults."""
    import yaml
    from pydantic import ValidationError

    from aisec.assessment.plan import DataValidationPolicy

    if path is None:
        return DataValidationPolicy()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the policy: {e.strerror or e}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise BadInputError(f"{path}: not a YAML policy: {e}") from None
    try:
        return DataValidationPolicy.model_validate(document)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise BadInputError(f"{path}: {field}: {first['msg']}") from None


def _section(**values: Any) -> DataValidationProbeSection:
    """The validation's settings from the command's options; BadInputError naming the option that is wrong."""
    from pydantic import ValidationError

    from aisec.assessment.plan import DataValidationProbeSection

    try:
        return DataValidationProbeSection(**values)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise BadInputError(f"--{field.replace('_', '-')}: {first['msg']}") from None


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
