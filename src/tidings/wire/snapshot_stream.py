"""A table's current rows, then its stream from exactly there: the protocol-independent half.

Theory of operation. A client asks for `database.table` (optionally with a row
filter, `shop.orders?status=eq.new`). `SnapshotService.request()` checks the name
and returns a `SnapshotStream`, which a wire protocol drives exactly as it drives
a history `Replay` (tidings.hub.resume): it calls `pump(budget)` whenever the
client's output has room, and each call delivers, through the client's ordinary
`deliver`, about `budget` bytes. What it delivers, in order:

1. each row of a consistent snapshot (tidings.source.snapshot), as
   `{"type":"snapshot","channel":C,"database":D,"table":T,"data":{...}}`;
2. `{"type":"snapshot-end","channel":C,"id":N,"rows":R}`, where N is the last
   stream id *before* the snapshot's binlog position: every change the snapshot
   does not contain has an id above N, every change it contains one at or below;
3. what `Hub.resume(client, N, channels=[C])` delivers: the retained events after
   N on C (filtered, with `enter`/`leave`, a `gap` if history lost some), then live.

The MySQL work runs in one task per stream, on the snapshot's own connection, and
never blocks the loop. It holds one batch of rows at a time: the next page is read
only when `pump` has handed every row of the current one to the client, so memory
is one batch plus the client's bounded output, however slowly it reads. Whenever
`pump` cannot go on until that task has done something (opening, reading a page,
waiting for the daemon to reach the snapshot's position) it returns False with
`waiting` set, and the task calls the client's `snapshot_wake()` when it has.

N comes from the hub's position marks: `Hub.wait_position(P)` waits until the
daemon has published every transaction before P and gives the next id there.
Two cases the file coordinate alone cannot settle are settled by GTID: a
snapshot taken just after a binlog rotation on an idle server has a position
(the start of the new file) that no transaction will pass until the next write,
so while waiting the GTID state of the snapshot is compared with the daemon's
every `GTID_RECHECK` seconds; and a daemon that has published nothing since it
connected has no mark at all, so the position it started reading at is recorded
first (`origin`). If the position is older than every mark the hub still keeps,
the pairing is lost: `snapshot-end` then carries the current end of the stream
and is followed by a `gap` message (reload your state), never a silent skip.

At most `concurrency` snapshots read from MySQL at once (each holds a connection
and an open transaction until its last row is handed over); the others queue in
order of arrival. A stream's slot is released as soon as its rows are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol

import orjson

from tidings.event import Event
from tidings.hub import Hub, Replay
from tidings.hub.filtering import split
from tidings.hub.filters import FilterError, RowFilter
from tidings.hub.marks import gtid_covers
from tidings.hub.resume import FRAME_OVERHEAD, gap_body
from tidings.source.changes import Position
from tidings.source.snapshot import SnapshotError, read_snapshot
from tidings.source.url import MySQLURL

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CONCURRENCY",
    "RowSource",
    "SnapshotClient",
    "SnapshotRequestError",
    "SnapshotService",
    "SnapshotStream",
    "stream_id_at",
]

log = logging.getLogger("tidings.wire.snapshot")

#: snapshots reading from MySQL at once; the rest queue
DEFAULT_CONCURRENCY: Final = 4
#: rows per page read from MySQL (and so the rows held in memory per stream)
DEFAULT_BATCH: Final = 1000
#: seconds between GTID checks while waiting for the daemon to reach a snapshot's position
GTID_RECHECK: Final = 0.25


class SnapshotRequestError(ValueError):
    """A snapshot request that cannot be served; the message says why."""


class RowSource(Protocol):
    """What a stream needs of `tidings.source.snapshot.Snapshot` (stubbed in unit tests)."""

    @property
    def position(self) -> Position: ...

    def batches(self) -> AsyncIterator[list[dict[str, Any]]]: ...

    def close(self) -> None: ...


#: opens a snapshot: (database, table, filter, batch) -> rows and their position
Opener = Callable[[str, str, RowFilter | None, int], Awaitable[RowSource]]


class SnapshotClient(Protocol):
    """The wire protocol's side: a hub `Subscriber` plus three notifications."""

    def deliver(self, event: Event, pattern: str | None) -> None: ...

    def snapshot_opened(self, stream: SnapshotStream) -> None:
        """The snapshot is taken: confirm the subscription; rows follow through `pump`."""

    def snapshot_failed(self, stream: SnapshotStream, message: str) -> None:
        """It failed (before `snapshot_opened` or while reading rows); nothing more comes."""

    def snapshot_wake(self, stream: SnapshotStream) -> None:
        """`stream.pump()` can make progress again (it was `waiting`)."""


def _id_by_gtid(hub: Hub, position: Position) -> tuple[bool, int | None]:
    """(True, next id at `position`) by GTID once the daemon has passed it, else (False, _)."""
    reached = hub.marks.reached
    if position.gtid is None or reached is None or not reached.gtid:
        return False, None
    try:
        if not gtid_covers(reached.gtid, position.gtid):
            return False, None
        # every transaction of the snapshot is published: the last mark it contains
        return True, hub.id_at(Position("", 4, position.gtid))
    except ValueError:  # marks without GTIDs, or a state we cannot read: files decide
        return False, None


