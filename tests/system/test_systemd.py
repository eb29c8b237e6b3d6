"""`tidings serve` under systemd's notify protocol, and its JSON log lines.

The test plays systemd's part: it binds the datagram socket named in
NOTIFY_SOCKET, as systemd does for a `Type=notify` unit, and reads what the
daemon sends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.system.test_cli import TIDINGS
from tidings.sandbox import PrivateMariaDB, free_port


def receive(sock: socket.socket, until: str, timeout: float = 30) -> list[dict[str, str]]:
    """Notifications up to and including the first one that has the key `until`."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not got or until not in got[-1]:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no {until} within {timeout}s; got {got}") from None
        got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return got


def test_ready_watchdog_and_stopping_reach_systemd_and_logs_are_json(
    tmp_path: Path, mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    notify.bind(str(path))
    port = free_port()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(path),
        "WATCHDOG_USEC": "200000",  # WatchdogSec=0.2: a ping every 0.1 s
        "TIDINGS_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [*TIDINGS, "serve", "--mysql", mariadb.url(), "--server-id", str(replica_server_id),
         "--resp", f"127.0.0.1:{port}", "--http", ""],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        ready = receive(notify, "READY")[-1]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == f"serving RESP 127.0.0.1:{port}"
        # READY means clients are let in: the listener answers now
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"PING\r\n")
            assert client.recv(64) == b"+PONG\r\n"
        started = time.monotonic()
        pings = receive(notify, "WATCHDOG")
        pings += receive(notify, "WATCHDOG")
        pings += receive(notify, "WATCHDOG")
        assert [p for p in pings if "WATCHDOG" in p] == [{"WATCHDOG": "1"}] * 3
        assert time.monotonic() - started < 2  # every 0.1 s, with room for a slow machine
        proc.send_signal(signal.SIGTERM)
        stopping = receive(notify, "STOPPING")[-1]
        assert stopping["STOPPING"] == "1"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert proc.stderr is not None
    entries = [json.loads(line) for line in proc.stderr.read().splitlines()]
    assert entries, "no log lines"
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in entries), entries
    assert any(e["message"] == f"RESP (Redis pub/sub protocol) on 127.0.0.1:{port}"
               for e in entries), entries  # fmt: skip
