"""systemd's notify protocol (`Type=notify`): READY, STOPPING, STATUS and WATCHDOG.

systemd passes a datagram socket in `NOTIFY_SOCKET` (a path, or an abstract
name written with a leading '@') and, with `WatchdogSec=`, the watchdog period
in `WATCHDOG_USEC`. Each message is one datagram of `KEY=value` lines, sent
without waiting for an answer; that is the whole of libsystemd's sd_notify(),
so tidings needs no binding to it. Without `NOTIFY_SOCKET` (not run by
systemd) every call does nothing.

The watchdog is pinged from the event loop itself, at half the period as
systemd advises: a loop that stops turning stops the pings, and systemd
restarts the daemon — which is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Tell systemd (if it started us) how the daemon is doing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())  # systemd may mean another process
        #: seconds between watchdog pings (half systemd's timeout), None without a watchdog
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> None:
        """One datagram, e.g. send(READY="1", STATUS="serving")."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:  # systemd gone (or a stale variable): not worth dying for
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))
        self.start_watchdog()

    def stopping(self, status: str = "draining clients") -> None:
        self.stop_watchdog()
        self.send(STOPPING="1", STATUS=status)

    def start_watchdog(self) -> None:
        if self.watchdog_interval is None or self._sock is None or self._timer is not None:
            return
        self._ping()

    def _ping(self) -> None:
        self.send(WATCHDOG="1")
        assert self.watchdog_interval is not None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.watchdog_interval, self._ping)

    def stop_watchdog(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
