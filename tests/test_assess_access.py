"""Assessments under each level of attacker knowledge, and an ONNX model end to end through a plan."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from aisec.assessment.plan import EvasionProbeSection, ProbesSection
from aisec.assessment.runner import run_assessment
from aisec.assessment.threat_model import ThreatModel
from aisec.cli import app
from aisec.data.dataset import LabelledData


def finding(assessment, rule="AISEC-EVA-001"):
    return next(f for f in assessment.findings if f.rule_id == rule)


def metric(f, metric_id):
    return f.metric(metric_id).value


@pytest.mark.parametrize("knowledge,attack", [("scores", "square"), ("labels", "hopskipjump")])
def test_black_box_knowledge_uses_the_matching_attack(digits, digits_target, knowledge, attack):
    data = LabelledData(digits.test.x[:60], digits.test.y[:60], "digits/test")
    a = run_assessment(
        digits_target,
        data,
        ProbesSection(evasion=EvasionProbeSection(examples=2)),
        threat_model=ThreatModel(knowledge=knowledge, budgets=(0.1, 0.3), query_budget=400),
    )
    f = finding(a)
    assert f.provenance.settings["attacks"] == [attack]
    assert f"{knowledge} attacker" in f.title
    low, high = (metric(f, f"robust_accuracy@{e}") for e in ("0.1", "0.3"))
    assert high.value <= low.value < metric(f, "clean_accuracy").value
    assert metric(f, "median_queries_to_success") <= 400
    # white-box masking checks need gradients; a black-box attacker gets the randomness check only
    checks = finding(a, "AISEC-EVA-003").tables[0]
    assert checks.column("check") == ("randomised forward pass",)


@pytest.fixture(scope="module")
def onnx_plan(tmp_path_factory, digits):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    work = tmp_path_factory.mktemp("onnx")
    x_train = digits.train.x.reshape(len(digits.train), 64).numpy()
    model = LogisticRegression(max_iter=2000).fit(x_train, digits.train.y.numpy())
    onnx_model = to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}})
    (work / "digits-logreg.onnx").write_bytes(onnx_model.SerializeToString())
    np.savez(work / "test.npz", x=digits.test.x[:80].reshape(80, 64).numpy(), y=digits.test.y[:80].numpy())
    plan = {
        "name": "onnx logistic regression",
        "target": {"kind": "onnx", "path": "digits-logreg.onnx", "input": {"shape": [64], "num_classes": 10}},
        "data": {"path": "test.npz"},
        "threat_model": {"knowledge": "white_box", "budgets": [0.05, 0.2], "query_budget": 300},
        "probes": {"evasion": {"examples": 2}},
        "policy": {"min_robust_accuracy": {0.05: 0.3}},
    }
    path = work / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_onnx_model_is_assessed_as_a_score_black_box(onnx_plan):
    out = onnx_plan.parent / "out"
    result = CliRunner().invoke(app, ["assess", str(onnx_plan), "--output", str(out), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    f = next(f for f in report["findings"] if f["rule_id"] == "AISEC-EVA-001")
    assert f["provenance"]["settings"]["attacks"] == ["square"]
    assert "only offers scores" in f["message"]
    assert report["subject"]["target_kind"] == "OnnxTarget"
    assert (result.exit_code == 1) == any(not c["passed"] for c in f["policy"])
