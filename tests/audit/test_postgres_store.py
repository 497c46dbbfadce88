"""The PostgreSQL audit-log store against a real server (postgres_server.py starts one for this module).

The URL forms need no server; everything else runs on the module's server, each test in a database of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pg8000.exceptions import DatabaseError, InterfaceError
from postgres_server import PostgresServer, postgres_server, postgres_url  # noqa: F401  (pytest fixtures)

from aisec.core.errors import BadInputError
from aisec.defend.auditability.audit_log import postgres_store
from aisec.defend.auditability.audit_log.entry import decode_entry
from aisec.defend.auditability.audit_log.keys import (
    generate_ed25519_key_pair,
    load_verifying_key,
    public_key_bytes,
)
from aisec.defend.auditability.audit_log.log import AuditLog, check_inclusion_proof
from aisec.defend.auditability.audit_log.postgres_store import (
    LAYOUT,
    WRITE_LOCK_KEY,
    PostgresStore,
    parse_url,
)
from aisec.defend.auditability.audit_log.store import LogMeta, StoredCheckpoint, StoredEntry
from aisec.defend.auditability.audit_log.verify import verify_log

META = LogMeta(
    "aisec.audit/0123456789abcdef",
    "aisec.audit/0123456789abcdef",
    bytes(range(32)),
    1,
    "2025-01-02T03:04:05Z",
)
_database_numbers = itertools.count()


def stored_entry(seq: int) -> StoredEntry:
    content = b'{"seq":%d,"command":"scan"}' % seq
    return StoredEntry(seq, content, hashlib.sha256(b"\x00" + content).digest())


def checkpoint(size: int) -> StoredCheckpoint:
    return StoredCheckpoint(
        size, f"aisec.audit/0123456789abcdef\n{size}\nroot\n\n— key sig\n", bytes([size]) * 32
    )


@pytest.fixture(autouse=True)
def no_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """URLs are read as written: no PGHOST, PGUSER, ... from the environment the tests run in."""
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def fresh_url(postgres_server: PostgresServer) -> str:  # noqa: F811
    """The URL of a new, empty database."""
    return postgres_server.create_database(f"log_{next(_database_numbers)}")


@pytest.fixture()
def store(fresh_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(fresh_url, create=True)
    yield opened
    opened.close()


def write(store: PostgresStore, *entries: StoredEntry) -> None:
    with store.writing() as transaction:
        for entry in entries:
            transaction.insert_entry(entry)


def one_line_error(excinfo: pytest.ExceptionInfo[BadInputError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- URLs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://alice:p%40ss:w@db.example.org:6543/audit%20log",
            dict(user="alice", password="p@ss:w", host="db.example.org", port=6543, database="audit log",
                 unix_sock=None, location="postgresql://alice:***@db.example.org:6543/audit%20log"),
        ),
        (
            "postgres://bob@[::1]/team",
            dict(user="bob", password=None, host="::1", port=5432, database="team", unix_sock=None,
                 location="postgres://bob@[::1]/team"),
        ),
        (
            "postgresql:///team?host=/run/pg&port=5433&user=carol",
            dict(user="carol", host="/run/pg", port=5433, database="team", unix_sock="/run/pg/.s.PGSQL.5433"),
        ),
        (
            "postgresql://%2Frun%2Fpg/team",
            dict(host="/run/pg", port=5432, database="team", unix_sock="/run/pg/.s.PGSQL.5432"),
        ),
        (
            "postgresql://dave@h/db?password=secret&sslmode=disable",
            dict(user="dave", password="secret", ssl_context=None,
                 location="postgresql://dave@h/db?password=***&sslmode=disable"),
        ),
    ],
)  # fmt: skip
def test_url_forms(url: str, expected: dict[str, Any]) -> None:
    parameters = parse_url(url)
    assert {name: getattr(parameters, name) for name in expected} == expected


def test_url_defaults_come_from_the_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "erin")
    monkeypatch.setenv("PGPASSWORD", "from-env")
    monkeypatch.setenv("PGHOST", "/var/run/postgresql")
    parameters = parse_url("postgresql://")
    assert (parameters.user, parameters.password, parameters.database) == ("erin", "from-env", "erin")
    assert parameters.unix_sock == "/var/run/postgresql/.s.PGSQL.5432"
    assert parameters.location == "postgresql://"


def test_sslmodes() -> None:
    assert parse_url("postgresql://h/db").ssl_context is None
    required = parse_url("postgresql://h/db?sslmode=require").ssl_context
    assert required is not None and required.verify_mode == ssl.CERT_NONE
    full = parse_url("postgresql://h/db?sslmode=verify-full").ssl_context
    assert full is not None and full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    ca_only = parse_url("postgresql://h/db?sslmode=verify-ca").ssl_context
    assert ca_only is not None and ca_only.verify_mode == ssl.CERT_REQUIRED and not ca_only.check_hostname


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:hunter2@h/db", "not a PostgreSQL URL"),
        ("postgresql://u:hunter2@h:54x/db", "port '54x'"),
        ("postgresql://u:hunter2@h:70000/db", "port '70000'"),
        ("postgresql://u:hunter2@h/db?sslmode=prefer", "sslmode=prefer is not supported"),
        ("postgresql://u@h/db?password=hunter2&options=-cfoo", "unknown parameter 'options'"),
        ("postgresql://u:hunter2@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "sslrootcert"),
    ],
)
def test_bad_urls_name_the_problem_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(BadInputError) as excinfo:
        parse_url(url)
    message = one_line_error(excinfo)
    assert problem in message and "***" in message and "hunter2" not in message


# --- connecting -----------------------------------------------------------------------------------------------


def test_unreachable_socket_directory(tmp_path: Path) -> None:
    url = f"postgresql:///audit?host={tmp_path}&port=5432&user=postgres&password=hunter2"
    with pytest.raises(BadInputError) as excinfo:
        PostgresStore(url, create=True)
    message = one_line_error(excinfo)
    assert message.startswith(f"cannot connect to the audit log postgresql:///audit?host={tmp_path}")
    assert f"{tmp_path}/.s.PGSQL.5432" in message and "No such file or directory" in message
    assert "password=***" in message and "hunter2" not in message


def test_refused_tcp_connection() -> None:
    with pytest.raises(BadInputError) as excinfo:
        PostgresStore("postgresql://auditor:hunter2@127.0.0.1:1/audit", create=False)
    message = one_line_error(excinfo)
    assert "postgresql://auditor:***@127.0.0.1:1/audit" in message and "Connection refused" in message
    assert "hunter2" not in message


def test_wrong_database(postgres_server: PostgresServer) -> None:  # noqa: F811
    with pytest.raises(BadInputError) as excinfo:
        PostgresStore(postgres_server.url("no_such_database"), create=True)
    assert 'database "no_such_database" does not exist' in one_line_error(excinfo)


def test_a_refusal_is_reported_when_closing_the_refused_connection_fails() -> None:
    """pg8000 closes a connection the server refused by sending a goodbye, which can fail with a broken pipe
    once the server has hung up; the reason given is still the server's."""
    refusal = DatabaseError({"S": "FATAL", "C": "3D000", "M": 'database "x" does not exist'})
    try:
        try:
            raise refusal
        except DatabaseError:
            try:
                raise BrokenPipeError(32, "Broken pipe")
            except BrokenPipeError as pipe:
                raise InterfaceError("network error") from pipe
    except InterfaceError as error:
        assert postgres_store._reason(error) == 'database "x" does not exist'
    assert postgres_store._reason(InterfaceError("network error")) == "network error"


