"""Multi-core: pipelined-PUBLISH fan-out with `tidings serve --workers 1` against `--workers 2`.

The fan-out benchmark's run (bench/fanout.py: one channel, N subscribers, a publisher
pipelining --batch PUBLISHes; the same load generator) against tidings started with
each worker count in turn, --repeat times, alternating, each run on a fresh daemon.
Subscribers connect to the one port and the kernel spreads them over the workers
(SO_REUSEPORT hashing). With workers, every PUBLISH goes to the binlog-reader process
(which gives ids) and comes back to every worker through the event feed; each worker
writes to its own subscribers.

Daemon CPU is summed over all its processes (the reader and the workers, from
/proc/<pid>/task/*/schedstat), and so is the time they were runnable but waited for
a CPU (schedstat's run delay): on a shared 2-core machine the load generator and
anything else running take cores from the daemon, and that column says how much.
Read the CPU per delivery beside the rate: it is what extrapolates to a machine
with more cores.

    .venv/bin/python bench/workers.py [--subscribers 10000] [--workers 1,2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

from fanout import Run, channel_names, run_one
from harness import Tidings, log, machine, raise_nofile, resp_command
from harness import table as md_table
from loadgen import Fleet, resp_subscribe


def clients_per_worker(port: int, workers: int) -> str:
    """Connected clients of each worker (INFO on connections until each has answered)."""
    found: dict[int, int] = {}
    for _ in range(200 * workers):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(resp_command(b"INFO"))
            data = b""
            while not data.endswith(b"\r\n\r\n"):
                data += sock.recv(4096)
        fields = dict(line.split(":", 1) for line in data.decode().split("\r\n") if ":" in line)
        # minus this INFO connection itself
        found[int(fields["tidings_worker"])] = int(fields["connected_clients"]) - 1
        if len(found) == workers:
            break
    return "/".join(f"{found[k]:,}" for k in sorted(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4, help="subscriber processes")
    parser.add_argument("--batch", type=int, default=100, help="PUBLISH per write")
    parser.add_argument("--pipelined-count", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0, help="publisher time cap per run")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--repeat", type=int, default=5, help="runs per worker count")
    args = parser.parse_args()
    raise_nofile()
    payload = (b"0123456789abcdef" * (args.payload // 16 + 1))[: args.payload]
    counts = [int(n) for n in args.workers.split(",")]
    channels = channel_names("one", 1)
    hellos = [resp_subscribe(channels[0]) for _ in range(args.subscribers)]
    runs: dict[int, list[Run]] = {n: [] for n in counts}
    spread: dict[int, list[str]] = {n: [] for n in counts}
    #: seconds the daemon's processes were runnable but had no CPU, per run
    waits: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for workers in counts:
                with Tidings(Path(tmp), workers=workers) as server:
                    t0 = time.monotonic()
                    with Fleet("127.0.0.1", server.port, hellos, processes=args.processes) as fleet:
                        shares = clients_per_worker(server.port, workers)
                        spread[workers].append(shares)
                        log(f"--workers {workers}: {fleet.size} subscribers in "
                            f"{time.monotonic() - t0:.1f}s, per worker {shares}")  # fmt: skip
                        waited = server.waited()
                        r = run_one(
                            server,
                            fleet,
                            channels,
                            payload,
                            "pipelined",
                            args,
                            None,
                            f"workers{workers}",
                            local_replies=workers > 1,
                        )
                        waits[workers].append(server.waited() - waited)
                    runs[workers].append(r)
                    log(
                        f"round {round_ + 1} --workers {workers}: {r.rate:,.0f} deliveries/s "
                        f"({r.deliveries:,}/{r.expected:,} in {r.elapsed:.2f}s); daemon CPU "
                        f"{r.server_cpu:.2f}s = {1e6 * r.server_cpu / max(1, r.deliveries):.3f} "
                        f"us/delivery, waited {waits[workers][-1]:.2f}s for a CPU; "
                        f"subs {r.sub_cpu:.2f}s {r.errors or ''}"
                    )
    base = statistics.median(r.rate for r in runs[counts[0]])
    base_cpu = statistics.median(r.server_cpu / max(1, r.deliveries) for r in runs[counts[0]])
    rows = []
    for workers in counts:
        rs = runs[workers]
        rate = statistics.median(r.rate for r in rs)
        cpu = statistics.median(r.server_cpu / max(1, r.deliveries) for r in rs)
        rows.append(
            [
                workers,
                rate,
                f"{min(r.rate for r in rs):,.0f}-{max(r.rate for r in rs):,.0f}",
                f"{rate / base:.2f}x",
                1e6 * cpu,
                f"{cpu / base_cpu - 1:+.1%}",
                statistics.median(r.server_cpu for r in rs),
                statistics.median(waits[workers]),
                statistics.median(r.sub_cpu for r in rs),
                statistics.median(r.elapsed for r in rs),
                "yes" if all(r.deliveries == r.expected for r in rs) else "no",
                spread[workers][0],
            ]
        )
    print(
        f"\n{machine()}; 1 channel x {args.subscribers:,} subscribers, pipelined x{args.batch}, "
        f"payload {args.payload} B; median of {args.repeat} runs each"
    )
    print(
        md_table(
            [
                "workers",
                "deliveries/s",
                "range",
                "vs 1 worker",
                "daemon CPU us/delivery",
                "CPU/delivery vs 1",
                "daemon CPU s",
                "daemon waiting for a CPU s",
                "subscribers CPU s",
                "seconds",
                "all delivered",
                "subscribers per worker (first run)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
