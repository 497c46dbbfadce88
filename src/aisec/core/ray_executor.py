"""Jobs as Ray tasks: the executor for more than one machine (the optional extra `aisec[ray]`).

`RayExecutor.map` submits one task per job (`num_cpus=cpus_per_task`, `num_gpus=gpus_per_task`), at most `workers`
in flight (default: twice what the cluster can run at once, so that the object store never holds every job's
data), and collects them with `ray.wait` as they finish, so that the caller keeps each result at once. Ray places the tasks; aisec only bounds how many run. With `address: local` the executor starts a
Ray of its own on this machine (`workers` CPUs, no dashboard, usage statistics off) and shuts it down on `close`;
any other address (`auto`, `host:port`, `ray://host:port`) joins a running cluster, which `close` leaves running.
A Ray that the caller already started (`ray.init` before the assessment) is used as it is and left to the caller.

The jobs' functions and data travel by Ray's serialiser; the function's module (aisec, and the plan's factory
and recipe) must be importable on every node.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aisec.core.errors import BadInputError
from aisec.core.executor import ExecutorKind, OnResult, check_counts, run_job

J = TypeVar("J")
R = TypeVar("R")

LOCAL = "local"
OBJECT_STORE_BYTES = (
    256 * 2**20
)  # a local Ray's object store: jobs and results here are megabytes, not gigabytes


def import_ray() -> Any:
    """The `ray` module, or BadInputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInputError(
            "the ray executor needs Ray: pip install 'aisec[ray]' (or choose executor kind in_process or pool)"
        ) from None
    return ray


class RayExecutor:
    """Runs the jobs as Ray tasks (see the module's docstring)."""

    kind: ExecutorKind = "ray"

    def __init__(
        self,
        *,
        address: str = LOCAL,
        workers: int | None = None,
        threads: int = 1,
        cpus_per_task: float = 1.0,
        gpus_per_task: float = 0.0,
    ) -> None:
        check_counts(workers, threads)
        if cpus_per_task < 0 or gpus_per_task < 0:
            raise BadInputError("cpus_per_task and gpus_per_task must not be negative")
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self.threads = threads
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self._started = False

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if self.address == LOCAL:
                self.ray.init(
                    num_cpus=self.workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=OBJECT_STORE_BYTES,
                    log_to_driver=False,
                    configure_logging=False,
                )
            else:
                self.ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise BadInputError(f"cannot start or reach Ray at {self.address!r}: {error}") from None
        self._started = True

    def map(
        self, fn: Callable[[J], R], jobs: Sequence[J], *, on_result: OnResult[R] | None = None
    ) -> list[R]:
        if not jobs:
            return []
        self._connect()
        ray = self.ray
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=2)(run_job)
        call = functools.partial(remote.remote, fn, self.threads)
        slots = self._slots()  # refuses GPU jobs where the cluster has no GPU, before any job is submitted
        limit = self.workers or slots
        results: dict[int, R] = {}
        index: dict[Any, int] = {}  # the jobs in flight: Ray's reference -> the job's place
        waiting = iter(enumerate(jobs))

        def submit_next() -> None:
            following = next(waiting, None)
            if following is not None:
                index[call(following[1])] = following[0]

        try:
            for _ in range(limit):
                submit_next()
            while index:
                ready, _ = ray.wait(list(index), num_returns=1)
                i = index.pop(ready[0])
                results[i] = ray.get(ready[0])
                if on_result is not None:
                    on_result(i, results[i])
                submit_next()
        except BaseException:
            for ref in index:
                ray.cancel(ref, force=True)
            raise
        return [results[i] for i in range(len(jobs))]

    def _slots(self) -> int:
        """Jobs in flight without `workers`: twice what the cluster can run at once (by CPUs, or GPUs for GPU
        jobs), so that workers never wait for the next job while the object store holds only the jobs about to
        run, not every job's data at once."""
        resources = self.ray.cluster_resources()
        if self.gpus_per_task and not resources.get("GPU"):
            raise BadInputError(
                f"gpus_per_task is {self.gpus_per_task:g}, but the Ray at {self.address!r} has no GPU: its jobs would "
                "wait for ever (set gpus_per_task 0, or join a cluster with GPUs)"
            )
        by_cpu = resources.get("CPU", 1.0) / self.cpus_per_task if self.cpus_per_task else float("inf")
        by_gpu = resources.get("GPU", 0.0) / self.gpus_per_task if self.gpus_per_task else float("inf")
        at_once = min(by_cpu, by_gpu)
        return max(1, 2 * int(at_once)) if at_once != float("inf") else 64

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False
