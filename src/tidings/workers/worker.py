"""One worker process of `--workers N`: clients, fed by the reader's event feed.

Started by the supervisor as `python -m tidings.workers.worker FD`, FD being
its end of a unix socket pair. The first message on it is CONFIG (the
settings, this worker's number); then come the seed (the reader's history and
marks), the index marks and a status, then the feed. The worker's hub applies
every event with the id it came with (tidings.feed), so whatever a client does
here (subscribe, resume, filter, snapshot) goes as on the single process.

It opens its listeners (SO_REUSEPORT, shared with the other workers) once the
reader says clients may come in, and serves until SIGTERM (its clients are
drained as on the single process) or until the feed ends: then it stops at
once, and the supervisor starts another. Client PUBLISH goes through the
outbox table with a database source (as on the single process); without one
it goes to the reader, which gives it its id; either way the event comes back
through the feed with the client's ref, and the reply is sent once it has been
delivered here, with the receivers on this worker.

Resumes older than history re-read the binlog here (the single process's
`Rereader`), from the index marks the reader sends, with server_ids of this
worker's own: `server_id + 1 + (k-1) * reread_concurrency + slot`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from tidings.config import Settings
from tidings.daemon import Daemon, install_uvloop
from tidings.feed import FeedConsumer, FeedError, FrameReader, RemoteSource
from tidings.feed.codec import (
    CONFIG,
    INDEX,
    LISTENING,
    RELOAD,
    STATUS,
    decode_json,
    decode_mark,
    frame_bare,
    frame_publish,
)
from tidings.hub import Hub
from tidings.logs import setup_logging
from tidings.source.changes import Position
from tidings.source.notify import Outbox, PublishError
from tidings.source.schema import SchemaLookup
from tidings.source.url import MySQLURL
from tidings.state import Mark, MarkIndex
from tidings.state.reread import Rereader

__all__ = ["EXIT_CANNOT_LISTEN", "EXIT_FEED_LOST", "CannotListen", "FeedClient", "Worker", "main"]

log = logging.getLogger("tidings.workers")

#: the worker's listeners could not open (the port is taken): the supervisor gives up
EXIT_CANNOT_LISTEN = 2
#: the feed ended or made no sense: the supervisor starts another worker
EXIT_FEED_LOST = 3


class CannotListen(Exception):
    """The listeners could not open (the port is taken, the address is not ours)."""


class FeedClient(asyncio.Protocol):
    """The worker's end of its socket: feed messages in, PUBLISHes out."""

    transport: asyncio.Transport

    def __init__(self, worker: Worker, frames: FrameReader, backlog: list[bytes]) -> None:
        self.worker = worker
        self.frames = frames
        self._backlog = backlog  # messages read before the loop ran
        self._out: list[bytes] = []
        self._flush: asyncio.Handle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        backlog, self._backlog = self._backlog, []
        self._apply(backlog)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.frames.feed(data)
        except FeedError as exc:
            self._fail(exc)
            return
        self._apply(messages)

    def _apply(self, messages: list[bytes]) -> None:
        worker = self.worker
        try:
            for message in messages:
                worker.message(message)
        except (FeedError, ValueError) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        log.error("worker %d: the event feed makes no sense (%s): stopping",
                  self.worker.index, exc)  # fmt: skip
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.feed_lost()

    async def publish(self, channel: str, payload: bytes) -> int:
        """A client's PUBLISH (no database source): the reader gives it its id; returns
        the receivers here once the event has come back through the feed."""
        if self.transport.is_closing():
            raise PublishError("the event feed is gone")
        outbox = self.worker.refs
        ref, future = outbox.expect()
        self._out.append(frame_publish(ref, channel, payload))
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._write)
        try:
            return await future
        finally:
            outbox.forget(ref)

    def _write(self) -> None:
        self._flush = None
        out, self._out = self._out, []
        if not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def listening(self) -> None:
        """Tell the supervisor this worker's listeners are open."""
        if not self.transport.is_closing():
            self.transport.write(frame_bare(LISTENING))