def test_tls_required_from_a_server_without_it(postgres_server: PostgresServer) -> None:  # noqa: F811
    with pytest.raises(BadInputError) as excinfo:
        PostgresStore(postgres_server.url() + "&sslmode=require", create=False)
    assert "cannot connect to the audit log" in one_line_error(excinfo)


def test_no_audit_log_without_create(fresh_url: str) -> None:
    with pytest.raises(BadInputError) as excinfo:
        PostgresStore(fresh_url, create=False)
    assert one_line_error(excinfo) == f"no audit log at {fresh_url}"


@pytest.mark.parametrize(
    "foreign_tables",
    [
        ["CREATE TABLE aisec_audit_entries (seq integer PRIMARY KEY, body text)"],
        ["CREATE TABLE aisec_audit_meta (id integer, origin text, key_name text, public_key bytea,"
         " format_version integer, created_at text)"],
    ],
    ids=["other columns", "a table missing"],
)  # fmt: skip
@pytest.mark.parametrize("create", [True, False])
def test_not_an_aisec_audit_log(
    postgres_server: PostgresServer,  # noqa: F811
    fresh_url: str,
    foreign_tables: list[str],
    create: bool,
) -> None:
    connection = postgres_server.connect(parse_url(fresh_url).database)
    for statement in foreign_tables:
        connection.run(statement)
    connection.close()
    with pytest.raises(BadInputError) as excinfo:
        PostgresStore(fresh_url, create=create)
    assert one_line_error(excinfo).startswith(f"{fresh_url} is not an aisec audit log")


