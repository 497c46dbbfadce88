"""The audit log across real processes: a writer killed with SIGKILL mid-append leaves whole entries only, and a
log that verifies; writers in several processes appending at once all land, each in its own order."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from aisec.defend.auditability.audit_log.entry import decode_entry
from aisec.defend.auditability.audit_log.keys import (
    generate_ed25519_key_pair,
    load_signing_key,
    load_verifying_key,
)
from aisec.defend.auditability.audit_log.log import AuditLog, open_store
from aisec.defend.auditability.audit_log.verify import verify_log

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork semantics are POSIX")

# A writer: appends {"writer": W, "n": 0, 1, ...} (up to COUNT entries, forever when COUNT is 0) after the file
# GO exists, having written READY first.
WRITER = """
import sys, time
from pathlib import Path
from aisec.defend.auditability.audit_log.keys import load_signing_key
from aisec.defend.auditability.audit_log.log import AuditLog

log_path, key_path, writer, count, ready, go = sys.argv[1:]
log = AuditLog.open(log_path, load_signing_key(key_path), create=True, checkpoint_every=50)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
number = 0
while number < int(count) or int(count) == 0:
    log.append({"writer": int(writer), "n": number, "padding": "x" * 150})
    number += 1
log.close()
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("keys")
    generate_ed25519_key_pair(folder / "audit.key", folder / "audit.pub")
    return folder / "audit.key", load_verifying_key(folder / "audit.pub")


def start_writer(log: Path, key: Path, writer: int, count: int, folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(log),
            str(key),
            str(writer),
            str(count),
            str(folder / f"ready-{writer}"),
            str(folder / "go"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def stored_size(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute("SELECT coalesce(max(seq) + 1, 0) FROM entries").fetchone()[0]
    finally:
        connection.close()


def entries_by_writer(path: Path) -> dict[int, list[int]]:
    store = open_store(path, create=False)
    try:
        numbers: dict[int, list[int]] = defaultdict(list)
        for entry in store.entries():
            fields = decode_entry(entry.content)  # every entry decodes whole
            assert fields["seq"] == entry.seq and fields["padding"] == "x" * 150
            numbers[fields["writer"]].append(fields["n"])
        return numbers
    finally:
        store.close()


def test_kill_9_during_appends_leaves_a_log_that_verifies(tmp_path, keys):
    key, public = keys
    log = tmp_path / "audit.db"
    unsigned = []
    for writer, extra in enumerate((137, 251, 389, 433, 517)):  # kill after a few hundred, at varied moments
        (tmp_path / "go").unlink(missing_ok=True)
        start = stored_size(log) if log.exists() else 0
        process = start_writer(log, key, writer, 0, tmp_path)
        wait_for(
            lambda w=writer, p=process: (tmp_path / f"ready-{w}").exists() or p.poll() is not None,
            60,
            "the writer",
        )
        assert process.poll() is None, process.communicate()[1].decode()
        (tmp_path / "go").touch()
        wait_for(lambda s=start, e=extra: stored_size(log) >= s + e, 60, f"{extra} appends")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL

        result = verify_log(log, public_key=public)
        assert result.ok, result.problem
        unsigned.append(result.unsigned_tail)
        numbers = entries_by_writer(log)
        assert len(numbers[writer]) >= extra
        for earlier in range(writer + 1):  # each writer's entries are 0, 1, 2, ... with none half there
            assert numbers[earlier] == list(range(len(numbers[earlier])))

    with AuditLog.open(log, load_signing_key(key)) as audit_log:  # the next writer opens and appends
        audit_log.append({"writer": 99, "n": 0, "padding": "x" * 150})
    result = verify_log(log, public_key=public)
    assert (
        result.ok
        and result.unsigned_tail == 0
        and result.entries == sum(map(len, entries_by_writer(log).values()))
    )
    print(f"entries not yet under a checkpoint at each kill: {unsigned}")


@pytest.mark.parametrize("writers", [4])
def test_writers_in_several_processes_all_land(tmp_path, keys, writers):
    """Four processes create the same new log and append 200 entries each at once."""
    key, public = keys
    log = tmp_path / "audit.db"
    processes = [start_writer(log, key, writer, 200, tmp_path) for writer in range(writers)]
    wait_for(
        lambda: all(
            (tmp_path / f"ready-{w}").exists() or processes[w].poll() is not None for w in range(writers)
        ),
        60,
        "the writers",
    )
    (tmp_path / "go").touch()
    for process in processes:
        _, error = process.communicate(timeout=60)
        assert process.returncode == 0, error.decode()

    result = verify_log(log, public_key=public)
    assert result.ok and result.entries == 200 * writers and result.unsigned_tail == 0, result
    numbers = entries_by_writer(log)
    assert {writer: numbers[writer] for writer in range(writers)} == {
        w: list(range(200)) for w in range(writers)
    }
    store = open_store(log, create=False)
    order = [decode_entry(entry.content)["writer"] for entry in store.entries()]
    store.close()
    switches = sum(first != second for first, second in zip(order, order[1:], strict=False))
    print(f"{writers} writers: the log switches writer {switches} times")
