"""A real PostgreSQL server for a test module: initdb into a private temporary directory, a Unix socket there only.

Not a test file. A module uses it with `from postgres_server import postgres_server, postgres_url  # noqa: F401`
and asks for the fixtures it needs:

* `postgres_server` (module scope): the running `PostgresServer`; `server.create_database(name)` gives a fresh,
  empty database's URL, so tests need not share one;
* `postgres_url` (module scope): postgresql:///aisec_test?host=<socket dir>&port=<port>&user=postgres.

The server listens on no TCP address (listen_addresses = ''), only on a Unix socket in its own directory, with
trust authentication and fsync off. Run as root (as on the build machines), initdb and pg_ctl refuse to run, so
both run as the `postgres` system user through `runuser`; the tests connect as the database superuser `postgres`
either way. The directory is made with `tempfile.mkdtemp`, not pytest's tmp_path_factory: pytest's base temporary
directory is mode 0700 and owned by the test's user, so the `postgres` user could not reach a data directory
inside it, and its long path could exceed the 107 bytes a Unix socket's path may have.

Without the server binaries the fixtures skip, saying how to install them; a server that fails to start is a
test failure that carries the server's log.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pg8000.native
import pytest

NOT_INSTALLED = (
    "PostgreSQL server not installed (Debian: apt-get install postgresql); `make test` installs it"
)
SUPERUSER = "postgres"
TEST_DATABASE = "aisec_test"
START_TIMEOUT_S = 60


def server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: the one on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        directory = Path(os.path.realpath(on_path)).parent
        if (directory / "pg_ctl").exists():
            return directory
    installed = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    installed = [d for d in installed if (d / "pg_ctl").exists()]
    if not installed:
        return None

    def major_version(directory: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", directory.parent.name))

    return max(installed, key=major_version)


def free_port_number() -> int:
    """A port number no TCP server holds now; it only names the socket file (.s.PGSQL.<port>)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    directory: Path  # holds data/, the socket and server.log
    port: int
    bin_dir: Path
    run_as: list[str]  # ["runuser", "-u", "postgres", "--"] when we are root, else []
    start_seconds: float = 0.0

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def url(self, database: str = TEST_DATABASE) -> str:
        return f"postgresql:///{database}?host={self.directory}&port={self.port}&user={SUPERUSER}"

    def connect(self, database: str = "postgres") -> pg8000.native.Connection:
        """A superuser connection (autocommit) for set-up and for what the tests do behind aisec's back."""
        return pg8000.native.Connection(
            SUPERUSER, database=database, unix_sock=f"{self.directory}/.s.PGSQL.{self.port}"
        )

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        connection = self.connect()
        try:
            connection.run(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError as error:
            return f"(no server log: {error})"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, *args], capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )

    def start(self) -> None:
        """initdb, configure, start and create the test database; pytest.fail with the log on any failure."""
        started = time.perf_counter()
        if self.run_as:
            shutil.chown(self.directory, user=SUPERUSER)
        initdb = self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
            "--no-locale", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        if initdb.returncode != 0:
            pytest.fail(
                f"initdb failed ({initdb.returncode}):\n{initdb.stdout}{initdb.stderr}", pytrace=False
            )
        settings = {
            "listen_addresses": "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'16MB'",
            "max_connections": "40",
        }
        config = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(self.data_dir / "postgresql.conf", "a") as conf:  # owned by postgres; we are root or it
            conf.write(config)
        pg_ctl = self._run(
            str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", str(START_TIMEOUT_S),
        )  # fmt: skip
        if pg_ctl.returncode != 0:
            pytest.fail(
                f"PostgreSQL did not start ({pg_ctl.stdout}{pg_ctl.stderr}); server log:\n{self.log()}",
                pytrace=False,
            )
        try:
            self.create_database(TEST_DATABASE)
        except (pg8000.native.Error, OSError) as error:
            pytest.fail(f"cannot create {TEST_DATABASE} ({error}); server log:\n{self.log()}", pytrace=False)
        self.start_seconds = time.perf_counter() - started

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip(NOT_INSTALLED)
    run_as: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.fail(
                "running as root, and no `runuser` to run PostgreSQL as the postgres user", pytrace=False
            )
        run_as = [runuser, "-u", SUPERUSER, "--"]
    directory = Path(tempfile.mkdtemp(prefix="aisec-pg-"))
    server = PostgresServer(directory, free_port_number(), bin_dir, run_as)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url()
