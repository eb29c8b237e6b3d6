"""The WebSocket session: one `asyncio.Protocol` per browser or service, speaking JSON.

Theory of operation. The HTTP listener (tidings.wire.http_server) parses
`GET /ws` and calls `accept(request, transport, hub, service)`. A valid handshake
gets a `WsConnection` (the listener switches the transport to it and feeds it
any bytes read past the request); a bad one, or one whose `Origin` the `origins`
allow-list refuses (browsers let any page open a socket anywhere, so the server
must check), gets a complete HTTP error response to write. The connection queues
the 101 response on its `Outbox` first, then runs the client's bytes through a
`FrameParser` (tidings.wire.websocket) and each complete text message through
the JSON protocol below. It is the hub's `Subscriber`: `deliver` fetches the
event's WebSocket frame from `event.frame(TEXT_FRAME, encode_event)` -- one text
frame whose payload is exactly the event JSON, built once per event and shared
by every WebSocket subscriber -- and queues that bytes object.

The protocol (client -> server, one JSON object per text message):

    {"op":"subscribe","channel":"shop.orders?customer_id=eq.42"}   live from now
    {"op":"subscribe","channel":"shop.orders","since":123}          resume after id 123
    {"op":"unsubscribe","channel":"shop.orders"}
    {"op":"ping"}
    {"op":"auth","token":"..."}                                     with an auth secret

and server -> client: `{"op":"subscribed","channel":...}` (before any of its
events), `{"op":"unsubscribed","channel":...}`, `{"op":"pong"}`,
`{"op":"error","message":...}` (invalid JSON, unknown op, bad channel or
since; the connection stays up), and events: objects with no `op` key, the
same JSON as on RESP. Each message is validated by tidings.wire.ws_messages.
A resume goes through `hub.resume` and is paced by the outbox's room
(`Replay.pump`), like RESP's TIDINGS.SUBSCRIBE.

Tokens (with an auth secret, tidings.wire.access): `/ws?token=T` (or `Authorization:
Bearer T`) or an `auth` message, answered `{"op":"authenticated",...}`; before one,
a subscribe gets an error. A channel the token does not allow gets an error and is not
subscribed. A bad token closes with 1008 and the reason, and so does the token's expiry
(unless an `auth` message replaced it first).

Ending. RFC violations fail the connection with their close code (1002, 1007,
1009); a client whose pending output passes `output_limit` is cut by the
outbox with a 1008 close frame carrying the reason. A server-initiated close
writes the close frame and half-closes (write EOF), then waits up to
`close_timeout` for the client's close frame or EOF before closing: a full
close with the client's bytes unread would reset the connection and could
destroy the close frame before the client reads it. Liveness: a WebSocket
ping every `ping_interval` seconds; a client that has sent nothing (pong or
otherwise) for a whole interval after one is closed with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import orjson

from tidings.auth import Grant
from tidings.event import Event
from tidings.hub import Hub, Replay, ResumeError
from tidings.hub.resume import check_since
from tidings.wire import websocket as ws
from tidings.wire.access import AuthError, Authority, bearer_token, refusal, uncovered
from tidings.wire.limits import peer_host
from tidings.wire.origins import ANY, Origins
from tidings.wire.outbox import Flusher, Outbox, open_outbox, peer_name
from tidings.wire.replay_queue import ReplayQueue
from tidings.wire.ws_messages import MessageError, parse_message

__all__ = [
    "KEEPALIVE_PING",
    "TEXT_FRAME",
    "UpgradeRequest",
    "WsConnection",
    "WsService",
    "WsSettings",
    "WsStats",
    "accept",
    "encode_event",
]

log = logging.getLogger("tidings.wire.ws")

#: key into Event.frames for the WebSocket frame of an event
TEXT_FRAME: Final = "ws:frame"

_FAREWELL: Final = ws.close_frame(
    ws.POLICY_VIOLATION, "output limit reached: this client read too slowly"
)
_PONG: Final = ws.text_frame(b'{"op":"pong"}')
#: the keepalive ping every `ping_interval` (bench/loadgen.py leaves it out of byte counts)
KEEPALIVE_PING: Final = ws.encode_frame(ws.OP_PING, b"tidings")


def encode_event(event: Event) -> bytes:
    """The event JSON in one text frame; a PUBLISHed payload that is not UTF-8 goes as a
    binary frame (a text frame with it would make a browser fail the connection)."""
    body = event.body
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return ws.encode_frame(ws.OP_BINARY, body)
    return ws.text_frame(body)


class UpgradeRequest(Protocol):
    """What `accept` reads of http.py's `Request`."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass(slots=True, frozen=True)
