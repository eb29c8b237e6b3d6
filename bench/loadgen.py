"""The subscriber load generator shared by every scale benchmark.

One `Fleet` is several worker processes, each holding a share of the client
connections over raw non-blocking sockets and one `select.epoll`, from its own
127.0.0.x source address (so no process and no source address runs out of
descriptors or ephemeral ports). The same fleet drives tidings, redis-server
and PostgreSQL: a connection is just `hello` bytes to send and a `terminator`
to wait for (`times` times) before it counts as ready: a RESP SUBSCRIBE and
its confirmation, a WebSocket upgrade + subscribe message and its
`subscribed` reply, or a PostgreSQL startup + LISTEN and two ReadyForQuery.

After the handshake a worker does one of three things, as the parent says:

- count: add up the bytes received; every message has the same frame size, so
  bytes / frame size is the message count (no parsing: the generator stays cheap);
- stamps: note the receipt time of each read and keep its bytes; once the run is
  over, find each `T=<19 digits>` (time.time_ns() at the sender) and keep receipt
  time minus stamp, one sample per message per connection (parsing after the run
  keeps the generator's per-message cost, which delays later sockets, small);
- idle: hold the connections and read nothing (the default between commands);
- drain: read and discard until the server has closed each connection or nothing
  came for a while; report how many it closed (stalled subscribers, cut off).

A WebSocket connection also sends a pong every KEEPALIVE seconds, whatever the mode
(the server closes a client that stays silent for a whole ping interval, as a
browser never does), and the server's keepalive pings are left out of byte counts.

Each worker reports its own CPU seconds for the measured phase (time.process_time), so a
table can show whether the generator or the server was the bottleneck.
Publishers (`publish`) are plain blocking sockets in their own processes.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import multiprocessing as mp
import os
import re
import select
import socket
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from harness import raise_nofile, resp_command

from tidings.wire import websocket as ws
from tidings.wire.ws_session import KEEPALIVE_PING

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the source port at connect(), per destination
STAMP = re.compile(rb"T=(\d{19})")
HANDSHAKE_BATCH = 256  # connections in flight before waiting for their handshakes
QUIET = 5.0  # seconds without data after which a worker gives up waiting for the rest
KEEPALIVE = 15.0  # seconds between a WebSocket client's pongs (tidings pings every 20 s)
WS_MASK = b"\x1f\x2e\x3d\x4c"  # a client's frames must be masked; the key need not vary here

_ctx = mp.get_context("fork")


@dataclass(slots=True, frozen=True)
class Hello:
    """What one connection sends first, and what ends its handshake."""

    data: bytes
    terminator: bytes
    times: int = 1
    #: sent every KEEPALIVE seconds while the connection is held
    keepalive: bytes = b""
    #: a frame the server sends unasked (a keepalive ping), left out of byte counts
    noise: bytes = b""


def resp_subscribe(*channels: bytes) -> Hello:
    return Hello(resp_command(b"SUBSCRIBE", *channels), b":%d\r\n" % len(channels))


def ws_subscribe(channel: bytes) -> Hello:
    """A WebSocket upgrade of `GET /ws` and, pipelined behind it, a subscribe message."""
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    subscribe = b'{"op":"subscribe","channel":"%b"}' % channel
    return Hello(
        upgrade + ws.mask_frame(ws.OP_TEXT, subscribe, WS_MASK),
        b'"op":"subscribed"',
        keepalive=ws.mask_frame(ws.OP_PONG, b"", WS_MASK),
        noise=KEEPALIVE_PING,
    )


def pg_listen(channel: str, user: str = "postgres", database: str = "postgres") -> Hello:
    params = b"user\0%b\0database\0%b\0\0" % (user.encode(), database.encode())
    startup = (8 + len(params)).to_bytes(4, "big") + (196608).to_bytes(4, "big") + params
    sql = f"LISTEN {channel}".encode() + b"\0"
    query = b"Q" + (4 + len(sql)).to_bytes(4, "big") + sql
    # pipelined: the backend reads the query only once authentication is done
    return Hello(startup + query, b"Z\x00\x00\x00\x05I", 2)


def resp_message_size(channel: bytes, payload_size: int) -> int:
    """Bytes of one RESP2 pub/sub message frame."""
    return (
        len(
            b"*3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n\r\n"
            % (len(channel), channel, payload_size)
        )
        + payload_size
    )


def ws_message_size(payload_size: int) -> int:
    """Bytes of one WebSocket text frame (an event, or a PUBLISHed UTF-8 payload)."""
    return len(ws.text_frame(b"x" * payload_size))


@dataclass(slots=True, frozen=True)
class Expect:
    """What connection i must receive: `published` messages went round-robin over `channels`
    channels, connection i listens on channel i % channels; `unit` bytes per message (count
    mode) or 1 (stamps mode). Picklable, unlike a lambda: it crosses to the workers."""

    published: int
    channels: int = 1
    unit: int = 1

    def __call__(self, i: int) -> int:
        k = i % self.channels
        n = self.published // self.channels + (1 if k < self.published % self.channels else 0)
        return n * self.unit


@dataclass(slots=True)
class Report:
    """What one worker measured."""

    connections: int = 0
    received: int = 0  # bytes
    messages: int = 0
    #: connections that received less than expected, and connections the server closed
    short: int = 0
    closed: int = 0
    first: float = 0.0  # time.monotonic() of the first and last receipt (system-wide clock)
    last: float = 0.0
    cpu: float = 0.0
    samples: bytes = b""  # array('q') of latencies in ns (stamps mode)
    errors: list[str] = field(default_factory=list)


def _connect(host: str, port: int, source: str, *, wait: bool = True) -> socket.socket:
    """A non-blocking socket connected from `source`; with wait=False the connection may
    still be in progress (EPOLLOUT says when it is done, SO_ERROR how)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if wait:
            sock.connect((host, port))
            sock.setblocking(False)
        else:
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
    except OSError:
        sock.close()
        raise
    return sock


