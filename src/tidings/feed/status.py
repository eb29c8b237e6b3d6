"""The producer's binlog source as consumers see it: health and metrics everywhere.

The producer sends `source_status()` a few times a second (a STATUS message);
a consumer's `RemoteSource` holds the last one and reads like the replica
itself (`tidings.wire.http_server.SourceStatus`), so /healthz and /metrics of
every consumer report the one binlog reader. Monotonic times cross processes
as they are: CLOCK_MONOTONIC is one clock for the whole machine on Linux.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from tidings.source.changes import Position
from tidings.state.checkpoint import position_from_dict, position_to_dict

__all__ = ["RemoteSource", "source_status"]

#: a status older than this (seconds) means the producer is stuck: not connected
STALE_AFTER = 3.0


class Replica(Protocol):
    connected: bool
    last_event_time: float
    last_commit_ts: int
    transactions_total: int
    events_total: int
    bytes_total: int
    reconnects: int
    heartbeat: float
    last_error: str | None
    position: Position | None


_FIELDS = (
    "connected",
    "last_event_time",
    "last_commit_ts",
    "transactions_total",
    "events_total",
    "bytes_total",
    "reconnects",
    "heartbeat",
    "last_error",
)


def source_status(replica: Replica | None, *, open: bool) -> dict[str, Any]:
    """The STATUS message's fields. `open`: clients may be let in (the producer has
    settled its ids and caught up with the binlog); `origin`: where the stream began,
    while no transaction has been read (see SnapshotService.origin)."""
    status: dict[str, Any] = {"open": open, "source": None, "origin": None}
    if replica is not None:
        source = status["source"] = {name: getattr(replica, name) for name in _FIELDS}
        position = replica.position
        source["position"] = None if position is None else position_to_dict(position)
        if replica.connected and not replica.transactions_total and position is not None:
            status["origin"] = position_to_dict(position)
    return status


class RemoteSource:
    """The producer's replica, from its last STATUS message."""

    __slots__ = (*_FIELDS[1:], "_seen", "feed_alive", "open", "origin", "position", "received")

    def __init__(self) -> None:
        self._seen = False
        self.last_event_time = 0.0
        self.last_commit_ts = 0
        self.transactions_total = 0
        self.events_total = 0
        self.bytes_total = 0
        self.reconnects = 0
        self.heartbeat = 1.0
        self.last_error: str | None = None
        self.open = False
        self.origin: Position | None = None
        #: where the producer's stream is (after the last transaction it read)
        self.position: Position | None = None
        #: time.monotonic() of the last STATUS message
        self.received = -STALE_AFTER
        #: the feed link is up (the consumer clears it when the link goes)
        self.feed_alive = True

    def update(self, status: dict[str, Any]) -> None:
        self.received = time.monotonic()
        self.open = bool(status.get("open"))
        origin = status.get("origin")
        self.origin = position_from_dict(origin) if isinstance(origin, dict) else None
        source = status.get("source")
        if isinstance(source, dict):
            self._seen = bool(source.get("connected"))
            position = source.get("position")
            self.position = position_from_dict(position) if isinstance(position, dict) else None
            for name in _FIELDS[1:]:
                if name in source:
                    setattr(self, name, source[name])

    @property
    def connected(self) -> bool:
        """The producer is connected to its source, and this consumer hears from it."""
        fresh = time.monotonic() - self.received < STALE_AFTER
        return self._seen and self.feed_alive and fresh

    @connected.setter
    def connected(self, value: bool) -> None:
        self._seen = value
