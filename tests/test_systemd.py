"""The notify protocol's addressing and watchdog period, without a daemon."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from tidings.systemd import Notifier


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("serving")  # no error, no socket
    notifier.close()


async def test_abstract_socket_and_watchdog_period() -> None:
    name = f"tidings-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "40000"})
    try:
        assert notifier.watchdog_interval == 0.02
        notifier.ready("serving RESP 127.0.0.1:6380")
        loop = asyncio.get_running_loop()
        first = await asyncio.wait_for(loop.sock_recv(listener, 4096), 5)
        assert first.decode().splitlines() == [
            "READY=1", "STATUS=serving RESP 127.0.0.1:6380", f"MAINPID={os.getpid()}"
        ]  # fmt: skip
        pings = [await asyncio.wait_for(loop.sock_recv(listener, 4096), 5) for _ in range(3)]
        assert pings == [b"WATCHDOG=1"] * 3
        notifier.stopping()
        assert await asyncio.wait_for(loop.sock_recv(listener, 4096), 5) == (
            b"STOPPING=1\nSTATUS=draining clients"
        )
    finally:
        notifier.close()
        listener.close()


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog_interval == 0.5


def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = Path(__file__).parents[1] / "contrib" / "systemd" / "tidings.service"
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    # verify wants ExecStart's program to exist: point it at this interpreter's tidings
    here = Path(sys.executable).with_name("tidings")
    assert here.exists(), here
    (tmp_path / "tidings.service").write_text(
        text.replace("/opt/tidings/.venv/bin/tidings", str(here))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "tidings.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")
