"""`aisec inspect`, `aisec.inspect`, `aisec.inspect_file` and `probes.inspection` in a plan: the model-file gate
(a file the static scan or the signature rejects is never loaded, and the report says why), loading what users
download (torch state dict + factory, TorchScript with --trusted, ONNX, scikit-learn joblib), and bad input ->
exit 2, one line, nothing written."""

from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import jsonschema
import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

import aisec
from aisec.cli import app
from aisec.core.errors import PlanError
from aisec.core.seeding import build_model
from aisec.core.severity import Severity
from aisec.core.training import fit
from aisec.data.builtin import Split
from aisec.defend.supply_chain.signing import generate_key_pair, sign_model
from aisec.demo.models import digits_cnn
from aisec.report.json_report import load_schema

# TorchScript is what users download, deprecated or not: its files are written here with torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
runner = CliRunner()
FACTORY = "aisec.demo.models:digits_cnn"
NO_BEHAVIOUR = ("--no-backdoor-scan", "--no-shortcuts", "--explanations", "none")
NO_BEHAVIOUR_KEYS = {"backdoor_scan": False, "shortcuts": False, "explanations": []}
REPORTS = {
    "report.json",
    "report.html",
    "report.sarif",
    "report.junit.xml",
    "model_card.md",
    "model_card.json",
}


def inspect(*args: str | Path) -> object:
    return runner.invoke(app, ["inspect", *map(str, args), "--quiet"])


def evil_pickle(path: Path, marker: Path) -> Path:
    """A pickle whose REDUCE calls os.system("touch <marker>"), written opcode by opcode (never by pickling a
    live object): loading it creates `marker`."""
    command = f"touch {shlex.quote(str(marker))}".encode()
    path.write_bytes(b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R.")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, digits: Split) -> Path:
    """Clean data as images and as flat features, and an untrained digits CNN's state dict."""
    w = tmp_path_factory.mktemp("inspect")
    x, y = digits.test.x[:200].numpy(), digits.test.y[:200].numpy()
    np.savez(w / "clean.npz", x=x, y=y)
    np.savez(w / "flat.npz", x=x.reshape(len(x), -1), y=y)
    torch.save(build_model(digits_cnn, 0).state_dict(), w / "cnn.pt")
    return w


@pytest.fixture(scope="module")
def regression(digits: Split) -> LogisticRegression:
    return LogisticRegression(max_iter=300).fit(digits.train.x.flatten(1).numpy(), digits.train.y.numpy())


def report_of(out: Path) -> dict:
    """report.json, checked against the schema, with all four reports written."""
    assert {p.name for p in out.iterdir()} == REPORTS
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    return report


def assert_exit_follows_findings(result, report: dict, fail_on: Severity = Severity.MEDIUM) -> None:
    """Exit 1 exactly when a finding is at or above --fail-on or breaks a policy check (the model not loaded)."""
    failing = any(
        Severity(f["severity"]).rank >= fail_on.rank or not all(c["passed"] for c in f["policy"])
        for f in report["findings"]
    )
    assert result.exit_code == (1 if failing else 0), result.output
    assert report["passed"] is not failing


# --- the file gate -------------------------------------------------------------------------------------------


def test_the_payload_of_the_malicious_pickle_really_runs(tmp_path: Path) -> None:
    """The test file below is live: unpickled (in a child process), it creates its marker."""
    marker = tmp_path / "PROOF"
    evil = evil_pickle(tmp_path / "proof.pkl", marker)
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(evil)], check=True, timeout=60)
    assert marker.exists()


