"""An assessment as an MLflow run: parameters, metrics under stable names, tags and the reports as artefacts,
read back with MLflow's own client from a SQLite store; the errors; no telemetry."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from aisec.assessment.finding import (  # noqa: E402
    Assessment,
    Estimate,
    Finding,
    Metric,
    PolicyCheck,
    Provenance,
    SubjectInfo,
)
from aisec.assessment.plan import Plan, validate_plan  # noqa: E402
from aisec.core.attack_class import AttackClass  # noqa: E402
from aisec.core.errors import BadInputError  # noqa: E402
from aisec.core.severity import Severity  # noqa: E402
from aisec.report import FORMAT_FILES, write_reports  # noqa: E402
from aisec.report.mlflow_run import MAX_KEY, MAX_PARAM_VALUE, TELEMETRY_SWITCH, log_assessment  # noqa: E402

PROVENANCE = Provenance("0.1.0", 7, 200, "a" * 64, "b" * 64, {"norm": "linf"})
REPORTS = {name for files in FORMAT_FILES.values() for name in files}  # every file write_reports writes


def _shortcut(flagged: bool, share: float) -> Finding:
    return Finding(
        rule_id="AISEC-INS-003",
        title="Shortcut check",
        attack_class=AttackClass.BACKDOOR,
        severity=Severity.MEDIUM if flagged else Severity.INFO,
        message="One region decides a class." if flagged else "No shortcut.",
        recommendation="Check the data's sources.",
        provenance=PROVENANCE,
        metrics=(
            Metric("flagged", flagged, id="flagged"),
            Metric("share of the importance", share, id="importance_share"),
            Metric("class", None, id="class"),
        ),
    )


def make_assessment() -> Assessment:
    evasion = Finding(
        rule_id="AISEC-EVA-001",
        title="Robust accuracy under evasion",
        attack_class=AttackClass.EVASION,
        severity=Severity.HIGH,
        message="PGD lowers accuracy.",
        recommendation="Train adversarially.",
        provenance=PROVENANCE,
        metrics=(
            Metric("clean accuracy", Estimate(0.97, 0.95, 0.98, 200), id="clean_accuracy"),
            Metric("robust accuracy at 0.05", Estimate(0.61, 0.54, 0.67, 200), id="robust_accuracy@0.05"),
            Metric("median queries", 35.0, "queries", id="median_queries_to_success"),
            Metric("median minimal perturbation", float("nan"), id="median_minimal_perturbation"),
        ),
        policy=(PolicyCheck("robust_accuracy >= 0.7", 0.7, 0.61, False),),
    )
    subject = SubjectInfo(
        "TorchTarget", "white_box", (1, 8, 8), 10, "model.pt", "a" * 64, "digits", 200, "b" * 64
    )
    return Assessment(
        name="nightly",
        tool_version="0.1.0",
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=12.5,
        subject=subject,
        threat_model={"knowledge": "white_box", "norm": "linf", "budgets": [0.05, 0.1], "query_budget": 5000},
        findings=(evasion, _shortcut(True, 0.4), _shortcut(False, 0.1)),
        plan_sha256="c" * 64,
    )


METRICS = {
    "findings": 3.0,
    "severity.info": 1.0,
    "severity.low": 0.0,
    "severity.medium": 1.0,
    "severity.high": 1.0,
    "severity.critical": 0.0,
    "duration_s": 12.5,
    "AISEC-EVA-001.clean_accuracy": 0.97,
    "AISEC-EVA-001.clean_accuracy.lower": 0.95,
    "AISEC-EVA-001.clean_accuracy.upper": 0.98,
    "AISEC-EVA-001.robust_accuracy_at_0.05": 0.61,
    "AISEC-EVA-001.robust_accuracy_at_0.05.lower": 0.54,
    "AISEC-EVA-001.robust_accuracy_at_0.05.upper": 0.67,
    "AISEC-EVA-001.median_queries_to_success": 35.0,
    "AISEC-INS-003.flagged": 1.0,
    "AISEC-INS-003.importance_share": 0.4,
    "AISEC-INS-003_2.flagged": 0.0,
    "AISEC-INS-003_2.importance_share": 0.1,
}


@pytest.fixture(scope="module")
def plan() -> Plan:
    return validate_plan(
        {
            "target": {"kind": "torch"},
            "seed": 7,
            "threat_model": {"budgets": [0.05, 0.1]},
            "probes": {"evasion": {"minimal_perturbation": False}, "inspection": {"samples": 100}},
            "executor": {"kind": "pool", "workers": 2},
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the module: MLflow migrates its schema at first use (seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_reports(make_assessment(), tmp_path_factory.mktemp("reports") / "out")


def test_a_run_holds_the_parameters_metrics_tags_and_reports(
    store: str, plan: Plan, reports: dict[str, Path], tmp_path: Path
) -> None:
    run_id = log_assessment(make_assessment(), reports, plan, uri=store, experiment="aisec")
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "aisec"
    assert run.info.start_time == 1735689600000 and run.info.end_time == 1735689600000 + 12500
    assert run.data.params == {
        "seed": "7",
        "threat_model.knowledge": "white_box",
        "threat_model.norm": "linf",
        "threat_model.budgets": "[0.05, 0.1]",
        "threat_model.query_budget": "5000",
        "probes": "evasion,inspection",
        "probes.evasion.minimal_perturbation": "false",
        "probes.evasion.masking_checks": "true",
        "probes.evasion.examples": "6",
        "probes.evasion.batch_size": "1000",
        "probes.inspection.backdoor_scan": "true",
        "probes.inspection.shortcuts": "true",
        "probes.inspection.explanations": '["integrated_gradients"]',
        "probes.inspection.samples": "100",
        "executor.kind": "pool",
        "executor.threads": "1",
        "aisec.version": "0.1.0",
        "model.sha256": "a" * 64,
        "data.sha256": "b" * 64,
    }
    assert run.data.metrics == METRICS
    assert {
        "mlflow.runName": "nightly",
        "aisec.verdict": "failed",
        "aisec.rules": "AISEC-EVA-001,AISEC-INS-003",
        "aisec.highest_severity": "high",
        "aisec.version": "0.1.0",
        "aisec.plan_sha256": "c" * 64,
    }.items() <= run.data.tags.items()
    logged = {a.path for a in client.list_artifacts(run_id, "reports")}
    assert logged == {f"reports/{name}" for name in REPORTS}
    copy = Path(client.download_artifacts(run_id, "reports/report.json", str(tmp_path)))
    assert copy.read_bytes() == reports["json"].read_bytes()
    # a new experiment in a SQLite store keeps its artefacts beside the database, not in the working directory
    assert run.info.artifact_uri.startswith(Path(store.removeprefix("sqlite:///")).parent.as_uri())


def test_the_same_assessment_twice_gives_two_runs_with_the_same_names(
    store: str, plan: Plan, reports: dict[str, Path]
) -> None:
    client = MlflowClient(tracking_uri=store)
    first, second = (
        log_assessment(make_assessment(), reports, plan, uri=store, experiment="twice") for _ in range(2)
    )
    assert first != second
    runs = [client.get_run(run_id).data for run_id in (first, second)]
    assert runs[0].metrics == runs[1].metrics == METRICS
    assert runs[0].params == runs[1].params
    experiment = client.get_experiment_by_name("twice")
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_without_a_plan_the_seed_comes_from_the_findings(store: str, reports: dict[str, Path]) -> None:
    run_id = log_assessment(make_assessment(), reports, None, uri=store, experiment="no plan")
    params = MlflowClient(tracking_uri=store).get_run(run_id).data.params
    assert params["seed"] == "7" and params["threat_model.budgets"] == "[0.05, 0.1]"
    assert not any(key.startswith(("probes", "executor")) for key in params)


def test_long_and_odd_names_and_values_fit_mlflow(store: str) -> None:
    odd = Finding(
        rule_id="AISEC-EVA-001",
        title="t",
        attack_class=AttackClass.EVASION,
        severity=Severity.LOW,
        message="m",
        recommendation="r",
        provenance=PROVENANCE,
        metrics=(
            Metric("a", 1.0, id="ratio:a/b (%)"),
            Metric("b", 2.0, id="ratio_a_b ___"),  # normalised alike: the second gets a suffix
            Metric("c", float("inf"), id="unbounded"),
        ),
    )
    threat_model = {"note": "x" * 7000, "k" * 300: 1, "k" * 299: 2}
    assessment = dataclasses.replace(make_assessment(), findings=(odd,), threat_model=threat_model)
    run_id = log_assessment(assessment, {}, None, uri=store, experiment="odd")
    data = MlflowClient(tracking_uri=store).get_run(run_id).data
    assert (
        data.metrics["AISEC-EVA-001.ratio_a_b ___"] == 1.0
        and data.metrics["AISEC-EVA-001.ratio_a_b ____2"] == 2.0
    )
    assert not any(
        "unbounded" in key for key in data.metrics
    )  # a non-finite figure is missing, as in the JSON
    note = data.params["threat_model.note"]
    assert len(note) == MAX_PARAM_VALUE and note.endswith("[truncated]")
    long_keys = [key for key in data.params if key.startswith("threat_model.kkk")]
    assert len(long_keys) == 2 and all(len(key) == MAX_KEY for key in long_keys)
    assert sorted(data.params[key] for key in long_keys) == ["1", "2"]


def test_without_mlflow_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, reports: dict[str, Path], tmp_path: Path
) -> None:
    # mlflow is imported already: its submodules, cached, must be hidden too
    for name in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(BadInputError, match=re.escape("pip install 'aisec[mlflow]'")):
        log_assessment(make_assessment(), reports, None, uri=uri)
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_uris_experiments_and_reports_are_refused_before_a_run(
    store: str, reports: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(BadInputError, match="'nowhere://store'"):
        log_assessment(make_assessment(), reports, None, uri="nowhere://store")
    with pytest.raises(BadInputError, match="empty"):
        log_assessment(make_assessment(), reports, None, uri=" ")
    client = MlflowClient(tracking_uri=store)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    with pytest.raises(BadInputError, match="'gone'.* deleted"):
        log_assessment(make_assessment(), reports, None, uri=store, experiment="gone")
    missing = {**reports, "json": tmp_path / "missing.json"}
    with pytest.raises(BadInputError, match="missing.json"):
        log_assessment(make_assessment(), missing, None, uri=store, experiment="missing")
    assert client.get_experiment_by_name("missing") is None
    assert not client.search_runs([gone])


def test_a_failure_part_way_marks_the_run_failed(
    store: str, reports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: MlflowClient, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifact", broken)
    with pytest.raises(BadInputError, match="logging failed part way .*disk full.*FAILED") as failed:
        log_assessment(make_assessment(), reports, None, uri=store, experiment="broken")
    run_id = re.search(r"MLflow run (\w+)", str(failed.value)).group(1)
    run = MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics == METRICS  # what was logged stays


def test_no_telemetry_is_recorded_while_logging(
    store: str, reports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow records a usage event at each tracked call unless told not to (pytest itself is one of the
    signals it reads, so the signal is turned off here, and a stand-in client collects what would be sent)."""
    import mlflow.telemetry.track
    import mlflow.telemetry.utils

    class Collector:
        config = None

        def __init__(self) -> None:
            self.records: list[object] = []

        def add_record(self, record: object) -> None:
            self.records.append(record)

    collector = Collector()
    monkeypatch.setattr(mlflow.telemetry.utils, "_IS_IN_CI_ENV_OR_TESTING", False)
    monkeypatch.setattr(mlflow.telemetry.track, "get_telemetry_client", lambda: collector)
    monkeypatch.delenv(TELEMETRY_SWITCH, raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    MlflowClient(tracking_uri=store).create_experiment("control")
    assert len(collector.records) == 1  # the stand-in sees what MLflow would send
    log_assessment(make_assessment(), reports, None, uri=store, experiment="quiet")
    assert len(collector.records) == 1
    assert TELEMETRY_SWITCH not in os.environ  # the switch is put back as it was


TELEMETRY_PROBE = """
import json, sys
from aisec.assessment.finding import Assessment, SubjectInfo
from aisec.report.mlflow_run import log_assessment
subject = SubjectInfo("TorchTarget", "white_box", (4,), 2, None, None, "d", 10, "b" * 64)
log_assessment(Assessment("a", "0.1.0", "2025-01-01T00:00:00+00:00", 1.0, subject, {}, ()), {}, None, uri=sys.argv[1])
from mlflow.telemetry import get_telemetry_client
print(json.dumps({"client": get_telemetry_client() is not None}))
"""
CONTROL = """
import json
from mlflow.telemetry import get_telemetry_client
print(json.dumps({"client": get_telemetry_client() is not None}))
"""
CI_SIGNALS = (
    "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "TF_BUILD",
    "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION",
    "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", TELEMETRY_SWITCH, "DO_NOT_TRACK",
)  # fmt: skip


def test_importing_mlflow_through_aisec_starts_no_telemetry_client(store: str, tmp_path: Path) -> None:
    """In a process that is not a test or CI job, `import mlflow` starts MLflow's telemetry client (and writes an
    installation id); through log_assessment it starts none and writes nothing."""
    env = {k: v for k, v in os.environ.items() if k not in CI_SIGNALS}
    env |= {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}

    def run(script: str, *args: str) -> dict[str, bool]:
        done = subprocess.run(
            [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert run(TELEMETRY_PROBE, store) == {"client": False}
    assert not (tmp_path / "config" / "mlflow").exists()
    assert run(CONTROL) == {"client": True}  # the environment really is one where MLflow would report


def test_an_api_result_logs_itself(store: str, digits) -> None:
    from sklearn.linear_model import LogisticRegression

    import aisec

    x, y = digits.train.x.flatten(1).numpy(), digits.train.y.numpy()
    model = LogisticRegression(max_iter=300).fit(x, y)
    plan = {
        "seed": 3,
        "threat_model": {"budgets": [0.1]},
        "probes": {"evasion": {"minimal_perturbation": False, "masking_checks": False, "examples": 0}},
    }
    result = aisec.assess(model, digits.test.x[:60].flatten(1).numpy(), digits.test.y[:60].numpy(), plan=plan)
    run_id = result.log_to_mlflow(store, experiment="api")
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    robust = result.finding("AISEC-EVA-001").metric("robust_accuracy@0.1").value
    assert isinstance(robust, Estimate)
    assert run.data.metrics["AISEC-EVA-001.robust_accuracy_at_0.1"] == robust.value
    assert run.data.params["seed"] == "3" and run.data.params["threat_model.budgets"] == "[0.1]"
    assert run.data.tags["aisec.verdict"] == ("passed" if result.passed else "failed")
    assert {a.path for a in client.list_artifacts(run_id, "reports")} == {
        f"reports/{name}" for name in REPORTS
    }
