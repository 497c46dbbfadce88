"""The model card (Hugging Face format, with a security section) and the ML-BOM's figures from a report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aisec.assessment.finding import (
    Assessment,
    Estimate,
    Finding,
    Metric,
    PolicyCheck,
    Provenance,
    SubjectInfo,
    Table,
)
from aisec.core.attack_class import AttackClass
from aisec.core.errors import BadInputError
from aisec.core.severity import Severity
from aisec.report import FORMAT_FILES, to_json_dict, write_reports
from aisec.report.model_card import model_card_metadata, render_model_card, render_model_card_json

HOSTILE = "a | b <script>alert(1)</script> [x](javascript:alert(1)) `c` *d* \n---\n# e\u2028f\x00"
PROVENANCE = Provenance("0.1.0", 7, 200, "a" * 64, "b" * 64, {"norm": "linf"})


def _evasion(title: str = "Robust accuracy under evasion") -> Finding:
    return Finding(
        rule_id="AISEC-EVA-001",
        title=title,
        attack_class=AttackClass.EVASION,
        severity=Severity.HIGH,
        message="PGD lowers accuracy.",
        recommendation="Train adversarially.",
        provenance=PROVENANCE,
        metrics=(
            Metric("clean accuracy", Estimate(0.97, 0.95, 0.98, 200), id="clean_accuracy"),
            Metric("robust accuracy at eps=0.05", Estimate(0.61, 0.54, 0.67, 200), id="robust_accuracy@0.05"),
            Metric("robust accuracy at eps=0.1", Estimate(0.22, 0.17, 0.28, 200), id="robust_accuracy@0.1"),
            Metric("median queries to success", 35.0, "queries", id="median_queries_to_success"),
            Metric("median minimal perturbation", float("nan"), id="median_minimal_perturbation"),
        ),
        policy=(PolicyCheck("robust_accuracy >= 0.5", 0.5, 0.22, False, "at eps 0.1"),),
    )


def _hardening() -> Finding:
    return Finding(
        rule_id="AISEC-ROB-001",
        title="Hardened models beside the undefended one: robustness bought at a cost",
        attack_class=AttackClass.EVASION,
        severity=Severity.INFO,
        message="PGD-AT keeps 55% robust accuracy.",
        recommendation="Deploy the hardened model.",
        provenance=PROVENANCE,
        metrics=(
            Metric(
                "best hardened robust accuracy",
                Estimate(0.55, 0.48, 0.62, 200),
                id="best_robust_accuracy@0.1",
            ),
            Metric("robust accuracy gained", 0.33, id="robust_accuracy_gain@0.1"),
            Metric("clean accuracy cost", 0.04, id="clean_accuracy_cost"),
        ),
        tables=(
            Table(
                "Hardened models beside the undefended one",
                ("model", "clean accuracy", "training time (x plain)", "latency (x undefended)"),
                (("undefended", 0.97, None, 1.0), ("pgd_at", 0.93, 3.2, 1.01)),
            ),
        ),
        reliable=False,
    )


def _scan(verdict: str = "safe") -> Finding:
    return Finding(
        rule_id="AISEC-INS-001",
        title="Model file scanned: pytorch-zip, nothing in it runs when it is loaded",
        attack_class=AttackClass.BACKDOOR,
        severity=Severity.INFO,
        message="Nothing found.",
        recommendation="Verify the signature.",
        provenance=dataclasses.replace(
            PROVENANCE,
            samples=0,
            model_sha256="d" * 64,
            settings={"check": "static scan", "format": "pytorch-zip", "verdict": verdict},
        ),
        metrics=(
            Metric("Scanner vouches for the file", verdict == "safe", id="safe"),
            Metric("n", 0.0, id="scan_findings"),
        ),
    )


def make_assessment(*findings: Finding, shape: tuple[int, ...] = (1, 8, 8), **subject: Any) -> Assessment:
    fields = {
        "target_kind": "TorchTarget",
        "access": "white_box",
        "input_shape": shape,
        "num_classes": 10,
        "model_source": "models/digits_cnn.pt",
        "model_sha256": "a" * 64,
        "data_name": "digits",
        "data_samples": 200,
        "data_sha256": "b" * 64,
    } | subject
    return Assessment(
        name="nightly",
        tool_version="0.1.0",
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=12.5,
        subject=SubjectInfo(**fields),
        threat_model={"knowledge": "white_box", "norm": "linf", "budgets": [0.05, 0.1], "query_budget": 5000},
        findings=findings or (_evasion(), _hardening()),
        plan_path="plan.yaml",
        plan_sha256="c" * 64,
    )


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    yaml_text, _ = card[4:].split("\n---\n", 1)
    return yaml.safe_load(yaml_text)


def _body(card: str) -> str:
    return card[4:].split("\n---\n", 1)[1]


def _strict_json(text: str) -> Any:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def _write_card(tmp_path: Path, assessment: Assessment) -> Path:
    return write_reports(assessment, tmp_path / "out", formats=("card",))["card"]


def _load_with_huggingface(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    return huggingface_hub.ModelCard.load(path)


# ------------------------------------------------------------------------------------------- the model card


def test_huggingface_hub_loads_the_card_and_its_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assessment = make_assessment()
    card = _load_with_huggingface(_write_card(tmp_path, assessment), monkeypatch)
    results = {(r.metric_config, r.metric_type): r for r in card.data.eval_results}
    # estimates as their point value; NaN left out; booleans are not metrics
    assert {key: r.metric_value for key, r in results.items()} == {
        ("AISEC-EVA-001", "robust_accuracy@0.1"): 0.22,
        ("AISEC-EVA-001", "clean_accuracy"): 0.97,
        ("AISEC-EVA-001", "robust_accuracy@0.05"): 0.61,
        ("AISEC-EVA-001", "median_queries_to_success"): 35.0,
        ("AISEC-ROB-001", "best_robust_accuracy@0.1"): 0.55,
        ("AISEC-ROB-001", "robust_accuracy_gain@0.1"): 0.33,
        ("AISEC-ROB-001", "clean_accuracy_cost"): 0.04,
    }
    first = card.data.eval_results[0]
    assert first.metric_type == "robust_accuracy@0.1"  # the headline figure leads its finding's metrics
    assert (first.task_type, first.dataset_type, first.dataset_revision) == (
        "image-classification",
        "digits",
        "b" * 64,
    )
    assert all(r.verified is False and r.metric_name for r in card.data.eval_results)
    assert card.data.model_name == "digits_cnn.pt" and card.data.library_name == "pytorch"
    # huggingface_hub writes the same front matter back: only fields it knows, in its own grouping
    assert card.data.to_dict() == model_card_metadata(assessment)


def test_task_and_name_follow_the_subject() -> None:
    tabular = model_card_metadata(
        make_assessment(shape=(30,), model_source=None, target_kind="SklearnTarget")
    )
    assert tabular["pipeline_tag"] == "tabular-classification" and tabular["library_name"] == "sklearn"
    assert tabular["model-index"][0]["name"] == "nightly"
    assert tabular["model-index"][0]["results"][0]["task"]["type"] == "tabular-classification"
    unknown = model_card_metadata(make_assessment(target_kind="not loaded"))
    assert "library_name" not in unknown
    no_figures = model_card_metadata(make_assessment(dataclasses.replace(_evasion(), metrics=())))
    assert "model-index" not in no_figures and no_figures["tags"] == [
        "aisec",
        "security-assessment",
        "evasion",
    ]


def test_the_json_holds_the_front_matter_and_the_security_section() -> None:
    assessment = make_assessment()
    document = _strict_json(render_model_card_json(assessment))
    assert document["schema"] == "aisec.model-card/1"
    assert (
        document["metadata"]
        == _front_matter(render_model_card(assessment))
        == model_card_metadata(assessment)
    )
    security = document["security"]
    assert security["passed"] is False
    assert security["threat_model"]["budgets"] == [0.05, 0.1]
    evasion, hardening = security["findings"]
    assert evasion["headline"]["id"] == "robust_accuracy@0.1" and evasion["breaks_policy"] is True
    assert evasion["headline"]["value"] == {
        "value": 0.22,
        "lower": 0.17,
        "upper": 0.28,
        "n": 200,
        "method": "Wilson score interval, 95%",
    }
    assert evasion["metrics"][-1]["value"] is None  # NaN
    (control,) = security["controls"]
    assert control["rule_id"] == "AISEC-ROB-001" and control["benefit"]["id"] == "best_robust_accuracy@0.1"
    assert [(c["of"], c["figure"], c["value"]) for c in control["costs"]] == [
        (None, "clean_accuracy_cost", 0.04),
        ("undefended", "latency (x undefended)", 1.0),  # its training-time ratio is empty: left out
        ("pgd_at", "training time (x plain)", 3.2),
        ("pgd_at", "latency (x undefended)", 1.01),
    ]
    assert security["scan"] == {
        "status": "not scanned",
        "verdict": None,
        "format": None,
        "signature": "not checked",
    }
    assert security["hashes"] == {"model_sha256": "a" * 64, "data_sha256": "b" * 64, "plan_sha256": "c" * 64}
    assert security["reproduce"]["seeds"] == [7]
    assert [item["rule_id"] for item in security["limitations"]] == ["AISEC-ROB-001"]


def test_the_security_section_in_markdown() -> None:
    body = _body(render_model_card(make_assessment()))
    for heading in ("Threat model", "Findings", "Figures", "Controls measured and their cost", "Limitations"):
        assert f"\n### {heading}\n" in body
    assert "| perturbation budgets | 0\\.05, 0\\.1 |" not in body  # only Markdown punctuation is escaped
    assert "| perturbation budgets | 0.05, 0.1 |" in body
    assert "**Policy broken**: 1 of 2 finding(s)" in body
    row = next(line for line in body.splitlines() if line.startswith("| AISEC-EVA-001 | Robust"))
    assert "robust accuracy at eps=0.1: 0.220 (Wilson score interval, 95%: 0.170–0.280, n=200)" in row
    assert row.endswith("| broken |")
    control = next(line for line in body.splitlines() if line.startswith("| AISEC-ROB-001 Hardened"))
    assert "clean accuracy cost 0.04" in control and "pgd\\_at: training time (x plain) 3.2" in control
    assert "**not scanned**" in body
    assert "- AISEC-ROB-001 Hardened models" in body  # flagged unreliable
    assert "`" + "c" * 64 + "`" in body and "seed 7" in body


def test_the_scan_verdict_and_hash_come_from_the_inspection() -> None:
    assessment = make_assessment(_scan(), _evasion())
    security = _strict_json(render_model_card_json(assessment))["security"]
    assert security["scan"] == {
        "status": "scanned",
        "verdict": "safe",
        "format": "pytorch-zip",
        "signature": "not checked",
    }
    assert security["hashes"]["model_sha256"] == "d" * 64
    assert security["controls"] == []
    body = _body(render_model_card(assessment))
    assert "static scan verdict **safe** (format pytorch-zip)" in body and "`" + "d" * 64 + "`" in body
    assert "No control was measured in this assessment." in body


def test_hostile_strings_break_neither_the_tables_nor_the_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = make_assessment(
        _evasion(title=HOSTILE),
        dataclasses.replace(
            _hardening(),
            metrics=(Metric(HOSTILE, 0.1, HOSTILE, id="clean_accuracy_cost"),),
            tables=(Table("t", ("model", "cost"), ((HOSTILE, HOSTILE),)),),
        ),
        model_source=f"models/{HOSTILE}.pt",
        data_name=HOSTILE,
    )
    hostile = dataclasses.replace(
        hostile, name=HOSTILE, threat_model={"knowledge": HOSTILE, HOSTILE: [HOSTILE]}
    )
    text = render_model_card(hostile)
    assert _front_matter(text) == model_card_metadata(hostile)
    card = _load_with_huggingface(_write_card(tmp_path, hostile), monkeypatch)
    assert card.data.to_dict() == model_card_metadata(hostile)
    assert (
        card.data.eval_results[0].dataset_name
        == "a | b <script>alert(1)</script> [x](javascript:alert(1)) `c` *d*  --- # e f"
    )

    body = _body(text)
    assert "<script" not in body and "\x00" not in body and "\u2028" not in body
    assert re.search(r"(?<!\\)\]\(", body) is None  # no link: its brackets are escaped
    assert "&lt;script&gt;" in body and "a \\| b" in body
    # no heading, list item or code span came from a string: the same headings as a clean card's
    headings = [line for line in body.splitlines() if line.startswith("#")]
    clean = [
        line for line in _body(render_model_card(make_assessment())).splitlines() if line.startswith("#")
    ]
    assert headings[0].startswith("# Model card: ") and headings[1:] == clean[1:]
    assert "`c`" not in body and "\\`c\\`" in body
    lines = body.splitlines()
    tables = [i for i, line in enumerate(lines) if line.startswith("|---")]
    assert len(tables) == 6
    for i in tables:
        columns = lines[i].count("|")
        end = next((k for k in range(i + 1, len(lines)) if not lines[k].startswith("|")), len(lines))
        for row in (lines[i - 1], *lines[i + 1 : end]):
            assert len(re.findall(r"(?<!\\)\|", row)) == columns, row


# ------------------------------------------------------------------------------------------- writing


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in folder.rglob("*")}


def test_write_reports_writes_the_card_by_default(tmp_path: Path) -> None:
    paths = write_reports(make_assessment(), tmp_path / "out", formats=("json", "card"))
    assert paths == {"json": tmp_path / "out" / "report.json", "card": tmp_path / "out" / "model_card.md"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model_card.json",
        "model_card.md",
        "report.json",
    ]
    assert FORMAT_FILES["card"] == ("model_card.md", "model_card.json")
    every = write_reports(make_assessment(), tmp_path / "all")
    assert "card" in every
    written = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert written == sorted(name for names in FORMAT_FILES.values() for name in names)


def test_a_failing_card_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model_card.md").write_text("previous card")
    before = _snapshot(tmp_path)

    def broken(assessment: Assessment) -> str:
        raise RuntimeError("card data failed")

    monkeypatch.setattr("aisec.report.model_card.render_model_card_json", broken)
    with pytest.raises(RuntimeError, match="card data failed"):
        write_reports(make_assessment(), out, formats=("json", "card"))
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("failing_move", [1, 2, 3])
def test_an_interrupt_while_moving_the_card_restores_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_move: int
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_card.json").write_text("previous card data")
    before = _snapshot(tmp_path)
    real_replace = os.replace
    calls: list[object] = []

    def interrupted_replace(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        calls.append(source)
        if len(calls) == failing_move:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_reports(make_assessment(), out, formats=("card",))
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------- the ML-BOM


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    pytest.importorskip("model_signing")
    path = tmp_path / "digits_cnn.pt"
    path.write_bytes(b"model weights")
    return path


def _report_file(tmp_path: Path, assessment: Assessment) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(to_json_dict(assessment), allow_nan=False))
    return path


def _validate_cyclonedx_1_6(bom: dict[str, Any]) -> None:
    validation = pytest.importorskip("cyclonedx.validation.json")
    from cyclonedx.schema import SchemaVersion

    error = validation.JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom))
    if error is not None:
        data = error.data
        pytest.fail(
            f"not valid CycloneDX 1.6: {getattr(data, 'message', data)} at {list(getattr(data, 'path', []))}"
        )


def test_the_bom_carries_the_assessment_figures(tmp_path: Path, model_file: Path) -> None:
    from aisec.defend.supply_chain.bom import build_bom, read_assessment_report

    model_sha256 = hashlib.sha256(model_file.read_bytes()).hexdigest()
    report = _report_file(
        tmp_path, make_assessment(_scan(), _evasion(), _hardening(), model_sha256=model_sha256)
    )
    report_sha256 = hashlib.sha256(report.read_bytes()).hexdigest()
    bom = build_bom(model_file, assessment=read_assessment_report(report), assessment_sha256=report_sha256)
    _validate_cyclonedx_1_6(bom)

    component = bom["metadata"]["component"]
    card = component["modelCard"]
    metrics = {(m["slice"], m["type"]): m for m in card["quantitativeAnalysis"]["performanceMetrics"]}
    assert metrics["AISEC-EVA-001", "robust_accuracy@0.1"] == {
        "type": "robust_accuracy@0.1",
        "value": "0.22",
        "slice": "AISEC-EVA-001",
        "confidenceInterval": {"lowerBound": "0.17", "upperBound": "0.28"},
    }
    assert metrics["AISEC-INS-001", "safe"]["value"] == "true"
    assert metrics["AISEC-EVA-001", "median_queries_to_success"] == {
        "type": "median_queries_to_success",
        "value": "35.0",
        "slice": "AISEC-EVA-001",
    }
    assert ("AISEC-EVA-001", "median_minimal_perturbation") not in metrics  # not measured (NaN)

    considerations = card["considerations"]
    limitations = considerations["technicalLimitations"]
    assert any(line.startswith("AISEC-ROB-001") and "unreliable" in line for line in limitations)
    assert any(
        "policy robust_accuracy >= 0.5 failed (observed 0.22, threshold 0.5)" in line for line in limitations
    )
    tradeoffs = considerations["performanceTradeoffs"]
    assert any(line.endswith("clean accuracy cost 0.04") for line in tradeoffs)
    assert any(line.endswith("pgd_at: training time (x plain) 3.2") for line in tradeoffs)
    assert considerations["ethicalConsiderations"] == [
        {"name": "Robust accuracy under evasion", "mitigationStrategy": "Train adversarially."}
    ]  # high; the info findings are no risk

    properties = {p["name"]: p["value"] for p in component["properties"]}
    assert properties["aisec:assessment:verdict"] == "failed"
    assert properties["aisec:assessment:sha256"] == report_sha256
    assert properties["aisec:assessment:plan-sha256"] == "c" * 64
    assert properties["aisec:assessment:model-match"] == "yes"
    assert properties["aisec:scan:status"] == "not-scanned"  # the BOM's own scan, unchanged


def test_a_bom_from_a_report_of_another_model_says_so(tmp_path: Path, model_file: Path) -> None:
    from aisec.defend.supply_chain.bom import build_bom

    bom = build_bom(model_file, assessment=to_json_dict(make_assessment(_scan())))
    _validate_cyclonedx_1_6(bom)
    properties = {p["name"]: p["value"] for p in bom["metadata"]["component"]["properties"]}
    assert (
        properties["aisec:assessment:model-match"] == "no"
        and properties["aisec:assessment:verdict"] == "passed"
    )
    assert "aisec:assessment:sha256" not in properties
    assert (
        "considerations" not in bom["metadata"]["component"]["modelCard"]
    )  # an info finding, nothing failed


def test_a_bad_report_is_refused_in_one_line(tmp_path: Path, model_file: Path) -> None:
    from aisec.defend.supply_chain.bom import build_bom, read_assessment_report

    document = to_json_dict(make_assessment())
    cases = {
        "missing.json": None,
        "not-json.json": "{",
        "nan.json": json.dumps(document).replace('"value": 35.0', '"value": NaN'),
        "old.json": json.dumps(document | {"schema": "aisec.assessment/1"}),
        "scan.json": json.dumps({"schema": "aisec.scan/1"}),
    }
    messages = {}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(BadInputError) as error:
            read_assessment_report(tmp_path / name)
        messages[name] = str(error.value)
        assert str(tmp_path / name) in messages[name] and "\n" not in messages[name]
    assert "no such assessment report" in messages["missing.json"]
    assert "not JSON" in messages["not-json.json"] and "NaN" in messages["nan.json"]
    assert "'aisec.assessment/1', not 'aisec.assessment/2'" in messages["old.json"]

    with pytest.raises(BadInputError, match="field 'schema'"):
        build_bom(model_file, assessment={"schema": "aisec.assessment/3"})
    broken = json.loads(json.dumps(document))
    broken["findings"][0]["metrics"][0]["id"] = 3
    with pytest.raises(BadInputError, match=r"findings\[0\]\.metrics\[0\]: field 'id'"):
        build_bom(model_file, assessment=broken)
    with pytest.raises(BadInputError, match="assessment_sha256"):
        build_bom(model_file, assessment=document, assessment_sha256="not a digest")


def test_the_bom_reads_the_schema_the_json_report_writes() -> None:
    from aisec.defend.supply_chain.bom import ASSESSMENT_SCHEMA
    from aisec.report.json_report import SCHEMA_ID

    assert ASSESSMENT_SCHEMA == SCHEMA_ID  # bom.py may not import the report layer, so it spells it again


def test_the_bom_stays_off_the_report_and_assessment_layers() -> None:
    code = (
        "import sys, aisec.defend.supply_chain.bom; "
        "bad = [m for m in sys.modules if m.startswith(('aisec.report', 'aisec.assessment', 'torch'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
