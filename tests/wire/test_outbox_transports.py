"""Outboxes over the event loops' real transports (uvloop and asyncio), on both flush paths:
many connections, plain and TLS mixed, stalled readers (partial sends), clients leaving and
transports aborted mid-stream, and a descriptor number reused by the next connection.

Every connection's stream is unique (each round sends one event shared by all and a piece
naming the connection), so bytes lost, repeated, reordered or delivered to the wrong
connection all show as a mismatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import cast

import pytest
import trustme
import uvloop

from tidings.wire import outbox
from tidings.wire.outbox import Flusher, Outbox, open_outbox

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
log = logging.getLogger("tests.outbox")


class Server(asyncio.Protocol):
    """A connection that only sends: its outbox, with flow control forwarded."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.box: Outbox | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        if self.hub.sndbuf:
            t.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, self.hub.sndbuf
            )
        self.box = open_outbox(
            t, self.hub.flusher, self.hub.limit, farewell=b"", name="t", logger=log,
            on_cut=lambda: None,
        )  # fmt: skip
        self.hub.accepted.put_nowait(self)

    def pause_writing(self) -> None:
        assert self.box is not None
        self.box.pause_writing()

    def resume_writing(self) -> None:
        assert self.box is not None
        self.box.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.box is not None and self.hub.forward_lost:
            self.box.lost()
        if not self.lost.done():
            self.lost.set_result(None)


class Hub:
    def __init__(self, limit: int = 1 << 30, sndbuf: int = 0) -> None:
        self.flusher = Flusher()
        self.limit = limit
        self.sndbuf = sndbuf
        self.accepted: asyncio.Queue[Server] = asyncio.Queue()
        self.forward_lost = True


