"""aisec.assess: the Python front door, with the keys of a plan file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import aisec
from aisec.api import AssessmentResult
from aisec.core.errors import DataError, PlanError
from aisec.core.seeding import build_model
from aisec.core.training import fit
from aisec.demo.models import digits_cnn
from aisec.report.json_report import load_schema

QUICK = {"threat_model": {"budgets": [0.05, 0.1]}, "probes": {"evasion": {"minimal_perturbation": False}}}


@pytest.fixture(scope="module")
def regression(digits) -> LogisticRegression:
    return LogisticRegression(max_iter=500).fit(digits.train.x.flatten(1).numpy(), digits.train.y.numpy())


@pytest.fixture(scope="module")
def flat(digits) -> tuple[np.ndarray, np.ndarray]:
    return digits.test.x[:120].flatten(1).numpy(), digits.test.y[:120].numpy()


def test_a_scikit_learn_classifier_from_numpy_arrays(regression, flat, tmp_path: Path) -> None:
    x, y = flat
    result = aisec.assess(regression, x, y, plan=QUICK)
    assert isinstance(result, AssessmentResult) and result.findings
    evasion = result.finding("AISEC-EVA-001")
    assert evasion.metric("robust_accuracy@0.1").value is not None
    subject = result.assessment.subject
    assert subject.target_kind == "SklearnTorchTarget" and subject.access == "white_box"  # converted exactly
    assert subject.input_shape == (64,) and subject.num_classes == 10
    assert subject.input_spec_source.startswith(
        "input spec inferred: sample shape (64,) from x, 10 classes from"
    )
    assert "bounds [0, 1] from the range of x" in subject.input_spec_source
    paths = result.save(tmp_path / "out")
    assert set(paths) == {"json", "html", "sarif", "junit", "card"}
    report = json.loads(paths["json"].read_text())
    import jsonschema

    jsonschema.validate(report, load_schema())
    assert report["subject"]["input_spec_source"] == subject.input_spec_source
    assert report["passed"] == result.passed
    page = result._repr_html_()
    assert page.startswith("<iframe srcdoc=") and "AISEC-EVA-001" in page


def test_a_torch_module_with_the_spec_from_the_plan(digits_model, digits) -> None:
    plan = {**QUICK, "target": {"input": {"shape": [1, 8, 8], "num_classes": 10, "lower": 0.0, "upper": 1.0}}}
    result = aisec.assess(digits_model, digits.test.x[:100], digits.test.y[:100], plan=plan)
    subject = result.assessment.subject
    assert subject.target_kind == "TorchTarget" and subject.input_spec_source == "plan"
    assert subject.model_sha256 is not None and len(subject.model_sha256) == 64
    again = aisec.assess(digits_model, digits.test.x[:100].numpy(), digits.test.y[:100].numpy(), plan=plan)
    assert again.assessment.subject.model_sha256 == subject.model_sha256
    figure = "robust_accuracy@0.1"
    assert again.finding("AISEC-EVA-001").metric(figure) == result.finding("AISEC-EVA-001").metric(figure)


def test_a_callable_is_a_score_black_box(regression, flat) -> None:
    x, y = flat
    plan = {"threat_model": {"knowledge": "scores", "budgets": [0.1], "query_budget": 200},
            "probes": {"evasion": {"minimal_perturbation": False, "masking_checks": False}}}  # fmt: skip
    result = aisec.assess(regression.predict_proba, x[:40], y[:40], plan=plan)
    assert result.assessment.subject.target_kind == "CallableTarget"
    assert result.assessment.subject.access == "scores"


def test_probes_that_retrain_take_the_factory_recipe_and_training_set_as_objects(digits) -> None:
    """The membership probe's shadow models come from a factory and recipe given as functions, on a training
    set given as arrays."""
    train = digits.train.subset(300, seed=0)
    model = fit(build_model(digits_cnn, 0), train, seed=0, epochs=5)
    recipe_calls = []

    def recipe(model, data, *, seed):
        recipe_calls.append(seed)
        return fit(model, data, seed=seed, epochs=2)

    plan = {
        "threat_model": {"knowledge": "scores"},
        "target": {"factory": digits_cnn},
        "training": {"data": (train.x, train.y), "recipe": recipe},
        "probes": {"membership": {"attacks": ["loss", "lira"], "records": 50, "shadows": 4}},
    }
    result = aisec.assess(model, digits.test.x, digits.test.y, plan=plan)
    assert len(recipe_calls) == 4
    assert result.finding("AISEC-MIA-001").metric("highest_auc").value is not None


@pytest.mark.parametrize(
    ("plan", "error", "message"),
    [
        ({"data": {"builtin": "digits"}, **QUICK}, PlanError, "plan: data: aisec.assess assesses x and y"),
        ({"target": {"path": "m.pt"}, **QUICK}, PlanError, "plan: target.path: the model is the object"),
        (
            {"probes": {"evasion": {"attacks": ["nope"]}}},
            PlanError,
            "plan: probes.evasion.attacks: unknown attack",
        ),
        ({"probes": {}}, PlanError, "plan: probes: enable at least one probe"),
        ({"probes": {"membership": {}}}, PlanError, "need `training.data`, the model's training set"),
        ("evasion", PlanError, "plan: a plan is a mapping"),
    ],
)
def test_bad_plans_raise_the_errors_of_a_plan_file(regression, flat, plan, error, message) -> None:
    x, y = flat
    with pytest.raises(error, match=message):
        aisec.assess(regression, x, y, plan=plan)


def test_bad_data_and_models_raise_what_the_cli_reports(regression, flat, digits_model) -> None:
    x, y = flat
    nan = x.copy()
    nan[3, 5] = np.nan
    with pytest.raises(DataError, match="x contains NaN"):
        aisec.assess(regression, nan, y, plan=QUICK)
    with pytest.raises(DataError, match="labels range up to 10 but the model has 10 classes|label"):
        aisec.assess(regression, x, y + 1, plan=QUICK)
    plan = {**QUICK, "target": {"input": {"shape": [1, 8, 8], "num_classes": 10}}}
    with pytest.raises(DataError, match=r"has values in \[0, 2\], outside the model's input bounds \[0, 1\]"):
        aisec.assess(digits_model, torch.from_numpy(x).reshape(-1, 1, 8, 8) * 2, y, plan=plan)
    with pytest.raises(DataError, match="the model failed on two samples of x"):
        aisec.assess(digits_model, x, y, plan=QUICK)  # flat inputs into a CNN
    with pytest.raises(Exception, match="the model must be a torch module"):
        aisec.assess(42, x, y, plan=QUICK)


@pytest.mark.slow
def test_the_example_runs(tmp_path: Path) -> None:
    """examples/assess_from_python.py, as docs/python.md tells users to run it."""
    import subprocess
    import sys

    example = Path(__file__).parent.parent / "examples" / "assess_from_python.py"
    out = subprocess.run(
        [sys.executable, str(example), str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "AISEC-EVA-001" in out.stdout and (tmp_path / "report.html").is_file()


@pytest.mark.slow  # about 95 s: it trains four models and runs an assessment
@pytest.mark.training
def test_the_robustness_example_runs(tmp_path: Path) -> None:
    """examples/robustness_controls.py, as docs/robustness.md tells users to run it (at 3 epochs)."""
    import subprocess
    import sys

    example = Path(__file__).parent.parent / "examples" / "robustness_controls.py"
    out = subprocess.run(
        [sys.executable, str(example), str(tmp_path), "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "AISEC-ROB-001" in out.stdout and (tmp_path / "models" / "adversarial_training-fast.pt").is_file()
