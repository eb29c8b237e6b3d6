"""Latency: commit (or publish) to subscriber receipt, tidings beside Redis and PostgreSQL.

- tidings: a writer process commits single-row transactions (autocommit INSERT) into a
  private MariaDB at a fixed rate; the row carries `T=<time.time_ns()>` taken just before
  the statement is sent; tidings reads the binlog and pushes the row event to every
  subscriber of `bench.ticks`. So the figure includes the INSERT, the commit, the binlog
  write, tidings' decode and fan-out, and the subscriber's read.
- redis-server: the writer PUBLISHes a 200-byte payload starting with the same stamp, at
  the same rate, to the same number of subscribers (no database in its path).
- PostgreSQL: the writer runs `SELECT pg_notify('ticks', payload)` (autocommit, asyncpg);
  listeners are raw protocol connections that sent LISTEN. One backend process each.

`tidings-py` in --systems adds a second tidings daemon on the same MariaDB (its own
replica server id) with TIDINGS_PURE_PYTHON=1: the pure-Python flush loop beside the
compiled one, measured in the same run. While one daemon is measured the other has no
subscribers but reads and decodes the same binlog.

Every subscriber of every system is a connection of the same `loadgen.Fleet` (raw
sockets, epoll, several processes): each message yields one sample per connection,
receipt `time.time_ns()` minus the stamp (one machine, one clock). Scenarios are
SUBSCRIBERS@RATE (commits per second) for --seconds each.

    .venv/bin/python bench/latency.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from fanout import Profiler
from harness import (
    Postgres,
    Redis,
    Tidings,
    cpu_seconds,
    log,
    machine,
    machine_stalls,
    percentile,
    raise_nofile,
    resp_command,
    tree_cpu,
    tree_cpu_delta,
)
from harness import table as md_table
from loadgen import Expect, Fleet, Hello, _ctx, merge, pg_listen, resp_subscribe, samples

from tidings.sandbox import PrivateMariaDB

PAYLOAD = 200
MYSQL_PAD = 100  # the row's filler; the event JSON around it adds about 150 bytes


def stamped(size: int) -> bytes:
    head = b"T=%d " % time.time_ns()
    return head + b"x" * max(0, size - len(head))


# -- writers: one process each, paced by the wall clock ---------------------------------------
@dataclass(slots=True)
class WriterReport:
    sent: int = 0
    cpu: float = 0.0
    late: int = 0  # sends that started more than one interval behind schedule
    seconds: float = 0.0  # from the first send to the last reply
    slowest: float = 0.0  # longest single send + reply (a commit that stalled), seconds


def paced(report: WriterReport, rate: float, count: int, send_one: Callable[[], None]) -> None:
    """Call `send_one` `count` times, `rate` times a second by the wall clock; fill `report`."""
    interval = 1.0 / rate
    t_cpu = time.process_time()
    t0 = last = time.monotonic()
    for i in range(count):
        due = t0 + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # a load generator keeping a rate, not a test waiting
        elif -delay > interval:
            report.late += 1
        last = time.monotonic()
        send_one()
        report.slowest = max(report.slowest, time.monotonic() - last)
        report.sent += 1
    report.cpu = time.process_time() - t_cpu
    report.seconds = last - t0  # n sends span n - 1 intervals


def _writer(
    ctrl: Connection, kind: str, port: int, rate: float, count: int, channel: bytes, size: int
) -> None:
    report = WriterReport()

    if kind == "redis":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def publish() -> None:
            sock.sendall(resp_command(b"PUBLISH", channel, stamped(size)))
            reply = sock.recv(64)
            if not reply.startswith(b":"):
                raise RuntimeError(f"PUBLISH replied {reply!r}")

        ctrl.send("ready")
        ctrl.recv()
        paced(report, rate, count, publish)
        sock.close()
    elif kind == "mysql":
        import pymysql  # type: ignore[import-untyped]

        conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database="bench")
        conn.autocommit(True)
        cur = conn.cursor()
        pad = "p" * MYSQL_PAD

        def insert() -> None:
            stamp = f"T={time.time_ns()}"
            cur.execute("INSERT INTO ticks (stamp, pad) VALUES (%s, %s)", (stamp, pad))

        ctrl.send("ready")
        ctrl.recv()
        paced(report, rate, count, insert)
        conn.close()
    elif kind == "postgres":
        import asyncpg  # type: ignore[import-untyped]

        loop = asyncio.new_event_loop()
        pg = loop.run_until_complete(
            asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
        )

        def notify() -> None:
            payload = stamped(PAYLOAD).decode()
            loop.run_until_complete(pg.execute("SELECT pg_notify('ticks', $1)", payload))

        ctrl.send("ready")
        ctrl.recv()
        paced(report, rate, count, notify)
        loop.run_until_complete(pg.close())
        loop.close()
    ctrl.send(report)


class Writer:
    """A writer process; `channel` and `size` (payload bytes) are for the "redis" kind
    (RESP PUBLISH, to redis-server or tidings)."""

    def __init__(
        self,
        kind: str,
        port: int,
        rate: float,
        count: int,
        *,
        channel: bytes = b"ticks",
        size: int = PAYLOAD,
    ) -> None:
        self.conn, child = _ctx.Pipe()
        self.proc = _ctx.Process(
            target=_writer, args=(child, kind, port, rate, count, channel, size), daemon=True
        )
        self.proc.start()
        child.close()
        if self.conn.recv() != "ready":
            raise RuntimeError("writer failed")

    def go(self) -> None:
        self.conn.send("go")

    def result(self) -> WriterReport:
        """Once it has written everything (after `go`)."""
        report: WriterReport = self.conn.recv()
        self.proc.join(10)
        return report

    def run(self) -> WriterReport:
        self.go()
        return self.result()


# -- one scenario -------------------------------------------------------------------------------
@dataclass(slots=True)
class Result:
    system: str
    subscribers: int
    rate: float
    achieved: float
    received: int
    expected: int
    p50: float
    p99: float
    p999: float
    max: float
    server_cpu: float
    db_cpu: float
    sub_cpu: float
    writer_cpu: float
    late: int
    slowest: float
    errors: list[str]


def measure(
    system: str,
    server_pid: int,
    db_pid: int | None,
    writer_kind: str,
    writer_port: int,
    port: int,
    hello: Hello,
    subscribers: int,
    rate: float,
    seconds: float,
    processes: int,
) -> Result:
    count = max(1, int(rate * seconds))
    t0 = time.monotonic()
    with Fleet("127.0.0.1", port, [hello] * subscribers, processes=processes) as fleet:
        log(f"{system}: {subscribers} subscribers in {time.monotonic() - t0:.1f}s")
        writer = Writer(writer_kind, writer_port, rate, count)
        fleet.start("stamps")
        server0 = tree_cpu(server_pid)
        db0 = cpu_seconds(db_pid) if db_pid else 0.0
        w = writer.run()
        fleet.expect(Expect(w.sent))
        reports = fleet.results()
        server_cpu = tree_cpu_delta(server0, tree_cpu(server_pid))
        db_cpu = cpu_seconds(db_pid) - db0 if db_pid else 0.0
    total = merge(reports)
    lat = samples(reports)
    ms = 1e-6
    return Result(
        system=system,
        subscribers=subscribers,
        rate=rate,
        achieved=(w.sent - 1) / w.seconds if w.seconds else 0.0,
        received=total.messages,
        expected=w.sent * subscribers,
        p50=percentile(lat, 50) * ms,
        p99=percentile(lat, 99) * ms,
        p999=percentile(lat, 99.9) * ms,
        max=(lat[-1] * ms) if lat else float("nan"),
        server_cpu=server_cpu,
        db_cpu=db_cpu,
        sub_cpu=total.cpu,
        writer_cpu=w.cpu,
        late=w.late,
        slowest=w.slowest,
        errors=total.errors,
    )


def scenarios(text: str) -> list[tuple[int, float]]:
    out = []
    for item in text.split(","):
        if item:
            subs, rate = item.split("@")
            out.append((int(subs), float(rate)))
    return out


def wait_pipeline(port: int, db: PrivateMariaDB, timeout: float = 60.0) -> None:
    """Return once a row committed in MariaDB reaches a tidings subscriber (replica is live)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(resp_command(b"SUBSCRIBE", b"bench.ticks"))
        got = b""
        while b":1\r\n" not in got:
            got += s.recv(4096)
        s.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            db.sql("INSERT INTO ticks (stamp, pad) VALUES ('W=warmup', '')", "bench")
            try:
                while b"W=warmup" not in got:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("tidings closed the warm-up subscriber")
                    got += chunk
                return
            except TimeoutError:
                continue
    raise TimeoutError("no row event reached tidings' subscriber")


