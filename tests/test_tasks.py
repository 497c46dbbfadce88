"""Executors and the task cache without training: job order, results as they finish, the thread setting, keys
that change with everything a job is made from, a cache that never trusts what it cannot read back, and a run
interrupted part way that keeps what finished."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from aisec.core.errors import BadInputError
from aisec.core.executor import InProcessExecutor, LocalProcessExecutor, make_executor, run_job
from aisec.core.tasks import TaskCache, TaskRunner, Unkeyable, fingerprint, task_key
from aisec.data.dataset import LabelledData


def square(x: int) -> int:
    return x * x


def sleepy(job: tuple[int, float]) -> int:
    """Sleeps, then returns the job's number: jobs given shorter sleeps finish first."""
    number, seconds = job
    time.sleep(seconds)
    return number


def threads(_: object) -> int:
    return torch.get_num_threads()


def affine(job: tuple[torch.Tensor, float]) -> torch.Tensor:
    x, scale = job
    return x * scale + 1


def test_in_process_executor_keeps_order_and_reports_each_result() -> None:
    seen: list[tuple[int, int]] = []
    results = InProcessExecutor().map(square, [3, 1, 2], on_result=lambda i, r: seen.append((i, r)))
    assert results == [9, 1, 4] and seen == [(0, 9), (1, 1), (2, 4)]


def test_pool_returns_results_in_job_order_and_each_as_it_finishes() -> None:
    jobs = [(0, 4.0), (1, 0.0), (2, 0.0), (3, 0.0)]
    seen: list[int] = []
    results = LocalProcessExecutor(2).map(sleepy, jobs, on_result=lambda i, r: seen.append(i))
    assert results == [0, 1, 2, 3]
    assert (
        sorted(seen) == [0, 1, 2, 3] and seen[-1] == 0
    )  # the slow first job finished last and was kept last


def worker_pid(_: object) -> int:
    return os.getpid()


def test_a_pool_serves_every_batch_with_the_same_workers_until_closed() -> None:
    executor = LocalProcessExecutor(1)
    first = executor.map(worker_pid, [0, 1])
    assert executor.map(worker_pid, [2]) == first[:1]  # the second batch starts no worker
    executor.close()
    assert executor.map(worker_pid, [3]) != first[:1]  # a fresh pool after close
    executor.close()


def test_every_executor_runs_a_job_at_its_thread_count_and_restores_the_callers() -> None:
    before = torch.get_num_threads()
    assert InProcessExecutor(threads=1).map(threads, [None]) == [1]
    assert run_job(threads, 2, None) == 2
    assert torch.get_num_threads() == before
    assert LocalProcessExecutor(1, threads=1).map(threads, [None, None]) == [1, 1]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "dask"}, "unknown executor 'dask'"),
        ({"kind": "pool", "workers": 0}, "workers must be at least 1"),
        ({"kind": "in_process", "threads": 0}, "threads per job must be at least 1"),
    ],
)
def test_bad_executor_settings_are_bad_input(arguments, message) -> None:
    with pytest.raises(BadInputError, match=message):
        make_executor(**arguments)


def test_a_pool_refuses_a_job_it_cannot_ship_before_starting_a_worker() -> None:
    with pytest.raises(BadInputError, match="cannot be pickled .*importable module-level functions"):
        LocalProcessExecutor(2).map(square, [functools.partial(lambda x: x, 1)])


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BadInputError, match=r"pip install 'aisec\[ray\]'"):
        make_executor("ray")


def test_a_fingerprint_follows_values_not_identities() -> None:
    x = torch.arange(6.0).view(2, 3)
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x) != fingerprint(x.double())  # dtype
    assert fingerprint(x) != fingerprint(x.view(3, 2))  # shape
    changed = x.clone()
    changed[1, 2] = 5.5
    assert fingerprint(x) != fingerprint(changed)
    data = LabelledData(x, torch.tensor([0, 1]), "one name")
    assert fingerprint(data) == fingerprint(LabelledData(x.clone(), torch.tensor([0, 1]), "another name"))
    assert fingerprint(data) != fingerprint(LabelledData(x, torch.tensor([1, 1])))
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint(functools.partial(square, 1)) != fingerprint(functools.partial(square, 2))
    assert fingerprint((1, 2)) != fingerprint([1, 2]) != fingerprint((1.0, 2.0))
    module = torch.nn.Linear(2, 2)
    assert fingerprint(module) != fingerprint(torch.nn.Linear(2, 2))  # other initial weights
    with pytest.raises(Unkeyable):
        fingerprint(io.BytesIO())


