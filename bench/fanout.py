"""Fan-out: deliveries per second, tidings beside redis-server, same load generator, same run.

Two topologies, each against a fresh server process:

- one channel: N subscribers (default 10,000) on one channel, every message reaches all;
- many channels: N channels with one subscriber each, messages go round-robin over them.

Two ways to publish, from one publisher connection in its own process:

- single: one PUBLISH, wait for its reply, the next (each message is its own loop
  iteration on the server, so each delivery is its own send: the per-send floor);
- pipelined: --batch PUBLISH commands in one write, then their replies (the server can
  coalesce a batch into one write per subscriber).

Servers: `tidings` and `redis` (RESP subscribers), `tidings-ws`: a tidings daemon
whose subscribers are WebSocket clients (`GET /ws` upgrade and a subscribe message;
the publisher still speaks RESP to it), the same run's RESP figure beside it, and
`tidings-py`: tidings with TIDINGS_PURE_PYTHON=1 (none of its C extensions: the pure-Python
flush loop and RESP parser instead of the compiled ones).

Payloads are --payload bytes (200). The subscribers are `loadgen.Fleet` processes
(raw sockets, epoll, counting bytes: every frame has the same size). A run ends
when every subscriber has received every message published; deliveries/s is the
total over (last receipt - first publish). CPU seconds of the server, of the
subscriber processes and of the publisher are beside it: on 2 cores they share
the machine, so read the server's CPU per delivery as well as the rate.

    .venv/bin/python bench/fanout.py [--subscribers 10000] [--profile DIR]
        [--servers tidings,tidings-py,tidings-ws,redis] [--topologies one,many]
        [--modes single,pipelined]
"""

from __future__ import annotations

import argparse
import math
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import VENV_BIN, Redis, Server, Tidings, log, machine, raise_nofile, resp_command
from harness import table as md_table
from loadgen import (
    Expect,
    Fleet,
    Publisher,
    merge,
    resp_message_size,
    resp_subscribe,
    ws_message_size,
    ws_subscribe,
)


def channel_names(topology: str, n: int) -> list[bytes]:
    if topology == "one":
        return [b"fanout"]
    width = len(str(n - 1))
    return [b"c%0*d" % (width, i) for i in range(n)]


def publish_blobs(channels: Sequence[bytes], payload: bytes, batch: int) -> list[bytes]:
    """PUBLISH commands over `channels` in turn, `batch` to a blob, for one whole cycle."""
    total = math.lcm(len(channels), batch)
    commands = [
        resp_command(b"PUBLISH", channels[m % len(channels)], payload) for m in range(total)
    ]
    return [b"".join(commands[i : i + batch]) for i in range(0, total, batch)]


class Profiler:
    """py-spy sampling the daemon while a run goes on; raw collapsed stacks to a file."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "py-spy"),
                "record",
                "-p",
                str(pid),
                "-r",
                "250",
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches asynchronously; a profile is no measurement

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return summarise_profile(self.out)


def summarise_profile(path: Path, top: int = 10) -> str:
    """Where py-spy's samples landed: by line (self time) and by function (inclusive)."""
    leaf: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return "(no profile)"
    outer = ("<module>", "main", "run", "Runner.run", "run_forever")
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].split(" ")[0] in outer:
            # uvloop's loop is C: epoll_wait, reads and callbacks' C parts land here
            name = "uvloop C code (epoll wait, socket reads, writes of buffered data)"
        else:
            name = frames[-1]
        leaf[name] = leaf.get(name, 0) + n
        for function in {f.split(" ")[0] for f in frames} - set(outer):
            inclusive[function] = inclusive.get(function, 0) + n
        total += n
    if not total:
        return "(no samples)"
    out = ["  self time, by line:"]
    for name, n in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    out.append("  inclusive, by function:")
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


@dataclass(slots=True)
class Run:
    deliveries: int
    expected: int
    rate: float
    elapsed: float
    server_cpu: float
    sub_cpu: float
    pub_cpu: float
    short: int
    closed: int
    errors: list[str]
    profile: str


