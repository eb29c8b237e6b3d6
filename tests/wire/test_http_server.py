"""The HTTP listener over real sockets: SSE streams and resume, the API, metrics, health.

Each test starts its own `HttpService` on 127.0.0.1:0 with its own Hub and publishes
with `hub.publish` / `hub.publish_record`, as the daemon does.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidings.hub import Hub
from tidings.source.changes import Position
from tidings.wire import ws_session
from tidings.wire.http_server import HttpConnection, HttpService, HttpSettings
from tidings.wire.origins import Origins

TIMEOUT = 10


@dataclass
class Server:
    hub: Hub
    service: HttpService
    port: int

    async def connect(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return Client(reader, writer)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response with a Content-Length: status, headers, body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return status, headers, body

    async def get(self, target: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
        self.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        return await self.response()

    async def block(self) -> bytes:
        """The next SSE block (up to its blank line)."""
        return await asyncio.wait_for(self.reader.readuntil(b"\n\n"), TIMEOUT)

    async def events(self, count: int) -> list[tuple[int, str, Any]]:
        """The next `count` SSE events as (id, type, data), comments and hints skipped."""
        out: list[tuple[int, str, Any]] = []
        while len(out) < count:
            fields: dict[str, str] = {}
            for line in (await self.block()).decode().split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "data" in fields:
                data: Any = fields["data"]
                if fields["event"] != "message":
                    data = orjson.loads(data)
                out.append((int(fields["id"]), fields["event"], data))
        return out

    async def stream(self, target: str, extra: str = "") -> bytes:
        """Open an SSE stream; the response head and the first block (retry/id)."""
        self.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert b"Content-Type: text/event-stream" in head
        return await self.block()

    async def closed(self) -> bytes:
        """Everything until the server closes the connection."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running() as srv:
        yield srv


