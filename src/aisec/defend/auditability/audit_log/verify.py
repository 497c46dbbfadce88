"""Verifying an audit log: recompute its Merkle tree and check every signed checkpoint against it.

`verify_log` reads the entries once, in order, hashing each as it streams (RFC 9162 leaf hashes), then builds
the tree over the recomputed leaves and checks, stopping at the first problem and naming it:

1. the meta row is there and well formed (and records the key given, when one is);
2. every entry is where it should be: its seq is the next number, its bytes hash to its stored leaf hash (a
   changed entry is named exactly) and begin with its own seq (a deleted, inserted or moved entry is named);
3. every stored checkpoint is signed by the log's key (or the key given), is of the log's origin, names the
   checkpoint signed before it (so none was removed), has a larger size than that one, no larger than the log,
   and the root of the recomputed tree at its size (where an entry was changed together with its stored leaf
   hash, the problem names the entries between the last good checkpoint and this one); each is consistent with
   the one before it by an RFC 9162 2.1.4 consistency proof, and its stored frontier (which writers resume
   from) is the recomputed tree's;
4. every checkpoint the user kept apart from the log (`checkpoints`) is of this log (else BadInputError), and
   the log still holds its tree: a log shorter than a kept checkpoint was truncated.

Tampering is reported as Verification(ok=False, ...), never raised; BadInputError is for input that is not an
audit log, a key that is not an Ed25519 public key, or a kept checkpoint of another log. Entries after the last
checkpoint are reported in `unsigned_tail`: removing them cannot be detected without a checkpoint that covers
them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    read_checkpoint,
)
from aisec.defend.auditability.audit_log.entry import seq_prefix
from aisec.defend.auditability.audit_log.log import (
    FORMAT_VERSION,
    PREVIOUS_CHECKPOINT,
    fingerprint,
    open_store,
)
from aisec.defend.auditability.audit_log.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_consistency,
)
from aisec.defend.auditability.audit_log.store import LogMeta, Store, StoredCheckpoint, StoredEntry

ED25519_KEY_SIZE = 32
_CLAIMED_SEQ = re.compile(rb'\{"seq":(0|[1-9][0-9]*),')
_PREVIOUS = re.compile(re.escape(PREVIOUS_CHECKPOINT) + r" (0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Verification:
    """What verify_log found. `entries`: the entries verified (where tampered: the log's highest seq + 1);
    `first_bad_entry`: the entry named exactly, or None where the problem is a range or a checkpoint;
    `unsigned_tail`: entries after the last signed checkpoint; `key_source`: "given" (the caller's key) or
    "log" (the key the log records, which someone with write access could have replaced)."""

    ok: bool
    entries: int
    checkpoints: int
    first_bad_entry: int | None
    problem: str | None
    unsigned_tail: int
    key_source: str
    origin: str | None


class _Tampered(Exception):
    def __init__(self, problem: str, first_bad_entry: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.first_bad_entry = first_bad_entry


def verify_log(
    location_or_store: str | os.PathLike[str] | Store,
    *,
    public_key: bytes | None = None,
    checkpoints: Sequence[str] = (),
) -> Verification:
    """Verify the log at a location (SQLite path or postgresql:// URL) or in an open store, against
    `public_key` (raw Ed25519) when given, else the key the log records, and against the checkpoint notes
    the user kept (`checkpoints`)."""
    if public_key is not None and (not isinstance(public_key, bytes) or len(public_key) != ED25519_KEY_SIZE):
        raise BadInputError(f"the key to verify with is not a {ED25519_KEY_SIZE}-byte Ed25519 public key")
    if isinstance(checkpoints, str) or not all(isinstance(note, str) for note in checkpoints):
        raise BadInputError("the checkpoints to verify against must be a list of checkpoint notes (text)")
    if isinstance(location_or_store, (str, os.PathLike)):
        store = open_store(location_or_store, create=False)
        try:
            return _verify(store, public_key, checkpoints)
        finally:
            store.close()
    return _verify(location_or_store, public_key, checkpoints)


def _verify(store: Store, public_key: bytes | None, kept_notes: Sequence[str]) -> Verification:
    key_source = "given" if public_key is not None else "log"
    meta = store.meta()
    origin = meta.origin if meta is not None and _is_text(meta.origin) else None
    try:
        stored = store.checkpoints()
        if meta is None:
            if store.size() == 0 and not stored:
                _check_kept_against_empty_log(kept_notes, public_key)
                return Verification(True, 0, 0, None, None, 0, key_source, None)
            raise _Tampered("the log's meta row (its origin and key) is missing")
        key = _check_meta(meta, public_key)
        leaves = _read_entries(store)
        tree = MerkleTree(leaves)
        signed_size, signed_root = _check_stored(stored, tree, meta, key)
        _check_kept(kept_notes, tree, meta, key, signed_size, signed_root)
    except _Tampered as tampered:
        return Verification(
            False,
            store.size(),
            len(stored),
            tampered.first_bad_entry,
            tampered.problem,
            0,
            key_source,
            origin,
        )
    return Verification(True, tree.size, len(stored), None, None, tree.size - signed_size, key_source, origin)


def _check_meta(meta: LogMeta, public_key: bytes | None) -> bytes:
    """The key to check signatures with, after checking the meta row's form and, when a key is given, that the
    log records that key."""
    if not _is_text(meta.origin) or not meta.origin or "\n" in meta.origin:
        raise _Tampered("the log's meta row is malformed: its origin is not one line of text")
    if not isinstance(meta.key_name, str) or not meta.key_name:
        raise _Tampered("the log's meta row is malformed: its key name is not text")
    if not isinstance(meta.public_key, bytes) or len(meta.public_key) != ED25519_KEY_SIZE:
        raise _Tampered("the log's meta row is malformed: its public key is not a 32-byte Ed25519 key")
    if meta.format_version != FORMAT_VERSION:
        raise _Tampered(f"the log's meta row is malformed: format version {meta.format_version!r}")
    if public_key is not None and meta.public_key != public_key:
        raise _Tampered(
            f"the log records the key {fingerprint(meta.public_key)}, not the key given ({fingerprint(public_key)}): "
            "its checkpoints may have been signed anew"
        )
    return public_key if public_key is not None else meta.public_key


def _is_text(value: object) -> bool:
    """A str that is valid Unicode (the SQLite store keeps bytes that are not UTF-8 as surrogate escapes)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_entries(store: Store) -> list[bytes]:
    """The recomputed leaf hashes of the entries, streamed in seq order; _Tampered at the first entry that is
    out of place or whose bytes do not match its stored leaf hash or its position."""
    leaves: list[bytes] = []
    expected = 0
    for entry in store.entries():
        content = entry.content
        if entry.seq != expected or type(content) is not bytes:
            _misplaced(expected, entry)
        leaf = leaf_hash(content)
        if leaf != entry.leaf or not content.startswith(seq_prefix(expected)):
            _misnumbered(expected, entry, leaf, leaves)
        leaves.append(leaf)
        expected += 1
    return leaves


def _misplaced(expected: int, entry: StoredEntry) -> None:
    if type(entry.seq) is int and entry.seq > expected:
        raise _Tampered(f"entry {expected} is missing (the entry after it is numbered {entry.seq})", expected)
    if entry.seq != expected:
        raise _Tampered(f"entry {expected} is stored as number {entry.seq!r}", expected)
    raise _Tampered(f"entry {expected} is not stored as bytes", expected)


def _misnumbered(position: int, entry: StoredEntry, leaf: bytes, leaves: list[bytes]) -> None:
    """Name what is wrong with the entry at `position`: changed (its bytes do not hash to its stored leaf
    hash), or a whole entry that belongs elsewhere (its bytes claim another position)."""
    if leaf != entry.leaf:
        raise _Tampered(
            f"entry {position} was changed: its bytes do not hash to its stored leaf hash", position
        )
    match = _CLAIMED_SEQ.match(entry.content)
    claimed = int(match.group(1)) if match else None
    if claimed is None or claimed == position:
        raise _Tampered(f"entry {position} does not begin with its sequence number", position)
    if claimed > position:
        raise _Tampered(
            f"entry {position} holds entry {claimed}: entries were deleted or moved at {position}", position
        )
    if leaves[claimed] == leaf:
        raise _Tampered(f"entry {position} is a copy of entry {claimed}", position)
    raise _Tampered(
        f"entries {claimed} and {position} both claim to be entry {claimed}: an entry was inserted at {claimed} "
        f"(or entry {position} was moved)",
        claimed,
    )


def _check_stored(
    stored: list[StoredCheckpoint], tree: MerkleTree, meta: LogMeta, key: bytes
) -> tuple[int, bytes]:
    """Check the stored checkpoints in the order they were written; the size and root of the last one."""
    previous_size, previous_root = 0, EMPTY_ROOT
    for number, row in enumerate(stored, start=1):
        label = f"checkpoint {number} of {len(stored)}"
        if type(row.note) is not str or type(row.size) is not int:
            raise _Tampered(f"{label} is malformed")
        try:
            checkpoint = open_checkpoint(row.note, meta.key_name, key)
        except CheckpointError as error:
            raise _Tampered(f"{label} (size {row.size}): {error}") from None
        if checkpoint.origin != meta.origin:
            raise _Tampered(f"{label} is of another log ({checkpoint.origin})")
        if checkpoint.size != row.size:
            raise _Tampered(f"{label}: its row says size {row.size}, its signed note {checkpoint.size}")
        named = _previous_size(checkpoint)
        if named is None:
            raise _Tampered(f"{label} (size {checkpoint.size}) does not name the checkpoint signed before it")
        if named != previous_size:
            signed_after = "no checkpoint" if named == 0 else f"a checkpoint of size {named}"
            holds = "none" if previous_size == 0 else f"one of size {previous_size}"
            raise _Tampered(
                f"{label} (size {checkpoint.size}) was signed after {signed_after}, but the log holds {holds} "
                "before it: a checkpoint was removed or reordered"
            )
        if checkpoint.size <= previous_size:
            raise _Tampered(f"{label} (size {checkpoint.size}) follows a checkpoint of size {previous_size}")
        if checkpoint.size > tree.size:
            raise _truncated(label, checkpoint.size, tree.size)
        if tree.root(checkpoint.size) != checkpoint.root:
            raise _Tampered(
                f"one of entries {previous_size} to {checkpoint.size - 1} is not what {label} signed (the entry "
                "and its stored leaf hash were both changed)"
            )
        _check_consistent(previous_size, previous_root, checkpoint, tree, label)
        if row.frontier != tree.compact_range(checkpoint.size).to_bytes():
            raise _Tampered(
                f"{label}: its stored frontier is not the tree's at size {checkpoint.size} (a writer resuming from "
                "it would sign wrong roots)"
            )
        previous_size, previous_root = checkpoint.size, checkpoint.root
    return previous_size, previous_root


def _truncated(label: str, signed: int, held: int) -> _Tampered:
    return _Tampered(
        f"{label} signed {signed} entries but the log holds {held}: entries {held} to {signed - 1} were removed",
        held,
    )


def _previous_size(checkpoint: Checkpoint) -> int | None:
    """The size of the checkpoint signed before this one, from its extension line; None if it has none."""
    if len(checkpoint.extensions) != 1:
        return None
    match = _PREVIOUS.fullmatch(checkpoint.extensions[0])
    return int(match.group(1)) if match else None


def _check_consistent(old_size: int, old_root: bytes, new: Checkpoint, tree: MerkleTree, label: str) -> None:
    """The tree of `new` extends the tree of old_size leaves: an RFC 9162 consistency proof from the recomputed
    tree, verified between the two signed roots (whichever is larger is taken as the new tree)."""
    if new.size < old_size:
        old_size, old_root, new_size, new_root = new.size, new.root, old_size, old_root
    else:
        new_size, new_root = new.size, new.root
    try:
        verify_consistency(old_size, new_size, old_root, new_root, tree.consistency_proof(old_size, new_size))
    except ProofError as error:
        raise _Tampered(
            f"{label} is not consistent with the log's signed tree of size {old_size}: {error}"
        ) from None


def _check_kept(
    notes: Sequence[str], tree: MerkleTree, meta: LogMeta, key: bytes, signed_size: int, signed_root: bytes
) -> None:
    """Each checkpoint the user kept is of this log (BadInputError otherwise) and the log still holds its tree."""
    for number, note in enumerate(notes, start=1):
        label = f"the checkpoint you kept ({number} of {len(notes)})"
        checkpoint = _open_kept(note, meta.key_name, key, label)
        if checkpoint.origin != meta.origin:
            raise BadInputError(f"{label} is from another log: {checkpoint.origin}, not {meta.origin}")
        if checkpoint.size > tree.size:
            raise _truncated(label, checkpoint.size, tree.size)
        if tree.root(checkpoint.size) != checkpoint.root:
            raise _Tampered(f"the log's first {checkpoint.size} entries are not the ones {label} signed")
        if signed_size:
            _check_consistent(signed_size, signed_root, checkpoint, tree, label)


def _open_kept(note: str, name: str, key: bytes, label: str) -> Checkpoint:
    try:
        return open_checkpoint(note, name, key)
    except CheckpointError as error:
        try:
            origin = read_checkpoint(note).origin
        except CheckpointError:
            raise BadInputError(f"{label} is not a signed checkpoint ({error})") from None
        raise BadInputError(f"{label} is from another log ({origin}; {error})") from None


def _check_kept_against_empty_log(notes: Sequence[str], public_key: bytes | None) -> None:
    """An empty log (no meta, entries or checkpoints) checked against kept checkpoints: it was emptied if one
    of them, signed by the key given, signed any entry."""
    for number, note in enumerate(notes, start=1):
        label = f"the checkpoint you kept ({number} of {len(notes)})"
        try:
            origin = read_checkpoint(note).origin
        except CheckpointError as error:
            raise BadInputError(f"{label} is not a signed checkpoint ({error})") from None
        if public_key is None:
            raise BadInputError(f"the log is empty and records no key: give the key that signed {label}")
        checkpoint = _open_kept(note, origin, public_key, label)
        if checkpoint.size:
            raise _Tampered(
                f"the log is empty, but {label} signed {checkpoint.size} entries of {checkpoint.origin}", 0
            )
