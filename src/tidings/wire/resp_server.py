"""The Redis pub/sub server: one `asyncio.Protocol` per client, speaking RESP2 and RESP3.

Theory of operation. `RespConnection` is the hub's `Subscriber` for one client.
Bytes from the socket go to its `RespParser` (tidings.wire.resp); each complete
command is looked up in `COMMANDS`, a table written as data like redis's
command table (name, arity, whether RESP2 subscribed mode allows it,
subcommands), and its handler queues the reply on the connection's `Outbox`.
Events from the hub arrive through `deliver`, which fetches the event's frame
for this connection's format from `event.frame()` (encoded once per event and
format, shared by every subscriber) and queues that same bytes object. Replies
and events share the one queue, so they reach the client in the order they
happened, as in redis (a PUBLISH's own message precedes its `:N` reply).

Replies match Redis 7.0 byte for byte, error texts included
(tests/wire/test_resp_redis.py compares against a real redis-server), except
where this server is deliberately different:

* other Redis commands (GET, ...) are unknown commands, except in RESP2
  subscribed mode, where redis's "Can't execute" error is what redis sends too;
* HELLO reports version 7.0.0; COMMAND returns an empty list; CLIENT SETINFO
  (redis 7.2) is accepted;
* without an auth secret, AUTH and HELLO ... AUTH are refused (no users here). With one
  (tidings.wire.access), the password is a signed token (`AUTH [user] <token>`, the user
  is ignored): commands marked `access` in the table answer Redis's `-NOAUTH` until a
  valid AUTH, a bad token gets `-WRONGPASS <why>`, a channel, pattern or publish the
  token does not allow `-NOPERM <why>` (nothing subscribed), PUBSUB needs an admin
  token. PING, HELLO (without AUTH), QUIT and the other commands stay open; AUTH works
  in RESP2 subscribed mode too (to replace a token before it expires); RESET forgets
  the token. When the token expires the client gets `-NOAUTH` saying so and is closed;
* INFO has the server and clients sections only, the server's with
  `tidings_worker` (which process of `--workers N` answers; 0: the only one);
* PUBLISH through a publisher (the database's outbox, or the id-giving process
  of `--workers N`) does not hold up the PUBLISHes pipelined behind it: they go
  on together and reply in order; any other command waits for those replies;
* an inline line longer than `max_inline` is refused even when its newline
  arrived in the same read (redis checks only while waiting for the newline);
* a NUL byte in a `*`/`$` header is an error here (redis's C string search
  stops there and waits);
* a `?` in a channel name starts a row filter (`shop.orders?status=eq.paid`,
  tidings.hub.filters): SUBSCRIBE with a malformed one is an error, and its
  messages carry the name as subscribed;
* TIDINGS.SUBSCRIBE / TIDINGS.PSUBSCRIBE `<since-id> name...` resume from an
  event id: confirmed like (P)SUBSCRIBE, then history, then live (tidings.hub.resume);
* TIDINGS.SNAPSHOT `db.table[?filter]`: confirmed like SUBSCRIBE once the snapshot is
  open (later commands wait, like a blocking command), then the rows, `snapshot-end`,
  the stream from the snapshot's position, live (tidings.wire.snapshot_stream).

Channel names are UTF-8 `str` in the hub; client bytes that are not UTF-8 are
carried with `surrogateescape` and come back out unchanged.

`RespService` is the listening side: settings, the registry of open
connections, counters, and the `Flusher` that coalesces their output.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Final, NamedTuple, cast

from tidings.auth import Grant
from tidings.event import Event
from tidings.hub import GlobPattern, Hub, Replay, ResumeError
from tidings.hub.filtering import split
from tidings.hub.filters import FilterError
from tidings.hub.resume import check_since
from tidings.wire import resp
from tidings.wire.access import AuthError, Authority, refusal, uncovered
from tidings.wire.hangups import Hangups, ordinary
from tidings.wire.limits import DEFAULT_BACKLOG, Admission, Clock, peer_host
from tidings.wire.outbox import Flusher, Outbox, open_outbox, peer_name
from tidings.wire.replay_queue import ReplayQueue
from tidings.wire.snapshot_stream import SnapshotRequestError, SnapshotService, SnapshotStream

__all__ = [
    "COMMANDS",
    "REDIS_VERSION",
    "RespConnection",
    "RespService",
    "RespSettings",
    "RespStats",
    "start_resp_server",
]

log = logging.getLogger("tidings.wire.resp")

#: what HELLO reports: the Redis release whose pub/sub behaviour this server reproduces
REDIS_VERSION: Final = "7.0.0"
#: SELECT accepts what a default redis accepts; pub/sub ignores the database anyway
DATABASES: Final = 16
#: PUBLISHes of one client awaiting their replies at most; past it, reading waits
PUBLISH_PIPELINE: Final = 1024

_OK: Final = b"+OK\r\n"
_PONG: Final = b"+PONG\r\n"
_CONTEXT_ERROR: Final = (
    b"ERR Can't execute '%b': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
    b"are allowed in this context"
)
_FAREWELL: Final = resp.error(
    b"ERR output limit reached: too much output was pending for this client "
    b"(it read too slowly, or one event was larger than the limit); disconnected"
)


#: sends a client's PUBLISH on its way; returns the number of receivers once delivered
Publisher = Callable[[str, bytes], Awaitable[int]]


@dataclass(slots=True, frozen=True)
class RespSettings:
    #: accept PUBLISH from clients (off by default: the database is the publisher)
    allow_publish: bool = False
    #: largest bulk string in a request
    max_bulk: int = 64 * 1024
    #: pending output (queue + transport buffer) after which a client is cut off
    output_limit: int = 1 << 20
    #: most arguments in one request
    max_args: int = 1 << 16
    #: longest inline request line, and longest `*`/`$` header line (redis: 64 KiB)
    max_inline: int = 64 * 1024
    #: largest request in total (all its bulk strings)
    max_query: int = 4 << 20
    #: channels and patterns one connection may hold at once
    max_subscriptions: int = 10_000
    #: signs client tokens; None: no authentication (tidings.wire.access)
    auth_secret: bytes | None = field(default=None, repr=False)


@dataclass(slots=True)
class RespStats:
    """Counters for metrics; the slow-consumer count lives in `flusher.stats`."""

    connections_total: int = 0
    commands: int = 0
    protocol_errors: int = 0


# -- frames for fanned-out events: encoded once per event and kind ----------------------------
def channel_bytes(channel: str) -> bytes:
    """A hub channel name as the client spelled it (see the module docstring)."""
    try:
        return channel.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a client
        return channel.encode("utf-8", "surrogatepass")


def _message(head: bytes, event: Event) -> bytes:
    name = channel_bytes(event.channel)
    body = event.body
    return b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (head, len(name), name, len(body), body)


def _message_encoder(head: bytes) -> Callable[[Event], bytes]:
    """The `message` frame encoder for one push header. It runs once per event (per
    subscriber with many channels of one each): one formatting, no helper call unless the
    channel name holds a lone surrogate."""
    template = head + b"$%d\r\n%b\r\n$%d\r\n%b\r\n"

    def encode(event: Event) -> bytes:
        try:
            name = event.channel.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return _message(head, event)
        body = event.body
        return template % (len(name), name, len(body), body)

    return encode


message_resp2 = _message_encoder(b"*3\r\n$7\r\nmessage\r\n")
message_resp3 = _message_encoder(b">3\r\n$7\r\nmessage\r\n")


def pmessage(event: Event, pattern: str, resp3: bool) -> bytes:
    head = b">4\r\n$8\r\npmessage\r\n" if resp3 else b"*4\r\n$8\r\npmessage\r\n"
    return _message(head + resp.bulk(channel_bytes(pattern)), event)


# keys into Event.frames; a pmessage key is (kind, pattern)
MESSAGE_RESP2: Final = "resp2:message"
MESSAGE_RESP3: Final = "resp3:message"
PMESSAGE_RESP2: Final = "resp2:pmessage"
PMESSAGE_RESP3: Final = "resp3:pmessage"


# -- the command table ----------------------------------------------------------------------
Handler = Callable[["RespConnection", list[bytes]], None]

#: `Command.access` with an auth secret: any client, a valid token, an admin token
OPEN: Final = 0
TOKEN: Final = 1
ADMIN: Final = 2
_NOAUTH: Final = b"NOAUTH Authentication required."


class Command(NamedTuple):
    #: lower-case name as redis prints it in errors; subcommands are "container|sub"
    fullname: bytes
    #: redis arity: N means exactly N arguments (name included), -N at least N
    arity: int
    handler: Handler | None
    #: allowed in RESP2 subscribed mode
    pubsub: bool = False
    subcommands: dict[bytes, Command] | None = None
    #: with an auth secret: OPEN, TOKEN (a valid AUTH first) or ADMIN (an admin token)
    access: int = OPEN


def _container(
    name: bytes, arity: int, subs: dict[bytes, tuple[int, Handler]], access: int = OPEN
) -> Command:
    table = {sub: Command(name + b"|" + sub, a, h, access=access) for sub, (a, h) in subs.items()}
    return Command(name, arity, None, subcommands=table, access=access)


def _arg(data: bytes, limit: int = 128) -> bytes:
    """An argument quoted in an error: redis prints it with %.128s (C string, ends at NUL)."""
    return data.split(b"\0", 1)[0][:limit]


class RespConnection(asyncio.Protocol):
    """One client. Also the hub's `Subscriber`: see `deliver`."""

    __slots__ = (
        "_closed",
        "_expiry",
        "_held",
        "_host",
        "_logged",
        "_message_encode",
        "_message_key",
        "_pmessage_key",
        "_publishing",
        "_read_paused",
        "_replays",
        "_waiting",
        "_write",
        "active",
        "channels",
        "grant",
        "hub",
        "id",
        "lib_name",
        "lib_ver",
        "name",
        "outbox",
        "parser",
        "patterns",
        "peer",
        "resp3",
        "service",
        "settings",
        "transport",
    )

    transport: asyncio.Transport
    outbox: Outbox
    _write: Callable[[bytes], None]  # outbox.write, bound once
    _replays: ReplayQueue[Replay | SnapshotStream]

    def __init__(self, service: RespService, conn_id: int) -> None:
        self.service = service
        self.hub = service.hub
        self.settings = s = service.settings
        self.id = conn_id
        self.parser = resp.RespParser(
            max_bulk=s.max_bulk, max_args=s.max_args, max_inline=s.max_inline, max_query=s.max_query
        )
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.peer = "?"
        #: subscriptions in the order made (dicts as ordered sets)
        self.channels: dict[str, None] = {}
        self.patterns: dict[str, None] = {}
        self._closed = False
        self._logged = False
        self._read_paused = False
        #: the address counted by the service's Admission (None: not admitted)
        self._host: str | None = None
        #: when data last came in (the service clock's coarse time), for idle_timeout
        self.active = service.clock.now
        #: a command whose reply is awaited (a snapshot opening, or PUBLISHes to finish):
        #: later commands wait
        self._waiting: asyncio.Task[None] | None = None
        #: PUBLISHes sent on through the service's publisher, replies not yet given (in order);
        #: made on the first (an empty deque is 760 bytes, a fifth of an idle connection)
        self._publishing: deque[asyncio.Future[int]] | None = None
        #: a command read while PUBLISHes were pending: it runs once they have replied
        self._held: list[bytes] | None = None
        #: with an auth secret: the token's grant once AUTH succeeded, and its expiry timer
        self.grant: Grant | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._set_protocol(resp3=False)

    def __repr__(self) -> str:
        return f"<RespConnection id={self.id} addr={self.peer}>"

    def _set_protocol(self, resp3: bool) -> None:
        self.resp3 = resp3
        self._message_key = MESSAGE_RESP3 if resp3 else MESSAGE_RESP2
        self._message_encode = message_resp3 if resp3 else message_resp2
        self._pmessage_key = PMESSAGE_RESP3 if resp3 else PMESSAGE_RESP2

    # -- the hub's side (hot path) ---------------------------------------------------------
    def deliver(self, event: Event, pattern: str | None) -> None:
        if pattern is None:
            # Event.frame() inlined: this line runs once per subscriber per event
            frames = event.frames
            data = frames.get(self._message_key)
            if data is None:
                data = frames[self._message_key] = self._message_encode(event)
            self._write(data)
            return
        key = (self._pmessage_key, pattern)
        data = event.frames.get(key)
        if data is None:
            resp3 = self.resp3
            data = event.frame(key, lambda e: pmessage(e, pattern, resp3))
        self._write(data)

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peer = peer_name(transport)
        self.outbox = open_outbox(
            transport,
            self.service.flusher,
            self.settings.output_limit,
            farewell=_FAREWELL,
            name=f"id={self.id} addr={self.peer}",
            logger=log,
            on_cut=self._cut,
        )
        self._write = self.outbox.write
        #: TIDINGS.(P)SUBSCRIBE replays and snapshots not yet caught up, one after the other
        self._replays = ReplayQueue(self.outbox, self.service.flusher)
        self.service.connections[self] = None
        host = peer_host(transport)
        admission = self.service.admission
        refused = admission.enter(host)
        if refused is not None:
            log.info("client addr=%s refused: %s", self.peer, refused)
            self.close(resp.error(b"ERR " + admission.refusal(refused, host).encode()))
        else:
            self._host = host

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.active = self.service.clock.now
        self.parser.feed(data)
        self._run_commands()

    def _run_commands(self) -> None:
        """Execute the complete commands received, until one must wait for its reply."""
        parser = self.parser
        try:
            while not self._closed and self._waiting is None:
                args = self._held
                if args is None:
                    args = parser.next_command()
                    if args is None:
                        break
                    self.service.stats.commands += 1
                    if self._publishing and args[0].lower() != b"publish":
                        # its reply must come after theirs
                        self._held = args
                        self._waiting = asyncio.ensure_future(self._after_publishes())
                        break
                else:
                    self._held = None
                self.execute(args)
        except resp.ProtocolError as exc:
            self.service.stats.protocol_errors += 1
            self._log_end(f"{exc}; closing")
            self.outbox.write(resp.error(b"ERR " + str(exc).encode("latin-1", "replace")))
            self.close()
            return
        except Exception:
            # a bug in a handler (or the hub) ends this connection, not the others
            self._logged = True
            log.exception("client id=%d addr=%s: command failed; closing", self.id, self.peer)
            self.outbox.write(resp.error(b"ERR internal error; closing the connection"))
            self.close()
            return
        # a client that pipelines faster than it reads its replies waits for the kernel, and
        # one whose command awaits its reply sends nothing more meanwhile (bounded buffering)
        paused = self.outbox.paused or self._waiting is not None
        if paused and not self._closed and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> None:
        # redis frees a client on EOF (after replying to what it already read); so do we.
        # close() has closed the transport gracefully: nothing to keep half-open (which TLS
        # cannot do anyway: asyncio warns when eof_received returns True there)
        if self.parser.mid_command and not self._closed:
            self._log_end("disconnected mid-command")
        self.close()

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()
        if self._read_paused and not self._closed and self._waiting is None:
            self._read_paused = False
            self.transport.resume_reading()
        self._replays.run()

    def connection_lost(self, exc: Exception | None) -> None:
        if ordinary(exc) and not self._logged:
            assert exc is not None
            self._logged = True  # a client gone: counted, logged at debug (wire.hangups)
            self.service.hangups.count(f"client id={self.id} addr={self.peer}", exc,
                                       self.service.clock.now)  # fmt: skip
        elif exc is not None:
            self._log_end(f"connection lost: {exc!r}")
        elif self.parser.mid_command and not self._closed:
            self._log_end("disconnected mid-command")
        else:
            log.debug("client id=%d addr=%s: disconnected", self.id, self.peer)
        self._closed = True
        self.outbox.lost()
        self._unsubscribe_all()
        self._forget_grant()
        self.service._forget(self)
        if self._host is not None:
            self.service.admission.leave(self._host)
            self._host = None

    def _log_end(self, why: str) -> None:
        """Log an abnormal end once per connection (lost, reset, cut short)."""
        if not self._logged:
            self._logged = True
            log.info("client id=%d addr=%s: %s", self.id, self.peer, why)

    def close(self, last_words: bytes = b"") -> None:
        """Send what is queued (and `last_words`), then close the connection (ignore
        further commands)."""
        if not self._closed:
            self._closed = True
            self.outbox.close(last_words=last_words)
            self._unsubscribe_all()  # nothing more will be sent: leave the hub now
            self._forget_grant()

    @property
    def idle(self) -> bool:
        """Nothing subscribed, nothing pending: what idle_timeout may close."""
        return not (
            self.channels or self.patterns or self._replays or self._waiting or self._closed
        )

    def _cut(self) -> None:
        """The outbox cut this slow consumer off: leave the hub, ignore further commands."""
        self._closed = True
        self._unsubscribe_all()
        self._forget_grant()

    # -- tokens (with an auth secret) ----------------------------------------------------------
    def _authenticate(self, token: bytes) -> bool:
        """Take `token`'s grant, or reply with why not (and keep the grant held before)."""
        auth = self.service.auth
        assert auth is not None
        try:
            grant = auth.verify(token, peer_host(self.transport))
        except AuthError as exc:
            log.info("client id=%d addr=%s: token refused: %s", self.id, self.peer, exc)
            self.reply_error(b"WRONGPASS invalid token: " + str(exc).encode("utf-8", "replace"))
            return False
        lost = uncovered(grant, self.channels, self.patterns)
        if lost is not None:
            self.reply_error(
                b"NOPERM the new token is not taken: %b, to which this connection is "
                b"subscribed (UNSUBSCRIBE it first)" % lost.encode("utf-8", "replace")
            )
            return False
        self._forget_grant()
        self.grant = grant
        self._expiry = auth.watch(self.service.flusher.loop, grant, self._token_expired)
        log.debug("client id=%d addr=%s: authenticated (%s)", self.id, self.peer, grant.who())
        return True

    def _forget_grant(self) -> None:
        self.grant = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _token_expired(self) -> None:
        self._expiry = None
        if self._closed:
            return
        log.info("client id=%d addr=%s: token expired; closing", self.id, self.peer)
        self._unsubscribe_all()  # before anything else can be queued
        self.reply_error(
            b"NOAUTH the token expired: this connection is closed (AUTH with a fresh token "
            b"before the current one expires to keep a connection)"
        )
        self.close()

    def _allowed(self, names: list[bytes], *, pattern: bool = False) -> bool:
        """With an auth secret: reply NOPERM (and return False) unless the grant allows
        every name; nothing is subscribed then."""
        if self.service.auth is None:
            return True
        grant = self.grant
        assert grant is not None  # the command's access is TOKEN
        check = grant.allows_pattern if pattern else grant.allows_channel
        for raw in names:
            name = raw.decode("utf-8", "surrogateescape")
            if not check(name):
                self.reply_error(
                    b"NOPERM " + refusal(name, pattern=pattern).encode("utf-8", "surrogateescape")
                )
                return False
        return True

    def _room_for(self, names: list[bytes], *, pattern: bool = False) -> bool:
        """Reply an error (and return False) if subscribing to `names` would pass
        max_subscriptions; nothing is subscribed then."""
        held = self.patterns if pattern else self.channels
        new = {raw for raw in names if raw.decode("utf-8", "surrogateescape") not in held}
        limit = self.settings.max_subscriptions
        if len(self.channels) + len(self.patterns) + len(new) <= limit:
            return True
        self.reply_error(
            b"ERR too many subscriptions on this connection (max_subscriptions=%d): "
            b"unsubscribe some, or open another connection" % limit
        )
        return False

    # -- commands ----------------------------------------------------------------------------
    def execute(self, args: list[bytes]) -> None:
        name = args[0].lower()
        if (
            name == b"publish"
            and len(args) == 3
            and self.service.auth is None
            and (self.resp3 or not (self.channels or self.patterns))
        ):
            # what the table would do for a well-formed PUBLISH without auth, outside
            # RESP2 subscribed mode: straight to the handler (the many-channel hot path)
            self.cmd_publish(args)
            return
        cmd = COMMANDS.get(name)
        if cmd is None:
            if name == b"quit":  # redis handles QUIT before the table: any arguments go
                self.reply(_OK)
                self.close()
            elif name in (b"post", b"host:"):  # redis: an HTTP request, likely an attack
                self._log_end(f"sent an HTTP request ({name.decode()!r}); closing")
                self.close()
            elif name in _REDIS_ONLY and self._subscribed_resp2():
                self.reply_error(_CONTEXT_ERROR % name)
            else:
                self._unknown_command(args)
            return
        access = cmd.access
        if cmd.subcommands is not None and len(args) > 1:
            sub = cmd.subcommands.get(args[1].lower())
            if sub is None:
                self.reply_error(
                    b"ERR unknown subcommand '%b'. Try %b HELP." % (_arg(args[1]), name.upper())
                )
                return
            cmd = sub
        arity = cmd.arity
        if (arity > 0 and len(args) != arity) or len(args) < -arity:
            self.reply_error(b"ERR wrong number of arguments for '%b' command" % cmd.fullname)
            return
        if access and self.service.auth is not None:
            if self.grant is None:
                self.reply_error(_NOAUTH)
                return
            if access == ADMIN and not self.grant.admin:
                self.reply_error(b"NOPERM %b needs an admin token" % name.upper())
                return
        # AUTH in subscribed mode: a tidings extension, to replace a token before it expires
        reauth = cmd.handler is RespConnection.cmd_auth and self.service.auth is not None
        if not cmd.pubsub and not reauth and self._subscribed_resp2():
            self.reply_error(_CONTEXT_ERROR % cmd.fullname)
            return
        assert cmd.handler is not None  # containers have arity -2: no subcommand is an error
        cmd.handler(self, args)

    def _subscribed_resp2(self) -> bool:
        """RESP2 "subscribed mode": only a few commands are allowed (RESP3 has no such mode)."""
        return not self.resp3 and bool(self.channels or self.patterns)

    def _unknown_command(self, args: list[bytes]) -> None:
        quoted = b""
        for arg in args[1:]:
            if len(quoted) >= 128:
                break
            quoted += b"'%b' " % _arg(arg, 128 - len(quoted))
        self.reply_error(
            b"ERR unknown command '%b', with args beginning with: %b" % (_arg(args[0]), quoted)
        )

    def reply(self, data: bytes) -> None:
        self._write(data)

    def reply_error(self, message: bytes) -> None:
        self._write(resp.error(message))

    def _count(self) -> int:
        return len(self.channels) + len(self.patterns)

    def _confirm(self, kind: bytes, name: bytes | None) -> None:
        """A (un)subscribe confirmation: [kind, name, subscription count], as a push."""
        item = resp.null(self.resp3) if name is None else resp.bulk(name)
        self.reply(resp.push([resp.bulk(kind), item, resp.integer(self._count())], self.resp3))

    def _unsubscribe_all(self) -> None:
        self._replays.cancel_all()
        hub = self.hub
        for channel in self.channels:
            hub.unsubscribe(self, channel)
        for pattern in self.patterns:
            hub.punsubscribe(self, pattern)
        self.channels = {}
        self.patterns = {}

    # -- handlers, one per command, named after it ------------------------------------------
    def _check_filters(self, names: list[bytes]) -> bool:
        """Reply with an error (and return False) if a channel name's row filter is bad."""
        for raw in names:
            if b"?" in raw:
                try:
                    split(raw.decode("utf-8", "surrogateescape"))
                except FilterError as exc:
                    self.reply_error(
                        b"ERR invalid filter in channel '%b': %b"
                        % (_arg(raw), str(exc).encode("utf-8", "replace"))
                    )
                    return False
        return True

    def cmd_subscribe(self, args: list[bytes]) -> None:
        names = args[1:]
        if not (self._check_filters(names) and self._allowed(names) and self._room_for(names)):
            return
        for raw in args[1:]:
            channel = raw.decode("utf-8", "surrogateescape")
            if channel not in self.channels:
                self.channels[channel] = None
                self.hub.subscribe(self, channel)
            self._confirm(b"subscribe", raw)

    def cmd_unsubscribe(self, args: list[bytes]) -> None:
        names = args[1:] or [channel_bytes(c) for c in self.channels]
        if not names:
            self._confirm(b"unsubscribe", None)
        for raw in names:
            channel = raw.decode("utf-8", "surrogateescape")
            if channel in self.channels:
                del self.channels[channel]
                self.hub.unsubscribe(self, channel)
                for replay in self._replays:
                    replay.discard(channel)
            self._confirm(b"unsubscribe", raw)

    def cmd_psubscribe(self, args: list[bytes]) -> None:
        if not (self._allowed(args[1:], pattern=True) and self._room_for(args[1:], pattern=True)):
            return
        for raw in args[1:]:
            pattern = raw.decode("utf-8", "surrogateescape")
            if pattern not in self.patterns:
                self.patterns[pattern] = None
                self.hub.psubscribe(self, pattern)
            self._confirm(b"psubscribe", raw)

    def cmd_punsubscribe(self, args: list[bytes]) -> None:
        names = args[1:] or [channel_bytes(p) for p in self.patterns]
        if not names:
            self._confirm(b"punsubscribe", None)
        for raw in names:
            pattern = raw.decode("utf-8", "surrogateescape")
            if pattern in self.patterns:
                del self.patterns[pattern]
                self.hub.punsubscribe(self, pattern)
                for replay in self._replays:
                    replay.discard(pattern, pattern=True)
            self._confirm(b"punsubscribe", raw)

    def cmd_tidings_subscribe(self, args: list[bytes]) -> None:
        self._resume(args, pattern=False)

    def cmd_tidings_psubscribe(self, args: list[bytes]) -> None:
        self._resume(args, pattern=True)

    def _resume(self, args: list[bytes], *, pattern: bool) -> None:
        """TIDINGS.(P)SUBSCRIBE since-id name...: confirm like (P)SUBSCRIBE, then replay.

        Names this connection is already subscribed to are confirmed and left as
        they are (their events are flowing already; replaying them would repeat).
        """
        since = resp.parse_int(args[1])
        if since is None:
            self.reply_error(b"ERR since-id must be an integer event id, not '%b'" % _arg(args[1]))
            return
        try:
            check_since(since, self.hub.next_id)
        except ResumeError as exc:
            self.reply_error(b"ERR " + str(exc).encode())
            return
        if not pattern and not self._check_filters(args[2:]):
            return
        if not (
            self._allowed(args[2:], pattern=pattern) and self._room_for(args[2:], pattern=pattern)
        ):
            return
        subscribed = self.patterns if pattern else self.channels
        kind = b"psubscribe" if pattern else b"subscribe"
        fresh: list[str] = []
        for raw in args[2:]:
            name = raw.decode("utf-8", "surrogateescape")
            if name not in subscribed:
                subscribed[name] = None
                fresh.append(name)
            self._confirm(kind, raw)
        if not fresh:
            return
        if pattern:
            replay = self.hub.resume(self, since, patterns=fresh)
        else:
            replay = self.hub.resume(self, since, channels=fresh)
        self._replays.add(replay)

    def cmd_tidings_snapshot(self, args: list[bytes]) -> None:
        """TIDINGS.SNAPSHOT channel: replies once the snapshot is open (later commands wait)."""
        raw = args[1]
        if not (self._allowed([raw]) and self._room_for([raw])):
            return
        snapshots = self.service.snapshots
        if snapshots is None:
            self.reply_error(
                b"ERR TIDINGS.SNAPSHOT needs a MySQL source (start tidings with --mysql)"
            )
            return
        name = raw.decode("utf-8", "surrogateescape")
        if name in self.channels or any(
            isinstance(r, SnapshotStream) and r.name == name and not r.done for r in self._replays
        ):
            self.reply_error(
                b"ERR already subscribed to '%b': UNSUBSCRIBE it first (a snapshot would "
                b"repeat what it delivers)" % _arg(raw)
            )
            return
        try:
            stream = snapshots.request(self, name)
        except SnapshotRequestError as exc:
            self.reply_error(b"ERR " + str(exc).encode("utf-8", "replace"))
            return
        self._replays.add(stream)
        self._waiting = stream.task  # no reply yet: commands behind this one wait for it

    # the SnapshotClient side (tidings.wire.snapshot_stream), called from the stream's task
    def snapshot_opened(self, stream: SnapshotStream) -> None:
        self.channels[stream.name] = None
        self._confirm(b"subscribe", channel_bytes(stream.name))
        self._snapshot_replied(stream)

    def snapshot_failed(self, stream: SnapshotStream, message: str) -> None:
        self._replays.remove(stream)
        self.reply_error(b"ERR " + message.encode("utf-8", "replace"))
        if stream.name in self.channels:  # it failed while reading rows: it ends here
            del self.channels[stream.name]
            self._confirm(b"unsubscribe", channel_bytes(stream.name))
        self._snapshot_replied(stream)
        self._replays.run()

    def snapshot_wake(self, stream: SnapshotStream) -> None:
        if not self._closed:
            self._replays.run()

    def replay_wake(self, replay: Replay) -> None:
        if not self._closed:
            self._replays.run()

    def _snapshot_replied(self, stream: SnapshotStream) -> None:
        """The snapshot's first reply is out: run the commands that waited behind it."""
        if self._waiting is not stream.task:
            return
        self._waiting = None
        if self._closed:
            return
        if self._read_paused and not self.outbox.paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._run_commands()

    def cmd_ping(self, args: list[bytes]) -> None:
        if len(args) > 2:
            self.reply_error(b"ERR wrong number of arguments for 'ping' command")
        elif self._subscribed_resp2():
            payload = args[1] if len(args) > 1 else b""
            self.reply(resp.array([resp.bulk(b"pong"), resp.bulk(payload)]))
        else:
            self.reply(resp.bulk(args[1]) if len(args) > 1 else _PONG)

    def cmd_reset(self, args: list[bytes]) -> None:
        self._unsubscribe_all()  # silently, as redis does
        self._forget_grant()  # as redis: the connection is no longer authenticated
        self._set_protocol(resp3=False)
        self.name = b""
        self.reply(b"+RESET\r\n")

    def cmd_echo(self, args: list[bytes]) -> None:
        self.reply(resp.bulk(args[1]))

    def cmd_select(self, args: list[bytes]) -> None:
        index = resp.parse_int(args[1])
        if index is None or not -(2**31) <= index < 2**31:
            self.reply_error(b"ERR value is not an integer or out of range")
        elif not 0 <= index < DATABASES:
            self.reply_error(b"ERR DB index is out of range")
        else:
            self.reply(_OK)

    def cmd_hello(self, args: list[bytes]) -> None:
        version = 0
        if len(args) >= 2:
            parsed = resp.parse_int(args[1])
            if parsed is None:
                self.reply_error(b"ERR Protocol version is not an integer or out of range")
                return
            if not 2 <= parsed <= 3:
                self.reply_error(b"NOPROTO unsupported protocol version")
                return
            version = parsed
        i = 2
        token: bytes | None = None
        name: bytes | None = None
        while i < len(args):
            more = len(args) - 1 - i
            option = args[i].lower()
            if option == b"auth" and more >= 2:
                token = args[i + 2]
                i += 3
                continue
            if option == b"setname" and more >= 1:
                name = args[i + 1]
                i += 2
                continue
            self.reply_error(b"ERR Syntax error in HELLO option '%b'" % _arg(args[i]))
            return
        # as redis: authenticate, then name, then switch the protocol; any error stops there
        if token is not None:
            if self.service.auth is None:
                self.reply_error(_NO_AUTH)
                return
            if not self._authenticate(token):
                return
        if name is not None and not self._set_name(name):
            return
        if version:
            self._set_protocol(resp3=version == 3)
        fields = [
            (b"server", resp.bulk(b"redis")),
            (b"version", resp.bulk(REDIS_VERSION.encode())),
            (b"proto", resp.integer(3 if self.resp3 else 2)),
            (b"id", resp.integer(self.id)),
            (b"mode", resp.bulk(b"standalone")),
            (b"role", resp.bulk(b"master")),
            (b"modules", b"*0\r\n"),
        ]
        body = b"".join(resp.bulk(key) + value for key, value in fields)
        self.reply(resp.map_header(len(fields), self.resp3) + body)

    def cmd_auth(self, args: list[bytes]) -> None:
        if len(args) > 3:
            self.reply_error(b"ERR syntax error")
        elif self.service.auth is not None:
            # AUTH <token> or AUTH <user> <token> (redis-py with a username): user ignored
            if self._authenticate(args[-1]):
                self.reply(_OK)
        elif len(args) == 2:
            self.reply_error(
                b"ERR AUTH <password> called without any password configured for the default "
                b"user. Are you sure your configuration is correct?"
            )
        else:
            self.reply_error(_NO_AUTH)

    def _set_name(self, name: bytes) -> bool:
        if any(not 0x21 <= c <= 0x7E for c in name):
            self.reply_error(
                b"ERR Client names cannot contain spaces, newlines or special characters."
            )
            return False
        self.name = name
        return True

    def cmd_client_setname(self, args: list[bytes]) -> None:
        if self._set_name(args[2]):
            self.reply(_OK)

    def cmd_client_getname(self, args: list[bytes]) -> None:
        self.reply(resp.bulk(self.name) if self.name else resp.null(self.resp3))

    def cmd_client_id(self, args: list[bytes]) -> None:
        self.reply(resp.integer(self.id))

    def cmd_client_setinfo(self, args: list[bytes]) -> None:
        # redis 7.2; redis-py sends it on connect
        attr, value = args[2], args[3]
        if attr.lower() not in (b"lib-name", b"lib-ver"):
            self.reply_error(b"ERR Unrecognized option '%b'" % _arg(attr))
        elif any(not 0x21 <= c <= 0x7E for c in value):
            self.reply_error(
                b"ERR %b cannot contain spaces, newlines or special characters." % _arg(attr)
            )
        else:
            if attr.lower() == b"lib-name":
                self.lib_name = value
            else:
                self.lib_ver = value
            self.reply(_OK)

    def cmd_client_info(self, args: list[bytes]) -> None:
        self.reply(resp.bulk(self.client_info() + b"\n"))

    def client_info(self) -> bytes:
        """This client's line in redis's CLIENT INFO / CLIENT LIST format (a subset)."""
        return (
            b"id=%d addr=%b name=%b db=0 sub=%d psub=%d qbuf=%d omem=%d resp=%d "
            b"lib-name=%b lib-ver=%b"
            % (
                self.id,
                self.peer.encode(),
                self.name,
                len(self.channels),
                len(self.patterns),
                len(self.parser._buf),
                self.outbox.queued,
                3 if self.resp3 else 2,
                self.lib_name,
                self.lib_ver,
            )
        )

    def cmd_client_help(self, args: list[bytes]) -> None:
        self._help(b"CLIENT", _CLIENT_HELP)

    def _help(self, name: bytes, lines: tuple[bytes, ...]) -> None:
        head = b"%b <subcommand> [<arg> [value] [opt] ...]. Subcommands are:" % name
        items = [head, *lines, b"HELP", b"    Print this help."]
        self.reply(resp.array([resp.simple(line) for line in items]))

    def cmd_pubsub_channels(self, args: list[bytes]) -> None:
        if len(args) > 3:
            self.reply_error(
                b"ERR unknown subcommand or wrong number of arguments for '%b'. "
                b"Try PUBSUB HELP." % _arg(args[1])
            )
            return
        names = list(self.hub.channels())
        if len(args) == 3:
            glob = GlobPattern(args[2].decode("utf-8", "surrogateescape"))
            names = [name for name in names if glob.matches(name)]
        self.reply(resp.array([resp.bulk(channel_bytes(name)) for name in names]))

    def cmd_pubsub_numsub(self, args: list[bytes]) -> None:
        items: list[bytes] = []
        for raw in args[2:]:
            count = self.hub.subscriber_count(raw.decode("utf-8", "surrogateescape"))
            items += (resp.bulk(raw), resp.integer(count))
        self.reply(resp.array(items))

    def cmd_pubsub_numpat(self, args: list[bytes]) -> None:
        self.reply(resp.integer(self.hub.pattern_count()))

    def cmd_pubsub_shardchannels(self, args: list[bytes]) -> None:
        self.reply(b"*0\r\n")  # no sharded pub/sub here: always empty

    def cmd_pubsub_shardnumsub(self, args: list[bytes]) -> None:
        self.reply(resp.array([part for raw in args[2:] for part in (resp.bulk(raw), b":0\r\n")]))

    def cmd_pubsub_help(self, args: list[bytes]) -> None:
        self._help(b"PUBSUB", _PUBSUB_HELP)

    def cmd_publish(self, args: list[bytes]) -> None:
        if not self.settings.allow_publish:
            self.reply_error(
                b"ERR PUBLISH is disabled on this server: "
                b"start tidings with --allow-publish to accept it"
            )
            return
        channel = args[1].decode("utf-8", "surrogateescape")
        if self.grant is not None and not self.grant.allows_publish(channel):
            self.reply_error(b"NOPERM this token does not allow publishing to '%b'" % _arg(args[1]))
            return
        publisher = self.service.publisher
        if publisher is None:  # no database: ids live in memory, publish at once
            self._write(b":%d\r\n" % self.hub.publish(channel, args[2]))  # resp.integer
            return
        # through the database (or the process that gives ids, with --workers), so the
        # message's id comes from where every other does. PUBLISHes pipelined behind it go
        # on at once (one batch for the database); replies keep their order, and any other
        # command waits for them
        future = asyncio.ensure_future(publisher(channel, args[2]))
        pending = self._publishing
        if pending is None:
            pending = self._publishing = deque()
        pending.append(future)
        future.add_done_callback(self._published)
        if len(pending) >= PUBLISH_PIPELINE:
            self._waiting = asyncio.ensure_future(self._after_publishes())

    def _published(self, _: object = None) -> None:
        """Reply to the PUBLISHes that are done, in the order they were sent."""
        pending = self._publishing
        while pending and pending[0].done():
            future = pending.popleft()
            exc = None if future.cancelled() else future.exception()
            if self._closed or future.cancelled():
                continue
            if exc is None:
                self.reply(resp.integer(future.result()))
            elif isinstance(exc, ValueError):
                self.reply_error(b"ERR " + str(exc).encode("utf-8", "replace"))
            else:
                log.warning("client id=%d addr=%s: PUBLISH failed: %s", self.id, self.peer, exc)
                self.reply_error(b"ERR PUBLISH failed: " + str(exc).encode("utf-8", "replace"))

    async def _after_publishes(self) -> None:
        """Wait until every pending PUBLISH has replied, then run what waited behind them."""
        while self._publishing:
            await asyncio.wait(list(self._publishing))
            self._published()
        self._waiting = None
        if self._closed:
            return
        if self._read_paused and not self.outbox.paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._run_commands()

    def cmd_info(self, args: list[bytes]) -> None:
        # the server section and the client count; `tidings_worker` says which process
        # of `tidings serve --workers N` answers (0: the only one)
        service = self.service
        lines = [
            b"# Server",
            b"redis_version:" + REDIS_VERSION.encode(),
            b"redis_mode:standalone",
            b"process_id:%d" % os.getpid(),
            b"tidings_worker:%d" % service.worker,
            b"",
            b"# Clients",
            b"connected_clients:%d" % service.connections_open,
            b"",
        ]
        self.reply(resp.bulk(b"\r\n".join(lines)))

    def cmd_command(self, args: list[bytes]) -> None:
        # redis-cli asks for COMMAND DOCS to build its hints; an empty answer is enough
        self.reply(b"*0\r\n")

    def cmd_command_count(self, args: list[bytes]) -> None:
        self.reply(resp.integer(len(COMMANDS) + 1))  # + QUIT, handled outside the table

    def cmd_command_docs(self, args: list[bytes]) -> None:
        self.reply(resp.map_header(0, self.resp3))

    def cmd_command_info(self, args: list[bytes]) -> None:
        none = b"_\r\n" if self.resp3 else b"*-1\r\n"
        self.reply(resp.array([none] * (len(args) - 2)))

    def cmd_command_list(self, args: list[bytes]) -> None:
        self.reply(resp.array([resp.bulk(name) for name in [*COMMANDS, b"quit"]]))

    def cmd_command_help(self, args: list[bytes]) -> None:
        self._help(b"COMMAND", _COMMAND_HELP)