def _worker(
    ctrl: Connection, host: str, port: int, source: str, hellos: Sequence[tuple[int, Hello]]
) -> None:
    raise_nofile()
    # no cyclic GC: collections over the reads kept in stamps mode are pauses of many ms,
    # which would show up as server latency (nothing here makes reference cycles)
    gc.disable()
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    index: dict[int, int] = {}  # fd -> position in hellos
    try:
        _handshake(ep, socks, index, host, port, source, hellos)
    except Exception as exc:  # tell the parent instead of hanging it
        ctrl.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    ctrl.send(("ready", len(socks)))
    ep.register(ctrl.fileno(), select.EPOLLIN)
    by_number = dict(hellos)
    heart = Heartbeat([(s, by_number[index[fd]].keepalive) for fd, s in socks.items()])
    noise = {fd: by_number[index[fd]].noise for fd in socks if by_number[index[fd]].noise}
    while True:
        while not ctrl.poll(heart.wait()):
            heart.beat(time.monotonic())
        command, arg = ctrl.recv()
        if command == "close":
            break
        if command == "count":
            report = _measure(ep, ctrl, socks, index, arg, heart, noise, stamps=False)
            ctrl.send(("report", report))
        elif command == "stamps":
            report = _measure(ep, ctrl, socks, index, arg, heart, noise, stamps=True)
            ctrl.send(("report", report))
        elif command == "drain":
            ctrl.send(("report", _drain(ep, socks, arg)))
    for sock in socks.values():
        sock.close()
    ctrl.send(("closed", None))


class Heartbeat:
    """Keepalive frames for the connections whose hello has one, every KEEPALIVE seconds."""

    __slots__ = ("due", "targets")

    def __init__(self, targets: list[tuple[socket.socket, bytes]]) -> None:
        self.targets = [(sock, data) for sock, data in targets if data]
        self.due = time.monotonic() + KEEPALIVE

    def wait(self) -> float | None:
        """Seconds until the next beat (None: never)."""
        return max(0.0, self.due - time.monotonic()) if self.targets else None

    def beat(self, now: float) -> None:
        if not self.targets or now < self.due:
            return
        for sock, data in self.targets:
            with contextlib.suppress(OSError):  # closed by the server: nobody to keep alive
                sock.send(data)
        self.due = now + KEEPALIVE


