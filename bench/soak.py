"""Soak: many subscribers for many minutes, steady writes, connect/disconnect churn.

    .venv/bin/python bench/soak.py [--minutes 30] [--subscribers 19000] [--rate 2] [--churn 2]

Defaults: 19,000 subscribers (this machine's hard descriptor limit is 20,000 per process,
and the daemon holds them all), 2 rows/s (38,000 deliveries/s: what the daemon sustains on
the shared 2-core machine with room to spare; at 5/s its loop lagged by a second, its
accept queue (511) overflowed under the reconnects and the kernel reset connections whose
handshake it never accepted), 2 % of the connections reconnected per second (380/s).

What runs, each in a process of its own:

- a private MariaDB (`tidings.sandbox.PrivateMariaDB`) with tables `soak.t0` ..
  `soak.t<T-1>` and `soak.filler`: `seq` (primary key), `sent_ns`, `pad`;
- `tidings serve` reading its binlog, with `--state-dir`, `/metrics` on a free port and
  history capped at about five minutes of events: history fills up during the warm-up, so
  what grows after it is a leak, not history doing its job;
- a writer committing one row per transaction (autocommit INSERT) at `--rate` rows/s,
  round-robin over the tables: the n-th row of a table has `seq` n (from 1) and `sent_ns` =
  `time.time_ns()` taken just before the INSERT;
- a second writer, `--filler` rows/s (default 20) into `soak.filler`, which no subscriber
  listens to (see FILLER: it keeps the daemon's history cycling);
- `--processes` subscriber processes (raw non-blocking sockets and one epoll each, each from
  its own 127.0.0.x source address, as `loadgen.Fleet`), reading every `--read-interval`
  seconds, plus one process holding the `--timed` connections, which read at once and give
  the latency figures (receipt `time.time_ns()` minus `sent_ns`: commit, binlog, decode,
  fan-out and read).

Every subscriber is one logical subscriber for the whole run: subscriber i listens on table
i % T. It first subscribes with `TIDINGS.SUBSCRIBE <base id> soak.t<k>` before the first
write (the base id is that of a warm-up event committed before), so it must receive every
row of its table, seq 1, 2, ... W_k, each once and in order: nothing is legitimately missed
before its first subscription (there is no "before"), and nothing after it, as every
reconnect resumes from the last event id the subscriber processed.

Churn: every read tick each subscriber process closes `--churn` % per second of its
established connections (the timed ones excepted), alternately clean (what is pending read and
processed, then close: FIN) and abortive (SO_LINGER 0: RST, unread data discarded), and
reconnects each at once with `TIDINGS.SUBSCRIBE <last id processed> <its channel>`.

Sequence check, on every event of every connection: its seq must be the last seq + 1 (more
is a gap, not more a duplicate) and its id above the last id. A `gap` message or an `-ERR`
reply also count as violations. Connections closed or reset from the daemon's side are
counted apart (the subscriber resumes; none is expected).

Accounting: the writer wrote W_k rows to table k; expected = the sum over subscribers of the
W_k of their table (written x subscribers with one table); accounted = the distinct seqs
each subscriber received in increasing order, counted once (a gap's missing seqs are not);
lost = expected - accounted. At the end the writer stops and every subscriber reads until
it holds its table's last seq (or --drain seconds pass).

Every --sample seconds: the daemon's RSS, open descriptors (/proc/PID/fd), RESP connections
(its /metrics), event-loop lag, CPU of the daemon, MariaDB, subscribers and writer; latency
p50/p99 over the window. At the end: least-squares slopes of RSS (KiB/min) and descriptors
(per min; and of descriptors beyond the client connections) over the samples after
--warmup, p99 per window (min/median/max), events written and accounted for, violations,
reconnects: one table (--json FILE: all of it, and every sample, as one JSON object).

Exit status 1 if an event was lost, any violation, a subscriber that did not catch up, the
daemon not exiting cleanly, or, when the run after the warm-up lasts at least
JUDGED_MINUTES, a slope over RSS_SLOPE_LIMIT or FD_SLOPE_LIMIT. Connections reset from the
daemon's side and reconnects that timed out (a daemon too busy to accept lets its queue
overflow; the kernel gives up on handshakes) are warnings: the subscriber resumes or
retries and loses nothing. The run
stops early if the kernel's TCP memory passes half its pressure level (subscribers fell
behind: on a shared machine that would starve everyone's sockets).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fanout import Profiler
from harness import (
    PAGE,
    Tidings,
    cpu_seconds,
    free_port,
    log,
    machine,
    percentile,
    raise_nofile,
    resp_command,
)
from harness import table as md_table
from latency import WriterReport, paced
from loadgen import Hello, _connect, _ctx, _handshake, close_workers

from tidings.sandbox import PrivateMariaDB

SCHEMA = "soak"
PAD = 100  # bytes of padding per row: an event of about 300 bytes
#: a table written at --filler rows/s that no subscriber listens to: what a real database
#: has. (It was also there to keep history cycling: history's global log used to keep up
#: to 4,096 evicted events until it compacted, a 34-minute climb of about 130 KiB/min at
#: 2 events/s. Evicted events are now freed at once: hub/history.py, `GONE`.)
FILLER = "filler"
# One row event, as the subscribers parse it: every number is followed by its delimiter,
# so a number cut at the end of a read never matches. JSON has no raw CR, so `[^\r]*?`
# stays inside one message.
EVENT = re.compile(rb'\{"id":(\d+),[^\r]*?"data":\{"seq":(\d+),"sent_ns":(\d+),')
GAP = b'"type":"gap"'
WARMUP_EVENT = re.compile(rb'\{"id":(\d+),')

#: a leak this fast fails the run (when judged): RSS KiB per minute (at the default 380
#: reconnects/s, 12 bytes per reconnect); descriptors beyond the client connections per
#: minute (one per 4,500 reconnects). Not the raw descriptor count: it follows the
#: connections, which dip by thousands while reconnects wait out a stall of the daemon.
RSS_SLOPE_LIMIT = 256.0
FD_SLOPE_LIMIT = 5.0
#: slopes are judged only over at least this many minutes after the warm-up
JUDGED_MINUTES = 5.0
#: the run stops when the kernel's TCP buffers pass this share of tcp_mem's pressure level
TCP_MEMORY_SHARE = 0.5


# -- the subscriber processes ------------------------------------------------------------------
@dataclass(slots=True)
class Counters:
    """What one subscriber process counted (cumulative)."""

    connections: int = 0  # established, at the last sample
    connecting: int = 0  # reconnects in progress, at the last sample
    events: int = 0  # events parsed, duplicates included
    accounted: int = 0  # seqs received above the subscriber's last one (each counted once)
    gaps: int = 0  # a seq more than one above the last
    missed: int = 0  # seqs those gaps skipped
    duplicates: int = 0  # a seq not above the last
    id_order: int = 0  # an event id not above the last
    gap_messages: int = 0
    errors: int = 0  # -ERR replies
    server_closes: int = 0  # connections the daemon closed or reset
    connect_failures: int = 0
    reconnects: int = 0
    resets: int = 0  # of the reconnects, those that closed with RST
    behind: int = 0  # subscribers short of their table's last seq when the drain ended
    notes: dict[str, list[str]] = field(default_factory=dict)  # the first few of each kind

    def violations(self) -> int:
        return self.gaps + self.duplicates + self.id_order + self.gap_messages + self.errors

    def note(self, kind: str, text: str) -> None:
        seen = self.notes.setdefault(kind, [])
        if len(seen) < 3:
            seen.append(text)


@dataclass(slots=True, frozen=True)
class WorkerSpec:
    host: str
    port: int
    source: str
    subscribers: tuple[tuple[int, int], ...]  # (subscriber number, table)
    channels: tuple[bytes, ...]
    base_id: int
    churn: float  # fraction of the connections reconnected per second
    resume_offset: int  # added to the last id on resume: non-zero only to test the checker
    read_interval: float  # seconds between reads; 0: read as data arrives (timed)
    timed: bool


def subscribe_command(since: int, channel: bytes) -> bytes:
    return resp_command(b"TIDINGS.SUBSCRIBE", b"%d" % since, channel)


class Subscribers:
    """One process's share of the subscribers: their sockets, sequence state and churn."""

    def __init__(self, ctrl: Connection, spec: WorkerSpec) -> None:
        self.ctrl = ctrl
        self.spec = spec
        self.ep = select.epoll()
        self.table = dict(spec.subscribers)
        self.last_seq = dict.fromkeys(self.table, 0)
        self.last_id = dict.fromkeys(self.table, spec.base_id)
        self.carry = dict.fromkeys(self.table, b"")
        self.socks: dict[int, socket.socket] = {}  # subscriber -> its connection
        self.owner: dict[int, int] = {}  # fd -> subscriber
        self.connecting: set[int] = set()  # reconnects in progress (waiting for EPOLLOUT)
        self.unconnected: list[int] = []  # subscribers whose reconnect failed: retried
        self.counters = Counters()
        self.latencies = array("q")
        self.buf = bytearray(1 << 18)
        self.view = memoryview(self.buf)
        self.owed = 0.0  # reconnects due but not yet made (fractions carried over)
        self.abort_next = False
        self.finals: Sequence[int] | None = None  # last seq of each table, once draining
        self.drain_deadline = 0.0
        self.running = True

    # setup
    def handshake(self) -> None:
        socks: dict[int, socket.socket] = {}
        index: dict[int, int] = {}
        hellos = [
            (i, Hello(subscribe_command(self.spec.base_id, self.spec.channels[k]), b":1\r\n"))
            for i, k in self.spec.subscribers
        ]
        _handshake(self.ep, socks, index, self.spec.host, self.spec.port, self.spec.source, hellos)
        for fd, sock in socks.items():
            self.socks[index[fd]] = sock
            self.owner[fd] = index[fd]

    # the loop
    def run(self) -> None:
        ctrl_fd = self.ctrl.fileno()
        self.ep.register(ctrl_fd, select.EPOLLIN)
        timeout = 0.2 if self.spec.read_interval == 0 else 0.0
        last_churn = time.monotonic()
        while self.running:
            for fd, flags in self.ep.poll(timeout):
                if fd == ctrl_fd:
                    self.command()
                    if not self.running:
                        return
                    continue
                i = self.owner.get(fd)
                if i is None:
                    continue
                if i not in self.connecting:
                    self.read(i)
                elif flags & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    # (not an event of an earlier socket with the same fd, closed meanwhile)
                    self.connected(i)
            now = time.monotonic()
            if self.finals is None:
                self.churn(now - last_churn)
            last_churn = now
            if self.unconnected:
                for i in self.unconnected[:]:
                    self.unconnected.remove(i)
                    self.connect(i)
            if self.finals is not None and self.drained(now):
                continue
            if self.spec.read_interval and self.running:
                self.ctrl.poll(self.spec.read_interval)  # wakes early for a command

    def command(self) -> None:
        what, arg = self.ctrl.recv()
        if what == "sample":
            self.counters.connecting = len(self.connecting)
            self.counters.connections = len(self.socks) - len(self.connecting)
            self.ctrl.send(("sample", dataclasses.replace(self.counters), self.latencies.tobytes()))
            self.latencies = array("q")
        elif what == "drain":
            self.finals, seconds = arg
            self.drain_deadline = time.monotonic() + seconds
        elif what == "close":
            for sock in self.socks.values():
                sock.close()
            self.ctrl.send(("closed", None))
            self.running = False

    def drained(self, now: float) -> bool:
        assert self.finals is not None
        behind = sum(1 for i, k in self.table.items() if self.last_seq[i] < self.finals[k])
        if behind and now < self.drain_deadline:
            return False
        self.counters.behind = behind
        self.counters.connecting = len(self.connecting)
        self.counters.connections = len(self.socks) - len(self.connecting)
        self.ctrl.send(("final", self.counters, self.latencies.tobytes()))
        self.finals = None
        self.spec = dataclasses.replace(self.spec, churn=0.0)
        return True

    # reading and checking
    def read(self, i: int) -> int:
        """Read once from subscriber i: bytes read, 0 if none pending, -1 if it was closed."""
        sock = self.socks[i]
        try:
            n = sock.recv_into(self.buf)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self.counters.note("read error", f"subscriber {i}: {exc!r}")
            n = 0
        if n == 0:
            self.counters.server_closes += 1
            self.counters.note("closed", f"subscriber {i}: closed after {self.carry[i]!r}")
            self.drop(i, abort=False)
            self.connect(i)
            return -1
        self.check(i, self.view[:n])
        return n

    def check(self, i: int, chunk: memoryview) -> None:
        data = self.carry[i] + chunk
        cut = data.rfind(b"\r\n") + 2  # whole lines only: a JSON payload is never cut
        if cut < 2:
            self.carry[i] = data
            return
        complete = data[:cut]
        self.carry[i] = data[cut:]
        c = self.counters
        if GAP in complete:
            c.gap_messages += complete.count(GAP)
            c.note("gap message", f"subscriber {i}: {complete[-300:]!r}")
        if b"-ERR" in complete:
            c.errors += 1
            c.note("error reply", f"subscriber {i}: {complete[-300:]!r}")
        now = time.time_ns() if self.spec.timed else 0
        last_seq = self.last_seq[i]
        last_id = self.last_id[i]
        for m in EVENT.finditer(complete):
            event_id = int(m[1])
            seq = int(m[2])
            c.events += 1
            if seq > last_seq:
                if seq != last_seq + 1:
                    c.gaps += 1
                    c.missed += seq - last_seq - 1
                    c.note("gap", f"subscriber {i}: seq {seq} after {last_seq}")
                c.accounted += 1
                last_seq = seq
            else:
                c.duplicates += 1
                c.note("duplicate", f"subscriber {i}: seq {seq} again after {last_seq}")
            if event_id > last_id:
                last_id = event_id
            else:
                c.id_order += 1
            if now:
                self.latencies.append(now - int(m[3]))
        self.last_seq[i] = last_seq
        self.last_id[i] = last_id

    # churn
    def churn(self, elapsed: float) -> None:
        if not self.spec.churn or not self.socks:
            return
        # a share of the connections that are up: while reconnects wait out a stalled
        # daemon's full accept queue, closing more of the rest would only pile them up
        live = len(self.socks) - len(self.connecting)
        self.owed += self.spec.churn * live * elapsed
        due = min(int(self.owed), live)
        self.owed -= due
        for i in random.sample(sorted(self.socks), due):
            if i in self.connecting:
                continue
            self.abort_next = not self.abort_next
            if not self.abort_next:
                # clean: take in what the daemon already sent, so the close is a FIN
                while (n := self.read(i)) > 0:
                    pass
                if n < 0:
                    continue  # the server closed it meanwhile (counted, reconnected)
            self.drop(i, abort=self.abort_next)
            self.counters.reconnects += 1
            self.counters.resets += self.abort_next
            self.connect(i)

    def drop(self, i: int, *, abort: bool) -> None:
        sock = self.socks.pop(i)
        del self.owner[sock.fileno()]
        self.connecting.discard(i)
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def connect(self, i: int) -> None:
        """Start reconnecting subscriber i; `connected` resumes it once the daemon accepted.

        Without waiting: a blocking connect() waits out SYN retransmissions (1 s, 3 s...)
        when the daemon's accept queue is full, while the process's other connections,
        unread, would fill the kernel's TCP memory."""
        self.carry[i] = b""
        try:
            sock = _connect(self.spec.host, self.spec.port, self.spec.source, wait=False)
        except OSError as exc:
            self.failed(i, exc)
            return
        self.socks[i] = sock
        self.owner[sock.fileno()] = i
        self.connecting.add(i)
        self.ep.register(sock.fileno(), select.EPOLLOUT)

    def connected(self, i: int) -> None:
        """Resume subscriber i from the last event id it processed."""
        sock = self.socks[i]
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            try:
                sock.getpeername()
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    return  # still in progress
                raise
            self.connecting.discard(i)
            since = self.last_id[i] + self.spec.resume_offset
            sock.send(subscribe_command(since, self.spec.channels[self.table[i]]))
        except OSError as exc:
            self.drop(i, abort=True)
            self.failed(i, exc)
            return
        self.ep.modify(sock.fileno(), select.EPOLLIN)

    def failed(self, i: int, exc: OSError) -> None:
        self.counters.connect_failures += 1
        self.counters.note("reconnect failed", f"subscriber {i}: {exc!r}")
        self.unconnected.append(i)


