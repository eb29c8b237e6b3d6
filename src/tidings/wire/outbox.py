"""Bounded per-connection output with one coalesced flush per loop iteration.

Theory of operation. Every client connection, whatever its wire protocol, owns
an `Outbox`. Replies and fanned-out events are queued on it as `bytes` (for
events, the very object shared with every other subscriber). The first write
in a loop iteration registers the outbox with its `Flusher`, which schedules a
single `call_soon` callback; that callback writes each dirty connection's queue
with one `transport.write(b"".join(chunks))`. This is redis's
`handleClientsWithPendingWrites`: however many events one loop iteration
publishes, each client costs one join and one send. A queue that grows past
`EARLY_FLUSH` (or half the limit, if smaller) within one iteration is handed
to the transport at once, so a burst reaches the kernel without waiting for
the end of the iteration.

Bound. The bytes a connection holds are its queue plus the transport's own
buffer. When that would pass `limit`, the connection is a slow consumer and is
cut off: its queue is dropped, a farewell (e.g. a RESP `-ERR`) is written
after what the transport already holds (whole frames only, so the reason lands
on a frame boundary), and the transport is closed; if the peer has not read it
all within `LINGER` seconds, the transport is aborted. Like redis's
`client-output-buffer-limit pubsub`, but a hard limit only. While the
transport reports `pause_writing` (its buffer is above its high-water mark),
the outbox stops handing it data and just queues, so the bound is measured in
one place.

Compiled flush. When the extension `tidings.wire._cflush` is built (setup.py) and
`TIDINGS_PURE_PYTHON` is not set, the flush callback hands the dirty list to C, which sends
each plain-TCP outbox's queue with one send(2) on the socket's descriptor, skipping the
Python calls and the event loop's `transport.write`; only while the transport is not
closing and holds nothing (checked right before each send), so bytes stay in order and a
descriptor number is never written after the transport let it go. Every other case (TLS,
paused, closed, a partial or failed send) goes through `Outbox.flush` below, as without
the extension.

Nothing here awaits: `write` is called synchronously from the hub's fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from tidings.native import pure_python

__all__ = [
    "COMPILED",
    "EARLY_FLUSH",
    "FLUSH_LOOP",
    "Flusher",
    "Outbox",
    "OutboxStats",
    "open_outbox",
    "peer_name",
    "plain_socket_fd",
]

#: queue size at which an outbox writes to its transport without waiting for the flush callback
EARLY_FLUSH = 64 * 1024
#: seconds a gracefully closing connection may take to drain before it is aborted
LINGER = 5.0

log = logging.getLogger("tidings.wire.outbox")


def _load_cflush() -> tuple[ModuleType | None, str]:
    """The compiled flush loop, unless absent (no compiler at install) or switched off;
    and which loop runs, in words for the start-up log."""
    if pure_python():
        return None, "pure Python (TIDINGS_PURE_PYTHON is set)"
    try:
        from tidings.wire import _cflush
    except ImportError:
        return None, "pure Python (the extension tidings.wire._cflush is not built)"
    return _cflush, "compiled (plain TCP queues sent from C)"


_cflush, FLUSH_LOOP = _load_cflush()
#: whether `Flusher` sends plain-TCP queues from C (see the module docstring)
COMPILED = _cflush is not None


@dataclass(slots=True)
class OutboxStats:
    """Counters shared by the outboxes of one `Flusher` (read by metrics)."""

    #: connections cut off because their output passed the limit
    slow_consumers_cut: int = 0
    #: writes to connections (transport.write, or a send(2) of the compiled flush) and the
    #: bytes they carried
    writes: int = 0
    bytes_written: int = 0
    #: flush callbacks run (loop iterations that had output)
    flushes: int = 0


class Flusher:
    """Flushes every dirty outbox once per loop iteration, from one callback."""

    __slots__ = ("_dirty", "_last_log", "_loop", "_scheduled", "_suppressed", "stats")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._dirty: list[Outbox] = []
        self._scheduled = False
        self.stats = OutboxStats()
        self._last_log = -1e9
        self._suppressed = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add(self, box: Outbox) -> None:
        self._dirty.append(box)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        stats = self.stats
        stats.flushes += 1
        dirty, self._dirty = self._dirty, []
        if _cflush is not None:
            # the C sends' counts; the outboxes it passes to Outbox.flush() count their own
            writes, sent = _cflush.flush(dirty)
            stats.writes += writes
            stats.bytes_written += sent
            return
        for box in dirty:
            box.flush()

    def log_cut(
        self, logger: logging.Logger, who: str, held: int, limit: int, largest: int = 0
    ) -> None:
        """Log a cut-off, at most once a second (a stall can cut thousands at once)."""
        now = self._loop.time()
        if now - self._last_log < 1.0:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        if largest > limit:
            more += f"; one frame alone is {largest} bytes: raise the output limit above it"
        logger.warning(
            "cut off slow consumer %s: %d bytes of output pending, limit %d%s",
            who,
            held,
            limit,
            more,
        )
        self._last_log = now
        self._suppressed = 0


class Outbox:
    """The output queue of one connection; see the module docstring."""

    __slots__ = (
        "_backlog",
        "_chunks",
        "_dirty",
        "_early",
        "_fd",
        "_linger",
        "_paused",
        "_size",
        "_threshold",
        "closed",
        "farewell",
        "flusher",
        "limit",
        "logger",
        "name",
        "on_cut",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        flusher: Flusher,
        limit: int,
        *,
        farewell: bytes = b"",
        name: str = "",
        logger: logging.Logger = log,
        on_cut: Callable[[], None] | None = None,
        fd: int = -1,
    ) -> None:
        self.transport = transport
        self.flusher = flusher
        self.limit = limit
        #: written, best effort, to a connection cut off for being slow
        self.farewell = farewell
        self.name = name
        self.logger = logger
        #: called once the connection is cut (e.g. to leave the hub at once)
        self.on_cut = on_cut
        #: set once the connection is cut, closing or lost: later writes are dropped
        self.closed = False
        self._chunks: list[bytes] = []
        self._size = 0  # bytes in _chunks
        # transport.get_write_buffer_size() as of our last write to it: exact or too high
        # (the transport only drains between our writes), so it is refreshed only when the
        # sum looks over the limit
        self._backlog = 0
        self._dirty = False  # registered with the flusher for this iteration
        self._paused = False  # the transport asked us to stop (pause_writing)
        self._linger: asyncio.TimerHandle | None = None
        self._threshold = 0  # write() takes the slow path when the queue passes this
        self._early = max(1, min(EARLY_FLUSH, limit // 2))  # queue size that flushes at once
        self._update_threshold()
        #: the transport's plain TCP socket, which the compiled flush may send to; -1: never
        self._fd = fd

    @property
    def queued(self) -> int:
        """Bytes waiting in this outbox (not counting the transport's buffer)."""
        return self._size

    @property
    def paused(self) -> bool:
        return self._paused

    def room(self) -> int:
        """Bytes a paced producer (a history replay) may queue now: up to half the limit
        held in all, nothing while the transport is paused or the outbox closed."""
        if self.closed or self._paused:
            return 0
        return self.limit // 2 - self._size - self.transport.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        """Queue `data`; cut the connection off if its output passes the limit."""
        size = self._size + len(data)
        if size > self._threshold:  # early-flush size, limit or closed: the rare cases
            self._write_slow(data, size)
            return
        self._chunks.append(data)
        self._size = size
        if not self._dirty:
            self._dirty = True
            self.flusher.add(self)

    def _write_slow(self, data: bytes, size: int) -> None:
        if self.closed:
            return
        self._chunks.append(data)
        self._size = size
        if size + self._backlog > self.limit:
            self._check_limit()
            return
        if not self._dirty:
            self._dirty = True
            self.flusher.add(self)
        if size >= self._early and not self._paused:
            self._send()

    def _update_threshold(self) -> None:
        """Precompute the one number `write` compares against (keeps the hot path short)."""
        if self.closed:
            self._threshold = -1
        else:
            room = self.limit - self._backlog
            self._threshold = room if self._paused else min(room, self._early - 1)

    def flush(self) -> None:
        """Hand the queue to the transport (called by the flusher once per iteration)."""
        self._dirty = False
        if self._chunks and not self._paused and not self.closed:
            self._send()

    def write_eof(self) -> None:
        """Hand the queue over, then half-close the transport (OSError if the peer is gone).
        From then on the transport refuses writes, and the compiled flush sends none: its
        shutdown(2) may still be pending in the loop, so a send could land before the EOF."""
        self.flush()
        self._fd = -1
        self.transport.write_eof()

    def _send(self) -> None:
        transport = self.transport
        if transport.is_closing():  # lost or aborted; connection_lost() is on its way
            self._drop()
            return
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # the same list again: a new one per send outlives the garbage collector's young
        # generations (it waits for the connection's next send) and sets off full collections
        chunks.clear()
        self._size = 0
        transport.write(data)
        backlog = transport.get_write_buffer_size()
        if backlog != self._backlog:  # almost always 0 == 0: the kernel took it all
            self._backlog = backlog
            self._update_threshold()
        stats = self.flusher.stats
        stats.writes += 1
        stats.bytes_written += len(data)

    def _check_limit(self) -> None:
        transport = self.transport
        self._backlog = transport.get_write_buffer_size()
        held = self._size + self._backlog
        # one event larger than the limit still reaches a connection with nothing else pending:
        # a big row must not disconnect every subscriber of its table
        if held <= self.limit or (self._backlog == 0 and len(self._chunks) == 1):
            self._update_threshold()
            if not self._dirty:
                self._dirty = True
                self.flusher.add(self)
            return
        self.flusher.stats.slow_consumers_cut += 1
        largest = max(map(len, self._chunks))
        self.flusher.log_cut(self.logger, self.name, held, self.limit, largest)
        self._chunks = []  # what never reached the transport is dropped: the bound holds
        self._size = 0
        self.close(last_words=self.farewell)
        if self.on_cut is not None:
            self.on_cut()

    def _drop(self) -> None:
        self.closed = True
        self._threshold = -1
        self._chunks = []
        self._size = 0

    # -- flow control (forward the protocol's pause_writing/resume_writing here) -----------
    def pause_writing(self) -> None:
        self._paused = True
        self._update_threshold()

    def resume_writing(self) -> None:
        self._paused = False
        self._update_threshold()
        if self._chunks and not self.closed:
            self._send()

    # -- ending ------------------------------------------------------------------------------
    def close(self, linger: float = LINGER, last_words: bytes = b"") -> None:
        """Send what is queued and `last_words`, then close; abort if the peer has not
        drained it all within `linger` seconds."""
        if self.closed:
            return
        transport = self.transport
        if transport.is_closing():
            self._drop()
            return
        if self._chunks:
            self._send()  # even when paused: the queue is bounded and this is the last write
        self._drop()
        if last_words:
            # the transport only ever holds whole frames, so these land after the last one
            transport.write(last_words)
        transport.close()
        if transport.get_write_buffer_size():
            self._linger = self.flusher.loop.call_later(linger, transport.abort)

    def lost(self) -> None:
        """The connection is gone (call from connection_lost): drop everything, and the
        callback too: it is a bound method of the connection, and that cycle would leave
        the connection to the cyclic GC instead of reference counting."""
        self._drop()
        self.on_cut = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None


def peer_name(transport: asyncio.BaseTransport) -> str:
    """`host:port` of the client, for logs."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "?"


def open_outbox(
    transport: asyncio.Transport,
    flusher: Flusher,
    limit: int,
    *,
    farewell: bytes,
    name: str,
    logger: logging.Logger,
    on_cut: Callable[[], None],
) -> Outbox:
    """The outbox of a new connection, whatever its protocol.

    A replay (resume) waits for the transport to resume writing before it sends
    more; with a small output limit the transport must pause well below it, or
    "not paused" would not mean "room".
    """
    high = limit // 4
    if high < transport.get_write_buffer_limits()[1]:
        transport.set_write_buffer_limits(high=high)
    return Outbox(
        transport,
        flusher,
        limit,
        farewell=farewell,
        name=name,
        logger=logger,
        on_cut=on_cut,
        fd=plain_socket_fd(transport),
    )


def _plain_transports() -> tuple[type, ...]:
    """The transport classes that write their socket as is (no TLS layer in between)."""
    import asyncio.selector_events as selector_events

    # private names, not in the type stubs; a rename only turns the compiled path off
    kinds: list[object] = [getattr(selector_events, "_SelectorSocketTransport", None)]
    try:
        import uvloop.loop

        kinds += [
            getattr(uvloop.loop, "TCPTransport", None),
            getattr(uvloop.loop, "UnixTransport", None),
        ]
    except ImportError:
        pass
    return tuple(kind for kind in kinds if isinstance(kind, type))


_PLAIN = _plain_transports()


def plain_socket_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor the compiled flush may send to for `transport`, or -1.

    Only for the loops' own plain stream transports: a TLS transport reports its socket
    too (get_extra_info("socket")), but bytes written there would bypass the encryption.
    """
    if _cflush is None or type(transport) not in _PLAIN:
        return -1
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return -1
    return int(sock.fileno())


if _cflush is not None:
    _cflush.bind(Outbox)  # raises if the slots it uses changed: fix it, do not hide it
