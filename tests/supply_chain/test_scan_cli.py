"""`aisec scan/keygen/sign/verify/bom` end to end, the scan's JSON and SARIF output, and `aisec.load_model`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from aisec.cli import app
from aisec.core.errors import ModelLoadError
from aisec.defend.supply_chain.loading import load_model

SCHEMA = Path(__file__).parents[2] / "src/aisec/report/schema/scan.schema.json"
runner = CliRunner()


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.pkl").write_bytes(pickle.dumps({"w": np.arange(4.0)}, protocol=4))
    np.save(folder / "bias.npy", np.zeros(3))
    (folder / "README.md").write_text("# a model\n")
    return folder


def test_clean_folder_exits_0_and_json_validates(model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["scan", str(model_dir), "--format", "json", "--sarif", str(tmp_path / "s.sarif")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["verdict"] == "safe" and report["summary"]["safe"] == 3
    sarif = json.loads((tmp_path / "s.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []


def test_malicious_file_exits_1_with_located_findings(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "evil.pt").write_bytes(pickle.dumps(_System(), protocol=2))
    result = runner.invoke(app, ["scan", str(model_dir), "--json", str(tmp_path / "r.json"), "-f", "sarif"])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    evil = next(f for f in report["files"] if f["path"].endswith("evil.pt"))
    assert evil["verdict"] == "unsafe" and evil["findings"][0]["severity"] == "critical"
    sarif = json.loads(result.stdout)
    (finding,) = sarif["runs"][0]["results"]
    assert finding["level"] == "error" and finding["ruleId"] == "AISEC-SC-201"
    assert sarif["runs"][0]["tool"]["driver"]["rules"][finding["ruleIndex"]]["id"] == "AISEC-SC-201"


def test_fail_on_threshold(tmp_path: Path) -> None:
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(Path, protocol=4) + b"tail")  # trailing data: a medium finding
    assert runner.invoke(app, ["scan", str(path)]).exit_code == 1
    assert runner.invoke(app, ["scan", str(path), "--fail-on", "high"]).exit_code == 0
    assert runner.invoke(app, ["scan", str(path), "--fail-on", "medium"]).exit_code == 1


def test_usage_and_io_errors_exit_2(tmp_path: Path) -> None:
    assert runner.invoke(app, ["scan", str(tmp_path / "missing.pt")]).exit_code == 2
    assert runner.invoke(app, ["scan", str(tmp_path), "--fail-on", "severe"]).exit_code == 2
    assert runner.invoke(app, ["scan", str(tmp_path), "--format", "xml"]).exit_code == 2


def test_sign_verify_and_bom(model_dir: Path, tmp_path: Path) -> None:
    key, pub = tmp_path / "key.pem", tmp_path / "key.pub"
    assert runner.invoke(app, ["keygen", str(key), str(pub)]).exit_code == 0
    assert runner.invoke(app, ["keygen", str(key), str(pub)]).exit_code == 2  # never overwrites a key
    assert runner.invoke(app, ["sign", str(model_dir), "--key", str(key)]).exit_code == 0
    assert runner.invoke(app, ["verify", str(model_dir), "--key", str(pub)]).exit_code == 0
    (model_dir / "README.md").write_text("# changed\n")
    (model_dir / "extra.bin").write_bytes(b"\0")
    result = runner.invoke(app, ["verify", str(model_dir), "--key", str(pub)])
    assert result.exit_code == 1
    assert "README.md" in result.output and "extra.bin" in result.output
    bom_path = tmp_path / "bom.json"
    digest = "ab" * 32
    result = runner.invoke(app, ["bom", str(model_dir), "-o", str(bom_path), "--dataset", f"digits={digest}"])
    assert result.exit_code == 0, result.output
    bom = json.loads(bom_path.read_text())
    assert bom["specVersion"] == "1.6"
    assert any(c.get("type") == "data" and c["name"] == "digits" for c in bom["components"])
    assert runner.invoke(app, ["bom", str(model_dir), "--dataset", "digits=xyz"]).exit_code == 2


def test_load_model_refuses_what_the_scan_flags(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_System(), protocol=4))
    with pytest.raises(ModelLoadError, match="AISEC-SC-201"):
        load_model(evil)


def test_load_model_loads_safe_formats_safely(tmp_path: Path) -> None:
    import joblib
    import torch
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, tmp_path / "m.joblib", compress="zlib")
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    torch.save({"w": torch.arange(3.0)}, tmp_path / "w.pt")
    np.savez(tmp_path / "a.npz", x=np.arange(2))
    for name in ("m.joblib", "m.pkl"):
        assert np.array_equal(load_model(tmp_path / name).predict(x), model.predict(x))
    assert torch.equal(load_model(tmp_path / "w.pt")["w"], torch.arange(3.0))
    assert load_model(tmp_path / "a.npz")["x"].tolist() == [0, 1]


def test_scanning_imports_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"w": np.arange(3)}))
    code = (
        "import sys; from aisec.cli import app; from typer.testing import CliRunner; "
        f"r = CliRunner().invoke(app, ['scan', {str(path)!r}, '-q']); "
        "assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'sklearn', 'onnxruntime', 'model_signing') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("kind", ["logistic-binary", "gradient-boosting-multiclass"])
def test_untrusted_sklearn_target_loads_through_the_scanner(kind: str, tmp_path: Path) -> None:
    """An untrusted sklearn target is loaded through the scanner and answers as the estimator itself does:
    its labels are the estimator's `predict` (classes 3, 5, 7 map to indices), its probabilities its
    `predict_proba`. Logistic regression becomes a white-box torch model, gradient boosting (a Cython loss
    object in its pickle) a black box with scores."""
    import joblib
    import torch
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from aisec.assessment.plan import TargetSection
    from aisec.assessment.subject import load_target
    from aisec.targets.base import Access

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    n_classes = 2 if kind == "logistic-binary" else 3
    y = np.array([3, 5, 7])[np.argmax(x[:, :n_classes] + 0.3 * rng.normal(size=(60, n_classes)), axis=1)]
    estimator = (
        LogisticRegression() if kind == "logistic-binary" else GradientBoostingClassifier(n_estimators=10)
    ).fit(x, y)
    joblib.dump(estimator, tmp_path / "m.joblib", compress=3)
    section = TargetSection(
        kind="sklearn", path=tmp_path / "m.joblib", input={"shape": [3], "num_classes": n_classes}
    )
    target, _ = load_target(section)
    inputs = torch.from_numpy(x)

    labels = target.labels(inputs).numpy()
    np.testing.assert_array_equal(np.asarray(target.classes)[labels], estimator.predict(x))
    assert len(set(labels.tolist())) == n_classes  # the comparison covers every class
    assert target.access.allows(Access.SCORES)
    np.testing.assert_allclose(target.probabilities(inputs).numpy(), estimator.predict_proba(x), atol=1e-5)


def test_file_names_that_look_like_markup_print_literally(tmp_path: Path) -> None:
    """A file name is attacker-chosen: "[bold]" or "[/x]" in it must print as written, never as rich markup
    (which once dropped the text, or crashed the scan), through the fast path and through typer alike."""
    (tmp_path / "a[red]b.pkl").write_bytes(pickle.dumps({"w": 1}))
    (tmp_path / "e[bold]x[u].pkl").write_bytes(pickle.dumps(_System()))
    fast = subprocess.run([sys.executable, "-m", "aisec", "scan", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    typer_path = runner.invoke(app, ["scan", str(tmp_path)], env={"COLUMNS": "300"})
    for code, text in (
        (fast.returncode, fast.stdout + fast.stderr),
        (typer_path.exit_code, typer_path.output),
    ):
        assert code == 1, text
        assert "a[red]b.pkl" in text and "e[bold]x[u].pkl" in text
        assert "Traceback" not in text


def test_no_module_on_the_scanning_path_imports_torch() -> None:
    """Every module of defend/supply_chain/ but behaviour/ (which runs models), and the scan's writers and
    command, imported in a fresh interpreter: none pulls in torch, scikit-learn or onnxruntime."""
    import aisec.defend.supply_chain as supply_chain

    root = Path(supply_chain.__file__).parent
    modules = sorted(
        "aisec.defend.supply_chain." + ".".join(path.relative_to(root).with_suffix("").parts)
        for path in root.rglob("*.py")
        if "behaviour" not in path.parts and path.name != "__init__.py"
    )
    assert "aisec.defend.supply_chain.formats.pickle_vm" in modules and len(modules) > 15
    code = (
        "import importlib, sys\n"
        f"for name in {modules + ['aisec.report.scan', 'aisec.cli.scan']!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
