"""The audit log: appends, reopening, checkpoints, inclusion proofs, bad input, entry encoding, the SQLite file."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.checkpoint import CheckpointError, read_checkpoint
from aisec.defend.auditability.audit_log.entry import MAX_ENTRY_BYTES, decode_entry, encode_entry, seq_prefix
from aisec.defend.auditability.audit_log.keys import public_key_bytes
from aisec.defend.auditability.audit_log.log import AuditLog, check_inclusion_proof, open_store
from aisec.defend.auditability.audit_log.merkle import MerkleTree, ProofError, leaf_hash
from aisec.defend.auditability.audit_log.sqlite_store import APPLICATION_ID, FORMAT_VERSION, SqliteStore
from aisec.defend.auditability.audit_log.verify import verify_log

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def public(key: Ed25519PrivateKey) -> bytes:
    return public_key_bytes(key)


def fields(number: int) -> dict:
    return {"command": "scan", "run": number, "model": {"sha256": f"{number:064x}"}, "verdict": "safe"}


def build(path: Path, key: Ed25519PrivateKey, count: int, every: int = 7) -> None:
    with AuditLog.open(path, key, create=True, checkpoint_every=every) as log:
        for number in range(count):
            assert log.append(fields(number)) == number


def checkpoint_sizes(path: Path) -> list[int]:
    store = open_store(path, create=False)
    try:
        return [row.size for row in store.checkpoints()]
    finally:
        store.close()


def test_append_reopen_and_read_back(tmp_path, key, public):
    path = tmp_path / "audit.db"
    build(path, key, 10, every=1000)
    with AuditLog.open(path, key) as log:
        assert log.size == 10
        assert log.meta is not None and log.meta.origin.startswith("aisec.audit/")
        assert log.meta.public_key == public and log.meta.key_name == log.meta.origin
        assert [log.append(fields(number)) for number in range(10, 15)] == list(range(10, 15))
    store = open_store(path, create=False)
    rows = list(store.entries())
    assert [row.seq for row in rows] == list(range(15))
    for row in rows:
        assert row.leaf == leaf_hash(row.content)
        assert decode_entry(row.content) == {"seq": row.seq, **fields(row.seq)}
    assert [row.seq for row in store.entries(3, 6)] == [3, 4, 5]
    assert store.entry(14) == rows[14] and store.entry(15) is None
    store.close()
    result = verify_log(path, public_key=public)
    assert (result.ok, result.entries, result.checkpoints, result.unsigned_tail) == (True, 15, 2, 0)
    assert result.key_source == "given" and verify_log(path).key_source == "log"


def test_checkpoints_every_n_at_close_and_chained(tmp_path, key, public):
    path = tmp_path / "audit.db"
    build(path, key, 40, every=7)
    assert checkpoint_sizes(path) == [7, 14, 21, 28, 35, 40]
    with AuditLog.open(path, key, checkpoint_every=7) as log:
        assert log.checkpoint() is None  # one exists for size 40
    assert checkpoint_sizes(path) == [7, 14, 21, 28, 35, 40]
    store = open_store(path, create=False)
    notes = [read_checkpoint(row.note) for row in store.checkpoints()]
    store.close()
    assert [note.extensions for note in notes] == [
        (f"aisec-previous-checkpoint {size}",) for size in (0, 7, 14, 21, 28, 35)
    ]
    tree = MerkleTree(leaf_hash(encode_entry(number, fields(number))) for number in range(40))
    assert [note.root for note in notes] == [tree.root(size) for size in (7, 14, 21, 28, 35, 40)]
    assert verify_log(path, public_key=public).ok


def test_unsigned_tail_is_reported_and_signed_by_the_next_append(tmp_path, key, public):
    path = tmp_path / "audit.db"
    log = AuditLog.open(path, key, create=True, checkpoint_every=4)
    for number in range(6):
        log.append(fields(number))
    log.store.close()  # as a process that died before close(): no checkpoint over entries 4 and 5
    result = verify_log(path, public_key=public)
    assert result.ok and result.unsigned_tail == 2 and result.checkpoints == 1
    with AuditLog.open(path, key, checkpoint_every=4) as log:
        log.append(fields(6))
    result = verify_log(path, public_key=public)
    assert result.ok and result.unsigned_tail == 0 and checkpoint_sizes(path) == [4, 7]


def test_two_writers_in_one_process_reload_the_tree(tmp_path, key, public):
    """Each handle keeps its compact range in memory; when the other appended, it reloads it from the latest
    checkpoint's frontier and the leaves after it, so every checkpoint signs the right root."""
    path = tmp_path / "audit.db"
    first = AuditLog.open(path, key, create=True, checkpoint_every=3)
    second = AuditLog.open(path, key, checkpoint_every=5)
    for number in range(30):
        writer = first if number % 3 else second
        assert writer.append(fields(number)) == number
    first.close()
    second.close()
    result = verify_log(path, public_key=public)
    assert result.ok and result.entries == 30 and result.unsigned_tail == 0, result