def _subscriber_process(ctrl: Connection, spec: WorkerSpec) -> None:
    raise_nofile()
    gc.disable()  # no cycles here; collections over many sockets would be pauses
    subscribers = Subscribers(ctrl, spec)
    try:
        subscribers.handshake()
    except Exception as exc:  # tell the parent instead of hanging it
        ctrl.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    ctrl.send(("ready", len(subscribers.socks)))
    subscribers.run()


class Fleet:
    """The subscriber processes: `processes` churning ones and one with the timed connections."""

    def __init__(
        self,
        port: int,
        *,
        subscribers: int,
        timed: int,
        tables: int,
        base_id: int,
        processes: int,
        churn: float,
        read_interval: float,
        resume_offset: int,
    ) -> None:
        channels = tuple(b"%s.t%d" % (SCHEMA.encode(), k) for k in range(tables))
        numbers = list(range(subscribers))
        shares = [(numbers[:timed], True)] if timed else []
        rest = numbers[timed:]
        shares += [(rest[w::processes], False) for w in range(processes) if rest[w::processes]]
        self.workers: list[tuple[Any, Connection]] = []
        for w, (share, is_timed) in enumerate(shares):
            spec = WorkerSpec(
                host="127.0.0.1",
                port=port,
                source=f"127.0.0.{2 + w}",
                subscribers=tuple((i, i % tables) for i in share),
                channels=channels,
                base_id=base_id,
                churn=0.0 if is_timed else churn,
                resume_offset=resume_offset,
                read_interval=0.0 if is_timed else read_interval,
                timed=is_timed,
            )
            parent, child = _ctx.Pipe()
            proc = _ctx.Process(target=_subscriber_process, args=(child, spec), daemon=True)
            proc.start()
            child.close()
            self.workers.append((proc, parent))
        for _, conn in self.workers:
            kind, arg = conn.recv()
            if kind != "ready":
                self.close()
                raise RuntimeError(f"subscriber process failed: {arg}")

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.workers if p.pid is not None]

    def ask(self, command: str, arg: object = None, timeout: float = 60.0) -> list[Any]:
        for _, conn in self.workers:
            conn.send((command, arg))
        replies = []
        for proc, conn in self.workers:
            if not conn.poll(timeout):
                raise TimeoutError(
                    f"subscriber process {proc.pid} did not answer {command!r} "
                    f"(exit code {proc.exitcode})"
                )
            replies.append(conn.recv())
        return replies

    def close(self) -> None:
        close_workers(self.workers)