def test_reopening_checks_the_layout_it_made(fresh_url: str) -> None:
    PostgresStore(fresh_url, create=True).close()
    PostgresStore(fresh_url, create=True).close()
    reopened = PostgresStore(fresh_url, create=False)
    assert reopened.meta() is None and reopened.size() == 0
    reopened.close()


def test_concurrent_creators_all_succeed(fresh_url: str) -> None:
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def create() -> None:
        start.wait()
        try:
            PostgresStore(fresh_url, create=True).close()
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    PostgresStore(fresh_url, create=False).close()


@pytest.mark.parametrize("action", ["create", "append"])
def test_creating_and_appending_wait_for_the_write_lock(
    postgres_server: PostgresServer,  # noqa: F811
    fresh_url: str,
    action: str,
) -> None:
    if action == "append":
        PostgresStore(fresh_url, create=True).close()
    holder = postgres_server.connect(parse_url(fresh_url).database)
    holder.run(f"SELECT pg_advisory_lock({WRITE_LOCK_KEY})")
    failures: list[BaseException] = []

    def act() -> None:
        try:
            store = PostgresStore(fresh_url, create=True)
            if action == "append":
                write(store, stored_entry(0))
            store.close()
        except BaseException as error:  # reported below
            failures.append(error)

    thread = threading.Thread(target=act)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), f"{action} did not wait for the write lock"
    holder.run(f"SELECT pg_advisory_unlock({WRITE_LOCK_KEY})")
    holder.close()
    thread.join()
    assert failures == []
    store = PostgresStore(fresh_url, create=False)
    assert store.size() == (1 if action == "append" else 0)
    store.close()


# --- the Store contract -------------------------------------------------------------------------------------


def test_new_store_is_empty(store: PostgresStore) -> None:
    assert store.meta() is None
    assert store.size() == 0
    assert list(store.entries()) == []
    assert store.entry(0) is None
    assert store.checkpoints() == []


def test_meta_is_written_once(store: PostgresStore, fresh_url: str) -> None:
    store.initialise(META)
    store.initialise(META)  # the same meta again: nothing to do
    assert store.meta() == META
    with pytest.raises(BadInputError) as excinfo:
        store.initialise(LogMeta("aisec.audit/ffffffffffffffff", "k", bytes(32), 1, "2025-01-01T00:00:00Z"))
    assert "already holds the audit log aisec.audit/0123456789abcdef" in one_line_error(excinfo)
    reopened = PostgresStore(fresh_url, create=False)
    assert reopened.meta() == META
    reopened.close()


