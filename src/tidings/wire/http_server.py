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

With an auth secret (tidings.wire.access), a stream needs a token (`Authorization:
Bearer T` or `?token=T`: 401 with `WWW-Authenticate: Bearer` without a valid one, 403
for a channel or pattern it does not allow) and ends, after a comment saying so, when
the token expires. Routes flagged `admin` in `ROUTES` need an admin token, unless the
listener is bound to loopback addresses only (`HttpService.admin_open`): that flag is
the one place that decides.

Browsers: every answer carries the CORS headers the `origins` allow-list gives for
the request's `Origin` (tidings.wire.origins), and `OPTIONS` on a route answers a
preflight. `GET /` serves the dashboard, three files of package data
(tidings/wire/dashboard/) that poll `GET /stats`.

`HttpService` is the listening side: settings, open connections, counters, the
output `Flusher`, the event-loop lag probe and the binlog lag estimate behind
`/healthz`. `readings()` takes every counter at once; `/metrics` (Prometheus text)
and `/stats` (JSON) are both written from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import heapq
import ipaddress
import itertools
import logging
import math
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from ssl import SSLContext
from typing import Any, Final, NamedTuple, Protocol, cast

import orjson

from tidings import memory
from tidings.auth import Grant
from tidings.event import Event
from tidings.hub import Hub, Replay, ResumeError
from tidings.hub.filtering import split
from tidings.hub.filters import FilterError
from tidings.hub.resume import check_since
from tidings.source.changes import Position
from tidings.wire import http, ws_session
from tidings.wire.access import REALM, AuthError, Authority, bearer_token, uncovered
from tidings.wire.hangups import Hangups, ordinary
from tidings.wire.http import HttpError, Request, RequestParser
from tidings.wire.limits import DEFAULT_BACKLOG, Admission, Clock, peer_host
from tidings.wire.origins import ANY, Origins
from tidings.wire.outbox import Flusher, Outbox, open_outbox, peer_name
from tidings.wire.replay_queue import ReplayQueue