# Redis 7.0 commands not implemented here. In RESP2 subscribed mode redis answers them with
# its "Can't execute" error rather than "unknown command"; so do we.
_REDIS_ONLY: Final = frozenset(
    (
        b"acl append asking bgrewriteaof bgsave bitcount bitfield bitfield_ro bitop bitpos "
        b"blmove blmpop blpop brpop brpoplpush bzmpop bzpopmax bzpopmin cluster config copy "
        b"dbsize debug decr decrby del discard dump eval eval_ro evalsha evalsha_ro exec "
        b"exists expire expireat expiretime failover fcall fcall_ro flushall flushdb function "
        b"geoadd geodist geohash geopos georadius georadius_ro georadiusbymember "
        b"georadiusbymember_ro geosearch geosearchstore get getbit getdel getex getrange "
        b"getset hdel hexists hget hgetall hincrby hincrbyfloat hkeys hlen hmget hmset "
        b"hrandfield hscan hset hsetnx hstrlen hvals incr incrby incrbyfloat info keys "
        b"lastsave latency lcs lindex linsert llen lmove lmpop lolwut lpop lpos lpush lpushx "
        b"lrange lrem lset ltrim memory mget migrate module monitor move mset msetnx multi "
        b"object persist pexpire pexpireat pexpiretime pfadd pfcount pfdebug pfmerge "
        b"pfselftest psetex psync pttl randomkey readonly readwrite rename renamenx replconf "
        b"replicaof restore restore-asking role rpop rpoplpush rpush rpushx sadd save scan "
        b"scard script sdiff sdiffstore set setbit setex setnx setrange shutdown sinter "
        b"sintercard sinterstore sismember slaveof slowlog smembers smismember smove sort "
        b"sort_ro spop spublish srandmember srem sscan strlen substr sunion sunionstore swapdb "
        b"sync time touch ttl type unlink unwatch wait watch xack xadd xautoclaim xclaim xdel "
        b"xgroup xinfo xlen xpending xrange xread xreadgroup xrevrange xsetid xtrim zadd zcard "
        b"zcount zdiff zdiffstore zincrby zinter zintercard zinterstore zlexcount zmpop "
        b"zmscore zpopmax zpopmin zrandmember zrange zrangebylex zrangebyscore zrangestore "
        b"zrank zrem zremrangebylex zremrangebyrank zremrangebyscore zrevrange zrevrangebylex "
        b"zrevrangebyscore zrevrank zscan zscore zunion zunionstore "
    ).split()
)

