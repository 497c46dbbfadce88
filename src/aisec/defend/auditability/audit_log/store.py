"""Where an audit log's rows live: the storage protocol that the SQLite and PostgreSQL backends implement.

A store keeps three things and knows nothing of Merkle trees or signatures (log.py and verify.py do):

* `meta`: set once when the log is created (origin, the checkpoint key's name and public key, format version);
* `entries`: (seq, content, leaf) rows, seq = 0, 1, 2, ... with no gap, content the canonical entry bytes, leaf
  the RFC 9162 leaf hash of content, stored so that a changed entry is named exactly;
* `checkpoints`: (size, note, frontier) rows, note the signed checkpoint text (C2SP tlog-checkpoint), frontier
  the tree's compact range at that size (the hashes of its perfect subtrees, left to right, concatenated), which
  lets a writer resume without reading every leaf; verification never trusts it.

Both tables are append-only in the database itself (triggers reject UPDATE, DELETE and TRUNCATE). Writers take
the store's single write lock for a whole append (`writing()`), so that two processes appending at once both
land, one after the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LogMeta:
    """What a log is: its origin (the checkpoints' first line), the checkpoint key's name and raw Ed25519
    public key, the format version and when it was created (ISO 8601, UTC)."""

    origin: str
    key_name: str
    public_key: bytes
    format_version: int
    created_at: str


@dataclass(frozen=True)
class StoredEntry:
    seq: int
    content: bytes
    leaf: bytes


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    note: str
    frontier: bytes


class Transaction(Protocol):
    """One append under the store's write lock: reads see every committed row, writes commit together."""

    def size(self) -> int:
        """The number of entries."""
        ...

    def latest_checkpoint(self) -> StoredCheckpoint | None: ...

    def leaves(self, start: int) -> list[bytes]:
        """The leaf hashes of entries start, start + 1, ... in order."""
        ...

    def insert_entry(self, entry: StoredEntry) -> None: ...

    def insert_checkpoint(self, checkpoint: StoredCheckpoint) -> None: ...


class Store(Protocol):
    """An audit log's storage; opened by `open_store(location)` (log.py)."""

    location: str  # as the user wrote it, with any password removed

    def meta(self) -> LogMeta | None:
        """The log's meta row, or None for a new, empty store."""
        ...

    def initialise(self, meta: LogMeta) -> None:
        """Write the meta row of a new log; BadInputError if the store already holds a different one."""
        ...

    def writing(self) -> AbstractContextManager[Transaction]:
        """The write lock and a transaction: committed when the block ends, rolled back on any exception."""
        ...

    def size(self) -> int: ...

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[StoredEntry]:
        """Entries in seq order as stored (rows are not checked here), streamed in batches."""
        ...

    def entry(self, seq: int) -> StoredEntry | None: ...

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint, in the order they were written."""
        ...

    def close(self) -> None: ...
