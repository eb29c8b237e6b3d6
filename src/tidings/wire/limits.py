"""Connection limits shared by every listener, and the once-a-second sweep for idle ones.

`Admission` counts open connections overall and per source address; a
connection over a limit is still accepted by the kernel, so it is told why
(RESP `-ERR max number of clients reached`, as redis says it; HTTP 503 or 429)
and closed, rather than left to time out. The RESP and HTTP listeners share one
`Admission`, so `max_clients` bounds the process, not each port.

The sweep is redis's `clientsCron`: once a second each service walks its
connections and closes those idle past `idle_timeout` (never a subscriber: a
quiet channel is not an idle client) and, for HTTP, those whose request has not
fully arrived within `request_timeout` (slowloris). Connections read the
service's coarse clock (`Clock.now`, updated by the same timer) instead of
`time.monotonic()`, so the hot path pays one attribute read per `data_received`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_BACKLOG", "Admission", "Clock", "Limits", "peer_host", "somaxconn"]

#: seconds between two sweeps
SWEEP_INTERVAL = 1.0
#: listen backlog of every listener (the `backlog` setting): Linux's default somaxconn since
#: 5.4. redis's 511 overflowed in the soak: a loop stalled for a second under 380
#: reconnects/s, and the clients whose SYNs were dropped waited out retransmission
DEFAULT_BACKLOG = 4096


def somaxconn() -> int | None:
    """The kernel's cap on any listen backlog (net.core.somaxconn), None where unknown."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as file:
            return int(file.read())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Limits:
    #: open client connections in all (0: as many as the descriptor limit allows)
    max_clients: int = 0
    #: open client connections from one source address (0: no limit)
    max_clients_per_ip: int = 0
    #: seconds after which a connection with no subscription and no request is closed (0: never)
    idle_timeout: float = 300.0
    #: seconds an HTTP request (head and body) may take to arrive, once begun (0: no limit)
    request_timeout: float = 10.0


@dataclass(slots=True)
class Admission:
    """Open connections, overall and per address, against `limits`."""

    limits: Limits = field(default_factory=Limits)
    #: the process-wide bound in force (limits.max_clients, or what descriptors allow)
    max_clients: int = 0
    open: int = 0
    by_host: dict[str, int] = field(default_factory=dict)
    #: connections refused, by reason ("max_clients", "max_clients_per_ip")
    refused: dict[str, int] = field(
        default_factory=lambda: {"max_clients": 0, "max_clients_per_ip": 0}
    )

    def __post_init__(self) -> None:
        if not self.max_clients:
            self.max_clients = self.limits.max_clients

    def enter(self, host: str) -> str | None:
        """Count a new connection from `host`; or, over a limit, return which one."""
        if self.max_clients and self.open >= self.max_clients:
            self.refused["max_clients"] += 1
            return "max_clients"
        per_ip = self.limits.max_clients_per_ip
        count = self.by_host.get(host, 0)
        if per_ip and count >= per_ip:
            self.refused["max_clients_per_ip"] += 1
            return "max_clients_per_ip"
        self.open += 1
        self.by_host[host] = count + 1
        return None

    def leave(self, host: str) -> None:
        self.open -= 1
        left = self.by_host[host] - 1
        if left:
            self.by_host[host] = left
        else:
            del self.by_host[host]

    def refusal(self, reason: str, host: str) -> str:
        """The message for a refused connection (redis's own words for the first)."""
        if reason == "max_clients":
            return "max number of clients reached"
        return (
            f"max number of clients from {host} reached "
            f"(max_clients_per_ip={self.limits.max_clients_per_ip})"
        )


def peer_host(transport: asyncio.BaseTransport) -> str:
    """The client's address without the port (what per-address limits count)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "?"


class Clock:
    """A coarse clock (time.monotonic(), at most SWEEP_INTERVAL old) and the
    once-a-second sweep of one service's connections."""

    __slots__ = ("_handle", "_sweep", "now")

    def __init__(self, sweep: Callable[[float], None]) -> None:
        self._sweep = sweep
        self._handle: asyncio.TimerHandle | None = None
        self.now = time.monotonic()

    def start(self) -> None:
        if self._handle is None:
            self.now = time.monotonic()
            self._handle = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.now = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._tick)
        self._sweep(self.now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