def _handshake(
    ep: select.epoll,
    socks: dict[int, socket.socket],
    index: dict[int, int],
    host: str,
    port: int,
    source: str,
    hellos: Sequence[tuple[int, Hello]],
) -> None:
    pending: dict[int, bytes] = {}
    by_number = dict(hellos)
    deadline = time.monotonic() + 120
    for lo in range(0, len(hellos), HANDSHAKE_BATCH):
        for i in range(lo, min(lo + HANDSHAKE_BATCH, len(hellos))):
            number, hello = hellos[i]
            sock = _connect(host, port, source)
            fd = sock.fileno()
            socks[fd] = sock
            index[fd] = number
            sock.send(hello.data)
            pending[fd] = b""
            ep.register(fd, select.EPOLLIN)
        # wait for this batch before opening more: the server's accept queue stays short
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} handshakes unfinished")
            for fd, _ in ep.poll(1.0):
                data = socks[fd].recv(65536)
                if not data:
                    raise ConnectionError("server closed a connection during the handshake")
                got = pending[fd] + data
                hello = by_number[index[fd]]
                if got.count(hello.terminator) >= hello.times:
                    del pending[fd]
                else:
                    pending[fd] = got


def _measure(
    ep: select.epoll,
    ctrl: Connection,
    socks: dict[int, socket.socket],
    index: dict[int, int],
    expect_of: Expect | None,
    heart: Heartbeat,
    noise: dict[int, bytes],
    *,
    stamps: bool,
) -> Report:
    """Receive until the parent's expectation (sent later as ("expect", f)) is met.

    `expect_of(i)` is what connection i must receive: bytes in count mode, messages
    in stamps mode. `noise[fd]`: a frame of fd's server left out of the byte count.
    """
    t_cpu = time.process_time()
    report = Report(connections=len(socks))
    got: dict[int, int] = dict.fromkeys(socks, 0)
    tail: dict[int, bytes] = dict.fromkeys(socks, b"")  # last byte read: "T" + "=" split
    noise_tail: dict[int, bytes] = dict.fromkeys(noise, b"")  # a noise frame split in two
    reads: list[tuple[int, int, bytes]] = []  # (fd, time.time_ns(), bytes) in stamps mode
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    ctrl_fd = ctrl.fileno()
    expected_total = -1
    total = 0
    last_data = time.monotonic()
    if expect_of is not None:
        expected_total = sum(expect_of(index[fd]) for fd in socks)
    ctrl.send(("measuring", None))
    open_socks = dict(socks)
    while True:
        events = ep.poll(0.5)
        now = time.monotonic()
        heart.beat(now)
        for fd, _ in events:
            if fd == ctrl_fd:
                command, arg = ctrl.recv()
                if command == "expect":
                    expect_of = arg
                    expected_total = sum(arg(index[f]) for f in socks)
                continue
            sock = open_socks.get(fd)
            if sock is None:
                continue
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                report.errors.append(repr(exc))
                n = 0
            if n == 0:
                report.closed += 1
                ep.unregister(fd)
                del open_socks[fd]
                continue
            if not report.first:
                report.first = now
            report.last = time.monotonic()
            last_data = report.last
            size = n  # bytes of messages
            pattern = noise.get(fd)
            if pattern is not None:  # the server's pings are no messages
                size -= len(pattern) * _count_noise(pattern, buf, n, noise_tail, fd)
            report.received += size
            if stamps:
                chunk = bytes(view[:n])
                reads.append((fd, time.time_ns(), chunk))
                k = (tail[fd] + chunk).count(b"T=")
                tail[fd] = chunk[-1:]
                got[fd] += k
                total += k
            else:
                got[fd] += size
                total += size
        if expected_total >= 0 and total >= expected_total:
            break
        if expected_total >= 0 and now - last_data > QUIET:
            report.errors.append(f"quiet for {QUIET}s with {total} of {expected_total} received")
            break
    report.cpu = time.process_time() - t_cpu
    report.messages = total if stamps else 0
    assert expect_of is not None
    report.short = sum(1 for fd, n in got.items() if n < expect_of(index[fd]))
    report.samples = _stamps(reads).tobytes() if stamps else b""
    return report