def test_a_writer_does_not_resume_from_a_damaged_frontier(tmp_path, key, public):
    path = tmp_path / "audit.db"
    build(path, key, 10, every=4)  # checkpoints 4, 8, 10
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER checkpoints_no_update")
    connection.execute("UPDATE checkpoints SET frontier = zeroblob(length(frontier)) WHERE size = 10")
    connection.commit()
    connection.close()
    result = verify_log(path, public_key=public)
    assert not result.ok and "frontier" in (result.problem or "")
    with AuditLog.open(path, key, checkpoint_every=4) as log:
        log.append(fields(10))
        note = log.checkpoint()
    tree = MerkleTree(leaf_hash(encode_entry(number, fields(number))) for number in range(11))
    assert note is not None and read_checkpoint(note).root == tree.root()


def test_inclusion_proofs_check_for_every_entry(tmp_path, key, public):
    path = tmp_path / "audit.db"
    build(path, key, 40)
    log = AuditLog.open(path)
    proofs = [json.loads(json.dumps(log.inclusion_proof(seq))) for seq in range(40)]
    log.store.close()
    for seq, proof in enumerate(proofs):
        assert proof["index"] == seq and proof["tree_size"] == 40
        assert proof["leaf"].encode() == encode_entry(seq, fields(seq))
        check_inclusion_proof(proof, proof["checkpoint"], public)

    proof = proofs[13]
    forged_leaf = {**proof, "leaf": proof["leaf"].replace('"safe"', '"unsafe"')}
    moved = {**proof, "index": 12}
    hashes = list(proof["hashes"])
    hashes[0] = proofs[14]["hashes"][0] if proofs[14]["hashes"][0] != hashes[0] else hashes[1]
    for bad in (forged_leaf, moved, {**proof, "hashes": hashes}, {**proof, "hashes": hashes[:-1]}):
        with pytest.raises(ProofError):
            check_inclusion_proof(bad, bad["checkpoint"], public)
    with pytest.raises(CheckpointError):
        check_inclusion_proof(proof, proof["checkpoint"], public_key_bytes(Ed25519PrivateKey.generate()))
    with pytest.raises(BadInputError):
        check_inclusion_proof({**proof, "hashes": ["not base64!"]}, proof["checkpoint"], public)

    store = open_store(path, create=False)
    earlier = store.checkpoints()[2].note  # size 21
    store.close()
    with pytest.raises(ProofError, match="prove the entry again"):
        check_inclusion_proof(proof, earlier, public)


def test_proof_needs_a_checkpoint_over_the_entry(tmp_path, key):
    path = tmp_path / "audit.db"
    log = AuditLog.open(path, key, create=True, checkpoint_every=5)
    for number in range(7):
        log.append(fields(number))
    assert log.inclusion_proof(4)["tree_size"] == 5
    with pytest.raises(BadInputError, match="not yet covered"):
        log.inclusion_proof(5)
    for seq in (7, -1):
        with pytest.raises(BadInputError, match="no entry"):
            log.inclusion_proof(seq)
    log.close()
    assert AuditLog.open(path).inclusion_proof(6)["tree_size"] == 7


