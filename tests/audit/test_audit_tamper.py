"""Mutation tests: every change an attacker with write access to the SQLite file can make is detected.

A log of 40 entries, checkpoints every 7 entries and at close (sizes 7, 14, 21, 28, 35, 40), is copied once per
mutation; the copy is changed through sqlite3 with the append-only triggers dropped first, as someone holding
the file would, and then verified, with the public key given and with the key the log records. Per kind, the
number detected must equal the number applied (100 %), and wherever the stored leaf hash was left as it was,
`first_bad_entry` must name the changed entry exactly.

What cannot be detected, and is asserted as such so that the limits stay documented:
- removing the last entries together with the checkpoints that covered them: the log then looks like its own
  past; only a checkpoint the user kept apart from the log (`checkpoints=[...]`) catches it, which is tested;
- appending an entry after the last one: it is reported as not covered by a checkpoint (`unsigned_tail`);
- removing the last checkpoint: its entries are reported as unsigned, not lost;
- a log rewritten and re-signed with another key recorded in its meta row: caught only against the key the
  user holds (`public_key=`); one re-signed with the log's own key (a stolen key) is not tested as detectable.
"""

from __future__ import annotations

import base64
import random
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.checkpoint import Checkpoint, read_checkpoint, sign_checkpoint
from aisec.defend.auditability.audit_log.entry import decode_entry, encode_entry, seq_prefix
from aisec.defend.auditability.audit_log.keys import public_key_bytes
from aisec.defend.auditability.audit_log.log import AuditLog, open_store
from aisec.defend.auditability.audit_log.merkle import CompactRange, leaf_hash
from aisec.defend.auditability.audit_log.sqlite_store import CHECKPOINTS_TABLE, ENTRIES_TABLE, META_TABLE
from aisec.defend.auditability.audit_log.verify import Verification, verify_log

ENTRIES, EVERY = 40, 7
SIZES = [7, 14, 21, 28, 35, 40]


@dataclass(frozen=True)
class Original:
    data: bytes
    contents: list[bytes]
    notes: list[str]
    origin: str
    key: Ed25519PrivateKey
    public: bytes


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    path = tmp_path_factory.mktemp("original") / "audit.db"
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(path, key, create=True, checkpoint_every=EVERY) as log:
        for number in range(ENTRIES):
            log.append(
                {
                    "command": ("assess", "scan", "inspect", "sign", "verify", "bom")[number % 6],
                    "model": {"sha256": f"{number * 7919:064x}"},
                    "verdict": "passed" if number % 3 else "failed",
                    "figures": {"robust_accuracy": round(0.5 + number / 100, 4)},
                    "user": "analyst",
                }
            )
    store = open_store(path, create=False)
    contents = [entry.content for entry in store.entries()]
    notes = [row.note for row in store.checkpoints()]
    origin = store.meta().origin  # type: ignore[union-attr]
    store.close()
    assert [read_checkpoint(note).size for note in notes] == SIZES
    return Original(path.read_bytes(), contents, notes, origin, key, public_key_bytes(key))


@dataclass(frozen=True)
class Mutation:
    label: str
    apply: Callable[[sqlite3.Connection], None]
    entry: int | None = None  # the (first) entry changed, when one is
    exact: bool = False  # first_bad_entry must be `entry`
    kept: tuple[str, ...] = ()  # checkpoints the user kept apart from the log


def tamper(original: Original, path: Path, mutation: Mutation) -> None:
    """A fresh copy of the log at `path`, changed by `mutation` as an attacker would: triggers dropped first."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(original.data)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous = OFF")
    for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        connection.execute(f"DROP TRIGGER {name}")
    connection.execute("BEGIN")
    mutation.apply(connection)
    connection.execute("COMMIT")
    connection.close()


# ----------------------------------------------------------------------------------------------- the edits


def set_entry(connection: sqlite3.Connection, seq: int, content: bytes, *, recompute: bool) -> None:
    if recompute:
        connection.execute(
            f"UPDATE {ENTRIES_TABLE} SET content = ?, leaf = ? WHERE seq = ?",
            (content, leaf_hash(content), seq),
        )
    else:
        connection.execute(f"UPDATE {ENTRIES_TABLE} SET content = ? WHERE seq = ?", (content, seq))


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def renumbered(content: bytes, seq: int) -> bytes:
    """The entry's bytes as if it were entry `seq` (what an attacker writes to hide a move)."""
    return seq_prefix(seq) + content[content.index(b",") + 1 :]


