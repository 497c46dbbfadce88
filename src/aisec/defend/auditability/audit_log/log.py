"""Appending to an audit log and proving what it holds.

Each append is one transaction under the store's write lock: the entry (its canonical bytes and RFC 9162 leaf
hash) and, when it completes a multiple of `checkpoint_every` entries, a checkpoint signed over the new tree,
commit together or not at all. The writer keeps the tree's compact range in memory; inside the transaction it
compares the stored size with its own and, when another process has appended since, reloads the range from the
latest checkpoint's frontier and the leaves after it.

Every checkpoint the log signs carries one extension line, `aisec-previous-checkpoint <size>` (0 for the first),
so that the signed checkpoints form a chain and a checkpoint removed from the middle of the log is detected.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeGuard

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    read_checkpoint,
    sign_checkpoint,
)
from aisec.defend.auditability.audit_log.entry import encode_entry, seq_prefix
from aisec.defend.auditability.audit_log.merkle import (
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_inclusion,
)
from aisec.defend.auditability.audit_log.store import (
    LogMeta,
    Store,
    StoredCheckpoint,
    StoredEntry,
    Transaction,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FORMAT_VERSION = 1
ORIGIN_PREFIX = "aisec.audit/"
PREVIOUS_CHECKPOINT = "aisec-previous-checkpoint"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(location: str | os.PathLike[str], *, create: bool) -> Store:
    """The store at `location`: PostgreSQL for a postgresql:// or postgres:// URL (pg8000 imported only then),
    else a SQLite file."""
    if isinstance(location, str) and location.startswith(POSTGRES_SCHEMES):
        try:
            from aisec.defend.auditability.audit_log.postgres_store import PostgresStore
        except ImportError:
            raise BadInputError(
                "a PostgreSQL audit log needs the 'postgres' extra: pip install 'aisec[postgres]'"
            ) from None
        return PostgresStore(location, create=create)
    from aisec.defend.auditability.audit_log.sqlite_store import SqliteStore

    return SqliteStore(location, create=create)


def fingerprint(public_key: bytes) -> str:
    """A short name for an Ed25519 public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def previous_checkpoint_line(size: int) -> str:
    """The extension line naming the size of the checkpoint signed before this one (0: none before)."""
    return f"{PREVIOUS_CHECKPOINT} {size}"


