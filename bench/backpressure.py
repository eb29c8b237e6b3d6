"""Backpressure: stalled subscribers among live ones, tidings beside redis-server.

Every run starts a fresh server with the same output limit for pub/sub clients (--limit,
1 MiB: tidings `--output-limit`, redis `client-output-buffer-limit pubsub <limit> 0 0`),
connects --live subscribers of channel `ticks` (`loadgen.Fleet`, stamps mode) and, in the
runs "with", --stalled connections that SUBSCRIBE to `ticks` and `bulk` and then never
read (a fleet left idle). Two writer processes PUBLISH during --seconds: stamped
--payload-byte messages on `ticks` at --rate/s (the live subscribers' latency, as in
bench/latency.py) and --bulk-size-byte messages on `bulk` at --bulk-rate/s, which only the
stalled connections hear: a feed they subscribed to, fast enough to take them past the
limit within the run (at --rate alone they would need minutes). Both writers run in
every run, with or without the stalled connections, so those are the only difference.

Reported: the live subscribers' latency (PUBLISH to receipt), the server's RSS once
everyone is subscribed, its peak during the run (sampled every 20 ms) and at the end, its
CPU, and the cut-offs counted three ways: the server's own count (tidings'
`tidings_slow_consumers_cut_total` from /metrics; redis-server 7.0 has no counter, so its
log's "overcoming of output buffer limits" lines), and the stalled connections found
closed when they are finally read after the run. Runs alternate between the servers and
between with and without; the table shows medians over --repeat rounds.

    .venv/bin/python bench/backpressure.py [--live 10000] [--stalled 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fanout import Profiler
from harness import Redis, Server, Tidings, log, machine, percentile, raise_nofile
from harness import table as md_table
from latency import Writer
from loadgen import Expect, Fleet, merge, resp_subscribe, samples

REDIS_CUT = "overcoming of output buffer limits"


class PeakRss:
    """The server's largest RSS while the block runs, sampled every `interval` seconds."""

    def __init__(self, server: Server, interval: float = 0.02) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0
        self.at = 0.0  # seconds from the start to the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            rss = self.server.rss()
            if rss > self.peak:
                self.peak, self.at = rss, time.monotonic() - t0
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(slots=True)
class Run:
    server: str
    stalled: int
    p50: float  # ms
    p99: float
    p999: float
    rss_before: int
    rss_peak: int
    peak_at: float
    rss_end: int
    server_cut: int
    client_cut: int
    server_cpu: float
    live_cpu: float
    complete: bool
    late: int  # writer sends that started more than one interval late


def server_cut(server: Server) -> int:
    if isinstance(server, Tidings):
        return int(server.metric("tidings_slow_consumers_cut_total"))
    assert isinstance(server, Redis)
    return server.log_text().count(REDIS_CUT)


