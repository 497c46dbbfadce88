"""The audit trail of the commands: one entry in the tamper-evident log per `assess`, `inspect`, `scan`, `sign`,
`verify` and `bom` run that completed, when `--audit-log` (or AISEC_AUDIT_LOG) names a log (docs/audit.md).

The log is opened, and its signing key checked, before the command does anything, so that a wrong log or key
is bad input (exit 2) with nothing written. The entry is appended when the command has finished (exit 0 or 1),
followed by a signed checkpoint: who ran what (user, host, the command and the SHA-256 of its arguments), with
which tool version, on which model and data (hashes), what it found (verdict, headline figures) and which
reports it wrote (hashes). A run that fails on bad input or an internal error appends nothing.

No typer here: `aisec scan`'s fast path (`scan.py`) records through this module too.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisec.core.errors import BadInputError
from aisec.core.version import __version__

if TYPE_CHECKING:
    from aisec.defend.auditability.audit_log.log import AuditLog

LOG_ENV, KEY_ENV = "AISEC_AUDIT_LOG", "AISEC_AUDIT_KEY"


class AuditTrail:
    """The log a command appends its entry to; `AuditTrail.open(None, ...)` is the trail of a run without a
    log, whose `record` does nothing."""

    def __init__(self, log: AuditLog | None) -> None:
        self._log = log

    @classmethod
    def open(cls, location: str | None, key: Path | None) -> AuditTrail:
        """Open (or create) the log and check the key signs it; BadInputError (exit 2) for a log that is not an
        aisec log, a missing key or a key of the wrong type or log."""
        location = location if location is not None else os.environ.get(LOG_ENV) or None
        if location is None:
            return cls(None)
        key = key if key is not None else (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
        if key is None:
            raise BadInputError(
                f"--audit-log {location}: appending needs the log's signing key: --audit-key PATH or {KEY_ENV} "
                "(make one with `aisec keygen --type ed25519 PRIVATE PUBLIC`)"
            )
        from aisec.defend.auditability.audit_log.keys import load_signing_key
        from aisec.defend.auditability.audit_log.log import AuditLog

        return cls(AuditLog.open(location, load_signing_key(key), create=True))

    @property
    def enabled(self) -> bool:
        return self._log is not None

    def record(self, command: str, arguments: Mapping[str, Any], outcome: Mapping[str, Any]) -> int | None:
        """Append the entry of a finished command and sign a checkpoint over it; its sequence number."""
        if self._log is None:
            return None
        entry = {
            "command": command,
            "arguments_sha256": arguments_sha256(arguments),
            "tool": "aisec",
            "tool_version": __version__,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "user": _user(),
            "host": socket.gethostname(),
            **outcome,
        }
        try:
            seq = self._log.append(entry)
        finally:
            self._log.close()
        return seq


def arguments_sha256(arguments: Mapping[str, Any]) -> str:
    """The SHA-256 of a command's arguments as canonical JSON (paths as text), so two runs with the same
    arguments have the same hash."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the log says so rather than guessing
        return None
