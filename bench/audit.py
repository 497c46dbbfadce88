"""Audit log benchmark: appends per second and the time to verify a log, each against its floor, in one run.

Appends: `AuditLog.append` of a realistic entry (about 700 bytes: command, hashes of arguments, model, data and
reports, verdict and findings), one transaction each, a signed checkpoint every 1,000 entries; its floor is a
plain SQLite table in the same mode (WAL, synchronous=NORMAL) taking one INSERT per transaction of a row of the
same size (seq, the same bytes, a 32-byte hash). Verification: `verify_log` of a log of --entries entries
(built by a bulk path here, through the store's transactions: the same rows and signed checkpoints every 1,000
entries that AuditLog writes, verified once before timing); its floor is reading the same rows in order and
SHA-256-hashing each entry. Each figure is the median of --repeats runs. Targets: appends >= 10,000/s;
verification of 1,000,000 entries < 10 s.

    .venv/bin/python bench/audit.py [--entries 1000000] [--repeats 5]
Results are recorded in docs/benchmarks.md ("Audit log").
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisec.defend.auditability.audit_log.checkpoint import Checkpoint, sign_checkpoint
from aisec.defend.auditability.audit_log.entry import encode_entry
from aisec.defend.auditability.audit_log.keys import public_key_bytes
from aisec.defend.auditability.audit_log.log import FORMAT_VERSION, AuditLog, previous_checkpoint_line
from aisec.defend.auditability.audit_log.merkle import CompactRange, leaf_hash
from aisec.defend.auditability.audit_log.sqlite_store import SqliteStore
from aisec.defend.auditability.audit_log.store import LogMeta, StoredCheckpoint, StoredEntry
from aisec.defend.auditability.audit_log.verify import verify_log

CHECKPOINT_EVERY = 1000
APPENDS_TIMED = 20_000  # appends per timed run (fewer when --entries is smaller)
BULK_BATCH = 10_000  # entries per transaction when building the log to verify
TARGET_APPENDS_PER_S = 10_000
TARGET_VERIFY_S = 10.0


def entry_fields(run: int) -> dict[str, Any]:
    """An entry as `aisec assess` writes one: hashes and figures, no data."""
    return {
        "command": "assess",
        "arguments_sha256": hashlib.sha256(b"args%d" % run).hexdigest(),
        "tool": "aisec",
        "tool_version": "0.9.0",
        "time": "2026-12-04T11:00:00.000+00:00",
        "user": "analyst",
        "host": "build-runner-07",
        "plan_sha256": hashlib.sha256(b"plan").hexdigest(),
        "model": {"source": "models/classifier.pt", "sha256": hashlib.sha256(b"model%d" % run).hexdigest()},
        "data": {"name": "holdout", "samples": 1000, "sha256": hashlib.sha256(b"data").hexdigest()},
        "verdict": "passed" if run % 7 else "failed",
        "findings": [
            {
                "rule": "AISEC-EVASION-001",
                "severity": "high",
                "breaks_policy": run % 7 == 0,
                "figure": 0.4321,
            },
            {"rule": "AISEC-INFERENCE-002", "severity": "low", "breaks_policy": False, "figure": 0.5123},
        ],
        "reports": [{"path": "out/report.json", "sha256": hashlib.sha256(b"report%d" % run).hexdigest()}],
    }


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def time_appends(folder: Path, key: Ed25519PrivateKey, count: int, repeat: int) -> float:
    """Seconds for `count` AuditLog.append calls on a new log (one transaction each)."""
    path = folder / f"appends-{repeat}.db"
    entries = [entry_fields(run) for run in range(count)]
    log = AuditLog.open(path, key, create=True, checkpoint_every=CHECKPOINT_EVERY)
    start = time.perf_counter()
    for fields in entries:
        log.append(fields)
    elapsed = time.perf_counter() - start
    log.close()
    result = verify_log(path)
    assert result.ok and result.entries == count, result
    return elapsed


def time_plain_inserts(folder: Path, count: int, repeat: int) -> float:
    """Seconds for `count` single-row transactions into a plain SQLite table in the same mode, same row size."""
    path = folder / f"plain-{repeat}.db"
    rows = [(seq, encode_entry(seq, entry_fields(seq)), bytes(32)) for seq in range(count)]
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(
        "CREATE TABLE rows (seq INTEGER PRIMARY KEY, content BLOB NOT NULL, leaf BLOB NOT NULL)"
    )
    start = time.perf_counter()
    for row in rows:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO rows (seq, content, leaf) VALUES (?, ?, ?)", row)
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def build_log(path: Path, key: Ed25519PrivateKey, count: int) -> None:
    """A log of `count` entries with a signed checkpoint every CHECKPOINT_EVERY entries and at the end, written
    BULK_BATCH entries per transaction: the rows AuditLog writes, without a transaction per entry."""
    origin = "aisec.audit/0123456789abcdef"
    store = SqliteStore(path, create=True)
    store.initialise(
        LogMeta(origin, origin, public_key_bytes(key), FORMAT_VERSION, "2026-12-04T11:00:00+00:00")
    )
    tree, previous = CompactRange(), 0

    def sign(transaction: Any) -> None:
        nonlocal previous
        checkpoint = Checkpoint(origin, tree.size, tree.root(), (previous_checkpoint_line(previous),))
        note = sign_checkpoint(checkpoint, origin, key)
        transaction.insert_checkpoint(StoredCheckpoint(tree.size, note, tree.to_bytes()))
        previous = tree.size

    for batch_start in range(0, count, BULK_BATCH):
        with store.writing() as transaction:
            for seq in range(batch_start, min(count, batch_start + BULK_BATCH)):
                content = encode_entry(seq, entry_fields(seq))
                leaf = leaf_hash(content)
                transaction.insert_entry(StoredEntry(seq, content, leaf))
                tree.append(leaf)
                if tree.size % CHECKPOINT_EVERY == 0:
                    sign(transaction)
            if tree.size == count and previous != count:
                sign(transaction)
    store.close()


def time_verify(path: Path, public_key: bytes, count: int) -> float:
    start = time.perf_counter()
    result = verify_log(path, public_key=public_key)
    elapsed = time.perf_counter() - start
    assert result.ok and result.entries == count and result.unsigned_tail == 0, result
    return elapsed


def time_read_and_hash(path: Path, count: int) -> float:
    """The floor of verification: read every entry in order and SHA-256 it, nothing else."""
    start = time.perf_counter()
    connection = sqlite3.connect(path)
    sha256 = hashlib.sha256
    hashed = 0
    for (content,) in connection.execute("SELECT content FROM entries ORDER BY seq"):
        sha256(b"\x00" + content).digest()
        hashed += 1
    connection.close()
    elapsed = time.perf_counter() - start
    assert hashed == count
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries in the log that is verified")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is reported)")
    arguments = parser.parse_args()
    if arguments.entries < 1 or arguments.repeats < 1:
        parser.error("--entries and --repeats must be positive")
    count, repeats = arguments.entries, arguments.repeats
    appends = min(count, APPENDS_TIMED)
    key = Ed25519PrivateKey.generate()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}"
    )
    with tempfile.TemporaryDirectory(prefix="aisec-audit-bench-") as folder_name:
        folder = Path(folder_name)
        runs = itertools.count()
        append_s = median_of(repeats, lambda: time_appends(folder, key, appends, next(runs)))
        plain_s = median_of(repeats, lambda: time_plain_inserts(folder, appends, next(runs)))
        for path in folder.iterdir():
            path.unlink()

        log = folder / "verify.db"
        start = time.perf_counter()
        build_log(log, key, count)
        build_s = time.perf_counter() - start
        size_mb = log.stat().st_size / 1e6
        verify_log(log)  # a cold first read, untimed
        verify_s = median_of(repeats, lambda: time_verify(log, public_key_bytes(key), count))
        floor_s = median_of(repeats, lambda: time_read_and_hash(log, count))

    append_rate, plain_rate = appends / append_s, appends / plain_s
    print(f"log to verify: {count:,} entries, {size_mb:,.0f} MB, built in {build_s:.1f} s (bulk, untimed)")
    print(f"median of {repeats} runs; appends timed over {appends:,} entries per run\n")
    rows = [
        ("what", "aisec", "floor", "ratio"),
        (
            "appends/s (a transaction each)",
            f"{append_rate:,.0f}",
            f"{plain_rate:,.0f} (plain SQLite insert)",
            f"{append_rate / plain_rate:.2f}",
        ),
        (
            f"verify {count:,} entries (s)",
            f"{verify_s:.2f}",
            f"{floor_s:.2f} (read + SHA-256)",
            f"{verify_s / floor_s:.2f}",
        ),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    print(
        f"target appends >= {TARGET_APPENDS_PER_S:,}/s: {'met' if append_rate >= TARGET_APPENDS_PER_S else 'MISSED'}"
    )
    if count == 1_000_000:
        print(
            f"target verify 1,000,000 < {TARGET_VERIFY_S:.0f} s: {'met' if verify_s < TARGET_VERIFY_S else 'MISSED'}"
        )
    else:
        print(f"(the verification target is for 1,000,000 entries; this run verified {count:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
