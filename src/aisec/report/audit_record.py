"""What the audit log records of an assessment or a scan: hashes and figures, never data or weights.

An audit entry says which model and data were assessed (their SHA-256), with which plan, what was found (each
finding's rule, severity, policy verdict and headline figure) and which reports were written (their SHA-256), so
that a report produced later can be matched to the entry that vouches for it. The CLI adds who ran what, when
and where (`aisec.cli.audit_trail`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aisec.assessment.finding import Assessment, Estimate
from aisec.assessment.rules import headline_metric
from aisec.core.hashing import file_sha256
from aisec.defend.supply_chain.result import ScanReport

# A scan of a whole model hub would make one entry too large to be an entry: past this many files the entry
# keeps the counts and the digest of the per-file list, and the scan's JSON report (hashed) keeps the rest.
MAX_FILES_LISTED = 100


def assessment_record(assessment: Assessment, reports: Iterable[Path]) -> dict[str, Any]:
    """The audit fields of an assessment (or inspection) whose reports are the files `reports`."""
    subject = assessment.subject
    return {
        "assessment": assessment.name,
        "started_at": assessment.started_at,
        "duration_s": round(assessment.duration_s, 3),
        "plan_sha256": assessment.plan_sha256,
        "model": {"source": subject.model_source, "sha256": subject.model_sha256},
        "data": {"name": subject.data_name, "samples": subject.data_samples, "sha256": subject.data_sha256},
        "threat_model": {key: _plain(value) for key, value in assessment.threat_model.items()},
        "verdict": "passed" if assessment.passed else "failed",
        "findings": [
            {
                "rule_id": finding.rule_id,
                "severity": finding.severity.value,
                "breaks_policy": finding.breaks_policy,
                "reliable": finding.reliable,
                "headline": _headline(finding),
            }
            for finding in assessment.findings
        ],
        "models": [
            {"file_name": model.file_name, "sha256": model.sha256}
            for finding in assessment.findings
            for model in finding.models
        ],
        "reports": files_record(reports),
    }


def scan_record(report: ScanReport, written: Mapping[str, Path]) -> dict[str, Any]:
    """The audit fields of a scan: the verdict, each file's hash and verdict (or, for many files, their counts
    and the digest of the list) and the reports written."""
    files = [
        {
            "path": scan.path,
            "sha256": scan.sha256,
            "verdict": scan.verdict.value,
            "rules": sorted({f.rule_id for f in scan.findings}),
        }
        for scan in report.files
    ]
    record: dict[str, Any] = {
        "verdict": report.verdict.value,
        "files_scanned": len(files),
        "verdicts": {
            v: sum(f["verdict"] == v for f in files) for v in ("safe", "suspicious", "error", "unsafe")
        },
        "reports": files_record(written.values()),
    }
    if len(files) <= MAX_FILES_LISTED:
        record["files"] = files
    else:
        listing = "\n".join(f"{f['sha256']} {f['verdict']} {f['path']}" for f in files).encode()
        record["files_sha256"] = hashlib.sha256(listing).hexdigest()
    return record


def files_record(paths: Iterable[Path]) -> dict[str, str]:
    """{path: SHA-256} of the files just written."""
    return {str(path): file_sha256(Path(path)) for path in paths}


def _headline(finding: Any) -> dict[str, Any] | None:
    metric = headline_metric(finding)
    if metric is None:
        return None
    value = metric.value.value if isinstance(metric.value, Estimate) else metric.value
    return {"id": metric.id, "value": _plain(value), "unit": metric.unit}


def _plain(value: Any) -> Any:
    """A threat-model or figure value as JSON the log accepts: non-finite floats as None, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))
