"""A real Redis server for the guard's tests: Debian's `redis-server` on 127.0.0.1 at a free port, with no
persistence, in a temporary folder of its own.

* `redis_server` (module scope): the URL of a server that the module's tests share;
* `own_redis` (function scope): a `RedisServer` of the test's own, which it may `stop` and `start` again on
  the same port (the failover tests).

Without the binary the fixtures skip, saying how to install it; a server that does not start is a test failure
that carries its log.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NOT_INSTALLED = "install Debian's redis-server (make test does)"
START_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 5


def free_port() -> int:
    """A port that no TCP server on 127.0.0.1 holds now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    binary: str
    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError as error:
            return f"(no server log: {error})"

    def start(self) -> None:
        """Start on `port`, or on a free port when it is 0 (another, up to five times, if the one picked was
        taken before the server bound it); returns when the server answers PING."""
        pick = self.port == 0
        for _ in range(PORT_ATTEMPTS if pick else 1):
            if pick:
                self.port = free_port()
            if self._start_once():
                return
        pytest.fail(f"redis-server did not start on port {self.port}; its log:\n{self.log()}", pytrace=False)

    def _start_once(self) -> bool:
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--daemonize", "no", "--dir", str(self.directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # exited: most likely the port was taken meanwhile
                return False
            if answers_ping(self.port):
                return True
            time.sleep(0.01)
        self.stop()
        return False

    def stop(self) -> None:
        """Terminate the server and wait for it (its port is free once this returns)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A started `RedisServer` in `directory`, stopped on leaving; skips the test without the binary."""
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if binary is None:
        pytest.skip(NOT_INSTALLED)
    server = RedisServer(binary, directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server
