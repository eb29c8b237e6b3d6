"""Where one delivery's time goes, when each delivery is its own send (one event, many
subscribers, as in bench/latency.py): the Python around the send, and the send itself.

1. Python: `Hub.publish` of one event to N `RespConnection`s (real objects, real
   `Outbox`es) and the `Flusher`'s pass that writes them, with the transport's methods
   replaced by C builtins that do nothing (`list.append`, `bool`, `int`): what is left
   is the bookkeeping tidings adds around each system call. The same for the many-channel
   fan-out: a client's PUBLISHes, pipelined 100 to a write, each to one of N channels of
   one subscriber (parsing, the command, the hub, the reply), and their parsing alone;
   with the C helpers (tidings.wire._cresp) and without, side by side.
   And `Hub.publish` alone with history off and with history full (what eviction costs).
2. The send: N loopback TCP connections (the readers drain them in another process);
   one round writes --size bytes to each, through uvloop's `transport.write`, and
   through `os.write` on the same descriptors (the system call alone).
3. The whole delivery over those connections, which are tidings `RespConnection`s
   subscribed to one channel: `Hub.publish` of one --size event and the `Flusher`'s pass,
   with the pure-Python flush (`Outbox._send`, uvloop's `transport.write`) and with the
   compiled one (`tidings.wire._cflush`: send(2) from C), alternated round by round.

CPU time per delivery, median of --rounds rounds.

    .venv/bin/python bench/delivery_cost.py [--subscribers 1000] [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import statistics
import time
from typing import Any, cast

import uvloop
from harness import machine, resp_command
from harness import table as md_table
from loadgen import _ctx

from tidings.hub import Hub
from tidings.wire import outbox
from tidings.wire.resp import RespParser
from tidings.wire.resp_server import RespService, RespSettings

try:
    from tidings.wire import _cflush
except ImportError:  # not built: its row is left out
    _cflush = None


class FreeTransport:
    """The methods an `Outbox` calls, as C builtins that do (almost) nothing."""

    def __init__(self, number: int) -> None:
        self.sink: list[bytes] = []
        self.write = self.sink.append
        self.is_closing = bool  # bool() is False
        self.get_write_buffer_size = int  # int() is 0
        self.peer = ("127.0.0.2", 40000 + number)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


async def python_path(subscribers: int, size: int, rounds: int) -> float:
    """Microseconds of CPU per delivery: publish + flush, the transport calls free."""
    hub = Hub(history_events=0)
    service = RespService(hub)
    transports = []
    for i in range(subscribers):
        transport = FreeTransport(i)
        conn = service.protocol()
        conn.connection_made(transport)  # type: ignore[arg-type]
        hub.subscribe(conn, "ticks")
        transports.append(transport)
    flusher = service.flusher
    body = b"x" * size
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        hub.publish("ticks", body)
        flusher._flush()  # what the loop's call_soon would run
        times.append(time.process_time() - t0)
        for transport in transports:
            transport.sink.clear()
    return statistics.median(times) / subscribers * 1e6


def history_path(size: int, rounds: int) -> tuple[float, float]:
    """Microseconds of CPU per `Hub.publish` with no subscriber: history off, and history
    full (600 events, each publish evicts one, as in bench/soak.py), one channel."""
    body = b"x" * size
    result = []
    for events in (0, 600):
        hub = Hub(history_events=events)
        for _ in range(2 * events):
            hub.publish("ticks", body)
        times = []
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(1000):
                hub.publish("ticks", body)
            times.append(time.process_time() - t0)
        result.append(statistics.median(times) / 1000 * 1e6)
    return result[0], result[1]


async def publish_path(
    channels: int, size: int, rounds: int, native: bool = True
) -> tuple[float, float, float]:
    """Microseconds of CPU per PUBLISH to a channel of one subscriber, all of it and the
    parsing alone (medians), and all of it on average over the rounds (garbage collection
    included), the transport calls free. `native=False`: without the C helpers
    (tidings.wire._cresp: RESP parsing, history events out of the garbage collector)."""
    hub = Hub()
    if not native:
        hub.history._untrack = None
    service = RespService(hub, RespSettings(allow_publish=True))
    transports = []
    for i in range(channels):
        transport = FreeTransport(i)
        conn = service.protocol()
        conn.connection_made(transport)  # type: ignore[arg-type]
        hub.subscribe(conn, f"c{i}")
        transports.append(transport)
    publisher_transport = FreeTransport(channels)
    publisher = service.protocol()
    publisher.connection_made(publisher_transport)  # type: ignore[arg-type]
    publisher.parser = RespParser(native=native)
    payload = b"x" * size
    blobs = [
        b"".join(resp_command(b"PUBLISH", b"c%d" % (i + k), payload) for k in range(100))
        for i in range(0, channels - 99, 100)
    ]
    whole, parsing = [], []
    parser = RespParser(native=native)
    for r in range(rounds):
        blob = blobs[r % len(blobs)]
        t0 = time.process_time()
        publisher.data_received(blob)
        service.flusher._flush()
        whole.append(time.process_time() - t0)
        t0 = time.process_time()
        parser.feed(blob)
        while parser.next_command() is not None:
            pass
        parsing.append(time.process_time() - t0)
        publisher_transport.sink.clear()
        if r % len(blobs) == len(blobs) - 1:
            for transport in transports:
                transport.sink.clear()
    # / 100 * 1e6
    return (
        statistics.median(whole) * 1e4,
        statistics.median(parsing) * 1e4,
        sum(whole) / rounds * 1e4,
    )


def _drain(port: int, subscribers: int) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(subscribers)]
    ep = select.epoll()
    by_fd = {}
    for sock in socks:
        sock.setblocking(False)
        ep.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = sock
    buf = bytearray(1 << 16)
    while by_fd:
        for fd, _ in ep.poll(1.0):
            try:
                if by_fd[fd].recv_into(buf) == 0:
                    ep.unregister(fd)
                    del by_fd[fd]
            except BlockingIOError:
                pass


async def sends(subscribers: int, size: int, rounds: int) -> dict[str, float]:
    """Microseconds of CPU per send: uvloop's transport.write against os.write, and per
    delivery, publish + flush through either flush loop."""
    loop = asyncio.get_running_loop()
    hub = Hub(history_events=0)
    service = RespService(hub)
    if _cflush is not None:  # whatever TIDINGS_PURE_PYTHON says: both loops are compared
        _cflush.bind(outbox.Outbox)
        outbox._cflush = _cflush
    server = await loop.create_server(service.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = _ctx.Process(target=_drain, args=(port, subscribers), daemon=True)
    reader.start()
    while len(service.connections) < subscribers:
        await asyncio.sleep(0.01)
    conns = list(service.connections)
    for conn in conns:
        hub.subscribe(conn, "ticks")
    # uvloop's transports are not asyncio.Transport subclasses, but have its methods
    transports = [cast(asyncio.Transport, conn.transport) for conn in conns]
    fds = [t.get_extra_info("socket").fileno() for t in transports]
    if _cflush is not None:  # the compiled loop will send to these sockets itself
        assert [conn.outbox._fd for conn in conns] == fds
    data = b"x" * size
    flushes = {"python flush": None, "compiled flush": _cflush}
    if _cflush is None:
        del flushes["compiled flush"]
    times: dict[str, list[float]] = {"transport.write": [], "os.write": []}
    times.update({name: [] for name in flushes})
    write = os.write
    flusher = service.flusher
    for _ in range(rounds):
        t0 = time.process_time()
        for transport in transports:
            transport.write(data)
        times["transport.write"].append(time.process_time() - t0)
        await asyncio.sleep(0.002)  # the reader drains
        t0 = time.process_time()
        for fd in fds:
            write(fd, data)
        times["os.write"].append(time.process_time() - t0)
        await asyncio.sleep(0.002)
        for name, module in flushes.items():
            outbox._cflush = module
            t0 = time.process_time()
            hub.publish("ticks", data)
            flusher._flush()  # what the loop's call_soon would run
            times[name].append(time.process_time() - t0)
            await asyncio.sleep(0.002)
    outbox._cflush = _cflush
    for transport in transports:
        transport.close()
    server.close()
    await asyncio.sleep(0.2)
    reader.join(10)
    return {k: statistics.median(v) / subscribers * 1e6 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--size", type=int, default=290, help="event bytes (latency.py's)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--channels", type=int, default=10_000, help="many-channel case")
    args = parser.parse_args()
    python = uvloop.run(python_path(args.subscribers, args.size, args.rounds))
    publish, parse, mean = uvloop.run(publish_path(args.channels, 200, args.rounds * 10))
    pure = uvloop.run(publish_path(args.channels, 200, args.rounds * 10, native=False))
    send = uvloop.run(sends(args.subscribers, args.size, args.rounds))
    no_history, full_history = history_path(args.size, args.rounds)
    print(f"\n{machine()}; {args.subscribers:,} subscribers, {args.size} B, median of "
          f"{args.rounds} rounds")  # fmt: skip
    rows = [
        ["Python: Hub.publish + Flusher pass, transport calls free", python],
        ["uvloop transport.write (the send, as tidings makes it)", send["transport.write"]],
        ["os.write on the same sockets (the system call alone)", send["os.write"]],
        [
            "delivery: Hub.publish + Flusher pass, pure-Python flush (transport.write)",
            send["python flush"],
        ],
        [
            "delivery: Hub.publish + Flusher pass, compiled flush (send(2) from C)",
            send.get("compiled flush", float("nan")),
        ],
        [
            f"Python: PUBLISH (pipelined x100, 200 B) to 1 of {args.channels:,} channels of 1 "
            "subscriber, the transport calls free",
            publish,
            pure[0],
        ],
        ["of which RESP parsing of the PUBLISH", parse, pure[1]],
        ["the same PUBLISH, mean over the rounds (garbage collection included)", mean, pure[2]],
        ["Python: Hub.publish, no subscriber, history off", no_history],
        [
            "Python: Hub.publish, no subscriber, history full (600: each publish evicts one)",
            full_history,
        ],
    ]
    for row in rows:
        if len(row) == 2:
            row.append("")
    print(md_table(["per delivery", "CPU us", "without C helpers (_cresp)"], rows))


if __name__ == "__main__":
    main()