def one_run(name: str, stalled: int, args: argparse.Namespace, tmp: Path, label: str) -> Run:
    server: Server
    if name == "tidings":
        server = Tidings(tmp, output_limit=args.limit, http=True)
    else:
        server = Redis(tmp / "redis", output_limit=args.limit)
    with server:
        hellos = [resp_subscribe(b"ticks")] * args.live
        with Fleet("127.0.0.1", server.port, hellos, processes=args.processes) as live:
            stuck = None
            if stalled:  # from source addresses of their own, after the live fleet's
                hello = resp_subscribe(b"ticks", b"bulk")
                stuck = Fleet("127.0.0.1", server.port, [hello] * stalled, processes=1,
                              first_source=2 + args.processes)  # fmt: skip
            try:
                time.sleep(1.0)  # let the subscriptions' allocations settle
                rss_before = server.rss()
                count = max(1, int(args.rate * args.seconds))
                ticks = Writer("redis", server.port, args.rate, count, size=args.payload)
                bulk_count = max(1, int(args.bulk_rate * args.seconds))
                bulk = Writer("redis", server.port, args.bulk_rate, bulk_count, channel=b"bulk",
                              size=args.bulk_size)  # fmt: skip
                live.start("stamps")
                profiler = None
                if args.profile and isinstance(server, Tidings):
                    profiler = Profiler(server.pid, args.profile / f"{label}.txt")
                cpu0 = server.cpu()
                with PeakRss(server) as peak:
                    ticks.go()
                    bulk.go()
                    w = ticks.result()
                    bulk.result()
                    live.expect(Expect(w.sent))
                    reports = live.results()
                cpu = server.cpu() - cpu0
                if profiler is not None:
                    log(f"profile {label}:\n{profiler.stop()}")
                rss_end = server.rss()
                client_cut = stuck.drain().closed if stuck else 0
                cut = server_cut(server)
            finally:
                if stuck:
                    stuck.close()
    total = merge(reports)
    lat = samples(reports)
    return Run(
        server=name,
        stalled=stalled,
        p50=percentile(lat, 50) / 1e6,
        p99=percentile(lat, 99) / 1e6,
        p999=percentile(lat, 99.9) / 1e6,
        rss_before=rss_before,
        rss_peak=peak.peak,
        peak_at=peak.at,
        rss_end=rss_end,
        server_cut=cut,
        client_cut=client_cut,
        server_cpu=cpu,
        live_cpu=total.cpu,
        complete=total.messages == w.sent * args.live and total.closed == 0,
        late=w.late,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=10_000, help="live subscribers")
    parser.add_argument("--stalled", type=int, default=100, help="stalled subscribers")
    parser.add_argument("--limit", type=int, default=1 << 20, help="output limit, bytes")
    parser.add_argument("--rate", type=float, default=5.0, help="ticks PUBLISHed per second")
    parser.add_argument("--payload", type=int, default=200, help="bytes per tick")
    parser.add_argument("--bulk-rate", type=float, default=25.0, help="bulk PUBLISH per second")
    parser.add_argument("--bulk-size", type=int, default=32768, help="bytes per bulk message")
    parser.add_argument("--seconds", type=float, default=15.0, help="per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each: with and without)")
    parser.add_argument("--processes", type=int, default=4, help="live subscriber processes")
    parser.add_argument("--servers", default="tidings,redis")
    parser.add_argument("--profile", type=Path, help="py-spy the daemon; raw stacks go here")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    runs: dict[tuple[str, int], list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for name in args.servers.split(","):
                for stalled in (0, args.stalled):
                    label = f"{name}-stalled{stalled}-round{round_ + 1}"
                    r = one_run(name, stalled, args, Path(tmp), label)
                    runs.setdefault((name, stalled), []).append(r)
                    log(
                        f"round {round_ + 1} {name} stalled={stalled}: p50 {r.p50:.2f} "
                        f"p99 {r.p99:.2f} ms; RSS {r.rss_before / 2**20:.1f} -> peak "
                        f"{r.rss_peak / 2**20:.1f} (at {r.peak_at:.1f}s) -> end "
                        f"{r.rss_end / 2**20:.1f} MiB; cut {r.server_cut} (clients saw "
                        f"{r.client_cut}); cpu {r.server_cpu:.2f}s; "
                        f"{'complete' if r.complete else 'INCOMPLETE'}; {r.late} late sends"
                    )

    def med(rs: list[Run], key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in rs)

    rows = []
    for name in args.servers.split(","):
        base = runs[(name, 0)]
        for stalled in (0, args.stalled):
            rs = runs[(name, stalled)]
            p99s = sorted(r.p99 for r in rs)
            rows.append(
                [
                    name,
                    stalled,
                    med(rs, "p50"),
                    med(rs, "p99"),
                    f"{p99s[0]:.1f}-{p99s[-1]:.1f}",
                    f"{med(rs, 'p99') / med(base, 'p99') - 1:+.0%}",
                    med(rs, "rss_before") / 2**20,
                    med(rs, "rss_peak") / 2**20,
                    f"{med(rs, 'rss_peak') / med(base, 'rss_peak') - 1:+.0%}",
                    med(rs, "rss_end") / 2**20,
                    f"{med(rs, 'server_cut'):.0f} / {med(rs, 'client_cut'):.0f}",
                    med(rs, "server_cpu"),
                    med(rs, "live_cpu"),
                    "yes" if all(r.complete for r in rs) else "no",
                ]
            )
    print(
        f"\n{machine()}; {args.live:,} live subscribers, {args.rate:g} ticks/s of "
        f"{args.payload} B; stalled ones also on bulk: {args.bulk_rate:g}/s of "
        f"{args.bulk_size:,} B; output limit {args.limit:,} B; {args.seconds:g} s per run, "
        f"medians of {args.repeat} rounds"
    )
    print(
        md_table(
            [
                "server",
                "stalled",
                "live p50 ms",
                "live p99 ms",
                "p99 range ms",
                "p99 vs none stalled",
                "RSS before MiB",
                "RSS peak MiB",
                "peak vs none stalled",
                "RSS end MiB",
                "cut: server / clients saw",
                "server CPU s",
                "live subscribers CPU s",
                "all delivered to live",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