_NO_AUTH: Final = b"ERR AUTH is not supported: this server has no users or passwords"

_CLIENT_HELP: Final = (
    b"GETNAME",
    b"    Return the name of the current connection.",
    b"ID",
    b"    Return the ID of the current connection.",
    b"INFO",
    b"    Return information about the current client connection.",
    b"SETINFO <option> <value>",
    b"    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
    b"SETNAME <name>",
    b"    Assign the name <name> to the current connection.",
)
_PUBSUB_HELP: Final = (
    b"CHANNELS [<pattern>]",
    b"    Return the currently active channels matching a <pattern> (default: '*').",
    b"NUMPAT",
    b"    Return number of subscriptions to patterns.",
    b"NUMSUB [<channel> ...]",
    b"    Return the number of subscribers for the specified channels, excluding",
    b"    pattern subscriptions(default: no channels).",
)
_COMMAND_HELP: Final = (
    b"(no subcommand)",
    b"    Return details about all commands (none here).",
    b"COUNT",
    b"    Return the total number of commands in this server.",
    b"LIST",
    b"    Return a list of all commands in this server.",
)

C = RespConnection
COMMANDS: Final[dict[bytes, Command]] = {
    b"subscribe": Command(b"subscribe", -2, C.cmd_subscribe, pubsub=True, access=TOKEN),
    b"unsubscribe": Command(b"unsubscribe", -1, C.cmd_unsubscribe, pubsub=True),
    b"psubscribe": Command(b"psubscribe", -2, C.cmd_psubscribe, pubsub=True, access=TOKEN),
    b"punsubscribe": Command(b"punsubscribe", -1, C.cmd_punsubscribe, pubsub=True),
    b"tidings.subscribe": Command(
        b"tidings.subscribe", -3, C.cmd_tidings_subscribe, pubsub=True, access=TOKEN
    ),
    b"tidings.psubscribe": Command(
        b"tidings.psubscribe", -3, C.cmd_tidings_psubscribe, pubsub=True, access=TOKEN
    ),
    b"tidings.snapshot": Command(
        b"tidings.snapshot", 2, C.cmd_tidings_snapshot, pubsub=True, access=TOKEN
    ),
    b"ping": Command(b"ping", -1, C.cmd_ping, pubsub=True),
    b"reset": Command(b"reset", 1, C.cmd_reset, pubsub=True),
    b"publish": Command(b"publish", 3, C.cmd_publish, access=TOKEN),
    b"hello": Command(b"hello", -1, C.cmd_hello),
    b"info": Command(b"info", -1, C.cmd_info),
    b"auth": Command(b"auth", -2, C.cmd_auth),
    b"echo": Command(b"echo", 2, C.cmd_echo),
    b"select": Command(b"select", 2, C.cmd_select),
    b"client": _container(
        b"client",
        -2,
        {
            b"setname": (3, C.cmd_client_setname),
            b"getname": (2, C.cmd_client_getname),
            b"id": (2, C.cmd_client_id),
            b"setinfo": (4, C.cmd_client_setinfo),
            b"info": (2, C.cmd_client_info),
            b"help": (2, C.cmd_client_help),
        },
    ),
    b"pubsub": _container(
        b"pubsub",
        -2,
        {
            b"channels": (-2, C.cmd_pubsub_channels),
            b"numsub": (-2, C.cmd_pubsub_numsub),
            b"numpat": (2, C.cmd_pubsub_numpat),
            b"shardchannels": (-2, C.cmd_pubsub_shardchannels),
            b"shardnumsub": (-2, C.cmd_pubsub_shardnumsub),
            b"help": (2, C.cmd_pubsub_help),
        },
        access=ADMIN,  # channel names can tell who subscribes to what (filters: customer ids)
    ),
    b"command": _container(
        b"command",
        -1,
        {
            b"count": (2, C.cmd_command_count),
            b"docs": (-2, C.cmd_command_docs),
            b"info": (-2, C.cmd_command_info),
            b"list": (-2, C.cmd_command_list),
            b"help": (2, C.cmd_command_help),
        },
    )._replace(handler=C.cmd_command),
}
del C


