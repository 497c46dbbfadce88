"""The `aisec` command (docs/cli.md); the typer app is `aisec.cli.commands.app`.

`aisec scan` runs in pre-commit hooks, on every commit, so its start-up counts: `main` runs a well-formed
`aisec scan` command line without importing typer (`aisec.cli.scan`); everything else, `aisec scan --help`
and any line that `scan.parse` leaves to typer included, goes through the typer app.

Exit codes: 0 policy held (scan: nothing to fail on), 1 a finding breaks the policy, 2 bad input,
3 internal error, 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    """The `aisec` console script."""
    args = sys.argv[1:]
    if args[:1] == ["scan"]:
        from aisec.cli.scan import parse, run_scan
        from aisec.cli.support import run_guarded

        options = parse(args[1:])
        if options is not None:
            sys.exit(run_guarded(lambda: run_scan(options)))
    from aisec.cli.commands import app

    app()


def __getattr__(name: str) -> Any:
    """The typer app, `aisec.cli.commands.app`, as `aisec.cli.app` (imported on first use: typer is slow to import)."""
    if name == "app":
        from aisec.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