async def stream_id_at(
    hub: Hub, position: Position, *, recheck: float = GTID_RECHECK
) -> int | None:
    """Wait until the daemon has published every transaction before `position`; return
    the id the next event after it takes (None: older than the marks the hub keeps)."""
    while True:
        passed, found = _id_by_gtid(hub, position)
        if passed:
            return found if found is not None else hub.id_at(position)
        if position.gtid is None:
            return await hub.wait_position(position)
        try:
            return await asyncio.wait_for(hub.wait_position(position), recheck)
        except TimeoutError:
            continue  # the file coordinate may never be passed (a rotation): ask GTID again


class SnapshotService:
    """Serves snapshot requests for every wire protocol; owns the concurrency limit."""

    def __init__(
        self,
        hub: Hub,
        opener: Opener,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch: int = DEFAULT_BATCH,
        origin: Callable[[], Position | None] | None = None,
    ) -> None:
        if concurrency < 1 or batch < 1:
            raise ValueError("snapshot concurrency and batch must be at least 1")
        self.hub = hub
        self.opener = opener
        self.concurrency = concurrency
        self.batch = batch
        #: where the daemon began reading the binlog, while it has published nothing yet
        self.origin = origin
        self._slots = asyncio.Semaphore(concurrency)
        #: streams whose task is running (a dict as an ordered set)
        self.streams: dict[SnapshotStream, None] = {}
        #: snapshots reading from MySQL now, and waiting for a slot
        self.active = 0
        self.queued = 0
        self.served = 0
        self.failed = 0

    @classmethod
    def for_mysql(cls, hub: Hub, url: MySQLURL, **options: Any) -> SnapshotService:
        """Snapshots of the daemon's MySQL source, each on its own connection."""

        async def opener(
            database: str, table: str, row_filter: RowFilter | None, batch: int
        ) -> RowSource:
            return await read_snapshot(url, database, table, row_filter, batch=batch)

        return cls(hub, opener, **options)

    def request(self, client: SnapshotClient, name: str) -> SnapshotStream:
        """Start a snapshot of channel `name` for `client`; raises SnapshotRequestError."""
        try:
            base, row_filter = split(name)
        except FilterError as exc:
            raise SnapshotRequestError(f"invalid filter in channel '{name}': {exc}") from exc
        database, dot, table = base.partition(".")
        if not dot or not database or not table:
            raise SnapshotRequestError(
                f"a snapshot needs a channel 'database.table', not '{base[:128]}'"
            )
        return SnapshotStream(self, client, name, database, table, row_filter)

    async def close(self) -> None:
        """Cancel every stream and wait for their MySQL connections to close."""
        tasks = [stream.task for stream in self.streams]
        for stream in list(self.streams):
            stream.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _mark_origin(self) -> None:
        """A daemon that has published nothing has no mark: record where it started, so a
        snapshot at or after that point pairs with the first id (not a needless gap)."""
        if self.hub.marks.reached is None and self.origin is not None:
            start = self.origin()
            if start is not None and self.hub.marks.reached is None:
                self.hub.mark(start)


