"""TIDINGS.SNAPSHOT over real sockets, with a stubbed snapshot source: bytes, handover, pacing.

The MySQL half (tidings.source.snapshot) is replaced by `Stub`, which yields the
batches it is given at the position it is given and records how it was used; the
real thing is exercised in tests/system/test_snapshot_stream.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.wire.test_resp_server import TIMEOUT, Client, confirm, message, until
from tidings.hub import Hub
from tidings.hub.filters import RowFilter
from tidings.source.changes import Position
from tidings.source.snapshot import SnapshotError
from tidings.wire.resp import encode_command
from tidings.wire.resp_server import RespService, RespSettings, start_resp_server
from tidings.wire.snapshot_stream import SnapshotService, SnapshotStream, stream_id_at

CH = "shop.orders"


def pos(offset: int, gtid: str | None = None, file: str = "bin.000001") -> Position:
    return Position(file, offset, gtid)


@dataclass
class Stub:
    """A snapshot: `batches` at `position`; `gate` holds the opening until set."""

    position: Position
    batches_: list[list[dict[str, Any]]]
    fail_after: int | None = None  # raise SnapshotError after this many batches
    closed: bool = False
    #: rows the stream had handed to its client each time a batch was asked for
    asked_at: list[int] = field(default_factory=list)
    stream: SnapshotStream | None = None

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        for i, batch in enumerate(self.batches_):
            if self.fail_after is not None and i >= self.fail_after:
                raise SnapshotError("reading a snapshot of shop.orders failed: gone away")
            self.asked_at.append(self.stream.rows_sent if self.stream else -1)
            await asyncio.sleep(0)  # a page from the server takes a loop turn at least
            yield batch

    def close(self) -> None:
        self.closed = True


class Source:
    """The opener: a Stub per table, optional gates, a record of the requests."""

    def __init__(self) -> None:
        self.stubs: dict[str, Stub] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.requests: list[tuple[str, str, RowFilter | None, int]] = []
        self.open_now = 0
        self.most_open = 0

    async def __call__(
        self, database: str, table: str, row_filter: RowFilter | None, batch: int
    ) -> Stub:
        self.requests.append((database, table, row_filter, batch))
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            gate = self.gates.get(f"{database}.{table}")
            if gate is not None:
                await gate.wait()
            stub = self.stubs.get(f"{database}.{table}")
            if stub is None:
                raise SnapshotError(f"no table {database}.{table}")
            return stub
        finally:
            self.open_now -= 1


@dataclass
class Server:
    hub: Hub
    service: RespService
    snapshots: SnapshotService
    source: Source
    port: int

    def connection(self) -> Any:
        return list(self.service.connections)[-1]


async def serve(hub: Hub | None = None, concurrency: int = 4, **settings: Any) -> Server:
    hub = hub or Hub()
    source = Source()
    snapshots = SnapshotService(hub, source, concurrency=concurrency, batch=100)
    service = RespService(hub, RespSettings(**settings), snapshots=snapshots)
    server = await start_resp_server(hub, "127.0.0.1", 0, service=service)
    return Server(hub, service, snapshots, source, server.sockets[0].getsockname()[1])


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    server = await serve()
    yield server
    await server.service.close()
    await server.snapshots.close()


def row(data: dict[str, Any], channel: str = CH) -> bytes:
    db, _, table = channel.partition("?")[0].partition(".")
    return message(
        channel.encode(),
        orjson.dumps(
            {"type": "snapshot", "channel": channel, "database": db, "table": table, "data": data}
        ),
    )


def end(last_id: int, rows: int, channel: str = CH) -> bytes:
    body = {"type": "snapshot-end", "channel": channel, "id": last_id, "rows": rows}
    return message(channel.encode(), orjson.dumps(body))


def watch(srv: Server, stub: Stub) -> None:
    """Let the stub see its stream (for `asked_at`) once the request has made it."""
    original = srv.snapshots.request

    def request(client: Any, name: str) -> SnapshotStream:
        stream = original(client, name)
        stub.stream = stream
        return stream

    srv.snapshots.request = request  # type: ignore[method-assign]


# -- the whole sequence ----------------------------------------------------------------------------
async def test_rows_then_end_then_the_events_after_the_position_then_live(srv: Server) -> None:
    hub = srv.hub
    hub.publish(CH, b"e1")
    hub.publish("other", b"x2")
    hub.mark(pos(100))  # the snapshot's position: next id 3
    hub.publish(CH, b"e3")
    hub.publish("other", b"x4")
    hub.publish(CH, b"e5")
    hub.mark(pos(200))
    rows: list[list[dict[str, Any]]] = [[{"id": 1, "v": "a"}, {"id": 2, "v": None}]]
    rows.append([{"id": 3, "v": "é"}])
    srv.source.stubs[CH] = stub = Stub(pos(100), rows)
    c = await Client.connect(srv.port)
    expected = confirm(b"subscribe", CH.encode(), 1)
    expected += b"".join(row(r) for batch in rows for r in batch)
    expected += end(2, 3) + message(CH.encode(), b"e3") + message(CH.encode(), b"e5")
    await c.call("TIDINGS.SNAPSHOT", CH, reply=expected)
    hub.publish(CH, b"live")
    await c.expect(message(CH.encode(), b"live"))
    assert srv.source.requests == [("shop", "orders", None, 100)]
    assert stub.closed
    # subscribed mode, as after SUBSCRIBE; UNSUBSCRIBE leaves the live channel
    await c.call("PING", reply=b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    await c.call("UNSUBSCRIBE", reply=confirm(b"unsubscribe", CH.encode(), 0))
    assert hub.channels() == {}
    c.close()


async def test_waits_for_the_daemon_to_reach_the_snapshots_position(srv: Server) -> None:
    hub = srv.hub
    hub.publish(CH, b"e1")
    hub.mark(pos(100))
    srv.source.stubs[CH] = Stub(pos(300), [[{"id": 1}]])
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.SNAPSHOT", CH, reply=confirm(b"subscribe", CH.encode(), 1) + row({"id": 1})
    )
    # the daemon is behind the snapshot: these are in the rows, not after them
    hub.publish(CH, b"e2")
    hub.mark(pos(200))
    hub.publish(CH, b"e3")
    await asyncio.sleep(0.05)  # (nothing must arrive meanwhile: checked by the bytes below)
    hub.mark(pos(300))  # reached: next id 4
    hub.publish(CH, b"e4")
    await c.expect(end(3, 1) + message(CH.encode(), b"e4"))
    c.close()


async def test_a_filtered_channel_gets_its_filter_and_enter_leave_events(srv: Server) -> None:
    hub = srv.hub
    name = "shop.orders?status=eq.new"
    hub.mark(pos(100))
    srv.source.stubs[CH] = Stub(pos(100), [[{"id": 1, "status": "new"}]])
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.SNAPSHOT",
        name,
        reply=confirm(b"subscribe", name.encode(), 1)
        + row({"id": 1, "status": "new"}, name)
        + end(0, 1, name),
    )
    (request,) = srv.source.requests
    assert request[2] is not None and request[2].text == "status=eq.new"
    fields: dict[str, Any] = {"type": "update", "data": {"id": 2, "status": "new"}}
    enter = hub.publish_record(CH, {**fields, "old": {"status": "paid"}})
    hub.publish_record(CH, {"type": "insert", "data": {"id": 3, "status": "paid"}})
    leave = hub.publish_record(
        CH, {"type": "update", "data": {"id": 1, "status": "paid"}, "old": {"status": "new"}}
    )
    await c.expect(
        message(name.encode(), enter.body[:-1] + b',"match":"enter"}')
        + message(name.encode(), leave.body[:-1] + b',"match":"leave"}')
    )
    c.close()


async def test_a_position_older_than_the_marks_gets_a_gap(srv: Server) -> None:
    hub = srv.hub
    hub.publish(CH, b"e1")
    hub.mark(pos(100))
    hub.publish(CH, b"e2")
    hub.mark(pos(200))
    srv.source.stubs[CH] = Stub(pos(50), [[{"id": 1}]])  # before the first mark
    c = await Client.connect(srv.port)
    gap = {"type": "gap", "channel": CH, "since": 0, "oldest": 3, "epoch": 1}
    await c.call(
        "TIDINGS.SNAPSHOT",
        CH,
        reply=confirm(b"subscribe", CH.encode(), 1)
        + row({"id": 1})
        + end(2, 1)
        + message(CH.encode(), orjson.dumps(gap)),
    )
    hub.publish(CH, b"e3")
    await c.expect(message(CH.encode(), b"e3"))
    c.close()


async def test_history_lost_after_the_position_is_a_gap_from_the_replay() -> None:
    srv = await serve(Hub(history_channel_events=2))
    try:
        hub = srv.hub
        hub.mark(pos(100))
        for i in range(1, 6):
            hub.publish(CH, b"e%d" % i)
        srv.source.stubs[CH] = Stub(pos(100), [])
        c = await Client.connect(srv.port)
        gap = {"type": "gap", "channel": CH, "since": 0, "oldest": 4, "epoch": 1}
        await c.call(
            "TIDINGS.SNAPSHOT",
            CH,
            reply=confirm(b"subscribe", CH.encode(), 1)
            + end(0, 0)
            + message(CH.encode(), orjson.dumps(gap))
            + message(CH.encode(), b"e4")
            + message(CH.encode(), b"e5"),
        )
        c.close()
    finally:
        await srv.service.close()


async def test_idle_after_a_rotation_the_gtid_settles_the_position() -> None:
    hub = Hub()
    hub.publish(CH, b"e1")
    hub.mark(pos(500, "0-1-10"))
    hub.publish(CH, b"e2")
    hub.mark(pos(900, "0-1-11"))
    # the start of the next file: no transaction will pass it until the next write
    rotated = pos(330, "0-1-11", file="bin.000002")
    assert await asyncio.wait_for(stream_id_at(hub, rotated, recheck=0.01), TIMEOUT) == 3
    assert await stream_id_at(hub, pos(600, "0-1-10")) == 2
    # a GTID the daemon has not published yet: waits, then the file coordinate settles it
    later = asyncio.ensure_future(stream_id_at(hub, pos(1200, "0-1-12"), recheck=0.01))
    await asyncio.sleep(0.05)
    assert not later.done()
    hub.publish(CH, b"e3")
    hub.mark(pos(1200, "0-1-12"))
    assert await asyncio.wait_for(later, TIMEOUT) == 4


async def test_an_idle_daemon_pairs_through_its_origin() -> None:
    hub = Hub(first_id=1000)
    source = Source()
    origin = pos(400, "0-1-7")
    snapshots = SnapshotService(hub, source, origin=lambda: origin)
    source.stubs[CH] = Stub(pos(400, "0-1-7"), [[{"id": 1}]])
    service = RespService(hub, snapshots=snapshots)
    server = await start_resp_server(hub, "127.0.0.1", 0, service=service)
    try:
        c = await Client.connect(server.sockets[0].getsockname()[1])
        await c.call(
            "TIDINGS.SNAPSHOT",
            CH,
            reply=confirm(b"subscribe", CH.encode(), 1) + row({"id": 1}) + end(999, 1),
        )
        c.close()
    finally:
        await service.close()


# -- errors: -ERR, nothing subscribed -----------------------------------------------------------
async def test_errors_reply_err_and_subscribe_nothing(srv: Server) -> None:
    srv.hub.mark(pos(100))
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.SNAPSHOT",
        "shop.nope",
        reply=b"-ERR no table shop.nope\r\n",
    )
    await c.call(
        "TIDINGS.SNAPSHOT",
        "orders",
        reply=b"-ERR a snapshot needs a channel 'database.table', not 'orders'\r\n",
    )
    await c.call(
        "TIDINGS.SNAPSHOT",
        "shop.orders?status=eqq.new",
        reply=b"-ERR invalid filter in channel 'shop.orders?status=eqq.new': bad filter "
        b"condition 'status=eqq.new': unknown operator 'eqq' (expected eq, neq, lt, lte, gt, "
        b"gte, in, is, or not.<op>)\r\n",
    )
    await c.call(
        "TIDINGS.SNAPSHOT",
        reply=b"-ERR wrong number of arguments for 'tidings.snapshot' command\r\n",
    )
    await c.call("PING", reply=b"+PONG\r\n")  # not in subscribed mode: nothing happened
    assert srv.hub.channels() == {} and srv.snapshots.streams == {}
    await c.call("SUBSCRIBE", CH, reply=confirm(b"subscribe", CH.encode(), 1))
    await c.call(
        "TIDINGS.SNAPSHOT",
        CH,
        reply=b"-ERR already subscribed to 'shop.orders': UNSUBSCRIBE it first (a snapshot "
        b"would repeat what it delivers)\r\n",
    )
    c.close()


async def test_without_a_mysql_source_it_is_an_error() -> None:
    hub = Hub()
    service = RespService(hub)
    server = await start_resp_server(hub, "127.0.0.1", 0, service=service)
    try:
        c = await Client.connect(server.sockets[0].getsockname()[1])
        await c.call(
            "TIDINGS.SNAPSHOT",
            CH,
            reply=b"-ERR TIDINGS.SNAPSHOT needs a MySQL source (start tidings with --mysql)\r\n",
        )
        c.close()
    finally:
        await service.close()


async def test_a_failure_while_reading_rows_is_an_error_then_unsubscribe(srv: Server) -> None:
    srv.hub.mark(pos(100))
    srv.source.stubs[CH] = Stub(pos(100), [[{"id": 1}], [{"id": 2}]], fail_after=1)
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.SNAPSHOT",
        CH,
        reply=confirm(b"subscribe", CH.encode(), 1)
        + row({"id": 1})
        + b"-ERR reading a snapshot of shop.orders failed: gone away\r\n"
        + confirm(b"unsubscribe", CH.encode(), 0),
    )
    assert srv.hub.channels() == {} and srv.snapshots.failed == 1
    await c.call("PING", reply=b"+PONG\r\n")
    c.close()


async def test_commands_behind_it_wait_for_its_reply(srv: Server) -> None:
    srv.hub.mark(pos(100))
    srv.source.stubs[CH] = Stub(pos(100), [[{"id": 1}]])
    gate = srv.source.gates[CH] = asyncio.Event()
    c = await Client.connect(srv.port)
    c.send_raw(encode_command("TIDINGS.SNAPSHOT", CH) + encode_command("PING", "after"))
    await until(lambda: srv.source.open_now == 1)
    await asyncio.sleep(0.02)
    assert srv.connection().outbox.queued == 0  # no PONG overtook the snapshot's reply
    gate.set()
    await c.expect(
        confirm(b"subscribe", CH.encode(), 1)
        + b"*2\r\n$4\r\npong\r\n$5\r\nafter\r\n"
        + row({"id": 1})
        + end(0, 1)
    )
    c.close()


# -- limits: concurrency, pacing, one batch at a time -------------------------------------------
async def test_at_most_concurrency_snapshots_open_at_once_the_rest_queue() -> None:
    srv = await serve(concurrency=2)
    try:
        srv.hub.mark(pos(100))
        tables = [f"shop.t{i}" for i in range(5)]
        for name in tables:
            srv.source.stubs[name] = Stub(pos(100), [[{"id": 1}]])
            srv.source.gates[name] = asyncio.Event()
        clients = [await Client.connect(srv.port) for _ in tables]
        for c, name in zip(clients, tables, strict=True):
            c.send("TIDINGS.SNAPSHOT", name)
        await until(lambda: srv.snapshots.active == 2 and srv.snapshots.queued == 3)
        assert srv.source.open_now == 2
        for name in tables:
            srv.source.gates[name].set()
        for c, name in zip(clients, tables, strict=True):
            db_table = name.encode()
            await c.expect(
                confirm(b"subscribe", db_table, 1) + row({"id": 1}, name) + end(0, 1, name)
            )
            c.close()
        assert srv.source.most_open == 2
        await until(lambda: srv.snapshots.active == 0 and not srv.snapshots.streams)
    finally:
        await srv.service.close()


async def test_a_stalled_reader_is_paced_never_cut_and_one_batch_is_held_at_a_time() -> None:
    # a batch (100 rows of 4 KB) is far above the output limit: the rows are paced, not
    # the batches; 10 MB in all, more than loopback's socket buffers hold
    srv = await serve(output_limit=64 * 1024)
    try:
        srv.hub.mark(pos(100))
        batches = [[{"id": b * 100 + i, "pad": "x" * 4000} for i in range(100)] for b in range(25)]
        srv.source.stubs[CH] = stub = Stub(pos(100), batches)
        watch(srv, stub)
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setblocking(False)
        sock.sendall(encode_command("TIDINGS.SNAPSHOT", CH))
        await until(lambda: len(srv.service.connections) == 1)
        conn = srv.connection()
        await until(lambda: conn.outbox.paused)  # the client does not read: the stream waits
        stream = stub.stream
        assert stream is not None and stream.state == "rows"
        paused_at = stream.rows_sent
        await asyncio.sleep(0.05)
        assert stream.rows_sent == paused_at < 2500  # nothing more while paused
        assert len(stub.asked_at) <= paused_at // 100 + 1  # no read-ahead
        srv.hub.publish(CH, b"during")  # after the position: follows the rows
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
        data = bytearray()
        tail = end(0, 2500) + message(CH.encode(), b"during")
        while not data.endswith(tail):
            chunk = await asyncio.wait_for(reader.read(1 << 20), TIMEOUT)
            assert chunk, "connection closed"
            data += chunk
        assert data.count(b"$7\r\nmessage\r\n") == 2500 + 2
        assert srv.service.slow_consumers_cut == 0
        # each batch was asked for only once every row of the one before was handed over
        assert stub.asked_at == [100 * i for i in range(25)]
        writer.close()
    finally:
        await srv.service.close()


async def test_a_client_leaving_mid_snapshot_closes_it_and_frees_its_slot() -> None:
    srv = await serve(output_limit=64 * 1024, concurrency=1)
    try:
        srv.hub.mark(pos(100))
        batches = [[{"id": b * 100 + i, "pad": "x" * 400} for i in range(100)] for b in range(200)]
        srv.source.stubs[CH] = stub = Stub(pos(100), batches)
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(encode_command("TIDINGS.SNAPSHOT", CH))
        await until(lambda: len(srv.service.connections) == 1)
        await until(lambda: srv.connection().outbox.paused)
        assert srv.snapshots.active == 1 and not stub.closed
        sock.close()
        await until(lambda: stub.closed and srv.snapshots.active == 0)
        await until(lambda: not srv.snapshots.streams)
        # the slot is free: the next snapshot opens
        srv.source.stubs["shop.next"] = Stub(pos(100), [[{"id": 1}]])
        c = await Client.connect(srv.port)
        await c.call(
            "TIDINGS.SNAPSHOT",
            "shop.next",
            reply=confirm(b"subscribe", b"shop.next", 1)
            + row({"id": 1}, "shop.next")
            + end(0, 1, "shop.next"),
        )
        c.close()
    finally:
        await srv.service.close()
