"""Where an assessment runs its independent jobs (shadow models, retrained models, defended models, files to scan).

An `Executor` maps a function over a list of jobs and returns the results in job order; `on_result(i, result)`
is called in the caller's process as each job finishes, in whatever order they finish, so that a caller can keep
each result (aisec.core.tasks caches it on disk) before the whole batch is done. The function must be defined at
module top level and its jobs and results picklable, so that any executor can ship them to another process or
machine. Three executors ship with aisec: `InProcessExecutor` (one job after another, the default),
`LocalProcessExecutor` (a pool of worker processes on this machine) and `RayExecutor` (tasks on a Ray cluster,
aisec.core.ray_executor; Ray is imported only when it is chosen).

Every executor runs a job with torch limited to `threads` intra-op threads (default 1), set around the job in the
process that runs it (when the job's module has imported torch; the scanner's jobs never import it): CPU kernels split their reductions by thread count, so the same job, seed and thread count
give bit-identical figures whichever executor ran them.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import sys
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Literal, Protocol, TypeVar

from aisec.core.errors import BadInputError

J = TypeVar("J")
R = TypeVar("R")

ExecutorKind = Literal["in_process", "pool", "ray"]
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("in_process", "pool", "ray")
OnResult = Callable[[int, R], None]


class Executor(Protocol):
    """Runs `fn` on every job; the results come back in job order, and each to `on_result` as it finishes."""

    kind: ExecutorKind
    threads: int

    def map(
        self, fn: Callable[[J], R], jobs: Sequence[J], *, on_result: OnResult[R] | None = None
    ) -> list[R]: ...

    def close(self) -> None:
        """Release what the executor started (worker processes, a local Ray); idempotent."""


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch limited to `threads` intra-op threads; the caller's setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_job(fn: Callable[[J], R], threads: int, job: J) -> R:
    """`fn(job)` with torch limited to `threads` threads (top-level, so that every executor can ship it). A job
    whose module does not import torch (scanning model files) runs without it: torch is not imported for it."""
    if "torch" not in sys.modules:
        return fn(job)
    with torch_threads(threads):
        return fn(job)


def choice_problem(kind: str, *, workers: int | None = None, ray_options: Collection[str] = ()) -> str | None:
    """What is wrong with an executor choice, None when nothing: an unknown kind, options of Ray's (named in
    `ray_options`) for another kind, several workers for the in-process executor. A plan's `executor` section and
    the command lines check their choices with it."""
    if kind not in EXECUTOR_KINDS:
        return f"unknown executor {kind!r}: in_process, pool or ray"
    if kind != "ray" and ray_options:
        return f"{', '.join(sorted(ray_options))}: for the ray executor only, not {kind}"
    if kind == "in_process" and workers not in (None, 1):
        return "the in_process executor runs one job at a time: use kind pool or ray for several workers"
    return None


def check_counts(workers: int | None, threads: int) -> None:
    """BadInputError unless `workers` (when given) and `threads` are at least 1."""
    if workers is not None and workers < 1:
        raise BadInputError(f"workers must be at least 1, got {workers}")
    if threads < 1:
        raise BadInputError(f"threads per job must be at least 1, got {threads}")


class InProcessExecutor:
    """Runs the jobs one after another in this process (the default executor)."""

    kind: ExecutorKind = "in_process"

    def __init__(self, *, threads: int = 1) -> None:
        check_counts(None, threads)
        self.threads = threads

    def map(
        self, fn: Callable[[J], R], jobs: Sequence[J], *, on_result: OnResult[R] | None = None
    ) -> list[R]:
        results = []
        for i, job in enumerate(jobs):
            result = run_job(fn, self.threads, job)
            if on_result is not None:
                on_result(i, result)
            results.append(result)
        return results

    def close(self) -> None:
        return None


class LocalProcessExecutor:
    """Runs the jobs on `workers` processes of this machine (default: one per CPU core).

    Workers are started with "spawn" (never fork a process whose torch thread pools are running), so a script
    that uses this executor needs the usual `if __name__ == "__main__":` guard. The pool starts with the first
    `map` (its workers on demand, never more than there are jobs to run) and serves every later one, so that an
    assessment's batches pay for starting workers once; `close`, or the executor's collection, stops it. A
    `map` that fails or is interrupted stops it too, and the next `map` starts a fresh one.
    """

    kind: ExecutorKind = "pool"

    def __init__(self, workers: int | None = None, *, threads: int = 1) -> None:
        check_counts(workers, threads)
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None
        self._stop: weakref.finalize | None = None

    def map(
        self, fn: Callable[[J], R], jobs: Sequence[J], *, on_result: OnResult[R] | None = None
    ) -> list[R]:
        if not jobs:
            return []
        _require_picklable(fn, jobs[0])
        pool = self._started()
        call = functools.partial(run_job, fn, self.threads)
        index: dict[Future[R], int] = {pool.submit(call, job): i for i, job in enumerate(jobs)}
        results: dict[int, R] = {}
        pending = set(index)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=index.__getitem__):
                    results[index[future]] = future.result()
                    if on_result is not None:
                        on_result(index[future], results[index[future]])
        except BaseException:
            self.close()  # cancels what has not started; a broken or interrupted pool is not used again
            raise
        return [results[i] for i in range(len(jobs))]

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            self._stop = weakref.finalize(self, self._pool.shutdown, wait=True, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
        self._pool, self._stop = None, None


def _require_picklable(fn: Callable[[J], R], job: J) -> None:
    """BadInputError, before any worker starts, when a job cannot travel to another process (a lambda, a function
    defined in a notebook or inside another function, an open file)."""
    try:
        pickle.dumps((fn, job))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise BadInputError(
            f"the pool executor ships each job to another process, and this one cannot be pickled ({error}): give "
            "the factory and recipe as importable module-level functions, or use executor kind in_process or ray"
        ) from None


def make_executor(
    kind: ExecutorKind = "in_process",
    *,
    workers: int | None = None,
    threads: int = 1,
    address: str = "local",
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
) -> Executor:
    """The executor a plan's `executor` section or the CLI's `--executor` names (docs/scale.md)."""
    problem = choice_problem(kind)
    if problem is not None:
        raise BadInputError(problem)
    if kind == "in_process":
        return InProcessExecutor(threads=threads)
    if kind == "pool":
        return LocalProcessExecutor(workers, threads=threads)
    if kind == "ray":
        from aisec.core.ray_executor import RayExecutor

        return RayExecutor(
            address=address,
            workers=workers,
            threads=threads,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
        )
    raise AssertionError(kind)
