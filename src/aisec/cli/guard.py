"""`aisec guard`: a secured front for a served model (docs/guard.md). `serve` runs it; `key add|revoke|list`
manage its API keys (stored hashed; `add` prints the key once); `check` validates a configuration and builds
everything it names (model, keys, calibrations, audit log) without serving.

Exit codes: 0 done (serve: stopped cleanly); 2 bad input (one line naming the file, line and field; nothing
started or written); 3 internal error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aisec.cli.support import console, guarded
from aisec.core.errors import EXIT_OK, BadInputError

guard_app = typer.Typer(
    help="A secured front for a served model: keys, limits, monitors, audit.", no_args_is_help=True
)
key_app = typer.Typer(help="API keys of a guard (stored hashed).", no_args_is_help=True)
guard_app.add_typer(key_app, name="key")

_CONFIG = Annotated[Path, typer.Argument(help="The guard's YAML configuration (docs/guard.md).")]
_KEYS = Annotated[Path, typer.Argument(help="The key file (JSON; made by the first `key add`).")]
_NAME = Annotated[str, typer.Argument(help="The key's name: a client, a team, a tier's user.")]


@guard_app.command("serve")
def serve(
    config: _CONFIG,
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port to listen on.")] = 8080,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Worker processes (more than 1 needs redis).")
    ] = 1,
) -> None:
    """Serve the guarded model: POST /v1/predict, GET /healthz, GET /metrics."""

    def run() -> int:
        import os

        import uvicorn

        from aisec.guard.app import CONFIG_ENV, WORKERS_ENV, create_app
        from aisec.guard.config import load_config
        from aisec.guard.service import build_guard

        settings = load_config(config)
        guard = build_guard(settings, workers=workers)  # fails on bad input before anything listens
        if workers == 1:
            uvicorn.run(create_app(guard), host=host, port=port, log_level="warning", access_log=False)
            return EXIT_OK
        guard.close()
        os.environ[CONFIG_ENV] = str(config.resolve())
        os.environ[WORKERS_ENV] = str(workers)
        uvicorn.run(
            "aisec.guard.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
        return EXIT_OK

    guarded(run)


@guard_app.command("check")
def check(config: _CONFIG) -> None:
    """Validate a configuration and build what it names (model, keys, calibrations, audit log), then stop."""

    def run() -> int:
        from aisec.guard.config import load_config
        from aisec.guard.service import build_guard

        guard = build_guard(load_config(config))
        guard.close()
        console.print(f"{config}: valid; model {guard.model.source}")
        return EXIT_OK

    guarded(run)


@key_app.command("add")
def key_add(
    keys: _KEYS,
    name: _NAME,
    tier: Annotated[
        str, typer.Option("--tier", help="The output tier (the configuration's `tiers`).")
    ] = "default",
) -> None:
    """Make a key and print it once: only its hash is stored."""

    def run() -> int:
        from aisec.guard.keys import add_key

        token = add_key(keys, name, tier=tier)
        typer.echo(token)
        return EXIT_OK

    guarded(run)


@key_app.command("revoke")
def key_revoke(keys: _KEYS, name: _NAME) -> None:
    """Revoke a key; a running guard refuses it from its next request."""

    def run() -> int:
        from aisec.guard.keys import revoke_key

        revoked = revoke_key(keys, name)
        console.print(f"revoked {revoked.name} (key id {revoked.key_id})")
        return EXIT_OK

    guarded(run)


@key_app.command("list")
def key_list(keys: _KEYS) -> None:
    """List the keys: name, id, tier, created, revoked."""

    def run() -> int:
        from aisec.guard.keys import list_keys

        listed = list_keys(keys)
        if not listed:
            raise BadInputError(f"{keys}: holds no keys")
        for k in listed:
            typer.echo(f"{k.name}\t{k.key_id}\t{k.tier}\t{k.created}\t{k.revoked or 'active'}")
        return EXIT_OK

    guarded(run)


def register(app: typer.Typer) -> None:
    app.add_typer(guard_app, name="guard")
