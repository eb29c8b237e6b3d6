"""The HTTP listener: Server-Sent Events, the HTTP API, metrics and health.

Theory of operation. `HttpConnection` is one `asyncio.Protocol` per client. Bytes
go to its `RequestParser` (tidings.wire.http); each complete request is looked up
in `ROUTES`, a table written as data (path -> method -> handler), and the
handler's response is queued on the connection's `Outbox` (tidings.wire.outbox),
like every other protocol's output. Plain API requests keep the connection alive
(HTTP/1.1) and may be pipelined; answers go out in request order because a
request whose answer must wait (POST /publish through the database) stops the
parsing of the ones behind it, and reading, until it is answered.

`GET /sse` turns the connection into an event stream and makes it a hub
`Subscriber`: from then on it reads nothing more (a half-closed or reset socket
still ends it). Each event becomes one SSE block, `id:` (the event id), `event:`
(its type: insert, update, delete, ddl, notify, gap, or `message` for a payload
published by a client) and `data:` (the JSON as on RESP), encoded once per event
with `event.frame(SSE_KEY, ...)` and shared by every SSE subscriber. A client
that sends `Last-Event-ID` (EventSource does when it reconnects) or `?since=`
resumes through `hub.resume(...)`, paced by its outbox's room like a RESP
resume. A stream that starts fresh first sends `retry:` and the current last id,
so an EventSource that reconnects before its first event still resumes from
where it connected. Comment heartbeats go to every stream from one service-wide
timer; a stream whose output passes the limit is cut with a final comment
saying why.

`GET /ws` with `Upgrade: websocket` is handed to `tidings.wire.ws_session.accept`:
see `HttpConnection._websocket`.

`HttpService` is the listening side: settings, open connections, counters, the
output `Flusher`, the event-loop lag probe and the binlog lag estimate behind
`/healthz` and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import orjson

from tidings.event import Event
from tidings.hub import Hub, Replay, ResumeError
from tidings.hub.filtering import split
from tidings.hub.filters import FilterError
from tidings.hub.resume import check_since
from tidings.wire import http, ws_session
from tidings.wire.http import HttpError, Request, RequestParser
from tidings.wire.outbox import Flusher, Outbox, open_outbox, peer_name
from tidings.wire.replay_queue import ReplayQueue

__all__ = [
    "SSE_KEY",
    "HttpConnection",
    "HttpService",
    "HttpSettings",
    "HttpStats",
    "SourceStatus",
    "sse_frame",
]

log = logging.getLogger("tidings.wire.http")

#: key of an event's SSE frame in `Event.frames` (one per event, shared by all streams)
SSE_KEY: Final = "sse"
_HEARTBEAT: Final = http.sse_comment("heartbeat")
_FAREWELL: Final = http.sse_comment(
    "disconnected: output limit reached: too much output was pending for this stream "
    "(it read too slowly, or one event was larger than the limit)"
)

#: sends a client's publish on its way; returns the number of receivers (as RESP's)
Publisher = Callable[[str, bytes], Awaitable[int]]


class SourceStatus(Protocol):
    """What health and metrics read from the binlog source (tidings.source.replica.Replica)."""

    connected: bool
    #: time.monotonic() of the last event received, heartbeats included
    last_event_time: float
    #: commit time (epoch seconds) of the last transaction read
    last_commit_ts: int
    transactions_total: int
    events_total: int
    bytes_total: int
    reconnects: int
    heartbeat: float
    last_error: str | None


@dataclass(slots=True, frozen=True)
class HttpSettings:
    #: accept POST /publish
    allow_publish: bool = False
    #: pending output (queue + transport buffer) after which a stream is cut off
    output_limit: int = 1 << 20
    #: seconds between SSE comment heartbeats (0: none)
    sse_heartbeat: float = 15.0
    #: EventSource reconnection delay hint, milliseconds
    sse_retry_ms: int = 2000
    #: /healthz is 503 while the binlog lag is above this many seconds
    health_max_lag: float = 10.0
    #: largest POST /publish body
    max_publish: int = 64 * 1024
    max_line: int = http.MAX_LINE
    max_headers: int = http.MAX_HEADERS


@dataclass(slots=True)
class HttpStats:
    """Counters for /metrics (bytes out and cut-offs live in `flusher.stats`)."""

    connections_total: int = 0
    sse_total: int = 0
    websocket_total: int = 0
    #: response status -> requests answered with it
    responses: dict[int, int] = field(default_factory=dict)
    #: SSE events queued (one per event per stream)
    deliveries: int = 0


# -- SSE frames ---------------------------------------------------------------------------------
def event_type(event: Event) -> str:
    """The `event:` of an SSE block: the JSON's `type`, or `message` for a raw payload."""
    record = event.record
    if record is not None:
        kind = record.get("type")
        return kind if isinstance(kind, str) else "message"
    body = event.body
    if body.startswith(b'{"type":"gap",'):
        return "gap"
    # a database event delivered on a filtered channel is a derived copy without `record`
    if body.startswith(b'{"id":%d,' % event.id):
        with contextlib.suppress(orjson.JSONDecodeError):
            kind = orjson.loads(body).get("type")
            if isinstance(kind, str):
                return kind
    return "message"