__all__ = [
    "SSE_KEY",
    "HttpConnection",
    "HttpService",
    "HttpSettings",
    "HttpStats",
    "Readings",
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
_EXPIRED: Final = http.sse_comment(
    "disconnected: the token expired (reconnect with a fresh token and Last-Event-ID or since=)"
)


class CheckpointStatus(Protocol):
    """What /metrics, /stats and `tidings status` read from the checkpoint writer
    (tidings.state.writer.CheckpointWriter)."""

    written: int
    failures: int
    last_error: str | None
    failing_since: float | None

    @property
    def last_written_time(self) -> float | None: ...


#: sends a client's publish on its way; returns the number of receivers (as RESP's)
Publisher = Callable[[str, bytes], Awaitable[int]]


class SourceStatus(Protocol):
    """What health and metrics read from the binlog source (tidings.source.replica.Replica)."""

    connected: bool
    #: where the stream is: after the last transaction read (None before the first connection)
    position: Position | None
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
    #: pages allowed to read answers cross-origin (CORS) and to open WebSockets
    origins: Origins = ANY
    #: channels and patterns one stream may name
    max_subscriptions: int = 10_000
    max_line: int = http.MAX_LINE
    max_headers: int = http.MAX_HEADERS
    #: signs client tokens; None: no authentication (tidings.wire.access)
    auth_secret: bytes | None = field(default=None, repr=False)
    #: with a secret, admin routes need no token while every listening socket is loopback
    admin_open_on_loopback: bool = True


@dataclass(slots=True)
class Readings:
    """One reading of the service's counters (see `HttpService.readings`)."""

    #: open connections and connections accepted, by protocol
    connections: dict[str, int]
    opened: dict[str, int]
    #: subscribed channel -> subscribers
    channels: dict[str, int]
    patterns: int
    #: hub: live events published, deliveries made (all protocols)
    published: int
    delivered: int
    sse_deliveries: int
    #: by protocol
    bytes_out: dict[str, int]
    slow_consumers_cut: dict[str, int]
    #: HTTP status -> responses
    responses: dict[int, int]
    #: largest event-loop delay lately (seconds)
    loop_lag: float
    #: with a source configured: it (None until it exists), and the lag (None: disconnected)
    source: SourceStatus | None = None
    lag: float | None = None

    @property
    def subscriptions(self) -> int:
        return sum(self.channels.values())

    @property
    def connected(self) -> bool:
        return self.source is not None and self.source.connected


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
    #: connections closed because a request did not arrive within request_timeout
    request_timeouts: int = 0


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


def sse_targets(
    request: Request, next_id: int, max_subscriptions: int
) -> tuple[list[str], list[str], int | None]:
    """The channels, patterns and resume id (or None) a GET /sse asks for: `channel=` and
    `pattern=` (repeatable), then `Last-Event-ID` or `since=`. HttpError 400 if invalid.
    (Whether a token allows them is checked after.)"""
    query = request.query
    channels = list(dict.fromkeys(query.get("channel", ())))
    patterns = list(dict.fromkeys(query.get("pattern", ())))
    if not channels and not patterns:
        raise HttpError(400, "name at least one channel=... or pattern=...")
    if len(channels) + len(patterns) > max_subscriptions:
        raise HttpError(
            400, f"too many channels and patterns (max_subscriptions={max_subscriptions})"
        )
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
        "_expiry",
        "_host",
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
        "since",
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
        #: the address counted by the service's Admission (None: not admitted)
        self._host: str | None = None
        #: since when the next request is awaited (coarse clock), for request_timeout
        self.since = service.clock.now
        #: a stream's token expiry timer (with an auth secret)
        self._expiry: asyncio.TimerHandle | None = None

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
        host = peer_host(transport)
        admission = self.service.admission
        refused = admission.enter(host)
        if refused is not None:
            log.info("http addr=%s refused: %s", self.peer, refused)
            status = 503 if refused == "max_clients" else 429
            self.respond_error(status, admission.refusal(refused, host), keep_alive=False)
        else:
            self._host = host

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
        if ordinary(exc):
            assert exc is not None  # a client gone: counted, logged at debug (wire.hangups)
            self.service.hangups.count(f"http id={self.id} addr={self.peer}", exc,
                                       self.service.clock.now)  # fmt: skip
        elif exc is not None:
            log.info("http id=%d addr=%s: connection lost: %r", self.id, self.peer, exc)
        self._closed = True
        self.outbox.lost()
        self._leave()
        if self._waiting is not None:
            self._waiting.cancel()
        self.service._forget(self)
        self._release()

    def _release(self) -> None:
        """Give back this connection's place in the service's Admission."""
        if self._host is not None:
            self.service.admission.leave(self._host)
            self._host = None

    def close(self, last_words: bytes = b"") -> None:
        """Send what is queued (and, on an event stream, `last_words`), then close."""
        if not self._closed:
            self._closed = True
            self.outbox.close(last_words=last_words if self.sse else b"")
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
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _token_expired(self) -> None:
        """The stream's token expired: leave the hub, say why, close."""
        self._expiry = None
        if self._closed:
            return
        log.info("http id=%d addr=%s: token expired; closing the stream", self.id, self.peer)
        self._leave()
        self._write(_EXPIRED)
        self.outbox.close()

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
            self.since = self.service.clock.now
        # a client that pipelines faster than it reads waits for the kernel; one whose
        # request awaits its answer sends nothing more meanwhile (bounded buffering)
        paused = self.outbox.paused or self._waiting is not None
        if paused and not self._closed and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _route(self, request: Request) -> None:
        route = ROUTES.get(request.path)
        if route is None:
            self._error(request, 404, f"no such resource: {request.path}")
            return
        methods = route.methods
        handler = methods.get(request.method)
        if handler is None and request.method == "OPTIONS":
            # a browser's CORS preflight carries no token: answered before the admin check
            self._preflight(request, ", ".join(methods))
            return
        if route.admin and not self._admin(request):
            return
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
        headers += self.settings.origins.cors_headers(request.headers.get("origin"))
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

    def _error(
        self,
        request: Request,
        status: int,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        body = orjson.dumps({"error": message, "status": status})
        self.respond(status, body, request, headers=headers)

    # -- tokens (with an auth secret) -------------------------------------------------------------
    def _deny(self, request: Request, status: int, message: str, error: str | None) -> None:
        """401 (no or a bad token) or 403 (not allowed), with RFC 6750's challenge."""
        challenge = f'Bearer realm="{REALM}"'
        if error is not None:
            text = message.replace("\\", "/").replace('"', "'")
            challenge += f', error="{error}", error_description="{text}"'
        self._error(request, status, message, headers=(("WWW-Authenticate", challenge),))

    def _grant(self, request: Request, auth: Authority, need: str) -> Grant | None:
        """The request's token's grant, or None after answering 401."""
        try:
            token = bearer_token(request.headers, request.query)
            if token is None:
                self._deny(
                    request,
                    401,
                    f"{need}: send 'Authorization: Bearer <token>' or add ?token=<token>",
                    None,
                )
                return None
            return auth.verify(token, peer_host(self.transport))
        except AuthError as exc:
            log.info("http id=%d addr=%s: token refused: %s", self.id, self.peer, exc)
            self._deny(request, 401, f"invalid token: {exc}", "invalid_token")
            return None

    def _admin(self, request: Request) -> bool:
        """Whether an admin route may be served; if not, the refusal is sent."""
        service = self.service
        auth = service.auth
        if auth is None or service.admin_open:
            return True
        grant = self._grant(request, auth, f"{request.path} needs an admin token")
        if grant is None:
            return False
        if not grant.admin:
            self._deny(request, 403, f"{request.path} needs an admin token", "insufficient_scope")
            return False
        return True

    def _preflight(self, request: Request, methods: str) -> None:
        """OPTIONS: a browser asks whether a page of another origin may call this route."""
        origin = request.headers.get("origin")
        headers: tuple[tuple[str, str], ...] = (("Allow", f"{methods}, OPTIONS"),)
        if origin is not None:  # else not a preflight: just say what the route takes
            if not self.settings.origins.allows(origin):
                self._error(request, 403, f"origin {origin!r} is not allowed here (see --origins)")
                return
            headers += Origins.preflight_headers(methods)
        self.respond(204, b"", request, headers=headers)  # adds the CORS headers

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

    def get_stats(self, request: Request) -> None:
        self.respond(200, orjson.dumps(self.service.stats_report()), request)

    def get_dashboard(self, request: Request) -> None:
        """The dashboard page and its two files (package data, no build step)."""
        name = _DASHBOARD_FILES[request.path]
        headers = _DASHBOARD_HEADERS if name == "index.html" else _NOSNIFF
        self.respond(200, dashboard_file(name), request, _CONTENT_TYPES[name], headers)

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
            channels, patterns, since = sse_targets(
                request, self.hub.next_id, self.settings.max_subscriptions
            )
        except HttpError as exc:
            self._error(request, exc.status, exc.message)
            return
        auth = self.service.auth
        grant = None
        if auth is not None:
            grant = self._grant(request, auth, "a stream needs a token")
            if grant is None:
                return
            refused = uncovered(grant, channels, patterns)
            if refused is not None:
                self._deny(request, 403, refused, "insufficient_scope")
                return
        self.sse = True
        self.service.stats.sse_total += 1
        self.service.streams[self] = None
        self.parser.rest()  # nothing after a stream's request is read
        self.channels, self.patterns = channels, patterns
        stats = self.service.stats.responses
        stats[200] = stats.get(200, 0) + 1
        if grant is not None:
            assert auth is not None
            self._expiry = auth.watch(self.service.flusher.loop, grant, self._token_expired)
        hub = self.hub
        head = http.sse_head(self.settings.origins.cors_headers(request.headers.get("origin")))
        if since is None:
            # the id to resume from if the stream breaks before its first event
            self._write(head + http.sse_retry(self.settings.sse_retry_ms, hub.next_id - 1))
            for name in channels:
                hub.subscribe(self, name)
            for name in patterns:
                hub.psubscribe(self, name)
            return
        self._write(head + http.sse_retry(self.settings.sse_retry_ms))
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
        if isinstance(proto, ws_session.WsConnection):  # it holds our admission from now on
            # not a bound method of ours: that would keep this object (parser, outbox) alive
            # as long as the WebSocket
            host, self._host = self._host, None
            if host is not None:
                proto.on_lost = _Leave(self.service.admission, host)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if rest:
            proto.data_received(rest)


class _Leave:
    """Gives a connection's place in an `Admission` back (kept by each WebSocket: 56 bytes,
    where a closure or a partial takes about 250)."""

    __slots__ = ("admission", "host")

    def __init__(self, admission: Admission, host: str) -> None:
        self.admission = admission
        self.host = host

    def __call__(self) -> None:
        self.admission.leave(self.host)


class Route(NamedTuple):
    #: method -> handler
    methods: dict[str, Handler]
    #: with an auth secret: only for admin tokens (unless the listener is loopback-only)
    admin: bool = False


# -- the dashboard's files ------------------------------------------------------------------------
_DASHBOARD_FILES: Final = {
    "/": "index.html",
    "/dashboard.js": "dashboard.js",
    "/dashboard.css": "dashboard.css",
}
_CONTENT_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_NOSNIFF: Final = (("X-Content-Type-Options", "nosniff"),)
# the page loads only its own files and talks only to its own origin: event data that got
# into the page as markup could not run, nor send anything elsewhere
_DASHBOARD_HEADERS: Final = (
    *_NOSNIFF,
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),  # a ?token= in the page URL goes nowhere else
)


@functools.cache
def dashboard_file(name: str) -> bytes:
    """One of the dashboard's files, read once from the package."""
    return (resources.files("tidings.wire") / "dashboard" / name).read_bytes()


#: GET routes that HEAD does not mirror (they start a stream or a protocol switch)
_NO_HEAD: Final = frozenset(("/sse", "/ws"))
H = HttpConnection
#: path -> its route; /sse and /ws check tokens themselves (per channel)
ROUTES: Final[dict[str, Route]] = {
    "/sse": Route({"GET": H.get_sse}),
    "/ws": Route({"GET": H.get_ws}),
    "/healthz": Route({"GET": H.get_healthz}),  # load balancers ask without a token
    "/channels": Route({"GET": H.get_channels}, admin=True),
    "/metrics": Route({"GET": H.get_metrics}, admin=True),
    "/publish": Route({"POST": H.post_publish}, admin=True),
    "/stats": Route({"GET": H.get_stats}, admin=True),
    # the dashboard's own files stay public: the page brings its token in its URL
    **{path: Route({"GET": H.get_dashboard}) for path in _DASHBOARD_FILES},
}
del H


def is_loopback(host: str) -> bool:
    """Whether a socket address (IPv4 or IPv6, maybe with a %scope) is a loopback one."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


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
        admission: Admission | None = None,
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
        #: which worker process this is (tidings.workers), reported by /healthz; None: the
        #: only process
        self.worker: int | None = None
        #: a cluster node's own health (tidings.cluster.node): (ok, report for /healthz)
        self.cluster: Callable[[], tuple[bool, dict[str, Any]]] | None = None
        #: the WebSocket service GET /ws hands connections to (None: accept() makes one
        #: from `settings`)
        self.websocket: ws_session.WsService | None = None
        #: connections the client reset or broke off (counted; one info line a minute)
        self.hangups = Hangups(log, "HTTP")
        #: with a state directory: its checkpoint writer (for /metrics and /stats)
        self.checkpoints: CheckpointStatus | None = None
        #: with TLS: when the certificate being served expires (seconds since the epoch)
        self.tls_expiry: Callable[[], float] | None = None
        self.connections: dict[HttpConnection, None] = {}
        #: connections that are event streams (heartbeats go to these)
        self.streams: dict[HttpConnection, None] = {}
        self.stats = HttpStats()
        self._flusher: Flusher | None = None
        self._monitor: LoopMonitor | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self.servers: list[asyncio.Server] = []
        #: time.monotonic() at creation (for /stats' uptime: rates between two readings)
        self.started = time.monotonic()
        self._drained: asyncio.Future[None] | None = None
        #: connection limits, shared with the RESP listener by the daemon
        self.admission = admission or Admission()
        self.clock = Clock(self._sweep)
        #: with an auth secret: checks tokens; None: no authentication
        self.auth = Authority(self.settings.auth_secret) if self.settings.auth_secret else None
        #: every listening socket is bound to a loopback address (set by `start`)
        self.loopback = False

    def _sweep(self, now: float) -> None:
        """Once a second: report hangups (HTTP's and WebSocket's); close connections whose
        next request has not arrived within request_timeout (a request begun gets 408; a
        silent keep-alive is just closed)."""
        self.hangups.tick(now)
        if self.websocket is not None:
            self.websocket.hangups.tick(time.monotonic())
        timeout = self.admission.limits.request_timeout
        if timeout <= 0:
            return
        for conn in tuple(self.connections):
            if conn.sse or conn._closed or conn._waiting is not None:
                continue
            if now - conn.since > timeout:
                self.stats.request_timeouts += 1
                if conn.parser.buffered:
                    message = f"request not received within {timeout:g} s"
                    conn.respond_error(408, message, keep_alive=False)
                else:
                    conn.close()

    @property
    def admin_open(self) -> bool:
        """Admin routes need no token: listening on loopback only, and allowed to."""
        return self.loopback and self.settings.admin_open_on_loopback

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

    async def start(
        self,
        host: str,
        port: int,
        *,
        backlog: int = DEFAULT_BACKLOG,
        ssl: SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Listen on host:port; with `ssl`, HTTPS only (and wss:// for /ws: tidings.tls);
        `reuse_port`: SO_REUSEPORT, so that worker processes share the port."""
        loop = asyncio.get_running_loop()
        self._flusher = self._flusher or Flusher(loop)
        if self._monitor is None:
            self._monitor = LoopMonitor(loop)
            self._monitor.source = self._source
            self._monitor.start()
        if self._heartbeat is None and self.settings.sse_heartbeat > 0:
            self._heartbeat = loop.call_later(self.settings.sse_heartbeat, self._beat)
        server = await loop.create_server(
            self.protocol,
            host,
            port,
            backlog=backlog,
            ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout if ssl else None,
            reuse_port=reuse_port or None,
        )
        self.servers.append(server)
        self.clock.start()
        addresses = [str(sock.getsockname()[0]) for srv in self.servers for sock in srv.sockets]
        self.loopback = bool(addresses) and all(map(is_loopback, addresses))
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
        ok, body = self._health()
        if self.worker is not None:
            body["worker"] = self.worker
        if self.cluster is not None:
            node_ok, body["cluster"] = self.cluster()
            if not node_ok:  # the cause: a cut-off node also hears nothing of the binlog
                ok = False
                body["status"] = "unavailable"
                body["reason"] = body["cluster"]["reason"]
        return ok, body

    def _health(self) -> tuple[bool, dict[str, Any]]:
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

    def readings(self) -> Readings:
        """Every counter at this moment: /metrics and /stats are both written from this."""
        hub = self.hub
        stats = self.stats
        resp = self.resp
        ws_service = self.websocket
        mine = self._flusher.stats if self._flusher else None
        r = Readings(
            connections={
                "http": len(self.connections) - len(self.streams),
                "sse": len(self.streams),
            },
            opened={
                "http": stats.connections_total - stats.sse_total,
                "sse": stats.sse_total,
                "websocket": stats.websocket_total,
            },
            channels=hub.channels(),
            patterns=hub.pattern_count(),
            published=hub.published,
            delivered=hub.delivered,
            sse_deliveries=stats.deliveries,
            bytes_out={"http": mine.bytes_written if mine else 0},
            slow_consumers_cut={"http": mine.slow_consumers_cut if mine else 0},
            responses=dict(sorted(stats.responses.items())),
            loop_lag=self._monitor.max_lag if self._monitor else 0.0,
        )
        if ws_service is not None:
            r.connections["websocket"] = len(ws_service.connections)
            r.bytes_out["websocket"] = ws_service.bytes_written
            r.slow_consumers_cut["websocket"] = ws_service.slow_consumers_cut
        if resp is not None:
            r.connections["resp"] = resp.connections_open
            r.opened["resp"] = resp.stats.connections_total
            rstats = resp.flusher.stats
            r.bytes_out["resp"] = rstats.bytes_written
            r.slow_consumers_cut["resp"] = rstats.slow_consumers_cut
        if self.has_source:
            r.source = self._source
            r.lag = self.binlog_lag()
        return r

    def metrics(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        r = self.readings()
        out = _Metrics()
        out.family("tidings_connections", "gauge", "Open client connections.", "protocol",
                   list(r.connections.items()))  # fmt: skip
        out.family(
            "tidings_connections_opened",
            "counter",
            "Client connections accepted (an SSE or WebSocket one counts once as that).",
            "protocol",
            list(r.opened.items()),
        )
        out.gauge("tidings_channels", "Channels with subscribers.", len(r.channels))
        out.gauge(
            "tidings_subscriptions", "Channel subscriptions (all protocols).", r.subscriptions
        )
        out.gauge("tidings_patterns", "Distinct glob patterns subscribed.", r.patterns)
        out.counter("tidings_events_published", "Events published by the hub.", r.published)
        out.counter(
            "tidings_events_delivered",
            "Events handed to subscribers, all protocols (one per event per subscriber).",
            r.delivered,
        )
        out.family(
            "tidings_deliveries",
            "counter",
            "Events queued to subscribers (one per event per subscriber).",
            "protocol",
            [("sse", r.sse_deliveries)],
        )
        out.family("tidings_bytes_out", "counter", "Bytes written to clients.", "protocol",
                   list(r.bytes_out.items()))  # fmt: skip
        out.family(
            "tidings_slow_consumers_cut",
            "counter",
            "Connections cut off because their pending output passed the limit.",
            "protocol",
            list(r.slow_consumers_cut.items()),
        )
        admission = self.admission
        out.gauge(
            "tidings_max_clients", "Client connections allowed at once.", admission.max_clients
        )
        out.family(
            "tidings_connections_refused",
            "counter",
            "Connections refused at accept for being over a limit.",
            "reason",
            sorted(admission.refused.items()),
        )
        timeouts: list[tuple[str, float]] = [("request_timeout", self.stats.request_timeouts)]
        if self.resp is not None:
            timeouts.append(("idle_timeout", self.resp.idle_closed))
        out.family(
            "tidings_connections_timed_out",
            "counter",
            "Connections closed by idle_timeout (RESP) or request_timeout (HTTP).",
            "reason",
            timeouts,
        )
        out.family(
            "tidings_http_responses",
            "counter",
            "HTTP responses by status code.",
            "code",
            [(str(code), n) for code, n in r.responses.items()],
        )
        source = r.source
        if self.has_source:
            out.gauge("tidings_binlog_connected", "1 while the binlog source is connected.",
                      int(r.connected))  # fmt: skip
            out.gauge(
                "tidings_binlog_lag_seconds",
                "How far the stream is behind the source (NaN while disconnected).",
                math.nan if r.lag is None else r.lag,
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
        if self.auth is not None:
            out.counter("tidings_auth_failures", "Tokens refused (bad, expired, foreign).",
                        self.auth.failures)  # fmt: skip
            out.counter(
                "tidings_auth_throttled",
                "Token attempts refused unchecked: their address failed too often.",
                self.auth.throttle.refused,
            )
        if (checkpoints := self.checkpoints) is not None:
            out.counter("tidings_checkpoint_writes", "Checkpoints written to the state directory.",
                        checkpoints.written)  # fmt: skip
            out.counter(
                "tidings_checkpoint_failures",
                "Checkpoint writes that failed (disk full, read-only, gone); each is retried.",
                checkpoints.failures,
            )
            out.gauge("tidings_checkpoint_failing",
                      "1 while the checkpoint cannot be written (its last attempt failed).",
                      int(checkpoints.last_error is not None))  # fmt: skip
            written = checkpoints.last_written_time
            out.gauge(
                "tidings_checkpoint_age_seconds",
                "Seconds since the checkpoint on disk was written (NaN: none yet); it grows "
                "while no events flow, and while writes fail.",
                math.nan if written is None else max(0.0, time.time() - written),
            )
        if self.tls_expiry is not None:
            out.gauge("tidings_tls_certificate_expiry_timestamp_seconds",
                      "When the TLS certificate being served expires (its notAfter).",
                      self.tls_expiry())  # fmt: skip
        if (malloc := memory.mallinfo()) is not None:
            out.family(
                "tidings_malloc_bytes",
                "gauge",
                "The C allocator's memory (glibc mallinfo2): heap taken from the kernel, in "
                "use, free but kept (RSS where touched), mmapped blocks.",
                "kind",
                [("heap", malloc.heap), ("in_use", malloc.in_use), ("free", malloc.free),
                 ("mmapped", malloc.mmapped)],
            )  # fmt: skip
        gc_stats = gc.get_stats()
        out.family(
            "tidings_python_gc_collections",
            "counter",
            "Collections of the cyclic garbage collector, by generation.",
            "generation",
            [(str(g), stats["collections"]) for g, stats in enumerate(gc_stats)],
        )
        out.family(
            "tidings_python_gc_collected",
            "counter",
            "Objects the cyclic garbage collector freed (reference counting frees the rest).",
            "generation",
            [(str(g), stats["collected"]) for g, stats in enumerate(gc_stats)],
        )
        out.gauge("tidings_python_allocated_blocks",
                  "Memory blocks Python's small-object allocator has handed out and not had "
                  "back (sys.getallocatedblocks): grows with live Python objects.",
                  sys.getallocatedblocks())  # fmt: skip
        if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=1: for finding leaks, slow
            out.gauge("tidings_python_traced_bytes",
                      "Memory Python allocated and still holds, as tracemalloc counts it.",
                      tracemalloc.get_traced_memory()[0])  # fmt: skip
        out.gauge(
            "tidings_event_loop_lag_seconds",
            "Largest event-loop delay seen over the last 5 to 10 seconds.",
            r.loop_lag,
        )
        return out.text()

    def stats_report(self, busiest: int = 10) -> dict[str, Any]:
        """GET /stats: the same readings as JSON, with the binlog position and the busiest
        channels, for the dashboard (docs/reference/dashboard.md)."""
        r = self.readings()
        binlog: dict[str, Any] | None = None
        source = r.source
        if self.has_source:
            position = source.position if source is not None else None
            binlog = {
                "connected": r.connected,
                "file": position.file if position else None,
                "pos": position.pos if position else None,
                "gtid": position.gtid if position else None,
                "lag_seconds": None if r.lag is None else round(r.lag, 3),
                "events": source.events_total if source else 0,
                "bytes": source.bytes_total if source else 0,
                "transactions": source.transactions_total if source else 0,
                "reconnects": source.reconnects if source else 0,
                "last_error": source.last_error if source else None,
            }
        report: dict[str, Any] = {} if self.worker is None else {"worker": self.worker}
        return report | {
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "connections": r.connections,
            "connections_opened": r.opened,
            "channels": len(r.channels),
            "subscriptions": r.subscriptions,
            "patterns": r.patterns,
            "events": r.published,
            "deliveries": r.delivered,
            "last_id": self.hub.next_id - 1,
            "bytes_out": r.bytes_out,
            "slow_consumers_cut": r.slow_consumers_cut,
            "http_responses": {str(code): n for code, n in r.responses.items()},
            "event_loop_lag_seconds": round(r.loop_lag, 6),
            "binlog": binlog,
            "busiest": self._busiest(r.channels, busiest),
            "checkpoint": self._checkpoint_report(),
        }

    def _checkpoint_report(self) -> dict[str, Any] | None:
        checkpoints = self.checkpoints
        if checkpoints is None:
            return None
        now = time.time()
        written, since = checkpoints.last_written_time, checkpoints.failing_since
        return {
            "written": checkpoints.written,
            "failures": checkpoints.failures,
            "failing": checkpoints.last_error is not None,
            "last_error": checkpoints.last_error,
            "failing_seconds": None if since is None else round(max(0.0, now - since), 3),
            "age_seconds": None if written is None else round(max(0.0, now - written), 3),
        }

    def _busiest(self, subscribed: dict[str, int], limit: int) -> list[dict[str, Any]]:
        """Channels ranked by events seen (kept by history), then by subscribers."""
        logs = self.hub.history.channels
        names = set(logs).union(subscribed)

        def rank(name: str) -> tuple[int, int]:
            log = logs.get(name)
            return (log.appended if log else 0, subscribed.get(name, 0))

        return [
            {"channel": name, "events": events, "subscribers": subs}
            for name in heapq.nlargest(limit, names, key=rank)
            for events, subs in (rank(name),)
        ]

    # -- ending ------------------------------------------------------------------------------
    def close_clients(self, reason: str = "") -> None:
        """Close every connection; event streams get `reason` as a last comment."""
        last_words = http.sse_comment(reason) if reason else b""
        for conn in list(self.connections):
            conn.close(last_words)

    def stop_listening(self) -> None:
        for server in self.servers:
            server.close()
        self.clock.stop()

    async def close(self, timeout: float = 5.0, reason: str = "") -> None:
        """Stop listening, close the clients (telling event streams and WebSocket clients
        `reason`) and wait (up to `timeout`) for them to go."""
        self.stop_listening()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        self.close_clients(reason)
        if self.websocket is not None:  # connections handed over at /ws
            self.websocket.close_clients(reason)
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
