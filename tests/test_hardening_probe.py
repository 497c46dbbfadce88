"""The robustness controls in an assessment: every control of `defences` trained, attacked by the evasion probe
and reported (AISEC-ROB-001 to -005), its models saved beside the report, and bad settings refused before any
training. The controls' own figures are asserted in their modules' tests; this one checks that the assessment
carries them through honestly, at small settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import aisec
from aisec.assessment import rules
from aisec.core.errors import BadInputError, PlanError
from aisec.demo.models import digits_cnn
from aisec.report import load_schema

pytestmark = pytest.mark.training

INPUT = {"shape": [1, 8, 8], "num_classes": 10, "lower": 0.0, "upper": 1.0}


def _plan(digits, defences: dict) -> dict:
    return {
        "seed": 0,
        "target": {"input": INPUT, "factory": digits_cnn},
        "threat_model": {"budgets": [0.1], "query_budget": 200},
        "probes": {"evasion": {"attacks": ["apgd-ce", "square"], "examples": 0}},
        "training": {"data": (digits.train.x, digits.train.y)},
        "defences": defences,
    }


@pytest.fixture(scope="module")
def assessed(digits_model, digits):
    defences = {
        "adversarial_training": [{"method": "fast", "eps": 0.1, "epochs": 4}],
        "certification": {"method": "ibp", "samples": 40},
        "randomized_smoothing": {"sigma": 0.25, "n0": 20, "n": 200, "samples": 20, "epochs": 3},
        "input_detectors": ["feature_squeezing", "mahalanobis"],
        "input_transforms": [{"bit_depth": 2}],
        "null_labelling": {"eps": 0.1, "epochs": 4},
    }
    x, y = digits.test.x[:120], digits.test.y[:120]
    return aisec.assess(digits_model, x, y, plan=_plan(digits, defences))


def test_every_control_is_reported_by_its_rule(assessed) -> None:
    found = [f.rule_id for f in assessed.assessment.findings]
    ids = [r.id for r in (rules.ROBUSTNESS, rules.HARDENED_MODELS, rules.CERTIFIED, rules.DETECTORS)]
    ids += [rules.INPUT_TRANSFORMS.id, rules.NULL_LABELLING.id]
    assert [i for i in found if i in ids] == ids


def test_hardened_model_is_attacked_and_saved(assessed, tmp_path: Path) -> None:
    finding = assessed.finding(rules.HARDENED_MODELS.id)
    table = finding.tables[0]
    assert table.column("model") == ("undefended (as assessed)", "adversarial_training-fast")
    assert table.column("training time (x plain)")[1] > 1  # one FGSM step more per batch than plain training
    assessed.save(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    jsonschema.Draft202012Validator(load_schema()).validate(report)
    saved = [m for f in report["findings"] for m in f["models"]]
    assert {m["file_name"] for m in saved} == {
        "adversarial_training-fast.pt",
        "randomized_smoothing-sigma0.25.pt",
        "null_labelling-eps0.1.pt",
    }
    for m in saved:
        content = (tmp_path / "models" / m["file_name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == m["sha256"]
    state = torch.load(tmp_path / "models" / "adversarial_training-fast.pt", weights_only=True)
    digits_cnn().load_state_dict(state)  # a state dict for the user's factory


def test_no_certified_point_is_broken(assessed) -> None:
    finding = assessed.finding(rules.CERTIFIED.id)
    assert finding.reliable
    bounds = finding.tables[0]
    for row in bounds.records():
        assert row["certified accuracy"] <= row["empirical robust accuracy"]


def test_bpda_is_the_real_figure_of_a_transformation(assessed) -> None:
    finding = assessed.finding(rules.INPUT_TRANSFORMS.id)
    row = finding.tables[0].records()[0]
    assert row["robust accuracy (BPDA)"] < row["robust accuracy (plain gradients)"]
    assert row["robust accuracy (worst of both)"] <= row["robust accuracy (BPDA)"]
    assert row["masking checks fired (plain)"] != "none"
    assert "Gradient masking" in finding.message


def test_detectors_and_null_labelling_report_adaptive_figures(assessed) -> None:
    detectors = assessed.finding(rules.DETECTORS.id).tables[0].records()
    assert {r["detector"] for r in detectors} == {"feature_squeezing", "mahalanobis"}
    for r in detectors:
        assert (
            0 <= r["fooled & undetected (non-adaptive)"] <= 1
            and 0 <= r["fooled & undetected (adaptive)"] <= 1
        )
    null = assessed.finding(rules.NULL_LABELLING.id)
    assert 0 <= null.metric("clean_null_rate").value <= 1
    assert null.metric("adaptive_success@0.1").value is not None


def test_a_budget_outside_the_input_range_is_refused_before_training(digits_model, digits) -> None:
    plan = _plan(digits, {"adversarial_training": [{"method": "pgd", "eps": 8}]})
    with pytest.raises(PlanError, match=r"adversarial_training\[0\].eps: 8 exceeds the input range"):
        aisec.assess(digits_model, digits.test.x[:20], digits.test.y[:20], plan=plan)


def test_controls_on_a_model_that_is_not_torch_are_refused(digits) -> None:
    x = digits.train.x.flatten(1).numpy()
    model = LogisticRegression(max_iter=200).fit(x, digits.train.y.numpy())
    plan = {
        "target": {"input": {"shape": [64], "num_classes": 10}},
        "probes": {"evasion": {}},
        "defences": {"input_detectors": ["mahalanobis"]},
    }
    with pytest.raises(BadInputError, match="defences.input_detectors needs a torch"):
        aisec.assess(model, x[:20], digits.train.y[:20].numpy(), plan=plan)