def total(counters: Sequence[Counters]) -> Counters:
    out = Counters()
    for c in counters:
        for f in dataclasses.fields(Counters):
            if f.name != "notes":
                setattr(out, f.name, getattr(out, f.name) + getattr(c, f.name))
        for kind, texts in c.notes.items():
            out.notes.setdefault(kind, []).extend(texts)
    return out


# -- the writers -------------------------------------------------------------------------------
def _writer_process(
    ctrl: Connection, port: int, tables: tuple[str, ...], rate: float, count: int
) -> None:
    import pymysql  # type: ignore[import-untyped]

    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database=SCHEMA)
    conn.autocommit(True)
    cur = conn.cursor()
    pad = "p" * PAD
    n = 0

    def insert() -> None:
        nonlocal n
        cur.execute(
            f"INSERT INTO {tables[n % len(tables)]} (seq, sent_ns, pad) VALUES (%s, %s, %s)",
            (n // len(tables) + 1, time.time_ns(), pad),
        )
        n += 1

    ctrl.send("ready")
    ctrl.recv()
    report = WriterReport()
    paced(report, rate, count, insert)
    conn.close()
    ctrl.send(report)


class Writer:
    """A writer process: `count` single-row transactions at `rate`/s, round-robin over
    `tables`, once `go` is called."""

    def __init__(self, port: int, tables: Sequence[str], rate: float, count: int) -> None:
        self.conn, child = _ctx.Pipe()
        self.proc = _ctx.Process(
            target=_writer_process, args=(child, port, tuple(tables), rate, count), daemon=True
        )
        self.proc.start()
        child.close()
        if self.conn.recv() != "ready":
            raise RuntimeError("a writer failed to connect")
        assert self.proc.pid is not None
        self.pid: int = self.proc.pid

    def go(self) -> None:
        self.conn.send("go")

    def result(self) -> WriterReport:
        report: WriterReport = self.conn.recv()
        self.proc.join(10)
        return report


def rows_per_table(written: int, tables: int) -> list[int]:
    """The last seq of each table after `written` rows went round-robin over them."""
    return [written // tables + (1 if k < written % tables else 0) for k in range(tables)]


# -- setup -------------------------------------------------------------------------------------
def table_names(tables: int) -> list[str]:
    return [f"t{k}" for k in range(tables)]


def create_schema(db: PrivateMariaDB, tables: int) -> None:
    ddl = [f"CREATE DATABASE {SCHEMA}; USE {SCHEMA};"]
    ddl.append("CREATE TABLE warm (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20));")
    ddl += [
        f"CREATE TABLE {name} (seq BIGINT PRIMARY KEY, sent_ns BIGINT NOT NULL,"
        " pad VARCHAR(255) NOT NULL);"
        for name in [*table_names(tables), FILLER]
    ]
    db.sql("\n".join(ddl))


def base_event_id(port: int, db: PrivateMariaDB, timeout: float = 60.0) -> int:
    """Commit warm-up rows until one reaches a subscriber; its event id (the replica is live)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(resp_command(b"SUBSCRIBE", f"{SCHEMA}.warm".encode()))
        got = b""
        while b":1\r\n" not in got:
            got += s.recv(4096)
        got = b""
        s.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            db.sql(f"INSERT INTO {SCHEMA}.warm (note) VALUES ('warm-up')")
            with contextlib.suppress(TimeoutError):
                while not (ids := WARMUP_EVENT.findall(got)):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("tidings closed the warm-up subscriber")
                    got += chunk
                return max(int(x) for x in ids)
    raise TimeoutError("no row event reached a tidings subscriber")


# -- measuring ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    t: float  # seconds since the first write
    rss_kib: float
    fds: int
    connections: int  # RESP connections, as the daemon's /metrics says
    open: int  # connections the subscriber processes have established
    connecting: int  # and those whose reconnect is still in progress
    tcp_mib: float  # kernel TCP buffer memory, machine-wide: unread data shows here
    events: int  # cumulative, received by subscribers
    reconnects: int
    violations: int
    p50_ms: float
    p99_ms: float
    latency_samples: int
    loop_lag_ms: float
    daemon_cpu: float  # cores (CPU seconds per second) over the window
    anon_kib: float  # the daemon's anonymous memory (/proc/PID/smaps_rollup)
    malloc_heap_mib: float  # glibc's heaps, from the daemon's /metrics (NaN: not glibc)
    malloc_in_use_mib: float
    malloc_free_mib: float  # free inside the heaps, kept by the allocator
    malloc_mmapped_mib: float
    gc_full: float  # the daemon's full (generation 2) collections so far
    py_blocks: float  # blocks Python's allocator holds (sys.getallocatedblocks)
    gc_collected: float  # objects its cyclic GC freed so far, all generations
    mariadb_cpu: float
    subscribers_cpu: float
    writer_cpu: float


#: the figures whose slope over the second half of the run is reported
LATE_SLOPES = ("rss_kib", "anon_kib", "malloc_in_use_mib", "malloc_free_mib")


def anonymous_kib(pid: int) -> float:
    """The process's anonymous memory (heap, arenas, stacks): what a leak grows."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return float(line.split()[1])
    return float("nan")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_memory() -> tuple[int, int]:
    """Bytes the kernel holds in TCP buffers (all sockets), and its pressure threshold."""
    with open("/proc/net/sockstat") as f:
        used = next(int(line.split()[-1]) for line in f if line.startswith("TCP:"))
    with open("/proc/sys/net/ipv4/tcp_mem") as f:
        pressure = int(f.read().split()[1])
    return used * PAGE, pressure * PAGE


def guard_tcp_memory() -> int:
    """Stop the run before subscribers that fell behind drive the (shared) machine's TCP
    memory into pressure, where the kernel starts failing every socket's allocations."""
    used, pressure = tcp_memory()
    if used > pressure * TCP_MEMORY_SHARE:
        raise RuntimeError(
            f"kernel TCP memory at {used >> 20} MiB, over {TCP_MEMORY_SHARE:.0%} of its "
            f"pressure threshold ({pressure >> 20} MiB): the subscribers fell behind; stopped"
        )
    return used


def rate_per_min(samples: Sequence[Sample], name: str) -> float:
    """How fast a cumulative figure grew from the first sample to the last, per minute."""
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return float("nan")
    grew = getattr(samples[-1], name) - getattr(samples[0], name)
    return grew / (samples[-1].t - samples[0].t) * 60


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return float("nan")
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx if sxx else float("nan")


class Meter:
    """CPU of the processes involved, per window, and the daemon's /proc figures."""

    def __init__(
        self, daemon: Tidings, mariadb_pid: int, fleet: Fleet, writers: Sequence[Writer]
    ) -> None:
        self.daemon = daemon
        self.groups = {
            "daemon": [daemon.pid],
            "mariadb": [mariadb_pid],
            "subscribers": fleet.pids(),
            "writer": [w.pid for w in writers],
        }
        self.fleet = fleet
        self.t0 = time.monotonic()
        self.last_t = self.t0
        self.last_cpu = self.cpu()

    def cpu(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}

    def sample(self) -> Sample:
        replies = self.fleet.ask("sample")
        now = time.monotonic()
        cpu = self.cpu()
        span = now - self.last_t
        used = {k: (cpu[k] - self.last_cpu[k]) / span for k in cpu}
        self.last_t, self.last_cpu = now, cpu
        counters = total([r[1] for r in replies])
        lat = array("q")
        for r in replies:
            lat.frombytes(r[2])
        ordered = sorted(lat)
        metrics = self.daemon.metrics()

        nan = float("nan")

        def malloc(kind: str) -> float:
            return metrics.get(f'tidings_malloc_bytes{{kind="{kind}"}}', float("nan")) / 2**20

        return Sample(
            t=now - self.t0,
            rss_kib=self.daemon.rss() / 1024,
            fds=fd_count(self.daemon.pid),
            connections=int(metrics.get('tidings_connections{protocol="resp"}', -1)),
            open=counters.connections,
            connecting=counters.connecting,
            tcp_mib=guard_tcp_memory() / 2**20,
            events=counters.events,
            reconnects=counters.reconnects,
            violations=counters.violations(),
            p50_ms=percentile(ordered, 50) / 1e6,
            p99_ms=percentile(ordered, 99) / 1e6,
            latency_samples=len(ordered),
            loop_lag_ms=metrics.get("tidings_event_loop_lag_seconds", float("nan")) * 1e3,
            daemon_cpu=used["daemon"],
            anon_kib=anonymous_kib(self.daemon.pid),
            malloc_heap_mib=malloc("heap"),
            malloc_in_use_mib=malloc("in_use"),
            malloc_free_mib=malloc("free"),
            malloc_mmapped_mib=malloc("mmapped"),
            py_blocks=metrics.get("tidings_python_allocated_blocks", nan),
            gc_full=metrics.get('tidings_python_gc_collections_total{generation="2"}', nan),
            gc_collected=sum(
                metrics.get(f'tidings_python_gc_collected_total{{generation="{g}"}}', nan)
                for g in range(3)
            ),
            mariadb_cpu=used["mariadb"],
            subscribers_cpu=used["subscribers"],
            writer_cpu=used["writer"],
        )


def progress(s: Sample) -> str:
    return (
        f"t={s.t:6.0f}s rss {s.rss_kib / 1024:7.1f} MiB fds {s.fds:6d} conns {s.connections:6d}"
        f" connecting {s.connecting:5d}"
        f" p50 {s.p50_ms:6.1f} p99 {s.p99_ms:6.1f} ms lag {s.loop_lag_ms:5.0f} ms"
        f" tcp {s.tcp_mib:5.0f} MiB"
        f" events {s.events:,} reconnects {s.reconnects:,} violations {s.violations}"
        f" malloc heap {s.malloc_heap_mib:.1f} free {s.malloc_free_mib:.1f} MiB"
        f" cpu daemon {s.daemon_cpu:.2f} subs {s.subscribers_cpu:.2f}"
        f" db {s.mariadb_cpu:.2f}"
    )


# -- the run -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    seconds = args.minutes * 60
    count = max(args.tables, round(seconds * args.rate))
    timed = min(args.timed, args.subscribers)
    # five minutes of events, full before the warm-up ends. Shorter, a subscriber whose
    # reconnect waits out SYN retransmissions (1, 3, 7, 15, 31, 63 s) while a stalled daemon's
    # accept queue is full comes back older than memory history, and each such resume
    # re-reads the binlog from a mark, which stalls the daemon further
    history = max(600, round((args.rate + args.filler) * 300))
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="tidings-soak-"))
        if args.keep:
            log(f"working directory (kept): {base}")
        else:
            stack.callback(shutil.rmtree, base, ignore_errors=True)
        db = stack.enter_context(PrivateMariaDB(base / "mariadb"))
        assert db.process is not None
        create_schema(db, args.tables)
        daemon = Tidings(
            base,
            mysql=db.url(),
            output_limit=1 << 20,  # the default: a subscriber that falls behind is cut
            http_port=free_port(),
            extra=[
                "--state-dir",
                str(base / "state"),
                "--history-events",
                str(history),
                *args.daemon_arg,
            ],
        )
        stack.callback(daemon.stop)
        base_id = base_event_id(daemon.port, db)
        t = time.monotonic()
        fleet = Fleet(
            daemon.port,
            subscribers=args.subscribers,
            timed=timed,
            tables=args.tables,
            base_id=base_id,
            processes=args.processes,
            churn=args.churn / 100,
            read_interval=args.read_interval,
            resume_offset=args.resume_offset,
        )
        stack.callback(fleet.close)
        log(f"{args.subscribers:,} subscribers in {time.monotonic() - t:.1f} s")
        writer = Writer(db.port, table_names(args.tables), args.rate, count)
        writers = [writer]
        if args.filler:
            writers.append(Writer(db.port, [FILLER], args.filler, round(seconds * args.filler)))
        meter = Meter(daemon, db.process.pid, fleet, writers)
        profiler = Profiler(daemon.pid, args.profile) if args.profile else None
        for w in writers:
            w.go()
        samples: list[Sample] = []
        next_sample = meter.t0 + args.sample
        while True:
            finished = writer.conn.poll(min(1.0, max(0.0, next_sample - time.monotonic())))
            guard_tcp_memory()
            if finished or time.monotonic() >= next_sample:
                samples.append(meter.sample())
                log(progress(samples[-1]))
                next_sample += args.sample
            if finished:
                break
        wrote = writer.result()
        if profiler is not None:
            log(f"profile of the daemon while the writer ran:\n{profiler.stop()}")
        filled = writers[-1].result().sent if args.filler else 0
        finals = rows_per_table(wrote.sent, args.tables)
        t = time.monotonic()
        replies = fleet.ask("drain", (finals, args.drain), timeout=args.drain + 60)
        drain_seconds = time.monotonic() - t
        final = total([r[1] for r in replies])
        daemon_cpu = cpu_seconds(daemon.pid)
        log_text = daemon.log_text()
        fleet.close()
        daemon.stop()
        exit_code = daemon.proc.returncode if daemon.proc else None
    tables_of = [i % args.tables for i in range(args.subscribers)]
    expected = sum(finals[k] for k in tables_of)
    return summarise(
        args,
        samples=samples,
        wrote=wrote,
        filled=filled,
        expected=expected,
        final=final,
        drain_seconds=drain_seconds,
        daemon_cpu=daemon_cpu,
        daemon_exit=exit_code,
        daemon_log=log_text,
        history=history,
        timed=timed,
        load=(load_before, os.getloadavg()),
    )


