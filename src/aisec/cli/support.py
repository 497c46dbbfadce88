"""What every aisec command shares: the stderr console and the error-to-exit-code guard.

rich and typer are imported on first use, so `aisec scan` (`aisec.cli.scan`) pays for neither unless it
prints through rich or runs through typer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn

from aisec.core.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, AisecError

if TYPE_CHECKING:
    from rich.console import Console


@cache
def stderr_console() -> Console:
    """The console progress, messages and errors go to (standard error)."""
    from rich.console import Console

    return Console(stderr=True)


def __getattr__(name: str) -> Any:
    """`console`: the stderr console, made on first use."""
    if name == "console":
        return stderr_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plain(value: object) -> str:
    """`value` as text that rich prints literally: a path or message with brackets (`aisec[sign]`, `out[1]/`,
    a scanned file named "[red]" or "[/x]") is not read as markup. Without a bracket, rich is not imported."""
    text = str(value)
    if "[" not in text:
        return text
    from rich.markup import escape

    return escape(text)


def run_guarded(run: Callable[[], int]) -> int:
    """Run a command and return its exit code; aisec's errors become one line, never a traceback."""
    try:
        return run()
    except AisecError as e:
        stderr_console().print(f"[red]error:[/red] {plain(e)}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        stderr_console().print("[yellow]interrupted[/yellow]: nothing was written")
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug in aisec: say so plainly, exit 3
        stderr_console().print(
            f"[red]internal error[/red] ({type(e).__name__}: {plain(e)}); please report it. Nothing was written."
        )
        if "--debug" in sys.argv:
            raise
        return EXIT_INTERNAL


def guarded(run: Callable[[], int]) -> NoReturn:
    """`run_guarded` for a typer command: ends it with the exit code."""
    import typer

    raise typer.Exit(run_guarded(run))
