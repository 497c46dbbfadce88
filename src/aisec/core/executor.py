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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Literal, Protocol, TypeVar

from aisec.core.errors import BadInputError

J = TypeVar("J")
R = TypeVar("R")

ExecutorKind = Literal["in_process", "pool", "ray"]
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


def _check_threads(threads: int) -> int:
    if threads < 1:
        raise BadInputError(f"threads per job must be at least 1, got {threads}")
    return threads


class InProcessExecutor:
    """Runs the jobs one after another in this process (the default executor)."""

    kind: ExecutorKind = "in_process"

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = _check_threads(threads)

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
    that uses this executor needs the usual `if __name__ == "__main__":` guard. A pool lives for one `map`.
    """

    kind: ExecutorKind = "pool"

    def __init__(self, workers: int | None = None, *, threads: int = 1) -> None:
        if workers is not None and workers < 1:
            raise BadInputError(f"workers must be at least 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.threads = _check_threads(threads)

    def map(
        self, fn: Callable[[J], R], jobs: Sequence[J], *, on_result: OnResult[R] | None = None
    ) -> list[R]:
        if not jobs:
            return []
        _require_picklable(fn, jobs[0])
        results: dict[int, R] = {}
        call = functools.partial(run_job, fn, self.threads)
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            index: dict[Future[R], int] = {pool.submit(call, job): i for i, job in enumerate(jobs)}
            pending = set(index)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=index.__getitem__):
                        results[index[future]] = future.result()
                        if on_result is not None:
                            on_result(index[future], results[index[future]])
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return [results[i] for i in range(len(jobs))]

    def close(self) -> None:
        return None


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
    raise BadInputError(f"unknown executor {kind!r}: in_process, pool or ray")
