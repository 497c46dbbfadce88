"""Jobs run through an executor with their results kept on disk under a name made of what they were made from,
so that an interrupted run resumes without redoing a job that finished.

A task's key is the SHA-256 of a canonical fingerprint of its job (every field: tensors by dtype, shape and bytes,
data sets by their digest, modules by their class and weights, functions by their module, name and source code,
`functools.partial` by its function and arguments) together with the names of the function that runs it, aisec's
version and torch's: a job that differs in its model, data, recipe or seed, or a newer aisec, gets a new key.
`TaskCache` stores each result as `<folder>/<key[:2]>/<key>.pt`, written atomically by the process that called the
executor (workers never write it, so two workers cannot write the same file), and reads it back with
`torch.load(weights_only=True)`: a result is tensors, numbers, strings and containers of them, never code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from aisec.core.atomic import write_atomic
from aisec.core.errors import BadInputError
from aisec.core.executor import Executor, InProcessExecutor
from aisec.core.progress import NullProgress, Progress
from aisec.core.version import __version__

J = TypeVar("J")
R = TypeVar("R")


class Unkeyable(TypeError):
    """A job holds something that has no stable fingerprint (an open file, a lock): its result is not cached."""


def fingerprint(value: Any, tensors: dict[int, bytes] | None = None) -> bytes:
    """The canonical bytes that name `value` (see the module's docstring); Unkeyable for what has none.
    `tensors` memoises tensor digests by identity across calls whose values all stay alive meanwhile (the jobs
    of one batch share their big inputs: each is hashed once)."""
    digest = hashlib.sha256()
    _feed(digest, value, set(), {} if tensors is None else tensors)
    return digest.digest()


def _feed(digest: Any, value: Any, seen: set[int], tensors: dict[int, bytes]) -> None:
    def put(tag: str, *parts: bytes) -> None:
        digest.update(tag.encode() + b"\0")
        for part in parts:
            digest.update(len(part).to_bytes(8, "little") + part)

    def feed(item: Any) -> None:
        _feed(digest, item, seen, tensors)

    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        put(type(value).__name__, repr(value).encode())
    elif isinstance(value, torch.Tensor):
        if id(value) not in tensors:
            tensors[id(value)] = _tensor_digest(value)
        put("tensor", tensors[id(value)])
    elif id(value) in seen:
        put("cycle")
    elif isinstance(value, torch.nn.Module):
        seen.add(id(value))
        put("module", _qualified(type(value)).encode())
        feed(value.state_dict())
    elif isinstance(value, functools.partial):
        seen.add(id(value))
        put("partial")
        for part in (value.func, value.args, value.keywords):
            feed(part)
    elif inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.isclass(value):
        put("callable", _qualified(value).encode(), _source(value))
        feed(getattr(value, "__defaults__", None))
        for cell in getattr(value, "__closure__", None) or ():
            feed(cell.cell_contents)
    elif isinstance(value, (list, tuple)):
        seen.add(id(value))
        put(type(value).__name__, str(len(value)).encode())
        for item in value:
            feed(item)
    elif isinstance(value, dict):
        seen.add(id(value))
        put("dict", str(len(value)).encode())
        for key in sorted(value, key=repr):
            feed(key)
            feed(value[key])
    elif isinstance(value, (set, frozenset)):
        put("set", *sorted(fingerprint(item, tensors) for item in value))
    elif hasattr(value, "sha256") and hasattr(value, "x") and hasattr(value, "y"):  # LabelledData
        put("data", str(value.sha256).encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        seen.add(id(value))
        put("dataclass", _qualified(type(value)).encode())
        for item in dataclasses.fields(value):
            feed(item.name)
            feed(getattr(value, item.name))
    elif hasattr(value, "model_dump") and hasattr(value, "model_fields"):  # a pydantic section
        put("model", _qualified(type(value)).encode())
        feed(value.model_dump(mode="json"))
    elif isinstance(value, os.PathLike):
        put("path", os.fspath(value).encode())
    else:
        raise Unkeyable(f"no fingerprint for a {type(value).__name__}")


def _tensor_digest(value: torch.Tensor) -> bytes:
    """SHA-256 of a tensor's dtype, shape and values, read in place (no copy of a CPU tensor's bytes)."""
    tensor = value.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    if tensor.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
        tensor = tensor.float()
    if tensor.numel():
        digest.update(tensor.numpy().data.cast("B"))
    return digest.digest()


def _qualified(value: Any) -> str:
    return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"


@functools.lru_cache(maxsize=512)
def _source_of(code: Any) -> bytes:
    try:
        return inspect.getsource(code).encode()
    except (OSError, TypeError):
        return b""


def _source(value: Any) -> bytes:
    """The function's (or class's) source, so that a recipe whose code changed gets new keys; empty for
    builtins and code without a file."""
    return _source_of(getattr(value, "__code__", None) or value)


def task_key(fn: Callable[..., Any], job: Any, tensors: dict[int, bytes] | None = None) -> str:
    """The hex key of running `fn` on `job` under this aisec and torch (raises Unkeyable); `tensors` as for
    `fingerprint`."""
    digest = hashlib.sha256()
    parts = (_qualified(fn), __version__, torch.__version__)
    for part in (*(p.encode() for p in parts), fingerprint(job, tensors)):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


class TaskCache:
    """Results kept under `folder` by key (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)  # made with the first result: a run refused as bad input leaves nothing

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, result) for a key already computed, (False, None) otherwise; a file that cannot be read back
        (cut short by a crash, or not one of ours) counts as absent and is computed again."""
        path = self.path(key)
        try:
            with path.open("rb") as handle:
                return True, torch.load(handle, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - absent, or unreadable: computed again, never trusted
            return False, None

    def put(self, key: str, result: Any) -> None:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInputError(
                f"cannot write the task cache {self.folder}: {error.strerror or error}"
            ) from None
        buffer = io.BytesIO()
        torch.save(result, buffer)
        write_atomic(path, buffer.getvalue())


@dataclasses.dataclass
class TaskRunner:
    """What a probe runs its independent jobs through: an executor, and optionally a cache that makes a rerun
    resume. `executed` and `reused` count the jobs this runner ran and the ones it read back."""

    executor: Executor = dataclasses.field(default_factory=InProcessExecutor)
    cache: TaskCache | None = None
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    # where training jobs put their models ("cuda" with an executor that gives tasks GPUs)
    device: str = "cpu"
    executed: int = 0
    reused: int = 0

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], *, what: str = "tasks") -> list[R]:
        """`fn` on every job through the executor, the results in job order; jobs already in the cache are
        read back instead, and each new result is cached the moment it arrives."""
        keys = self._keys(fn, jobs)
        results: dict[int, R] = {}
        for i, key in enumerate(keys):
            if key is not None and self.cache is not None:
                found, result = self.cache.get(key)
                if found:
                    results[i] = result
        pending = [i for i in range(len(jobs)) if i not in results]
        self.reused += len(results)
        if not pending:
            return [results[i] for i in range(len(jobs))]
        with self.progress.task(f"{what}: {len(pending)} of {len(jobs)} to run", total=len(pending)) as task:

            def keep(j: int, result: R) -> None:
                i = pending[j]
                results[i] = result
                self.executed += 1
                key = keys[i]
                if key is not None and self.cache is not None:
                    self.cache.put(key, result)
                task.advance()

            self.executor.map(fn, [jobs[i] for i in pending], on_result=keep)
        return [results[i] for i in range(len(jobs))]

    def _keys(self, fn: Callable[..., Any], jobs: Iterable[Any]) -> list[str | None]:
        if self.cache is None:
            return [None for _ in jobs]
        keys: list[str | None] = []
        tensors: dict[int, bytes] = {}  # the jobs stay alive meanwhile: a shared tensor is hashed once
        for job in jobs:
            try:
                keys.append(task_key(fn, job, tensors))
            except Unkeyable:
                keys.append(None)
        return keys

    def close(self) -> None:
        self.executor.close()
