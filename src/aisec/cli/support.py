"""What every aisec command shares: the stderr console and the error-to-exit-code guard."""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer
from rich.console import Console

from aisec.core.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, AisecError

console = Console(stderr=True)


def guarded(run: Callable[[], int]) -> None:
    """Run a command; turn aisec's errors into one line and their exit code, never a traceback."""
    try:
        code = run()
    except AisecError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as e:  # a bug in aisec: say so plainly, exit 3
        console.print(
            f"[red]internal error[/red] ({type(e).__name__}: {e}); please report it. Nothing was written."
        )
        if "--debug" in sys.argv:
            raise
        raise typer.Exit(EXIT_INTERNAL) from None
    raise typer.Exit(code)
