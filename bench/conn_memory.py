"""What an idle subscriber costs the daemon, by source line: tracemalloc in an in-process
daemon (pub/sub only) while a thread opens --count connections of one kind (RESP
SUBSCRIBE, or WebSocket upgrade + subscribe, each to a channel of its own), after one of
the same kind warmed the code paths. uvloop's own allocations (transports, libuv handles)
are counted too: they show at the line that runs the loop. bench/idle.py measures the RSS;
this says where it goes.

    .venv/bin/python bench/conn_memory.py [--kind resp|ws] [--count 2000] [--top 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sysconfig
import threading
import tracemalloc
from collections.abc import Callable

import uvloop
from harness import free_port
from harness import table as md_table
from loadgen import Hello, resp_subscribe, ws_subscribe

from tidings.config import load
from tidings.daemon import Daemon

STDLIB = sysconfig.get_paths()["stdlib"] + "/"


def connect(
    port: int, count: int, hello_of: Callable[[bytes], Hello], out: list[socket.socket]
) -> None:
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        hello = hello_of(b"idle:%d" % i)
        sock.sendall(hello.data)
        got = b""
        while hello.terminator not in got:
            got += sock.recv(4096)
        out.append(sock)


async def opened(port: int, count: int, hello_of: Callable[[bytes], Hello]) -> list[socket.socket]:
    """`count` connections opened by a thread while this loop serves them."""
    socks: list[socket.socket] = []
    thread = threading.Thread(target=connect, args=(port, count, hello_of, socks))
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the last subscriptions' replies are out
    return socks


async def measure(kind: str, count: int, top: int) -> None:
    resp_port, http_port = free_port(), free_port()
    settings = load(
        overrides={"resp": f"127.0.0.1:{resp_port}", "http": f"127.0.0.1:{http_port}"}, env={}
    )
    daemon = Daemon(settings)
    task = asyncio.ensure_future(daemon.run())
    await daemon.listening.wait()
    port, hello_of = (http_port, ws_subscribe) if kind == "ws" else (resp_port, resp_subscribe)
    socks = await opened(port, 1, hello_of)  # warm-up: first-use allocations are not per conn
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    socks += await opened(port, count, hello_of)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    rows = []
    for s in stats[:top]:
        frame = s.traceback[0]
        where = frame.filename.removeprefix(STDLIB).split("site-packages/")[-1]
        where = where.split("/src/")[-1]
        rows.append([f"{where}:{frame.lineno}", s.size_diff / count, s.count_diff / count])
    print(f"\n{kind}: {total / count:,.0f} bytes per idle connection (allocations seen by "
          f"tracemalloc, {count:,} connections)")  # fmt: skip
    print(md_table(["where", "bytes per connection", "blocks per connection"], rows))
    for sock in socks:
        sock.close()
    task.cancel()
    await daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["resp", "ws"], default="resp")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    uvloop.run(measure(args.kind, args.count, args.top))


if __name__ == "__main__":
    main()
