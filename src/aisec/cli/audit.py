"""`aisec audit`: read, verify and prove the tamper-evident audit log (docs/audit.md); and the `--audit-log` and
`--audit-key` options every recording command shares.

Exit codes: 0 intact (or printed); 1 tampered, or a proof that does not check; 2 bad input (not an aisec log, a
key of the wrong type, a checkpoint from another log, an entry that does not exist); 3 internal error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from aisec.cli.audit_trail import KEY_ENV, LOG_ENV
from aisec.cli.support import console, guarded, plain
from aisec.core.errors import EXIT_OK, EXIT_POLICY_FAILED, BadInputError

AuditLogOption = Annotated[
    str | None,
    typer.Option(
        "--audit-log",
        envvar=LOG_ENV,
        help="Append this run to a tamper-evident audit log: a SQLite file or postgresql://... (docs/audit.md).",
        show_envvar=True,
    ),
]
AuditKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--audit-key",
        envvar=KEY_ENV,
        help="The Ed25519 private key (PEM) that signs the log's checkpoints (`aisec keygen --type ed25519`).",
        show_envvar=True,
    ),
]
_LOG = Annotated[str, typer.Argument(help="The audit log: a SQLite file or postgresql://...")]

audit_app = typer.Typer(
    help="The tamper-evident audit log: verify it, list its entries, prove an entry is in it.",
    no_args_is_help=True,
)


@audit_app.command("verify")
def verify(
    log: _LOG,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            "-k",
            help="The log's public key (PEM, or a note verifier key) you hold apart from the log; without it "
            "checkpoints are checked against the key the log itself records.",
        ),
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="A checkpoint you kept (from `aisec audit checkpoint`): the log must still contain that tree.",
        ),
    ] = None,
) -> None:
    """Recompute the Merkle tree, check every checkpoint's signature and that each later tree contains each
    earlier one. Exit 0 intact, 1 tampered (naming the first bad entry), 2 bad input."""

    def run() -> int:
        from aisec.defend.auditability.audit_log.keys import load_verifying_key
        from aisec.defend.auditability.audit_log.verify import verify_log

        public_key = load_verifying_key(key) if key is not None else None
        notes = [_read_text(path, "--checkpoint") for path in checkpoint or []]
        result = verify_log(log, public_key=public_key, checkpoints=notes)
        if not result.ok:
            console.print(f"[red]tampered[/red] {plain(log)}: {plain(result.problem or '')}", highlight=False)
            return EXIT_POLICY_FAILED
        trust = (
            "the key you gave"
            if result.key_source == "given"
            else "the key the log records (pass --key to check against one you hold)"
        )
        console.print(
            f"[green]intact[/green] {plain(log)}: {result.entries} entries, {result.checkpoints} signed "
            f"checkpoints, signatures checked against {trust}",
            highlight=False,
            soft_wrap=True,
        )
        if notes:
            console.print(f"consistent with {len(notes)} checkpoint(s) you kept", highlight=False)
        if public_key is not None and result.origin is not None:
            from aisec.defend.auditability.audit_log.checkpoint import verifier_key

            console.print(
                f"verifier key of its checkpoints (for signed-note tools): {verifier_key(result.origin, public_key)}",
                highlight=False,
                soft_wrap=True,
            )
        if result.unsigned_tail:
            console.print(
                f"[yellow]note[/yellow]: the last {result.unsigned_tail} entries are not yet covered by a signed "
                "checkpoint (a writer stopped before signing one); the next append signs them",
                highlight=False,
            )
        return EXIT_OK

    guarded(run)


@audit_app.command("show")
def show(
    log: _LOG,
    start: Annotated[int, typer.Option("--from", help="The first entry to list.")] = 0,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many entries to list.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON lines.")] = False,
) -> None:
    """List the log's entries (this does not verify them: `aisec audit verify` does)."""

    def run() -> int:
        from aisec.defend.auditability.audit_log.entry import decode_entry
        from aisec.defend.auditability.audit_log.log import open_store

        if start < 0 or limit < 1:
            raise BadInputError("--from must be >= 0 and --limit >= 1")
        store = open_store(log, create=False)
        try:
            rows = [decode_entry(row.content) for row in store.entries(start, start + limit)]
            total = store.size()
        finally:
            store.close()
        if as_json:
            for row in rows:
                sys.stdout.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            return EXIT_OK
        from rich.table import Table

        table = Table(
            title=f"{plain(log)}: entries {start}-{start + len(rows) - 1} of {total} (not verified)"
        )
        for column in ("seq", "time", "user@host", "command", "verdict", "model sha256"):
            table.add_column(column, overflow="fold")
        for row in rows:
            model = row["model"] if isinstance(row.get("model"), dict) else {}
            table.add_row(
                str(row.get("seq")),
                plain(row.get("time", "")),
                plain(f"{row.get('user')}@{row.get('host')}"),
                plain(row.get("command", "")),
                plain(row.get("verdict", "")),
                plain(str(model.get("sha256") or "")[:16]),
            )
        console.print(table)
        return EXIT_OK

    guarded(run)