# -- the listening side -----------------------------------------------------------------------
class RespService:
    """One RESP endpoint: its settings, open connections, counters and output flusher."""

    def __init__(
        self,
        hub: Hub,
        settings: RespSettings | None = None,
        *,
        publisher: Publisher | None = None,
        snapshots: SnapshotService | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings or RespSettings()
        #: with a database source, PUBLISH goes through it (see tidings.source.notify)
        self.publisher = publisher
        #: with a MySQL source, TIDINGS.SNAPSHOT (tidings.wire.snapshot_stream)
        self.snapshots = snapshots
        #: which worker process this is (tidings.workers; 0: the only process), for INFO
        self.worker = 0
        #: with an auth secret: checks tokens (tidings.wire.access); None: no authentication
        self.auth = Authority(self.settings.auth_secret) if self.settings.auth_secret else None
        #: open connections (a dict as an ordered set)
        self.connections: dict[RespConnection, None] = {}
        self.stats = RespStats()
        self._flusher: Flusher | None = None
        self._ids = itertools.count(1)
        self.servers: list[asyncio.Server] = []
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        #: connection limits, shared with the HTTP listener by the daemon
        self.admission = admission or Admission()
        self.clock = Clock(self._sweep)
        #: connections closed for being idle past admission.limits.idle_timeout
        self.idle_closed = 0
        #: connections the client reset or broke off (counted; one info line a minute)
        self.hangups = Hangups(log, "RESP")

    def _sweep(self, now: float) -> None:
        """Once a second: report hangups; close connections idle (no subscription, no
        request) too long."""
        self.hangups.tick(now)
        timeout = self.admission.limits.idle_timeout
        if timeout <= 0:
            return
        for conn in tuple(self.connections):
            if now - conn.active > timeout and conn.idle:
                self.idle_closed += 1
                log.info("client id=%d addr=%s: idle for %.0f s; closing", conn.id, conn.peer,
                         now - conn.active)  # fmt: skip
                conn.close()  # silently, as redis does: a reply nobody asked for would be
                # taken for the answer to the client's next command

    def _forget(self, conn: RespConnection) -> None:
        self.connections.pop(conn, None)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    @property
    def flusher(self) -> Flusher:
        if self._flusher is None:
            self._flusher = Flusher(asyncio.get_running_loop())
        return self._flusher

    @property
    def connections_open(self) -> int:
        return len(self.connections)

    @property
    def slow_consumers_cut(self) -> int:
        return self._flusher.stats.slow_consumers_cut if self._flusher else 0

    def protocol(self) -> RespConnection:
        """The protocol factory for `loop.create_server`."""
        self.stats.connections_total += 1
        return RespConnection(self, next(self._ids))

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
        """Listen on host:port; `backlog`: the `backlog` setting (asyncio's 100 is small);
        with `ssl`, TLS only (tidings.tls); `reuse_port`: SO_REUSEPORT, so that worker
        processes share the port."""
        loop = asyncio.get_running_loop()
        self._flusher = self._flusher or Flusher(loop)
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
        return server

    def close_clients(self) -> None:
        """Close every client connection, sending what is already queued first.

        No farewell, as redis does on shutdown: Redis clients take a closed
        connection for "reconnect" (redis-py's PubSub resubscribes by itself), but an
        error reply for a failed command, which would end their reconnect loop."""
        for conn in list(self.connections):
            conn.close()

    def stop_listening(self) -> None:
        for server in self.servers:
            server.close()
        self.clock.stop()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, close the clients and wait (up to `timeout`) for them to go."""
        self.stop_listening()
        self.close_clients()
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


async def start_resp_server(
    hub: Hub,
    host: str,
    port: int,
    settings: RespSettings | None = None,
    *,
    service: RespService | None = None,
) -> asyncio.Server:
    """Listen for Redis clients on host:port; pass `service` to keep its registry and counters."""
    if service is None:
        service = RespService(hub, settings)
    return await service.start(host, port)
