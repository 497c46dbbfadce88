"""The Ray executor on a local Ray (2 CPUs, no dashboard, a small object store, usage statistics off), started
once for this module: job order, results as they finish, the bound on jobs in flight, errors, and LiRA's and
RMIA's scores bit-identical to those of shadow models trained in this process and in a process pool. Skipped
where Ray is not installed (it is the optional extra `aisec[ray]`)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from aisec.attacks.inference.membership import ShadowTrainer, lira, rmia, train_shadows  # noqa: E402
from aisec.core.errors import BadInputError  # noqa: E402
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor  # noqa: E402
from aisec.core.ray_executor import RayExecutor  # noqa: E402
from aisec.core.seeding import build_model  # noqa: E402
from aisec.core.tasks import TaskCache, TaskRunner  # noqa: E402
from aisec.core.training import fit  # noqa: E402
from aisec.data.builtin import load_builtin  # noqa: E402
from aisec.data.dataset import LabelledData  # noqa: E402
from aisec.demo.models import digits_cnn  # noqa: E402
from aisec.targets.base import InputSpec  # noqa: E402
from aisec.targets.torch_target import TorchTarget  # noqa: E402

SPEC = InputSpec((1, 8, 8), 10, 0.0, 1.0)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=96 * 2**20,
        log_to_driver=False,
        configure_logging=False,
    )
    # the test module's own job functions travel by value: Ray's workers do not have tests/ on their path
    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    yield
    ray.shutdown()


def sleepy(job: tuple[int, float]) -> tuple[int, float, float]:
    """Sleeps; its number and when it started and ended."""
    number, seconds = job
    start = time.time()
    time.sleep(seconds)
    return number, start, time.time()


def refuse(number: int) -> int:
    if number == 2:
        raise BadInputError("job 2 is refused")
    return number


def test_results_come_back_in_job_order_and_each_as_it_finishes() -> None:
    seen: list[int] = []
    jobs = [(0, 2.0), (1, 0.0), (2, 0.0), (3, 0.0)]
    results = RayExecutor().map(sleepy, jobs, on_result=lambda i, r: seen.append(i))
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert sorted(seen) == [0, 1, 2, 3] and seen[-1] == 0


def test_workers_bounds_the_jobs_in_flight() -> None:
    results = RayExecutor(workers=1).map(sleepy, [(i, 0.2) for i in range(4)])
    spans = sorted((start, end) for _, start, end in results)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_a_jobs_error_reaches_the_caller_as_its_own_type() -> None:
    with pytest.raises(BadInputError, match="job 2 is refused"):
        RayExecutor().map(refuse, [0, 1, 2, 3])


def test_jobs_in_flight_default_to_twice_the_cluster_and_gpu_jobs_need_a_gpu() -> None:
    assert RayExecutor()._slots() == 4  # 2 CPUs, one per job
    assert RayExecutor(cpus_per_task=2)._slots() == 2
    with pytest.raises(BadInputError, match="has no GPU: its jobs would wait for ever"):
        RayExecutor(gpus_per_task=0.25).map(refuse, [0])


def test_a_ray_the_caller_started_is_left_running() -> None:
    executor = RayExecutor(address="local")
    executor.map(refuse, [0])
    executor.close()
    assert ray.is_initialized()


@pytest.mark.training
def test_lira_and_rmia_scores_are_bit_identical_in_process_in_a_pool_and_on_ray(tmp_path: Path) -> None:
    split = load_builtin("digits", seed=0)
    victim_data = LabelledData(split.train.x[:60], split.train.y[:60])
    victim = TorchTarget(fit(build_model(digits_cnn, 1), victim_data, seed=1, epochs=5), SPEC)
    x = torch.cat([split.train.x[:30], split.test.x[:30]])
    y = torch.cat([split.train.y[:30], split.test.y[:30]])
    members = torch.arange(60) < 30
    population = LabelledData(split.test.x[30:90], split.test.y[30:90])
    trainer = ShadowTrainer(digits_cnn, functools.partial(fit, epochs=3))
    scores = {}
    for name, executor in (
        ("in process", InProcessExecutor()),
        ("pool", LocalProcessExecutor(2)),
        ("ray", RayExecutor(workers=2)),
    ):
        runner = TaskRunner(executor, cache=TaskCache(tmp_path / name))
        shadows = train_shadows(
            victim, x, y, trainer, population=population, n_shadows=4, seed=7, tasks=runner
        )
        scores[name] = (
            lira(victim, x, y, shadows, members=members).scores,
            rmia(victim, x, y, shadows, members=members).scores,
        )
        assert runner.executed == 4
    for name in ("pool", "ray"):
        assert torch.equal(scores[name][0], scores["in process"][0]), name
        assert torch.equal(scores[name][1], scores["in process"][1]), name
    resumed = TaskRunner(RayExecutor(), cache=TaskCache(tmp_path / "ray"))
    again = train_shadows(victim, x, y, trainer, population=population, n_shadows=4, seed=7, tasks=resumed)
    assert (resumed.executed, resumed.reused) == (0, 4)
    assert torch.equal(lira(victim, x, y, again, members=members).scores, scores["ray"][0])


@pytest.mark.training
def test_a_retraining_probe_gives_the_same_findings_on_ray(digits) -> None:
    """The poisoning probe's clean, poisoned and repaired models trained as Ray tasks: the same findings."""
    from aisec.assessment.plan import PoisoningProbeSection, ProbesSection
    from aisec.assessment.probe import Training
    from aisec.assessment.runner import run_assessment

    training = Training(
        LabelledData(digits.train.x[:200], digits.train.y[:200]), digits_cnn, functools.partial(fit, epochs=3)
    )
    probes = ProbesSection(
        poisoning=PoisoningProbeSection(attacks=("targeted_flip",), rates=(0.1,), audit=False)
    )

    def figures(tasks: TaskRunner) -> list:
        assessment = run_assessment(
            TorchTarget(digits_cnn(), SPEC), digits.test, probes, training=training, seed=4, tasks=tasks
        )
        return [
            (f.rule_id, [(m.id, m.value) for m in f.metrics], [t.rows for t in f.tables])
            for f in assessment.findings
        ]

    on_ray = TaskRunner(RayExecutor(workers=2))
    assert figures(on_ray) == figures(TaskRunner(InProcessExecutor()))
    assert on_ray.executed == 3
