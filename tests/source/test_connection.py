"""MySQLConnection against a real MariaDB: auth, queries, the binlog stream, flow control."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from tidings.sandbox import PrivateMariaDB
from tidings.source import mysqlwire as wire
from tidings.source.changes import Position
from tidings.source.connection import ConnectionLost, MySQLConnection
from tidings.source.url import MySQLURL

_names = itertools.count(1)

ROTATE, FORMAT_DESCRIPTION, XID, TABLE_MAP, WRITE_ROWS_V1, HEARTBEAT = 4, 15, 16, 19, 23, 27
MARIADB_GTID = 162


def event_type(event: bytes) -> int:
    return event[4]


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll a condition on the event loop (readiness, not a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


class FaultProxy:
    """A TCP proxy in front of a server that can freeze (black-hole) or cut its connections."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = False
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.pairs.append((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.frozen:  # frozen: bytes vanish, sockets stay open (half-dead link)
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()

    def cut(self) -> None:
        """Reset every proxied connection, as a network failure would."""
        for a, b in self.pairs:
            for w in (a, b):
                transport = w.transport
                assert isinstance(transport, asyncio.Transport)
                transport.abort()
        self.pairs.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def url(mariadb: PrivateMariaDB) -> MySQLURL:
    return MySQLURL.parse(mariadb.url())


@pytest.fixture
async def conn(url: MySQLURL) -> AsyncIterator[MySQLConnection]:
    c = await MySQLConnection.connect(url, timeout=10)
    yield c
    c.close()


@pytest.fixture
def database(mariadb: PrivateMariaDB) -> str:
    name = f"conn{next(_names)}"
    mariadb.sql(f"CREATE DATABASE {name}")
    return name


# -- connect and authenticate ------------------------------------------------------------------
async def test_connect_as_root_and_query(conn: MySQLConnection) -> None:
    assert conn.is_mariadb
    assert "MariaDB" in conn.server_version
    rows = await conn.query("SELECT 1, NULL, 'h\u00e9llo \U0001f600', 2.50, CAST('' AS CHAR)")
    assert rows == [("1", None, "h\u00e9llo \U0001f600", "2.50", "")]
    names, rows = await conn.query_columns("SELECT 1 AS a, 2 AS b UNION SELECT 3, 4")
    assert names == ["a", "b"]
    assert rows == [("1", "2"), ("3", "4")]
    assert await conn.variable("binlog_format") == "ROW"
    await conn.ping()


async def test_execute_and_errors(conn: MySQLConnection, database: str) -> None:
    await conn.execute(f"CREATE TABLE {database}.t (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT)")
    ok = await conn.execute(f"INSERT INTO {database}.t (v) VALUES ('a'), ('b'), (NULL)")
    assert ok.affected_rows == 3
    assert ok.last_insert_id == 1
    with pytest.raises(wire.ServerError) as info:
        await conn.query(f"SELECT nope FROM {database}.t")
    assert info.value.code == 1054 and info.value.sqlstate == "42S22"
    assert "nope" in info.value.message
    # the connection stays in step after an error
    assert await conn.query(f"SELECT id, v FROM {database}.t ORDER BY id") == [
        ("1", "a"),
        ("2", "b"),
        ("3", None),
    ]


async def test_large_result_spanning_many_reads(conn: MySQLConnection) -> None:
    rows = await conn.query("SELECT seq, REPEAT('x', 1000) FROM mysql.seq_1_to_5000")
    assert len(rows) == 5000
    assert rows[-1] == ("5000", "x" * 1000)


async def test_password_user_and_wrong_password(
    mariadb: PrivateMariaDB, conn: MySQLConnection
) -> None:
    user = f"pw{next(_names)}"
    await conn.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 's3cr\u00e9t!'")
    good = await MySQLConnection.connect(MySQLURL.parse(mariadb.url(user, "s3cr%C3%A9t%21")))
    try:
        assert await good.query("SELECT CURRENT_USER()") == [(f"{user}@%",)]
    finally:
        good.close()
    with pytest.raises(wire.ServerError) as info:
        await MySQLConnection.connect(MySQLURL.parse(mariadb.url(user, "wrong")))
    assert info.value.code == 1045
    assert "Access denied" in info.value.message


async def test_database_in_url(mariadb: PrivateMariaDB, database: str) -> None:
    c = await MySQLConnection.connect(MySQLURL.parse(mariadb.url(database=database)))
    try:
        assert await c.query("SELECT DATABASE()") == [(database,)]
    finally:
        c.close()
    with pytest.raises(wire.ServerError) as info:
        await MySQLConnection.connect(MySQLURL.parse(mariadb.url(database="no_such_db")))
    assert info.value.code == 1049


async def test_ed25519_user_is_a_clear_error(
    mariadb: PrivateMariaDB, conn: MySQLConnection
) -> None:
    try:
        await conn.execute("INSTALL SONAME 'auth_ed25519'")
    except wire.ServerError as exc:
        if exc.code != 1968:  # already installed
            pytest.skip(f"auth_ed25519 plugin not available: {exc}")
    user = f"ed{next(_names)}"
    await conn.execute(f"CREATE USER '{user}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('pw')")
    with pytest.raises(wire.AuthError, match="client_ed25519"):
        await MySQLConnection.connect(MySQLURL.parse(mariadb.url(user, "pw")))


async def test_connect_refused_and_timeout() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never greets
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await MySQLConnection.connect(MySQLURL(port=port), timeout=0.3)
    finally:
        server.close()
    with pytest.raises(OSError):
        await MySQLConnection.connect(MySQLURL(port=port), timeout=5)


# -- positions and the binlog ------------------------------------------------------------------
async def test_current_position(mariadb: PrivateMariaDB, conn: MySQLConnection) -> None:
    mariadb.sql("CREATE DATABASE IF NOT EXISTS curpos")  # at least one GTID in the binlog
    pos = await conn.current_position()
    file, offset = mariadb.sql("SHOW MASTER STATUS").split("\t")[:2]
    assert (pos.file, pos.pos) == (file, int(offset))
    assert pos.gtid == mariadb.sql("SELECT @@gtid_binlog_pos").strip()
    assert pos.gtid and pos.gtid.startswith("0-1-")


async def read_until(
    conn: MySQLConnection, want: Callable[[bytes], bool], limit: int = 10_000
) -> list[bytes]:
    events = []
    for _ in range(limit):
        event = await asyncio.wait_for(conn.next_event(), 10)
        assert event is not None
        events.append(event)
        if want(event):
            return events
    raise AssertionError("event not seen")


async def test_binlog_from_current_end(
    url: MySQLURL, conn: MySQLConnection, database: str, replica_server_id: int
) -> None:
    await conn.execute(f"CREATE TABLE {database}.t (id INT PRIMARY KEY, v VARCHAR(20))")
    start = await conn.current_position()
    stream = await MySQLConnection.connect(url)
    try:
        await stream.start_binlog(server_id=replica_server_id, position=start, heartbeat=1.0)
        with pytest.raises(RuntimeError, match="streaming"):
            await stream.query("SELECT 1")
        await conn.execute(f"INSERT INTO {database}.t VALUES (1, 'one')")
        events = await read_until(stream, lambda e: event_type(e) == XID)
        types = [event_type(e) for e in events]
        assert types[0] == ROTATE and FORMAT_DESCRIPTION in types
        assert types[-4:] == [MARIADB_GTID, TABLE_MAP, WRITE_ROWS_V1, XID]
        table_map = events[-3]
        assert database.encode() in table_map and b"\x01t\x00" in table_map
        # the rotate event names the file we asked for
        assert start.file.encode() in events[0]
        # every event (but the fake rotate) ends where the next one starts
        xid = events[-1]
        end_pos = struct.unpack_from("<I", xid, 13)[0]
        assert end_pos == (await conn.current_position()).pos
    finally:
        stream.close()


async def test_binlog_from_gtid(
    url: MySQLURL, conn: MySQLConnection, database: str, replica_server_id: int
) -> None:
    await conn.execute(f"CREATE TABLE {database}.t (id INT PRIMARY KEY)")
    await conn.execute(f"INSERT INTO {database}.t VALUES (1)")
    after_first = await conn.current_position()
    await conn.execute(f"INSERT INTO {database}.t VALUES (2)")
    assert after_first.gtid
    stream = await MySQLConnection.connect(url)
    try:
        # resume by GTID only: the file name must not matter
        await stream.start_binlog(
            server_id=replica_server_id, position=Position("bogus.000999", 4, after_first.gtid)
        )
        events = await read_until(stream, lambda e: event_type(e) == XID)
        gtids = [e for e in events if event_type(e) == MARIADB_GTID]
        assert len(gtids) == 1  # only the second insert's transaction
        seq = struct.unpack_from("<Q", gtids[0], 19)[0]
        assert seq == int(after_first.gtid.split("-")[2]) + 1
    finally:
        stream.close()


async def test_heartbeats_when_idle(
    url: MySQLURL, conn: MySQLConnection, replica_server_id: int
) -> None:
    stream = await MySQLConnection.connect(url)
    try:
        await stream.start_binlog(
            server_id=replica_server_id, position=await conn.current_position(), heartbeat=0.2
        )
        events = await read_until(stream, lambda e: event_type(e) == HEARTBEAT)
        assert event_type(events[-1]) == HEARTBEAT
    finally:
        stream.close()


async def test_non_blocking_dump_ends_with_eof(
    url: MySQLURL, conn: MySQLConnection, replica_server_id: int
) -> None:
    stream = await MySQLConnection.connect(url)
    try:
        await stream.start_binlog(
            server_id=replica_server_id,
            position=await conn.current_position(),
            flags=wire.BINLOG_DUMP_NON_BLOCK,
        )
        seen = 0
        while await asyncio.wait_for(stream.next_event(), 10) is not None:
            seen += 1
        assert seen >= 2  # rotate + format description, then EOF
    finally:
        stream.close()


async def test_purged_position_is_a_server_error(url: MySQLURL, replica_server_id: int) -> None:
    stream = await MySQLConnection.connect(url)
    try:
        await stream.start_binlog(
            server_id=replica_server_id, position=Position("binlog.999999", 4)
        )
        with pytest.raises(wire.ServerError) as info:
            await stream.next_event()
        assert info.value.code == 1236
        assert "log file" in info.value.message
    finally:
        stream.close()


async def test_flow_control_pauses_and_resumes(
    url: MySQLURL, conn: MySQLConnection, database: str, replica_server_id: int
) -> None:
    await conn.execute(f"CREATE TABLE {database}.big (id INT PRIMARY KEY, pad TEXT)")
    start = await conn.current_position()
    stream = await MySQLConnection.connect(url, high_water=64 * 1024, low_water=16 * 1024)
    try:
        await stream.start_binlog(server_id=replica_server_id, position=start, heartbeat=0.2)
        # 200 transactions of ~4 KiB: ~800 KiB, far beyond the 64 KiB queue bound
        for batch in range(4):
            values = ", ".join(f"({batch * 50 + i}, REPEAT('p', 4000))" for i in range(50))
            await conn.execute(f"INSERT INTO {database}.big VALUES {values}")
        for i in range(200):
            await conn.execute(f"UPDATE {database}.big SET pad = REPEAT('q', 4000) WHERE id = {i}")
        await wait_until(lambda: stream.reading_paused, what="reading paused")
        assert stream._protocol.queued_bytes > 64 * 1024
        # paused longer than the idle timeout (0.6 s): our own pause must not count as silence
        await asyncio.sleep(1.0)
        assert not stream.closed
        xids = 0
        while xids < 204:
            event = await asyncio.wait_for(stream.next_event(), 10)
            assert event is not None
            xids += event_type(event) == XID
        assert not stream.reading_paused
        assert stream._protocol.queued_bytes < 64 * 1024
    finally:
        stream.close()


async def test_idle_watchdog_detects_a_dead_link(
    url: MySQLURL, conn: MySQLConnection, replica_server_id: int
) -> None:
    proxy = await FaultProxy(url.host, url.port).start()
    try:
        stream = await MySQLConnection.connect(MySQLURL(port=proxy.port))
        await stream.start_binlog(
            server_id=replica_server_id, position=await conn.current_position(), heartbeat=0.1
        )
        await read_until(stream, lambda e: event_type(e) == HEARTBEAT)
        proxy.frozen = True  # the link goes silent without closing
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionLost, match="presumed dead"):
            while True:
                await asyncio.wait_for(stream.next_event(), 5)
        assert 0.2 <= loop.time() - started < 2.0
        assert stream.closed
    finally:
        await proxy.close()


async def test_connection_reset_and_close(
    url: MySQLURL, conn: MySQLConnection, replica_server_id: int
) -> None:
    proxy = await FaultProxy(url.host, url.port).start()
    try:
        stream = await MySQLConnection.connect(MySQLURL(port=proxy.port))
        await stream.start_binlog(
            server_id=replica_server_id, position=await conn.current_position()
        )
        pending = asyncio.ensure_future(read_until(stream, lambda e: False))
        await asyncio.sleep(0)
        proxy.cut()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(pending, 10)
    finally:
        await proxy.close()
    # close() from our side interrupts a pending read
    stream = await MySQLConnection.connect(url)
    await stream.start_binlog(server_id=replica_server_id, position=await conn.current_position())
    pending = asyncio.ensure_future(read_until(stream, lambda e: False))
    await wait_until(lambda: stream._protocol._waiter is not None, what="reader waiting")
    stream.close()
    with pytest.raises(ConnectionLost, match="closed by the client"):
        await asyncio.wait_for(pending, 5)


def test_works_on_uvloop(mariadb: PrivateMariaDB, replica_server_id: int) -> None:
    """The daemon runs on uvloop when installed: its transports are not asyncio subclasses."""
    uvloop = pytest.importorskip("uvloop")
    url = MySQLURL.parse(mariadb.url())

    async def main() -> list[int]:
        admin = await MySQLConnection.connect(url)
        stream = await MySQLConnection.connect(url, high_water=8 * 1024, low_water=1024)
        try:
            await admin.execute("CREATE DATABASE IF NOT EXISTS uv")
            await admin.execute("CREATE TABLE IF NOT EXISTS uv.t (id INT PRIMARY KEY, p TEXT)")
            await stream.start_binlog(
                server_id=replica_server_id, position=await admin.current_position()
            )
            await admin.execute(
                "INSERT INTO uv.t SELECT seq, REPEAT('x', 500) FROM mysql.seq_1_to_200"
            )
            for i in range(1, 20):
                await admin.execute(f"UPDATE uv.t SET p = 'y' WHERE id = {i}")
            await wait_until(lambda: stream.reading_paused, what="paused on uvloop")
            types: list[int] = []
            while types.count(XID) < 20:
                event = await asyncio.wait_for(stream.next_event(), 10)
                assert event is not None
                types.append(event_type(event))
            return types
        finally:
            stream.close()
            admin.close()

    types = uvloop.run(main())
    assert types.count(XID) == 20 and WRITE_ROWS_V1 in types