class running:
    def __init__(self, hub: Hub | None = None, **settings: Any) -> None:
        self.settings = settings
        self.kwargs: dict[str, Any] = {}
        self.hub = hub

    async def __aenter__(self) -> Server:
        hub = self.hub or Hub(first_id=1)
        self.service = HttpService(hub, HttpSettings(**self.settings), **self.kwargs)
        srv = await self.service.start("127.0.0.1", 0)
        return Server(hub, self.service, srv.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        await self.service.close()


def row(hub: Hub, channel: str, **data: Any) -> int:
    event = hub.publish_record(channel, {"type": "insert", "data": data})
    return event.id


async def until(predicate: Any, what: str = "condition") -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# -- SSE -------------------------------------------------------------------------------------------
async def test_sse_stream_gets_each_event_with_id_type_and_json(server: Server) -> None:
    client = await server.connect()
    first = await client.stream("/sse?channel=shop.orders&pattern=logs.*")
    assert first == b"retry: 2000\nid: 0\n\n"  # resume point if the stream breaks at once
    await until(lambda: server.hub.subscriber_count("shop.orders") == 1, "subscribed")
    a = row(server.hub, "shop.orders", id=1)
    row(server.hub, "other.table", id=2)
    server.hub.publish("logs.app", b"plain\ntext")
    server.hub.publish("logs.app", b'{"type":"x"}')  # a client's payload keeps type message
    (e1,) = await client.events(1)
    assert e1 == (
        a,
        "insert",
        {"id": a, "channel": "shop.orders", "type": "insert", "data": {"id": 1}},
    )
    raw = await client.block()
    assert raw == b"id: 3\nevent: message\ndata: plain\ndata: text\n\n"
    assert await client.block() == b'id: 4\nevent: message\ndata: {"type":"x"}\n\n'
    client.close()
    await until(lambda: not server.hub.channels(), "unsubscribed after disconnect")
    assert server.hub.pattern_count() == 0


async def test_sse_frames_are_encoded_once_and_shared(server: Server) -> None:
    clients = [await server.connect() for _ in range(3)]
    for c in clients:
        await c.stream("/sse?channel=t")
    await until(lambda: server.hub.subscriber_count("t") == 3)
    event = server.hub.publish_record("t", {"type": "delete", "data": {}})
    for c in clients:
        assert (await c.events(1))[0][:2] == (event.id, "delete")
    assert list(event.frames) == ["sse"]
    assert server.service.stats.deliveries == 3


async def test_sse_filtered_channel_and_bad_filter(server: Server) -> None:
    client = await server.connect()
    await client.stream("/sse?channel=shop.orders%3Fstatus%3Deq.paid")
    await until(lambda: bool(server.hub.channels()))
    server.hub.publish_record("shop.orders", {"type": "insert", "data": {"status": "new"}})
    paid = server.hub.publish_record("shop.orders", {"type": "insert", "data": {"status": "paid"}})
    ((event_id, kind, data),) = await client.events(1)
    assert (event_id, kind, data["data"]) == (paid.id, "insert", {"status": "paid"})
    bad = await server.connect()
    status, _, body = await bad.get("/sse?channel=shop.orders%3Fstatus%3Dzz.1")
    assert status == 400 and b"invalid filter" in body


async def test_sse_resumes_from_last_event_id_then_goes_live(server: Server) -> None:
    ids = [row(server.hub, "t", n=n) for n in range(5)]
    client = await server.connect()
    first = await client.stream("/sse?channel=t", f"Last-Event-ID: {ids[1]}\r\n")
    assert first == b"retry: 2000\n\n"
    got = await client.events(3)
    assert [e[0] for e in got] == ids[2:]
    await until(lambda: server.hub.subscriber_count("t") == 1, "live")
    live = row(server.hub, "t", n=5)
    assert (await client.events(1))[0][0] == live
    # ?since= does the same for clients that cannot set headers
    other = await server.connect()
    await other.stream(f"/sse?channel=t&since={ids[3]}")
    assert [e[0] for e in await other.events(2)] == [ids[4], live]


async def test_sse_resume_from_a_lost_id_starts_with_a_gap() -> None:
    async with running(Hub(history_events=2, history_channel_events=2)) as srv:
        ids = [row(srv.hub, "t", n=n) for n in range(6)]
        client = await srv.connect()
        await client.stream("/sse?channel=t&since=1")
        (gap, *rest) = await client.events(3)
        assert gap[1] == "gap" and gap[2]["since"] == 1 and gap[2]["oldest"] == ids[-2]
        assert [e[0] for e in rest] == ids[-2:]


async def test_sse_refusals(server: Server) -> None:
    client = await server.connect()
    status, _, body = await client.get("/sse")
    assert status == 400 and b"channel=" in body
    status, _, body = await client.get("/sse?channel=t", "Last-Event-ID: abc\r\n")
    assert status == 400 and b"integer" in body
    status, _, body = await client.get("/sse?channel=t&since=99")
    assert status == 400 and b"ahead of the stream" in body
    # still a plain keep-alive connection after those answers
    status, _, _ = await client.get("/healthz")
    assert status == 200


async def test_sse_heartbeats_are_comments() -> None:
    async with running(sse_heartbeat=0.05) as srv:
        client = await srv.connect()
        await client.stream("/sse?channel=t")
        assert await client.block() == b": heartbeat\n\n"


async def test_a_slow_stream_is_cut_with_a_reason_and_others_go_on() -> None:
    async with running(output_limit=64 * 1024) as srv:
        slow = await srv.connect()
        await slow.stream("/sse?channel=t")
        fast = await srv.connect()
        await fast.stream("/sse?channel=t")
        await until(lambda: srv.hub.subscriber_count("t") == 2)
        slow.writer.transport.pause_reading()  # type: ignore[attr-defined]
        blob = "x" * 4000
        sent = 0
        while srv.hub.subscriber_count("t") == 2 and sent < 5000:
            row(srv.hub, "t", blob=blob)
            sent += 1
            if sent % 20 == 0:
                assert len(await fast.events(20)) == 20  # the fast one keeps up
        assert srv.hub.subscriber_count("t") == 1, "the slow stream was never cut"
        assert srv.service.flusher.stats.slow_consumers_cut == 1
        slow.writer.transport.resume_reading()  # type: ignore[attr-defined]
        tail = await slow.closed()
        assert tail.endswith(b": disconnected: output limit reached: too much output was "
                             b"pending for this stream (it read too slowly, or one event was "
                             b"larger than the limit)\n\n")  # fmt: skip


# -- the API ---------------------------------------------------------------------------------------
async def test_keep_alive_pipelining_404_405_and_head(server: Server) -> None:
    client = await server.connect()
    client.send(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /channels HTTP/1.1\r\nHost: t\r\n\r\n"
        b"HEAD /channels HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert (await client.response())[0] == 200
    status, _, body = await client.response()
    assert status == 404 and b"/nope" in body
    status, headers, _ = await client.response()
    assert status == 405 and headers["allow"] == "GET"
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 28" in head
    client.send(b"HEAD /sse?channel=t HTTP/1.1\r\nHost: t\r\n\r\n")  # no stream: 405
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 405") and b"Allow: GET\r\n" in head
    status, headers, _ = await client.get("/healthz", "Connection: close\r\n")
    assert status == 200 and headers["connection"] == "close"
    assert await client.closed() == b""


async def test_malformed_requests_get_a_clear_error_and_others_are_undisturbed(
    server: Server,
) -> None:
    stream = await server.connect()
    await stream.stream("/sse?channel=t")
    for raw, status, words in [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, b"request line longer"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, b"headers"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, b"malformed request line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, b"malformed"),
        (b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n", 413, b"at most"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", 413, b"at most 1024"),
    ]:
        bad = await server.connect()
        bad.send(raw)
        got, headers, body = await bad.response()
        assert (got, headers["connection"]) == (status, "close") and words in body, body
        assert await bad.closed() == b""
    event_id = row(server.hub, "t", ok=True)
    assert (await stream.events(1))[0][0] == event_id


async def test_channels_lists_subscriber_counts(server: Server) -> None:
    clients = [await server.connect() for _ in range(3)]
    await clients[0].stream("/sse?channel=a&channel=b")
    await clients[1].stream("/sse?channel=a&pattern=c.*")
    await until(lambda: server.hub.subscriber_count("a") == 2)
    status, headers, body = await clients[2].get("/channels")
    assert status == 200 and headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"channels": {"a": 2, "b": 1}, "patterns": 1}


async def test_publish_disabled_enabled_and_through_a_publisher() -> None:
    post = b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b"
    async with running() as srv:
        client = await srv.connect()
        client.send(post % (31, b'{"channel":"t","payload":"hi"} '))
        status, _, body = await client.response()
        assert status == 403 and b"--allow-publish" in body
    async with running(allow_publish=True) as srv:
        sub = await srv.connect()
        await sub.stream("/sse?channel=t")
        await until(lambda: srv.hub.subscriber_count("t") == 1)
        client = await srv.connect()
        for body_in, status_out in [
            (b'{"channel":"t","payload":"hi"}', 200),
            (b'{"channel":"t","payload":{"n":1}}', 200),
            (b"not json", 400),
            (b'{"channel":"t"}', 400),
            (b'{"channel":5,"payload":"x"}', 400),
        ]:
            client.send(post % (len(body_in), body_in))
            status, _, body = await client.response()
            assert status == status_out, body
            if status == 200:
                assert orjson.loads(body) == {"receivers": 1}
        assert [e[1:] for e in await sub.events(2)] == [("message", "hi"), ("message", '{"n":1}')]
    calls: list[tuple[str, bytes]] = []
    release = asyncio.Event()

    async def publisher(channel: str, payload: bytes) -> int:
        calls.append((channel, payload))
        await release.wait()
        return 7

    ctx = running(allow_publish=True)
    ctx.kwargs["publisher"] = publisher
    async with ctx as srv:
        client = await srv.connect()
        # pipelined: the second request waits for the first's answer
        client.send(
            post % (30, b'{"channel":"t","payload":"hi"}')
            + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        await until(lambda: bool(calls), "publisher called")
        assert srv.service.stats.responses == {}
        release.set()
        status, _, body = await client.response()
        assert (status, orjson.loads(body), calls) == (200, {"receivers": 7}, [("t", b"hi")])
        assert (await client.response())[0] == 200


async def test_expect_continue_gets_100_before_the_body() -> None:
    async with running(allow_publish=True) as srv:
        client = await srv.connect()
        body = b'{"channel":"t","payload":"x"}'
        client.send(b"POST /publish HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        assert await client.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(body)
        assert (await client.response())[0] == 200


# -- health and metrics ----------------------------------------------------------------------------
class FakeSource:
    def __init__(self) -> None:
        self.connected = False
        self.last_event_time = time.monotonic()
        self.last_commit_ts = int(time.time())
        self.transactions_total = 0
        self.events_total = 10
        self.bytes_total = 1234
        self.reconnects = 1
        self.heartbeat = 1.0
        self.last_error: str | None = "connection refused"
        self.position: Position | None = Position("mariadb-bin.000002", 1234, "0-1-57")


async def test_healthz_follows_the_source() -> None:
    async with running() as srv:  # no source configured: ready
        client = await srv.connect()
        status, _, body = await client.get("/healthz")
        assert (status, orjson.loads(body)) == (200, {"status": "ok", "source": None})
    ctx = running(health_max_lag=5.0)
    ctx.kwargs["has_source"] = True
    async with ctx as srv:
        client = await srv.connect()
        status, _, body = await client.get("/healthz")
        assert status == 503 and b"not connected" in body  # the source is not there yet
        source = FakeSource()
        srv.service.source = source
        status, _, body = await client.get("/healthz")
        assert status == 503 and orjson.loads(body)["reason"] == (
            "not connected to the binlog source: connection refused"
        )
        source.connected = True
        status, _, body = await client.get("/healthz")
        assert (status, orjson.loads(body)) == (200, {"status": "ok", "lag_seconds": 0.0})
        # transactions arriving with old commit times: behind
        source.last_commit_ts = int(time.time()) - 60
        source.transactions_total += 1
        monitor = srv.service._monitor
        assert monitor is not None
        await until(lambda: monitor.txn_seen_at > time.monotonic() - 1, "sampled")
        status, _, body = await client.get("/healthz")
        report = orjson.loads(body)
        assert (
            status == 503 and report["lag_seconds"] >= 59 and "above the limit" in report["reason"]
        )
        # a silent server: lag is the silence
        source.last_event_time -= 30
        assert (srv.service.binlog_lag() or 0) >= 30


async def test_metrics_parse_and_count_what_happened() -> None:
    ctx = running(allow_publish=True)
    ctx.kwargs["has_source"] = True
    async with ctx as srv:
        source = FakeSource()
        source.connected = True
        srv.service.source = source
        subs = [await srv.connect() for _ in range(2)]
        for s in subs:
            await s.stream("/sse?channel=m")
        await until(lambda: srv.hub.subscriber_count("m") == 2)
        for n in range(5):
            row(srv.hub, "m", n=n)
        for s in subs:
            await s.events(5)
        client = await srv.connect()
        await client.get("/nope")
        status, headers, body = await client.get("/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert samples[("tidings_events_published_total", ())] == 5
        assert samples[("tidings_deliveries_total", (("protocol", "sse"),))] == 10
        assert samples[("tidings_connections", (("protocol", "sse"),))] == 2
        assert samples[("tidings_connections", (("protocol", "http"),))] == 1
        assert samples[("tidings_connections_opened_total", (("protocol", "sse"),))] == 2
        assert samples[("tidings_subscriptions", ())] == 2
        assert samples[("tidings_http_responses_total", (("code", "404"),))] == 1
        assert samples[("tidings_http_responses_total", (("code", "200"),))] == 2  # 2 streams
        assert samples[("tidings_binlog_connected", ())] == 1
        assert samples[("tidings_binlog_lag_seconds", ())] == 0
        assert samples[("tidings_binlog_bytes_total", ())] == 1234
        assert samples[("tidings_slow_consumers_cut_total", (("protocol", "http"),))] == 0
        assert samples[("tidings_bytes_out_total", (("protocol", "http"),))] > 5 * 2 * 50
        assert samples[("tidings_event_loop_lag_seconds", ())] >= 0


# -- the WebSocket hand-off ------------------------------------------------------------------------
async def test_ws_hand_off_to_ws_session(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = await server.connect()
    status, _, body = await plain.get("/ws")
    assert status == 400 and b"Upgrade: websocket" in body
    seen: list[Any] = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"switched\n")

        def data_received(self, data: bytes) -> None:
            seen.append(data)
            self.transport.write(data.upper())  # type: ignore[attr-defined]

    def accept(request: Any, transport: Any, hub: Any, settings: Any) -> asyncio.Protocol | bytes:
        if request.query.get("no"):
            return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
        return Echo()

    monkeypatch.setattr(ws_session, "accept", accept)
    up = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    client = await server.connect()
    client.send(f"GET /ws HTTP/1.1\r\nHost: t\r\n{up}\r\nearly".encode())
    assert await client.reader.readuntil(b"EARLY") == b"switched\nEARLY"
    client.send(b"more")
    assert await client.reader.readexactly(4) == b"MORE"
    assert seen == [b"early", b"more"]
    # handed over: no longer an HTTP connection (the first client is still open)
    assert server.service.stats.websocket_total == 1 and len(server.service.connections) == 1
    refused = await server.connect()
    refused.send(f"GET /ws?no=1 HTTP/1.1\r\nHost: t\r\n{up}\r\n".encode())
    assert (await refused.response())[0] == 403
    assert await refused.closed() == b""


# -- CORS ------------------------------------------------------------------------------------------
PAGE = "http://127.0.0.1:5500"


async def test_cors_with_the_default_lets_any_page_read() -> None:
    async with running() as srv:
        client = await srv.connect()
        status, headers, _ = await client.get("/healthz", f"Origin: {PAGE}\r\n")
        assert status == 200 and headers["access-control-allow-origin"] == "*"
        status, headers, _ = await client.get("/nope", f"Origin: {PAGE}\r\n")
        assert status == 404 and headers["access-control-allow-origin"] == "*"
        stream = await srv.connect()
        stream.send(f"GET /sse?channel=c HTTP/1.1\r\nHost: t\r\nOrigin: {PAGE}\r\n\r\n".encode())
        head = await asyncio.wait_for(stream.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in head, head
        await stream.block()
        await until(lambda: srv.hub.subscriber_count("c") == 1)
        event_id = row(srv.hub, "c", n=1)
        assert (await stream.events(1))[0][0] == event_id


async def test_cors_with_a_list_echoes_allowed_origins_only() -> None:
    async with running(origins=Origins.parse(f"{PAGE}, https://app.example")) as srv:
        client = await srv.connect()
        status, headers, _ = await client.get("/channels", f"Origin: {PAGE}\r\n")
        assert status == 200
        assert (headers["access-control-allow-origin"], headers["vary"]) == (PAGE, "Origin")
        status, headers, body = await client.get("/channels", "Origin: https://evil.example\r\n")
        # served (CORS is the browser's to enforce) but without the header that lets it read
        assert status == 200 and b"channels" in body
        assert "access-control-allow-origin" not in headers and headers["vary"] == "Origin"
        status, headers, _ = await client.get("/channels")
        assert status == 200 and "access-control-allow-origin" not in headers

        allowed, refused = await srv.connect(), await srv.connect()
        for client, origin in ((allowed, PAGE), (refused, "https://evil.example")):
            request = f"GET /sse?channel=c HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\n\r\n"
            client.send(request.encode())
        head = await asyncio.wait_for(allowed.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert f"\r\nAccess-Control-Allow-Origin: {PAGE}\r\nVary: Origin\r\n".encode() in head
        head = await asyncio.wait_for(refused.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Access-Control-Allow-Origin" not in head


async def test_preflight_allowed_refused_and_plain_options() -> None:
    async with running(origins=Origins.parse(PAGE), allow_publish=True) as srv:
        client = await srv.connect()
        client.send(
            f"OPTIONS /publish HTTP/1.1\r\nHost: t\r\nOrigin: {PAGE}\r\n"
            "Access-Control-Request-Method: POST\r\n"
            "Access-Control-Request-Headers: authorization, content-type\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 204 No Content"
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        assert "Content-Length" not in headers and "Content-Type" not in headers  # RFC 9110
        assert headers["Access-Control-Allow-Origin"] == PAGE
        assert headers["Access-Control-Allow-Methods"] == "POST"
        allowed_headers = headers["Access-Control-Allow-Headers"]
        assert allowed_headers == "Authorization, Content-Type, Last-Event-ID"
        assert headers["Allow"] == "POST, OPTIONS"
        # the same keep-alive connection goes on with the real request
        body = b'{"channel":"c","payload":"hi"}'
        client.send(
            b"POST /publish HTTP/1.1\r\nHost: t\r\nOrigin: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (PAGE.encode(), len(body), body)
        )
        status, headers, answer = await client.response()
        assert (status, answer) == (200, b'{"receivers":0}')
        assert headers["access-control-allow-origin"] == PAGE

        client.send(
            b"OPTIONS /sse HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n"
            b"Access-Control-Request-Method: GET\r\n\r\n"
        )
        status, headers, answer = await client.response()
        assert status == 403 and b"https://evil.example" in answer and b"--origins" in answer
        assert "access-control-allow-origin" not in headers

        client.send(b"OPTIONS /metrics HTTP/1.1\r\nHost: t\r\n\r\n")  # no Origin: not CORS
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 204") and b"\r\nAllow: GET, OPTIONS\r\n" in head
        status, _, _ = await client.get("/nope", "Origin: x\r\n")
        assert status == 404
        client.send(b"OPTIONS /nope HTTP/1.1\r\nHost: t\r\nOrigin: http://127.0.0.1:5500\r\n\r\n")
        assert (await client.response())[0] == 404


async def test_ws_handshakes_from_other_origins_are_refused_at_the_listener() -> None:
    async with running(origins=Origins.parse(PAGE)) as srv:
        upgrade = (
            "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
        refused = await srv.connect()
        refused.send(f"{upgrade}Origin: https://evil.example\r\n\r\n".encode())
        answer = await refused.closed()
        assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"--origins" in answer
        allowed = await srv.connect()
        allowed.send(f"{upgrade}Origin: {PAGE}\r\n\r\n".encode())
        head = await asyncio.wait_for(allowed.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 ")
        allowed.close()


async def test_a_websocket_keeps_its_admission_but_not_the_http_connection() -> None:
    """Memory per idle WebSocket (bench/idle.py): after the upgrade nothing holds the
    HTTP connection object (its parser and outbox), yet closing gives the place back."""
    async with running() as srv:
        client = await srv.connect()
        client.send(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert srv.service.admission.open == 1
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, HttpConnection)] == []
        client.close()
        await until(lambda: srv.service.admission.open == 0, "the place given back")
        assert srv.service.admission.by_host == {}


# -- /stats and the dashboard ----------------------------------------------------------------------
def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_stats_report_the_counters_of_metrics_and_rank_channels() -> None:
    ctx = running()
    ctx.kwargs["has_source"] = True
    async with ctx as srv:
        srv.service.websocket = ws_session.WsService(srv.hub)
        source = FakeSource()
        source.connected = True
        srv.service.source = source
        subs = [await srv.connect() for _ in range(3)]
        await subs[0].stream("/sse?channel=busy&channel=quiet")
        await subs[1].stream("/sse?channel=busy")
        await subs[2].stream("/sse?pattern=b*")
        await until(lambda: srv.hub.subscriber_count("busy") == 2)
        for n in range(6):
            row(srv.hub, "busy", n=n)
        row(srv.hub, "quiet", n=0)
        row(srv.hub, "nobody", n=0)
        for sub, count in zip(subs, (7, 6, 6), strict=True):
            await sub.events(count)
        client = await srv.connect()
        status, headers, body = await client.get("/stats")
        assert status == 200 and headers["content-type"] == "application/json"
        stats = orjson.loads(body)
        _, _, text = await client.get("/metrics")
        metrics = metric_samples(text.decode())

        assert stats["events"] == metrics[("tidings_events_published_total", ())] == 8
        # 6 busy events to 2 exact + 1 pattern subscriber, 1 quiet event to 1
        assert stats["deliveries"] == metrics[("tidings_events_delivered_total", ())] == 19
        assert stats["subscriptions"] == metrics[("tidings_subscriptions", ())] == 3
        assert stats["channels"] == 2 and stats["patterns"] == 1
        for protocol, open_now in stats["connections"].items():
            assert metrics[("tidings_connections", (("protocol", protocol),))] == open_now
        assert stats["connections"] == {"http": 1, "sse": 3, "websocket": 0}
        assert stats["bytes_out"]["http"] > 19 * 50 and stats["bytes_out"]["websocket"] == 0
        assert stats["slow_consumers_cut"] == {"http": 0, "websocket": 0}
        assert stats["last_id"] == srv.hub.next_id - 1
        assert stats["binlog"] == {
            "connected": True,
            "file": "mariadb-bin.000002",
            "pos": 1234,
            "gtid": "0-1-57",
            "lag_seconds": 0.0,
            "events": 10,
            "bytes": 1234,
            "transactions": 0,
            "reconnects": 1,
            "last_error": "connection refused",
        }
        assert stats["busiest"] == [
            {"channel": "busy", "events": 6, "subscribers": 2},
            {"channel": "quiet", "events": 1, "subscribers": 1},
            {"channel": "nobody", "events": 1, "subscribers": 0},
        ]
        assert stats["uptime_seconds"] > 0 and stats["event_loop_lag_seconds"] >= 0
        source.connected = False
        _, _, body = await client.get("/stats")
        binlog = orjson.loads(body)["binlog"]
        assert (binlog["connected"], binlog["lag_seconds"]) == (False, None)


async def test_stats_without_a_source_and_bounded_busiest(server: Server) -> None:
    for n in range(15):
        for _ in range(n):
            row(server.hub, f"c{n}", n=n)
    stats = server.service.stats_report(busiest=10)
    assert stats["binlog"] is None
    assert [c["channel"] for c in stats["busiest"]] == [f"c{n}" for n in range(14, 4, -1)]


async def test_the_dashboard_is_three_files_of_our_own(server: Server) -> None:
    client = await server.connect()
    status, headers, page = await client.get("/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and headers["x-content-type-options"] == "nosniff"
    assert b'<script src="dashboard.js" defer></script>' in page
    assert b'<link rel="stylesheet" href="dashboard.css">' in page
    files = {"page": page}
    for path, kind in (("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
        status, headers, body = await client.get(path)
        assert status == 200 and headers["content-type"].startswith(kind), headers
        files[path] = body
    # nothing from elsewhere: no CDN, no web font, no inline script or style
    for name, body in files.items():
        assert b"http://" not in body and b"https://" not in body and b"//cdn" not in body, name
    assert b"<script>" not in page and b"<style" not in page and b" style=" not in page
    for element_id in (b"events-rate", b"deliveries-rate", b"chart-events", b"busiest",
                       b"binlog-position", b"binlog-lag", b"connections", b"tail-log"):  # fmt: skip
        assert b'id="' + element_id + b'"' in page, element_id
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(page)}".encode() in head