def test_a_malicious_pickle_is_never_loaded_and_the_report_says_why(work: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = evil_pickle(tmp_path / "model.pkl", marker)
    out = tmp_path / "out"
    result = inspect(evil, "--data", work / "clean.npz", "--output", out)
    assert result.exit_code == 1, result.output
    assert not marker.exists()
    report = report_of(out)
    assert [f["rule_id"] for f in report["findings"]] == ["AISEC-INS-001"]
    finding = report["findings"][0]
    assert finding["severity"] == "critical"
    assert "was not loaded" in finding["message"] and "os.system" in finding["message"]
    assert finding["recommendation"].startswith("Do not load this file")
    assert any(c["rule"] == "model_loaded" and not c["passed"] for c in finding["policy"])
    assert report["subject"]["target_kind"] == "not loaded"
    assert report["subject"]["model_sha256"] == finding["provenance"]["model_sha256"]


def test_a_signed_model_is_verified_before_it_is_loaded(work: Path, tmp_path: Path) -> None:
    model = tmp_path / "cnn.pt"
    model.write_bytes((work / "cnn.pt").read_bytes())
    fingerprint = generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    sign_model(model, tmp_path / "key.pem")
    out = tmp_path / "out"
    args = ("--data", work / "clean.npz", "--factory", FACTORY, "--key", tmp_path / "key.pub")
    result = inspect(model, *args, *NO_BEHAVIOUR, "--output", out)
    report = report_of(out)
    assert_exit_follows_findings(result, report)
    scan, signature = report["findings"][:2]
    assert (scan["rule_id"], scan["severity"]) == ("AISEC-INS-001", "info")
    assert (signature["rule_id"], signature["severity"]) == ("AISEC-INS-002", "info")
    assert fingerprint in signature["message"]
    assert report["subject"]["target_kind"] == "TorchTarget"  # loaded

    # The same file changed after signing (other weights, still a clean state dict): not loaded.
    torch.save(build_model(digits_cnn, 1).state_dict(), model)
    out = tmp_path / "out-tampered"
    result = inspect(model, *args, *NO_BEHAVIOUR, "--output", out)
    assert result.exit_code == 1, result.output
    report = report_of(out)
    assert [f["rule_id"] for f in report["findings"]] == ["AISEC-INS-001", "AISEC-INS-002"]
    tampered = report["findings"][1]
    assert tampered["severity"] == "critical" and "differs from what was signed" in tampered["message"]
    assert report["subject"]["target_kind"] == "not loaded"


# --- loading what users download -----------------------------------------------------------------------------


def torchscript(work: Path, regression: LogisticRegression) -> tuple[Path, Path, tuple[str, ...], str]:
    path = work / "scripted.pt"
    torch.jit.script(build_model(digits_cnn, 0)).save(str(path))
    return path, work / "clean.npz", ("--trusted",), "TorchTarget"


def onnx_model(work: Path, regression: LogisticRegression) -> tuple[Path, Path, tuple[str, ...], str]:
    from skl2onnx import to_onnx

    path = work / "regression.onnx"
    path.write_bytes(to_onnx(regression, np.zeros((1, 64), np.float32)).SerializeToString())
    return path, work / "flat.npz", (), "OnnxTarget"


def sklearn_joblib(work: Path, regression: LogisticRegression) -> tuple[Path, Path, tuple[str, ...], str]:
    path = work / "regression.joblib"
    joblib.dump(regression, path, compress=3)
    return path, work / "flat.npz", (), "SklearnTorchTarget"


@pytest.mark.parametrize("case", [torchscript, onnx_model, sklearn_joblib])
def test_each_kind_loads_through_its_own_path(work: Path, regression, tmp_path: Path, case: Callable) -> None:
    """The kind is told from the file's bytes (no --kind); the input spec is inferred and the report says so."""
    model, data, extra, target_kind = case(work, regression)
    out = tmp_path / "out"
    result = inspect(model, "--data", data, *extra, *NO_BEHAVIOUR, "--output", out)
    report = report_of(out)
    assert_exit_follows_findings(result, report)
    assert report["findings"][0]["rule_id"] == "AISEC-INS-001"
    assert report["findings"][0]["severity"] == "info"
    subject = report["subject"]
    assert subject["target_kind"] == target_kind and subject["num_classes"] == 10
    assert subject["input_spec_source"].startswith("input spec inferred")


# --- bad input: exit 2, one line, nothing written -----------------------------------------------------------


def scripted_without_trust(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    path = tmp_path / "scripted.pt"
    torch.jit.script(build_model(digits_cnn, 0)).save(str(path))
    return [path, "--data", work / "clean.npz"], "runs its own code when loaded; pass --trusted"


def state_dict_without_factory(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    return [work / "cnn.pt", "--data", work / "clean.npz"], "give the factory that builds its module"


def data_of_the_wrong_shape(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    return [work / "cnn.pt", "--data", work / "flat.npz", "--factory", FACTORY], (
        "the model failed on two samples of x, shape (2, 64)"
    )


def nan_in_the_data(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    with np.load(work / "clean.npz") as clean:
        x, y = clean["x"].copy(), clean["y"]
    x[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    return [work / "cnn.pt", "--data", tmp_path / "nan.npz", "--factory", FACTORY], (
        "nan.npz contains NaN or infinite values in 1 sample"
    )


def data_outside_the_bounds(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    spec = ["--input-shape", "1,8,8", "--classes", "10", "--bounds", "0,0.5"]
    return [work / "cnn.pt", "--data", work / "clean.npz", "--factory", FACTORY, *spec], (
        "outside the model's input bounds [0, 0.5]"
    )


def a_model_with_one_output(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    (tmp_path / "inspect_one_output.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))\n"
    )
    build = importlib.import_module("inspect_one_output").build  # tmp_path is on sys.path
    torch.save(build().state_dict(), tmp_path / "one.pt")
    return [tmp_path / "one.pt", "--data", work / "clean.npz", "--factory", "inspect_one_output:build"], (
        "the model returned shape (2, 1) for 2 samples; it must return class scores"
    )


def signature_without_key(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    args = [work / "cnn.pt", "--data", work / "clean.npz", "--factory", FACTORY, "--signature", "cnn.pt.sig"]
    return args, "--signature needs --key"


def not_a_model_file(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    (tmp_path / "notes.txt").write_text("not a model\n")
    return [tmp_path / "notes.txt", "--data", work / "clean.npz"], "its bytes are text, not a model file"


def unknown_explanation(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    args = [work / "cnn.pt", "--data", work / "clean.npz", "--factory", FACTORY, "--explanations", "lime"]
    return args, "inspection.explanations"


def missing_data(work: Path, tmp_path: Path) -> tuple[list[object], str]:
    return [
        work / "cnn.pt",
        "--data",
        tmp_path / "none.npz",
        "--factory",
        FACTORY,
    ], "none.npz: data file not found"


@pytest.mark.parametrize(
    "case",
    [
        scripted_without_trust,
        state_dict_without_factory,
        data_of_the_wrong_shape,
        nan_in_the_data,
        data_outside_the_bounds,
        a_model_with_one_output,
        signature_without_key,
        not_a_model_file,
        unknown_explanation,
        missing_data,
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Callable
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))  # for a factory the case writes there
    args, expected = case(work, tmp_path)
    out = tmp_path / "out"
    result = inspect(*args, "--output", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output
    assert not out.exists()


# --- the whole inspection -------------------------------------------------------------------------------------


@pytest.mark.training
def test_a_trained_digits_cnn_end_to_end(work: Path, digits: Split, tmp_path: Path) -> None:
    """The behavioural checks on: the four reports, the file finding first, the probe's findings with their
    stable metric ids, and the exit code as the findings say."""
    model = tmp_path / "trained.pt"
    torch.save(fit(build_model(digits_cnn, 0), digits.train, seed=0, epochs=5).state_dict(), model)
    out = tmp_path / "out"
    result = inspect(model, "--data", work / "clean.npz", "--factory", FACTORY, "--output", out)
    report = report_of(out)
    assert_exit_follows_findings(result, report)
    rules = [f["rule_id"] for f in report["findings"]]
    assert rules[0] == "AISEC-INS-001"
    assert {"AISEC-BKD-004", "AISEC-AUD-001", "AISEC-AUD-002", "AISEC-INS-003"} <= set(rules)
    metrics = {m["id"] for f in report["findings"] for m in f["metrics"]}
    assert {"flagged", "suspected_target", "shortcut_class"} <= metrics
    assert report["subject"]["target_kind"] == "TorchTarget" and report["subject"]["access"] == "white_box"


# --- from Python, and in a plan --------------------------------------------------------------------------------


def test_aisec_inspect_adds_the_inspection_probe(digits: Split) -> None:
    x, y = digits.test.x[:100], digits.test.y[:100]
    result = aisec.inspect(
        build_model(digits_cnn, 0), x, y, plan={"probes": {"inspection": NO_BEHAVIOUR_KEYS}}
    )
    rules = {f.rule_id for f in result.findings}
    assert (
        "AISEC-INS-003" in rules and "AISEC-INS-001" not in rules
    )  # the probe ran; there is no file to scan
    with pytest.raises(PlanError, match="probes.inspection.public_key: aisec.inspect checks no file"):
        aisec.inspect(
            build_model(digits_cnn, 0), x, y, plan={"probes": {"inspection": {"public_key": "k.pem"}}}
        )


def test_aisec_inspect_file_gates_the_file(work: Path, digits: Split, tmp_path: Path) -> None:
    x, y = digits.test.x[:100], digits.test.y[:100]
    marker = tmp_path / "PWNED"
    refused = aisec.inspect_file(evil_pickle(tmp_path / "model.pkl", marker), x, y)
    assert not refused.passed and not marker.exists()
    assert refused.finding("AISEC-INS-001").severity is Severity.CRITICAL
    assert refused.assessment.subject.target_kind == "not loaded"

    loaded = aisec.inspect_file(work / "cnn.pt", x, y, factory=digits_cnn, inspection=NO_BEHAVIOUR_KEYS)
    assert loaded.findings[0].rule_id == "AISEC-INS-001" and loaded.findings[0].severity is Severity.INFO
    assert loaded.assessment.subject.target_kind == "TorchTarget"


def test_a_plan_with_probes_inspection_never_loads_a_malicious_model(work: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil_pickle(tmp_path / "evil.pt", marker)
    plan = {
        "name": "inspect a download",
        "target": {
            "kind": "torch",
            "factory": FACTORY,
            "path": "evil.pt",
            "input": {"shape": [1, 8, 8], "num_classes": 10},
        },
        "data": {"path": str(work / "clean.npz")},
        "probes": {"inspection": {}},
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "out"
    result = runner.invoke(app, ["assess", str(tmp_path / "plan.yaml"), "--output", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    assert not marker.exists()
    report = report_of(out)
    assert [f["rule_id"] for f in report["findings"]] == ["AISEC-INS-001"]
    assert report["subject"]["target_kind"] == "not loaded" and report["subject"]["input_shape"] == [1, 8, 8]
    assert report["plan_sha256"]

    # A clean model through the same plan: loaded, the file finding first.
    plan["target"]["path"] = str(work / "cnn.pt")
    plan["probes"]["inspection"] = NO_BEHAVIOUR_KEYS
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "out-clean"
    result = runner.invoke(app, ["assess", str(tmp_path / "plan.yaml"), "--output", str(out), "--quiet"])
    report = report_of(out)
    assert_exit_follows_findings(result, report)
    assert (
        report["findings"][0]["rule_id"] == "AISEC-INS-001"
        and report["subject"]["target_kind"] == "TorchTarget"
    )