def shift(connection: sqlite3.Connection, start: int, delta: int) -> None:
    """Add delta to every seq >= start, in two steps so that no seq collides on the way."""
    connection.execute(f"UPDATE {ENTRIES_TABLE} SET seq = seq + 1000000 WHERE seq >= ?", (start,))
    connection.execute(f"UPDATE {ENTRIES_TABLE} SET seq = seq - 1000000 + ? WHERE seq >= 1000000", (delta,))


def checkpoint_ids(connection: sqlite3.Connection) -> list[int]:
    return [row[0] for row in connection.execute(f"SELECT id FROM {CHECKPOINTS_TABLE} ORDER BY id")]


def set_note(connection: sqlite3.Connection, position: int, note: str, size: int | None = None) -> None:
    row_id = checkpoint_ids(connection)[position]
    connection.execute(f"UPDATE {CHECKPOINTS_TABLE} SET note = ? WHERE id = ?", (note, row_id))
    if size is not None:
        connection.execute(f"UPDATE {CHECKPOINTS_TABLE} SET size = ? WHERE id = ?", (size, row_id))


def edit_line(note: str, line: int, new: str) -> str:
    """The note with one body line replaced and its signature lines kept (so the signature no longer fits)."""
    body, signatures = note.split("\n\n", 1)
    lines = body.split("\n")
    lines[line] = new
    return "\n".join(lines) + "\n\n" + signatures


# ------------------------------------------------------------------------------------------- the mutations


