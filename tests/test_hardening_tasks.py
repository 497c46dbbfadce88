"""The robustness comparison trains its controls' models as one batch of jobs of the assessment's task runner: a
pool of processes gives the same findings as training them here one after another, and a rerun on the same task
cache reads every model back, with the training time measured when it ran and the overfitting guard's report,
and trains none."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from aisec.assessment.finding import Assessment, Finding
from aisec.assessment.plan import (
    AdversarialTrainingSection,
    DefencesSection,
    EvasionProbeSection,
    NullLabellingSection,
    ProbesSection,
)
from aisec.assessment.probe import Training
from aisec.assessment.rules import HARDENED_MODELS
from aisec.assessment.runner import run_assessment
from aisec.assessment.threat_model import ThreatModel
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor
from aisec.core.seeding import build_model
from aisec.core.tasks import TaskCache, TaskRunner
from aisec.data.dataset import LabelledData
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training

SEED = 3
DEFENCES = DefencesSection(
    adversarial_training=(AdversarialTrainingSection(method="fast", eps=0.1, epochs=2),),
    null_labelling=NullLabellingSection(eps=0.1, epochs=2),
)
# fast AT and plain training at its settings (the cost's yardstick); NULL labelling's NULL, plain and substitute
JOBS = 5
TIMED = ("training time (x plain)", "latency (x undefended)")  # columns of time spent, which no run repeats


def _assess(digits, tasks: TaskRunner) -> Assessment:
    return run_assessment(
        TorchTarget(build_model(digits_cnn, 0), InputSpec((1, 8, 8), 10)),
        LabelledData(digits.test.x[:60], digits.test.y[:60], "digits test (60)"),
        ProbesSection(
            evasion=EvasionProbeSection(
                attacks=("apgd-ce",), minimal_perturbation=False, masking_checks=False, examples=0
            )
        ),
        threat_model=ThreatModel(budgets=(0.1,)),
        training=Training(
            LabelledData(digits.train.x[:400], digits.train.y[:400], "digits (400)"), digits_cnn
        ),
        defences=DEFENCES,
        seed=SEED,
        tasks=tasks,
    )


def _figures(assessment: Assessment) -> list[tuple[Any, ...]]:
    """Every finding's message, metrics, tables and saved models, without the figures of time spent."""
    figures = []
    for finding in assessment.findings:
        message = re.sub(r"\d+ s of training \([\d.]+x plain training\)", "(time)", finding.message)
        tables = []
        for table in finding.tables:
            kept = [i for i, column in enumerate(table.columns) if column not in TIMED]
            tables.append((table.title, [tuple(row[i] for i in kept) for row in table.rows]))
        metrics = [(m.id, m.value) for m in finding.metrics]
        models = [(m.file_name, m.sha256) for m in finding.models]
        figures.append((finding.rule_id, message, metrics, tables, models))
    return figures


def _hardened(assessment: Assessment) -> Finding:
    return next(f for f in assessment.findings if f.rule_id == HARDENED_MODELS.id)


@pytest.fixture(scope="module")
def cached(digits, tmp_path_factory: pytest.TempPathFactory) -> tuple[Assessment, Path]:
    """The comparison with every model trained here, one after another, kept in a task cache."""
    folder = tmp_path_factory.mktemp("tasks")
    tasks = TaskRunner(InProcessExecutor(), cache=TaskCache(folder))
    assessment = _assess(digits, tasks)
    assert (tasks.executed, tasks.reused) == (JOBS, 0)
    return assessment, folder


def test_a_pool_gives_the_same_findings_as_training_here(digits, cached: tuple[Assessment, Path]) -> None:
    tasks = TaskRunner(LocalProcessExecutor(2))
    assessment = _assess(digits, tasks)
    assert (tasks.executed, tasks.reused) == (JOBS, 0)
    assert _figures(assessment) == _figures(cached[0])
    note = "No sign of catastrophic overfitting"  # the guard's report, carried back from the worker
    assert note in _hardened(assessment).message


def test_a_rerun_on_the_same_cache_trains_nothing_and_reports_the_same(
    digits, cached: tuple[Assessment, Path]
) -> None:
    first, folder = cached
    tasks = TaskRunner(InProcessExecutor(), cache=TaskCache(folder))
    again = _assess(digits, tasks)
    assert (tasks.executed, tasks.reused) == (0, JOBS)
    assert _figures(again) == _figures(first)
    # training times are read back with the models: the cost column and the message repeat the first run's
    hardened, before = _hardened(again), _hardened(first)
    assert hardened.message == before.message
    assert hardened.tables[0].column("training time (x plain)") == before.tables[0].column(
        "training time (x plain)"
    )
    assert hardened.provenance.settings == before.provenance.settings