def test_wrong_key_is_bad_input(tmp_path, key, public):
    path = tmp_path / "audit.db"
    build(path, key, 3)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(BadInputError, match="is not the audit log's key") as raised:
        AuditLog.open(path, other)
    assert raised.value.args[0].count("fingerprint") == 2 and "\n" not in raised.value.args[0]
    reader = AuditLog.open(path)
    with pytest.raises(BadInputError, match="needs the log's signing key"):
        reader.append(fields(3))
    reader.close()  # without a key: nothing to sign, no error
    # Verifying against a key the log does not record: the log's checkpoints are not signed by it.
    result = verify_log(path, public_key=public_key_bytes(other))
    assert not result.ok and "not the key given" in (result.problem or "")
    with pytest.raises(BadInputError, match="32-byte"):
        verify_log(path, public_key=public[:31])
    assert verify_log(path, public_key=public).entries == 3


@pytest.mark.parametrize("kind", ["text", "sqlite", "empty-create-false"])
def test_not_an_aisec_log_is_bad_input_and_untouched(tmp_path, key, kind):
    path = tmp_path / "not-a-log.db"
    if kind == "text":
        path.write_text("these are my notes\n" * 100)
    elif kind == "sqlite":
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE things (name TEXT)")
            connection.execute("INSERT INTO things VALUES ('a thing')")
        connection.close()
    else:
        path.write_bytes(b"")
    before = path.read_bytes()
    message = "is not an aisec audit log"
    for attempt in (
        lambda: AuditLog.open(path, key, create=kind != "empty-create-false"),
        lambda: verify_log(path),
        lambda: open_store(str(path), create=False),
    ):
        with pytest.raises(BadInputError, match=message) as raised:
            attempt()
        assert str(path) in raised.value.args[0] and "\n" not in raised.value.args[0]
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["not-a-log.db"]


def test_missing_log_is_bad_input(tmp_path, key):
    with pytest.raises(BadInputError, match="no audit log at"):
        verify_log(tmp_path / "absent.db")
    with pytest.raises(BadInputError, match="no audit log at"):
        AuditLog.open(tmp_path / "absent.db", key)
    with pytest.raises(BadInputError, match="no such folder"):
        AuditLog.open(tmp_path / "no" / "folder.db", key, create=True)
    assert list(tmp_path.iterdir()) == []