class WsSettings:
    #: largest message a client may send (all fragments); bigger: close 1009
    max_message: int = ws.MAX_MESSAGE
    #: pending output (queue + transport buffer) after which a client is cut off (1008)
    output_limit: int = 1 << 20
    #: seconds between server pings; a client silent for a whole interval after one is
    #: closed (0: no pings)
    ping_interval: float = 20.0
    #: seconds a closing connection waits for the client's close frame
    close_timeout: float = 5.0
    #: signs client tokens; None: no authentication (tidings.wire.access)
    auth_secret: bytes | None = field(default=None, repr=False)
    #: pages whose handshakes are accepted (a handshake without Origin always is)
    origins: Origins = ANY
    #: channels one connection may hold at once
    max_subscriptions: int = 10_000

    @classmethod
    def from_settings(cls, settings: object, auth_secret: bytes | None = None) -> WsSettings:
        """From the daemon's `tidings.config.Settings` (fields it lacks keep defaults), or
        the HTTP listener's settings (whose `auth_secret` is bytes, as here)."""
        if auth_secret is None:
            secret = getattr(settings, "auth_secret", None)
            auth_secret = secret if isinstance(secret, bytes) else None
        origins = getattr(settings, "origins", ANY)
        return cls(
            max_message=int(getattr(settings, "ws_max_message", ws.MAX_MESSAGE)),
            output_limit=int(getattr(settings, "output_limit", 1 << 20)),
            ping_interval=float(getattr(settings, "ws_ping_interval", 20.0)),
            max_subscriptions=int(getattr(settings, "max_subscriptions", 10_000)),
            auth_secret=auth_secret or None,
            origins=Origins.parse(origins) if isinstance(origins, str) else origins,
        )


@dataclass(slots=True)
class WsStats:
    """Counters for metrics; the slow-consumer count lives in `flusher.stats`."""

    connections_total: int = 0
    handshakes_refused: int = 0
    messages_in: int = 0
    protocol_errors: int = 0
    ping_timeouts: int = 0


class WsService:
    """The WebSocket endpoint: settings, open connections, counters, output flusher."""

    def __init__(self, hub: Hub, settings: WsSettings | None = None) -> None:
        self.hub = hub
        self.settings = settings or WsSettings()
        self.connections: dict[WsConnection, None] = {}
        self.stats = WsStats()
        #: with an auth secret: checks tokens; None: no authentication
        self.auth = Authority(self.settings.auth_secret) if self.settings.auth_secret else None
        self._flusher: Flusher | None = None
        self._ids = itertools.count(1)

    @property
    def flusher(self) -> Flusher:
        if self._flusher is None:
            self._flusher = Flusher(asyncio.get_running_loop())
        return self._flusher

    @property
    def slow_consumers_cut(self) -> int:
        return self._flusher.stats.slow_consumers_cut if self._flusher else 0

    @property
    def bytes_written(self) -> int:
        return self._flusher.stats.bytes_written if self._flusher else 0

    def accept(
        self, request: UpgradeRequest, transport: asyncio.BaseTransport
    ) -> WsConnection | bytes:
        """The session for a valid handshake, else a complete HTTP error response."""
        try:
            accept_value = ws.check_handshake(request.method, request.headers)
            origin = request.headers.get("origin")
            if origin is not None and not self.settings.origins.allows(origin):
                # browsers let any page open a WebSocket anywhere: the server must say no
                raise ws.HandshakeError(
                    403,
                    f"origin {origin!r} may not open a WebSocket here: "
                    "add it to the daemon's --origins setting",
                )
        except ws.HandshakeError as exc:
            self.stats.handshakes_refused += 1
            return ws.reject_response(exc)
        self.stats.connections_total += 1
        conn = WsConnection(
            self, next(self._ids), ws.handshake_response(accept_value), request.headers
        )
        if self.auth is not None:
            # a token in the URL (browsers) or the header (services) is checked at once; a
            # bad one is told and closed (1008) after the upgrade, where a browser sees why
            try:
                token = bearer_token(request.headers, request.query)
                if token is not None:
                    conn.grant = self.auth.verify(token, peer_host(transport))
            except AuthError as exc:
                conn.refused = f"invalid token: {exc}"
        return conn

    def close_clients(self, reason: str = "server shutting down") -> None:
        """Close every session with 1001 (going away) and `reason`."""
        for conn in list(self.connections):
            conn.close(ws.GOING_AWAY, reason or "server shutting down")

    def _forget(self, conn: WsConnection) -> None:
        self.connections.pop(conn, None)