def sse_frame(event: Event) -> bytes:
    return http.sse_event(event.id, event_type(event), event.body)


def sse_targets(request: Request, next_id: int) -> tuple[list[str], list[str], int | None]:
    """The channels, patterns and resume id (or None) a GET /sse asks for: `channel=` and
    `pattern=` (repeatable), then `Last-Event-ID` or `since=`. HttpError 400 if invalid."""
    query = request.query
    channels = list(dict.fromkeys(query.get("channel", ())))
    patterns = list(dict.fromkeys(query.get("pattern", ())))
    if not channels and not patterns:
        raise HttpError(400, "name at least one channel=... or pattern=...")
    for name in channels:
        try:
            split(name)
        except FilterError as exc:
            raise HttpError(400, f"invalid filter in channel {name!r}: {exc}") from None
    raw_since = request.headers.get("last-event-id") or (query.get("since") or [""])[-1]
    if not raw_since:
        return channels, patterns, None
    try:
        since = int(raw_since)
        check_since(since, next_id)
    except ValueError as exc:  # ResumeError is one
        why = exc if isinstance(exc, ResumeError) else "it must be an integer event id"
        raise HttpError(400, f"cannot resume from {raw_since!r}: {why}") from None
    return channels, patterns, since


# -- one client ---------------------------------------------------------------------------------
Handler = Callable[["HttpConnection", Request], None]


