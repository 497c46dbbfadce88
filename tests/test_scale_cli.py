"""`aisec assess` with its jobs on another executor and a run killed part way: the same plan and seed give the
same findings in process, in a process pool and on Ray, and a rerun after kill -9 reads back every job that
finished and runs only the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from aisec.core.seeding import build_model
from aisec.demo.models import digits_cnn

pytestmark = pytest.mark.training

SHADOWS = 16
JOBS_LINE = re.compile(r"jobs: (\d+) run on (\w+), (\d+) read back")


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A membership plan whose 16 shadow models are its only jobs (the victim's weights need not be trained)."""
    folder = tmp_path_factory.mktemp("plan")
    torch.save(build_model(digits_cnn, 0).state_dict(), folder / "model.pt")
    path = folder / "plan.yaml"
    path.write_text(
        yaml.safe_dump({
            "seed": 3,
            "target": {
                "kind": "torch", "factory": "aisec.demo.models:digits_cnn", "path": "model.pt",
                "input": {"shape": [1, 8, 8], "num_classes": 10},
            },
            "data": {"builtin": "digits", "split": "test", "samples": 200},
            "probes": {"membership": {"records": 60, "shadows": SHADOWS, "attacks": ["lira", "rmia"]}},
            "training": {
                "data": {"builtin": "digits", "split": "train", "samples": 300},
                "recipe": "aisec.core.training:fit", "recipe_args": {"epochs": 8},
            },
        })
    )  # fmt: skip
    return path


def assess(plan: Path, output: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aisec", "assess", str(plan), "-o", str(output), "-f", "json", "-q", *options],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(),
    )


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}


def findings(output: Path) -> list[dict]:
    return json.loads((output / "report.json").read_text())["findings"]


def jobs(result: subprocess.CompletedProcess[str]) -> tuple[int, str, int]:
    match = JOBS_LINE.search(result.stderr)  # the summary goes to standard error
    assert match, result.stderr
    return int(match[1]), match[2], int(match[3])


def test_the_same_plan_gives_the_same_findings_on_every_executor(plan: Path, tmp_path: Path) -> None:
    ran = {}
    for executor, options in (
        ("in_process", ()),
        ("pool", ("--workers", "2")),
        *((("ray", ("--workers", "2")),) if _has_ray() else ()),
    ):
        result = assess(plan, tmp_path / executor, "--executor", executor, *options)
        assert result.returncode in (0, 1), result.stderr
        assert jobs(result) == (SHADOWS, executor, 0)
        ran[executor] = findings(tmp_path / executor)
    for executor, found in ran.items():
        assert found == ran["in_process"], executor


def test_a_run_killed_part_way_resumes_without_rerunning_a_finished_job(plan: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    command = [sys.executable, "-m", "aisec", "assess", str(plan), "-o", str(output), "-f", "json", "-q"]
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache = output / "tasks"
    deadline = time.monotonic() + 240
    while len(list(cache.rglob("*.pt"))) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(cache.rglob("*.pt")))
    assert 4 <= finished < SHADOWS, "the run was not caught part way"
    assert not (output / "report.json").exists()

    resumed = assess(plan, output)
    assert resumed.returncode in (0, 1), resumed.stderr
    assert jobs(resumed) == (SHADOWS - finished, "in_process", finished)
    whole = assess(plan, tmp_path / "whole", "--no-cache")
    assert jobs(whole) == (SHADOWS, "in_process", 0)
    assert findings(output) == findings(tmp_path / "whole")
    assert not (tmp_path / "whole" / "tasks").exists()
    again = assess(plan, output)
    assert jobs(again) == (0, "in_process", SHADOWS)


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def test_mlflow_option_logs_the_run_and_its_reports(plan: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = assess(plan, tmp_path / "out", "--mlflow", uri, "-f", "json,html")
    assert result.returncode in (0, 1), result.stderr
    match = re.search(r"MLflow run (\w+) in experiment 'aisec'", result.stderr)
    assert match, result.stderr
    run = mlflow.tracking.MlflowClient(tracking_uri=uri).get_run(match[1])
    assert run.data.params["seed"] == "3" and run.data.params["probes"] == "membership"
    assert run.data.tags["aisec.rules"] == "AISEC-MIA-001"
    assert any(name.startswith("AISEC-MIA-001.") for name in run.data.metrics)
    artefacts = {
        a.path for a in mlflow.tracking.MlflowClient(tracking_uri=uri).list_artifacts(match[1], "reports")
    }
    assert {"reports/report.json", "reports/report.html"} <= artefacts


def test_the_example_runs(tmp_path: Path) -> None:
    """examples/scale_and_track.py, as docs/scale.md tells users to run it."""
    pytest.importorskip("mlflow")
    example = Path(__file__).parent.parent / "examples" / "scale_and_track.py"
    out = subprocess.run(
        [sys.executable, str(example), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_environment(),
    )
    assert out.returncode == 0, out.stderr
    assert f"16 jobs in {tmp_path / 'tasks'}" in out.stdout and "MLflow run" in out.stdout
