"""The report layer: JSON (valid, figures round-trip), HTML, SARIF, JUnit, and all-or-nothing writing."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from aisec.assessment.finding import (
    Assessment,
    Chart,
    Estimate,
    Example,
    Finding,
    Gallery,
    Metric,
    Picture,
    PolicyCheck,
    Provenance,
    Series,
    SubjectInfo,
    Table,
)
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.report import FILE_NAMES, FORMAT_FILES, load_schema, to_json_dict, write_reports
from aisec.report.html import format_metric

MALICIOUS = "<script>alert(1)</script>"
ORIGINAL = [[(row * 8 + col) / 63 for col in range(8)] for row in range(8)]
ADVERSARIAL = [
    [min(1.0, value + (0.03 if (row + col) % 2 else -0.03)) for col, value in enumerate(line)]
    for row, line in enumerate(ORIGINAL)
]
RGB = [[[row / 7, col / 7, 0.5] for col in range(8)] for row in range(8)]
RGB_ADVERSARIAL = [[[r, g, 0.55] for r, g, _ in line] for line in RGB]


def make_assessment() -> Assessment:
    provenance = Provenance(
        tool_version="0.1.0",
        seed=1234,
        samples=500,
        model_sha256="a" * 64,
        data_sha256="b" * 64,
        settings={"eps": 8 / 255, "steps": 40, "norm": "linf"},
    )
    evasion = Finding(
        rule_id="AISEC-EVA-001",
        title="Accuracy collapses under small L∞ perturbations",
        attack_class=AttackClass.EVASION,
        severity=Severity.HIGH,
        message="PGD at ε=8/255 lowers accuracy from 0.98 to 0.52.\x01",
        recommendation="Train adversarially and re-run the plan.",
        provenance=provenance,
        metrics=(
            Metric(
                "robust accuracy",
                Estimate(0.52, 0.476, 0.563, 500),
                id="robust_accuracy",
                description="accuracy under PGD",
            ),
            Metric("clean accuracy", Estimate(0.98, 0.964, 0.989, 500), id="clean_accuracy"),
            Metric("median queries", 40.0, "queries", id="median_queries"),
            Metric("loss ratio", float("nan"), id="loss_ratio"),
        ),
        tables=(Table("Accuracy by budget", ("eps", "accuracy"), ((0.0, 0.98), (8 / 255, 0.52))),),
        charts=(
            Chart(
                "acc-vs-eps",
                "Robust accuracy vs. budget",
                "budget $ε (L∞)",
                "accuracy",
                (
                    Series(
                        "PGD",
                        (0.0, 0.01, 0.03),
                        (0.98, 0.8, 0.52),
                        lower=(0.96, 0.76, 0.48),
                        upper=(0.99, 0.84, 0.56),
                    ),
                ),
            ),
            Chart(
                "queries",
                "Success vs. queries",
                "queries",
                "success",
                (Series("", (10, 100, 1000), (0.1, 0.4, 0.9)),),
                log_x=True,
                log_y=True,
            ),
        ),
        examples=(
            Example("digit", ORIGINAL, ADVERSARIAL, 3, 3, 8, 0.03, 8 / 255),
            Example("colour", RGB, RGB_ADVERSARIAL, 1, 1, 1, 0.05, None),
        ),
        policy=(
            PolicyCheck("robust_accuracy >= 0.7", 0.7, 0.52, False, "robust accuracy at ε=8/255"),
            PolicyCheck("clean_accuracy >= 0.9", 0.9, 0.98, True),
        ),
    )
    inference = Finding(
        rule_id="AISEC-INF-001",
        title=f"Membership inference {MALICIOUS}",
        attack_class=AttackClass.INFERENCE,
        severity=Severity.MEDIUM,
        message="AUC 0.61, but the attack's calibration failed.",
        recommendation="Regularise the model.",
        provenance=provenance,
        metrics=(Metric("AUC", 0.61, id="auc"),),
        galleries=(
            Gallery(
                "Reconstructions", (Picture(f"class 3 {MALICIOUS}", ORIGINAL, (("confidence", "97.0%"),)),)
            ),
        ),
        reliable=False,
    )
    subject = SubjectInfo(
        "TorchTarget", "white_box", (1, 8, 8), 10, "models/small cnn.pt", "a" * 64, "digits", 500, "b" * 64
    )
    return Assessment(
        name="nightly",
        tool_version="0.1.0",
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=125.3,
        subject=subject,
        threat_model={"knowledge": "white box", "budget": {"eps": 8 / 255}},
        findings=(evasion, inference),
        plan_path="plan.yaml",
        plan_sha256="c" * 64,
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_reports(make_assessment(), tmp_path_factory.mktemp("reports") / "out")


def _strict_json(path: Path) -> dict:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text("utf-8"), parse_constant=reject)


def test_writes_every_format_under_its_name(reports: dict[str, Path]) -> None:
    assert {fmt: path.name for fmt, path in reports.items()} == FILE_NAMES
    assert sorted(p.name for p in reports["json"].parent.iterdir()) == sorted(
        name for names in FORMAT_FILES.values() for name in names
    )


def test_json_validates_and_round_trips_the_figures(reports: dict[str, Path]) -> None:
    doc = _strict_json(reports["json"])
    jsonschema.Draft202012Validator(load_schema()).validate(doc)
    assert doc == to_json_dict(make_assessment())
    assert doc["schema"] == "aisec.assessment/2" and doc["passed"] is False
    evasion, inference = doc["findings"]
    assert evasion["severity"] == "high" and evasion["attack_class"] == "evasion" and evasion["breaks_policy"]
    metrics = {metric["id"]: metric["value"] for metric in evasion["metrics"]}
    assert metrics["robust_accuracy"] == {
        "value": 0.52,
        "lower": 0.476,
        "upper": 0.563,
        "n": 500,
        "method": "Wilson score interval, 95%",
    }
    assert metrics["median_queries"] == 40.0
    assert metrics["loss_ratio"] is None  # NaN
    series = evasion["charts"][0]["series"][0]
    assert (series["x"], series["y"], series["lower"], series["upper"]) == (
        [0.0, 0.01, 0.03],
        [0.98, 0.8, 0.52],
        [0.96, 0.76, 0.48],
        [0.99, 0.84, 0.56],
    )
    assert evasion["charts"][1]["log_x"] is True
    assert evasion["tables"][0]["rows"][1] == [8 / 255, 0.52]
    assert evasion["examples"][0]["adversarial"] == ADVERSARIAL
    assert evasion["policy"][0] == {
        "rule": "robust_accuracy >= 0.7",
        "threshold": 0.7,
        "observed": 0.52,
        "passed": False,
        "description": "robust accuracy at ε=8/255",
    }
    assert evasion["provenance"]["settings"] == {"eps": 8 / 255, "steps": 40, "norm": "linf"}
    assert inference["reliable"] is False and inference["breaks_policy"] is False
    assert doc["subject"]["input_shape"] == [1, 8, 8]


def test_schema_rejects_what_it_should() -> None:
    validator = jsonschema.Draft202012Validator(load_schema())
    doc = to_json_dict(make_assessment())
    doc["findings"][0]["severity"] = "urgent"
    assert not validator.is_valid(doc)
    doc = to_json_dict(make_assessment())
    del doc["findings"][0]["provenance"]["seed"]
    assert not validator.is_valid(doc)


def test_schema_enums_match_the_python_types() -> None:
    finding = load_schema()["$defs"]["finding"]["properties"]
    assert finding["severity"]["enum"] == [s.value for s in Severity]
    assert finding["attack_class"]["enum"] == [c.value for c in AttackClass]


# The parts of the official SARIF 2.1.0 schema (sarif-schema-2.1.0.json) that this report uses.
SARIF_SUBSET = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string"},
        "version": {"enum": ["2.1.0"]},
        "runs": {"type": "array", "items": {"$ref": "#/definitions/run"}},
    },
    "additionalProperties": False,
    "definitions": {
        "message": {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}]},
        "multiformatMessageString": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}, "markdown": {"type": "string"}},
        },
        "propertyBag": {
            "type": "object",
            "properties": {"tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}},
        },
        "artifactLocation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "uri": {"type": "string"},
                "uriBaseId": {"type": "string"},
                "index": {"type": "integer", "minimum": -1},
            },
        },
        "artifact": {
            "type": "object",
            "properties": {
                "location": {"$ref": "#/definitions/artifactLocation"},
                "hashes": {"type": "object", "additionalProperties": {"type": "string"}},
                "roles": {"type": "array", "uniqueItems": True, "items": {"enum": ["analysisTarget"]}},
            },
        },
        "reportingDescriptor": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "shortDescription": {"$ref": "#/definitions/multiformatMessageString"},
                "help": {"$ref": "#/definitions/multiformatMessageString"},
                "defaultConfiguration": {
                    "type": "object",
                    "properties": {"level": {"enum": ["none", "note", "warning", "error"]}},
                },
                "properties": {"$ref": "#/definitions/propertyBag"},
            },
        },
        "run": {
            "type": "object",
            "required": ["tool"],
            "properties": {
                "tool": {
                    "type": "object",
                    "required": ["driver"],
                    "properties": {
                        "driver": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "informationUri": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "uniqueItems": True,
                                    "items": {"$ref": "#/definitions/reportingDescriptor"},
                                },
                            },
                        }
                    },
                },
                "artifacts": {"type": "array", "items": {"$ref": "#/definitions/artifact"}},
                "results": {"type": "array", "items": {"$ref": "#/definitions/result"}},
                "properties": {"$ref": "#/definitions/propertyBag"},
            },
        },
        "result": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "ruleId": {"type": "string"},
                "ruleIndex": {"type": "integer", "minimum": -1},
                "kind": {"enum": ["notApplicable", "pass", "fail", "review", "open", "informational"]},
                "level": {"enum": ["none", "note", "warning", "error"]},
                "message": {"$ref": "#/definitions/message"},
                "locations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "physicalLocation": {
                                "type": "object",
                                "properties": {
                                    "artifactLocation": {"$ref": "#/definitions/artifactLocation"}
                                },
                            }
                        },
                    },
                },
                "properties": {"$ref": "#/definitions/propertyBag"},
            },
            # SARIF 2.1.0, 3.27.10: a result whose kind is not "fail" has level "none".
            "if": {"required": ["kind"], "properties": {"kind": {"not": {"const": "fail"}}}},
            "then": {"properties": {"level": {"const": "none"}}},
        },
    },
}


def test_sarif_has_the_2_1_0_structure_rules_and_levels(reports: dict[str, Path]) -> None:
    log = _strict_json(reports["sarif"])
    jsonschema.Draft7Validator(SARIF_SUBSET).validate(log)
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json" and log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("aisec", "0.1.0")
    assert [rule["id"] for rule in driver["rules"]] == ["AISEC-EVA-001", "AISEC-INF-001"]
    evasion_rule = driver["rules"][0]
    assert evasion_rule["shortDescription"]["text"] == "Accuracy collapses under small L∞ perturbations"
    assert evasion_rule["help"]["text"] == "Train adversarially and re-run the plan."
    assert "evasion" in evasion_rule["properties"]["tags"]
    assert evasion_rule["properties"]["security-severity"] == "8.0"
    failing, review = run["results"]
    assert (failing["ruleId"], failing["ruleIndex"], failing["kind"], failing["level"]) == (
        "AISEC-EVA-001",
        0,
        "fail",
        "error",
    )
    assert (review["ruleId"], review["kind"], review["level"]) == ("AISEC-INF-001", "review", "none")
    assert review["properties"]["reliable"] is False and review["properties"]["severity"] == "medium"
    assert failing["properties"]["metrics"][0]["value"]["n"] == 500
    location = failing["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "models/small%20cnn.pt", "index": 0}
    assert run["artifacts"][0]["hashes"] == {"sha-256": "a" * 64}


def test_sarif_levels_follow_severity() -> None:
    from aisec.report.sarif import to_sarif_dict

    base = make_assessment()
    expected = {
        Severity.CRITICAL: "error",
        Severity.HIGH: "error",
        Severity.MEDIUM: "warning",
        Severity.LOW: "note",
        Severity.INFO: "note",
    }
    for severity, level in expected.items():
        finding = dataclasses.replace(base.findings[0], severity=severity)
        log = to_sarif_dict(dataclasses.replace(base, findings=(finding,)))
        assert log["runs"][0]["results"][0]["level"] == level


def test_junit_counts_tests_failures_and_skips(reports: dict[str, Path]) -> None:
    root = ET.parse(reports["junit"]).getroot()
    assert root.tag == "testsuites"
    counts = (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped"))
    assert counts == ("3", "1", "0", "1")
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert list(suites) == ["aisec.evasion", "aisec.inference"]
    evasion = suites["aisec.evasion"]
    assert (evasion.get("tests"), evasion.get("failures"), evasion.get("skipped")) == ("2", "1", "0")
    failed, passed = evasion.findall("testcase")
    assert (failed.get("classname"), failed.get("name")) == ("AISEC-EVA-001", "robust_accuracy >= 0.7")
    assert "observed 0.52, threshold 0.7" in failed.find("failure").get("message")
    assert "\ufffd" in failed.find("failure").text  # the control character, replaced: the file still parses
    assert list(passed) == []
    properties = {p.get("name"): p.get("value") for p in evasion.iter("property")}
    assert properties["AISEC-EVA-001.seed"] == "1234" and properties["model_sha256"] == "a" * 64
    (unreliable,) = suites["aisec.inference"].findall("testcase")
    assert unreliable.get("name") == f"Membership inference {MALICIOUS}"
    assert unreliable.find("skipped") is not None


def test_html_shows_figures_charts_examples_and_escapes(reports: dict[str, Path]) -> None:
    page = reports["html"].read_text("utf-8")
    assert "Policy failed" in page and "1 of 2 policy checks failed" in page
    assert "0.520 (95% CI 0.476–0.563, n=500)" in page
    assert "n/a" in page  # the NaN metric
    charts = re.findall(r'<img src="data:image/svg\+xml;base64,([^"]+)"', page)
    assert len(charts) == 2
    assert all(b"<svg" in base64.b64decode(chart) for chart in charts)
    images = re.findall(r'<img src="data:image/png;base64,', page)
    assert (
        len(images) == 3 * 2 + 1
    )  # original, adversarial and difference of each example; one gallery picture
    assert "Reconstructions" in page and "confidence: 97.0%" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert not re.search(r'src="(?!data:)|<link\b', page), "the page must not load anything"
    # links (not loaded) lead to the page's own anchors or to the frameworks' pages (ATLAS, OWASP)
    assert not re.search(r'href="(?!#|https://(?:atlas\.mitre\.org|owasp\.org)/)', page)
    assert "Figures flagged unreliable" in page
    assert "a" * 64 in page and "1234" in page  # provenance


def test_estimate_text() -> None:
    metric = Metric("robust accuracy", Estimate(0.52, 0.47, 0.57, 500), id="robust_accuracy")
    assert format_metric(metric) == "0.520 (95% CI 0.470–0.570, n=500)"


def test_importing_the_report_package_loads_no_plotting_library() -> None:
    code = "import sys, aisec.report, aisec.report.html; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every path under `folder` with its content (folders with none), to compare before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in folder.rglob("*")}


def test_a_failing_writer_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.json").write_text("previous report")
    before = _snapshot(tmp_path)

    def broken(assessment: Assessment) -> str:
        raise RuntimeError("renderer failed")

    monkeypatch.setattr("aisec.report.sarif.render_sarif", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        write_reports(make_assessment(), out)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("failing_move", [1, 2, 5])
def test_an_interrupt_while_moving_restores_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_move: int
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.html").write_text("previous report")
    before = _snapshot(tmp_path)
    real_replace = os.replace
    calls = []

    def interrupted_replace(source: os.PathLike, target: os.PathLike) -> None:
        calls.append(source)
        if len(calls) == failing_move:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_reports(make_assessment(), out)
    assert _snapshot(tmp_path) == before


def test_a_failure_removes_the_folders_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        write_reports(make_assessment(), tmp_path / "a" / "b" / "out", formats=("json",))
    assert list(tmp_path.iterdir()) == []


def test_rewriting_replaces_reports_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    write_reports(make_assessment(), tmp_path, formats=("json",))
    paths = write_reports(make_assessment(), tmp_path, formats=("json", "junit"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.json", "report.junit.xml"]
    assert _strict_json(paths["json"])["name"] == "nightly"


def test_bad_arguments_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="pdf"):
        write_reports(make_assessment(), tmp_path / "out", formats=("json", "pdf"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="not a folder"):
        write_reports(make_assessment(), tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_non_finite_floats_never_reach_the_json() -> None:
    doc = to_json_dict(make_assessment())
    text = json.dumps(doc, allow_nan=False)  # raises on NaN or infinity
    assert math.isnan(make_assessment().findings[0].metric("loss_ratio").value)
    assert '"name": "loss ratio", "value": null' in text


def test_sarif_kind_of_findings_within_policy() -> None:
    from aisec.report.sarif import to_sarif_dict

    base = make_assessment()
    info = dataclasses.replace(base.findings[1], severity=Severity.INFO, reliable=True)
    unreliable_info = dataclasses.replace(info, reliable=False)
    log = to_sarif_dict(dataclasses.replace(base, findings=(info, unreliable_info)))
    kinds = [(r["kind"], r["level"]) for r in log["runs"][0]["results"]]
    assert kinds == [("informational", "none"), ("review", "none")]


def test_html_is_reproducible() -> None:
    from aisec.report.html import render_html

    assert render_html(make_assessment()) == render_html(make_assessment())


def test_html_verdict_says_when_no_policy_is_set() -> None:
    from aisec.report.html import render_html

    base = make_assessment()
    page = render_html(dataclasses.replace(base, findings=(base.findings[1],)))
    assert "No policy set" in page and "Policy passed" not in page
