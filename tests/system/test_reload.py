"""SIGHUP on a real `tidings serve`: settings from the re-read config file apply to new
connections (the auth secret rotates, limits change), what needs a restart is said and
kept, a broken file changes nothing, and connected clients keep receiving throughout."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.system.test_cli import TIDINGS
from tidings.auth import mint
from tidings.sandbox import PrivateMariaDB, free_port

_dbs = itertools.count()
SECRET_A = b"first-secret-of-the-reload-test-0123456789"
SECRET_B = b"second-secret-of-the-reload-test-9876543210"


class Log:
    """The daemon's stderr, collected by a thread; wait for a line containing some text."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        stream = proc.stderr
        threading.Thread(target=lambda: self.lines.extend(stream), daemon=True).start()

    def wait(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the log:\n" + "".join(self.lines))


def resp(port: int, *commands: bytes, replies: int) -> list[bytes]:
    """Send commands on a fresh connection; return the first `replies` lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(commands))
        data = b""
        while data.count(b"\r\n") < replies:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return data.split(b"\r\n")[:replies]


def test_sighup_reloads_settings_without_dropping_clients(
    tmp_path: Path, mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = f"reload{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY)")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET_A)
    port = free_port()
    config = tmp_path / "tidings.toml"

    def write_config(max_subscriptions: int, resp_port: int) -> None:
        config.write_text(
            f'mysql = "{mariadb.url()}"\nserver_id = {replica_server_id}\n'
            f'resp = "127.0.0.1:{resp_port}"\nhttp = ""\n'
            f'auth_secret_file = "{secret_file}"\nmax_subscriptions = {max_subscriptions}\n'
        )

    write_config(2, port)
    proc = subprocess.Popen(
        [*TIDINGS, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TIDINGS_LOG_LEVEL": "info"},
    )  # fmt: skip
    log = Log(proc)
    try:
        log.wait("descriptor limit")
        token_a = mint(SECRET_A, [f"{db}.*"], 600).encode()
        token_b = mint(SECRET_B, [f"{db}.*"], 600).encode()
        three = b"SUBSCRIBE %b.a %b.b %b.c\r\n" % (db.encode(), db.encode(), db.encode())
        assert resp(port, b"AUTH " + token_a + b"\r\n", three, replies=2)[1].startswith(
            b"-ERR too many subscriptions on this connection (max_subscriptions=2)"
        )
        # a subscriber that stays connected across the reloads
        keeper = socket.create_connection(("127.0.0.1", port), timeout=10)
        keeper.sendall(b"AUTH " + token_a + b"\r\nSUBSCRIBE %b.t\r\n" % db.encode())
        confirmed = b""
        while not confirmed.endswith(b":1\r\n"):  # subscribed before the secret rotates
            chunk = keeper.recv(65536)
            assert chunk, confirmed
            confirmed += chunk
        assert confirmed.startswith(b"+OK\r\n"), confirmed

        secret_file.write_bytes(SECRET_B)  # rotated in place
        write_config(5, free_port())  # and a listener moved: that needs a restart
        proc.send_signal(signal.SIGHUP)
        assert "max_subscriptions" in log.wait("reload: applied")
        log.wait("reload: resp changed, which needs a restart")
        log.wait("reload: new auth secret")

        assert resp(port, b"AUTH " + token_a + b"\r\n", replies=1)[0].startswith(
            b"-WRONGPASS invalid token: "
        )  # the old secret's tokens are refused from now on
        lines = resp(port, b"AUTH " + token_b + b"\r\n", three, replies=1 + 18)
        assert lines[0] == b"+OK" and lines[-1] == b":3"  # three subscribed now

        config.write_text("this is = = not toml\n")
        proc.send_signal(signal.SIGHUP)
        log.wait("the running settings stay")

        mariadb.sql(f"INSERT INTO {db}.t VALUES (1)")
        data = b""
        while b'"n":1' not in data:
            chunk = keeper.recv(65536)
            assert chunk, data
            data += chunk
        keeper.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
