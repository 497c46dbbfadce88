"""Validate a data set file against a reference file (`aisec validate`, and `probes.data_validation` inside a
plan): read both, run `defend.data_validation.validate`, and turn the result into an assessment whose findings
(AISEC-DAT-*) carry the policy's verdicts, plus the summary `validation.json` holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aisec.assessment.finding import Assessment, Finding, Provenance, SubjectInfo
from aisec.assessment.plan import DataFileSection, DataValidationPolicy, DataValidationProbeSection
from aisec.assessment.probes.data_validation_findings import validation_findings, with_monitoring_history
from aisec.core.hashing import file_sha256
from aisec.core.version import __version__
from aisec.defend.data_validation.feature_drift import DriftConfig
from aisec.defend.data_validation.records import Records, read_records
from aisec.defend.data_validation.reference_sketch import load_sketch
from aisec.defend.data_validation.validate import (
    Fit,
    Predict,
    ValidationConfig,
    ValidationResult,
    model_inputs,
    validate,
    validate_window,
)


def read_data_file(section: DataFileSection, *, key: str | None = None) -> Records:
    """The file a plan or the command names, with its label, key (or the shared `key`) and source columns."""
    return read_records(section.path, label=section.label, key=section.key or key, source=section.source)


def validation_config(section: DataValidationProbeSection, seed: int) -> ValidationConfig:
    return ValidationConfig(
        drift=DriftConfig(fdr=section.fdr, min_effect=section.min_effect),
        multivariate_alpha=section.multivariate_alpha,
        near_tolerance=section.near_tolerance,
        seed=seed,
    )


def validation_provenance(
    result: ValidationResult,
    reference: Records,
    current: Records,
    config: ValidationConfig,
    model_sha256: str | None,
) -> Provenance:
    return Provenance(
        tool_version=__version__,
        seed=config.seed,
        samples=len(current),
        model_sha256=model_sha256,
        data_sha256=_sha256(current.path),
        settings={
            "reference": reference.path,
            "reference_sha256": _sha256(reference.path),
            "reference_records": len(reference),
            "fdr": config.drift.fdr,
            "min_effect": config.drift.min_effect,
            "min_js": config.drift.min_js,
            "multivariate_alpha": config.multivariate_alpha,
            "label_alpha": config.label_alpha,
            "near_tolerance": config.near_tolerance,
            "timings_s": dict(result.timings),
        },
    )


def _sha256(path: str) -> str:
    """The file's SHA-256; data given as arrays has no file, and gets an empty digest."""
    try:
        return file_sha256(path)
    except OSError:
        return ""


def validate_data_files(
    section: DataValidationProbeSection,
    *,
    policy: DataValidationPolicy | None = None,
    seed: int = 0,
    predict: Predict | None = None,
    fit: Fit | None = None,
    load_model: Callable[[Records], tuple[Predict, str | None]] | None = None,
    model_source: str | None = None,
    model_sha256: str | None = None,
) -> tuple[Assessment, ValidationResult]:
    """Read the section's two files (bad input fails before any check runs), validate the current one against
    the reference and return the assessment with the raw result. The model is `predict`, or what
    `load_model(reference)` returns with its file's sha256 (`model_predict`)."""
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    reference = read_data_file(section.reference, key=section.key)
    current = read_data_file(section.current, key=section.key)
    if load_model is not None:
        predict, model_sha256 = load_model(reference)
    config = validation_config(section, seed)
    result = validate(reference, current, config, predict=predict, fit=fit)
    findings = validation_findings(
        result,
        policy or DataValidationPolicy(),
        validation_provenance(result, reference, current, config, model_sha256),
    )
    classes = (
        set()
        if result.labels is None
        else set(result.labels.reference_counts) | set(result.labels.current_counts)
    )
    assessment = _assessment(
        f"validation of {section.current.path.name} against {section.reference.path.name}",
        started.isoformat(timespec="seconds"),
        time.perf_counter() - clock,
        current,
        findings,
        num_classes=len(classes),
        model_source=model_source,
        model_sha256=model_sha256,
    )
    return assessment, result


def _assessment(
    name: str,
    started_at: str,
    seconds: float,
    current: Records,
    findings: list[Finding],
    *,
    num_classes: int,
    model_source: str | None = None,
    model_sha256: str | None = None,
) -> Assessment:
    """The assessment of a validation of `current`: the data as the subject (and the model, when one was
    checked on it), its findings."""
    schema = current.schema()
    return Assessment(
        name=name,
        tool_version=__version__,
        started_at=started_at,
        duration_s=round(seconds, 3),
        subject=SubjectInfo(
            target_kind="data" if model_source is None else "data and model",
            access="none",
            input_shape=tuple(schema["array"]["record_shape"])
            if schema["array"]
            else (len(current.columns),),
            num_classes=num_classes,
            model_source=model_source,
            model_sha256=model_sha256,
            data_name=current.path,
            data_samples=len(current),
            data_sha256=findings[0].provenance.data_sha256,
            input_spec_source="data file",
        ),
        threat_model={},
        findings=tuple(findings),
    )


