"""The one process of `--workers N` that reads the binlog and gives every id.

It is the single-process daemon (tidings.daemon) without client listeners:
the same replica, start-up plan, checkpoints, mark index and outbox purger,
the only writer of the state directory. Its hub is a `FeedHub` whose events
and marks go to every worker through a `WorkerFeed`; it keeps history only to
seed a worker that starts later. Besides the feed it sends the workers:

- the marks it adds to the index (workers re-read the binlog from them for
  resumes older than history; they never touch the state directory);
- its status every `STATUS_EVERY` seconds: the replica's health for their
  /healthz and /metrics, and whether clients may be let in (after the start-up
  refill and catch-up, exactly when the single process would open its ports).

Without a database source it gives ids to the workers' client PUBLISHes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.feed import FeedHub, seed_frames, source_status
from tidings.feed.codec import INDEX, STATUS, DecodedPublish, frame_json, frame_mark
from tidings.state import Mark
from tidings.workers.link import WorkerFeed

__all__ = ["STATUS_EVERY", "Reader"]

log = logging.getLogger("tidings.workers")

#: seconds between two status messages to the workers
STATUS_EVERY = 0.25


class Reader(Daemon):
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.feed = WorkerFeed(settings.worker_buffer, self._publish)
        hub = FeedHub(
            self.feed,
            history_events=settings.history_events,
            history_bytes=settings.history_bytes,
            history_channel_events=settings.history_channel_events,
            history_channel_bytes=settings.history_channel_bytes,
        )
        # no listeners here (so no TLS, no tokens), and the workers serve old resumes
        reader_settings = replace(
            settings, resp="", http="", reread_concurrency=0, auth_secret="", auth_secret_file=""
        )
        super().__init__(reader_settings, hub)
        #: clients may be let in (what the single process would open its listeners at)
        self.open = False
        self._reporter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        # the ids are settled (epoch, first id): workers may be seeded from here on
        self.feed.open(self._welcome)
        if self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report())

    async def listen(self) -> None:
        await super().listen()  # the outbox purger
        self.open = True
        self.feed.status(self.status())
        log.info("clients may connect to the workers now")

    def status(self) -> dict[str, object]:
        return source_status(self.replica, open=self.open)

    def _welcome(self) -> list[bytes]:
        """What a worker joining now is sent before the feed: seed, index, status."""
        frames = seed_frames(self.hub)
        if self.marks is not None:
            frames += [frame_mark(m.id, m.position, INDEX) for m in self.marks.marks]
        frames.append(frame_json(STATUS, self.status()))
        return frames

    def _indexed(self, mark: Mark) -> None:
        self.feed.index_mark(mark.id, mark.position)

    def _publish(self, request: DecodedPublish) -> None:
        if self.settings.mysql:
            # workers publish through the outbox table then: this is not one of ours
            log.warning("a worker sent a PUBLISH to the binlog reader: ignored")
            return
        self.hub.publish(request.channel, request.payload, ref=request.ref)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            self.feed.status(self.status())

    async def close(self) -> None:
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        await super().close()
        self.feed.flush()  # the last events and marks, before the links close
