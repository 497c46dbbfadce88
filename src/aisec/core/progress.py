"""Progress reporting for long loops: rich bars on a terminal, one line per finished step in a log (standard
error not a terminal: CI, `make demo | tee`), nothing in library use and tests."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol, TextIO


class Task(Protocol):
    def advance(self, amount: float = 1) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float) -> AbstractContextManager[Task]: ...


class _NullTask:
    def advance(self, amount: float = 1) -> None:
        return None


class _NullContext(AbstractContextManager[Task]):
    def __enter__(self) -> Task:
        return _NullTask()

    def __exit__(self, *exc: object) -> None:
        return None


class NullProgress:
    """Shows nothing."""

    def task(self, description: str, total: float) -> AbstractContextManager[Task]:
        return _NullContext()


class RichProgress:
    """One rich progress bar per running task; finished tasks stay listed with their time."""

    def __init__(self, progress: object) -> None:
        self._progress = progress

    def task(self, description: str, total: float) -> AbstractContextManager[Task]:
        return _RichTask(self._progress, description, total)


class _RichTask(AbstractContextManager[Task]):
    def __init__(self, progress: object, description: str, total: float) -> None:
        self._progress = progress
        self._description = description
        self._total = total

    def __enter__(self) -> Task:
        self._id = self._progress.add_task(self._description, total=self._total)  # type: ignore[attr-defined]
        return self

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._id, amount)  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self._progress.update(self._id, completed=self._total)  # type: ignore[attr-defined]


class LineProgress:
    """One line per step when it starts and when it ends, with its count and time: what a log can show of
    progress where bars cannot be redrawn."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.perf_counter()

    def task(self, description: str, total: float) -> AbstractContextManager[Task]:
        return _LineTask(self, description, total)

    def line(self, text: str) -> None:
        print(f"[{time.perf_counter() - self._started:7.1f} s] {text}", file=self._stream, flush=True)


class _LineTask(AbstractContextManager[Task]):
    def __init__(self, progress: LineProgress, description: str, total: float) -> None:
        self._progress = progress
        self._description = description
        self._total = total
        self._done = 0.0

    def __enter__(self) -> Task:
        self._start = time.perf_counter()
        self._progress.line(f"{self._description} ...")
        return self

    def advance(self, amount: float = 1) -> None:
        self._done += amount

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        self._progress.line(f"{self._description}: {self._done:g}/{self._total:g} in {seconds:.1f} s")
