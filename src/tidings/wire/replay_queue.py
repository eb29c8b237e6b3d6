"""History replays (and snapshots) feeding one connection, paced by its outbox.

A resume can have far more history to send than a connection may buffer, so it
is not written in one go: each replay is asked to `pump(budget)` as much as the
outbox has room for, oldest replay first, and the queue comes back when there
is room again. That happens on the connection's `resume_writing` (the kernel
took the data), on the replay's own wake-up (a binlog re-read or a snapshot
query produced more), or, when the output was only waiting for this
iteration's flush, on the next loop turn. Every protocol (RESP, WebSocket, SSE)
uses this one queue, so pacing behaves the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from tidings.wire.outbox import Flusher, Outbox

__all__ = ["Pumped", "ReplayQueue"]


class Pumped(Protocol):
    """What the queue drives: `tidings.hub.Replay` and the snapshot stream."""

    #: True while it waits for something else (a re-read, MySQL) that will wake the owner
    @property
    def waiting(self) -> bool: ...

    def pump(self, budget: int) -> bool:
        """Send up to about `budget` bytes; True once it has nothing more to send."""
        ...

    def cancel(self) -> None: ...


R = TypeVar("R", bound=Pumped)


class ReplayQueue(Generic[R]):
    """A FIFO of replays for one connection; `run()` whenever progress may be possible."""

    __slots__ = ("_flusher", "_outbox", "_pending", "items")

    def __init__(self, outbox: Outbox, flusher: Flusher) -> None:
        self._outbox = outbox
        self._flusher = flusher
        self._pending = False
        #: the replays, oldest (the one being pumped) first
        self.items: list[R] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[R]:
        return iter(self.items)

    def add(self, replay: R) -> None:
        """Queue `replay`; it starts at once if nothing is ahead of it."""
        self.items.append(replay)
        if len(self.items) == 1:
            self.run()

    def remove(self, replay: R) -> None:
        if replay in self.items:
            self.items.remove(replay)

    def run(self) -> None:
        """Feed the head replay as much as the output has room for, then the next."""
        self._pending = False
        outbox = self._outbox
        items = self.items
        while items:
            room = outbox.room()
            head = items[0]
            done = room > 0 and head.pump(room)
            if items is not self.items:
                return  # the pump cut the connection off (cancel_all ran)
            if not done:
                # a paused outbox calls us back via resume_writing, a waiting replay via
                # its wake-up; otherwise the room is only waiting for this turn's flush
                if not outbox.paused and not self._pending and not head.waiting:
                    self._pending = True
                    self._flusher.loop.call_soon(self.run)
                return
            items.pop(0)

    def cancel_all(self) -> None:
        """The connection is leaving (or resetting): stop every replay."""
        replays, self.items = self.items, []
        for replay in replays:
            replay.cancel()
