"""The assessment as SARIF 2.1.0, for code-scanning dashboards (GitHub, GitLab, Azure DevOps, IDE viewers).

One run; the driver's rules are the findings' rule ids. Each finding becomes one result:

* it breaks the plan's policy: `kind` "fail", `level` from its severity (critical and high: "error",
  medium: "warning", low and info: "note");
* otherwise `kind` "informational" for a reliable info finding, and "review" for any other (one of higher
  severity, or whose figures are flagged unreliable: a person should look), with `level` "none":
  SARIF 2.1.0 (section 3.27.10) allows no other level on a result whose kind is not "fail".

Severity also appears as each result's `properties.severity` and, for GitHub, as the rule's
`properties["security-severity"]`. A result's location is the model file (`subject.model_source`) when known.
Each rule's tags and `properties.frameworks` place it in the NCSA's taxonomy, the BSI's life cycle, MITRE ATLAS
and the OWASP ML Top Ten (`aisec.report.frameworks`), so that dashboards can filter by them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from aisec.assessment.finding import Assessment, Finding
from aisec.core.severity import Severity
from aisec.report.frameworks import FRAMEWORKS, as_dict, sarif_tags
from aisec.report.json_report import jsonable

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# The project's home page, shown by SARIF viewers beside the tool name.

# Shared by both SARIF writers (assessments here, scans in report/scan.py), so one severity reads the same in
# every log aisec writes.
LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning ranks security alerts by this score (9.0+ critical, 7.0+ high, 4.0+ medium, else low).
# An informational rule is no security alert: it has no score (GitHub would rank 0.0 as "low").
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
}
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least, so C:\ stays a path


def to_sarif_dict(assessment: Assessment) -> dict[str, Any]:
    """The assessment as a SARIF 2.1.0 log (a JSON-ready dict)."""
    rule_ids = list(dict.fromkeys(f.rule_id for f in assessment.findings))
    source = assessment.subject.model_source
    uri = artifact_uri(source) if source is not None else None
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "aisec",
                "version": assessment.tool_version,
                "rules": [_rule(rule_id, assessment.findings) for rule_id in rule_ids],
            }
        },
        "results": [_result(f, rule_ids.index(f.rule_id), uri) for f in assessment.findings],
        "properties": jsonable(
            {
                "assessment": assessment.name,
                "passed": assessment.passed,
                "started_at": assessment.started_at,
                "duration_s": assessment.duration_s,
                "plan_path": assessment.plan_path,
                "plan_sha256": assessment.plan_sha256,
                "threat_model": assessment.threat_model,
            }
        ),
    }
    if uri is not None:
        artifact: dict[str, Any] = {"location": {"uri": uri}, "roles": ["analysisTarget"]}
        if assessment.subject.model_sha256:
            artifact["hashes"] = {"sha-256": assessment.subject.model_sha256}
        run["artifacts"] = [artifact]
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def render_sarif(assessment: Assessment) -> str:
    """The SARIF log as JSON text."""
    return json.dumps(to_sarif_dict(assessment), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def artifact_uri(source: str) -> str:
    """A model source as a URI reference: a URI as it is, a path as a file: URI or a relative reference."""
    if _URI_SCHEME.match(source):
        return quote(source, safe=":/?#[]@!$&'()*+,;=%~")
    if PurePath(source).is_absolute():
        return Path(source).as_uri()
    return quote(source.replace("\\", "/"))


def _rule(rule_id: str, findings: tuple[Finding, ...]) -> dict[str, Any]:
    """The reportingDescriptor of one rule id: title and advice of its first finding, its highest severity, and
    the frameworks of the rule (tags and properties) when it is one of aisec's."""
    mine = [f for f in findings if f.rule_id == rule_id]
    severity = max((f.severity for f in mine), key=lambda s: s.rank)
    refs = FRAMEWORKS.get(rule_id)
    tags = ["security", "ai", *(f.attack_class.value for f in mine), *(sarif_tags(refs) if refs else ())]
    properties: dict[str, Any] = {"tags": list(dict.fromkeys(tags))}
    if severity in SECURITY_SEVERITY:
        properties["security-severity"] = SECURITY_SEVERITY[severity]
    if refs is not None:
        properties["frameworks"] = as_dict(refs)
    return {
        "id": rule_id,
        "shortDescription": {"text": mine[0].title},
        "help": {"text": mine[0].recommendation},
        "defaultConfiguration": {"level": LEVEL[severity]},
        "properties": properties,
    }


def _result(finding: Finding, rule_index: int, uri: str | None) -> dict[str, Any]:
    """The SARIF result of one finding, located at the model's `uri` (run.artifacts[0]) when known."""
    if finding.breaks_policy:
        kind, level = "fail", LEVEL[finding.severity]
    else:
        informational = finding.severity is Severity.INFO and finding.reliable
        kind, level = ("informational" if informational else "review"), "none"
    result: dict[str, Any] = {
        "ruleId": finding.rule_id,
        "ruleIndex": rule_index,
        "kind": kind,
        "level": level,
        "message": {"text": finding.message},
        "properties": jsonable(
            {
                "severity": finding.severity,
                "attack_class": finding.attack_class,
                "reliable": finding.reliable,
                "breaks_policy": finding.breaks_policy,
                "metrics": finding.metrics,
                "policy": finding.policy,
                "provenance": finding.provenance,
            }
        ),
    }
    if uri is not None:
        result["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}}}]
    return result