def _count_noise(pattern: bytes, buf: bytearray, n: int, tails: dict[int, bytes], fd: int) -> int:
    """Occurrences of `pattern` in buf[:n], and across the boundary with fd's last read.

    Most reads hold none: a memchr for its first byte (tens of GB/s) rules them out before
    the slower substring count."""
    keep = len(pattern) - 1
    head = pattern[:1]
    found = 0
    previous = tails[fd]
    if previous:  # keep bytes there and keep bytes here cannot hold a whole one: no double count
        found += (previous + bytes(buf[: min(n, keep)])).count(pattern)
    if buf.find(head, 0, n) >= 0:
        found += buf.count(pattern, 0, n)
    last = (previous + bytes(buf[:n]))[-keep:] if n < keep else bytes(buf[n - keep : n])
    tails[fd] = last if head in last else b""  # only what could begin a split one
    return found


def _drain(ep: select.epoll, socks: dict[int, socket.socket], quiet: float) -> Report:
    """Read and drop everything until the server closed each connection, or `quiet` seconds
    without data: how many did it close (for stalled subscribers, the cut-offs)."""
    t_cpu = time.process_time()
    report = Report(connections=len(socks))
    buf = bytearray(1 << 18)
    open_socks = dict(socks)
    last_data = time.monotonic()
    while open_socks and time.monotonic() - last_data < quiet:
        for fd, _ in ep.poll(0.2):
            sock = open_socks.get(fd)
            if sock is None:
                continue
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # reset: an aborted connection is a closed one
                n = 0
            last_data = time.monotonic()
            if n == 0:
                report.closed += 1
                ep.unregister(fd)
                del open_socks[fd]
            else:
                report.received += n
    report.cpu = time.process_time() - t_cpu
    return report


def _stamps(reads: list[tuple[int, int, bytes]]) -> array[int]:
    """Receipt time minus stamp for every `T=<ns>` in each connection's reads, in order."""
    samples = array("q")
    carry: dict[int, bytes] = {}
    for fd, t, chunk in reads:
        data = carry.get(fd, b"") + chunk
        end = 0
        for m in STAMP.finditer(data):
            samples.append(t - int(m.group(1)))
            end = m.end()
        # an incomplete stamp (at most 20 bytes) waits for the next read
        carry[fd] = data[max(end, len(data) - 20) :]
    return samples


def close_workers(workers: Sequence[tuple[mp.process.BaseProcess, Connection]]) -> None:
    """Ask each worker process to close, give it 30 s to answer, then make sure it is gone."""
    for _, conn in workers:
        with contextlib.suppress(OSError, EOFError):
            conn.send(("close", None))
    for proc, conn in workers:
        with contextlib.suppress(OSError, EOFError):
            if conn.poll(30):
                conn.recv()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


