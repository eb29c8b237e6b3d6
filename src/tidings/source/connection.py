"""An asyncio MySQL/MariaDB client connection: admin queries and the binlog stream.

Theory of operation. `_ClientProtocol` is a plain `asyncio.Protocol`: each
`data_received` chunk goes through the sans-I/O `PacketSplitter`, complete
payloads land in a deque, and a single waiter future (created only when the
deque is empty) wakes the reader. No StreamReader and no task per packet. The
deque is bounded in bytes: past `high_water` the transport stops reading (so TCP
pushes back on the server) until the consumer drains it below `low_water`.

An idle watchdog (armed by `start_binlog`) aborts the connection when nothing at
all - not an event, not a heartbeat - arrived for `idle_timeout` seconds while
reading was not paused by us; a half-open TCP connection would otherwise wait
forever. It is one `call_later` timer per connection, not a timeout per read.

`MySQLConnection` drives `mysqlwire` over that: connect and authenticate,
`query`/`execute`, `current_position`, then `start_binlog` and `next_event`.
One command at a time; this is a replica's control connection, not a pool.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

from tidings.source import mysqlwire as wire
from tidings.source.changes import Position
from tidings.source.url import MySQLURL

log = logging.getLogger(__name__)

#: bytes of unread packets beyond which the transport stops reading
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
_PACKET_OVERHEAD = 64  # rough per-packet cost of a queued bytes object, for the byte bound


class ConnectionLost(wire.MySQLError, ConnectionError):
    """The connection ended: closed by the server, reset, timed out or closed by us."""


class BinlogUnavailable(wire.MySQLError):
    """The server has binary logging off, so there is nothing to replicate."""


class _ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_idle_handle",
        "_loop",
        "_waiter",
        "closed",
        "error",
        "high_water",
        "idle_timeout",
        "last_rx",
        "low_water",
        "paused",
        "queue",
        "queued_bytes",
        "splitter",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int, low_water: int) -> None:
        self._loop = loop
        self.splitter = wire.PacketSplitter()
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.high_water = high_water
        self.low_water = low_water
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None  # set once the connection is gone
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self.last_rx = loop.time()
        self.idle_timeout = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # the kernel notices a dead peer even when our own watchdog is off
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        try:
            packets = self.splitter.feed(data)
        except Exception as exc:  # never let a parse error escape into the loop
            self._fail(wire.ProtocolError(f"cannot frame server data: {exc}"))
            return
        if not packets:
            return
        self.queue.extend(packets)
        self.queued_bytes += sum(map(len, packets)) + _PACKET_OVERHEAD * len(packets)
        if self.queued_bytes > self.high_water and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()
        self.wake()

    def eof_received(self) -> bool | None:
        self.error = self.error or ConnectionLost("the server closed the connection")
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            if exc is None:
                self.error = ConnectionLost("the server closed the connection")
            else:
                self.error = ConnectionLost(f"connection lost: {exc}")
                self.error.__cause__ = exc
        self.closed = True
        self._cancel_idle()
        self.wake()

    # -- reading ---------------------------------------------------------------------------
    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()

    async def read(self) -> bytes:
        queue = self.queue
        while not queue:
            if self.error is not None:
                raise self.error
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        payload = queue.popleft()
        self.queued_bytes -= len(payload) + _PACKET_OVERHEAD
        if self.paused and self.queued_bytes <= self.low_water:
            self.paused = False
            self.last_rx = self._loop.time()  # the idle clock stopped while we were not reading
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        return payload

    # -- idle watchdog -----------------------------------------------------------------------
    def set_idle_timeout(self, seconds: float) -> None:
        self._cancel_idle()
        self.idle_timeout = seconds
        if seconds > 0 and not self.closed:
            self.last_rx = self._loop.time()
            self._idle_handle = self._loop.call_later(seconds, self._check_idle)

    def _cancel_idle(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _check_idle(self) -> None:
        self._idle_handle = None
        if self.closed:
            return
        now = self._loop.time()
        if self.paused:
            self.last_rx = now  # our own back-pressure: not the server's silence
        idle = now - self.last_rx
        if idle >= self.idle_timeout:
            self._fail(
                ConnectionLost(
                    f"no data from the server for {idle:.1f}s (not even a heartbeat): "
                    "connection presumed dead"
                )
            )
            return
        self._idle_handle = self._loop.call_later(self.idle_timeout - idle, self._check_idle)


_GTID_TEXT = re.compile(r"^[0-9A-Za-z:,\-\s]*$")


class MySQLConnection:
    """One client connection. Create with `await MySQLConnection.connect(url)`."""

    __slots__ = ("_busy", "_protocol", "_seq", "_streaming", "greeting", "url")

    def __init__(self, url: MySQLURL, protocol: _ClientProtocol, greeting: wire.Greeting) -> None:
        self.url = url
        self._protocol = protocol
        self.greeting = greeting
        self._seq = 0
        self._busy = False
        self._streaming = False

    # -- setup -------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        url: MySQLURL,
        *,
        timeout: float = 10.0,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
    ) -> MySQLConnection:
        """Open a TCP connection and authenticate; TimeoutError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(
                lambda: _ClientProtocol(loop, high_water, low_water), url.host, url.port
            )
            try:
                return await cls._authenticate(url, protocol)
            except BaseException:
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise

    @classmethod
    async def _authenticate(cls, url: MySQLURL, protocol: _ClientProtocol) -> MySQLConnection:
        handshake = wire.Handshake(url.user, url.password, url.database)
        reply: bytes | None = handshake.start(await protocol.read())
        assert handshake.greeting is not None
        conn = cls(url, protocol, handshake.greeting)
        conn._seq = protocol.splitter.seq + 1
        while not handshake.done:
            if reply is not None:
                conn._send(reply)
            reply = handshake.receive(await protocol.read())
            conn._seq = protocol.splitter.seq + 1
        return conn

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        if self._protocol.error is not None:
            raise self._protocol.error
        transport = self._protocol.transport
        assert transport is not None
        data, self._seq = wire.frame(payload, self._seq)
        transport.write(data)

    def _command(self, payload: bytes) -> None:
        """Start a new command: sequence ids restart at 0."""
        if self._streaming:
            raise RuntimeError("this connection is streaming the binlog; open another for queries")
        self._seq = 0
        self._send(payload)

    async def _read(self) -> bytes:
        return await self._protocol.read()

    @property
    def is_mariadb(self) -> bool:
        return self.greeting.is_mariadb

    @property
    def server_version(self) -> str:
        return self.greeting.server_version

    @property
    def closed(self) -> bool:
        return self._protocol.closed or self._protocol.error is not None

    # -- queries -----------------------------------------------------------------------------
    async def _run(self, sql: str) -> wire.ResultReader:
        if self._busy:
            raise RuntimeError("another command is in progress on this connection")
        if self._streaming:
            raise RuntimeError("this connection is streaming the binlog; open another for queries")
        self._busy = True
        try:
            self._command(wire.com_query(sql))
            reader = wire.ResultReader()
            while not reader.feed(await self._read()):
                pass
            return reader
        except wire.ServerError:
            raise  # the response ended with ERR: the connection is still in step
        except BaseException:
            self.close()  # cancelled or broken mid-response: unread packets would desync it
            raise
        finally:
            self._busy = False

    async def query(self, sql: str) -> list[wire.Row]:
        """Rows of a text result set, values as str or None (an empty list for non-SELECTs)."""
        return (await self._run(sql)).rows

    async def query_columns(self, sql: str) -> tuple[list[str], list[wire.Row]]:
        """Column names and rows."""
        reader = await self._run(sql)
        return [c.name for c in reader.columns], reader.rows

    async def execute(self, sql: str) -> wire.OkPacket:
        """Run a statement; its OK packet (affected rows, last insert id, ...)."""
        reader = await self._run(sql)
        return reader.ok or wire.OkPacket()

    async def ping(self) -> None:
        self._command(wire.com_ping())
        wire.check_ok(await self._read())

    async def variable(self, name: str) -> str | None:
        """A global/session system variable by name (`@@name`), None when NULL."""
        if not name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"bad variable name {name!r}")
        rows = await self.query(f"SELECT @@{name}")
        return rows[0][0] if rows else None

    async def current_position(self) -> Position:
        """The end of the binlog now: file, pos and the GTID state that goes with them.

        The GTID state is read before and after the coordinate; if a commit slipped
        in between, the pair may disagree, so it tries again.
        """
        gtid_var = "gtid_binlog_pos" if self.is_mariadb else "gtid_executed"
        for _ in range(10):
            before = await self._gtid_state(gtid_var)
            file, pos = await self._master_status()
            after = await self._gtid_state(gtid_var)
            if before == after:
                return Position(file, pos, after)
        return Position(file, pos, after)  # a busy server: the GTID wins when resuming

    async def _gtid_state(self, var: str) -> str | None:
        try:
            value = await self.variable(var)
        except wire.ServerError as exc:
            if exc.code == 1193:  # unknown system variable: a server without GTIDs
                return None
            raise
        value = "".join((value or "").split())
        return value or None

    async def _master_status(self) -> tuple[str, int]:
        try:
            rows = await self.query("SHOW MASTER STATUS")
        except wire.ServerError as exc:
            if exc.code != 1064:  # MySQL 8.4 renamed it
                raise
            rows = await self.query("SHOW BINARY LOG STATUS")
        if not rows or rows[0][0] is None or rows[0][1] is None:
            raise BinlogUnavailable(
                "binary logging is off on the server: start it with log-bin and "
                "binlog_format=ROW (MariaDB: also binlog_row_metadata=FULL)"
            )
        return rows[0][0], int(rows[0][1])

    # -- binlog ------------------------------------------------------------------------------
    async def start_binlog(
        self,
        *,
        server_id: int,
        position: Position,
        heartbeat: float = 1.0,
        idle_timeout: float | None = None,
        report_host: str = "",
        flags: int = 0,
    ) -> None:
        """Register as a replica and ask for the binlog from `position`.

        Resumes from `position.gtid` when set (MariaDB slave_connect_state, MySQL
        COM_BINLOG_DUMP_GTID), else from file:pos. The server sends a heartbeat
        every `heartbeat` seconds of silence; the connection is aborted after
        `idle_timeout` seconds without any data (default 3 heartbeats; 0 = never).
        Afterwards only `next_event()` may be used.
        """
        if server_id <= 0 or server_id >= 1 << 32:
            raise ValueError(f"server_id must be in 1..4294967295, not {server_id}")
        gtid = position.gtid
        if gtid is not None and not _GTID_TEXT.match(gtid):
            raise ValueError(f"bad GTID position {gtid!r}")
        heartbeat_ns = max(1, round(heartbeat * 1e9)) if heartbeat > 0 else 0
        settings = [
            "@master_binlog_checksum=@@global.binlog_checksum",
            f"@master_heartbeat_period={heartbeat_ns}",
        ]
        if not self.is_mariadb:  # MySQL 8.0.26+ reads the renamed variables first
            settings += [
                "@source_binlog_checksum=@@global.binlog_checksum",
                f"@source_heartbeat_period={heartbeat_ns}",
            ]
        if self.is_mariadb:
            settings.append("@mariadb_slave_capability=4")  # GTID-aware: GTID events, no BEGIN
            if gtid:
                settings += [
                    f"@slave_connect_state='{gtid}'",
                    "@slave_gtid_strict_mode=0",
                    "@slave_gtid_ignore_duplicates=0",
                ]
        await self.execute("SET " + ", ".join(settings))  # one round trip
        self._command(wire.com_register_slave(server_id, host=report_host, port=0))
        wire.check_ok(await self._read())
        if gtid and not self.is_mariadb:
            dump = wire.com_binlog_dump_gtid(server_id, gtid, flags=flags)
        elif gtid:  # MariaDB: the file name is ignored in favour of @slave_connect_state
            dump = wire.com_binlog_dump("", 4, server_id, flags)
        else:
            dump = wire.com_binlog_dump(position.file, position.pos, server_id, flags)
        self._command(dump)
        self._streaming = True
        if idle_timeout is None:
            idle_timeout = 3 * heartbeat if heartbeat > 0 else 0.0
        self._protocol.set_idle_timeout(idle_timeout)

    async def next_event(self) -> bytes | None:
        """The next binlog event (without the leading OK byte); None at the end of the stream.

        An ERR packet from the server raises its `ServerError`; a lost connection
        raises `ConnectionLost`.
        """
        payload = await self._protocol.read()
        if payload[:1] == b"\x00":
            return payload[1:]
        if payload[:1] == b"\xff":
            raise wire.parse_err(payload)
        if wire.is_eof(payload):
            return None
        raise wire.ProtocolError(f"unexpected packet in the binlog stream: {payload[:32]!r}")

    async def binlog_events(self) -> AsyncIterator[bytes]:
        while (event := await self.next_event()) is not None:
            yield event

    @property
    def last_rx(self) -> float:
        """Loop time of the last data received from the server."""
        return self._protocol.last_rx

    @property
    def reading_paused(self) -> bool:
        return self._protocol.paused

    # -- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close at once (COM_QUIT when idle, then close); pending reads raise ConnectionLost."""
        protocol = self._protocol
        protocol.set_idle_timeout(0)
        protocol.queue.clear()  # unread packets are moot once we hang up
        protocol.queued_bytes = 0
        if protocol.error is None:
            protocol.error = ConnectionLost("connection closed by the client")
            transport = protocol.transport
            if transport is not None:
                if not self._streaming and not self._busy:
                    data, _ = wire.frame(wire.com_quit(), 0)
                    transport.write(data)
                    transport.close()
                else:
                    transport.abort()
        protocol.wake()

    async def __aenter__(self) -> MySQLConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
