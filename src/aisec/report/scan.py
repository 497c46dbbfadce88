"""A scan as JSON (schema: aisec/report/schema/scan.schema.json) and as SARIF 2.1.0; each finding and each rule
carries its place in the frameworks (`aisec.report.frameworks`: NCSA, BSI stage, MITRE ATLAS, OWASP ML)."""

from __future__ import annotations

import json
from typing import Any

from aisec.defend.supply_chain.result import FileScan, ScanReport
from aisec.defend.supply_chain.rules import RULES
from aisec.report.frameworks import as_dict, frameworks_of, sarif_tags
from aisec.report.sarif import LEVEL, SARIF_SCHEMA, SECURITY_SEVERITY, artifact_uri

SCAN_SCHEMA_VERSION = "1.0"


def scan_to_dict(report: ScanReport) -> dict[str, Any]:
    """The scan as a JSON-ready dict."""
    return {
        "schema_version": SCAN_SCHEMA_VERSION,
        "tool": {"name": "aisec", "version": report.tool_version},
        "started_at": report.started_at,
        "duration_s": round(report.duration_s, 4),
        "verdict": report.verdict.value,
        "limits": report.limits,
        "summary": {
            v: sum(1 for f in report.files if f.verdict.value == v)
            for v in ("safe", "suspicious", "error", "unsafe")
        },  # fmt: skip
        "files": [_file_dict(f) for f in report.files],
    }


def _file_dict(scan: FileScan) -> dict[str, Any]:
    return {
        "path": scan.path,
        "format": scan.format,
        "size": scan.size,
        "sha256": scan.sha256,
        "verdict": scan.verdict.value,
        "duration_s": round(scan.duration_s, 4),
        "findings": [
            {
                "rule_id": f.rule_id,
                "rule": RULES[f.rule_id].name,
                "severity": f.severity.value,
                "message": f.message,
                "location": f.location,
                "frameworks": as_dict(frameworks_of(f.rule_id)),
            }  # fmt: skip
            for f in scan.findings
        ],
    }


def render_scan_json(report: ScanReport) -> str:
    return json.dumps(scan_to_dict(report), indent=2, ensure_ascii=False) + "\n"


def scan_to_sarif(report: ScanReport) -> dict[str, Any]:
    """SARIF 2.1.0: one result per finding, located in its file (the part and offset in the message and
    in `logicalLocations`); the driver lists every rule that fired with its help text."""
    fired = sorted({f.rule_id for scan in report.files for f in scan.findings})
    artifacts = [
        {"location": {"uri": artifact_uri(scan.path)}, "length": scan.size, "roles": ["analysisTarget"],
         "properties": {"format": scan.format, "verdict": scan.verdict.value},
         **({"hashes": {"sha-256": scan.sha256}} if scan.sha256 else {})}
        for scan in report.files
    ]  # fmt: skip
    results = []
    for index, scan in enumerate(report.files):
        for finding in scan.findings:
            results.append(
                {
                    "ruleId": finding.rule_id,
                    "ruleIndex": fired.index(finding.rule_id),
                    "level": LEVEL[finding.severity],
                    "message": {"text": f"{finding.message} (at {finding.location})"},
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": {"uri": artifact_uri(scan.path), "index": index}
                            },
                            "logicalLocations": [{"fullyQualifiedName": finding.location}],
                        }
                    ],
                    "properties": {"severity": finding.severity.value, "verdict": scan.verdict.value},
                }
            )
    rules = []
    for rule_id in fired:
        rule, refs = RULES[rule_id], frameworks_of(rule_id)
        properties: dict[str, Any] = {"tags": ["security", "supply-chain", *sarif_tags(refs)]}
        if rule.severity in SECURITY_SEVERITY:
            properties["security-severity"] = SECURITY_SEVERITY[rule.severity]
        properties["frameworks"] = as_dict(refs)
        rules.append(
            {
                "id": rule.id,
                "name": rule.name,
                "shortDescription": {"text": rule.summary},
                "help": {"text": rule.advice},
                "defaultConfiguration": {"level": LEVEL[rule.severity]},
                "properties": properties,
            }
        )
    run = {
        "tool": {"driver": {"name": "aisec", "version": report.tool_version, "rules": rules}},
        "artifacts": artifacts,
        "results": results,
        "invocations": [{"executionSuccessful": True, "startTimeUtc": report.started_at}],
    }
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def render_scan_sarif(report: ScanReport) -> str:
    return json.dumps(scan_to_sarif(report), indent=2, ensure_ascii=False) + "\n"