class Fleet:
    """Worker processes holding `len(hellos)` connections to host:port between them."""

    def __init__(
        self,
        host: str,
        port: int,
        hellos: Sequence[Hello],
        *,
        processes: int = 4,
        first_source: int = 2,
    ) -> None:
        self.size = len(hellos)
        self.workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        processes = max(1, min(processes, len(hellos)))
        for w in range(processes):
            share = [(i, hellos[i]) for i in range(w, len(hellos), processes)]
            parent, child = _ctx.Pipe()
            source = f"127.0.0.{first_source + w}"
            proc = _ctx.Process(
                target=_worker, args=(child, host, port, source, share), daemon=True
            )
            proc.start()
            child.close()
            self.workers.append((proc, parent))
        self.processes = processes
        for _, conn in self.workers:
            kind, arg = conn.recv()
            if kind != "ready":
                self.close()
                raise RuntimeError(f"load worker failed: {arg}")

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.workers if p.pid is not None]

    def start(self, mode: str, expect: Expect | None = None) -> None:
        """Begin measuring ("count" bytes or "stamps"); returns once every worker listens."""
        for _, conn in self.workers:
            conn.send((mode, expect))
        for _, conn in self.workers:
            kind, arg = conn.recv()
            if kind != "measuring":
                raise RuntimeError(f"load worker: {kind} {arg}")

    def expect(self, f: Expect) -> None:
        """What connection i (fleet-wide) must receive before the workers report."""
        for _, conn in self.workers:
            conn.send(("expect", f))

    def drain(self, quiet: float = 2.0) -> Report:
        """Read every connection until the server closed it or `quiet` seconds pass without
        data; `closed` says how many the server had closed."""
        for _, conn in self.workers:
            conn.send(("drain", quiet))
        return merge(self.results())

    def results(self) -> list[Report]:
        out = []
        for _, conn in self.workers:
            kind, arg = conn.recv()
            if kind != "report":
                raise RuntimeError(f"load worker: {kind} {arg}")
            out.append(arg)
        return out

    def close(self) -> None:
        close_workers(self.workers)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge(reports: Sequence[Report]) -> Report:
    """Totals over a fleet's reports (samples left out: see `samples`)."""
    return Report(
        connections=sum(r.connections for r in reports),
        received=sum(r.received for r in reports),
        messages=sum(r.messages for r in reports),
        short=sum(r.short for r in reports),
        closed=sum(r.closed for r in reports),
        first=min((r.first for r in reports if r.first), default=0.0),
        last=max((r.last for r in reports), default=0.0),
        cpu=sum(r.cpu for r in reports),
        errors=[e for r in reports for e in r.errors][:5],
    )


def samples(reports: Sequence[Report]) -> list[int]:
    """Every latency sample of a fleet, sorted (ns)."""
    out = array("q")
    for r in reports:
        out.frombytes(r.samples)
    return sorted(out)


# -- publishers: one blocking socket each, in its own process ---------------------------------
@dataclass(slots=True)
class PublishReport:
    published: int = 0
    start: float = 0.0  # time.monotonic()
    end: float = 0.0
    cpu: float = 0.0
    first_reply: bytes = b""


def _publish_worker(
    ctrl: Connection,
    port: int,
    blobs: Sequence[bytes],
    per_blob: int,
    count: int,
    seconds: float,
) -> None:
    """Send blobs (each `per_blob` commands) in turn, each after the previous one's replies."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctrl.send("ready")
    ctrl.recv()  # go
    report = PublishReport()
    t_cpu = time.process_time()
    report.start = time.monotonic()
    deadline = report.start + seconds
    buf = bytearray(1 << 16)
    sent = 0
    i = 0
    nblobs = len(blobs)
    while sent < count and time.monotonic() < deadline:
        sock.sendall(blobs[i])
        i = i + 1 if i + 1 < nblobs else 0
        # integer replies: one "\n" each
        lines = 0
        while lines < per_blob:
            n = sock.recv_into(buf)
            if n == 0:
                raise ConnectionError("server closed the publisher")
            if not report.first_reply:
                report.first_reply = bytes(buf[: min(n, 32)])
            lines += buf.count(b"\n", 0, n)
        sent += per_blob
    report.end = time.monotonic()
    report.cpu = time.process_time() - t_cpu
    report.published = sent
    sock.close()
    ctrl.send(report)


class Publisher:
    """A RESP PUBLISH client in its own process: `blobs` cycled until `count` or `seconds`."""

    def __init__(
        self, port: int, blobs: Sequence[bytes], per_blob: int, count: int, seconds: float
    ) -> None:
        self.conn, child = _ctx.Pipe()
        self.proc = _ctx.Process(
            target=_publish_worker,
            args=(child, port, blobs, per_blob, count, seconds),
            daemon=True,
        )
        self.proc.start()
        child.close()
        if self.conn.recv() != "ready":
            raise RuntimeError("publisher failed to connect")

    def go(self) -> None:
        self.conn.send("go")

    def result(self) -> PublishReport:
        report: PublishReport = self.conn.recv()
        self.proc.join(10)
        return report