@contextlib.contextmanager
def count_python_sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many sends went through `Outbox._send` (the rest of stats.writes were C's)."""
    counter = [0]
    original = Outbox._send

    def counted(self: Outbox) -> None:
        counter[0] += 1
        original(self)

    monkeypatch.setattr(Outbox, "_send", counted)
    yield counter


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def read_all(reader: asyncio.StreamReader, stall: float) -> bytes:
    await asyncio.sleep(stall)  # a stalled reader: the server's sends fill the socket
    out = bytearray()
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # a reset or aborted one
        while data := await reader.read(1 << 16):
            out += data
    return bytes(out)


def run(loop_name: str, scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(scenario())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_many_connections_plain_and_tls_stalled_and_leaving(
    loop_name: str, flush_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    plain_n, tls_n, rounds = 40, 8, 150

    async def scenario() -> None:
        hub = Hub(sndbuf=8192)  # small: stalled readers cause partial sends and EAGAIN
        server_ctx, client_ctx = tls_contexts()
        loop = asyncio.get_running_loop()
        plain = await loop.create_server(lambda: Server(hub), "127.0.0.1", 0)
        tls = await loop.create_server(lambda: Server(hub), "127.0.0.1", 0, ssl=server_ctx)
        clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]] = []
        for i in range(plain_n + tls_n):
            is_tls = i >= plain_n
            port = (tls if is_tls else plain).sockets[0].getsockname()[1]
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            reader, writer = await asyncio.open_connection(
                sock=sock,
                ssl=client_ctx if is_tls else None,
                server_hostname="localhost" if is_tls else None,
            )
            clients.append((reader, writer, is_tls))
        servers = [await hub.accepted.get() for _ in clients]
        # accepted in connection order per listener; match them by the client's local port
        by_port: dict[int, Server] = {}
        for server in servers:
            assert server.box is not None
            peer = server.box.transport.get_extra_info("peername")
            by_port[peer[1]] = server
        pairs = [
            (by_port[w.get_extra_info("sockname")[1]], r, w, is_tls) for r, w, is_tls in clients
        ]
        for server, _, _, is_tls in pairs:
            assert server.box is not None
            compiled_plain = flush_path == "compiled" and not is_tls
            assert (server.box._fd >= 0) == compiled_plain
            # a TLS transport reports its socket too: only its type keeps C from sending there
            assert server.box.transport.get_extra_info("socket") is not None

        stalls = [rng.choice([0.0, 0.0, 0.3, 1.0]) for _ in pairs]
        readers = [
            asyncio.ensure_future(read_all(r, stall))
            for (_, r, _, _), stall in zip(pairs, stalls, strict=True)
        ]
        expected = [bytearray() for _ in pairs]
        leave_at = {i: rng.randrange(rounds) for i in rng.sample(range(len(pairs)), 8)}
        abort_at = {
            i: rng.randrange(rounds) for i in rng.sample(sorted(set(range(len(pairs))) -
                                                              set(leave_at)), 4)
        }  # fmt: skip
        for k in range(rounds):
            event = b"<event %d %s>" % (k, b"e" * rng.randrange(0, 3000))
            for i, (server, _, writer, _) in enumerate(pairs):
                box = server.box
                assert box is not None
                if leave_at.get(i) == k:
                    writer.transport.abort()  # the client goes: reset, mid-stream
                if abort_at.get(i) == k:
                    box.transport.abort()  # and the server drops one: write after abort
                piece = b"[conn %d round %d]" % (i, k)
                box.write(event)
                box.write(piece)
                if rng.random() < 0.3:
                    box.write(event)  # several chunks in one iteration
                    expected[i] += event + piece + event
                else:
                    expected[i] += event + piece
            await asyncio.sleep(0 if rng.random() < 0.8 else 0.005)
        for server, _, _, _ in pairs:
            assert server.box is not None
            server.box.close(linger=30)
        received = await asyncio.wait_for(asyncio.gather(*readers), 60)
        for i, got in enumerate(received):
            if i in leave_at or i in abort_at:
                assert expected[i].startswith(got), f"connection {i}: not a prefix"
            else:
                assert got == bytes(expected[i]), f"connection {i}: {len(got)} bytes"
        plain.close()
        tls.close()

    with count_python_sends(monkeypatch) as python_sends:
        run(loop_name, scenario)
    if flush_path == "compiled":
        assert python_sends[0] > 0  # TLS, stalled and partial sends took the Python path
    # (how many the C loop made is checked exactly in the counting test below)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_counters_match_the_bytes_received(
    loop_name: str, flush_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        hub = Hub()
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: Server(hub), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        servers = [await hub.accepted.get() for _ in conns]
        readers = [asyncio.ensure_future(read_all(r, 0)) for r, _ in conns]
        for k in range(100):
            for server in servers:
                assert server.box is not None
                server.box.write(b"event %d;" % k)
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        stats = hub.flusher.stats
        bytes_written, writes = stats.bytes_written, stats.writes
        for server in servers:
            assert server.box is not None
            server.box.close()
        received = await asyncio.wait_for(asyncio.gather(*readers), 30)
        assert all(got == b"".join(b"event %d;" % k for k in range(100)) for got in received)
        assert bytes_written == sum(map(len, received))
        assert writes == 20 * 100  # one send per connection per iteration, on either path
        counts.append(writes)
        listener.close()

    counts: list[int] = []
    with count_python_sends(monkeypatch) as python_sends:
        run(loop_name, scenario)
    # the compiled path made every send itself (fast readers: nothing partial); the
    # Python path made them all through Outbox._send
    expected_python = 0 if flush_path == "compiled" else counts[0]
    assert python_sends[0] == expected_python


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_reused_descriptor_never_gets_the_old_connections_bytes(
    loop_name: str, flush_path: str
) -> None:
    """A protocol that does not forward connection_lost leaves its outbox open after the
    transport closed its socket; the next connection gets the same descriptor number.
    Writing to the old outbox must not reach the new connection."""

    async def scenario() -> None:
        hub = Hub()
        hub.forward_lost = False
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: Server(hub), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        _, first_writer = await asyncio.open_connection("127.0.0.1", port)
        old = await hub.accepted.get()
        assert old.box is not None
        old_fd = old.box.transport.get_extra_info("socket").fileno()
        client = socket.socket()  # made now, so the accepted socket gets the freed number
        old.box.transport.abort()
        await old.lost  # the transport has let its socket go
        await asyncio.sleep(0.05)
        client.connect(("127.0.0.1", port))  # the kernel completes it from the backlog
        reader, _ = await asyncio.open_connection(sock=client)
        new = await hub.accepted.get()
        assert new.box is not None
        assert new.box.transport.get_extra_info("socket").fileno() == old_fd  # reused
        assert not old.box.closed  # nobody told it
        old.box.write(b"SECRET of the old connection")
        new.box.write(b"hello new")
        await asyncio.sleep(0.05)
        new.box.close()
        got = await asyncio.wait_for(read_all(reader, 0), 10)
        assert got == b"hello new"
        assert old.box.closed  # the flush saw the transport closing and dropped the queue
        first_writer.close()
        listener.close()

    run(loop_name, scenario)


def test_open_outbox_gives_no_descriptor_without_the_compiled_loop(
    flush_path: str,
) -> None:
    async def scenario() -> None:
        hub = Hub()
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: Server(hub), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        server = await hub.accepted.get()
        assert server.box is not None
        expect_fd = flush_path == "compiled"
        assert (server.box._fd >= 0) == expect_fd
        assert outbox.plain_socket_fd(server.box.transport) == server.box._fd
        writer.close()
        listener.close()

    run("uvloop", scenario)
