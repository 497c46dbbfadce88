"""The assessment as JUnit XML (the schema Jenkins and GitLab read): the policy verdict as tests in CI.

* one <testsuite> per attack class, named "aisec.<class>", in the order of `AttackClass`;
* one <testcase> per policy check, classname = the finding's rule id, name = the check's rule;
  a failed check carries a <failure> whose message gives observed value and threshold;
* a finding without policy checks becomes one testcase named after its title, which passes;
* a finding whose figures are unreliable turns its otherwise passing testcases into <skipped>, with the
  reason: its figures cannot confirm a pass. Failed checks stay failures, so the number of failures
  is non-zero exactly when `Assessment.passed` is False.

Provenance goes into each suite's <properties>: the assessment's own, then each finding's under its rule id
(e.g. "AISEC-EVA-001.seed"), with the frameworks of its rule as comma-joined ids ("AISEC-EVA-001.atlas",
".owasp_ml", ".ncsa_principle", ".bsi_stage"; `aisec.report.frameworks`). Every string is stripped of characters
XML 1.0 cannot hold and escaped.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET

from aisec.assessment.finding import Assessment, Finding, PolicyCheck
from aisec.core.attack_class import AttackClass
from aisec.report.frameworks import FRAMEWORKS
from aisec.report.json_report import jsonable

# Characters XML 1.0 forbids even escaped (control characters, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_UNRELIABLE = "figures flagged unreliable (e.g. gradient masking): they cannot confirm a pass"


def render_junit(assessment: Assessment) -> str:
    """The JUnit XML report as text, with its XML declaration."""
    root = _element("testsuites", name=f"aisec: {assessment.name}")
    for attack_class in AttackClass:
        findings = [f for f in assessment.findings if f.attack_class is attack_class]
        if findings:
            root.append(_suite(attack_class, findings, assessment))
    _count(root, root.findall("testsuite/testcase"))
    if math.isfinite(assessment.duration_s):
        root.set("time", f"{assessment.duration_s:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(attack_class: AttackClass, findings: list[Finding], assessment: Assessment) -> ET.Element:
    suite = _element("testsuite", name=f"aisec.{attack_class.value}", timestamp=assessment.started_at)
    properties = ET.SubElement(suite, "properties")
    for name, value in _provenance(findings, assessment).items():
        properties.append(_element("property", name=name, value=value))
    for finding in findings:
        for check in finding.policy:
            suite.append(_check_case(finding, check))
        if not finding.policy:
            case = _element("testcase", classname=finding.rule_id, name=finding.title)
            if not finding.reliable:
                case.append(_element("skipped", message=_UNRELIABLE))
            suite.append(case)
    _count(suite, suite.findall("testcase"))
    return suite


def _provenance(findings: list[Finding], assessment: Assessment) -> dict[str, str]:
    """The suite's properties: the assessment's provenance, then each finding's and its rule's frameworks under
    its rule id.

    A rule id that comes back in the same suite gets a counter ("AISEC-EVA-001#2.seed"), so no name repeats.
    """
    subject = assessment.subject
    values: dict[str, object] = {
        "aisec.version": assessment.tool_version,
        "assessment": assessment.name,
        "plan_path": assessment.plan_path,
        "plan_sha256": assessment.plan_sha256,
        "model_source": subject.model_source,
        "model_sha256": subject.model_sha256,
        "data_name": subject.data_name,
        "data_sha256": subject.data_sha256,
    }
    seen: dict[str, int] = {}
    for finding in findings:
        seen[finding.rule_id] = seen.get(finding.rule_id, 0) + 1
        key = finding.rule_id if seen[finding.rule_id] == 1 else f"{finding.rule_id}#{seen[finding.rule_id]}"
        prov = finding.provenance
        values[f"{key}.tool_version"] = prov.tool_version
        values[f"{key}.seed"] = prov.seed
        values[f"{key}.samples"] = prov.samples
        values[f"{key}.model_sha256"] = prov.model_sha256
        values[f"{key}.data_sha256"] = prov.data_sha256
        values[f"{key}.settings"] = json.dumps(jsonable(prov.settings), sort_keys=True, ensure_ascii=False)
        refs = FRAMEWORKS.get(finding.rule_id)
        if refs is not None:
            values[f"{key}.atlas"] = ",".join(technique.id for technique in refs.atlas)
            values[f"{key}.owasp_ml"] = ",".join(risk.id for risk in refs.owasp_ml)
            values[f"{key}.ncsa_principle"] = refs.principle.number
            values[f"{key}.bsi_stage"] = ",".join(refs.stages)
    return {name: str(value) for name, value in values.items() if value is not None}


def _check_case(finding: Finding, check: PolicyCheck) -> ET.Element:
    case = _element("testcase", classname=finding.rule_id, name=check.rule)
    if not check.passed:
        message = f"{check.rule}: observed {check.observed:g}, threshold {check.threshold:g}"
        parts = (check.description, finding.title, finding.message, finding.recommendation)
        details = "\n\n".join(part for part in parts if part)
        case.append(_element("failure", details, message=message, type="PolicyViolation"))
    elif not finding.reliable:
        case.append(_element("skipped", message=_UNRELIABLE))
    return case


def _count(element: ET.Element, cases: list[ET.Element]) -> None:
    """Set the tests, failures, errors and skipped counts of a suite (or of all suites) from its cases."""
    element.set("tests", str(len(cases)))
    element.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    element.set("errors", "0")
    element.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))


def _element(tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    """An element whose text and attribute values hold only characters XML 1.0 allows."""
    element = ET.Element(tag, {key: _NOT_XML.sub("\ufffd", value) for key, value in attributes.items()})
    if text is not None:
        element.text = _NOT_XML.sub("\ufffd", text)
    return element