@audit_app.command("prove")
def prove(
    log: _LOG,
    entry: Annotated[int, typer.Argument(help="The entry's sequence number (from `aisec audit show`).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the proof here instead of printing it.")
    ] = None,
) -> None:
    """Print an inclusion proof of one entry against the latest signed checkpoint, as JSON that anyone can check
    with `aisec audit check-proof` and the log's public key."""

    def run() -> int:
        from aisec.defend.auditability.audit_log.log import AuditLog

        audit_log = AuditLog.open(log)
        try:
            proof = audit_log.inclusion_proof(entry)
        finally:
            audit_log.store.close()
        _emit(json.dumps(proof, indent=2, ensure_ascii=False) + "\n", output, f"the proof of entry {entry}")
        return EXIT_OK

    guarded(run)


@audit_app.command("check-proof")
def check_proof(
    proof: Annotated[Path, typer.Argument(help="A proof written by `aisec audit prove`.")],
    key: Annotated[
        Path, typer.Option("--key", "-k", help="The log's public key (PEM or note verifier key).")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", "-c", help="Check against this checkpoint instead of the one the proof carries."
        ),
    ] = None,
) -> None:
    """Check an inclusion proof without the log: the entry is in the tree that the signed checkpoint commits to.
    Exit 0 it is, 1 it is not, 2 bad input."""

    def run() -> int:
        from aisec.defend.auditability.audit_log.checkpoint import CheckpointError
        from aisec.defend.auditability.audit_log.keys import load_verifying_key
        from aisec.defend.auditability.audit_log.log import check_inclusion_proof
        from aisec.defend.auditability.audit_log.merkle import ProofError

        public_key = load_verifying_key(key)
        try:
            document = json.loads(_read_text(proof, "proof"))
        except json.JSONDecodeError as error:
            raise BadInputError(f"{proof}: not a proof written by `aisec audit prove` ({error})") from None
        if not isinstance(document, dict):
            raise BadInputError(f"{proof}: not a proof written by `aisec audit prove`")
        note = (
            _read_text(checkpoint, "--checkpoint") if checkpoint is not None else document.get("checkpoint")
        )
        if not isinstance(note, str):
            raise BadInputError(f"{proof}: the proof carries no checkpoint; give one with --checkpoint")
        try:
            check_inclusion_proof(document, note, public_key)
        except (ProofError, CheckpointError) as error:
            console.print(f"[red]proof does not check[/red]: {plain(error)}", highlight=False)
            return EXIT_POLICY_FAILED
        console.print(
            f"[green]included[/green]: entry {document.get('index')} is in the signed tree of size "
            f"{document.get('tree_size')}",
            highlight=False,
        )
        return EXIT_OK

    guarded(run)


@audit_app.command("checkpoint")
def checkpoint_command(
    log: _LOG,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write it here.")] = None,
) -> None:
    """Print the log's latest signed checkpoint: keep it apart from the log (or publish it), and later
    `aisec audit verify LOG --checkpoint FILE` proves the log was neither rewritten nor truncated since."""

    def run() -> int:
        from aisec.defend.auditability.audit_log.log import open_store

        store = open_store(log, create=False)
        try:
            checkpoints = store.checkpoints()
        finally:
            store.close()
        if not checkpoints:
            raise BadInputError(f"{log}: the log has no checkpoint yet")
        _emit(checkpoints[-1].note, output, f"the checkpoint of size {checkpoints[-1].size}")
        return EXIT_OK

    guarded(run)


def _emit(text: str, output: Path | None, what: str) -> None:
    """Print `text` on standard output, or write it atomically to `output` and say so."""
    if output is None:
        sys.stdout.write(text)
        return
    from aisec.core.atomic import write_atomic

    write_atomic(output, text)
    console.print(f"wrote {what} to {plain(output)}")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"{what} {path}: cannot read it ({error})") from None


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
