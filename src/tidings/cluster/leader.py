"""The node that holds the lease: it reads the binlog and appends the events to the stream.

It is the single-process daemon (tidings.daemon) without listeners and without a
state directory: the same replica, publish mapping and outbox purger, on a
`FeedHub` whose events and marks go to a `StreamSink`. The sink joins what one
loop iteration produced into one stream entry and appends it through the
fenced script (tidings.cluster.backplane), with the last transaction boundary
of the entry as the cluster's checkpoint, in the same step: the checkpoint is
never ahead of, nor behind, what the stream holds.

Taking over. The new leader reads the checkpoint (position, next id) and the
id after the stream's last event, and reads the binlog from the checkpoint.
It derives the same ids as its predecessor did (the same binlog, the same
mapping), and leaves out every event below that id: they are in the stream
already, perhaps as the first part of a transaction its predecessor did not
finish appending. Consumers therefore see every id once, in order.

Every append carries the fencing token. A refused append (another node took
the lease) or one that fails (the backplane is unreachable) makes the leader
step down at once: what it had not appended, the next leader re-derives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tidings.cluster.backplane import Backplane, Checkpoint
from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.event import Event
from tidings.feed import FeedHub, source_status
from tidings.feed.codec import STATUS, frame_event, frame_json, frame_mark
from tidings.source.changes import Position
from tidings.source.url import MySQLURL

__all__ = ["STATUS_EVERY", "Leader", "StreamSink"]

log = logging.getLogger("tidings.cluster")

#: seconds between two status messages in the stream (the binlog's health, for /healthz)
STATUS_EVERY = 1.0


class StreamSink:
    """Feed messages -> stream entries, one append in flight at a time (see the module)."""

    def __init__(
        self, backplane: Backplane, token: int, stepped_down: Callable[[str], None]
    ) -> None:
        self.backplane = backplane
        self.token = token
        self._stepped_down = stepped_down
        self.epoch = 0
        #: events below this id are in the stream already (set by `begin`)
        self.skip_below = 0
        self._next = 0  # the id after the last event taken
        self._frames: list[bytes] = []
        self._entry_next = 0  # the id the consumer is at before the pending entry
        self._checkpoint: Checkpoint | None = None  # the pending entry's last boundary
        self._task: asyncio.Task[None] | None = None
        #: the fence refused an append (another node leads), or an append failed
        self.down = False
        #: entries appended, events left out as already in the stream
        self.entries = 0
        self.skipped = 0

    def begin(self, epoch: int, skip_below: int, checkpoint: Checkpoint | None) -> None:
        """Take over at `skip_below`; a new epoch's first entry carries its `checkpoint`."""
        self.epoch = epoch
        self.skip_below = self._next = skip_below
        self._checkpoint = checkpoint

    # -- EventSink ---------------------------------------------------------------------------
    def event(self, event: Event, live: bool, ref: int | None) -> None:
        if event.id < self.skip_below:
            self.skipped += 1
            return
        self._add(frame_event(event, live, ref))
        self._next = event.id + 1

    def mark(self, next_id: int, position: Position) -> None:
        if next_id < self.skip_below:
            return  # a boundary the stream has passed already
        self._add(frame_mark(next_id, position))
        self._checkpoint = Checkpoint(self.epoch, next_id, position)

    def status(self, status: dict[str, Any]) -> None:
        self._add(frame_json(STATUS, status))

    # -- appending --------------------------------------------------------------------------
    def _add(self, frame: bytes) -> None:
        if self.down:
            return
        if not self._frames:
            self._entry_next = self._next
        self._frames.append(frame)
        if self._task is None:
            self._task = asyncio.ensure_future(self._append())

    async def _append(self) -> None:
        await asyncio.sleep(0)  # the rest of this loop iteration joins the entry
        try:
            while self._frames and not self.down:
                frames, self._frames = self._frames, []
                checkpoint, self._checkpoint = self._checkpoint, None
                before, after = self._entry_next, self._next  # taken frames: ids before, after
                stream_id = await self.backplane.append(
                    self.token, self.epoch, before, b"".join(frames), after, checkpoint
                )
                if stream_id is None:
                    self._fail("the fence refused an append: another node took the lease")
                    return
                self.entries += 1
        except Exception as exc:  # the backplane is unreachable, or refused the script
            self._fail(f"cannot append to the backplane: {exc}")
        finally:
            self._task = None

    def _fail(self, reason: str) -> None:
        self.down = True
        self._frames = []
        self._stepped_down(reason)

    async def drain(self) -> None:
        """Wait until what was taken is appended (or the sink went down)."""
        while self._task is not None:
            await asyncio.shield(self._task)


class Leader(Daemon):
    """See the module docstring. `stepped_down(reason)` is called when it must stop."""

    def __init__(
        self,
        settings: Settings,
        backplane: Backplane,
        token: int,
        stepped_down: Callable[[str], None],
    ) -> None:
        self.sink = StreamSink(backplane, token, self._step_down)
        self.backplane = backplane
        self.token = token
        self._stepped_down = stepped_down
        # no listeners (the node has them), no history (the stream is the history), no
        # state directory (the checkpoint is in the backplane)
        hub = FeedHub(self.sink, history_events=0)
        leader_settings = replace(
            settings, resp="", http="", reread_concurrency=0, auth_secret="",
            auth_secret_file="", state_dir="",
        )  # fmt: skip
        super().__init__(leader_settings, hub)
        self._reporter: asyncio.Task[None] | None = None
        self.open = False

    async def _plan(self, url: MySQLURL) -> Position | None:
        checkpoint, following = await self.backplane.state()
        hub = self.hub
        if checkpoint is None:
            facts = await self._server_facts(url)
            if facts is None:
                return None  # stopped
            start = Position.parse(self.settings.start) or facts.end
            epoch = time.time_ns() // 1000
            hub.epoch = hub.next_id = epoch
            self.sink.begin(epoch, epoch, Checkpoint(epoch, epoch, start))
            log.info("a new cluster stream: epoch %d, reading the binlog from %s", epoch, start)
            return start
        hub.epoch = checkpoint.epoch
        hub.next_id = checkpoint.next_id
        skip_below = max(following or 0, checkpoint.next_id)
        self.sink.begin(checkpoint.epoch, skip_below, None)
        log.info(
            "taking over the cluster stream at %s (next id %d; ids below %d are in the "
            "stream already)", checkpoint.position, checkpoint.next_id, skip_below,
        )  # fmt: skip
        return checkpoint.position

    async def start(self) -> None:
        await super().start()
        self.sink.status(self.status())  # a new epoch's checkpoint goes with it
        if self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report())

    async def listen(self) -> None:
        await super().listen()  # the outbox purger
        self.open = True

    def status(self) -> dict[str, Any]:
        """source_status, with the replica's monotonic time as an age: nodes run on
        other machines, whose monotonic clocks are not this one's."""
        status = source_status(self.replica, open=self.open)
        source = status["source"]
        if source is not None:
            source["last_event_age"] = time.monotonic() - source.pop("last_event_time")
        return status

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            self.sink.status(self.status())

    def _step_down(self, reason: str) -> None:
        if not self._stopping.is_set():
            self._stepped_down(reason)
        self.stop()

    async def close(self) -> None:
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        await super().close()
        await self.sink.drain()  # the last transaction's entry, before the lease goes
