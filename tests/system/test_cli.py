"""The `tidings` command as a user runs it: real processes, real MariaDB, real redis-cli."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.sandbox import PrivateMariaDB, free_port

TIDINGS = [sys.executable, "-m", "tidings.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIDINGS, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Lines:
    """A child's stdout, line by line, with a timeout (a reader thread feeds a queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._queue: queue.Queue[str] = queue.Queue()
        stream = proc.stdout
        threading.Thread(
            target=lambda: [self._queue.put(line) for line in stream], daemon=True
        ).start()

    def next(self, timeout: float = 20) -> str:
        try:
            return self._queue.get(timeout=timeout).strip()
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None


@pytest.fixture
def served(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, "TIDINGS_SERVER_ID": str(replica_server_id), "TIDINGS_LOG_LEVEL": "info"}
    proc = subprocess.Popen(
        [
            *TIDINGS,
            "serve",
            "--mysql",
            mariadb.url(),
            "--resp",
            f"127.0.0.1:{port}",
            "--http",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # ready once the replica has found the end of the binlog
        lines.append(line)
        if "starting at the current end of the binlog" in line:
            break
    else:
        raise AssertionError("tidings serve exited:\n" + "".join(lines))
    yield port, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_help_explains_commands_and_every_setting() -> None:
    top = run("--help")
    assert top.returncode == 0
    for word in ("serve", "tail", "doctor", "demo", "SUBSCRIBE", "shop.orders"):
        assert word in top.stdout
    serve = run("serve", "--help").stdout
    for flag in (
        "--mysql",
        "--resp",
        "--server-id",
        "--start",
        "--allow-publish",
        "--max-bulk",
        "--output-limit",
        "--names-from-schema",
        "--config",
        "TIDINGS_MYSQL",
    ):
        assert flag in serve, flag  # fmt: skip


def test_bad_settings_are_one_clear_line() -> None:
    result = run("serve", "--resp", "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip() == "tidings: expected HOST:PORT, got 'nowhere'"
    result = run("serve", "--mysql", "http://x/")
    assert result.returncode == 2 and "not a MySQL URL" in result.stderr


def test_serve_redis_cli_tail_and_graceful_sigterm(
    mariadb: PrivateMariaDB, served: tuple[int, subprocess.Popen[str]]
) -> None:
    port, daemon = served
    mariadb.sql("CREATE DATABASE IF NOT EXISTS clitest; "
                "CREATE TABLE clitest.orders (id INT PRIMARY KEY, total DECIMAL(6,2))")  # fmt: skip
    cli = subprocess.Popen(
        ["redis-cli", "-p", str(port), "SUBSCRIBE", "clitest.orders"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(cli)
    tail: subprocess.Popen[str] | None = None
    try:
        assert [lines.next() for _ in range(3)] == ["subscribe", "clitest.orders", "1"]
        tail = subprocess.Popen(
            [*TIDINGS, "tail", "--resp", f"127.0.0.1:{port}", "--count", "1", "clitest.*"],
            stdout=subprocess.PIPE,
            text=True,
        )
        # tail subscribes with PSUBSCRIBE; wait until the daemon counts both subscribers
        for _ in range(200):
            info = subprocess.run(["redis-cli", "-p", str(port), "PUBSUB", "NUMPAT"],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            if info.stdout.strip() == "1":
                break
        else:
            raise AssertionError("tail never subscribed")
        mariadb.sql("INSERT INTO clitest.orders VALUES (42, 9.90)")
        kind, channel, payload = (lines.next() for _ in range(3))
        assert (kind, channel) == ("message", "clitest.orders")
        event = json.loads(payload)
        assert event["type"] == "insert" and event["data"] == {"id": 42, "total": "9.90"}
        out, _ = tail.communicate(timeout=20)
        assert tail.returncode == 0
        assert out.startswith(f"#{event['id']} clitest.orders insert ")
        assert '"total":"9.90"' in out

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
        # the daemon closed its clients: redis-cli ends as it does when Redis shuts down
        assert cli.wait(timeout=20) == 1
        assert cli.stderr is not None
        assert cli.stderr.read().strip() == "Error: Server closed the connection"
    finally:
        for proc in (cli, tail):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_exits_with_the_reason_when_the_binlog_is_off(
    tmp_path: Path, replica_server_id: int
) -> None:
    db = PrivateMariaDB(tmp_path / "nobinlog", log_bin=False)
    db.start()
    try:
        result = run("serve", "--mysql", db.url(), "--resp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                     "--server-id", str(replica_server_id))  # fmt: skip
        assert result.returncode == 1
        assert "binary logging is off" in result.stderr
        doctor = run("doctor", "--mysql", db.url())
        assert doctor.returncode == 1
        assert "log_bin" in doctor.stdout and "restart" in doctor.stdout
    finally:
        db.stop()