def test_empty_log_verifies_and_is_an_aisec_file(tmp_path, key):
    path = tmp_path / "audit.db"
    AuditLog.open(path, key, create=True).close()
    result = verify_log(path)
    assert (result.ok, result.entries, result.checkpoints, result.origin) == (True, 0, 0, None)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert connection.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_triggers_reject_update_and_delete(tmp_path, key):
    path = tmp_path / "audit.db"
    build(path, key, 8)
    connection = sqlite3.connect(path)
    for statement in (
        "UPDATE entries SET content = x'00' WHERE seq = 1",
        "DELETE FROM entries WHERE seq = 7",
        "DELETE FROM checkpoints",
        "UPDATE meta SET origin = 'x'",
        "DELETE FROM meta",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(statement)
    connection.close()
    assert verify_log(path).ok


def test_checkpoint_from_another_log_is_bad_input(tmp_path, key, public):
    ours, same_key, other_key = tmp_path / "ours.db", tmp_path / "same-key.db", tmp_path / "other-key.db"
    build(ours, key, 10)
    build(same_key, key, 10)
    build(other_key, Ed25519PrivateKey.generate(), 10)
    notes = {}
    for path in (ours, same_key, other_key):
        store = open_store(path, create=False)
        notes[path] = store.checkpoints()[0].note
        store.close()
    assert verify_log(ours, public_key=public, checkpoints=[notes[ours]]).ok
    for foreign in (same_key, other_key):
        with pytest.raises(BadInputError, match="from another log") as raised:
            verify_log(ours, public_key=public, checkpoints=[notes[foreign]])
        assert "\n" not in raised.value.args[0]
    with pytest.raises(BadInputError, match="not a signed checkpoint"):
        verify_log(ours, checkpoints=["a shopping list\n"])


def test_kept_checkpoint_passes_while_the_log_grows(tmp_path, key, public):
    path = tmp_path / "audit.db"
    build(path, key, 10, every=4)
    store = open_store(path, create=False)
    kept = [row.note for row in store.checkpoints()]  # sizes 4, 8, 10
    store.close()
    with AuditLog.open(path, key, checkpoint_every=4) as log:
        for number in range(10, 23):
            log.append(fields(number))
    result = verify_log(path, public_key=public, checkpoints=kept)
    assert result.ok and result.entries == 23


def test_verify_an_open_store(tmp_path, key):
    path = tmp_path / "audit.db"
    build(path, key, 5)
    store = SqliteStore(path, create=False)
    assert verify_log(store).ok and store.size() == 5  # the caller's store stays open
    store.close()


def test_entry_encoding_is_canonical():
    content = encode_entry(3, {"verdict": "sûr", "b": [1, 2.5, None, True], "a": {"z": 1, "y": "x"}})
    assert content == '{"seq":3,"a":{"y":"x","z":1},"b":[1,2.5,null,true],"verdict":"sûr"}'.encode()
    assert content.startswith(seq_prefix(3)) and seq_prefix(3) == b'{"seq":3,'
    assert encode_entry(3, {"a": {"y": "x", "z": 1}, "verdict": "sûr", "b": [1, 2.5, None, True]}) == content
    assert decode_entry(content) == {
        "seq": 3,
        "a": {"y": "x", "z": 1},
        "b": [1, 2.5, None, True],
        "verdict": "sûr",
    }


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"seq": 4, "command": "scan"}, "named 'seq'"),
        ({}, "at least one field"),
        ({"figure": math.nan}, "JSON cannot hold"),
        ({"figure": math.inf}, "JSON cannot hold"),
        ({"weights": b"\x00\x01"}, "JSON cannot hold"),
        ({"labels": {1, 2}}, "JSON cannot hold"),
        ({"text": "\ud800"}, "JSON cannot hold"),
        ({3: "three"}, "field names are text"),
        ({"data": "x" * MAX_ENTRY_BYTES}, "more than the 65536 allowed"),
    ],
)
def test_entry_validation(tmp_path, key, bad, match):
    with pytest.raises(BadInputError, match=match):
        encode_entry(0, bad)
    path = tmp_path / "audit.db"
    log = AuditLog.open(path, key, create=True, checkpoint_every=2)
    log.append(fields(0))
    with pytest.raises(BadInputError, match=match):
        log.append(bad)
    assert log.size == 1  # the failed append wrote nothing and the log goes on
    assert log.append(fields(1)) == 1
    log.close()
    assert verify_log(path).ok


def test_decode_entry_refuses_what_is_not_an_object():
    for content in (b"[1, 2]", b"\xff\xfe", b'{"seq":1,'):
        with pytest.raises(BadInputError):
            decode_entry(content)


def test_importing_the_log_loads_no_cryptography_or_driver():
    code = (
        "import sys\n"
        "import aisec.defend.auditability.audit_log\n"
        "import aisec.defend.auditability.audit_log.log, aisec.defend.auditability.audit_log.verify\n"
        "loaded = sorted(m for m in ('cryptography', 'pg8000') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bench_runs_small(tmp_path):
    """bench/audit.py end to end at a size that takes seconds (the real run is 1,000,000 entries)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "audit.py"), "--entries", "2000", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "appends/s" in result.stdout and "verify" in result.stdout
