"""The audit log in one SQLite file: the default store (`--audit-log audit.db`).

The file is in WAL mode with `synchronous=NORMAL`: a commit is one append to the write-ahead log, which survives
any crash of the process (a power cut may lose the last commits, never leave half of one). Each append is one
transaction under SQLite's single writer lock (`BEGIN IMMEDIATE`), so that writers in several processes take
turns, each waiting up to a minute for the lock. The file says what it is in its header: `PRAGMA application_id`
is 0x61697365 ("aise") and `user_version` the format version, so that any other file, SQLite or not, is refused
before anything is written to it. Triggers reject UPDATE and DELETE on the three tables; someone with write
access to the file can drop them, which is what the Merkle tree and the signed checkpoints catch.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.store import LogMeta, Store, StoredCheckpoint, StoredEntry

APPLICATION_ID = 0x61697365  # "aise"
FORMAT_VERSION = 1
BUSY_TIMEOUT_S = 60
ENTRIES_PER_FETCH = 10_000

META_TABLE = "meta"
ENTRIES_TABLE = "entries"
CHECKPOINTS_TABLE = "checkpoints"

SCHEMA = (
    f"""CREATE TABLE {META_TABLE} (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        origin TEXT NOT NULL,
        key_name TEXT NOT NULL,
        public_key BLOB NOT NULL,
        format_version INTEGER NOT NULL,
        created_at TEXT NOT NULL)""",
    f"""CREATE TABLE {ENTRIES_TABLE} (
        seq INTEGER PRIMARY KEY,
        content BLOB NOT NULL,
        leaf BLOB NOT NULL)""",
    f"""CREATE TABLE {CHECKPOINTS_TABLE} (
        id INTEGER PRIMARY KEY,
        size INTEGER NOT NULL,
        note TEXT NOT NULL,
        frontier BLOB NOT NULL)""",
    *(
        f"""CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table}
            BEGIN SELECT RAISE(ABORT, 'the aisec audit log is append-only: {operation} on {table} rejected'); END"""
        for table in (META_TABLE, ENTRIES_TABLE, CHECKPOINTS_TABLE)
        for operation in ("UPDATE", "DELETE")
    ),
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {FORMAT_VERSION}",
)


class _Errors:
    """SQLite's errors (a locked, corrupt, unreadable or foreign file) as one line of bad input naming the file;
    a plain class rather than a generator, since every append passes through it."""

    def __init__(self, location: str) -> None:
        self._location = location

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(error, sqlite3.Error):
            raise BadInputError(f"audit log {self._location}: {error}") from None
        if isinstance(error, UnicodeDecodeError):  # SQLite's message quotes a damaged schema's bytes
            raise BadInputError(f"audit log {self._location}: the database is damaged (not UTF-8)") from None


def _text(value: bytes) -> str:
    """TEXT columns as str; bytes that are not UTF-8 (a damaged or edited row) are kept as surrogate escapes,
    which every check on that text then refuses, instead of failing the read."""
    return value.decode("utf-8", "surrogateescape")


class _SqliteTransaction:
    """The Transaction of `SqliteStore.writing()`: statements on the store's connection inside BEGIN IMMEDIATE."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def size(self) -> int:
        return _size(self._connection)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self._connection.execute(
            f"SELECT size, note, frontier FROM {CHECKPOINTS_TABLE} ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return StoredCheckpoint(*row) if row else None

    def leaves(self, start: int) -> list[bytes]:
        rows = self._connection.execute(
            f"SELECT leaf FROM {ENTRIES_TABLE} WHERE seq >= ? ORDER BY seq", (start,)
        ).fetchall()
        return [row[0] for row in rows]

    def insert_entry(self, entry: StoredEntry) -> None:
        self._connection.execute(
            f"INSERT INTO {ENTRIES_TABLE} (seq, content, leaf) VALUES (?, ?, ?)",
            (entry.seq, entry.content, entry.leaf),
        )

    def insert_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        self._connection.execute(
            f"INSERT INTO {CHECKPOINTS_TABLE} (size, note, frontier) VALUES (?, ?, ?)",
            (checkpoint.size, checkpoint.note, checkpoint.frontier),
        )


def _size(connection: sqlite3.Connection) -> int:
    """The number of entries as max(seq) + 1, one lookup at the end of the seq index (count(*) reads every
    row); the two agree on every log a writer leaves, and where rows were removed behind aisec's back, a writer
    continues after the highest seq and verification reports the gap."""
    return int(connection.execute(f"SELECT coalesce(max(seq) + 1, 0) FROM {ENTRIES_TABLE}").fetchone()[0])


class _Writing:
    """The context of `SqliteStore.writing()`: BEGIN IMMEDIATE on entry, COMMIT or ROLLBACK on exit."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> _SqliteTransaction:
        store = self._store
        with store._errors:
            store._db.execute("BEGIN IMMEDIATE")
        store._in_transaction = True
        return _SqliteTransaction(store._db)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        store = self._store
        store._in_transaction = False
        if error is None:
            with store._errors:
                store._db.execute("COMMIT")
            return
        with contextlib.suppress(sqlite3.Error):
            store._db.execute("ROLLBACK")
        store._errors.__exit__(kind, error, traceback)  # an SQLite error in the block: bad input, one line


class SqliteStore(Store):
    """An audit log's rows in a SQLite file (the Store protocol of store.py), over one connection.

    `create=True` makes the file, or the tables in an empty file, under the write lock, so that two processes
    creating the same log at once both succeed. BadInputError("<path> is not an aisec audit log") for a file
    that is not SQLite or is SQLite of another application; BadInputError("no audit log at <path>") without
    create and without the file."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool) -> None:
        self.location = str(path)
        path = Path(path)
        if not path.exists():
            if not create:
                raise BadInputError(f"no audit log at {self.location}")
            if not path.parent.is_dir():
                raise BadInputError(
                    f"cannot create the audit log {self.location}: no such folder {path.parent}"
                )
        elif not path.is_file():
            raise BadInputError(f"{self.location} is not an aisec audit log (not a file)")
        try:
            self._connection: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise BadInputError(f"cannot open the audit log {self.location}: {error}") from None
        self._connection.text_factory = _text
        self._errors = _Errors(self.location)
        self._in_transaction = False
        try:
            self._open(create)
        except BaseException:
            self.close()
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise BadInputError(f"the audit log {self.location} is closed")
        return self._connection

    def _open(self, create: bool) -> None:
        """Check the header (reading only), then make the schema in a new, empty file when create is set."""
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            kind = self._kind()
        except (sqlite3.Error, UnicodeDecodeError):
            raise BadInputError(
                f"{self.location} is not an aisec audit log (not a SQLite database)"
            ) from None
        if kind == "foreign":
            raise BadInputError(
                f"{self.location} is not an aisec audit log (a SQLite database of something else)"
            )
        if kind == "empty":
            if not create:
                raise BadInputError(f"{self.location} is not an aisec audit log (an empty file)")
            with self._errors:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # another process may have made it while this one waited for the lock
                    if self._kind() == "empty":
                        for statement in SCHEMA:
                            self._db.execute(statement)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        with self._errors:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._db.execute("PRAGMA synchronous = NORMAL")
        if version != FORMAT_VERSION:
            raise BadInputError(
                f"{self.location}: audit log format {version}, this aisec reads format {FORMAT_VERSION}"
            )

    def _kind(self) -> str:
        """ "aisec" (our application id), "empty" (no schema at all) or "foreign" (anything else). Both are read
        in one statement, so one snapshot: read apart, a log another process created in between would look like
        a foreign database (no id yet, tables already)."""
        application_id, tables = self._db.execute(
            "SELECT (SELECT application_id FROM pragma_application_id()), (SELECT count(*) FROM sqlite_master)"
        ).fetchone()
        if application_id == APPLICATION_ID:
            return "aisec"
        return "empty" if application_id == 0 and tables == 0 else "foreign"

    def meta(self) -> LogMeta | None:
        with self._errors:
            row = self._db.execute(
                f"SELECT origin, key_name, public_key, format_version, created_at FROM {META_TABLE} WHERE id = 1"
            ).fetchone()
        return LogMeta(*row) if row else None

    def initialise(self, meta: LogMeta) -> None:
        """Write the meta row under the write lock (inside the current `writing()` block when called from one);
        a store that already holds the same meta is left as it is, one holding another is BadInputError."""
        if self._in_transaction:
            self._initialise(meta)
            return
        with self.writing():
            self._initialise(meta)

    def _initialise(self, meta: LogMeta) -> None:
        existing = self.meta()
        if existing == meta:
            return
        if existing is not None:
            raise BadInputError(
                f"{self.location} already holds the audit log {existing.origin}, not {meta.origin}"
            )
        self._db.execute(
            f"INSERT INTO {META_TABLE} (id, origin, key_name, public_key, format_version, created_at)"
            " VALUES (1, ?, ?, ?, ?, ?)",
            (meta.origin, meta.key_name, meta.public_key, meta.format_version, meta.created_at),
        )

    def writing(self) -> _Writing:
        """BEGIN IMMEDIATE (waits up to a minute for another writer's commit); COMMIT at the block's end,
        ROLLBACK on any exception."""
        if self._in_transaction:
            raise RuntimeError("SqliteStore.writing() is not reentrant")
        return _Writing(self)

    def size(self) -> int:
        with self._errors:
            return _size(self._db)

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[StoredEntry]:
        """Entries with start <= seq < stop in seq order, fetched ENTRIES_PER_FETCH rows at a time."""
        with self._errors:
            cursor = self._db.execute(
                f"SELECT seq, content, leaf FROM {ENTRIES_TABLE} WHERE seq >= ? AND seq < ? ORDER BY seq",
                (start, 2**63 - 1 if stop is None else stop),
            )
            while rows := cursor.fetchmany(ENTRIES_PER_FETCH):
                for seq, content, leaf in rows:
                    yield StoredEntry(seq, content, leaf)

    def entry(self, seq: int) -> StoredEntry | None:
        with self._errors:
            row = self._db.execute(
                f"SELECT seq, content, leaf FROM {ENTRIES_TABLE} WHERE seq = ?", (seq,)
            ).fetchone()
        return StoredEntry(*row) if row else None

    def checkpoints(self) -> list[StoredCheckpoint]:
        with self._errors:
            rows = self._db.execute(
                f"SELECT size, note, frontier FROM {CHECKPOINTS_TABLE} ORDER BY id"
            ).fetchall()
        return [StoredCheckpoint(*row) for row in rows]

    def close(self) -> None:
        """Close the connection (idempotent); the last connection to close folds the WAL into the file."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