def run_one(
    server: Server,
    fleet: Fleet,
    channels: Sequence[bytes],
    payload: bytes,
    mode: str,
    args: argparse.Namespace,
    profile_dir: Path | None,
    label: str,
    *,
    local_replies: bool = False,
    frame: int = 0,
) -> Run:
    """One measured run; `local_replies`: PUBLISH counts one worker's subscribers only
    (tidings --workers), so its first reply is not checked against the fleet; `frame`:
    bytes per delivered message (default: a RESP message on channels[0])."""
    batch = 1 if mode == "single" else args.batch
    if len(channels) == 1:
        count = args.single_count if mode == "single" else args.pipelined_count
    else:
        count = args.many_single_count if mode == "single" else args.many_pipelined_count
    count = max(batch, count // batch * batch)
    blobs = publish_blobs(channels, payload, batch)
    frame = frame or resp_message_size(channels[0], len(payload))
    publisher = Publisher(server.port, blobs, batch, count, args.seconds)
    fleet.start("count")
    profiler = Profiler(server.pid, profile_dir / f"{label}.txt") if profile_dir else None
    cpu0 = server.cpu()
    publisher.go()
    pub = publisher.result()
    fleet.expect(Expect(pub.published, len(channels), frame))
    total = merge(fleet.results())
    server_cpu = server.cpu() - cpu0
    profile = profiler.stop() if profiler else ""
    one = len(channels) == 1
    reply = pub.first_reply.split(b"\r\n", 1)[0].decode(errors="replace")
    if reply != f":{fleet.size if one else 1}" and not local_replies:
        log(f"warning: first PUBLISH reply {reply!r}: not every subscriber was subscribed")
    deliveries = total.received // frame
    elapsed = max(total.last - pub.start, 1e-9)
    return Run(
        deliveries=deliveries,
        expected=pub.published * (fleet.size if one else 1),
        rate=deliveries / elapsed,
        elapsed=elapsed,
        server_cpu=server_cpu,
        sub_cpu=total.cpu,
        pub_cpu=pub.cpu,
        short=total.short,
        closed=total.closed,
        errors=total.errors,
        profile=profile,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4, help="subscriber processes")
    parser.add_argument("--batch", type=int, default=100, help="PUBLISH per write, pipelined")
    parser.add_argument("--single-count", type=int, default=300)
    parser.add_argument("--pipelined-count", type=int, default=3000)
    parser.add_argument("--many-single-count", type=int, default=100_000)
    parser.add_argument("--many-pipelined-count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="publisher time cap per run")
    parser.add_argument("--servers", default="tidings,redis")
    parser.add_argument("--topologies", default="one,many")
    parser.add_argument("--modes", default="single,pipelined")
    parser.add_argument("--profile", type=Path, help="py-spy the daemon; raw stacks go here")
    args = parser.parse_args()
    raise_nofile()
    payload = (b"0123456789abcdef" * (args.payload // 16 + 1))[: args.payload]
    profile_dir: Path | None = args.profile
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)

    results: dict[tuple[str, str, str], Run] = {}
    topologies = args.topologies.split(",")
    modes = args.modes.split(",")
    versions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.servers.split(","):
            for topology in topologies:
                channels = channel_names(topology, args.subscribers)
                ws = name == "tidings-ws"
                subscribe = ws_subscribe if ws else resp_subscribe
                hellos = [subscribe(channels[i % len(channels)]) for i in range(args.subscribers)]
                server: Server
                if name.startswith("tidings"):
                    server = Tidings(Path(tmp), http=ws, pure_python=name == "tidings-py")
                else:
                    server = Redis(Path(tmp) / "redis")
                    versions["redis"] = server.version()
                with server:
                    if isinstance(server, Tidings):
                        time.sleep(0.2)  # the line follows the listener's by a moment
                        log(f"{name}: flush loop {server.flush_loop()}")
                    t0 = time.monotonic()
                    rss0 = server.rss()
                    port = server.http_port if isinstance(server, Tidings) and ws else server.port
                    with Fleet("127.0.0.1", port, hellos, processes=args.processes) as fleet:
                        log(
                            f"{name} {topology}: {fleet.size} subscribers in "
                            f"{time.monotonic() - t0:.1f}s, server RSS "
                            f"+{(server.rss() - rss0) / 2**20:.0f} MiB"
                        )
                        for mode in modes:
                            label = f"{name}-{topology}-{mode}"
                            r = run_one(
                                server,
                                fleet,
                                channels,
                                payload,
                                mode,
                                args,
                                profile_dir if name.startswith("tidings") else None,
                                label,
                                frame=ws_message_size(len(payload)) if ws else 0,
                            )
                            results[(topology, mode, name)] = r
                            log(
                                f"{label}: {r.rate:,.0f} deliveries/s "
                                f"({r.deliveries:,}/{r.expected:,} in {r.elapsed:.2f}s); "
                                f"cpu server {r.server_cpu:.2f}s subs {r.sub_cpu:.2f}s "
                                f"pub {r.pub_cpu:.2f}s {r.errors or ''}"
                            )
                            if r.profile:
                                log(f"profile {label} (self time):\n{r.profile}")

    rows = []
    for topology in topologies:
        for mode in modes:
            anchor = results.get((topology, mode, "redis"))
            resp_run = results.get((topology, mode, "tidings"))
            for name in args.servers.split(","):
                found = results.get((topology, mode, name))
                if found is None:
                    continue
                r = found
                what = (
                    f"1 channel x {args.subscribers:,} subs"
                    if topology == "one"
                    else f"{args.subscribers:,} channels x 1 sub"
                )
                ratio = f"{r.rate / anchor.rate:.2f}x" if anchor else "-"
                vs_resp = f"{r.rate / resp_run.rate:.2f}x" if resp_run and name != "redis" else "-"
                complete = (
                    "yes" if r.deliveries == r.expected else f"{r.deliveries:,}/{r.expected:,}"
                )
                rows.append(
                    [
                        what,
                        mode if mode == "single" else f"pipelined x{args.batch}",
                        name,
                        r.rate,
                        ratio,
                        vs_resp,
                        r.elapsed,
                        r.server_cpu,
                        1e6 * r.server_cpu / max(1, r.deliveries),
                        r.sub_cpu,
                        r.pub_cpu,
                        complete,
                    ]
                )
    print(f"\n{machine()}; redis-server {versions.get('redis', '-')}; payload {args.payload} B")
    print(
        md_table(
            [
                "topology",
                "publishing",
                "server",
                "deliveries/s",
                "vs redis",
                "vs tidings (RESP)",
                "seconds",
                "server CPU s",
                "server CPU us/delivery",
                "subscribers CPU s",
                "publisher CPU s",
                "all delivered",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
