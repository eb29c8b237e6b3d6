"""Resumes older than memory history, served by re-reading the binlog.

Theory of operation. With `--state-dir` the mark index (tidings.state.index)
pairs a binlog position with the id the next event had there, every
`--mark-every` events, for as long as the server keeps the file. A client
resuming from an id that memory history no longer holds (tidings.hub.resume)
asks the hub's `reread` service, a `Rereader`, for a `BinlogFeed`: a task that
opens a second replica connection at the newest mark with id <= since + 1, maps
each transaction to events with `publish_transaction` on a scratch `Hub` (no
history, `next_id` = the mark's id: the ids come from the same code that gave
them the first time) and collects them through a pattern subscriber.

Nothing is handed out before its ids are verified: events wait in `pending`
until a transaction boundary whose id is known elsewhere (a later mark of the
index, or the live hub's position marks, `Hub.wait_position`, which also holds
the re-read back should it get ahead of the live stream) agrees with the
scratch hub's next id; then they move to `ready`, which the replay drains at
its client's pace. A mismatch (the binlog or the mapping changed since the
marks were written), a binlog file the server no longer has, or a stretch of
binlog too long to verify ends the feed with `failed` set, and the replay falls
back to a `gap` message. Reading pauses while `READY_MAX` bytes are ready.

Bounds: at most `concurrency` feeds read at once (the others queue for a slot);
each slot has its own replica server_id, `server_id + 1 + slot` (so a daemon
uses ids server_id .. server_id + concurrency: keep them free of other
replicas). The connection closes as soon as the replay has caught up with
history or its client leaves (`close()`).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

from tidings.event import Event
from tidings.hub import Hub
from tidings.publish import publish_transaction
from tidings.source.changes import Position, Transaction
from tidings.source.connection import MySQLConnection
from tidings.source.notify import Outbox
from tidings.source.replica import Replica
from tidings.source.url import MySQLURL
from tidings.state.index import Mark, MarkIndex

if TYPE_CHECKING:
    from tidings.source.binlog import TableInfo

__all__ = ["PENDING_MAX", "READY_MAX", "BinlogFeed", "Rereader"]

log = logging.getLogger("tidings.state.reread")

#: bytes of verified events held ahead of the client before reading pauses
READY_MAX: Final = 4 << 20
#: events read without meeting a verifiable boundary before the feed gives up (a mark
#: comes every --mark-every events; past the live hub's oldest mark every boundary is one)
PENDING_MAX: Final = 1_000_000


class Source(Protocol):
    """What a feed reads: committed transactions from a position (a `Replica`)."""

    def transactions(self) -> AsyncIterator[Transaction]: ...

    async def close(self) -> None: ...


#: (server_id, start position) -> a source of transactions
SourceFactory = Callable[[int, Position], Source]
#: -> the binlog files the server still has (None: it would not say)
FilesLookup = Callable[[], Awaitable[frozenset[str] | None]]


class _Collector:
    """The scratch hub's only subscriber: every event, in id order."""

    __slots__ = ("events",)

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.events.append(event)


