"""The RESP server over real sockets: raw bytes, redis-py (sync and asyncio), redis-cli.

Each test starts its own server on 127.0.0.1:0 with its own Hub and publishes
with `hub.publish` / `hub.publish_record`, as the daemon does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio
import uvloop

from tidings.hub import Hub
from tidings.wire.resp import encode_command
from tidings.wire.resp_server import (
    MESSAGE_RESP2,
    PUBLISH_PIPELINE,
    RespConnection,
    RespService,
    RespSettings,
    start_resp_server,
)

TIMEOUT = 10


@dataclass
class Server:
    hub: Hub
    service: RespService
    port: int

    def connection(self, index: int = -1) -> RespConnection:
        return list(self.service.connections)[index]


async def serve(**settings: object) -> Server:
    hub = Hub()
    service = RespService(hub, RespSettings(**settings))  # type: ignore[arg-type]
    server = await start_resp_server(hub, "127.0.0.1", 0, service=service)
    return Server(hub, service, server.sockets[0].getsockname()[1])


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    server = await serve(allow_publish=True)
    yield server
    await server.service.close()


class Client:
    """A raw RESP client: send bytes, expect exact bytes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        return cls(reader, writer)

    def send(self, *args: bytes | str) -> None:
        self.writer.write(encode_command(*args))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def expect(self, data: bytes) -> None:
        got = await asyncio.wait_for(self.reader.readexactly(len(data)), TIMEOUT)
        assert got == data

    async def call(self, *args: bytes | str, reply: bytes) -> None:
        self.send(*args)
        await self.expect(reply)

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    def close(self) -> None:
        self.writer.close()


def message(channel: bytes, body: bytes, resp3: bool = False) -> bytes:
    head = b">3" if resp3 else b"*3"
    return b"%b\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        head,
        len(channel),
        channel,
        len(body),
        body,
    )


def confirm(kind: bytes, name: bytes, count: int, resp3: bool = False) -> bytes:
    head = b">3" if resp3 else b"*3"
    return b"%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n:%d\r\n" % (
        head,
        len(kind),
        kind,
        len(name),
        name,
        count,
    )


