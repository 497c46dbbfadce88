"""Where an assessment runs its independent parallel jobs (shadow models, repeated trials).

An `Executor` maps a function over a list of jobs and returns the results in job order. The function must be
defined at module top level and its jobs and results picklable, so that any executor can ship them to another
process or machine. Two executors ship with aisec: `InProcessExecutor` (one job after another, the default)
and `LocalProcessExecutor` (a pool of worker processes on this machine). Ray can implement the same protocol
for more than one machine without any change to the attacks: `map` submits `ray.remote(fn).remote(job)` per
job and returns `ray.get` of the references, which keeps job order; aisec does not depend on Ray.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol, TypeVar

from aisec.core.errors import BadInputError

J = TypeVar("J")
R = TypeVar("R")


class Executor(Protocol):
    """Runs `fn` on every job; the results come back in job order."""

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]: ...


class InProcessExecutor:
    """Runs the jobs one after another in this process (the default executor)."""

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        return [fn(job) for job in jobs]


class LocalProcessExecutor:
    """Runs the jobs on `workers` processes of this machine (default: one per CPU core).

    Workers are started with "spawn" (never fork a process whose torch thread pools are running), so a script
    that uses this executor needs the usual `if __name__ == "__main__":` guard; each worker uses
    `torch_threads` intra-op threads, so that workers do not compete for the same cores.
    """

    def __init__(self, workers: int | None = None, *, torch_threads: int = 1) -> None:
        if workers is not None and workers < 1:
            raise BadInputError(f"workers must be at least 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.torch_threads = torch_threads

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        if not jobs:
            return []
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(jobs)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.torch_threads,),
        ) as pool:
            return list(pool.map(fn, jobs))


def _init_worker(torch_threads: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)