class SnapshotStream:
    """One client's snapshot of one channel, then its stream; see the module docstring."""

    __slots__ = (
        "_batch",
        "_index",
        "_prefix",
        "_replay",
        "_taken",
        "client",
        "database",
        "filter",
        "hub",
        "last_id",
        "name",
        "position",
        "rows_sent",
        "service",
        "state",
        "table",
        "task",
        "waiting",
    )

    def __init__(
        self,
        service: SnapshotService,
        client: SnapshotClient,
        name: str,
        database: str,
        table: str,
        row_filter: RowFilter | None,
    ) -> None:
        self.service = service
        self.hub = service.hub
        self.client = client
        #: the channel as the client named it: every message carries it
        self.name = name
        self.database = database
        self.table = table
        self.filter = row_filter
        #: opening -> rows -> resolving -> handover -> replay -> live; or cancelled / failed
        self.state = "opening"
        #: pump() can do nothing until the task calls client.snapshot_wake()
        self.waiting = True
        #: the snapshot's binlog position, once open
        self.position: Position | None = None
        #: N in snapshot-end: events with greater ids follow
        self.last_id: int | None = None
        self.rows_sent = 0
        self._batch: list[dict[str, Any]] = []
        self._index = 0
        self._taken: asyncio.Future[None] | None = None
        self._replay: Replay | None = None
        dumps = orjson.dumps
        self._prefix = b'{"type":"snapshot","channel":%b,"database":%b,"table":%b,"data":' % (
            dumps(name),
            dumps(database),
            dumps(table),
        )
        service.streams[self] = None
        self.task = asyncio.ensure_future(self._run())

    def __repr__(self) -> str:
        return f"<SnapshotStream {self.state} {self.name!r} rows={self.rows_sent}>"

    @property
    def done(self) -> bool:
        return self.state in ("live", "cancelled", "failed")

    # -- the wire protocol's side --------------------------------------------------------------
    def pump(self, budget: int) -> bool:
        """Deliver up to about `budget` bytes; True once live (or cancelled or failed).

        False: call again when the output drains, unless `waiting` (then the task
        calls `snapshot_wake` when there is something to deliver).
        """
        state = self.state
        if state == "rows":
            return self._pump_rows(budget)
        if state == "handover":
            budget -= self._handover()
            state = self.state
        if state == "replay":
            assert self._replay is not None
            if budget <= 0:
                return False
            if self._replay.pump(budget):
                if self._replay.state == "live":
                    self.state = "live"
                return True
            return False
        return self.done

    def discard(self, name: str, *, pattern: bool = False) -> None:
        """The client unsubscribed from `name`: stop if it is this stream's channel."""
        if not pattern and name == self.name:
            self.cancel()

    def cancel(self) -> None:
        """Stop (the client left or unsubscribed); a live subscription is not undone."""
        if self.done:
            return
        self.state = "cancelled"
        self.waiting = False
        self._batch = []
        if self._replay is not None:
            self._replay.cancel()
        self.task.cancel()

    # -- delivering ------------------------------------------------------------------------------
    def _pump_rows(self, budget: int) -> bool:
        batch, i, end = self._batch, self._index, len(self._batch)
        name, prefix, deliver = self.name, self._prefix, self.client.deliver
        overhead = len(name) + FRAME_OVERHEAD
        dumps = orjson.dumps
        sent = 0
        while i < end:
            body = b"%b%b}" % (prefix, dumps(batch[i]))
            i += 1
            deliver(Event(0, name, body), None)
            sent += len(body) + overhead
            if self.state != "rows":  # delivery cut the connection, which cancelled us
                return True
            if sent >= budget:
                break
        self.rows_sent += i - self._index
        self._index = i
        if i >= end:
            self._batch = []  # the task reads the next page only now: one batch at a time
            self.waiting = True
            taken = self._taken
            if taken is not None and not taken.done():
                taken.set_result(None)
        return False

    def _handover(self) -> int:
        """snapshot-end (and a gap if the pairing is lost), then the replay from N."""
        hub = self.hub
        last_id = self.last_id
        gap = last_id is None
        if last_id is None:
            last_id = self.last_id = hub.next_id - 1
        end = orjson.dumps(
            {"type": "snapshot-end", "channel": self.name, "id": last_id, "rows": self.rows_sent}
        )
        self.client.deliver(Event(last_id, self.name, end), None)
        sent = len(end) + len(self.name) + FRAME_OVERHEAD
        if gap:
            # ids after the epoch's start up to now may be missing from the rows: reload
            body = gap_body(self.name, max(0, hub.epoch - 1), last_id + 1, hub.epoch)
            self.client.deliver(Event(last_id, self.name, body), None)
            sent += len(body) + len(self.name) + FRAME_OVERHEAD
        if self.state == "handover":  # not cut off by those deliveries
            self._replay = hub.resume(self.client, last_id, channels=[self.name])
            self.state = "replay"
        return sent

    def _wake(self, state: str | None = None) -> None:
        if self.done:
            return
        if state is not None:
            self.state = state
        self.waiting = False
        self.client.snapshot_wake(self)

    # -- the task: MySQL and the position ----------------------------------------------------------
    async def _run(self) -> None:
        service = self.service
        resolving: asyncio.Task[int | None] | None = None
        try:
            service.queued += 1
            try:
                await service._slots.acquire()
            finally:
                service.queued -= 1
            service.active += 1
            try:
                service._mark_origin()
                snap = await service.opener(self.database, self.table, self.filter, service.batch)
                try:
                    self.position = snap.position
                    # resolve now, while the rows go out: the mark for the position is
                    # looked up before the hub's bounded marks could drop it
                    resolving = asyncio.ensure_future(stream_id_at(self.hub, snap.position))
                    self.state = "rows"
                    self.client.snapshot_opened(self)
                    async for batch in snap.batches():
                        if self.state != "rows":
                            return
                        self._batch, self._index = batch, 0
                        self._taken = asyncio.get_running_loop().create_future()
                        self._wake()
                        await self._taken
                finally:
                    snap.close()
            finally:
                service.active -= 1
                service._slots.release()
            if self.state != "rows":
                return
            self.state = "resolving"
            self.waiting = True
            next_id = await resolving
            self.last_id = None if next_id is None else next_id - 1
            if next_id is None:
                log.warning(
                    "snapshot of %s at %s: the position is older than the stream's marks; "
                    "the client gets a gap",
                    self.name,
                    self.position,
                )
            service.served += 1
            self._wake("handover")
        except (SnapshotError, FilterError) as exc:
            self._fail(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("snapshot of %s failed", self.name)
            self._fail(f"snapshot of {self.name} failed: {exc!r}")
        finally:
            if resolving is not None and not resolving.done():
                resolving.cancel()
            service.streams.pop(self, None)

    def _fail(self, message: str) -> None:
        self.service.failed += 1
        if self.done:
            return
        self.state = "failed"
        self.waiting = False
        self._batch = []
        self.client.snapshot_failed(self, message)
