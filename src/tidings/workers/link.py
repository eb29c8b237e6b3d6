"""The reader's side of the worker sockets: one feed, written to every worker.

`WorkerFeed` is the `FeedHub`'s sink. Every event and mark becomes one framed
message (tidings.feed.codec), encoded once; the messages of one loop iteration
are joined and written to each worker's socket with one `write` per worker at
the end of the iteration, so a burst (a transaction, a pipeline of PUBLISHes)
reaches a worker as one read and its subscribers as one write each.

The reader never waits for a worker: what a worker has not read yet waits in
its transport's buffer. A worker more than `limit` bytes behind (counted above
the least it has been behind since it was seeded, so its copy of history does
not count) is cut off: its socket is closed, the worker sees the feed end,
stops, and the supervisor starts another, which is seeded afresh. Its clients
reconnect (to any worker) and resume with their last id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from tidings.event import Event
from tidings.feed.codec import (
    INDEX,
    LISTENING,
    PUBLISH,
    STATUS,
    DecodedPublish,
    FeedError,
    FrameReader,
    decode_publish,
    frame_event,
    frame_json,
    frame_mark,
)
from tidings.source.changes import Position

__all__ = ["WorkerFeed", "WorkerLink"]

log = logging.getLogger("tidings.workers")


class WorkerLink(asyncio.Protocol):
    """The reader's end of one worker's socket."""

    transport: asyncio.Transport

    def __init__(
        self, feed: WorkerFeed, index: int, on_listening: Callable[[int], None] | None = None
    ) -> None:
        self.feed = feed
        self.index = index
        #: called with `index` when the worker says its listeners are open
        self.on_listening = on_listening
        self.frames = FrameReader()
        #: bytes the buffer may hold beyond `feed.limit`: the least it held since the seed
        self.allowance = 0
        self.closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<WorkerLink worker {self.index}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.frames.feed(data):
                if message[0] == PUBLISH:
                    self.feed.on_publish(decode_publish(message))
                elif message[0] == LISTENING and self.on_listening is not None:
                    self.on_listening(self.index)
                else:
                    raise FeedError(f"unexpected message {chr(message[0])!r} from a worker")
        except FeedError as exc:
            log.error("worker %d sent what is not a feed message (%s): cutting it off",
                      self.index, exc)  # fmt: skip
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed.detach(self)
        self.closed.set()

    def send(self, data: bytes) -> None:
        """Write `data`; cut the worker off if it is too far behind."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        backlog = transport.get_write_buffer_size()
        if backlog < self.allowance:
            self.allowance = backlog
        elif backlog > self.feed.limit + self.allowance:
            log.warning(
                "worker %d is %d MiB behind the event feed (limit %d MiB, --worker-buffer): "
                "restarting it; its clients reconnect and resume",
                self.index,
                backlog >> 20,
                self.feed.limit >> 20,
            )
            self.feed.detach(self)
            transport.abort()

    def seed(self, frames: list[bytes]) -> None:
        """Send a joining worker its copy of the state; its size does not count as lag."""
        data = b"".join(frames)
        self.transport.write(data)
        self.allowance = self.transport.get_write_buffer_size()


class WorkerFeed:
    """The sink of the reader's `FeedHub`: every message to every attached worker."""

    def __init__(self, limit: int, on_publish: Callable[[DecodedPublish], None]) -> None:
        self.limit = limit
        #: a worker's PUBLISH (no database source): the reader gives it its id
        self.on_publish = on_publish
        #: workers being fed, in the order they joined
        self.links: dict[WorkerLink, None] = {}
        #: workers that connected before the reader had settled its ids
        self._waiting: list[WorkerLink] = []
        #: -> the frames a joining worker is sent first (seed, index marks, status)
        self._welcome: Callable[[], list[bytes]] | None = None
        self._frames: list[bytes] = []
        self._flush: asyncio.Handle | None = None

    # -- the FeedHub's side -----------------------------------------------------------------
    def event(self, event: Event, live: bool, ref: int | None) -> None:
        self._add(frame_event(event, live, ref))

    def mark(self, next_id: int, position: Position) -> None:
        self._add(frame_mark(next_id, position))

    # -- the reader's side ------------------------------------------------------------------
    def index_mark(self, next_id: int, position: Position) -> None:
        self._add(frame_mark(next_id, position, INDEX))

    def status(self, status: dict[str, object]) -> None:
        self._add(frame_json(STATUS, status))

    def open(self, welcome: Callable[[], list[bytes]]) -> None:
        """The ids are settled: seed the workers that wait, and every later one on arrival."""
        self._welcome = welcome
        waiting, self._waiting = self._waiting, []
        for link in waiting:
            self.attach(link)

    def attach(self, link: WorkerLink) -> None:
        """Start feeding a connected worker: its seed now, then what every worker gets."""
        if link.transport.is_closing():
            return
        if self._welcome is None:
            self._waiting.append(link)
            return
        # what is queued is already in the state the seed copies: out to the others first
        self.flush()
        link.seed(self._welcome())
        self.links[link] = None

    def detach(self, link: WorkerLink) -> None:
        self.links.pop(link, None)
        if link in self._waiting:
            self._waiting.remove(link)

    def _add(self, frame: bytes) -> None:
        self._frames.append(frame)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what this loop iteration queued to every worker."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        frames = self._frames
        if not frames:
            return
        data = b"".join(frames) if len(frames) > 1 else frames[0]
        frames.clear()
        for link in tuple(self.links):
            link.send(data)