def _module_from(folder: Path, name: str, source: str):
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_recipe_whose_code_changed_gets_a_new_key(tmp_path: Path, monkeypatch) -> None:
    original = _module_from(tmp_path, "recipe", "def fit(model, data, seed):\n    return model\n")
    key = task_key(square, original.fit)
    assert task_key(square, original.fit) == key
    edited = _module_from(tmp_path, "recipe", "def fit(model, data, seed):\n    return None\n")
    assert task_key(square, edited.fit) != key  # the same name, other code
    assert task_key(threads, original.fit) != key  # another function runs the job
    monkeypatch.setattr("aisec.core.tasks.__version__", "99.0")
    assert task_key(square, original.fit) != key  # another aisec


def test_runner_reads_back_finished_jobs_and_runs_only_the_rest(tmp_path: Path) -> None:
    jobs = [(torch.full((3,), float(i)), 2.0) for i in range(5)]
    first = TaskRunner(cache=TaskCache(tmp_path))
    results = first.map(affine, jobs[:3])
    assert (first.executed, first.reused) == (3, 0)
    again = TaskRunner(cache=TaskCache(tmp_path))
    all_results = again.map(affine, jobs)
    assert (again.executed, again.reused) == (2, 3)
    assert all(torch.equal(a, b) for a, b in zip(results, all_results[:3], strict=True))
    assert torch.equal(all_results[4], torch.full((3,), 9.0))


class InterruptedExecutor(InProcessExecutor):
    """Runs jobs in process and is interrupted (as by Ctrl-C) after `after` results."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def map(self, fn, jobs, *, on_result=None):
        def counting(i, result):
            assert on_result is not None
            on_result(i, result)
            if i + 1 == self.after:
                raise KeyboardInterrupt

        return super().map(fn, jobs, on_result=counting)


def test_an_interrupted_run_keeps_what_finished_and_the_rerun_runs_the_rest_once(tmp_path: Path) -> None:
    jobs = [(torch.full((2,), float(i)), 3.0) for i in range(6)]
    interrupted = TaskRunner(InterruptedExecutor(after=4), cache=TaskCache(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        interrupted.map(affine, jobs)
    assert interrupted.executed == 4
    rerun = TaskRunner(cache=TaskCache(tmp_path))
    results = rerun.map(affine, jobs)
    assert (rerun.executed, rerun.reused) == (2, 4)
    assert [float(r[0]) for r in results] == [3.0 * i + 1 for i in range(6)]


def test_an_unreadable_cache_file_is_computed_again_never_trusted(tmp_path: Path) -> None:
    cache = TaskCache(tmp_path)
    job = (torch.ones(2), 2.0)
    key = task_key(affine, job)
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"PK\x03\x04 cut short")
    runner = TaskRunner(cache=cache)
    assert torch.equal(runner.map(affine, [job])[0], torch.full((2,), 3.0))
    assert runner.executed == 1
    assert cache.get(key)[0]  # replaced by the recomputed result


def test_a_cache_file_holding_code_is_not_run(tmp_path: Path) -> None:
    """A result file swapped for a pickle that runs code on load: weights_only refuses it, and it is recomputed."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    cache = TaskCache(tmp_path / "cache")
    job = (torch.ones(2), 2.0)
    key = task_key(affine, job)
    cache.path(key).parent.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"result": Payload()}, buffer)
    cache.path(key).write_bytes(buffer.getvalue())
    runner = TaskRunner(cache=cache)
    runner.map(affine, [job])
    assert not marker.exists() and runner.executed == 1


def test_a_job_without_a_fingerprint_runs_every_time(tmp_path: Path) -> None:
    runner = TaskRunner(cache=TaskCache(tmp_path))
    assert runner.map(len, [b"abc", b"xy"]) == [3, 2]
    assert runner.map(len, [b"abc", b"xy"]) == [3, 2]
    assert (runner.executed, runner.reused) == (2, 2)
    buffers = [io.BytesIO(b"abcd"), io.BytesIO(b"abcd")]  # an open buffer has no fingerprint
    assert runner.map(_size, buffers) == [4, 4] and runner.map(_size, buffers) == [4, 4]
    assert runner.executed == 6 and len(list(tmp_path.rglob("*.pt"))) == 2


def _size(buffer: io.BytesIO) -> int:
    return len(buffer.getvalue())