class AuditLog:
    """An append-only audit log over a store (SQLite or PostgreSQL), with signed checkpoints."""

    def __init__(
        self, store: Store, signing_key: Ed25519PrivateKey | None = None, *, checkpoint_every: int = 1000
    ) -> None:
        if (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise BadInputError(f"checkpoint_every must be a positive integer, not {checkpoint_every!r}")
        self.store = store
        self.checkpoint_every = checkpoint_every
        self._signing_key = signing_key
        self._public_key: bytes | None = None
        if signing_key is not None:
            from aisec.defend.auditability.audit_log.keys import public_key_bytes

            self._public_key = public_key_bytes(signing_key)
        self._range: CompactRange | None = None
        self._closed = False
        self.meta: LogMeta | None = store.meta()
        if self.meta is not None:
            self._check_key(self.meta)

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        signing_key: Ed25519PrivateKey | None = None,
        *,
        create: bool = False,
        checkpoint_every: int = 1000,
    ) -> AuditLog:
        """Open the log at `location` (create=True makes it when absent). With `signing_key`, the key must be
        the log's own (BadInputError naming both fingerprints); without it the log can be read and proved
        from, not appended to."""
        store = open_store(location, create=create)
        try:
            return cls(store, signing_key, checkpoint_every=checkpoint_every)
        except BaseException:
            store.close()
            raise

    @property
    def size(self) -> int:
        """The number of entries."""
        return self.store.size()

    def _check_key(self, meta: LogMeta) -> None:
        if self._public_key is not None and self._public_key != meta.public_key:
            raise BadInputError(
                f"{self.store.location}: the signing key (fingerprint {fingerprint(self._public_key)}) is not "
                f"the audit log's key (fingerprint {fingerprint(bytes(meta.public_key))})"
            )

    def _require_key(self, action: str) -> Ed25519PrivateKey:
        if self._closed:
            raise BadInputError(f"the audit log {self.store.location} is closed")
        if self._signing_key is None:
            raise BadInputError(f"{self.store.location}: {action} needs the log's signing key")
        return self._signing_key

    def _writing_meta(self, size: int) -> LogMeta:
        """The log's meta, read under the write lock; on the first append to an empty store, made and written:
        origin "aisec.audit/<16 random hex digits>", which is also the key name."""
        if self.meta is not None:
            return self.meta
        meta = self.store.meta()
        if meta is None:
            if size:
                raise BadInputError(
                    f"{self.store.location}: the log has entries but no meta row (run `aisec audit verify`)"
                )
            assert self._public_key is not None  # _require_key ran first
            origin = ORIGIN_PREFIX + secrets.token_hex(8)
            meta = LogMeta(
                origin=origin,
                key_name=origin,
                public_key=self._public_key,
                format_version=FORMAT_VERSION,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            )
            self.store.initialise(meta)
        self._check_key(meta)
        self.meta = meta
        return meta

    def _tree(self, transaction: Transaction, size: int) -> CompactRange:
        """The compact range of the first `size` entries: the one held in memory when no other writer has
        appended since, else rebuilt from the latest checkpoint's frontier and the leaves stored after it."""
        if self._range is not None and self._range.size == size:
            return self._range
        self._range = None
        tree, start = CompactRange(), 0
        latest = transaction.latest_checkpoint()
        if latest is not None and 0 < latest.size <= size:
            # a frontier that does not give the checkpoint's root is passed over (every leaf is read instead)
            with contextlib.suppress(ProofError, CheckpointError):
                resumed = CompactRange.from_bytes(latest.size, bytes(latest.frontier))
                if resumed.root() == read_checkpoint(latest.note).root:
                    tree, start = resumed, latest.size
        for leaf in transaction.leaves(start):
            tree.append(bytes(leaf))
        if tree.size != size:
            raise BadInputError(
                f"{self.store.location}: the entries are not numbered 0 to {size - 1} (run `aisec audit verify`)"
            )
        self._range = tree
        return tree

    def append(self, fields: Mapping[str, Any]) -> int:
        """Append one entry (the caller's fields; the log adds only "seq") and return its sequence number;
        signs a checkpoint in the same transaction when the new size is a multiple of checkpoint_every.
        BadInputError for fields encode_entry refuses, a missing key or a key other than the log's."""
        key = self._require_key("appending")
        try:
            with self.store.writing() as transaction:
                seq = transaction.size()
                meta = self._writing_meta(seq)
                content = encode_entry(seq, fields)
                leaf = leaf_hash(content)
                tree = self._tree(transaction, seq)
                transaction.insert_entry(StoredEntry(seq, content, leaf))
                tree.append(leaf)
                if tree.size % self.checkpoint_every == 0:
                    self._sign(transaction, meta, tree, key)
        except BaseException:
            self._range = None  # the transaction rolled back: the range may hold a leaf that is not stored
            raise
        return seq

    def checkpoint(self) -> str | None:
        """Sign and store a checkpoint for the current size unless one exists (or the log is empty); the note,
        or None when nothing was signed."""
        key = self._require_key("signing a checkpoint")
        try:
            with self.store.writing() as transaction:
                size = transaction.size()
                if size == 0:
                    return None
                meta = self._writing_meta(size)
                return self._sign(transaction, meta, self._tree(transaction, size), key)
        except BaseException:
            self._range = None
            raise

    def _sign(
        self, transaction: Transaction, meta: LogMeta, tree: CompactRange, key: Ed25519PrivateKey
    ) -> str | None:
        previous = transaction.latest_checkpoint()
        if previous is not None and previous.size == tree.size:
            return None
        checkpoint = Checkpoint(
            meta.origin,
            tree.size,
            tree.root(),
            (previous_checkpoint_line(previous.size if previous is not None else 0),),
        )
        note = sign_checkpoint(checkpoint, meta.key_name, key)
        transaction.insert_checkpoint(StoredCheckpoint(tree.size, note, tree.to_bytes()))
        return note

    def inclusion_proof(self, seq: int) -> dict[str, Any]:
        """A proof, as JSON-ready data, that entry `seq` is in the tree of the latest signed checkpoint (RFC 9162
        2.1.3): the log's origin, the entry's index and bytes (as text), the tree size, the audit path (base64)
        and the checkpoint's note. Anyone holding the log's public key checks it with check_inclusion_proof."""
        location = self.store.location
        meta = self.meta or self.store.meta()
        checkpoints = self.store.checkpoints()
        if meta is None or not checkpoints:
            raise BadInputError(f"{location}: the log has no signed checkpoint yet, so nothing can be proved")
        size = self.store.size()
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < size:
            raise BadInputError(f"{location}: no entry {seq!r} (the log has entries 0 to {size - 1})")
        latest = checkpoints[-1]
        if seq >= latest.size:
            raise BadInputError(
                f"{location}: entry {seq} is not yet covered by a signed checkpoint (the latest covers entries 0 "
                f"to {latest.size - 1}); the next append signs it"
            )
        leaves = [bytes(entry.leaf) for entry in self.store.entries(0, latest.size)]
        entry = self.store.entry(seq)
        damaged = f"{location}: the log is damaged (run `aisec audit verify`)"
        if len(leaves) != latest.size or entry is None or leaf_hash(bytes(entry.content)) != leaves[seq]:
            raise BadInputError(damaged)
        tree = MerkleTree(leaves)
        try:
            signed_root = read_checkpoint(latest.note).root
        except ValueError:
            raise BadInputError(damaged) from None
        if tree.root() != signed_root:
            raise BadInputError(damaged)
        try:
            text = bytes(entry.content).decode("utf-8")
        except UnicodeDecodeError:
            raise BadInputError(damaged) from None
        return {
            "origin": meta.origin,
            "index": seq,
            "tree_size": latest.size,
            "leaf": text,
            "hashes": [base64.b64encode(value).decode("ascii") for value in tree.inclusion_proof(seq)],
            "checkpoint": latest.note,
        }

    def close(self) -> None:
        """Sign a checkpoint over any unsigned entries (when the log was opened with its key), then close the
        store; idempotent."""
        if self._closed:
            return
        try:
            if self._signing_key is not None:
                self.checkpoint()
        finally:
            self._closed = True
            self.store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_inclusion_proof(proof: Mapping[str, Any], note: str, public_key: bytes) -> None:
    """The third party's check of a proof from AuditLog.inclusion_proof: the checkpoint note is signed by
    `public_key` under the proof's origin, is of the proof's tree size, the entry's bytes begin with its index,
    and its leaf hash with the audit path leads to the checkpoint's root (RFC 9162 2.1.3.2). CheckpointError or
    ProofError saying which check failed; BadInputError for a document that is not such a proof."""
    origin, index, size, text, hashes = (
        proof.get(name) for name in ("origin", "index", "tree_size", "leaf", "hashes")
    )
    if not isinstance(origin, str) or not isinstance(text, str):
        raise BadInputError("not an inclusion proof: 'origin' and 'leaf' must be text")
    if not _is_integer(index) or not _is_integer(size):
        raise BadInputError(
            f"not an inclusion proof: 'index' ({index!r}) and 'tree_size' ({size!r}) are integers"
        )
    if not isinstance(hashes, list) or not all(isinstance(value, str) for value in hashes):
        raise BadInputError("not an inclusion proof: 'hashes' must be a list of base64 hashes")
    try:
        path = [base64.b64decode(value.encode("ascii"), validate=True) for value in hashes]
    except (UnicodeEncodeError, binascii.Error):
        raise BadInputError("not an inclusion proof: 'hashes' holds something that is not base64") from None
    checkpoint = open_checkpoint(note, origin, public_key)
    if checkpoint.origin != origin:
        raise ProofError(f"the checkpoint is of the log {checkpoint.origin}, the proof of {origin}")
    if checkpoint.size != size:
        raise ProofError(
            f"the proof is for a tree of {size} entries, the checkpoint of {checkpoint.size}: prove the entry "
            "again against this checkpoint"
        )
    try:
        content = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProofError("the entry's text is not valid Unicode") from None
    if not content.startswith(seq_prefix(index)):
        raise ProofError(f"the entry's bytes do not begin with its index {index}")
    verify_inclusion(leaf_hash(content), index, size, path, checkpoint.root)
