"""Progress reporting for long loops: rich bars on a terminal, nothing in library use and tests."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol


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
