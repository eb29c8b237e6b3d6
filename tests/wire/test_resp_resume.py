"""TIDINGS.SUBSCRIBE / TIDINGS.PSUBSCRIBE over real sockets: bytes, pacing, real clients."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio
import uvloop

from tests.wire.test_resp_server import TIMEOUT, Client, Server, confirm, message, serve, until
from tidings.hub import Hub
from tidings.wire.resp import encode_command
from tidings.wire.resp_server import RespService, RespSettings, start_resp_server


def pmessage(pattern: bytes, channel: bytes, body: bytes, resp3: bool = False) -> bytes:
    head = b">4" if resp3 else b"*4"
    return b"%b\r\n$8\r\npmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        head,
        len(pattern),
        pattern,
        len(channel),
        channel,
        len(body),
        body,
    )


async def serve_hub(hub: Hub, **settings: object) -> Server:
    service = RespService(hub, RespSettings(**settings))  # type: ignore[arg-type]
    server = await start_resp_server(hub, "127.0.0.1", 0, service=service)
    return Server(hub, service, server.sockets[0].getsockname()[1])


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    server = await serve()
    yield server
    await server.service.close()


async def test_history_then_live_as_ordinary_messages(srv: Server) -> None:
    for i in range(1, 6):
        srv.hub.publish("a" if i % 2 else "b", b"m%d" % i)  # a: 1, 3, 5
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.SUBSCRIBE",
        "1",
        "a",
        reply=confirm(b"subscribe", b"a", 1) + message(b"a", b"m3") + message(b"a", b"m5"),
    )
    srv.hub.publish("a", b"live")
    await c.expect(message(b"a", b"live"))
    # the connection is in subscribed mode like after SUBSCRIBE
    await c.call(
        "GET",
        "x",
        reply=b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / "
        b"(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    )
    await c.call("UNSUBSCRIBE", reply=confirm(b"unsubscribe", b"a", 0))
    c.close()


async def test_several_channels_interleave_in_id_order_resp3(srv: Server) -> None:
    for i in range(1, 7):
        srv.hub.publish("ab"[i % 2], b"m%d" % i)
    c = await Client.connect(srv.port)
    c.send("HELLO", "3")
    await asyncio.wait_for(c.reader.readuntil(b"$7\r\nmodules\r\n*0\r\n"), TIMEOUT)
    expected = confirm(b"subscribe", b"a", 1, resp3=True) + confirm(
        b"subscribe", b"b", 2, resp3=True
    )
    for i in range(3, 7):
        expected += message(b"ab"[i % 2 : i % 2 + 1], b"m%d" % i, resp3=True)
    await c.call("TIDINGS.SUBSCRIBE", "2", "a", "b", reply=expected)
    c.close()


async def test_pattern_resume_sends_pmessages(srv: Server) -> None:
    srv.hub.publish("shop.orders", b"1")
    srv.hub.publish("other", b"2")
    srv.hub.publish("shop.items", b"3")
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.PSUBSCRIBE",
        "0",
        "shop.*",
        reply=confirm(b"psubscribe", b"shop.*", 1)
        + pmessage(b"shop.*", b"shop.orders", b"1")
        + pmessage(b"shop.*", b"shop.items", b"3"),
    )
    srv.hub.publish("shop.x", b"4")
    await c.expect(pmessage(b"shop.*", b"shop.x", b"4"))
    c.close()


async def test_gap_message_bytes() -> None:
    hub = Hub(history_channel_events=2)
    server = await serve_hub(hub)
    try:
        for i in range(1, 6):
            hub.publish("a", b"m%d" % i)
        c = await Client.connect(server.port)
        gap = b'{"type":"gap","channel":"a","since":1,"oldest":4,"epoch":1}'
        await c.call(
            "TIDINGS.SUBSCRIBE",
            "1",
            "a",
            reply=confirm(b"subscribe", b"a", 1)
            + message(b"a", gap)
            + message(b"a", b"m4")
            + message(b"a", b"m5"),
        )
        c.close()
    finally:
        await server.service.close()


async def test_bad_since_ids_are_redis_style_errors(srv: Server) -> None:
    srv.hub.publish("a", b"x")
    c = await Client.connect(srv.port)
    await c.call(
        "TIDINGS.SUBSCRIBE",
        "abc",
        "a",
        reply=b"-ERR since-id must be an integer event id, not 'abc'\r\n",
    )
    await c.call(
        "TIDINGS.SUBSCRIBE",
        "2",
        "a",
        reply=b"-ERR since-id 2 is ahead of the stream: the last event id is 1\r\n",
    )
    await c.call("TIDINGS.SUBSCRIBE", "-5", "a", reply=b"-ERR since-id must be >= 0, not -5\r\n")
    await c.call(
        "TIDINGS.SUBSCRIBE",
        "1",
        reply=b"-ERR wrong number of arguments for 'tidings.subscribe' command\r\n",
    )
    await c.call(
        "tidings.psubscribe",
        reply=b"-ERR wrong number of arguments for 'tidings.psubscribe' command\r\n",
    )
    assert srv.hub.channels() == {}
    await c.call("PING", reply=b"+PONG\r\n")  # not subscribed: nothing happened
    c.close()


async def test_an_already_subscribed_channel_is_confirmed_not_replayed(srv: Server) -> None:
    srv.hub.publish("a", b"old")
    c = await Client.connect(srv.port)
    await c.call("SUBSCRIBE", "a", reply=confirm(b"subscribe", b"a", 1))
    srv.hub.publish("b", b"old-b")
    await c.call(
        "TIDINGS.SUBSCRIBE",
        "0",
        "a",
        "b",
        reply=confirm(b"subscribe", b"a", 1)
        + confirm(b"subscribe", b"b", 2)
        + message(b"b", b"old-b"),
    )
    srv.hub.publish("a", b"new")
    await c.expect(message(b"a", b"new"))  # once
    srv.hub.publish("b", b"new-b")
    await c.expect(message(b"b", b"new-b"))
    c.close()


async def test_unsubscribe_during_a_replay_stops_it() -> None:
    # more than the kernel's socket buffers take (they grow to a few MB on loopback);
    # (a small SO_RCVBUF would stall sooner, but loopback then trickles for minutes)
    srv = await serve_hub(Hub(history_channel_events=20_000, history_channel_bytes=1 << 30))
    for _ in range(20_000):
        srv.hub.publish("a", b"x" * 500)
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setblocking(False)
    stalled.sendall(encode_command("TIDINGS.SUBSCRIBE", "0", "a"))
    await until(lambda: len(srv.service.connections) == 1)
    conn = srv.connection()
    await until(lambda: conn.outbox.paused)  # mid-replay, waiting for the client
    assert conn._replays
    # (read once the client reads again: a client that does not read is not read from)
    stalled.sendall(encode_command("UNSUBSCRIBE", "a") + encode_command("PING"))
    reader, writer = await asyncio.open_connection(sock=stalled, limit=1 << 24)
    data = bytearray()
    tail = confirm(b"unsubscribe", b"a", 0) + b"+PONG\r\n"
    while not data.endswith(tail):
        chunk = await asyncio.wait_for(reader.read(1 << 20), TIMEOUT)
        assert chunk, "connection closed"
        data += chunk
    assert data.count(b"$7\r\nmessage\r\n") < 20_000  # it stopped short of the end
    assert not conn._replays and srv.hub.channels() == {}
    writer.close()
    await srv.service.close()


async def test_a_stalled_then_reading_client_replays_50k_events_without_being_cut() -> None:
    hub = Hub(history_channel_events=60_000, history_channel_bytes=1 << 30, history_bytes=1 << 30)
    server = await serve_hub(hub, output_limit=256 * 1024)
    try:
        # 50,000 x ~235 bytes: 45 output limits, more than the kernel's socket buffers hold
        body = b"e" * 200
        for _ in range(50_000):
            hub.publish("a", body)
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.setblocking(False)
        stalled.sendall(encode_command("TIDINGS.SUBSCRIBE", "0", "a"))
        await until(lambda: len(server.service.connections) == 1)
        conn = server.connection()
        await until(lambda: conn.outbox.paused)  # the replay is waiting for the client
        held = conn.outbox.queued + conn.transport.get_write_buffer_size()
        assert held <= 256 * 1024
        # live events published while it is stalled come through the same cursor
        for i in range(100):
            hub.publish("a", b"live%d" % i)
        reader, writer = await asyncio.open_connection(sock=stalled, limit=1 << 24)
        expected = confirm(b"subscribe", b"a", 1) + message(b"a", body) * 50_000
        expected += b"".join(message(b"a", b"live%d" % i) for i in range(100))
        got = await asyncio.wait_for(reader.readexactly(len(expected)), 60)
        assert got == expected
        assert server.service.slow_consumers_cut == 0
        await until(lambda: hub.subscriber_count("a") == 1)  # and now it is live
        hub.publish("a", b"after")
        assert await asyncio.wait_for(reader.readexactly(len(message(b"a", b"after"))), 5) == (
            message(b"a", b"after")
        )
        writer.close()
    finally:
        await server.service.close()


async def test_small_output_limit_replay_completes() -> None:
    server = await serve(output_limit=4096)
    try:
        for i in range(2000):
            server.hub.publish("a", b"%04d" % i)
        c = await Client.connect(server.port)
        expected = confirm(b"subscribe", b"a", 1) + b"".join(
            message(b"a", b"%04d" % i) for i in range(2000)
        )
        await c.call("TIDINGS.SUBSCRIBE", "0", "a", reply=expected)
        assert server.service.slow_consumers_cut == 0
        c.close()
    finally:
        await server.service.close()


async def test_redis_py_execute_command(srv: Server) -> None:
    ids = [srv.hub.publish_record("shop.orders", {"n": i}).id for i in range(3)]
    client = redis.asyncio.Redis(port=srv.port)
    try:
        pubsub = client.pubsub()
        await pubsub.execute_command("TIDINGS.SUBSCRIBE", ids[0], "shop.orders")
        got: list[dict[str, object]] = []
        while len(got) < 3:
            msg = await pubsub.get_message(timeout=TIMEOUT)
            assert msg is not None
            got.append(msg)
        assert got[0]["type"] == "subscribe" and got[0]["channel"] == b"shop.orders"
        assert [orjson.loads(m["data"])["id"] for m in got[1:]] == ids[1:]
        with pytest.raises(redis.ResponseError, match="ahead of the stream"):
            await client.execute_command("TIDINGS.SUBSCRIBE", ids[-1] + 1, "x")
        await pubsub.aclose()
    finally:
        await client.aclose()


async def test_redis_cli_in_resp3_shows_history_then_live(srv: Server) -> None:
    for i in range(1, 4):
        srv.hub.publish("ch", b"m%d" % i)
    cli = shutil.which("redis-cli")
    stdbuf = shutil.which("stdbuf")
    assert cli and stdbuf
    # redis-cli enters its pub/sub loop only for commands named SUBSCRIBE; in RESP3 with
    # --show-pushes it prints every push as it comes (stdbuf: line-buffered into a pipe)
    args = ["-oL", cli, "-3", "--show-pushes", "yes", "-p", str(srv.port)]
    proc = await asyncio.create_subprocess_exec(
        stdbuf, *args, "TIDINGS.SUBSCRIBE", "1", "ch", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:

        async def lines(n: int) -> list[bytes]:
            assert proc.stdout is not None
            return [await asyncio.wait_for(proc.stdout.readline(), TIMEOUT) for _ in range(n)]

        assert await lines(3) == [b"subscribe\n", b"ch\n", b"1\n"]
        assert await lines(6) == [b"message\n", b"ch\n", b"m2\n", b"message\n", b"ch\n", b"m3\n"]
        srv.hub.publish("ch", b"live")
        assert await lines(3) == [b"message\n", b"ch\n", b"live\n"]
    finally:
        proc.kill()
        await proc.wait()


async def uvloop_scenarios() -> None:
    await test_a_stalled_then_reading_client_replays_50k_events_without_being_cut()
    server = await serve()
    try:
        await test_history_then_live_as_ordinary_messages(server)
        await test_redis_py_execute_command(server)
    finally:
        await server.service.close()


def test_on_uvloop() -> None:
    assert Path(uvloop.__file__).exists()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvloop_scenarios())


async def test_filtered_channels_over_resp(srv: Server) -> None:
    name = b"shop.orders?status=eq.paid"
    srv.hub.publish_record("shop.orders", {"type": "insert", "data": {"id": 1, "status": "paid"}})
    srv.hub.publish_record("shop.orders", {"type": "insert", "data": {"id": 2, "status": "new"}})
    c = await Client.connect(srv.port)
    first = next(srv.hub.history.after(0))
    await c.call(
        "TIDINGS.SUBSCRIBE",
        "0",
        name,
        reply=confirm(b"subscribe", name, 1) + message(name, first.body),
    )
    moved = srv.hub.publish_record(
        "shop.orders",
        {"type": "update", "data": {"id": 2, "status": "paid"}, "old": {"status": "new"}},
    )
    await c.expect(message(name, moved.body[:-1] + b',"match":"enter"}'))
    c.close()


async def test_a_malformed_filter_is_an_error_and_subscribes_nothing(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call(
        "SUBSCRIBE",
        "ok",
        "shop.orders?status",
        reply=b"-ERR invalid filter in channel 'shop.orders?status': ",
    )
    rest = await asyncio.wait_for(c.reader.readuntil(b"\r\n"), TIMEOUT)
    assert rest and srv.hub.channels() == {}
    await c.call("TIDINGS.SUBSCRIBE", "0", "x?", reply=b"-ERR invalid filter in channel 'x?': ")
    await asyncio.wait_for(c.reader.readuntil(b"\r\n"), TIMEOUT)
    await c.call("PING", reply=b"+PONG\r\n")  # still not in subscribed mode
    c.close()
