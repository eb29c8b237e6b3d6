"""The WebSocket session over real sockets, driven by the `websockets` client library and by
a raw client that sends exact (and broken) frames.

The listener is test-only: it reads an HTTP request head and calls
`ws_session.accept`, exactly as tidings.wire.http_server does (the agreed hand-off).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tidings.config import Settings
from tidings.event import Event
from tidings.hub import Hub
from tidings.wire import websocket as ws
from tidings.wire.origins import ANY, Origins
from tidings.wire.ws_session import TEXT_FRAME, WsService, WsSettings, accept

TIMEOUT = 10


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    target: str = "/ws"
    query: dict[str, list[str]] = field(default_factory=dict)
    version: str = "HTTP/1.1"


class Listener(asyncio.Protocol):
    """Reads one request head, then hands the connection over as http_server does."""

    def __init__(self, hub: Hub, service: WsService) -> None:
        self.hub = hub
        self.service = service
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) or hasattr(transport, "set_protocol")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ")
        headers = {}
        for item in lines:
            name, _, value = item.partition(":")
            headers[name.strip().lower()] = value.strip()
        transport = self.transport
        assert transport is not None
        result = accept(Request(method, target, headers), transport, self.hub, self.service)
        if isinstance(result, bytes):
            transport.write(result)
            transport.close()
            return
        transport.set_protocol(result)
        result.connection_made(transport)
        if rest:
            result.data_received(rest)


@dataclass
class Server:
    hub: Hub
    service: WsService
    port: int
    server: asyncio.Server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def publish(self, channel: str, **fields: Any) -> Event:
        return self.hub.publish_record(channel, {"type": "insert", "data": fields})


async def serve(**settings: Any) -> Server:
    hub = Hub()
    service = WsService(hub, WsSettings(**settings))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Listener(hub, service), "127.0.0.1", 0)
    return Server(hub, service, server.sockets[0].getsockname()[1], server)


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    server = await serve()
    yield server
    server.service.close_clients()
    server.server.close()


async def recv_json(client: ClientConnection) -> Any:
    message = await asyncio.wait_for(client.recv(), TIMEOUT)
    assert isinstance(message, str), message
    return orjson.loads(message)


async def request(client: ClientConnection, **message: Any) -> Any:
    await client.send(orjson.dumps(message).decode())
    return await recv_json(client)


class RawClient:
    """Speaks frames by hand: for the broken ones a library would never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = ws.FrameParser(1 << 24, need_mask=False)

    @classmethod
    async def connect(cls, port: int, rcvbuf: int = 0, **headers: str) -> RawClient:
        sock = socket.socket()
        if rcvbuf:  # a small receive window makes a slow reader quickly
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        fields = {
            "Host": "localhost",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
            **headers,
        }
        head = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        writer.write(head.encode() + b"\r\n")
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert response.startswith(b"HTTP/1.1 101 "), response
        assert f"Sec-WebSocket-Accept: {ws.accept_key(key)}".encode() in response
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(ws.mask_frame(opcode, payload, os.urandom(4), fin=fin))

    def send_json(self, **message: Any) -> None:
        self.send(ws.OP_TEXT, orjson.dumps(message))

    async def event(self) -> ws.Event:
        while (event := self.parser.next_event()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            assert data, "connection closed without a close frame"
            self.parser.feed(data)
        return event

    async def until_close(self) -> ws.Close:
        while not isinstance(event := await self.event(), ws.Close):
            pass
        return event

    async def json(self) -> Any:
        event = await self.event()
        assert isinstance(event, ws.Message) and event.text, event
        return orjson.loads(event.data)

    async def eof(self) -> None:
        """The server closes the TCP connection after the closing handshake."""
        data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        assert data == b""


# -- the JSON protocol ------------------------------------------------------------------------
async def test_subscribe_then_events_carry_exactly_the_event_json(srv: Server) -> None:
    async with connect(srv.url) as client:
        reply = await request(client, op="subscribe", channel="shop.orders")
        assert reply == {"op": "subscribed", "channel": "shop.orders"}
        event = srv.publish("shop.orders", id=1)
        srv.publish("shop.other", id=2)
        message = await asyncio.wait_for(client.recv(), TIMEOUT)
        assert message == event.body.decode()
        assert orjson.loads(message)["channel"] == "shop.orders"


async def test_one_frame_per_event_shared_by_every_subscriber(srv: Server) -> None:
    async with connect(srv.url) as a, connect(srv.url) as b:
        for client in (a, b):
            await request(client, op="subscribe", channel="t.x")
        event = srv.publish("t.x", n=1)
        assert event.frames == {TEXT_FRAME: ws.text_frame(event.body)}
        frame = event.frames[TEXT_FRAME]
        conns = list(srv.service.connections)
        assert len(conns) == 2
        for conn in conns:  # the same object went to both outboxes
            assert any(chunk is frame for chunk in conn.outbox._chunks)
        assert await a.recv() == await b.recv() == event.body.decode()


async def test_ping_unsubscribe_and_errors_keep_the_connection_up(srv: Server) -> None:
    async with connect(srv.url) as client:
        assert await request(client, op="ping") == {"op": "pong"}
        await client.send("{not json")
        assert (await recv_json(client))["op"] == "error"
        assert (await request(client, op="dance")) == {
            "op": "error",
            "message": "unknown op 'dance': use subscribe, unsubscribe, ping or auth",
        }
        await client.send("[1, 2]")
        assert (await recv_json(client))["op"] == "error"
        await client.send(b"\x00binary")
        assert "binary" in (await recv_json(client))["message"]
        reply = await request(client, op="subscribe", channel="shop.orders?customer_id=zz.1")
        assert reply["op"] == "error" and reply["channel"] == "shop.orders?customer_id=zz.1"
        assert (await request(client, op="subscribe"))["op"] == "error"
        reply = await request(client, op="subscribe", channel="t.x", since="12")
        assert reply == {"op": "error", "message": '"since" must be an integer event id'}
        reply = await request(client, op="subscribe", channel="t.x", since=srv.hub.next_id + 5)
        assert reply["op"] == "error" and "ahead of the stream" in reply["message"]
        # still subscribed to nothing, and still working
        assert await request(client, op="subscribe", channel="t.x") == {
            "op": "subscribed",
            "channel": "t.x",
        }
        assert await request(client, op="unsubscribe", channel="t.x") == {
            "op": "unsubscribed",
            "channel": "t.x",
        }
        srv.publish("t.x", n=1)
        assert await request(client, op="ping") == {"op": "pong"}  # no event in between
        assert srv.hub.subscriber_count("t.x") == 0


async def test_filtered_channel_gets_matching_rows_under_its_own_name(srv: Server) -> None:
    async with connect(srv.url) as client:
        name = "shop.orders?customer_id=eq.42"
        await request(client, op="subscribe", channel=name)
        srv.hub.publish_record("shop.orders", {"type": "insert", "data": {"customer_id": 7}})
        srv.hub.publish_record("shop.orders", {"type": "insert", "data": {"customer_id": 42}})
        # the same bytes as RESP's payload: the body names the table, not the filter
        got = await recv_json(client)
        assert got["channel"] == "shop.orders" and got["data"] == {"customer_id": 42}


async def test_resume_with_since_replays_then_goes_live(srv: Server) -> None:
    events = [srv.publish("t.x", n=n) for n in range(5)]
    async with connect(srv.url) as client:
        reply = await request(client, op="subscribe", channel="t.x", since=events[1].id)
        assert reply == {"op": "subscribed", "channel": "t.x"}
        late = srv.publish("t.x", n=5)
        got = [await recv_json(client) for _ in range(4)]
        assert [e["id"] for e in got] == [e.id for e in (*events[2:], late)]


async def test_a_long_resume_is_paced_by_the_output_limit() -> None:
    srv = await serve(output_limit=64 * 1024)
    try:
        events = [srv.publish("t.x", pad="x" * 200) for _ in range(3000)]  # ~750 KB
        async with connect(srv.url) as client:
            await request(client, op="subscribe", channel="t.x", since=events[0].id - 1)
            ids = [(await recv_json(client))["id"] for _ in range(3000)]
        assert ids == [e.id for e in events]
        assert srv.service.slow_consumers_cut == 0
    finally:
        srv.server.close()


async def test_the_client_closes_and_the_server_answers_in_kind(srv: Server) -> None:
    client = await connect(srv.url)
    await request(client, op="subscribe", channel="t.x")
    await asyncio.wait_for(client.close(code=4001, reason="bye"), TIMEOUT)
    assert client.close_code == 4001  # the server's close frame echoed the code
    await wait_until(lambda: not srv.service.connections)
    assert srv.hub.subscriber_count("t.x") == 0


async def wait_until(predicate: Any, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- the handshake -----------------------------------------------------------------------------
async def test_a_bad_handshake_gets_an_http_error_and_the_origin_is_recorded(srv: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Sec-WebSocket-Version: 13\r\n" in response
    writer.close()
    assert srv.service.stats.handshakes_refused == 1
    raw = await RawClient.connect(srv.port, Origin="https://shop.example")
    await wait_until(lambda: srv.service.connections)
    assert [c.origin for c in srv.service.connections] == ["https://shop.example"]
    raw.writer.close()


async def test_bytes_sent_with_the_request_head_are_not_lost(srv: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %b\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % key.encode()
        + ws.mask_frame(ws.OP_TEXT, b'{"op":"ping"}', b"abcd")
    )
    raw = RawClient(reader, writer)
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert await raw.json() == {"op": "pong"}
    writer.close()


# -- violations: the right close code, others undisturbed ----------------------------------
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (ws.encode_frame(ws.OP_TEXT, b'{"op":"ping"}'), 1002),  # not masked
        (ws.mask_frame(0x3, b"x", b"abcd"), 1002),  # reserved opcode
        (ws.mask_frame(ws.OP_TEXT, b"x", b"abcd", rsv=4), 1002),  # RSV1 without deflate
        (ws.mask_frame(ws.OP_PING, b"x", b"abcd", fin=False), 1002),  # fragmented control
        (ws.mask_frame(ws.OP_TEXT, b"\xc3\x28", b"abcd"), 1007),  # invalid UTF-8
        (ws.mask_frame(ws.OP_TEXT, b"x" * (64 * 1024 + 1), b"abcd"), 1009),  # over the bound
    ],
)
async def test_bad_frames_are_closed_with_their_code_while_others_keep_receiving(
    srv: Server, frame: bytes, code: int
) -> None:
    async with connect(srv.url) as good:
        await request(good, op="subscribe", channel="t.x")
        bad = await RawClient.connect(srv.port)
        bad.send_json(op="subscribe", channel="t.x")
        assert (await bad.json())["op"] == "subscribed"
        bad.writer.write(frame)
        close = await bad.until_close()
        assert close.code == code and close.reason
        # the server half-closed after its close frame; the client answers and the server ends
        bad.writer.write(ws.mask_frame(ws.OP_CLOSE, ws.close_frame(code)[2:], b"abcd"))
        await bad.eof()
        bad.writer.close()
        event = srv.publish("t.x", n=1)
        assert await asyncio.wait_for(good.recv(), TIMEOUT) == event.body.decode()
        assert srv.hub.subscriber_count("t.x") == 1
    assert srv.service.stats.protocol_errors == 1


async def test_the_message_bound_is_a_setting() -> None:
    srv = await serve(max_message=100)
    try:
        bad = await RawClient.connect(srv.port)
        bad.send(ws.OP_TEXT, b" " * 101)
        assert (await bad.until_close()).code == 1009
    finally:
        srv.server.close()


async def test_client_pings_get_pongs_with_their_payload(srv: Server) -> None:
    raw = await RawClient.connect(srv.port)
    raw.send(ws.OP_PING, b"hello?")
    assert await raw.event() == ws.Pong(b"hello?")
    raw.writer.close()


async def test_a_slow_consumer_is_cut_with_1008_and_a_reason() -> None:
    srv = await serve(output_limit=64 * 1024)
    try:
        slow = await RawClient.connect(srv.port, rcvbuf=4096)
        slow.send_json(op="subscribe", channel="t.x")
        await wait_until(lambda: srv.hub.subscriber_count("t.x") == 1)
        async with connect(srv.url) as good:
            await request(good, op="subscribe", channel="t.x")
            got: list[Any] = []

            async def read_all() -> None:
                while True:
                    got.append(await recv_json(good))

            reader = asyncio.ensure_future(read_all())
            # the slow client reads nothing until the limit (plus the kernel's buffers) is
            # passed; the good one reads as it goes
            body = "x" * 8000
            sent = 0
            while srv.service.slow_consumers_cut == 0:
                assert sent < 5000, "never cut"
                srv.publish("t.x", pad=body)
                sent += 1
                await asyncio.sleep(0.001 if sent % 10 == 0 else 0)
            close = await slow.until_close()
            assert close.code == 1008 and "output limit" in close.reason
            await wait_until(lambda: len(got) == sent)
            reader.cancel()
            assert all(e["data"]["pad"] == body for e in got)
        assert srv.hub.subscriber_count("t.x") == 0
        assert srv.service.slow_consumers_cut == 1
    finally:
        srv.server.close()


async def test_server_pings_keep_live_clients_and_drop_silent_ones() -> None:
    srv = await serve(ping_interval=0.1)
    try:
        async with connect(srv.url, ping_interval=None) as live:
            silent = await RawClient.connect(srv.port)
            # the raw client answers nothing: after a ping and a silent interval, 1011
            assert await silent.event() == ws.Ping(b"tidings")
            close = await silent.until_close()
            assert close.code == 1011
            assert srv.service.stats.ping_timeouts == 1
            # the library answers pings by itself: still up after several intervals
            assert await request(live, op="ping") == {"op": "pong"}
            await wait_until(lambda: srv.service.stats.ping_timeouts == 1)
            assert await request(live, op="ping") == {"op": "pong"}
    finally:
        srv.server.close()


async def test_shutdown_closes_clients_with_1001(srv: Server) -> None:
    async with connect(srv.url) as client:
        srv.service.close_clients()
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(client.recv(), TIMEOUT)
        assert client.close_code == 1001


# -- the Origin allow-list ---------------------------------------------------------------------
async def handshake(port: int, **headers: str) -> bytes:
    """A raw handshake; the whole answer when it is refused, else the 101 head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fields = {
        "Host": "localhost",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    head = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    writer.write(head.encode() + b"\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    if not answer.startswith(b"HTTP/1.1 101 "):
        answer += await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    return answer


async def test_an_origin_not_on_the_list_is_refused_with_403() -> None:
    srv = await serve(origins=Origins.parse("https://app.example, http://localhost:*"))
    try:
        answer = await handshake(srv.port, Origin="https://evil.example")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"Connection: close" in head
        assert body == (
            b"origin 'https://evil.example' may not open a WebSocket here: "
            b"add it to the daemon's --origins setting\n"
        )
        assert srv.service.stats.handshakes_refused == 1 and not srv.service.connections
        for origin in ("https://app.example", "http://localhost:5173"):
            assert (await handshake(srv.port, Origin=origin)).startswith(b"HTTP/1.1 101 ")
        # no Origin: not a page's script (a service, a CLI); never refused for it
        async with connect(srv.url) as client:
            assert await request(client, op="ping") == {"op": "pong"}
        assert srv.service.stats.handshakes_refused == 1
    finally:
        srv.service.close_clients()
        srv.server.close()


async def test_any_origin_by_default_and_the_setting_reaches_the_session() -> None:
    srv = await serve()
    try:
        answer = await handshake(srv.port, Origin="null")
        assert answer.startswith(b"HTTP/1.1 101 ")
    finally:
        srv.service.close_clients()
        srv.server.close()
    assert WsSettings.from_settings(Settings()).origins == ANY
    listed = WsSettings.from_settings(Settings(origins="https://a.example")).origins
    assert listed.allows("https://a.example") and not listed.allows("https://b.example")