async def until(condition: Callable[[], bool]) -> None:
    """Wait, one loop iteration at a time, until `condition()` holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


# -- basics over raw sockets -----------------------------------------------------------------
async def test_database_event_reaches_a_subscriber(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("SUBSCRIBE", "shop.orders", reply=confirm(b"subscribe", b"shop.orders", 1))
    event = srv.hub.publish_record("shop.orders", {"type": "insert", "data": {"id": 7}})
    body = orjson.dumps(
        {"id": event.id, "channel": "shop.orders", "type": "insert", "data": {"id": 7}}
    )
    assert event.body == body
    await c.expect(message(b"shop.orders", body))
    c.close()


async def test_frame_is_encoded_once_and_the_same_bytes_are_queued_everywhere(
    srv: Server,
) -> None:
    clients = [await Client.connect(srv.port) for _ in range(3)]
    for c in clients:
        await c.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
    resp3 = await Client.connect(srv.port)
    resp3.send("HELLO", "3")
    resp3.send("SUBSCRIBE", "ch")
    await until(lambda: srv.hub.subscriber_count("ch") == 4)
    event = srv.hub.publish_record("ch", {"n": 1})
    assert set(event.frames) == {MESSAGE_RESP2, "resp3:message"}
    frame = event.frames[MESSAGE_RESP2]
    queued = [conn.outbox._chunks[-1] for conn in srv.service.connections]
    assert sum(chunk is frame for chunk in queued) == 3
    for c in clients:
        await c.expect(message(b"ch", event.body))


async def test_unsubscribe_and_disconnect_leave_the_hub(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("SUBSCRIBE", "a", "b", reply=confirm(b"subscribe", b"a", 1))
    await c.expect(confirm(b"subscribe", b"b", 2))
    await c.call("PSUBSCRIBE", "x*", reply=confirm(b"psubscribe", b"x*", 3))
    await c.call("UNSUBSCRIBE", "a", reply=confirm(b"unsubscribe", b"a", 2))
    assert srv.hub.channels() == {"b": 1}
    assert srv.hub.pattern_count() == 1
    c.close()
    await until(lambda: not srv.service.connections)
    assert srv.hub.channels() == {}
    assert srv.hub.pattern_count() == 0


async def test_pattern_subscriptions_follow_redis_globs(srv: Server) -> None:
    c = await Client.connect(srv.port)
    patterns = [b"shop.*", b"h?llo", b"h[ae]llo", b"h[^e]llo", b"h\\*llo"]
    for i, p in enumerate(patterns, 1):
        await c.call("PSUBSCRIBE", p, reply=confirm(b"psubscribe", p, i))
    cases = {
        "shop.orders": [b"shop.*"],
        "hello": [b"h?llo", b"h[ae]llo"],
        "hallo": [b"h?llo", b"h[ae]llo", b"h[^e]llo"],
        "hxllo": [b"h?llo", b"h[^e]llo"],
        "h*llo": [b"h?llo", b"h[^e]llo", b"h\\*llo"],
        "nothing": [],
    }
    for channel, matching in cases.items():
        assert srv.hub.publish(channel, channel.encode()) == len(matching)
    expected = b""
    for channel, matching in cases.items():
        for p in matching:
            ch = channel.encode()
            expected += b"*4\r\n$8\r\npmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
                len(p),
                p,
                len(ch),
                ch,
                len(ch),
                ch,
            )
    await c.expect(expected)


async def test_channel_and_pattern_subscriber_gets_both_like_redis(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("SUBSCRIBE", "news", reply=confirm(b"subscribe", b"news", 1))
    await c.call("PSUBSCRIBE", "n*", reply=confirm(b"psubscribe", b"n*", 2))
    assert srv.hub.publish("news", b"x") == 2
    await c.expect(
        message(b"news", b"x") + b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$1\r\nx\r\n"
    )


async def test_non_utf8_channel_names_come_back_unchanged(srv: Server) -> None:
    c = await Client.connect(srv.port)
    name = b"caf\xe9\xff"
    await c.call("SUBSCRIBE", name, reply=confirm(b"subscribe", name, 1))
    pub = await Client.connect(srv.port)
    await pub.call("PUBLISH", name, b"\x00\x01", reply=b":1\r\n")
    await c.expect(message(name, b"\x00\x01"))
    await pub.call("PUBSUB", "CHANNELS", reply=b"*1\r\n$5\r\n" + name + b"\r\n")
    await c.call("UNSUBSCRIBE", reply=confirm(b"unsubscribe", name, 0))


async def test_publish_from_clients(srv: Server) -> None:
    sub = await Client.connect(srv.port)
    await sub.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
    pub = await Client.connect(srv.port)
    payload = bytes(range(256)) * 4
    await pub.call("PUBLISH", "ch", payload, reply=b":1\r\n")
    await sub.expect(message(b"ch", payload))
    await pub.call("PUBLISH", "nobody", "x", reply=b":0\r\n")


async def test_publish_is_refused_unless_allowed() -> None:
    server = await serve()
    try:
        c = await Client.connect(server.port)
        c.send("PUBLISH", "ch", "x")
        line = await asyncio.wait_for(c.reader.readline(), TIMEOUT)
        assert line.startswith(b"-ERR PUBLISH is disabled")
        assert b"--allow-publish" in line
        assert server.hub.published == 0
    finally:
        await server.service.close()


async def test_resp3_push_frames_and_reset(srv: Server) -> None:
    c = await Client.connect(srv.port)
    c.send("HELLO", "3")
    hello = await asyncio.wait_for(c.reader.readuntil(b"modules\r\n*0\r\n"), TIMEOUT)
    assert hello.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in hello
    await c.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1, resp3=True))
    await c.call("PING", reply=b"+PONG\r\n")  # no subscribed-mode restrictions in RESP3
    await c.call("CLIENT", "GETNAME", reply=b"_\r\n")
    srv.hub.publish("ch", b"payload")
    await c.expect(message(b"ch", b"payload", resp3=True))
    await c.call("RESET", reply=b"+RESET\r\n")
    assert srv.hub.subscriber_count("ch") == 0
    await c.call("CLIENT", "GETNAME", reply=b"$-1\r\n")  # back to RESP2


async def test_subscribed_mode_in_resp2_allows_only_pubsub_commands(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
    await c.call("PING", reply=b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    await c.call(
        "ECHO",
        "x",
        reply=b"-ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
        b"QUIT / RESET are allowed in this context\r\n",
    )
    await c.call(
        "GET",
        "x",
        reply=b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
        b"QUIT / RESET are allowed in this context\r\n",
    )
    await c.call("QUIT", reply=b"+OK\r\n")
    assert await c.read_to_eof() == b""


async def test_commands_outside_subscribed_mode(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("PING", reply=b"+PONG\r\n")
    await c.call("ECHO", "hi", reply=b"$2\r\nhi\r\n")
    await c.call("SELECT", "0", reply=b"+OK\r\n")
    await c.call("SELECT", "16", reply=b"-ERR DB index is out of range\r\n")
    await c.call("CLIENT", "SETINFO", "LIB-NAME", "redis-py", reply=b"+OK\r\n")
    await c.call("CLIENT", "SETNAME", "me", reply=b"+OK\r\n")
    await c.call("CLIENT", "GETNAME", reply=b"$2\r\nme\r\n")
    conn = srv.connection()
    await c.call("CLIENT", "ID", reply=b":%d\r\n" % conn.id)
    c.send("CLIENT", "INFO")
    info = await asyncio.wait_for(c.reader.readuntil(b"\n\r\n"), TIMEOUT)
    assert b"id=%d " % conn.id in info
    assert b" name=me " in info
    assert b"lib-name=redis-py" in info
    await c.call("PUBSUB", "NUMPAT", reply=b":0\r\n")
    await c.call("COMMAND", "DOCS", reply=b"*0\r\n")
    await c.call("COMMAND", reply=b"*0\r\n")
    await c.call(
        "HELLO",
        "3",
        "AUTH",
        "u",
        "p",
        reply=b"-ERR AUTH is not supported: this server has no users or passwords\r\n",
    )
    await c.call(
        "FLUSHALL",
        "x",
        reply=b"-ERR unknown command 'FLUSHALL', with args beginning with: 'x' \r\n",
    )
    c.send_raw(b'PING\r\nECHO "in\\x6cine"\r\n')  # telnet style
    await c.expect(b"+PONG\r\n$6\r\ninline\r\n")


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"*1\r\n+PING\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
        (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b'ECHO "oops\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (
            b"PING\r\n*2\r\n$7\r\nPUBLISH\r\n$65537\r\n",
            b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
        ),
        (b"GET" + b"x" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
    ],
)
async def test_malformed_input_gets_an_error_then_the_connection_closes(
    srv: Server, data: bytes, reply: bytes
) -> None:
    bystander = await Client.connect(srv.port)
    await bystander.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
    c = await Client.connect(srv.port)
    c.send_raw(data)
    assert await c.read_to_eof() == reply
    assert srv.service.stats.protocol_errors == 1
    srv.hub.publish("ch", b"still here")
    await bystander.expect(message(b"ch", b"still here"))


async def test_max_bulk_is_configurable() -> None:
    server = await serve(max_bulk=16)
    try:
        c = await Client.connect(server.port)
        await c.call("ECHO", b"x" * 16, reply=b"$16\r\n" + b"x" * 16 + b"\r\n")
        c.send("ECHO", b"x" * 17)
        assert await c.read_to_eof() == b"-ERR Protocol error: invalid bulk length\r\n"
    finally:
        await server.service.close()


async def test_http_request_is_dropped_silently(srv: Server) -> None:
    c = await Client.connect(srv.port)
    c.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await c.read_to_eof() == b""


async def test_client_leaving_mid_command_is_logged_once(
    srv: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.wire.resp")
    c = await Client.connect(srv.port)
    await c.call("PING", reply=b"+PONG\r\n")
    c.send_raw(b"*2\r\n$9\r\nSUBSCRIBE\r\n$10\r\nhal")
    await until(lambda: srv.connection().parser.mid_command)
    c.close()
    await until(lambda: not srv.service.connections)
    lines = [r.getMessage() for r in caplog.records if r.name == "tidings.wire.resp"]
    assert len(lines) == 1
    assert "mid-command" in lines[0]


async def test_client_resetting_while_we_write_is_cleaned_up(
    srv: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.wire.resp")
    healthy = await Client.connect(srv.port)
    await healthy.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
    rude = socket.create_connection(("127.0.0.1", srv.port))
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rude.sendall(encode_command("SUBSCRIBE", "ch"))
    await until(lambda: srv.hub.subscriber_count("ch") == 2)
    for i in range(200):
        srv.hub.publish("ch", b"%d" % i)
        if i == 100:
            # close with unread data and SO_LINGER 0: the kernel answers with RST
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rude.close()
        await asyncio.sleep(0)
    await until(lambda: srv.hub.subscriber_count("ch") == 1)
    await healthy.expect(b"".join(message(b"ch", b"%d" % i) for i in range(200)))
    lines = [r.getMessage() for r in caplog.records if r.name == "tidings.wire.resp"]
    assert len(lines) <= 1  # at most one line; a reset seen as EOF is not worth a line
    await until(lambda: len(srv.service.connections) == 1)


async def test_eof_after_commands_still_gets_the_replies(srv: Server) -> None:
    c = await Client.connect(srv.port)
    c.send_raw(b"PING\r\nECHO done\r\n")
    c.writer.write_eof()
    assert await c.read_to_eof() == b"+PONG\r\n$4\r\ndone\r\n"


# -- backpressure and slow consumers ---------------------------------------------------------
async def test_stalled_subscriber_is_cut_at_the_limit_while_others_continue() -> None:
    server = await serve(output_limit=64 * 1024)
    try:
        healthy = await Client.connect(server.port)
        await healthy.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(encode_command("SUBSCRIBE", "ch"))  # and never reads again
        await until(lambda: server.hub.subscriber_count("ch") == 2)
        payload = b"p" * 1000
        received = bytearray()
        expected = message(b"ch", payload)
        sent = 0
        while server.service.slow_consumers_cut == 0:
            assert sent < 100_000, "the stalled subscriber was never cut"
            for _ in range(10):
                server.hub.publish("ch", payload)
                sent += 1
            received += await healthy.reader.read(1 << 20)  # the healthy one keeps up
        assert server.hub.subscriber_count("ch") == 1
        await until(lambda: len(server.service.connections) == 1)
        rest = sent * len(expected) - len(received)
        received += await asyncio.wait_for(healthy.reader.readexactly(rest), TIMEOUT)
        assert received == expected * sent
        # (not drained here: with a 4 KiB receive window, loopback TCP trickles for minutes)
        stalled.close()
    finally:
        await server.service.close()


async def test_pipelining_client_is_throttled_not_cut() -> None:
    server = await serve(output_limit=256 * 1024)
    try:
        c = await Client.connect(server.port)
        count = 300_000  # 2 MB of requests, 2 MB of replies: far above the output limit
        c.send_raw(b"PING\r\n" * count)
        await c.expect(b"+PONG\r\n" * count)
        assert server.service.slow_consumers_cut == 0
    finally:
        await server.service.close()


# -- fan-out at scale ------------------------------------------------------------------------
FANOUT_CLIENT = r"""
import asyncio, sys

