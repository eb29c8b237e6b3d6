"""Shared fixtures: a throwaway MariaDB with binlog on (ROW, FULL metadata), a private
redis-server."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.sandbox import PrivateMariaDB, free_port

_server_ids = itertools.count(100)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    """One private MariaDB for the session; tests use databases of their own."""
    db = PrivateMariaDB(tmp_path_factory.mktemp("mariadb"))
    db.start()
    yield db
    db.stop()


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A private MariaDB for one test: for tests that stop, kill or reconfigure it."""
    db = PrivateMariaDB(tmp_path / "mariadb")
    db.start()
    yield db
    db.stop()


@pytest.fixture
def replica_server_id() -> int:
    """A server_id unique within the test session, for replica connections."""
    return next(_server_ids)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    """A private redis-server (never the system one) for one test: its port."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    assert Path(binary).exists(), "redis-server is missing: run scripts/bootstrap"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once it answers PING
            assert proc.poll() is None, "redis-server exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(params=["compiled", "python"])
def flush_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test over the compiled flush loop and over the pure-Python one.

    The compiled one must be built (scripts/bootstrap does): a missing extension fails here
    rather than passing the Python path off as the C one. It is used whatever
    TIDINGS_PURE_PYTHON says, so both paths are tested in every run.
    """
    from tidings.wire import outbox

    if request.param == "compiled":
        from tidings.wire import _cflush

        _cflush.bind(outbox.Outbox)
        monkeypatch.setattr(outbox, "_cflush", _cflush)
    else:
        monkeypatch.setattr(outbox, "_cflush", None)
    return str(request.param)
