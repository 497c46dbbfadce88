"""The audit log in PostgreSQL: a team's shared log (`--audit-log postgresql://user@host/db`).

The client is pg8000: pure Python and BSD-3-Clause, so it installs anywhere without a C compiler or libpq, and
its licence fits aisec's; psycopg, the usual choice, is LGPL-3.0.

URLs follow libpq's (PostgreSQL documentation, "Connection URIs"): `postgresql://` or `postgres://`, then
`user:password@host:port/dbname`, every part optional and percent-decoded; the query may give `host`, `port`,
`user`, `password`, `dbname`, `sslmode` and `sslrootcert`. A host that starts with "/" is the directory of the
server's Unix socket (`postgresql:///db?host=/var/run/postgresql`). What the URL leaves out comes, as in libpq,
from PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE, else localhost, 5432, the login name and a database named
after the user; PGPASSWORD keeps the password out of the command line. Without `sslmode` the connection is not
encrypted (pg8000 cannot fall back as libpq's default "prefer" does): give `sslmode=require` (encrypted, server
unverified) or `verify-full` for a server across a network.

The tables are aisec_audit_meta (one row), aisec_audit_entries and aisec_audit_checkpoints, in the connection's
current schema, each guarded by PL/pgSQL triggers that raise on UPDATE and DELETE (per row) and TRUNCATE (per
statement). The triggers stop every client that goes through aisec or plain SQL; the tables' owner can still
disable them, which is what the Merkle tree and the signed checkpoints are for (`aisec audit verify`).
Writers serialise on a transaction-level advisory lock, held from the start of an append to its commit.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from pg8000.exceptions import Error
from pg8000.native import Connection

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log.store import LogMeta, Store, StoredCheckpoint, StoredEntry

SCHEMES = ("postgresql", "postgres")
QUERY_PARAMETERS = ("host", "port", "user", "password", "dbname", "sslmode", "sslrootcert")
SSL_MODES = ("disable", "require", "verify-ca", "verify-full")
ENTRIES_PER_QUERY = 10_000

# pg_advisory_xact_lock's bigint key: the first 8 bytes of SHA-256("aisec-audit"), signed.
WRITE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"aisec-audit").digest()[:8], "big", signed=True)

META_TABLE = "aisec_audit_meta"
ENTRIES_TABLE = "aisec_audit_entries"
CHECKPOINTS_TABLE = "aisec_audit_checkpoints"

# Each table's columns and their information_schema data types: what makes a database an aisec audit log.
LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    META_TABLE: (
        ("id", "integer"),
        ("origin", "text"),
        ("key_name", "text"),
        ("public_key", "bytea"),
        ("format_version", "integer"),
        ("created_at", "text"),
    ),
    ENTRIES_TABLE: (("seq", "bigint"), ("content", "bytea"), ("leaf", "bytea")),
    CHECKPOINTS_TABLE: (("id", "bigint"), ("size", "bigint"), ("note", "text"), ("frontier", "bytea")),
}

REJECT_FUNCTION = "aisec_audit_reject_change"
SCHEMA = (
    f"""CREATE TABLE {META_TABLE} (
        id integer PRIMARY KEY CHECK (id = 1),
        origin text NOT NULL,
        key_name text NOT NULL,
        public_key bytea NOT NULL,
        format_version integer NOT NULL,
        created_at text NOT NULL)""",
    f"""CREATE TABLE {ENTRIES_TABLE} (
        seq bigint PRIMARY KEY,
        content bytea NOT NULL,
        leaf bytea NOT NULL)""",
    f"""CREATE TABLE {CHECKPOINTS_TABLE} (
        id bigserial PRIMARY KEY,
        size bigint NOT NULL,
        note text NOT NULL,
        frontier bytea NOT NULL)""",
    f"""CREATE OR REPLACE FUNCTION {REJECT_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the aisec audit log is append-only: % on % rejected', TG_OP, TG_TABLE_NAME;
        END $$""",
    *(
        statement
        for table in LAYOUT
        for statement in (
            f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {REJECT_FUNCTION}()""",
            f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION {REJECT_FUNCTION}()""",
        )
    ),
)


@dataclass(frozen=True)
class ConnectionParameters:
    """What pg8000 needs to connect, from a URL; `location` is the URL with any password replaced by ***."""

    location: str
    user: str
    password: str | None
    host: str
    port: int
    database: str
    unix_sock: str | None  # "<dir>/.s.PGSQL.<port>" when the host is a socket directory
    ssl_context: ssl.SSLContext | None


def parse_url(url: str) -> ConnectionParameters:
    """Read a libpq connection URI (see the module's docstring); BadInputError naming what is wrong."""
    scheme, _, rest = url.partition("://")
    netloc_end = min(
        (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest)
    )
    netloc, after_netloc = rest[:netloc_end], rest[netloc_end:]
    path, _, query = after_netloc.partition("#")[0].partition("?")
    userinfo, has_userinfo, hostport = netloc.rpartition("@")  # a literal @ in a password stays in userinfo
    user, has_password, password = userinfo.partition(":")
    location = url
    if has_password:
        location = f"{scheme}://{user}:***@{hostport}{after_netloc}"
    location = re.sub(r"([?&])password=[^&#]*", r"\1password=***", location)
    if scheme not in SCHEMES:
        raise BadInputError(
            f"{location}: not a PostgreSQL URL (it must start with postgresql:// or postgres://)"
        )

    values: dict[str, str] = {}
    if has_userinfo and user:
        values["user"] = unquote(user)
    if has_password:
        values["password"] = unquote(password)
    if hostport.startswith("["):  # an IPv6 address: [::1]:5432
        host, _, port = hostport[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    if host:
        values["host"] = unquote(host)
    if port:
        values["port"] = port
    if path.strip("/"):
        values["dbname"] = unquote(path.lstrip("/"))
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in QUERY_PARAMETERS:
            raise BadInputError(
                f"{location}: unknown parameter {name!r} (aisec reads {', '.join(QUERY_PARAMETERS)})"
            )
        values[name] = value

    user = values.get("user") or os.environ.get("PGUSER") or getpass.getuser()
    host = values.get("host") or os.environ.get("PGHOST") or "localhost"
    port_text = values.get("port") or os.environ.get("PGPORT") or "5432"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadInputError(f"{location}: port {port_text!r} is not a number from 1 to 65535")
    return ConnectionParameters(
        location=location,
        user=user,
        password=values.get("password", os.environ.get("PGPASSWORD")),
        host=host,
        port=int(port_text),
        database=values.get("dbname") or os.environ.get("PGDATABASE") or user,
        unix_sock=f"{host}/.s.PGSQL.{int(port_text)}" if host.startswith("/") else None,
        ssl_context=_ssl_context(values.get("sslmode", "disable"), values.get("sslrootcert"), location),
    )


def _ssl_context(mode: str, root_cert: str | None, location: str) -> ssl.SSLContext | None:
    """libpq's sslmode: disable (plain), require (encrypted, server unverified), verify-ca (certificate
    checked against sslrootcert or the system's roots), verify-full (also the host name)."""
    if mode not in SSL_MODES:
        raise BadInputError(f"{location}: sslmode={mode} is not supported (use {', '.join(SSL_MODES)})")
    if mode == "disable":
        return None
    if mode == "require":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context = ssl.create_default_context(cafile=root_cert)
    except (OSError, ssl.SSLError) as error:
        raise BadInputError(f"{location}: cannot read sslrootcert {root_cert}: {error}") from None
    context.check_hostname = mode == "verify-full"
    return context


def _reason(error: BaseException) -> str:
    """One line saying why pg8000 failed: the server's message, else the client's with the OS error under it.

    The server's message is looked for down the chain of exceptions raised while handling others: when the
    server refuses a connection (no such database, authentication failed) and closes it, pg8000's own close
    may fail to send its goodbye (a broken pipe) and raise that instead, with the refusal as its context."""
    chained: BaseException | None = error
    while chained is not None:
        if chained.args and isinstance(chained.args[0], dict) and "M" in chained.args[0]:
            return " ".join(str(chained.args[0]["M"]).split())
        chained = chained.__context__
    reason = str(error) if error.__cause__ is None else f"{error} ({error.__cause__})"
    return " ".join(reason.split())


@contextlib.contextmanager
def _database_errors(location: str) -> Iterator[None]:
    """pg8000's errors as BadInputError naming the log: a lost connection, a permission the role lacks."""
    try:
        yield
    except Error as error:
        raise BadInputError(f"audit log {location}: {_reason(error)}") from None


class _PostgresTransaction:
    """The Transaction of `PostgresStore.writing()`: statements on the store's connection, inside its BEGIN."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def size(self) -> int:
        return _size(self._connection)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        rows = self._connection.run(
            f"SELECT size, note, frontier FROM {CHECKPOINTS_TABLE} ORDER BY id DESC LIMIT 1"
        )
        return StoredCheckpoint(rows[0][0], rows[0][1], bytes(rows[0][2])) if rows else None

    def leaves(self, start: int) -> list[bytes]:
        rows = self._connection.run(
            f"SELECT leaf FROM {ENTRIES_TABLE} WHERE seq >= :start ORDER BY seq", start=start
        )
        return [bytes(row[0]) for row in rows]

    def insert_entry(self, entry: StoredEntry) -> None:
        self._connection.run(
            f"INSERT INTO {ENTRIES_TABLE} (seq, content, leaf) VALUES (:seq, :content, :leaf)",
            seq=entry.seq,
            content=entry.content,
            leaf=entry.leaf,
        )

    def insert_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        self._connection.run(
            f"INSERT INTO {CHECKPOINTS_TABLE} (size, note, frontier) VALUES (:size, :note, :frontier)",
            size=checkpoint.size,
            note=checkpoint.note,
            frontier=checkpoint.frontier,
        )


def _size(connection: Connection) -> int:
    """The number of entries, read as max(seq) + 1 (one index lookup; count(*) reads the whole table): the two
    agree on a log whose seqs run 0, 1, 2, ... as every writer leaves it, and a writer continues after the
    highest seq even where rows were deleted behind aisec's back, which verification then reports."""
    return int(connection.run(f"SELECT coalesce(max(seq) + 1, 0) FROM {ENTRIES_TABLE}")[0][0])


class PostgresStore(Store):
    """An audit log's rows in a PostgreSQL database (the Store protocol of store.py), over one connection.

    `create=True` makes the tables and triggers when the database has none, in one transaction under the write
    lock, so that two processes creating the same log at once both succeed; BadInputError for a database that
    cannot be reached, one whose tables of these names are not aisec's, or (create=False) one without them.
    """

    def __init__(self, url: str, *, create: bool) -> None:
        parameters = parse_url(url)
        self.location = parameters.location
        try:
            self._connection = Connection(
                parameters.user,
                host=parameters.host,
                database=parameters.database,
                port=parameters.port,
                password=parameters.password,
                unix_sock=parameters.unix_sock,
                ssl_context=parameters.ssl_context,
                application_name="aisec",
            )
        except (Error, OSError) as error:
            endpoint = parameters.unix_sock or f"{parameters.host}:{parameters.port}"
            raise BadInputError(
                f"cannot connect to the audit log {self.location} ({endpoint}): {_reason(error)}"
            ) from None
        self._closed = False
        self._in_transaction = False
        try:
            self._open_schema(create)
        except BaseException:
            self.close()
            raise

    @property
    def _db(self) -> Connection:
        if self._closed:
            raise BadInputError(f"the audit log {self.location} is closed")
        return self._connection

    def _open_schema(self, create: bool) -> None:
        """Check the tables' layout, making them first when create is set and there are none."""
        self._db.run("BEGIN")
        try:
            if create:
                self._db.run(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
            layout = self._layout()
            if not layout and create:
                for statement in SCHEMA:
                    self._db.run(statement)
                layout = self._layout()
            self._db.run("COMMIT")
        except Error as error:
            self._rollback()
            raise BadInputError(f"cannot set up the audit log in {self.location}: {_reason(error)}") from None
        except BaseException:
            self._rollback()
            raise
        if not layout:
            raise BadInputError(f"no audit log at {self.location}")
        if layout != LAYOUT:
            differences = ", ".join(
                f"{table} ({', '.join(name for name, _ in layout.get(table, ())) or 'missing'})"
                for table in LAYOUT
                if layout.get(table) != LAYOUT[table]
            )
            raise BadInputError(
                f"{self.location} is not an aisec audit log (tables not as aisec makes them: {differences})"
            )

    def _layout(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """The columns of the tables named as aisec's in the current schema, as in LAYOUT."""
        rows = self._db.run(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name IN (:meta, :entries, :checkpoints)"
            " ORDER BY table_name, ordinal_position",
            meta=META_TABLE,
            entries=ENTRIES_TABLE,
            checkpoints=CHECKPOINTS_TABLE,
        )
        layout: dict[str, tuple[tuple[str, str], ...]] = {}
        for table, column, data_type in rows:
            layout[table] = (*layout.get(table, ()), (column, data_type))
        return layout

    def _rollback(self) -> None:
        # A connection that is gone has lost its transaction with it: nothing is left to roll back.
        with contextlib.suppress(Error):
            self._db.run("ROLLBACK")

    def meta(self) -> LogMeta | None:
        with _database_errors(self.location):
            rows = self._db.run(
                f"SELECT origin, key_name, public_key, format_version, created_at FROM {META_TABLE} WHERE id = 1"
            )
        if not rows:
            return None
        origin, key_name, public_key, format_version, created_at = rows[0]
        return LogMeta(origin, key_name, bytes(public_key), format_version, created_at)

    def initialise(self, meta: LogMeta) -> None:
        """Write the meta row under the write lock (inside the current `writing()` block when called from one);
        a store that already holds the same meta is left as it is."""
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
        self._db.run(
            f"INSERT INTO {META_TABLE} (id, origin, key_name, public_key, format_version, created_at)"
            " VALUES (1, :origin, :key_name, :public_key, :format_version, :created_at)",
            origin=meta.origin,
            key_name=meta.key_name,
            public_key=meta.public_key,
            format_version=meta.format_version,
            created_at=meta.created_at,
        )

    @contextlib.contextmanager
    def writing(self) -> Iterator[_PostgresTransaction]:
        """BEGIN, then the advisory write lock (waits for any other writer's commit); COMMIT at the block's end,
        ROLLBACK on any exception."""
        if self._in_transaction:
            raise RuntimeError("PostgresStore.writing() is not reentrant")
        with _database_errors(self.location):
            self._db.run("BEGIN")
        self._in_transaction = True
        try:
            with _database_errors(self.location):
                self._db.run(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
                yield _PostgresTransaction(self._db)
        except BaseException:
            self._rollback()
            raise
        else:
            with _database_errors(self.location):
                self._db.run("COMMIT")
        finally:
            self._in_transaction = False

    def size(self) -> int:
        with _database_errors(self.location):
            return _size(self._db)

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[StoredEntry]:
        """Entries with start <= seq < stop in seq order, ENTRIES_PER_QUERY rows per query (keyset paging on
        seq, so each query is an index range scan and a gap in the seqs does not end the stream)."""
        bound = "" if stop is None else " AND seq < :stop"
        query = f"SELECT seq, content, leaf FROM {ENTRIES_TABLE} WHERE seq >= :start{bound} ORDER BY seq LIMIT :limit"
        while True:
            parameters: dict[str, int] = {"start": start, "limit": ENTRIES_PER_QUERY}
            if stop is not None:
                parameters["stop"] = stop
            with _database_errors(self.location):
                rows = self._db.run(query, **parameters)
            for seq, content, leaf in rows:
                yield StoredEntry(seq, bytes(content), bytes(leaf))
            if len(rows) < ENTRIES_PER_QUERY:
                return
            start = rows[-1][0] + 1

    def entry(self, seq: int) -> StoredEntry | None:
        with _database_errors(self.location):
            rows = self._db.run(f"SELECT seq, content, leaf FROM {ENTRIES_TABLE} WHERE seq = :seq", seq=seq)
        return StoredEntry(rows[0][0], bytes(rows[0][1]), bytes(rows[0][2])) if rows else None

    def checkpoints(self) -> list[StoredCheckpoint]:
        with _database_errors(self.location):
            rows = self._db.run(f"SELECT size, note, frontier FROM {CHECKPOINTS_TABLE} ORDER BY id")
        return [StoredCheckpoint(size, note, bytes(frontier)) for size, note, frontier in rows]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Error):
                self._connection.close()