class Worker(Daemon):
    """The worker process's daemon: listeners and hub, no binlog of its own."""

    def __init__(self, settings: Settings, index: int) -> None:
        hub = Hub(
            history_events=settings.history_events,
            history_bytes=settings.history_bytes,
            history_channel_events=settings.history_channel_events,
            history_channel_bytes=settings.history_channel_bytes,
        )
        # SIGHUP reaches the supervisor, which sends the settings it read anew (RELOAD)
        super().__init__(settings, hub, settings_source=lambda: self._reloaded)
        self._reloaded = settings
        self.index = index
        self.reuse_port = True
        #: the reader's replica, as its status messages describe it
        self.source = RemoteSource()
        #: who waits for which client PUBLISH to come back through the feed
        self.refs = self.outbox = Outbox(settings.outbox_schema)
        self.consumer = FeedConsumer(hub, replied=self.refs.seen)
        self.client: FeedClient | None = None
        self._index_marks: list[Mark] = []
        self._seeded = asyncio.Event()
        self._open = asyncio.Event()
        self._lost = asyncio.Event()

    # -- the feed ---------------------------------------------------------------------------
    def message(self, message: bytes) -> None:
        if self.consumer.message(message):
            if not self._seeded.is_set() and self.consumer.seeded:
                self._seeded.set()
            return
        kind = message[0]
        if kind == STATUS:
            status = decode_json(message)
            if not isinstance(status, dict):
                raise FeedError("bad status message")
            self.source.update(status)
            if self.source.open:
                self._open.set()
        elif kind == RELOAD:
            self._reloaded = settings_from(decode_json(message))
            self.reload()
        elif kind == INDEX:
            next_id, position = decode_mark(message)
            marks = self.marks.marks if self.marks is not None else self._index_marks
            marks.append(Mark(next_id, position))
        else:
            raise FeedError(f"unexpected message {chr(kind)!r}")

    def feed_lost(self) -> None:
        self.source.feed_alive = False
        self.refs.fail_all(PublishError("the event feed is gone"))
        self._lost.set()

    # -- serving ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Services on the seeded hub (the ids are the reader's from here on)."""
        s = self.settings
        self._make_services()
        for service in (self.resp, self.http):
            if service is not None:
                service.worker = self.index
        if self.http is not None:
            self.http.source = self.source
        if s.mysql:
            url = MySQLURL.parse(s.mysql)
            self._serve_from_mysql(url)
            if s.state_dir and s.reread_concurrency:
                self._reread_from(url)
        elif s.allow_publish:
            assert self.client is not None
            for service in (self.resp, self.http):
                if service is not None:
                    service.publisher = self.client.publish

    def _reread_from(self, url: MySQLURL) -> None:
        s = self.settings
        # read only: the marks come from the reader, which alone writes the state directory
        self.marks = MarkIndex(Path(s.state_dir), self.hub.epoch)
        self.marks.marks = self._index_marks
        self._schema = SchemaLookup(url)
        self.rereader = Rereader.for_mysql(
            self.hub,
            self.marks,
            url,
            server_id=s.server_id + (self.index - 1) * s.reread_concurrency,
            table_info=self._schema.table_info,
            concurrency=s.reread_concurrency,
            ddl=s.ddl_events,
            outbox_schema=s.outbox_schema,
            heartbeat=s.heartbeat,
            names_from_binlog=not s.names_from_schema,
        )
        self.hub.reread = self.rereader

    def _origin(self) -> Position | None:
        return self.source.origin

    async def run(self) -> None:
        """Serve until stop() or the end of the feed (then `feed_lost` is set)."""
        try:
            if await self._until(self._seeded):
                await self.start()
                if await self._until(self._open):
                    try:
                        await self.listen()
                    except OSError as exc:
                        raise CannotListen(str(exc)) from exc
                    log.info("worker %d (pid %d) serving", self.index, os.getpid())
                    if self.client is not None:
                        self.client.listening()
                    await self._until(asyncio.Event())  # until stopped or cut off
        finally:
            await self.close()

    async def _until(self, event: asyncio.Event) -> bool:
        """Wait for `event`; False if the worker stops or loses its feed first."""
        waits = [asyncio.ensure_future(e.wait()) for e in (event, self._stopping, self._lost)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return event.is_set() and not self._stopping.is_set() and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()


async def _serve(
    settings: Settings, index: int, sock: socket.socket, frames: FrameReader, backlog: list[bytes]
) -> int:
    worker = Worker(settings, index)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    _, client = await loop.create_unix_connection(
        lambda: FeedClient(worker, frames, backlog), sock=sock
    )
    worker.client = client
    try:
        await worker.run()
    except CannotListen as exc:
        log.error("worker %d cannot listen: %s", index, exc)
        return EXIT_CANNOT_LISTEN
    if worker.lost:
        log.warning("worker %d: the event feed from the reader ended: stopping", index)
        return EXIT_FEED_LOST
    return 0


def _read_config(sock: socket.socket, frames: FrameReader) -> tuple[dict[str, object], list[bytes]]:
    """The CONFIG message (read before the loop runs) and any messages after it."""
    messages: list[bytes] = []
    while not messages:
        data = sock.recv(1 << 16)
        if not data:
            raise FeedError("the socket closed before the configuration came")
        messages = frames.feed(data)
    first = messages.pop(0)
    config = decode_json(first) if first[0] == CONFIG else None
    if not isinstance(config, dict):
        raise FeedError("the first message is not the configuration")
    return config, messages


def settings_from(value: object) -> Settings:
    """The Settings a CONFIG or RELOAD message carries."""
    if not isinstance(value, dict):
        raise FeedError("settings are not a JSON object")
    return Settings(**value)


def tag_logs(index: int) -> None:
    """Every log record of this process names its worker (text and JSON formats alike)."""
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.name = f"worker{index}.{record.name}"
        return record

    logging.setLogRecordFactory(factory)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    frames = FrameReader()
    try:
        config, backlog = _read_config(sock, frames)
        index = int(cast(int, config["index"]))
        settings = settings_from(config["settings"])
    except (FeedError, KeyError, TypeError, ValueError, OSError) as exc:
        print(f"tidings worker: {exc}", file=sys.stderr)
        return EXIT_FEED_LOST
    tag_logs(index)
    setup_logging(settings.log_level, settings.log_format)
    sock.setblocking(False)
    install_uvloop()
    return asyncio.run(_serve(settings, index, sock, frames, backlog))


if __name__ == "__main__":
    sys.exit(main())