def summarise(
    args: argparse.Namespace,
    *,
    samples: list[Sample],
    wrote: WriterReport,
    filled: int,
    expected: int,
    final: Counters,
    drain_seconds: float,
    daemon_cpu: float,
    daemon_exit: int | None,
    daemon_log: str,
    history: int,
    timed: int,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> dict[str, Any]:
    warmup = min(args.warmup, samples[-1].t / 2 if samples else 0.0)
    steady = [s for s in samples if s.t >= warmup]
    rss_slope = slope([(s.t / 60, s.rss_kib) for s in steady])
    # the second half alone: does RSS level off once warm, or keep climbing?
    late = steady[len(steady) // 2 :]
    late_slopes = {
        name: slope([(s.t / 60, getattr(s, name) * scale) for s in late])
        for name, scale in zip(LATE_SLOPES, (1, 1, 1024, 1024), strict=True)
    }
    fd_slope = slope([(s.t / 60, s.fds) for s in steady])
    other_fds = [s.fds - s.connections for s in steady]
    other_fd_slope = slope([(s.t / 60, s.fds - s.connections) for s in steady])
    judged_minutes = (steady[-1].t - steady[0].t) / 60 if len(steady) > 1 else 0.0
    judged = judged_minutes >= JUDGED_MINUTES
    p99s = sorted(s.p99_ms for s in samples if s.latency_samples)
    lost = expected - final.accounted
    log_errors = sum(
        1 for line in daemon_log.splitlines() if " ERROR " in line or "Traceback" in line
    )
    failures = []
    if lost:
        failures.append(f"{lost:,} events lost")
    if final.violations():
        failures.append(f"{final.violations():,} sequence violations")
    if final.behind:
        failures.append(f"{final.behind:,} subscribers behind after the drain")
    # signs of overload, not failures: the subscriber resumes (or retries) and loses nothing
    warnings = []
    if final.server_closes:
        warnings.append(f"{final.server_closes:,} connections reset from the daemon's side")
    if final.connect_failures:
        warnings.append(f"{final.connect_failures:,} reconnects failed (and were retried)")
    if daemon_exit != 0:
        failures.append(f"the daemon exited with {daemon_exit}")
    if judged and not abs(rss_slope) <= RSS_SLOPE_LIMIT:
        failures.append(f"RSS slope {rss_slope:+.0f} KiB/min over {RSS_SLOPE_LIMIT:g}")
    if judged and not abs(other_fd_slope) <= FD_SLOPE_LIMIT:
        failures.append(
            f"slope of descriptors beyond connections {other_fd_slope:+.2f}/min over "
            f"{FD_SLOPE_LIMIT:g}"
        )

    def mean(name: str) -> float:
        return statistics.fmean(getattr(s, name) for s in samples) if samples else float("nan")

    return {
        "machine": machine(),
        "load_average": {"before": load[0], "after": load[1]},
        "settings": {
            "minutes": args.minutes,
            "subscribers": args.subscribers,
            "timed": timed,
            "tables": args.tables,
            "rate": args.rate,
            "filler_rate": args.filler,
            "churn_percent_per_s": args.churn,
            "processes": args.processes,
            "read_interval": args.read_interval,
            "resume_offset": args.resume_offset,
            "history_events": history,
            "daemon_args": args.daemon_arg,
            "warmup_s": warmup,
        },
        "written": wrote.sent,
        "filler_written": filled,
        "writer_late": wrote.late,
        "writer_slowest_ms": wrote.slowest * 1e3,
        "achieved_rate": (wrote.sent - 1) / wrote.seconds if wrote.seconds else 0.0,
        "expected": expected,
        "accounted": final.accounted,
        "lost": lost,
        "received": final.events,
        "violations": final.violations(),
        "gaps": final.gaps,
        "duplicates": final.duplicates,
        "id_order": final.id_order,
        "gap_messages": final.gap_messages,
        "errors": final.errors,
        "server_closes": final.server_closes,
        "connect_failures": final.connect_failures,
        "behind": final.behind,
        "reconnects": final.reconnects,
        "resets": final.resets,
        "notes": final.notes,
        "drain_s": drain_seconds,
        "rss_mib": {
            "first": samples[0].rss_kib / 1024 if samples else float("nan"),
            "after_warmup": steady[0].rss_kib / 1024 if steady else float("nan"),
            "last": samples[-1].rss_kib / 1024 if samples else float("nan"),
            "max": max(s.rss_kib for s in samples) / 1024 if samples else float("nan"),
        },
        "rss_slope_kib_per_min": rss_slope,
        "late_slopes_kib_per_min": late_slopes,
        "py_blocks": [s.py_blocks for s in (steady[0], samples[-1])] if steady else [],
        "py_blocks_late_slope_per_min": slope([(s.t / 60, s.py_blocks) for s in late]),
        "gc_per_min": {
            "full_collections": rate_per_min(steady, "gc_full"),
            "objects_collected": rate_per_min(steady, "gc_collected"),
        },
        "late_from_s": late[0].t if late else float("nan"),
        "malloc_mib": {
            name: [getattr(s, f"malloc_{name}_mib") for s in (steady[0], samples[-1])]
            if steady
            else []
            for name in ("heap", "in_use", "free", "mmapped")
        },
        "fds": {
            "min": min(s.fds for s in steady) if steady else 0,
            "max": max(s.fds for s in steady) if steady else 0,
        },
        "fd_slope_per_min": fd_slope,
        "other_fds": {
            "min": min(other_fds, default=0),
            "median": statistics.median(other_fds) if other_fds else 0,
            "max": max(other_fds, default=0),
        },
        "other_fd_slope_per_min": other_fd_slope,
        "connections_max": max((s.connections for s in samples), default=0),
        "slopes_judged": judged,
        "judged_minutes": judged_minutes,
        "p99_ms": {
            "min": p99s[0] if p99s else float("nan"),
            "median": statistics.median(p99s) if p99s else float("nan"),
            "max": p99s[-1] if p99s else float("nan"),
        },
        "p50_ms_median": statistics.median(s.p50_ms for s in samples if s.latency_samples)
        if p99s
        else float("nan"),
        "cpu_cores": {
            "daemon": mean("daemon_cpu"),
            "mariadb": mean("mariadb_cpu"),
            "subscribers": mean("subscribers_cpu"),
            "writer": mean("writer_cpu"),
        },
        "daemon_cpu_s": daemon_cpu,
        "daemon_exit": daemon_exit,
        "daemon_log_errors": log_errors,
        "daemon_log_lines": daemon_log.count("\n"),
        "daemon_log_bytes": len(daemon_log.encode()),
        "daemon_log_tail": daemon_log.splitlines()[-20:],
        "failures": failures,
        "warnings": warnings,
        "samples": [dataclasses.asdict(s) for s in samples],
    }


def render(r: dict[str, Any]) -> str:
    s, rss, p99, cpu = r["settings"], r["rss_mib"], r["p99_ms"], r["cpu_cores"]
    if r["slopes_judged"]:
        judged = (
            f"judged over {r['judged_minutes']:.1f} min (limits: RSS slope within ±"
            f"{RSS_SLOPE_LIMIT:g} KiB/min, slope of descriptors beyond connections within ±"
            f"{FD_SLOPE_LIMIT:g}/min)"
        )
    else:
        judged = f"not judged: {r['judged_minutes']:.1f} min after warm-up < {JUDGED_MINUTES:g}"
    other = " / ".join(f"{r['other_fds'][k]:g}" for k in ("min", "median", "max"))
    rss_text = f"{rss['first']:.1f}, {rss['after_warmup']:.1f}, {rss['last']:.1f}, {rss['max']:.1f}"
    cpu_text = ", ".join(f"{cpu[k]:.2f}" for k in ("daemon", "subscribers", "mariadb", "writer"))
    load = " / ".join(", ".join(f"{x:.1f}" for x in la) for la in r["load_average"].values())
    rows: list[tuple[str, object]] = [
        ("run", f"{s['minutes']:g} min, warm-up {s['warmup_s']:.0f} s"),
        ("subscribers", f"{s['subscribers']:,} on {s['tables']} table(s), {s['timed']} timed"),
        ("churn", f"{s['churn_percent_per_s']:g} % of connections per second"),
        ("writes", f"{r['written']:,} rows at {r['achieved_rate']:.2f}/s (asked {s['rate']:g})"),
        ("filler writes (a table nobody subscribes to)", r["filler_written"]),
        ("events expected (written x subscribers)", r["expected"]),
        ("events accounted for (in order, once)", r["accounted"]),
        ("events lost", r["lost"]),
        ("events received (duplicates included)", r["received"]),
        ("sequence violations", r["violations"]),
        ("reconnects (of which RST)", f"{r['reconnects']:,} ({r['resets']:,})"),
        ("connections reset from the daemon's side (resumed)", r["server_closes"]),
        ("reconnects failed", r["connect_failures"]),
        ("drain after the last write", f"{r['drain_s']:.1f} s, {r['behind']} behind"),
        ("daemon RSS MiB (first, after warm-up, last, max)", rss_text),
        ("RSS slope KiB/min", f"{r['rss_slope_kib_per_min']:+.1f}"),
        (
            f"second half (from {r['late_from_s'] / 60:.1f} min), KiB/min: RSS, anonymous, "
            "malloc in use, malloc free",
            ", ".join(f"{r['late_slopes_kib_per_min'][k]:+.1f}" for k in LATE_SLOPES),
        ),
        (
            "glibc malloc MiB after warm-up -> last: heap, in use, free, mmapped",
            ", ".join(
                " -> ".join(f"{x:.1f}" for x in r["malloc_mib"][k])
                for k in ("heap", "in_use", "free", "mmapped")
            ),
        ),
        (
            "Python allocator blocks after warm-up -> last (slope per min, second half)",
            " -> ".join(f"{x:,.0f}" for x in r["py_blocks"])
            + f" ({r['py_blocks_late_slope_per_min']:+,.0f})",
        ),
        (
            "daemon's cyclic GC after warm-up, per minute: full collections, objects freed",
            f"{r['gc_per_min']['full_collections']:.1f}, "
            f"{r['gc_per_min']['objects_collected']:,.0f}",
        ),
        ("daemon descriptors (min-max after warm-up)", f"{r['fds']['min']}-{r['fds']['max']}"),
        ("descriptor slope per min (follows the connections)", f"{r['fd_slope_per_min']:+.2f}"),
        ("descriptors beyond client connections (min / median / max)", other),
        ("slope of descriptors beyond connections per min", f"{r['other_fd_slope_per_min']:+.2f}"),
        ("most RESP connections the daemon counted", r["connections_max"]),
        ("slopes", judged),
        ("p50 ms (median of windows)", f"{r['p50_ms_median']:.1f}"),
        (
            "p99 ms per window (min / median / max)",
            f"{p99['min']:.1f} / {p99['median']:.1f} / {p99['max']:.1f}",
        ),
        ("CPU cores: daemon, subscribers, MariaDB, writer", cpu_text),
        ("daemon exit code", r["daemon_exit"]),
        ("ERROR lines in the daemon's log", r["daemon_log_errors"]),
        (
            "daemon's log: lines, bytes (resets are counted, not logged each)",
            f"{r['daemon_log_lines']:,}, {r['daemon_log_bytes']:,}",
        ),
        ("load average (1, 5, 15 min) before / after", load),
        ("verdict", "; ".join(r["failures"]) or "pass"),
        ("warnings", "; ".join(r["warnings"]) or "none"),
    ]
    return f"{r['machine']}\n\n" + md_table(["soak", "figure"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="of steady writes")
    parser.add_argument("--subscribers", type=int, default=19_000)
    parser.add_argument("--rate", type=float, default=2.0, help="rows (transactions) per second")
    parser.add_argument(
        "--churn", type=float, default=2.0, help="%% of connections reconnected per second"
    )
    parser.add_argument("--tables", type=int, default=1, help="channels the writer spreads over")
    parser.add_argument(
        "--filler", type=float, default=20.0, help="rows/s into a table nobody subscribes to"
    )
    parser.add_argument("--processes", type=int, default=4, help="churning subscriber processes")
    parser.add_argument("--timed", type=int, default=200, help="connections giving latencies")
    parser.add_argument("--read-interval", type=float, default=1.0, help="seconds between reads")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=360.0, help="seconds not in the slopes")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to catch up at most")
    parser.add_argument(
        "--json", type=Path, help="also write every figure and sample as one JSON object here"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    parser.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for `tidings serve`; repeat it, e.g. "
        "--daemon-arg=--malloc-trim-interval --daemon-arg=60",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the daemon; raw stacks go here")
    parser.add_argument(
        "--resume-offset",
        type=int,
        default=0,
        help="testing the checker: reconnects resume from the last id plus this (with "
        "--filler 0 and one table, 1 skips an event, -1 repeats one): the run must fail",
    )
    args = parser.parse_args()
    # SIGTERM (timeout, a test's kill) unwinds like Ctrl-C: the daemon and MariaDB are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    if result["failures"]:
        noted = [f"{kind}: {text}" for kind, texts in result["notes"].items() for text in texts]
        log("what the subscribers noted:\n" + "\n".join(noted))
        log("the daemon's log ends:\n" + "\n".join(result["daemon_log_tail"]))
    if args.json:
        args.json.write_text(json.dumps(result))
    print(render(result))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