class Rereader:
    """The hub's `reread` service (see the module docstring); one per daemon."""

    __slots__ = (
        "_closed",
        "_free",
        "_slots",
        "ddl",
        "feeds",
        "files",
        "hub",
        "index",
        "outbox_schema",
        "server_id",
        "source",
        "started",
    )

    def __init__(
        self,
        hub: Hub,
        index: MarkIndex,
        *,
        source: SourceFactory,
        files: FilesLookup,
        server_id: int,
        concurrency: int = 2,
        ddl: bool = True,
        outbox_schema: str = "tidings",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.hub = hub
        self.index = index
        self.source = source
        self.files = files
        self.server_id = server_id
        self.ddl = ddl
        self.outbox_schema = outbox_schema
        self._slots = asyncio.Semaphore(concurrency)
        self._free = list(range(concurrency))
        #: feeds not yet closed
        self.feeds: set[BinlogFeed] = set()
        #: feeds ever started (for status pages and tests)
        self.started = 0
        self._closed = False

    @classmethod
    def for_mysql(
        cls,
        hub: Hub,
        index: MarkIndex,
        url: MySQLURL,
        *,
        server_id: int,
        table_info: Callable[[str, str], Awaitable[TableInfo | None]],
        concurrency: int = 2,
        ddl: bool = True,
        outbox_schema: str = "tidings",
        heartbeat: float = 1.0,
        names_from_binlog: bool = True,
    ) -> Rereader:
        def source(server_id: int, start: Position) -> Source:
            return Replica(
                url,
                server_id=server_id,
                start=start,
                table_info=table_info,
                heartbeat=heartbeat,
                names_from_binlog=names_from_binlog,
            )

        async def files() -> frozenset[str] | None:
            conn = await MySQLConnection.connect(url, timeout=10.0)
            try:
                return frozenset(str(row[0]) for row in await conn.query("SHOW BINARY LOGS"))
            finally:
                conn.close()

        return cls(
            hub,
            index,
            source=source,
            files=files,
            server_id=server_id,
            concurrency=concurrency,
            ddl=ddl,
            outbox_schema=outbox_schema,
        )

    def mark_for(self, since: int) -> Mark | None:
        """The newest mark from which reading gives every id after `since`."""
        marks = self.index.marks
        i = bisect.bisect_right(marks, since + 1, key=lambda m: m.id)
        return marks[i - 1] if i else None

    def __call__(self, since: int, wake: Callable[[], None]) -> BinlogFeed | None:
        """A feed of the ids after `since` (see tidings.hub.resume.Reread); None when no
        mark is that old (or the service is closed): the replay then sends a gap."""
        mark = self.mark_for(since)
        if self._closed or mark is None or mark.id < self.hub.epoch:
            return None
        feed = BinlogFeed(self, mark, since, wake)
        self.feeds.add(feed)
        self.started += 1
        feed.start()
        return feed

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """One of the `concurrency` re-reads: yields its replica server_id."""
        async with self._slots:
            slot = self._free.pop(0)
            try:
                yield (self.server_id + slot) % 0xFFFFFFFF + 1
            finally:
                self._free.append(slot)
                self._free.sort()

    async def close(self) -> None:
        """Stop every feed (the daemon stops); later requests get None."""
        self._closed = True
        feeds = list(self.feeds)
        for feed in feeds:
            feed.close()
        for feed in feeds:
            await feed.wait_closed()


class BinlogFeed:
    """One re-read of the binlog for one replay (a `tidings.hub.resume.Feed`)."""

    __slots__ = (
        "_pending",
        "_ready",
        "_ready_bytes",
        "_room",
        "_task",
        "_wake",
        "failed",
        "mark",
        "read",
        "service",
        "since",
    )

    def __init__(self, service: Rereader, mark: Mark, since: int, wake: Callable[[], None]) -> None:
        self.service = service
        self.mark = mark
        self.since = since
        self._wake = wake
        #: why it cannot serve; None while it can
        self.failed: str | None = None
        #: events read so far (verified or not)
        self.read = 0
        self._pending: list[Event] = []
        self._ready: collections.deque[Event] = collections.deque()
        self._ready_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<BinlogFeed from {self.mark} after {self.since}: read {self.read}>"

    # -- the replay's side ------------------------------------------------------------------
    def peek(self) -> Event | None:
        ready = self._ready
        return ready[0] if ready else None

    def pop(self) -> None:
        event = self._ready.popleft()
        self._ready_bytes -= len(event.body)
        if self._ready_bytes < READY_MAX // 2:
            self._room.set()

    def close(self) -> None:
        self.service.feeds.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._ready.clear()
        self._pending.clear()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- the reading task -------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async with self.service.slot() as server_id:
                await self._read(server_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(f"re-reading the binlog failed: {exc}")
            log.debug("%r failed", self, exc_info=True)

    async def _read(self, server_id: int) -> None:
        service, mark = self.service, self.mark
        hub = service.hub
        file = mark.position.file
        if file:
            files = await service.files()
            if files is not None and file not in files:
                self._fail(f"the server no longer has binlog file {file} (mark id {mark.id})")
                return
        log.info("re-reading the binlog from %s (id %d) for ids after %d, as replica "
                 "server_id=%d", mark.position, mark.id, self.since, server_id)  # fmt: skip
        scratch = Hub(mark.id, history_events=0)
        scratch.epoch = hub.epoch
        scratch.psubscribe(_Collector(self._pending), "*")
        outbox = Outbox(service.outbox_schema)  # its own: the daemon's resolves PUBLISHes
        # later marks of the index, by file coordinate: boundaries whose id is known
        known = {
            (m.position.file, m.position.pos): m.id
            for m in service.index.marks
            if m.id > mark.id and m.position.file
        }
        source = service.source(server_id, mark.position)
        try:
            async for txn in source.transactions():
                before = scratch.next_id
                await publish_transaction(scratch, txn, outbox=outbox, ddl=service.ddl)
                self.read += scratch.next_id - before
                position = txn.position
                expected = known.get((position.file, position.pos))
                if expected is None:
                    try:  # waits while the live stream is behind this position
                        expected = await hub.wait_position(position)
                    except ValueError:  # no common coordinate to compare positions by
                        expected = None
                if expected is None:
                    if len(self._pending) > PENDING_MAX:
                        self._fail(f"no verifiable boundary in {PENDING_MAX} events")
                        return
                    continue
                if expected != scratch.next_id:
                    self._fail(
                        f"ids do not line up: at {position} the stream's next id is {expected}, "
                        f"the re-read's {scratch.next_id} (the binlog or the mapping changed)"
                    )
                    return
                self._verified()
                while self._ready_bytes >= READY_MAX:
                    self._room.clear()
                    await self._room.wait()
        finally:
            await source.close()

    def _verified(self) -> None:
        """Every pending event has its id confirmed: hand them out (those after `since`)."""
        pending = self._pending
        if not pending:
            return
        was_empty = not self._ready
        since = self.since
        for event in pending:
            if event.id > since:
                self._ready.append(event)
                self._ready_bytes += len(event.body)
        pending.clear()
        if was_empty and self._ready:
            self._wake()

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            log.info("%r cannot serve: %s", self, why)
            self._wake()