class Sub(asyncio.Protocol):
    # compares the byte stream with what must arrive: the confirmation, then every event
    # in order, and nothing else
    def __init__(self, expected, confirm_size, subscribed, done):
        self.expected, self.confirm_size = memoryview(expected), confirm_size
        self.subscribed, self.done, self.got = subscribed, done, 0
    def connection_made(self, transport):
        transport.write(b"SUBSCRIBE feed\r\n")
    def data_received(self, data):
        if self.expected[self.got : self.got + len(data)] != data:
            self.finish(f"mismatch at byte {self.got}")
        self.got += len(data)
        if self.got >= self.confirm_size and not self.subscribed.done():
            self.subscribed.set_result(None)
        if self.got == len(self.expected):
            self.finish("ok")
    def connection_lost(self, exc):
        self.finish(f"lost after {self.got} bytes")
    def finish(self, result):
        if not self.done.done():
            self.done.set_result(result)

async def main(port, clients, events):
    loop = asyncio.get_running_loop()
    confirm = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nfeed\r\n:1\r\n"
    expected = confirm + b"".join(
        b"*3\r\n$7\r\nmessage\r\n$4\r\nfeed\r\n$%d\r\n%d\r\n" % (len(b"%d" % i), i)
        for i in range(events)
    )
    subscribed = [loop.create_future() for _ in range(clients)]
    done = [loop.create_future() for _ in range(clients)]
    pairs = list(zip(subscribed, done))
    for i in range(0, clients, 100):  # 100 at a time: well within the listen backlog
        await asyncio.gather(*(
            loop.create_connection(
                lambda s=s, d=d: Sub(expected, len(confirm), s, d), "127.0.0.1", port
            )
            for s, d in pairs[i : i + 100]
        ))
    await asyncio.gather(*subscribed)
    print("READY", flush=True)
    results = await asyncio.gather(*done)
    bad = [r for r in results if r != "ok"]
    print("DONE", len(results) - len(bad), bad[:3], flush=True)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"""


async def fanout(clients: int, events: int) -> None:
    server = await serve()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FANOUT_CLIENT,
        str(server.port),
        str(clients),
        str(events),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"READY\n"
        assert server.hub.subscriber_count("feed") == clients
        for start in range(0, events, 100):
            for i in range(start, min(start + 100, events)):
                server.hub.publish("feed", b"%d" % i)
            await asyncio.sleep(0)  # a source yields between transactions
        done = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert done.decode().split(" ", 2)[:2] == ["DONE", str(clients)], done
        assert server.service.slow_consumers_cut == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await server.service.close()


async def test_thousand_subscribers_receive_ten_thousand_events_in_order() -> None:
    await fanout(clients=1000, events=10_000)


# -- real clients ----------------------------------------------------------------------------
async def test_redis_py_sync_pubsub_in_a_thread(srv: Server) -> None:
    loop = asyncio.get_running_loop()
    subscribed = asyncio.Event()
    events = [b"one", b"\x00two\xff", b"three" * 1000]

    def subscriber() -> list[object]:
        r = redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=TIMEOUT)
        try:
            assert r.ping() is True
            p = r.pubsub()
            p.subscribe("orders")
            assert p.get_message(timeout=TIMEOUT) == {
                "type": "subscribe",
                "pattern": None,
                "channel": b"orders",
                "data": 1,
            }
            loop.call_soon_threadsafe(subscribed.set)
            got = []
            while len(got) < len(events):
                msg = p.get_message(timeout=TIMEOUT)
                assert msg is not None, "timed out waiting for a message"
                got.append(msg)
            p.close()
            return got
        finally:
            r.close()

    task = asyncio.ensure_future(asyncio.to_thread(subscriber))
    await asyncio.wait_for(subscribed.wait(), TIMEOUT)
    for body in events:
        srv.hub.publish("orders", body)
    got = await asyncio.wait_for(task, TIMEOUT)
    assert [m["data"] for m in got] == events  # type: ignore[index]
    assert {m["type"] for m in got} == {"message"}  # type: ignore[index]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_redis_py_asyncio_pubsub(srv: Server, protocol: int) -> None:
    r = redis.asyncio.Redis(host="127.0.0.1", port=srv.port, protocol=protocol)
    try:
        assert await r.ping() is True
        p = r.pubsub()
        await p.subscribe("shop.orders")
        await p.psubscribe("shop.*")
        confirmations = [await p.get_message(timeout=TIMEOUT) for _ in range(2)]
        assert [(m["type"], m["data"]) for m in confirmations if m] == [
            ("subscribe", 1),
            ("psubscribe", 2),
        ]
        event = srv.hub.publish_record("shop.orders", {"type": "insert"})
        first = await p.get_message(timeout=TIMEOUT)
        second = await p.get_message(timeout=TIMEOUT)
        assert first is not None and second is not None
        assert (first["type"], first["channel"], first["data"]) == (
            "message",
            b"shop.orders",
            event.body,
        )
        assert (second["type"], second["pattern"], second["data"]) == (
            "pmessage",
            b"shop.*",
            event.body,
        )
        assert await r.publish("shop.orders", "from redis-py") == 2
        assert (await p.get_message(timeout=TIMEOUT) or {})["data"] == b"from redis-py"
        assert await r.pubsub_numsub("shop.orders") == [(b"shop.orders", 1)]
        assert await r.pubsub_numpat() == 1
        assert await r.pubsub_channels() == [b"shop.orders"]
        assert await r.client_setname("tidings-test") is True
        assert await r.client_getname() in ("tidings-test", b"tidings-test")
        conn = next(c for c in srv.service.connections if c.resp3 == (protocol == 3))
        assert conn.resp3 == (protocol == 3)
        await p.aclose()
    finally:
        await r.aclose()


def redis_cli() -> str:
    path = shutil.which("redis-cli")
    assert path, "redis-cli is missing: run scripts/bootstrap"
    return path


@pytest.mark.parametrize("resp3", [False, True])
async def test_redis_cli_subscribe(srv: Server, resp3: bool) -> None:
    args = [redis_cli(), "-p", str(srv.port), *(["-3"] if resp3 else []), "SUBSCRIBE", "ch"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:

        async def line() -> bytes:
            assert proc.stdout is not None
            return await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)

        assert [await line() for _ in range(3)] == [b"subscribe\n", b"ch\n", b"1\n"]
        srv.hub.publish("ch", b'{"id":1}')
        assert [await line() for _ in range(3)] == [b"message\n", b"ch\n", b'{"id":1}\n']
    finally:
        proc.kill()
        await proc.wait()


async def test_redis_cli_commands(srv: Server) -> None:
    async def cli(*args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            redis_cli(), "-p", str(srv.port), *args, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        return out

    assert await cli("PING") == b"PONG\n"
    assert await cli("ECHO", "hi") == b"hi\n"
    assert await cli("PUBLISH", "ch", "x") == b"0\n"
    assert (await cli("GET", "x")).startswith(b"ERR unknown command 'GET'")


# -- the same scenarios on uvloop ------------------------------------------------------------
async def uvloop_scenarios() -> None:
    await fanout(clients=200, events=2000)
    await test_stalled_subscriber_is_cut_at_the_limit_while_others_continue()
    await test_pipelining_client_is_throttled_not_cut()
    server = await serve(allow_publish=True)
    try:
        await test_redis_py_asyncio_pubsub(server, 3)
        await test_database_event_reaches_a_subscriber(server)
    finally:
        await server.service.close()


def test_on_uvloop() -> None:
    assert Path(uvloop.__file__).exists()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(uvloop_scenarios())
        assert isinstance(runner.get_loop(), uvloop.Loop)


async def test_a_failing_command_closes_only_its_connection(
    srv: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bystander = await Client.connect(srv.port)
    await bystander.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))

    def broken(hub: Hub, sub: object, pattern: str) -> None:
        raise RuntimeError("hub bug")

    monkeypatch.setattr(Hub, "psubscribe", broken)
    c = await Client.connect(srv.port)
    c.send("PSUBSCRIBE", "x*")
    c.send("PING")
    assert await c.read_to_eof() == b"-ERR internal error; closing the connection\r\n"
    assert any(r.exc_info and "command failed" in r.getMessage() for r in caplog.records)
    srv.hub.publish("ch", b"fine")
    await bystander.expect(message(b"ch", b"fine"))
    await until(lambda: len(srv.service.connections) == 1)


async def test_service_close_ends_every_connection() -> None:
    server = await serve()
    clients = [await Client.connect(server.port) for _ in range(5)]
    for c in clients:
        await c.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
    assert server.service.connections_open == 5
    assert server.service.stats.connections_total == 5
    await server.service.close()
    for c in clients:
        assert await c.read_to_eof() == b""
    assert server.service.connections_open == 0
    assert server.hub.subscriber_count("ch") == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_cut_subscriber_is_told_why_when_the_stream_allows() -> None:
    server = await serve(output_limit=4096)
    try:
        c = await Client.connect(server.port)
        await c.call("SUBSCRIBE", "ch", reply=confirm(b"subscribe", b"ch", 1))
        server.hub.publish("ch", b"x" * 5000)  # larger than the limit: delivered alone,
        server.hub.publish("ch", b"y" * 5000)  # but not with another behind it in one iteration
        reply = await c.read_to_eof()
        assert reply.startswith(b"-ERR output limit reached: ")
        assert reply.endswith(b"; disconnected\r\n")
        assert reply.count(b"\r\n") == 1
        assert server.service.slow_consumers_cut == 1
    finally:
        await server.service.close()


# -- PUBLISH through a publisher (the outbox table, or the reader of --workers) -------------------
async def test_pipelined_publishes_go_on_together_and_reply_in_order(srv: Server) -> None:
    pending: list[tuple[str, bytes, asyncio.Future[int]]] = []

    async def publisher(channel: str, payload: bytes) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pending.append((channel, payload, future))
        return await future

    srv.service.publisher = publisher
    c = await Client.connect(srv.port)
    c.send_raw(
        encode_command("PUBLISH", "a", "1")
        + encode_command("PUBLISH", "b", "2")
        + encode_command("PING")
        + encode_command("PUBLISH", "a", "3")
    )
    await until(lambda: len(pending) == 2)  # both at once; the PING waits for their replies
    pending[1][2].set_result(7)  # the second is done first: its reply waits for the first's
    with pytest.raises(TimeoutError):  # no reply yet
        await asyncio.wait_for(c.reader.read(1), 0.05)
    assert len(pending) == 2
    pending[0][2].set_exception(ValueError("channel name too long"))
    await c.expect(b"-ERR channel name too long\r\n:7\r\n+PONG\r\n")
    await until(lambda: len(pending) == 3)
    assert [(ch, p) for ch, p, _ in pending] == [("a", b"1"), ("b", b"2"), ("a", b"3")]
    pending[2][2].set_exception(RuntimeError("the database is gone"))
    await c.expect(b"-ERR PUBLISH failed: the database is gone\r\n")
    c.close()


async def test_a_pipeline_longer_than_the_limit_waits_for_replies_without_losing_any(
    srv: Server,
) -> None:
    calls = 0

    async def publisher(channel: str, payload: bytes) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.001)
        return int(payload)

    srv.service.publisher = publisher
    c = await Client.connect(srv.port)
    count = PUBLISH_PIPELINE * 2 + 5
    c.send_raw(b"".join(encode_command("PUBLISH", "a", str(n)) for n in range(count)))
    await c.expect(b"".join(b":%d\r\n" % n for n in range(count)))
    assert calls == count
    c.close()


async def test_info_names_the_process_and_its_worker_number(srv: Server) -> None:
    client = redis.asyncio.Redis(port=srv.port)
    info = await client.info()
    assert info["redis_version"] == "7.0.0" and info["process_id"] == os.getpid()
    assert info["tidings_worker"] == 0 and info["connected_clients"] == 1
    srv.service.worker = 3
    assert (await client.info("server"))["tidings_worker"] == 3
    await client.aclose()