def entry_offsets(content: bytes) -> list[int]:
    """One offset in each part of an entry: the opening brace, the "seq" key, the last digit of the seq, the
    comma after it, the first field's first byte, the middle, a byte inside a hash, the closing brace."""
    prefix = content.index(b",") + 1
    hash_offset = content.index(b'"sha256":"') + len(b'"sha256":"') + 10
    return sorted({0, 3, prefix - 2, prefix - 1, prefix, len(content) // 2, hash_offset, len(content) - 1})


def byte_flips(original: Original, *, recompute: bool) -> list[Mutation]:
    mutations = []
    for seq, content in enumerate(original.contents):
        for offset in entry_offsets(content):
            changed = flipped(content, offset)
            mutations.append(
                Mutation(
                    f"entry {seq} byte {offset}",
                    lambda c, seq=seq, changed=changed: set_entry(c, seq, changed, recompute=recompute),
                    seq,
                    exact=not recompute,
                )
            )
    return mutations


def leaf_flips(original: Original) -> list[Mutation]:
    mutations = []
    for seq, content in enumerate(original.contents):
        for offset in (0, 31):
            leaf = flipped(leaf_hash(content), offset)

            def set_leaf(connection: sqlite3.Connection, seq: int = seq, leaf: bytes = leaf) -> None:
                connection.execute(f"UPDATE {ENTRIES_TABLE} SET leaf = ? WHERE seq = ?", (leaf, seq))

            mutations.append(Mutation(f"leaf {seq} byte {offset}", set_leaf, seq, exact=True))
    return mutations


def deletions(original: Original, *, renumber: bool) -> list[Mutation]:
    def delete(connection: sqlite3.Connection, seq: int) -> None:
        connection.execute(f"DELETE FROM {ENTRIES_TABLE} WHERE seq = ?", (seq,))
        if renumber:
            shift(connection, seq + 1, -1)

    return [
        Mutation(f"delete {seq}", lambda c, seq=seq: delete(c, seq), seq, exact=True)
        for seq in range(ENTRIES)
    ]


def swaps(original: Original, *, with_seq: bool) -> list[Mutation]:
    """Swap entries seq and seq + 1: their rows' bytes and leaf hashes (the seqs inside the bytes then give it
    away), or with the seqs inside rewritten and the leaf hashes recomputed (only the checkpoints catch that)."""
    mutations = []
    for seq in range(ENTRIES - 1):
        first, second = original.contents[seq], original.contents[seq + 1]
        if with_seq:
            first, second = renumbered(first, seq + 1), renumbered(second, seq)

        def swap(
            connection: sqlite3.Connection, seq: int = seq, first: bytes = first, second: bytes = second
        ) -> None:
            set_entry(connection, seq, second, recompute=True)
            set_entry(connection, seq + 1, first, recompute=True)

        mutations.append(Mutation(f"swap {seq}, {seq + 1}", swap, seq, exact=not with_seq))
    return mutations


def insertions(original: Original, *, renumber_contents: bool) -> list[Mutation]:
    """Insert a forged entry (its own seq, a correct leaf hash) at each position before the last entry,
    moving the later ones up; with renumber_contents the later entries' bytes and leaf hashes are rewritten to
    their new positions as well."""
    mutations = []
    for seq in range(ENTRIES):
        forged = encode_entry(seq, {"command": "assess", "verdict": "passed", "model": {"sha256": "0" * 64}})

        def insert(connection: sqlite3.Connection, seq: int = seq, forged: bytes = forged) -> None:
            shift(connection, seq, +1)
            connection.execute(
                f"INSERT INTO {ENTRIES_TABLE} (seq, content, leaf) VALUES (?, ?, ?)",
                (seq, forged, leaf_hash(forged)),
            )
            if renumber_contents:
                for later in range(seq, ENTRIES):
                    set_entry(
                        connection, later + 1, renumbered(original.contents[later], later + 1), recompute=True
                    )

        mutations.append(Mutation(f"insert at {seq}", insert, seq, exact=not renumber_contents))
    return mutations


def truncations(original: Original, *, drop_checkpoints: bool) -> list[Mutation]:
    """Drop the last k entries for every k; with drop_checkpoints also the checkpoints that covered them, and
    the user's kept checkpoint (the last one, of all 40 entries) is what catches it."""

    def truncate(connection: sqlite3.Connection, keep: int) -> None:
        connection.execute(f"DELETE FROM {ENTRIES_TABLE} WHERE seq >= ?", (keep,))
        if drop_checkpoints:
            connection.execute(f"DELETE FROM {CHECKPOINTS_TABLE} WHERE size > ?", (keep,))

    kept = (original.notes[-1],) if drop_checkpoints else ()
    return [
        Mutation(f"truncate to {keep}", lambda c, keep=keep: truncate(c, keep), keep, exact=True, kept=kept)
        for keep in range(ENTRIES)
    ]


def checkpoint_replacements(original: Original) -> list[Mutation]:
    other_key = Ed25519PrivateKey.generate()
    mutations = []
    for position, note in enumerate(original.notes):
        checkpoint = read_checkpoint(note)
        size_line, root_line = str(checkpoint.size), base64.b64encode(checkpoint.root).decode()
        other_root = base64.b64encode(flipped(checkpoint.root, 5)).decode()
        forged_root = Checkpoint(
            checkpoint.origin, checkpoint.size, flipped(checkpoint.root, 5), checkpoint.extensions
        )
        smaller = Checkpoint(
            checkpoint.origin, checkpoint.size - 1, checkpoint.root, checkpoint.extensions
        )  # the signed size moves, the root stays that of the true size
        replacements = {
            "signed by another key under the log's name": (
                sign_checkpoint(checkpoint, checkpoint.origin, other_key),
                None,
            ),
            "signed by another key under another name": (
                sign_checkpoint(checkpoint, "example.com/other-log", other_key),
                None,
            ),
            "root changed": (edit_line(note, 2, other_root), None),
            "size changed": (edit_line(note, 1, str(checkpoint.size + 1)), checkpoint.size + 1),
            "root changed and re-signed by the log's key": (
                sign_checkpoint(forged_root, checkpoint.origin, original.key),
                None,
            ),
            "size changed and re-signed by the log's key": (
                sign_checkpoint(smaller, checkpoint.origin, original.key),
                checkpoint.size - 1,
            ),
        }
        assert size_line in note and root_line in note
        for label, (replacement, size) in replacements.items():
            mutations.append(
                Mutation(
                    f"checkpoint {position}: {label}",
                    lambda c, p=position, r=replacement, s=size: set_note(c, p, r, s),
                )
            )
        mutations.append(
            Mutation(
                f"checkpoint {position}: frontier changed",
                lambda c, p=position: c.execute(
                    f"UPDATE {CHECKPOINTS_TABLE} SET frontier = zeroblob(length(frontier)) WHERE id = ?",
                    (checkpoint_ids(c)[p],),
                ),
            )
        )
        if position < len(original.notes) - 1:  # the last one removed leaves an unsigned tail: asserted below
            mutations.append(
                Mutation(
                    f"checkpoint {position}: deleted",
                    lambda c, p=position: c.execute(
                        f"DELETE FROM {CHECKPOINTS_TABLE} WHERE id = ?", (checkpoint_ids(c)[p],)
                    ),
                )
            )

    def swap_rows(connection: sqlite3.Connection, position: int) -> None:
        first, second = checkpoint_ids(connection)[position : position + 2]
        rows = {
            row_id: connection.execute(
                f"SELECT size, note, frontier FROM {CHECKPOINTS_TABLE} WHERE id = ?", (row_id,)
            ).fetchone()
            for row_id in (first, second)
        }
        for row_id, other in ((first, second), (second, first)):
            connection.execute(
                f"UPDATE {CHECKPOINTS_TABLE} SET size = ?, note = ?, frontier = ? WHERE id = ?",
                (*rows[other], row_id),
            )

    mutations += [
        Mutation(f"checkpoints {position}, {position + 1} swapped", lambda c, p=position: swap_rows(c, p))
        for position in range(len(original.notes) - 1)
    ]
    return mutations


def meta_changes(original: Original) -> list[Mutation]:
    other = public_key_bytes(Ed25519PrivateKey.generate())
    return [
        Mutation(
            "origin changed",
            lambda c: c.execute(f"UPDATE {META_TABLE} SET origin = 'aisec.audit/0000000000000000'"),
        ),
        Mutation("key replaced", lambda c: c.execute(f"UPDATE {META_TABLE} SET public_key = ?", (other,))),
        Mutation("meta deleted", lambda c: c.execute(f"DELETE FROM {META_TABLE}")),
        Mutation("format changed", lambda c: c.execute(f"UPDATE {META_TABLE} SET format_version = 2")),
    ]


KINDS: dict[str, Callable[[Original], list[Mutation]]] = {
    "flip a byte of an entry": lambda o: byte_flips(o, recompute=False),
    "flip a byte of an entry, leaf hash recomputed": lambda o: byte_flips(o, recompute=True),
    "flip a byte of a stored leaf hash": leaf_flips,
    "delete an entry": lambda o: deletions(o, renumber=False),
    "delete an entry and renumber the later ones": lambda o: deletions(o, renumber=True),
    "swap adjacent entries": lambda o: swaps(o, with_seq=False),
    "swap adjacent entries with their seqs": lambda o: swaps(o, with_seq=True),
    "insert an entry": lambda o: insertions(o, renumber_contents=False),
    "insert an entry and renumber the later ones": lambda o: insertions(o, renumber_contents=True),
    "truncate": lambda o: truncations(o, drop_checkpoints=False),
    "truncate with the checkpoints, against a kept checkpoint": lambda o: truncations(
        o, drop_checkpoints=True
    ),
    "replace, delete or reorder a checkpoint, or change its frontier": checkpoint_replacements,
    "change the meta row": meta_changes,
}


def names_entry(result: Verification, entry: int) -> bool:
    """The result points at `entry`: names it, or names a range of entries holding it."""
    if result.first_bad_entry is not None:
        return result.first_bad_entry <= entry
    span = re.search(r"entries (\d+) to (\d+)", result.problem or "")
    return span is None or int(span.group(1)) <= entry <= int(span.group(2))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_mutation_is_detected(original, tmp_path, kind):
    mutations = KINDS[kind](original)
    path = tmp_path / "tampered.db"
    detected, exact, failures = 0, 0, []
    for mutation in mutations:
        tamper(original, path, mutation)
        results = [
            verify_log(path, public_key=public_key, checkpoints=mutation.kept)
            for public_key in (original.public, None)
        ]
        if all(not result.ok for result in results):
            detected += 1
        else:
            failures.append(f"{mutation.label}: not detected")
            continue
        if mutation.entry is not None:
            if mutation.exact and any(result.first_bad_entry != mutation.entry for result in results):
                failures.append(
                    f"{mutation.label}: named {[r.first_bad_entry for r in results]} ({results[0].problem})"
                )
            elif not all(names_entry(result, mutation.entry) for result in results):
                failures.append(f"{mutation.label}: points elsewhere ({results[0].problem})")
            else:
                exact += mutation.exact
    assert mutations and detected == len(mutations), failures[:10]
    assert not failures, failures[:10]
    print(f"{kind}: {detected}/{len(mutations)} detected, {exact} named exactly")


def test_what_cannot_be_detected_without_a_kept_checkpoint(original, tmp_path):
    path = tmp_path / "tampered.db"
    for mutation in truncations(original, drop_checkpoints=True):
        tamper(original, path, mutation)
        result = verify_log(path, public_key=original.public)
        assert result.ok and result.entries == mutation.entry, mutation.label  # looks like the log's own past
        assert result.unsigned_tail == (mutation.entry or 0) - max(
            [0, *(s for s in SIZES if s <= (mutation.entry or 0))]
        )

    forged = encode_entry(ENTRIES, {"command": "assess", "verdict": "passed"})
    tamper(
        original,
        path,
        Mutation(
            "append",
            lambda c: c.execute(
                f"INSERT INTO {ENTRIES_TABLE} VALUES (?, ?, ?)", (ENTRIES, forged, leaf_hash(forged))
            ),
        ),
    )
    result = verify_log(path, public_key=original.public, checkpoints=original.notes)
    assert result.ok and result.unsigned_tail == 1  # stated: not covered by any checkpoint

    tamper(
        original,
        path,
        Mutation(
            "last checkpoint deleted", lambda c: c.execute(f"DELETE FROM {CHECKPOINTS_TABLE} WHERE size = 40")
        ),
    )
    result = verify_log(path, public_key=original.public)
    assert result.ok and result.unsigned_tail == 5


def test_a_log_re_signed_with_another_key_is_caught_by_the_key_the_user_holds(original, tmp_path):
    """The attacker changes entry 5, recomputes every leaf and checkpoint, and signs them with their own key,
    which they record in the meta row: consistent in itself, so only the public key held apart catches it."""
    attacker = Ed25519PrivateKey.generate()
    contents = list(original.contents)
    contents[5] = flipped(contents[5], len(contents[5]) // 2)

    def rewrite(connection: sqlite3.Connection) -> None:
        set_entry(connection, 5, contents[5], recompute=True)
        connection.execute(f"UPDATE {META_TABLE} SET public_key = ?", (public_key_bytes(attacker),))
        tree = CompactRange()
        for row_id, note in connection.execute(
            f"SELECT id, note FROM {CHECKPOINTS_TABLE} ORDER BY id"
        ).fetchall():
            signed = read_checkpoint(note)
            while tree.size < signed.size:
                tree.append(leaf_hash(contents[tree.size]))
            forged = Checkpoint(signed.origin, signed.size, tree.root(), signed.extensions)
            connection.execute(
                f"UPDATE {CHECKPOINTS_TABLE} SET note = ?, frontier = ? WHERE id = ?",
                (sign_checkpoint(forged, signed.origin, attacker), tree.to_bytes(), row_id),
            )

    path = tmp_path / "tampered.db"
    tamper(original, path, Mutation("re-signed", rewrite))
    assert verify_log(path).ok  # against the key the log records: consistent (the documented limit)
    result = verify_log(path, public_key=original.public)
    assert not result.ok and "not the key given" in (result.problem or "")
    with pytest.raises(BadInputError, match="from another log"):
        verify_log(
            path, checkpoints=[original.notes[-1]]
        )  # a kept checkpoint no longer opens with the log's key


def test_random_byte_flips_in_the_file_never_pass_with_altered_entries(original, tmp_path):
    """A byte flipped anywhere in the SQLite file (400 seeded positions): verification reports tampering, or the
    file no longer reads as an audit log (BadInputError), or it passes and every entry is the original."""
    generator = random.Random(20261204)
    path = tmp_path / "flipped.db"
    outcomes = {"detected": 0, "bad input": 0, "intact": 0}
    for _ in range(400):
        offset = generator.randrange(len(original.data))
        data = flipped(original.data, offset, generator.randrange(1, 256))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(data)
        try:
            result = verify_log(path, public_key=original.public)
        except BadInputError:
            outcomes["bad input"] += 1
            continue
        if not result.ok:
            outcomes["detected"] += 1
            continue
        store = open_store(path, create=False)
        try:
            contents = [entry.content for entry in store.entries()]
        finally:
            store.close()
        assert contents == original.contents, f"offset {offset}: verified with altered entries"
        assert [decode_entry(content) for content in contents] == [decode_entry(c) for c in original.contents]
        outcomes["intact"] += 1
    assert sum(outcomes.values()) == 400
    print(f"random flips: {outcomes}")
