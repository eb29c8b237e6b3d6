"""The seed's claim: idle connections cost an epoll loop nothing per iteration.

One active client does PING round trips (one at a time, from its own process; after
one second of warm-up, the median of 5 batches, of 3 rounds interleaved between the
servers, which are all up at once) to a
server holding 0, 5,000 and then 19,000 idle connections (each SUBSCRIBEd to a
channel of its own, and silent), opened by `loadgen.Fleet` processes from several
127.0.0.x source addresses. The same for tidings and for redis-server; `tidings-ws`
is a tidings daemon whose idle connections are WebSocket subscribers (upgrade, one
subscribe message, then a pong every 15 s as a browser answers the server's
pings; the active client still PINGs over RESP, in the same process). Beside it:
the server's RSS per idle connection, and the cost of one select()/poll()/epoll
call from Python with the same number of idle descriptors registered and one ready
(why an epoll loop stays flat where select and poll grow with the idle count).

    .venv/bin/python bench/idle.py [--pings 20000] [--counts 0,5000,19000] [--workers N]
        [--servers tidings,tidings-ws,redis]
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from harness import Redis, Server, Tidings, log, machine, percentile, raise_nofile
from harness import table as md_table
from loadgen import Fleet, Hello, _ctx, resp_subscribe, ws_subscribe

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"
PER_PROCESS = 5000  # idle connections per load process


@dataclass(slots=True)
class Pings:
    p50: float  # microseconds
    p99: float
    p999: float
    mean: float
    cpu: float  # the pinging process's CPU seconds


def _pinger(ctrl: Connection, port: int, count: int, batches: int, warmup: float) -> None:
    """`batches` runs of `count` PINGs after `warmup` seconds of them; the median batch."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(64)
    clock = time.perf_counter_ns

    def one() -> int:
        t0 = clock()
        sock.sendall(PING)
        got = sock.recv_into(buf)
        while got < len(PONG):  # loopback delivers 7 bytes at once; be correct anyway
            got += sock.recv_into(memoryview(buf)[got:])
        return clock() - t0

    end = time.monotonic() + warmup  # wakes the CPUs and the server's caches first
    while time.monotonic() < end:
        one()
    found = []
    for _ in range(batches):
        t_cpu = time.process_time()
        times = sorted(one() for _ in range(count))
        found.append(
            Pings(
                p50=percentile(times, 50) / 1e3,
                p99=percentile(times, 99) / 1e3,
                p999=percentile(times, 99.9) / 1e3,
                mean=sum(times) / len(times) / 1e3,
                cpu=time.process_time() - t_cpu,
            )
        )
    sock.close()
    found.sort(key=lambda p: p.mean)
    ctrl.send(found[len(found) // 2])


def ping(port: int, count: int, batches: int = 5, warmup: float = 1.0) -> Pings:
    parent, child = _ctx.Pipe()
    proc = _ctx.Process(target=_pinger, args=(child, port, count, batches, warmup), daemon=True)
    proc.start()
    child.close()
    result: Pings = parent.recv()
    proc.join(10)
    return result


# -- select / poll / epoll from Python ---------------------------------------------------------
def _multiplex_cost(ctrl: Connection, idle: int, calls: int) -> None:
    """Microseconds per call of select/poll/epoll with `idle` idle descriptors and one ready."""
    raise_nofile()
    pairs = [socket.socketpair() for _ in range(idle // 2)]
    fds = [s.fileno() for pair in pairs for s in pair][:idle]
    ready_pair = socket.socketpair()
    ready_pair[1].send(b"x")  # ready_pair[0] stays readable: one active client
    active = ready_pair[0].fileno()
    result: dict[str, float | None] = {}

    def time_it(fn: object) -> float:
        assert callable(fn)
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls * 1e6

    everything = [*fds, active]
    if max(everything) < 1024:  # FD_SETSIZE: select cannot watch higher descriptors
        result["select"] = time_it(lambda: select.select(everything, [], [], 0))
    else:
        result["select"] = None
    poller = select.poll()
    for fd in everything:
        poller.register(fd, select.POLLIN)
    result["poll"] = time_it(lambda: poller.poll(0))
    ep = select.epoll()
    for fd in everything:
        ep.register(fd, select.EPOLLIN)
    result["epoll"] = time_it(lambda: ep.poll(0))
    ep.close()
    ctrl.send(result)


def multiplex_cost(idle: int, calls: int = 2000) -> dict[str, float | None]:
    parent, child = _ctx.Pipe()
    proc = _ctx.Process(target=_multiplex_cost, args=(child, idle, calls), daemon=True)
    proc.start()
    child.close()
    result: dict[str, float | None] = parent.recv()
    proc.join(30)
    return result


# -- the run -------------------------------------------------------------------------------------
@dataclass(slots=True)
class Step:
    server: str
    idle: int
    pings: Pings
    rss: int
    server_cpu: float


@dataclass(slots=True)
class Target:
    """A server, and how its idle connections reach it."""

    server: Server
    port: int
    hello: Callable[[bytes], Hello]


def run(
    targets: list[Target], counts: list[int], pings: int, rounds: int, bare: bool
) -> list[Step]:
    """Grow every server's idle connections to each count; ping them in turn, `rounds` times.

    All servers are up together and their pings interleave, so a slow spell of the
    (shared, virtual) machine hits every server alike; each step keeps the round with
    the median p50 (the mean follows this machine's stalls more than the server).
    """
    steps = []
    fleets: list[Fleet] = []
    held = 0
    source = 2
    try:
        for goal in counts:
            more = goal - held
            if more > 0:
                for target in targets:
                    server = target.server
                    t0 = time.monotonic()
                    hellos = [
                        Hello(PING, PONG) if bare else target.hello(b"idle:%d" % (held + i))
                        for i in range(more)
                    ]
                    processes = -(-more // PER_PROCESS)
                    fleets.append(
                        Fleet(
                            "127.0.0.1",
                            target.port,
                            hellos,
                            processes=processes,
                            first_source=source,
                        )
                    )
                    source += processes
                    log(f"{server.name}: {goal} idle connections ({time.monotonic() - t0:.1f}s)")
                held = goal
            found: dict[str, list[Step]] = {}
            for _ in range(rounds):
                for server in (t.server for t in targets):
                    cpu0 = server.cpu()
                    result = ping(server.port, pings)
                    cpu = server.cpu() - cpu0
                    # RSS after the pings: redis trims idle clients' buffers seconds after
                    # they connect (clientsCron), so it is read as late as possible
                    rss = server.rss()
                    step = Step(server.name, held, result, rss, cpu)
                    found.setdefault(server.name, []).append(step)
                    log(f"{server.name} idle={held}: {result}, RSS {rss / 2**20:.1f} MiB")
            for candidates in found.values():
                candidates.sort(key=lambda st: st.pings.p50)
                steps.append(candidates[len(candidates) // 2])
    finally:
        for fleet in fleets:
            fleet.close()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="0,5000,19000")
    parser.add_argument("--pings", type=int, default=10_000, help="per batch; median of 5")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per step")
    parser.add_argument("--servers", default="tidings,redis")
    parser.add_argument(
        "--workers", type=int, default=1, help="tidings serve --workers N (RSS and CPU summed)"
    )
    parser.add_argument(
        "--bare", action="store_true", help="idle connections only PING once (no SUBSCRIBE)"
    )
    args = parser.parse_args()
    if args.bare and "tidings-ws" in args.servers.split(","):
        parser.error("--bare idle connections speak RESP only")
    raise_nofile()
    counts = sorted(int(c) for c in args.counts.split(","))

    version = "-"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        targets: list[Target] = []
        for name in args.servers.split(","):
            if name.startswith("tidings"):
                ws = name == "tidings-ws"
                tidings = stack.enter_context(Tidings(tmp, workers=args.workers, http=ws))
                if ws:
                    tidings.name = "tidings (WebSocket)"
                if args.workers > 1:
                    tidings.name += f" --workers {args.workers}"
                port, hello = (
                    (tidings.http_port, ws_subscribe) if ws else (tidings.port, resp_subscribe)
                )
                targets.append(Target(tidings, port, hello))
            else:
                redis = Redis(tmp / "redis")
                stack.enter_context(redis)
                version = redis.version()
                targets.append(Target(redis, redis.port, resp_subscribe))
        steps = run(targets, counts, args.pings, args.rounds, args.bare)
    # one process holds the descriptors: up to its limit (the 100,000 of --workers 6 do not fit)
    limit = raise_nofile() - 100
    micro = {n: multiplex_cost(n) for n in sorted({*counts, 1000}) if n <= limit}

    rows = []
    base = {s.server: s for s in steps if s.idle == counts[0]}
    for s in steps:
        b = base[s.server]
        per_conn = (s.rss - b.rss) / s.idle if s.idle else None
        rows.append(
            [
                s.server,
                s.idle,
                s.pings.p50,
                s.pings.p99,
                s.pings.p999,
                s.pings.mean,
                f"{100 * (s.pings.p50 / b.pings.p50 - 1):+.1f}%",
                f"{s.rss / 2**20:.1f}",
                f"{per_conn:,.0f}" if per_conn is not None else "-",
                s.server_cpu,
                s.pings.cpu,
            ]
        )
    kind = "silent (one PING each)" if args.bare else "each SUBSCRIBEd to its own channel"
    print(
        f"\n{machine()}; redis-server {version}; PINGs: batches of {args.pings:,} after 1 s of "
        f"warm-up, the median of 5 batches, the median of {args.rounds} interleaved rounds; "
        "idle connections "
        f"{kind}"
    )
    print(
        md_table(
            [
                "server",
                "idle connections",
                "PING p50 us",
                "p99 us",
                "p99.9 us",
                "mean us",
                "p50 vs 0 idle",
                "server RSS MiB",
                "RSS bytes per idle conn",
                "server CPU s",
                "pinger CPU s",
            ],
            rows,
        )
    )
    mrows = []
    for n, r in micro.items():
        mrows.append(
            [
                n,
                f"{r['select']:.2f}" if r["select"] is not None else "n/a (fd >= FD_SETSIZE 1024)",
                f"{r['poll']:.2f}",
                f"{r['epoll']:.2f}",
            ]
        )
    print("\nOne call from Python, idle descriptors registered plus one ready (microseconds):")
    print(md_table(["idle descriptors", "select()", "poll()", "epoll.poll()"], mrows))


if __name__ == "__main__":
    main()