def test_initialise_inside_writing_commits_with_the_block(store: PostgresStore, fresh_url: str) -> None:
    with pytest.raises(RuntimeError):
        with store.writing() as transaction:
            store.initialise(META)
            transaction.insert_entry(stored_entry(0))
            raise RuntimeError("the append failed")
    assert store.meta() is None and store.size() == 0
    with store.writing() as transaction:
        store.initialise(META)
        transaction.insert_entry(stored_entry(0))
    assert store.meta() == META and store.size() == 1


def test_writing_commits_at_the_end_of_the_block(store: PostgresStore, fresh_url: str) -> None:
    other = PostgresStore(fresh_url, create=False)
    entries = [stored_entry(seq) for seq in range(3)]
    with store.writing() as transaction:
        assert transaction.size() == 0 and transaction.latest_checkpoint() is None
        for entry in entries:
            transaction.insert_entry(entry)
        transaction.insert_checkpoint(checkpoint(3))
        assert transaction.size() == 3
        assert transaction.leaves(1) == [entries[1].leaf, entries[2].leaf]
        assert transaction.latest_checkpoint() == checkpoint(3)
        assert other.size() == 0 and other.checkpoints() == []  # not visible before the commit
    assert other.size() == 3
    assert list(other.entries()) == entries
    assert other.entry(1) == entries[1]
    assert other.checkpoints() == [checkpoint(3)]
    other.close()


