"""The training-time probes train their models as jobs of the assessment's task runner: a pool of processes gives
the same findings as training them one after another here, and a rerun on the same task cache reads every model
back, also after an interruption part way, when it trains exactly the models that had not finished."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from aisec.assessment.plan import (
    BackdoorProbeSection,
    DefencesSection,
    GradientShapingSection,
    PoisoningProbeSection,
    ProbesSection,
)
from aisec.assessment.probe import Training
from aisec.assessment.probes.retraining import Retraining, retrain_all
from aisec.assessment.runner import run_assessment
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor
from aisec.core.seeding import build_model
from aisec.core.tasks import TaskCache, TaskRunner
from aisec.core.training import fit
from aisec.data.dataset import LabelledData
from aisec.defend.data_quality.gradient_shaping import fit_with_gradient_shaping
from aisec.demo.models import digits_cnn
from aisec.targets.base import InputSpec
from aisec.targets.torch_target import TorchTarget

pytestmark = pytest.mark.training

RECIPE = functools.partial(fit, epochs=3)
SEED = 3
BACKDOOR = BackdoorProbeSection(
    triggers=("patch",), rates=(0.1,), repair=("retrain",), strip=False, neural_cleanse=False
)
POISONING_JOBS = 3  # the clean and the poisoned model (first batch), the repair (second batch)


@pytest.fixture(scope="module")
def training(digits) -> Training:
    data = LabelledData(digits.train.x[:200], digits.train.y[:200], "digits (200 samples)")
    return Training(data, digits_cnn, RECIPE)


def _poisoning(digits, training: Training, tasks: TaskRunner) -> Any:
    # the probe retrains from the factory: of the target it reads only the input spec
    return run_assessment(
        TorchTarget(digits_cnn(), InputSpec((1, 8, 8), 10)),
        digits.test,
        ProbesSection(poisoning=PoisoningProbeSection(attacks=("random_flip",), rates=(0.1,), audit=False)),
        training=training,
        seed=SEED,
        tasks=tasks,
    )


def _figures(assessment: Any) -> list[tuple]:
    """Every finding's metrics and tables, without the columns that report time spent."""
    figures = []
    for finding in assessment.findings:
        tables = []
        for table in finding.tables:
            kept = [i for i, column in enumerate(table.columns) if column != "cost"]
            tables.append((table.title, [tuple(row[i] for i in kept) for row in table.rows]))
        figures.append((finding.rule_id, [(m.id, m.value) for m in finding.metrics], tables))
    return figures


@pytest.fixture(scope="module")
def poisoning_figures(digits, training: Training) -> list[tuple]:
    """The poisoning probe's figures with every model trained here, one after another, nothing cached."""
    return _figures(_poisoning(digits, training, TaskRunner(InProcessExecutor())))


def test_poisoning_probe_gives_the_same_findings_on_a_pool_and_as_before(
    digits, training: Training, poisoning_figures: list[tuple]
) -> None:
    tasks = TaskRunner(LocalProcessExecutor(2))
    assert _figures(_poisoning(digits, training, tasks)) == poisoning_figures
    assert (tasks.executed, tasks.reused) == (POISONING_JOBS, 0)
    # the clean model is the one the plan's recipe trains from the seeded factory, as it was before the runner
    clean = RECIPE(build_model(digits_cnn, SEED), training.data, seed=SEED).eval()
    with torch.no_grad():
        expected = float((clean(digits.test.x).argmax(1) == digits.test.y).float().mean())
    (flips, *_) = poisoning_figures
    assert dict(flips[1])["clean_accuracy"] == expected


def test_backdoor_probe_gives_the_same_findings_on_a_pool(digits, training: Training) -> None:
    """With gradient shaping: its model trains in a worker too."""

    def run(tasks: TaskRunner) -> list[tuple]:
        return _figures(
            run_assessment(
                TorchTarget(digits_cnn(), InputSpec((1, 8, 8), 10)),
                digits.test,
                ProbesSection(backdoor=BACKDOOR),
                training=training,
                defences=DefencesSection(gradient_shaping=GradientShapingSection()),
                seed=SEED,
                tasks=tasks,
            )
        )

    pool = TaskRunner(LocalProcessExecutor(2))
    assert run(pool) == run(TaskRunner(InProcessExecutor()))
    assert pool.executed == 4  # the clean and the backdoored model, then the repair and the shaped model


def test_a_rerun_on_the_same_cache_reads_every_model_back(
    digits, training: Training, poisoning_figures: list[tuple], tmp_path: Path
) -> None:
    first = TaskRunner(cache=TaskCache(tmp_path))
    assert _figures(_poisoning(digits, training, first)) == poisoning_figures
    assert (first.executed, first.reused) == (POISONING_JOBS, 0)
    again = TaskRunner(cache=TaskCache(tmp_path))
    assert _figures(_poisoning(digits, training, again)) == poisoning_figures
    assert (again.executed, again.reused) == (0, POISONING_JOBS)


class _Interrupted(InProcessExecutor):
    """Trains in this process and is interrupted (as by Ctrl-C) after `after` results, over all its batches."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.results = after, 0

    def map(self, fn, jobs, *, on_result=None):
        def counting(i: int, result: Any) -> None:
            assert on_result is not None
            on_result(i, result)
            self.results += 1
            if self.results == self.after:
                raise KeyboardInterrupt

        return super().map(fn, jobs, on_result=counting)


def test_an_interrupted_run_resumes_with_the_models_that_had_not_finished(
    digits, training: Training, poisoning_figures: list[tuple], tmp_path: Path
) -> None:
    finished = 1  # the clean model: the rerun trains the poisoned model (first batch) and the repair (second)
    interrupted = TaskRunner(_Interrupted(after=finished), cache=TaskCache(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        _poisoning(digits, training, interrupted)
    assert interrupted.executed == finished
    assert len(list(tmp_path.rglob("*.pt"))) == finished
    rerun = TaskRunner(cache=TaskCache(tmp_path))
    assert _figures(_poisoning(digits, training, rerun)) == poisoning_figures
    assert (rerun.executed, rerun.reused) == (POISONING_JOBS - finished, finished)


def _normalised_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def test_a_gradient_shaped_model_with_batch_norm_comes_back_as_gradient_shaping_trains_it(digits) -> None:
    """Private training replaces BatchNorm by GroupNorm: the model read back has the replaced layers and the
    weights that gradient shaping gives the seeded factory's model."""
    data = LabelledData(digits.train.x[:200], digits.train.y[:200])
    shaping = GradientShapingSection()
    training = Training(data, _normalised_mlp, RECIPE)
    model = retrain_all(TaskRunner(), training, {"shaped": Retraining(data, SEED, shaping)}, what="shaping")[
        "shaped"
    ]
    assert isinstance(model[2], nn.GroupNorm)
    expected = fit_with_gradient_shaping(
        build_model(_normalised_mlp, SEED), data, seed=SEED, **shaping.model_dump()
    ).state_dict()
    assert expected.keys() == model.state_dict().keys()
    assert all(torch.equal(expected[name], value) for name, value in model.state_dict().items())
