"""The tamper-evident audit log from Python: make a key, append entries, verify, prove one entry to a third
party, then show that a changed entry is caught (docs/audit.md).

    .venv/bin/python examples/audit_log.py [FOLDER]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

from aisec.defend.auditability.audit_log.keys import (
    generate_ed25519_key_pair,
    load_signing_key,
    load_verifying_key,
)
from aisec.defend.auditability.audit_log.log import AuditLog, check_inclusion_proof
from aisec.defend.auditability.audit_log.verify import verify_log


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    log_path, private, public = folder / "audit.db", folder / "audit.key", folder / "audit.pub"
    print("verifier key:", generate_ed25519_key_pair(private, public))

    # Three runs of a retraining job, each recorded with hashes and figures (never the data itself).
    with AuditLog.open(log_path, load_signing_key(private), create=True) as log:
        for run, accuracy in enumerate((0.981, 0.978, 0.983)):
            log.append(
                {"command": "retrain", "run": run, "model": {"sha256": f"{run:064x}"}, "accuracy": accuracy}
            )

    public_key = load_verifying_key(public)
    result = verify_log(log_path, public_key=public_key)
    print(f"verified: ok={result.ok}, {result.entries} entries, {result.checkpoints} checkpoints")

    # A proof that entry 1 is in the log, checked with nothing but the public key.
    proof = AuditLog.open(log_path).inclusion_proof(1)
    check_inclusion_proof(proof, proof["checkpoint"], public_key)
    print(f"entry 1 proven to be in the signed tree of size {proof['tree_size']}")

    # Someone with the file drops the database's guards and rewrites a figure: the log says which entry.
    with sqlite3.connect(log_path) as db:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f'DROP TRIGGER "{name}"')
        (content,) = db.execute("SELECT content FROM entries WHERE seq = 1").fetchone()
        db.execute("UPDATE entries SET content = ? WHERE seq = 1", (content.replace(b"0.978", b"0.998"),))
    result = verify_log(log_path, public_key=public_key)
    print(f"after the edit: ok={result.ok}, first bad entry {result.first_bad_entry}: {result.problem}")
    assert not result.ok and result.first_bad_entry == 1


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="aisec-audit-")))
