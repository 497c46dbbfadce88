"""`aisec assess` against a guarded endpoint with the bare model as `baseline`: the same probes run against
both, the probe the guard stopped is a finding of its own, and the report sets the figures side by side."""

from __future__ import annotations

import json

import pytest
import yaml
from guard_setup import serving, write_guard
from typer.testing import CliRunner

from aisec.cli import app as cli_app
from aisec.guard.app import create_app
from aisec.guard.config import load_config
from aisec.guard.service import build_guard

pytestmark = pytest.mark.training  # the session's digits CNN answers; the probe trains surrogates


def test_assess_report_sets_bare_and_guarded_side_by_side(tmp_path, digits_model, digits, monkeypatch):
    monitor = {"reference": "natural.npz", "coverage": {}, "action": "block", "escalate": False}
    path, tokens = write_guard(tmp_path, digits_model, digits, monitor=monitor)
    guard = build_guard(load_config(path))
    with serving(create_app(guard)) as url:
        monkeypatch.setenv("AISEC_GUARD_KEY", tokens["default"])
        spec = {"shape": [1, 8, 8], "num_classes": 10, "lower": 0, "upper": 1}
        plan = {
            "name": "guarded digits",
            "target": {
                "kind": "http",
                "url": f"{url}/v1/predict",
                "headers": {"Authorization": "Bearer ${AISEC_GUARD_KEY}"},
                "input": spec,
                "batch_size": 50,
            },
            "baseline": {
                "kind": "torch",
                "path": "model.pt",
                "factory": "aisec.demo.models:digits_cnn",
                "input": spec,
            },
            "data": {"builtin": "digits", "samples": 200},
            "threat_model": {"knowledge": "scores", "query_budget": 1000},
            "probes": {"extraction": {"query_budget": 800, "strategies": ["synthetic"], "transfer": False}},
        }
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
        result = CliRunner().invoke(
            cli_app, ["assess", str(tmp_path / "plan.yaml"), "--output", str(tmp_path / "out")]
        )
    assert result.exit_code in (0, 1), result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    findings = {f["rule_id"]: f for f in report["findings"]}
    stopped = findings["AISEC-GRD-001"]
    answered = next(m["value"] for m in stopped["metrics"] if m["id"] == "queries_answered")
    assert (
        answered < 800
    )  # uniform queries lie off the digits' manifold: the coverage monitor blocked the key
    table = findings["AISEC-GRD-002"]["tables"][0]
    extraction_rows = [row for row in table["rows"] if "extraction" in row[0].lower()]
    assert extraction_rows and all(str(row[3]).startswith("stopped after") for row in extraction_rows)
    assert all(isinstance(row[2], float) for row in extraction_rows)  # the bare model's figure is there
    assert "AISEC-GRD-002" in (tmp_path / "out" / "report.html").read_text()