def validation_summary(assessment: Assessment, result: ValidationResult) -> dict[str, Any]:
    """What `validation.json` holds: the verdict, the drifted features, every relabelled record, the classes
    that appeared or vanished, and every check's figures under `details`."""
    snapshot = result.snapshot
    labels = result.labels
    return {
        "schema": "aisec.validation/1",
        "passed": assessment.passed,
        "drift_alarm": result.drift_alarm,
        "drifted_features": result.drifted_features,
        "label_changes": [] if snapshot is None else snapshot.to_dict()["label_changes"],
        "new_classes": sorted(set(labels.new_classes)) if labels is not None else [],
        "removed_classes": sorted(set(labels.removed_classes)) if labels is not None else [],
        "failed_checks": [
            {"rule_id": f.rule_id, "check": c.rule, "threshold": c.threshold, "observed": c.observed}
            for f in assessment.findings
            for c in f.policy
            if not c.passed
        ],
        "details": result.to_dict(),
    }


def monitor_window(
    sketch_path: Path,
    window: DataFileSection,
    *,
    history: list[dict[str, Any]],
    policy: DataValidationPolicy | None = None,
    seed: int = 0,
) -> tuple[Assessment, ValidationResult, dict[str, Any]]:
    """Check one window of incoming data against a saved reference sketch (`aisec data monitor`): the
    assessment (its drift finding charts `history` and this window), the raw result and this window's
    history entry."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    sketch = load_sketch(sketch_path)
    current = read_data_file(window)
    config = ValidationConfig(seed=seed)
    result = validate_window(sketch, current, config)
    policy = policy or DataValidationPolicy()
    provenance = Provenance(
        tool_version=__version__,
        seed=seed,
        samples=len(current),
        model_sha256=None,
        data_sha256=_sha256(current.path),
        settings={"reference_sketch": str(sketch_path), "reference_sketch_sha256": _sha256(str(sketch_path))},
    )
    findings = validation_findings(result, policy, provenance)
    entry = {
        "checked_at": started,
        "window": str(window.path),
        "window_sha256": provenance.data_sha256,
        "records": len(current),
        "drifted_features": len(result.drifted_features),
        "drift_alarm": result.drift_alarm,
        "multivariate_p": None if result.multivariate is None else result.multivariate.p_value,
        "label_p": None if result.labels is None else result.labels.p_value,
        "leaked_records": result.leaked_records,
        "passed": not any(f.breaks_policy for f in findings),
    }
    findings = with_monitoring_history(findings, [*history, entry])
    assessment = _assessment(
        f"monitoring window {window.path.name} against {Path(sketch.source).name}",
        started,
        time.perf_counter() - clock,
        current,
        findings,
        num_classes=0 if sketch.labels is None else len(sketch.labels),
    )
    return assessment, result, entry


def model_predict(
    path: Path,
    records: Records,
    *,
    kind: str | None = None,
    factory: str | None = None,
    trusted: bool = False,
    seed: int = 0,
) -> tuple[Predict, str | None]:
    """The model in `path` as `predict(x) -> labels` for `aisec validate --model`, with the file's sha256.
    The file is scanned before it is loaded, as `aisec inspect` does, and one that fails the scan is never
    loaded; the input spec is inferred from the model and `records` (its numeric columns or images)."""
    import torch

    from aisec.assessment.model_file import check_model_file
    from aisec.assessment.subject import detect_kind, load_model_object, target_of
    from aisec.core.errors import ModelLoadError
    from aisec.targets.from_object import infer_spec

    provenance = Provenance(__version__, seed, 0, None, "", {})
    checks = check_model_file(path, signature=None, public_key=None, provenance=provenance)
    if not checks.loadable:
        reasons = "; ".join(f.message for f in checks.findings)
        raise ModelLoadError(
            f"{path}: the static scan refused the model file, so it was not loaded: {reasons}"
        )
    chosen = kind or detect_kind(path, checks.format)
    model = load_model_object(chosen, path, factory, trusted)
    x = torch.as_tensor(model_inputs(records))
    y = torch.as_tensor(
        records.labels if records.labels is not None and records.labels.dtype != object else [0]
    )
    spec, _ = infer_spec(model, x, y)
    target = target_of(chosen, model, spec)

    def predict(inputs: np.ndarray) -> np.ndarray:
        return target.labels(torch.as_tensor(inputs, dtype=torch.float32)).numpy()

    return predict, checks.sha256