@dataclass(slots=True)
class System:
    """How to measure one system: its server, writer and subscription."""

    name: str
    server_pid: int
    db_pid: int | None
    writer: str
    writer_port: int
    port: int
    hello: Hello
    scenarios: list[tuple[int, float]]


def summarise(runs: list[Result]) -> Result:
    """The run with the median p99 among repeats (its other figures come with it)."""
    ordered = sorted(runs, key=lambda r: r.p99)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each scenario")
    parser.add_argument("--processes", type=int, default=4, help="subscriber processes")
    parser.add_argument("--scenarios", default="1000@100,10000@10,100@100")
    parser.add_argument("--pg-scenarios", default="100@100,1000@100")
    parser.add_argument("--systems", default="tidings,redis,postgres")
    parser.add_argument("--profile", type=Path, help="py-spy the daemon; raw stacks go here")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    stalls = machine_stalls()
    log(f"machine stalls: {stalls}")
    wanted = args.systems.split(",")
    runs: dict[tuple[str, int, float], list[Result]] = {}
    versions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        systems: list[System] = []
        # every server is up for the whole run; the repeats interleave the systems so that
        # the machine's slow moments (a shared VM stalls for tens of ms now and then) spread
        db: PrivateMariaDB | None = None
        for name in ("tidings", "tidings-py"):
            if name not in wanted:
                continue
            pure = name == "tidings-py"
            if db is None:
                db = stack.enter_context(PrivateMariaDB(base / "mariadb"))
                db.sql("CREATE DATABASE bench")
                db.sql(
                    "CREATE TABLE ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                    " stamp VARCHAR(32) NOT NULL, pad VARCHAR(255) NOT NULL)",
                    "bench",
                )
            assert db.process is not None
            tidings = stack.enter_context(
                Tidings(base, mysql=db.url(), server_id=4243 if pure else 4242, pure_python=pure)
            )
            wait_pipeline(tidings.port, db)
            log(f"{name}: flush loop {tidings.flush_loop()}")
            systems.append(
                System(
                    "tidings, pure-Python flush (MariaDB commit)"
                    if pure
                    else "tidings (MariaDB commit)",
                    tidings.pid,
                    db.process.pid,
                    "mysql",
                    db.port,
                    tidings.port,
                    resp_subscribe(b"bench.ticks"),
                    scenarios(args.scenarios),
                )
            )
        if "redis" in wanted:
            redis = Redis(base / "redis")
            stack.enter_context(redis)
            versions["redis"] = redis.version()
            systems.append(
                System(
                    "redis-server (PUBLISH)",
                    redis.pid,
                    None,
                    "redis",
                    redis.port,
                    redis.port,
                    resp_subscribe(b"ticks"),
                    scenarios(args.scenarios),
                )
            )
        if "postgres" in wanted:
            pg = Postgres()
            stack.enter_context(pg)
            versions["postgres"] = pg.version()
            systems.append(
                System(
                    "PostgreSQL (NOTIFY commit)",
                    pg.pid,
                    None,
                    "postgres",
                    pg.port,
                    pg.port,
                    pg_listen("ticks"),
                    scenarios(args.pg_scenarios),
                )
            )
        for rep in range(args.repeat):
            for system in systems:
                for subs, rate in system.scenarios:
                    profiler = None
                    if args.profile and system.writer == "mysql":
                        out = args.profile / f"tidings-{subs}-{rate:g}-run{rep + 1}.txt"
                        profiler = Profiler(system.server_pid, out)
                    r = measure(
                        system.name,
                        system.server_pid,
                        system.db_pid,
                        system.writer,
                        system.writer_port,
                        system.port,
                        system.hello,
                        subs,
                        rate,
                        args.seconds,
                        args.processes,
                    )
                    if profiler is not None:
                        log(f"profile (tidings {subs}@{rate:g}):\n{profiler.stop()}")
                    runs.setdefault((system.name, subs, rate), []).append(r)
                    log(
                        f"run {rep + 1}: {system.name} {subs}@{rate:g}: p50 {r.p50:.2f} "
                        f"p99 {r.p99:.2f} max {r.max:.2f} ms; writer slowest "
                        f"{r.slowest * 1e3:.1f} ms, {r.late} late {r.errors or ''}"
                    )

    results = {key: summarise(rs) for key, rs in runs.items()}
    redis_p99 = {(k[1], k[2]): r.p99 for k, r in results.items() if k[0].startswith("redis")}
    rows = []
    for key, r in results.items():
        anchor = redis_p99.get((r.subscribers, r.rate))
        p99s = sorted(x.p99 for x in runs[key])
        rows.append(
            [
                r.system,
                r.subscribers,
                r.rate,
                r.achieved,
                "yes" if r.received == r.expected else f"{r.received:,}/{r.expected:,}",
                r.p50,
                r.p99,
                f"{p99s[0]:.1f}-{p99s[-1]:.1f}",
                r.p999,
                r.max,
                f"{r.p99 / anchor:.2f}x" if anchor else "-",
                r.server_cpu,
                r.db_cpu,
                r.sub_cpu,
                r.writer_cpu,
            ]
        )
    print(
        f"\n{machine()}; {args.seconds:g} s per run, median p99 of {args.repeat} runs; "
        f"redis-server {versions.get('redis', '-')}; PostgreSQL {versions.get('postgres', '-')}"
        f"\nthe machine itself, idle, one core kept busy: {stalls}"
    )
    print(
        md_table(
            [
                "system",
                "subscribers",
                "commits/s",
                "achieved/s",
                "all received",
                "p50 ms",
                "p99 ms",
                "p99 range ms",
                "p99.9 ms",
                "max ms",
                "p99 vs redis",
                "server CPU s",
                "MariaDB CPU s",
                "subscribers CPU s",
                "writer CPU s",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