def test_writing_rolls_back_on_any_exception(store: PostgresStore) -> None:
    write(store, stored_entry(0))
    for interruption in (ValueError("bad entry"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with store.writing() as transaction:
                transaction.insert_entry(stored_entry(1))
                transaction.insert_checkpoint(checkpoint(2))
                raise interruption
        assert store.size() == 1 and store.checkpoints() == []
    write(store, stored_entry(1))  # the store is still usable
    assert [entry.seq for entry in store.entries()] == [0, 1]


def test_a_failed_statement_rolls_back_the_whole_append(store: PostgresStore) -> None:
    write(store, stored_entry(0))
    with pytest.raises(BadInputError) as excinfo:
        with store.writing() as transaction:
            transaction.insert_entry(stored_entry(1))
            transaction.insert_entry(stored_entry(0))  # seq 0 exists: primary key violation
    assert "duplicate key value" in one_line_error(excinfo)
    assert store.size() == 1
    write(store, stored_entry(1))
    assert store.size() == 2


class CountingConnection:
    """Passes every statement on to the connection and counts the SELECTs on the entries."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.entry_queries = 0

    def run(self, sql: str, **parameters: Any) -> Any:
        if sql.startswith("SELECT seq, content, leaf"):
            self.entry_queries += 1
        return self.connection.run(sql, **parameters)

    def close(self) -> None:
        self.connection.close()


@pytest.mark.parametrize(("rows", "queries"), [(10, 4), (9, 4), (2, 1), (0, 1)])
def test_entries_stream_in_seq_order_in_batches(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch, rows: int, queries: int
) -> None:
    seqs = list(range(rows))
    write(store, *(stored_entry(seq) for seq in seqs[::2] + seqs[1::2]))  # inserted out of order
    monkeypatch.setattr(postgres_store, "ENTRIES_PER_QUERY", 3)
    counting = CountingConnection(store._connection)
    monkeypatch.setattr(store, "_connection", counting)
    assert list(store.entries()) == [stored_entry(seq) for seq in seqs]
    assert counting.entry_queries == queries
    assert [entry.seq for entry in store.entries(2, 7)] == seqs[2:7]
    assert [entry.seq for entry in store.entries(4)] == seqs[4:]
    assert list(store.entries(3, 3)) == []


def test_entries_stream_past_a_gap(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted run of entries (possible only behind aisec's back) must not end the stream early: the
    verifier has to see the rows after it."""
    write(store, *(stored_entry(seq) for seq in [0, 1, 2, 9, 10, 11, 12]))
    monkeypatch.setattr(postgres_store, "ENTRIES_PER_QUERY", 3)
    assert [entry.seq for entry in store.entries()] == [0, 1, 2, 9, 10, 11, 12]
    assert store.size() == 13  # max(seq) + 1: the next writer continues after the highest seq


def test_checkpoints_in_the_order_written(store: PostgresStore) -> None:
    for size in (5, 3, 7):
        with store.writing() as transaction:
            transaction.insert_checkpoint(checkpoint(size))
    assert [stored.size for stored in store.checkpoints()] == [5, 3, 7]
    with store.writing() as transaction:
        assert transaction.latest_checkpoint() == checkpoint(7)


def test_writers_take_turns(fresh_url: str) -> None:
    """Each writer reads the size and appends at it: without the write lock two would take the same seq."""
    PostgresStore(fresh_url, create=True).close()
    start = threading.Barrier(3)
    failures: list[BaseException] = []

    def append(count: int) -> None:
        store = PostgresStore(fresh_url, create=False)
        start.wait()
        try:
            for _ in range(count):
                with store.writing() as transaction:
                    transaction.insert_entry(stored_entry(transaction.size()))
        except BaseException as error:  # reported below
            failures.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=append, args=(30,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    reader = PostgresStore(fresh_url, create=False)
    assert [entry.seq for entry in reader.entries()] == list(range(90))
    reader.close()


def test_close_is_idempotent_and_final(fresh_url: str) -> None:
    store = PostgresStore(fresh_url, create=True)
    store.close()
    store.close()
    with pytest.raises(BadInputError, match="is closed"):
        store.size()


# --- append-only in the database itself ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def filled_log(postgres_url: str) -> str:  # noqa: F811
    """The module's test database holding a meta row, two entries and a checkpoint."""
    store = PostgresStore(postgres_url, create=True)
    store.initialise(META)
    with store.writing() as transaction:
        transaction.insert_entry(stored_entry(0))
        transaction.insert_entry(stored_entry(1))
        transaction.insert_checkpoint(checkpoint(2))
    store.close()
    return postgres_url


@pytest.mark.parametrize("table", list(LAYOUT))
@pytest.mark.parametrize(
    "statement", ["UPDATE {table} SET {column} = {column}", "DELETE FROM {table}", "TRUNCATE {table}"]
)
def test_triggers_reject_changes(
    postgres_server: PostgresServer,  # noqa: F811
    filled_log: str,
    table: str,
    statement: str,
) -> None:
    connection = postgres_server.connect("aisec_test")
    column = LAYOUT[table][1][0]
    with pytest.raises(DatabaseError, match=f"append-only: {statement.split()[0]} on {table} rejected"):
        connection.run(statement.format(table=table, column=column))
    connection.close()
    store = PostgresStore(filled_log, create=False)
    assert store.meta() == META
    assert list(store.entries()) == [stored_entry(0), stored_entry(1)]
    assert store.checkpoints() == [checkpoint(2)]
    store.close()


# --- the audit log on PostgreSQL ------------------------------------------------------------------------------

APPENDER = """
import sys
from aisec.defend.auditability.audit_log.keys import load_signing_key
from aisec.defend.auditability.audit_log.log import AuditLog

url, key_path, writer, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with AuditLog.open(url, load_signing_key(key_path), create=True, checkpoint_every=16) as log:
    print("ready", flush=True)
    sys.stdin.readline()  # the parent's "go", once both writers are ready
    for number in range(count):
        log.append({"writer": writer, "number": number})
"""


def test_audit_log_appends_and_verifies(fresh_url: str) -> None:
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(fresh_url, key, create=True, checkpoint_every=4) as log:
        seqs = [log.append({"command": "scan", "number": number}) for number in range(10)]
        proof = log.inclusion_proof(6)
    assert seqs == list(range(10))
    check_inclusion_proof(proof, proof["checkpoint"], public_key_bytes(key))
    verification = verify_log(fresh_url, public_key=public_key_bytes(key))
    assert (verification.ok, verification.entries, verification.checkpoints) == (
        True,
        10,
        3,
    )  # at 4, 8, close
    assert verification.unsigned_tail == 0 and verification.problem is None
    with AuditLog.open(fresh_url, key) as reopened:
        assert reopened.append({"command": "verify"}) == 10
    assert verify_log(fresh_url).entries == 11


def test_a_changed_entry_is_named(postgres_server: PostgresServer, fresh_url: str) -> None:  # noqa: F811
    """The database's superuser can switch the triggers off and change an entry; verification names it."""
    with AuditLog.open(fresh_url, Ed25519PrivateKey.generate(), create=True, checkpoint_every=4) as log:
        for number in range(10):
            log.append({"command": "assess", "verdict": "pass", "number": number})
    connection = postgres_server.connect(parse_url(fresh_url).database)
    content = connection.run("SELECT content FROM aisec_audit_entries WHERE seq = 6")[0][0]
    connection.run("ALTER TABLE aisec_audit_entries DISABLE TRIGGER ALL")
    connection.run(
        "UPDATE aisec_audit_entries SET content = :content WHERE seq = 6",
        content=content.replace(b'"pass"', b'"fail"'),
    )
    connection.run("ALTER TABLE aisec_audit_entries ENABLE TRIGGER ALL")
    connection.close()
    verification = verify_log(fresh_url)
    assert not verification.ok and verification.first_bad_entry == 6
    assert verification.problem is not None and "entry 6 was changed" in verification.problem


def test_two_processes_append_at_once(fresh_url: str, tmp_path: Path) -> None:
    private_key, public_key = tmp_path / "audit.pem", tmp_path / "audit.pub"
    generate_ed25519_key_pair(private_key, public_key)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, fresh_url, str(private_key), writer, "100"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for writer in ("a", "b")
    ]  # both make the tables if they are absent (the first to take the lock does), then wait for "go"
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n", writer.communicate()[1]
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
    verification = verify_log(fresh_url, public_key=load_verifying_key(public_key))
    assert verification.ok, verification.problem
    assert verification.entries == 200 and verification.unsigned_tail == 0
    store = PostgresStore(fresh_url, create=False)
    fields = [decode_entry(entry.content) for entry in store.entries()]
    store.close()
    for writer in ("a", "b"):
        assert [entry["number"] for entry in fields if entry["writer"] == writer] == list(range(100))
    turns = sum(1 for before, after in itertools.pairwise(fields) if before["writer"] != after["writer"])
    assert turns > 1, "the writers did not overlap: nothing was tested"


def test_the_commands_record_to_and_verify_a_postgresql_log(fresh_url: str, tmp_path: Path) -> None:
    """`--audit-log postgresql://...` end to end: two scans recorded, `aisec audit verify` and `show` read them."""
    from typer.testing import CliRunner

    from aisec.cli import app

    runner = CliRunner()
    env = {"AISEC_AUDIT_LOG": None, "AISEC_AUDIT_KEY": None}
    assert (
        runner.invoke(
            app, ["keygen", "--type", "ed25519", str(tmp_path / "k"), str(tmp_path / "p")]
        ).exit_code
        == 0
    )
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for _ in range(2):
        result = runner.invoke(
            app, ["scan", str(model), "--audit-log", fresh_url, "--audit-key", str(tmp_path / "k")], env=env
        )
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["audit", "verify", fresh_url, "--key", str(tmp_path / "p")], env=env)
    assert result.exit_code == 0, result.output
    assert "2 entries, 2 signed checkpoints" in result.output
    shown = runner.invoke(app, ["audit", "show", fresh_url, "--json"], env=env)
    assert [
        line.count('"command":"scan"') + line.count('"command": "scan"') for line in shown.stdout.splitlines()
    ] == [1, 1]
