"""A TCP proxy under the test's control: forward, or stall like a cut network cable.

`cut()` stops forwarding in both directions without closing anything: no FIN, no
RST, the bytes just stop, as when a link or a firewall drops packets. Each side
then sees only silence, which only a timeout can tell from a quiet peer.
`restore()` lets the held bytes through again. `reset()` closes every proxied
connection at once (what a peer sees when a middlebox kills them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class Proxy:
    def __init__(self, upstream: tuple[str, int], *, upstream_rcvbuf: int = 0) -> None:
        self.upstream = upstream
        #: SO_RCVBUF of the proxy's sockets to upstream (0: the kernel's autotuning), so a
        #: cut backs up into the upstream server after a known amount, not tens of MB
        self.upstream_rcvbuf = upstream_rcvbuf
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] = ("", 0)
        self.connections = 0

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    def reset(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._open.wait()  # a cut network does not connect either
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        if self.upstream_rcvbuf:
            sock = up_writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.upstream_rcvbuf)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._open.wait()  # held, not dropped: TCP would retransmit it
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: end the other