# the services made for callers that pass plain settings: one per hub (and event loop)
_services: dict[int, WsService] = {}


def accept(
    request: UpgradeRequest,
    transport: asyncio.BaseTransport,
    hub: Hub,
    settings: WsService | WsSettings | object,
) -> asyncio.Protocol | bytes:
    """The agreed hand-off from the HTTP listener (see the module docstring).

    Pass a `WsService` (one per listener: it holds the registry and counters); a
    `WsSettings` or the daemon's `Settings` gets a shared service per hub instead.
    """
    if isinstance(settings, WsService):
        return settings.accept(request, transport)
    service = _services.get(id(hub))
    loop = asyncio.get_running_loop()
    if service is None or service.hub is not hub or service.flusher.loop is not loop:
        ws_settings = (
            settings if isinstance(settings, WsSettings) else WsSettings.from_settings(settings)
        )
        service = _services[id(hub)] = WsService(hub, ws_settings)
    return service.accept(request, transport)


class WsConnection(asyncio.Protocol):
    """One WebSocket client. Also the hub's `Subscriber`: see `deliver`."""

    __slots__ = (
        "_closing",
        "_expiry",
        "_heard",
        "_ping_timer",
        "_read_paused",
        "_replays",
        "_response",
        "_write",
        "channels",
        "grant",
        "hub",
        "id",
        "on_lost",
        "origin",
        "outbox",
        "parser",
        "peer",
        "refused",
        "service",
        "settings",
        "transport",
    )

    transport: asyncio.Transport
    outbox: Outbox
    _replays: ReplayQueue[Replay]

    def __init__(
        self, service: WsService, conn_id: int, response: bytes, headers: Mapping[str, str]
    ) -> None:
        self.service = service
        self.hub = service.hub
        self.settings = s = service.settings
        self.id = conn_id
        self._response = response
        #: the Origin header as sent (browsers send it; checked against `origins` before)
        self.origin = headers.get("origin")
        #: called once the connection is gone (the HTTP listener releases its admission)
        self.on_lost: Callable[[], None] | None = None
        self.parser = ws.FrameParser(s.max_message)
        self.peer = "?"
        self.channels: dict[str, None] = {}
        self._read_paused = False
        #: None while open; "closing" once our close frame is out; "closed" at the end
        self._closing: str | None = None
        self._heard = True  # the client sent something since the last ping
        self._ping_timer: asyncio.TimerHandle | None = None
        #: with an auth secret: the token's grant, its expiry timer, and why a token given
        #: with the upgrade request was refused (the connection then closes at once)
        self.grant: Grant | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.refused: str | None = None

    def __repr__(self) -> str:
        return f"<WsConnection id={self.id} addr={self.peer}>"

    # -- the hub's side (hot path) ---------------------------------------------------------
    def deliver(self, event: Event, pattern: str | None) -> None:
        data = event.frames.get(TEXT_FRAME)
        if data is None:
            data = event.frame(TEXT_FRAME, encode_event)
        self._write(data)

    def replay_wake(self, replay: Replay) -> None:
        """A replay's binlog re-read has more: pump again."""
        self._replays.run()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peer = peer_name(transport)
        self.outbox = open_outbox(
            transport,
            self.service.flusher,
            self.settings.output_limit,
            farewell=_FAREWELL,
            name=f"ws id={self.id} addr={self.peer}",
            logger=log,
            on_cut=self._cut,
        )
        self._write = self.outbox.write
        self._replays = ReplayQueue(self.outbox, self.service.flusher)
        self.service.connections[self] = None
        self._write(self._response)
        self._response = b""  # written: no need to keep it for the connection's life
        if self.refused is not None:
            self._refuse(self.refused)
            return
        if self.grant is not None:
            self._watch(self.grant)
        if self.settings.ping_interval > 0:
            loop = self.service.flusher.loop
            self._ping_timer = loop.call_later(self.settings.ping_interval, self._ping)

    def data_received(self, data: bytes) -> None:
        if self._closing is not None:
            if self._closing == "closing":
                self._drain_closing(data)
            return
        self._heard = True
        parser = self.parser
        parser.feed(data)
        try:
            while self._closing is None and (event := parser.next_event()) is not None:
                self._handle(event)
        except ws.ProtocolError as exc:
            self.service.stats.protocol_errors += 1
            log.info("ws client id=%d addr=%s: %s; closing", self.id, self.peer, exc.reason)
            self.close(exc.code, exc.reason)
            return
        except Exception:
            log.exception("ws client id=%d addr=%s: message failed; closing", self.id, self.peer)
            self.close(ws.INTERNAL_ERROR, "internal error")
            return
        if self.outbox.paused and self._closing is None and not self._read_paused:
            # a client that sends faster than it reads its replies waits for the kernel
            self._read_paused = True
            self.transport.pause_reading()

    def _drain_closing(self, data: bytes) -> None:
        """Closing: wait for the client's close frame (whatever else it sends is dropped)."""
        with contextlib.suppress(ws.ProtocolError):
            self.parser.feed(data)
            while (event := self.parser.next_event()) is not None:
                if isinstance(event, ws.Close):
                    self._finish()
                    return
        if self.parser.buffered > 2 * self.settings.max_message:
            self._finish()

    def eof_received(self) -> None:
        # _finish closes the transport (not True: TLS cannot stay half-open, asyncio warns)
        if self._closing is None:
            self._leave()
        self._finish()

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()
        if self._read_paused and self._closing is None:
            self._read_paused = False
            self.transport.resume_reading()
        self._replays.run()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._closing is None:
            log.info("ws client id=%d addr=%s: connection lost: %r", self.id, self.peer, exc)
        self._closing = "closed"
        self.outbox.lost()
        self._leave()
        self.service._forget(self)
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None

    # -- ending ------------------------------------------------------------------------------
    def close(self, code: int = ws.NORMAL, reason: str = "") -> None:
        """Start the closing handshake: close frame, write EOF, wait for the client's."""
        if self._closing is not None:
            return
        self._closing = "closing"
        self._leave()
        # what is buffered may be a broken frame: read the client's close reply afresh
        self.parser = ws.FrameParser(self.settings.max_message)
        outbox = self.outbox
        outbox.write(ws.close_frame(code, reason))
        transport = self.transport
        if outbox.closed or outbox.paused or not transport.can_write_eof():
            outbox.close(self.settings.close_timeout)
            return
        try:
            outbox.write_eof()  # after what is buffered: the client sees the frame, then EOF
        except OSError:  # the peer is gone already
            transport.abort()
            return
        loop = self.service.flusher.loop
        self._ping_timer = loop.call_later(self.settings.close_timeout, transport.abort)

    def _finish(self) -> None:
        """The closing handshake is over (or the client left): close the transport."""
        if self._closing == "closed":
            return
        self._closing = "closed"
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self.outbox.close(self.settings.close_timeout)  # sends what is queued first
        self.transport.close()

    def _cut(self) -> None:
        """The outbox cut this slow consumer off (it wrote the 1008 close frame)."""
        self._closing = "closed"
        self._leave()

    def _leave(self) -> None:
        """Nothing more will be delivered: leave the hub, stop pinging."""
        self._replays.cancel_all()
        for channel in self.channels:
            self.hub.unsubscribe(self, channel)
        self.channels = {}
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    # -- tokens (with an auth secret) -------------------------------------------------------
    def _refuse(self, reason: str) -> None:
        """A bad token: say why, in a message and in the close frame (cut to fit), and close."""
        log.info("ws client id=%d addr=%s: %s; closing", self.id, self.peer, reason)
        self._error(reason)
        self.close(ws.POLICY_VIOLATION, reason)

    def _watch(self, grant: Grant) -> None:
        auth = self.service.auth
        assert auth is not None
        if self._expiry is not None:
            self._expiry.cancel()
        self.grant = grant
        self._expiry = auth.watch(self.service.flusher.loop, grant, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        if self._closing is None:
            self._leave()  # before anything else can be queued
            self._refuse("token expired")

    def _op_auth(self, token: object) -> None:
        auth = self.service.auth
        if auth is None:
            self._error("this server has no auth secret: no token is needed")
            return
        if not isinstance(token, str):
            self._refuse('invalid token: "token" must be a string')
            return
        try:
            grant = auth.verify(token, peer_host(self.transport))
        except AuthError as exc:
            self._refuse(f"invalid token: {exc}")
            return
        lost = uncovered(grant, self.channels)
        if lost is not None:
            self._error(f"the new token is not taken: {lost}, which is subscribed here")
            return
        self._watch(grant)
        log.debug("ws client id=%d addr=%s: authenticated (%s)", self.id, self.peer, grant.who())
        reply: dict[str, Any] = {"op": "authenticated", "exp": grant.expires}
        if grant.subject is not None:
            reply["sub"] = grant.subject
        self._reply(reply)

    def _refusal(self, channel: str) -> str | None:
        """Why the token (or its absence) does not allow `channel`; None if it does."""
        if self.service.auth is None:
            return None
        if self.grant is None:
            return (
                'authentication required: send {"op":"auth","token":"..."} first, '
                "or connect to /ws?token=..."
            )
        if not self.grant.allows_channel(channel):
            return refusal(channel)
        return None

    def _ping(self) -> None:
        self._ping_timer = None
        if self._closing is not None:
            return
        if not self._heard:
            self.service.stats.ping_timeouts += 1
            log.info("ws client id=%d addr=%s: no pong in time; closing", self.id, self.peer)
            self.close(ws.INTERNAL_ERROR, "keepalive ping timeout")
            return
        self._heard = False
        self._write(KEEPALIVE_PING)
        loop = self.service.flusher.loop
        self._ping_timer = loop.call_later(self.settings.ping_interval, self._ping)

    # -- frames and messages -----------------------------------------------------------------
    def _handle(self, event: ws.Event) -> None:
        if isinstance(event, ws.Message):
            self.service.stats.messages_in += 1
            self._message(event)
        elif isinstance(event, ws.Ping):
            self._write(ws.encode_frame(ws.OP_PONG, event.data))
        elif isinstance(event, ws.Close):
            # the client's close: answer with its code (none: none) and end
            self._closing = "closing"
            self._leave()
            if event.code == ws.NO_STATUS:
                self._write(ws.encode_frame(ws.OP_CLOSE, b""))
            else:
                self._write(ws.close_frame(event.code))
            self._finish()
        # a Pong only proves liveness, which data_received noted

    def _reply(self, message: dict[str, Any]) -> None:
        self._write(ws.text_frame(orjson.dumps(message)))

    def _error(self, message: str) -> None:
        self._reply({"op": "error", "message": message})

    def _message(self, message: ws.Message) -> None:
        try:
            command = parse_message(message.data, message.text)
        except MessageError as exc:
            self._reply(exc.reply)
            return
        if command.op == "subscribe":
            self._op_subscribe(command.channel, command.since)
        elif command.op == "unsubscribe":
            self._op_unsubscribe(command.channel)
        elif command.op == "auth":
            self._op_auth(command.token)
        else:
            self._write(_PONG)

    def _op_subscribe(self, channel: str, since: int | None) -> None:
        if since is not None:
            try:
                check_since(since, self.hub.next_id)
            except ResumeError as exc:
                self._reply({"op": "error", "message": str(exc), "channel": channel})
                return
        refused = self._refusal(channel)
        limit = self.settings.max_subscriptions
        if refused is None and channel not in self.channels and len(self.channels) >= limit:
            refused = f"too many subscriptions on this connection (max_subscriptions={limit})"
        if refused is not None:
            self._reply({"op": "error", "message": refused, "channel": channel})
            return
        self._reply({"op": "subscribed", "channel": channel})
        if channel in self.channels:
            return  # its events flow already: replaying them would repeat
        self.channels[channel] = None
        if since is None:
            self.hub.subscribe(self, channel)
            return
        self._replays.add(self.hub.resume(self, since, channels=[channel]))

    def _op_unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            del self.channels[channel]
            self.hub.unsubscribe(self, channel)
            for replay in self._replays:
                replay.discard(channel)
        self._reply({"op": "unsubscribed", "channel": channel})
