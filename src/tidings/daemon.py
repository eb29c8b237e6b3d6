"""Wires the binlog source to the hub and the hub to the listeners; signals and drain.

The whole daemon is one event loop. Each client connection is an asyncio
Protocol whose methods the loop calls when its socket is ready (the 2007
post's "structure with function pointers" behind epoll's user-data pointer);
the binlog connection is one more such descriptor. Nothing here scans
connections or waits on a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from typing import Any

from tidings.config import Settings, parse_hostport
from tidings.hub import Hub
from tidings.publish import publish_transaction
from tidings.source.changes import Position
from tidings.source.replica import Replica
from tidings.source.schema import SchemaLookup
from tidings.source.url import MySQLURL
from tidings.wire.resp_server import RespService, RespSettings

log = logging.getLogger("tidings.daemon")


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub()
        self.replica: Replica | None = None
        self.resp: RespService | None = None
        self.resp_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        self._schema: SchemaLookup | None = None

    async def start(self) -> None:
        s = self.settings
        capacity = raise_fd_limit()
        if s.resp:
            host, port = parse_hostport(s.resp)
            self.resp = RespService(
                self.hub,
                RespSettings(
                    allow_publish=s.allow_publish, max_bulk=s.max_bulk, output_limit=s.output_limit
                ),
            )
            server = await self.resp.start(host, port)
            self.resp_address = server.sockets[0].getsockname()[:2]
            log.info("RESP (Redis pub/sub protocol) on %s:%d", *self.resp_address)
        log.info(
            "descriptor limit %d: room for about %d client connections", capacity, capacity - 50
        )
        if s.mysql:
            url = MySQLURL.parse(s.mysql)
            self._schema = SchemaLookup(url)
            self.replica = Replica(
                url,
                server_id=s.server_id,
                start=Position.parse(s.start),
                table_info=self._schema.table_info,
                heartbeat=s.heartbeat,
                names_from_binlog=not s.names_from_schema,
            )
            log.info(
                "reading the binlog of %s as replica server_id=%d", url.redacted(), s.server_id
            )
        else:
            log.warning("no --mysql given: serving pub/sub only, no database events")

    async def run(self) -> None:
        """Serve until stop() or a fatal source error."""
        await self.start()
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stopping.wait())]
        if self.replica is not None:
            tasks.append(asyncio.ensure_future(self._pump(self.replica)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise a fatal source error
        finally:
            for task in tasks:
                task.cancel()
            await self.close()

    async def _pump(self, replica: Replica) -> None:
        async for txn in replica.transactions():
            await publish_transaction(self.hub, txn)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Stop reading the binlog, then close every client after what is queued for it."""
        if self.replica is not None:
            await self.replica.close()
        if self._schema is not None:
            await self._schema.close()
        if self.resp is not None:
            await self.resp.close()


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve(settings: Settings) -> None:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop)
    await daemon.run()