class HttpConnection(asyncio.Protocol):
    """One client: API requests, or one event stream. Also the hub's `Subscriber`."""

    __slots__ = (
        "_closed",
        "_read_paused",
        "_replays",
        "_waiting",
        "_write",
        "channels",
        "hub",
        "id",
        "outbox",
        "parser",
        "patterns",
        "peer",
        "service",
        "settings",
        "sse",
        "transport",
    )

    transport: asyncio.Transport
    outbox: Outbox
    _replays: ReplayQueue[Replay]
    _write: Callable[[bytes], None]

    def __init__(self, service: HttpService, conn_id: int) -> None:
        self.service = service
        self.hub = service.hub
        self.settings = s = service.settings
        self.id = conn_id
        self.parser = RequestParser(
            max_line=s.max_line, max_headers=s.max_headers, body_limit=service.body_limit
        )
        self.peer = "?"
        self.sse = False
        self.channels: list[str] = []
        self.patterns: list[str] = []
        self._closed = False
        self._read_paused = False
        self._waiting: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<HttpConnection id={self.id} addr={self.peer}>"

    # -- the hub's side (hot path) -----------------------------------------------------------
    def deliver(self, event: Event, pattern: str | None) -> None:
        data = event.frames.get(SSE_KEY)
        if data is None:
            data = event.frame(SSE_KEY, sse_frame)
        self._write(data)
        self.service.stats.deliveries += 1

    def replay_wake(self, replay: Replay) -> None:
        """The binlog re-read behind a resume has more (tidings.hub.resume)."""
        if not self._closed:
            self._replays.run()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peer = peer_name(transport)
        self.outbox = open_outbox(
            transport,
            self.service.flusher,
            self.settings.output_limit,
            farewell=_FAREWELL,
            name=f"http id={self.id} addr={self.peer}",
            logger=log,
            on_cut=self._leave,
        )
        self._write = self.outbox.write
        #: the SSE stream's resume, if it was asked for one (a queue of at most one)
        self._replays = ReplayQueue(self.outbox, self.service.flusher)
        self.service.connections[self] = None

    def data_received(self, data: bytes) -> None:
        if self._closed or self.sse:
            return  # a stream reads nothing more: what a client sends is dropped
        self.parser.feed(data)
        self._serve()

    def eof_received(self) -> bool | None:
        self.close()
        return None

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()
        if self._read_paused and not self._closed and self._waiting is None:
            self._read_paused = False
            self.transport.resume_reading()
        self._replays.run()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.outbox.lost()
        self._leave()
        if self._waiting is not None:
            self._waiting.cancel()
        self.service._forget(self)

    def close(self) -> None:
        """Send what is queued, then close."""
        if not self._closed:
            self._closed = True
            self.outbox.close()
            self._leave()

    def _leave(self) -> None:
        """Leave the hub (the stream ended or was cut off for being slow)."""
        self._closed = True
        self._replays.cancel_all()
        hub = self.hub
        for channel in self.channels:
            hub.unsubscribe(self, channel)
        for pattern in self.patterns:
            hub.punsubscribe(self, pattern)
        self.channels = []
        self.patterns = []
        self.service.streams.pop(self, None)

    # -- requests ---------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Answer the complete requests received, until one must wait for its answer."""
        parser = self.parser
        while not self._closed and not self.sse and self._waiting is None:
            try:
                request = parser.next_request()
            except HttpError as exc:
                log.info("http id=%d addr=%s: %s; closing", self.id, self.peer, exc.message)
                self.respond_error(exc.status, exc.message, keep_alive=False)
                return
            if request is None:
                head = parser.head_pending()
                if head is not None and head.expect_continue:
                    head.expect_continue = False
                    self._write(http.CONTINUE)
                break
            try:
                self._route(request)
            except Exception:
                log.exception("http id=%d addr=%s: request failed", self.id, self.peer)
                self.respond_error(500, "internal error", keep_alive=False)
                return
        # a client that pipelines faster than it reads waits for the kernel; one whose
        # request awaits its answer sends nothing more meanwhile (bounded buffering)
        paused = self.outbox.paused or self._waiting is not None
        if paused and not self._closed and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _route(self, request: Request) -> None:
        methods = ROUTES.get(request.path)
        if methods is None:
            self.respond_error(404, f"no such resource: {request.path}", keep_alive=True)
            return
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD" and request.path not in _NO_HEAD:
            handler = methods.get("GET")
        if handler is None:
            allow = ", ".join(methods)
            body = orjson.dumps({"error": f"use {allow} on {request.path}", "status": 405})
            self.respond(405, body, request, headers=(("Allow", allow),))
            return
        handler(self, request)

    def respond(
        self,
        status: int,
        body: bytes,
        request: Request,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        stats = self.service.stats.responses
        stats[status] = stats.get(status, 0) + 1
        keep = request.keep_alive
        if request.method == "HEAD":
            data = http.response(status, body, content_type, keep_alive=keep, headers=headers)
            data = data[: len(data) - len(body)]
        else:
            data = http.response(status, body, content_type, keep_alive=keep, headers=headers)
        self._write(data)
        if not keep:
            self.close()

    def respond_error(self, status: int, message: str, *, keep_alive: bool) -> None:
        stats = self.service.stats.responses
        stats[status] = stats.get(status, 0) + 1
        self._write(http.error_response(status, message, keep_alive=keep_alive))
        if not keep_alive:
            self.close()

    def _error(self, request: Request, status: int, message: str) -> None:
        body = orjson.dumps({"error": message, "status": status})
        self.respond(status, body, request)

    # -- handlers, one per route ------------------------------------------------------------------
    def get_healthz(self, request: Request) -> None:
        ok, report = self.service.health()
        self.respond(200 if ok else 503, orjson.dumps(report), request)

    def get_channels(self, request: Request) -> None:
        hub = self.hub
        channels = dict(sorted(hub.channels().items()))
        body = orjson.dumps({"channels": channels, "patterns": hub.pattern_count()})
        self.respond(200, body, request)

    def get_metrics(self, request: Request) -> None:
        text = self.service.metrics().encode()
        self.respond(200, text, request, "text/plain; version=0.0.4; charset=utf-8")

    def post_publish(self, request: Request) -> None:
        if not self.settings.allow_publish:
            self._error(request, 403, "publishing is disabled: start tidings with --allow-publish")
            return
        try:
            message = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            self._error(request, 400, f"the body is not JSON: {exc}")
            return
        channel = message.get("channel") if isinstance(message, dict) else None
        if not isinstance(channel, str) or not channel:
            self._error(request, 400, 'expected {"channel": "name", "payload": ...}')
            return
        if "payload" not in message:
            self._error(request, 400, 'expected {"channel": "name", "payload": ...}')
            return
        payload = message["payload"]
        # a string is published as its text, byte for byte as RESP PUBLISH would; any other
        # JSON value as its JSON
        data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
        publisher = self.service.publisher
        if publisher is None:  # no database: ids live in memory, publish at once
            receivers = self.hub.publish(channel, data)
            self.respond(200, orjson.dumps({"receivers": receivers}), request)
            return
        # through the database (as RESP PUBLISH), so the message's id comes from the binlog
        self._waiting = asyncio.ensure_future(
            self._publish_through(publisher, channel, data, request)
        )

    async def _publish_through(
        self, publisher: Publisher, channel: str, data: bytes, request: Request
    ) -> None:
        try:
            receivers = await publisher(channel, data)
        except ValueError as exc:
            self._error(request, 400, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("http id=%d addr=%s: publish failed: %s", self.id, self.peer, exc)
            self._error(request, 503, f"publish failed: {exc}")
        else:
            self.respond(200, orjson.dumps({"receivers": receivers}), request)
        self._waiting = None
        if self._closed:
            return
        if self._read_paused and not self.outbox.paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._serve()  # what the client pipelined behind it

    def get_sse(self, request: Request) -> None:
        try:
            channels, patterns, since = sse_targets(request, self.hub.next_id)
        except HttpError as exc:
            self._error(request, exc.status, exc.message)
            return
        self.sse = True
        self.service.stats.sse_total += 1
        self.service.streams[self] = None
        self.parser.rest()  # nothing after a stream's request is read
        self.channels, self.patterns = channels, patterns
        stats = self.service.stats.responses
        stats[200] = stats.get(200, 0) + 1
        hub = self.hub
        if since is None:
            # the id to resume from if the stream breaks before its first event
            self._write(http.SSE_HEAD + http.sse_retry(self.settings.sse_retry_ms, hub.next_id - 1))
            for name in channels:
                hub.subscribe(self, name)
            for name in patterns:
                hub.psubscribe(self, name)
            return
        self._write(http.SSE_HEAD + http.sse_retry(self.settings.sse_retry_ms))
        self._replays.add(hub.resume(self, since, channels=channels, patterns=patterns))

    def get_ws(self, request: Request) -> None:
        self._websocket(request)

    def _websocket(self, request: Request) -> None:
        """Hand the connection to tidings.wire.ws_session (agreed API: accept() returns the
        protocol taking over, or the bytes of a complete refusal)."""
        if "websocket" not in request.headers.get("upgrade", "").lower():
            self._error(request, 400, "GET /ws needs Upgrade: websocket")
            return
        ws_service = self.service.websocket
        outcome = ws_session.accept(
            request, self.transport, self.hub, self.settings if ws_service is None else ws_service
        )
        if isinstance(outcome, bytes | bytearray):
            self._write(bytes(outcome))
            self.close()
            return
        proto = outcome
        self.service.stats.websocket_total += 1
        rest = self.parser.rest()
        self.outbox.flush()  # answers to requests pipelined before the upgrade go first
        self._closed = True
        self.outbox.lost()
        self.service._forget(self)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if rest:
            proto.data_received(rest)


#: GET routes that HEAD does not mirror (they start a stream or a protocol switch)
_NO_HEAD: Final = frozenset(("/sse", "/ws"))
H = HttpConnection
#: path -> method -> handler
ROUTES: Final[dict[str, dict[str, Handler]]] = {
    "/sse": {"GET": H.get_sse},
    "/ws": {"GET": H.get_ws},
    "/healthz": {"GET": H.get_healthz},
    "/channels": {"GET": H.get_channels},
    "/metrics": {"GET": H.get_metrics},
    "/publish": {"POST": H.post_publish},
}
del H


# -- the listening side -------------------------------------------------------------------------
class LoopMonitor:
    """Event-loop lag (how late a timer fires) and when the source last gave a transaction.

    One timer for the whole service, every `tick` seconds.
    """

    __slots__ = (
        "_handle",
        "_loop",
        "_seen_txns",
        "_window",
        "last_lag",
        "max_lag",
        "source",
        "tick",
        "txn_seen_at",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.25) -> None:
        self._loop = loop
        self.tick = tick
        self.last_lag = 0.0
        # the largest lag in the current and the previous 5 s window
        self._window = [0.0, 0.0, 0.0]  # [window start, max now, max before]
        self.max_lag = 0.0
        self.source: SourceStatus | None = None
        self._seen_txns = -1
        #: time.monotonic() when the source's transaction count last moved
        self.txn_seen_at = -math.inf
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._window[0] = self._loop.time()
            self._handle = self._loop.call_later(self.tick, self._run, self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self, scheduled: float) -> None:
        now = self._loop.time()
        lag = max(0.0, now - scheduled - self.tick)
        self.last_lag = lag
        window = self._window
        if now - window[0] >= 5.0:
            window[:] = [now, 0.0, window[1]]
        window[1] = max(window[1], lag)
        self.max_lag = max(window[1], window[2])
        source = self.source
        if source is not None and source.transactions_total != self._seen_txns:
            self._seen_txns = source.transactions_total
            self.txn_seen_at = time.monotonic()
        self._handle = self._loop.call_later(self.tick, self._run, now)


class HttpService:
    """One HTTP endpoint: settings, connections, counters, flusher, health and metrics."""

    def __init__(
        self,
        hub: Hub,
        settings: HttpSettings | None = None,
        *,
        publisher: Publisher | None = None,
        has_source: bool = False,
        resp: Any = None,
    ) -> None:
        self.hub = hub
        self.settings = settings or HttpSettings()
        #: with a database source, POST /publish goes through it (as RESP PUBLISH)
        self.publisher = publisher
        #: a binlog source is configured: /healthz waits for `source` to be connected
        self.has_source = has_source
        self._source: SourceStatus | None = None
        #: the RESP service, whose counters /metrics reports too (tidings.wire.resp_server)
        self.resp = resp
        #: the WebSocket service GET /ws hands connections to (None: accept() makes one
        #: from `settings`)
        self.websocket: ws_session.WsService | None = None
        self.connections: dict[HttpConnection, None] = {}
        #: connections that are event streams (heartbeats go to these)
        self.streams: dict[HttpConnection, None] = {}
        self.stats = HttpStats()
        self._flusher: Flusher | None = None
        self._monitor: LoopMonitor | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self.servers: list[asyncio.Server] = []
        self._drained: asyncio.Future[None] | None = None

    @property
    def source(self) -> SourceStatus | None:
        return self._source

    @source.setter
    def source(self, source: SourceStatus | None) -> None:
        self._source = source
        if self._monitor is not None:
            self._monitor.source = source

    def body_limit(self, method: str, path: str) -> int:
        if method == "POST" and path == "/publish":
            return self.settings.max_publish
        return http.SMALL_BODY

    @property
    def flusher(self) -> Flusher:
        if self._flusher is None:
            self._flusher = Flusher(asyncio.get_running_loop())
        return self._flusher

    def _forget(self, conn: HttpConnection) -> None:
        self.connections.pop(conn, None)
        self.streams.pop(conn, None)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def protocol(self) -> HttpConnection:
        """The protocol factory for `loop.create_server`."""
        self.stats.connections_total += 1
        return HttpConnection(self, next(self._ids))

    async def start(self, host: str, port: int, *, backlog: int = 511) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._flusher = self._flusher or Flusher(loop)
        if self._monitor is None:
            self._monitor = LoopMonitor(loop)
            self._monitor.source = self._source
            self._monitor.start()
        if self._heartbeat is None and self.settings.sse_heartbeat > 0:
            self._heartbeat = loop.call_later(self.settings.sse_heartbeat, self._beat)
        server = await loop.create_server(self.protocol, host, port, backlog=backlog)
        self.servers.append(server)
        return server

    def _beat(self) -> None:
        """One comment to every stream: proxies see traffic, clients see a dead link."""
        for conn in tuple(self.streams):
            conn.outbox.write(_HEARTBEAT)
        self._heartbeat = self.flusher.loop.call_later(self.settings.sse_heartbeat, self._beat)

    # -- health and metrics ------------------------------------------------------------------------
    def binlog_lag(self) -> float | None:
        """Seconds the stream is behind the source; None while not connected.

        An estimate from what the replica exposes: while transactions arrive, the age of
        the last one's commit; when none arrived for a heartbeat period but the server
        still sends (heartbeats come only when it has nothing else), 0; when the
        server has been silent for two heartbeat periods, that silence.
        """
        source = self._source
        if source is None or not source.connected:
            return None
        now = time.monotonic()
        heartbeat = source.heartbeat
        silent = now - source.last_event_time
        if silent > 2 * heartbeat + 0.5:
            return silent
        monitor = self._monitor
        tick = monitor.tick if monitor else 0.0
        if monitor is None or now - monitor.txn_seen_at > heartbeat + 2 * tick:
            return 0.0
        return max(0.0, time.time() - source.last_commit_ts)

    def health(self) -> tuple[bool, dict[str, Any]]:
        if not self.has_source:
            return True, {"status": "ok", "source": None}
        source = self._source
        if source is None or not source.connected:
            reason = "not connected to the binlog source"
            if source is not None and source.last_error:
                reason += f": {source.last_error}"
            return False, {"status": "unavailable", "reason": reason}
        lag = self.binlog_lag()
        limit = self.settings.health_max_lag
        if lag is None or lag > limit:
            return False, {
                "status": "unavailable",
                "reason": f"binlog lag {lag:.1f}s is above the limit of {limit:g}s",
                "lag_seconds": lag,
            }
        return True, {"status": "ok", "lag_seconds": round(lag, 3)}

    def metrics(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        out = _Metrics()
        resp = self.resp
        hub = self.hub
        stats = self.stats
        mine = self._flusher.stats if self._flusher else None
        websocket = stats.websocket_total
        open_http = len(self.connections) - len(self.streams)
        conns: list[tuple[str, float]] = [("http", open_http), ("sse", len(self.streams))]
        total: list[tuple[str, float]] = [
            ("http", stats.connections_total - stats.sse_total),
            ("sse", stats.sse_total),
            ("websocket", websocket),
        ]
        ws_service = self.websocket
        if ws_service is not None:
            conns.append(("websocket", len(ws_service.connections)))
        if resp is not None:
            conns.append(("resp", resp.connections_open))
            total.append(("resp", resp.stats.connections_total))
        out.family("tidings_connections", "gauge", "Open client connections.", "protocol", conns)
        out.family(
            "tidings_connections_opened",
            "counter",
            "Client connections accepted (an SSE or WebSocket one counts once as that).",
            "protocol",
            total,
        )
        channels = hub.channels()
        out.gauge("tidings_channels", "Channels with subscribers.", len(channels))
        out.gauge(
            "tidings_subscriptions",
            "Channel subscriptions (all protocols).",
            sum(channels.values()),
        )
        out.gauge("tidings_patterns", "Distinct glob patterns subscribed.", hub.pattern_count())
        out.counter("tidings_events_published", "Events published by the hub.", hub.published)
        out.family(
            "tidings_deliveries",
            "counter",
            "Events queued to subscribers (one per event per subscriber).",
            "protocol",
            [("sse", stats.deliveries)],
        )
        sent: list[tuple[str, float]] = [("http", mine.bytes_written if mine else 0)]
        cut: list[tuple[str, float]] = [("http", mine.slow_consumers_cut if mine else 0)]
        if resp is not None:
            rstats = resp.flusher.stats
            sent.append(("resp", rstats.bytes_written))
            cut.append(("resp", rstats.slow_consumers_cut))
        out.family("tidings_bytes_out", "counter", "Bytes written to clients.", "protocol", sent)
        out.family(
            "tidings_slow_consumers_cut",
            "counter",
            "Connections cut off because their pending output passed the limit.",
            "protocol",
            cut,
        )
        out.family(
            "tidings_http_responses",
            "counter",
            "HTTP responses by status code.",
            "code",
            [(str(code), n) for code, n in sorted(stats.responses.items())],
        )
        source = self._source
        if self.has_source:
            connected = source is not None and source.connected
            out.gauge("tidings_binlog_connected", "1 while the binlog source is connected.",
                      int(connected))  # fmt: skip
            lag = self.binlog_lag()
            out.gauge(
                "tidings_binlog_lag_seconds",
                "How far the stream is behind the source (NaN while disconnected).",
                math.nan if lag is None else lag,
            )
            if source is not None:
                out.counter("tidings_binlog_events", "Binlog events read.", source.events_total)
                out.counter("tidings_binlog_bytes", "Binlog bytes read.", source.bytes_total)
                out.counter(
                    "tidings_binlog_transactions",
                    "Committed transactions read.",
                    source.transactions_total,
                )
                out.counter(
                    "tidings_binlog_reconnects", "Reconnections to the source.", source.reconnects
                )
        monitor = self._monitor
        out.gauge(
            "tidings_event_loop_lag_seconds",
            "Largest event-loop delay seen over the last 5 to 10 seconds.",
            monitor.max_lag if monitor else 0.0,
        )
        return out.text()

    # -- ending ------------------------------------------------------------------------------
    def close_clients(self) -> None:
        for conn in list(self.connections):
            conn.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, close the clients and wait (up to `timeout`) for them to go."""
        for server in self.servers:
            server.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        self.close_clients()
        if self.websocket is not None:  # connections handed over at /ws
            self.websocket.close_clients()
        if self.connections:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            self._drained = None
        for conn in list(self.connections):
            conn.transport.abort()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout)
        self.servers.clear()


class _Metrics:
    """Builds the text format: HELP and TYPE once per family, then its samples."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, help: str, label: str, samples: list[tuple[str, float]]
    ) -> None:
        self._lines += (f"# HELP {name} {help}", f"# TYPE {name} {kind}")
        suffix = "_total" if kind == "counter" else ""
        for value_label, value in samples:
            escaped = value_label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            self._lines.append(f'{name}{suffix}{{{label}="{escaped}"}} {_number(value)}')

    def gauge(self, name: str, help: str, value: float) -> None:
        self._lines += (f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {_number(value)}")

    def counter(self, name: str, help: str, value: float) -> None:
        self._lines += (
            f"# HELP {name} {help}",
            f"# TYPE {name} counter",
            f"{name}_total {_number(value)}",
        )

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return repr(round(value, 6))
    return str(value)
