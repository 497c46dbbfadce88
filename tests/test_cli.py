"""`aisec assess` end to end: exit codes 0/1 by policy, and bad input -> one clear line, exit 2, nothing written."""

import copy
import json
import pickle

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from aisec.cli import app
from aisec.demo.run import DEMO_PLAN, prepare_demo

runner = CliRunner()
FAST = {"evasion": {"attacks": ["pgd", "square"], "examples": 2}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    w = tmp_path_factory.mktemp("demo")
    prepare_demo(w)
    return w


def write_plan(workdir, name, **changes):
    plan = copy.deepcopy(DEMO_PLAN)
    plan["data"]["samples"] = 100
    plan["threat_model"].update(budgets=[0.05, 0.2], query_budget=300)
    plan["probes"] = copy.deepcopy(FAST)
    plan["policy"] = {"min_robust_accuracy": {0.05: 0.5}}
    plan.pop("training")
    plan.pop("defences")
    for section, value in changes.items():
        if isinstance(value, dict) and isinstance(plan.get(section), dict):
            plan[section].update(value)
        else:
            plan[section] = value
    path = workdir / name
    path.write_text(yaml.safe_dump(plan))
    return path


def run(*args):
    return runner.invoke(app, [*args, "--quiet"])


def test_assess_writes_all_reports_and_exits_by_policy(workdir):
    out = workdir / "out-ok"
    result = run("assess", str(write_plan(workdir, "ok.yaml")), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.html",
        "report.sarif",
        "report.junit.xml",
        "model_card.md",
        "model_card.json",
    }
    report = json.loads((out / "report.json").read_text())
    finding = next(f for f in report["findings"] if f["rule_id"] == "AISEC-EVA-001")
    assert finding["provenance"]["model_sha256"] and finding["provenance"]["data_sha256"]

    strict = write_plan(workdir, "strict.yaml", policy={"min_robust_accuracy": {0.2: 0.99}})
    result = run("assess", str(strict), "--output", str(workdir / "out-strict"))
    assert result.exit_code == 1, result.output


def bad_model(workdir):
    path = workdir / "garbage.pt"
    path.write_bytes(b"\x80\x04not really a checkpoint")
    return write_plan(
        workdir, "bad-model.yaml", target={"path": "garbage.pt"}
    ), "garbage.pt: not a readable torch state dict"


def malicious_model(workdir):
    """A pickle that would create a marker file when loaded: it must be refused and never run."""
    marker = workdir / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (workdir / "evil.pt").write_bytes(pickle.dumps({"w": Payload()}))
    return write_plan(
        workdir, "evil.yaml", target={"path": "evil.pt"}
    ), "evil.pt: not a readable torch state dict"


def wrong_shape(workdir):
    np.savez(workdir / "flat.npz", x=np.zeros((20, 64), np.float32), y=np.zeros(20, np.int64))
    return write_plan(
        workdir, "shape.yaml", data={"path": "flat.npz", "builtin": None, "samples": None}
    ), "sample shape (64,), but the model expects (1, 8, 8)"


def nan_inputs(workdir):
    x = np.full((20, 1, 8, 8), 0.5, np.float32)
    x[3, 0, 2, 2] = np.nan
    np.savez(workdir / "nan.npz", x=x, y=np.zeros(20, np.int64))
    return write_plan(
        workdir, "nan.yaml", data={"path": "nan.npz", "builtin": None, "samples": None}
    ), "NaN or infinite values in 1 sample"


def unknown_attack(workdir):
    return write_plan(
        workdir, "unknown.yaml", probes={"evasion": {"attacks": ["pgd", "carlini"]}}
    ), "probes.evasion.attacks: unknown attack 'carlini'"


def untrusted_pickle(workdir):
    """An untrusted scikit-learn file goes through the scanner, which refuses this one; nothing runs."""
    marker = workdir / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (workdir / "model.joblib").write_bytes(pickle.dumps(Payload()))
    target = {"kind": "sklearn", "path": "model.joblib", "factory": None}
    return write_plan(
        workdir, "sk.yaml", target=target
    ), "model.joblib was not loaded: the scan's verdict is unsafe"


@pytest.mark.parametrize(
    "case", [bad_model, malicious_model, wrong_shape, nan_inputs, unknown_attack, untrusted_pickle]
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, case):
    plan, expected = case(workdir)
    out = workdir / f"out-{case.__name__}"
    result = run("assess", str(plan), "--output", str(out))
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert result.output.strip().startswith("error:") and "Traceback" not in result.output
    assert not out.exists()
    assert not (workdir / "PWNED").exists()


def test_an_error_prints_brackets_literally(workdir):
    """Messages go through rich: a path or extra with brackets must not be read as markup and vanish."""
    plan = write_plan(
        workdir, "brackets.yaml", data={"path": "digits[v2].npz", "builtin": None, "samples": None}
    )
    result = run("assess", str(plan), "--output", str(workdir / "out-brackets"))
    assert result.exit_code == 2, result.output
    assert "digits[v2].npz" in result.output


def test_import_and_help_do_not_load_torch():
    import subprocess
    import sys

    code = "import sys, aisec, aisec.cli; print(sorted(m for m in ('torch', 'sklearn', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


@pytest.mark.slow
def test_demo_writes_a_report(tmp_path):
    result = run("demo", "--output", str(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert any(f["rule_id"] == "AISEC-EVA-001" for f in report["findings"])


def test_help_says_what_aisec_does():
    text = " ".join(runner.invoke(app, ["--help"], terminal_width=200).output.split()).lower()
    for duty in ("evasion", "poisoning and backdoors", "model extraction", "model inversion", "membership",
                 "attribute inference", "scanning", "safe loading", "signing", "bills of materials"):  # fmt: skip
        assert duty in text, duty
