"""The compiled flush loop at the byte level: outboxes over a real socket pair, with a
recording transport playing the event loop's, on both flush paths (`flush_path`).

The compiled path sends to the socket itself and hands the transport only what it could
not send; the Python path hands the transport everything. Either way the socket's bytes
followed by the transport's must be exactly what was queued, in order, counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.wire.test_outbox import FakeTransport
from tidings.wire import outbox
from tidings.wire.outbox import Flusher, Outbox


class BufferingTransport(FakeTransport):
    """What the transport is handed stays in its buffer (as a loop's does while the kernel
    is full), so the compiled path must keep out of the socket from then on."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = True


@contextlib.contextmanager
def pair(sndbuf: int = 0) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected stream pair; `sndbuf` shrinks the sender's buffer (partial sends)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def drain(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def make(
    fd: int, transport: FakeTransport | None = None, limit: int = 1 << 30
) -> tuple[Outbox, FakeTransport, Flusher]:
    transport = transport or FakeTransport()
    flusher = Flusher()
    return Outbox(transport, flusher, limit, name="t", fd=fd), transport, flusher


async def test_a_queue_goes_straight_to_the_socket(flush_path: str) -> None:
    with pair() as (a, b):
        box, transport, flusher = make(a.fileno())
        chunks = [b"one,", b"two,", b"three"]
        for chunk in chunks:
            box.write(chunk)
        await asyncio.sleep(0)
        got = drain(b)
        if flush_path == "compiled":
            assert got == b"one,two,three" and transport.writes == []
        else:
            assert got == b"" and transport.writes == [b"one,two,three"]
        assert box.queued == 0
        assert (flusher.stats.writes, flusher.stats.bytes_written) == (1, 13)
        box.write(b"again")  # the queue is reusable after a direct send
        await asyncio.sleep(0)
        assert drain(b) + b"".join(transport.writes[1:]) == b"again"
        assert (flusher.stats.writes, flusher.stats.bytes_written) == (2, 18)


async def test_a_partial_send_hands_the_exact_rest_to_the_transport(flush_path: str) -> None:
    with pair(sndbuf=4096) as (a, b):
        box, transport, flusher = make(a.fileno(), BufferingTransport())
        # uneven chunks, so the send stops inside one; 46 KB, under the early-flush size
        chunks = [bytes([65 + i % 26]) * (1000 + 37 * i) for i in range(30)]
        for chunk in chunks:
            box.write(chunk)
        await asyncio.sleep(0)
        sent = drain(b)
        whole = b"".join(chunks)
        assert sent + b"".join(transport.writes) == whole
        assert flusher.stats.bytes_written == len(whole)
        if flush_path == "compiled":
            assert 0 < len(sent) < len(whole)  # the kernel took some, not all
        else:
            assert sent == b""


async def test_a_full_socket_sends_nothing_and_hands_all_over(flush_path: str) -> None:
    with pair(sndbuf=4096) as (a, b):
        with contextlib.suppress(BlockingIOError):
            while True:
                a.send(b"\0" * 4096)
        box, transport, flusher = make(a.fileno(), BufferingTransport())
        box.write(b"head,")
        box.write(b"tail")
        await asyncio.sleep(0)
        assert set(drain(b)) <= {0}  # only the filler: nothing of ours reached the socket
        assert transport.writes == [b"head,tail"]
        assert (flusher.stats.writes, flusher.stats.bytes_written) == (1, 9)


async def test_a_closing_transport_is_never_sent_to(flush_path: str) -> None:
    with pair() as (a, b):
        box, transport, _ = make(a.fileno())
        box.write(b"not for anyone")
        transport.closing = True  # e.g. aborted: its fd may be closed and reused any moment
        await asyncio.sleep(0)
        assert drain(b) == b""
        assert transport.writes == []
        assert box.closed


async def test_bytes_buffered_in_the_transport_keep_their_place(flush_path: str) -> None:
    with pair() as (a, b):
        box, transport, _ = make(a.fileno())
        transport.buffered = 10  # the loop still holds 10 bytes: ours must follow them
        box.write(b"after")
        await asyncio.sleep(0)
        assert drain(b) == b""
        assert transport.writes == [b"after"]


async def test_paused_and_socketless_outboxes_take_the_python_path(flush_path: str) -> None:
    with pair() as (a, b):
        paused, paused_transport, _ = make(a.fileno())
        paused.pause_writing()
        paused.write(b"held")
        tls, tls_transport, _ = make(-1)  # what open_outbox gives a TLS connection
        tls.write(b"encrypted elsewhere")
        await asyncio.sleep(0)
        assert drain(b) == b""
        assert paused_transport.writes == [] and paused.queued == 4
        assert tls_transport.writes == [b"encrypted elsewhere"]
        paused.resume_writing()
        assert paused_transport.writes == [b"held"]


async def test_a_peer_gone_leaves_the_error_to_the_transport(flush_path: str) -> None:
    with pair() as (a, b):
        box, transport, _ = make(a.fileno())
        b.close()  # the send fails (EPIPE, no SIGPIPE): transport.write reports it
        box.write(b"lost")
        await asyncio.sleep(0)
        assert transport.writes == [b"lost"]


async def test_nothing_is_sent_from_c_after_write_eof(flush_path: str) -> None:
    class HalfClosing(FakeTransport):
        eof = False

        def write_eof(self) -> None:  # a loop's shutdown(2) may wait for the next iteration
            self.eof = True

    with pair() as (a, b):
        box, transport, _ = make(a.fileno(), HalfClosing())
        box.write(b"close frame")
        box.write_eof()
        assert cast(HalfClosing, transport).eof
        assert drain(b) + b"".join(transport.writes) == b"close frame"
        box.write(b"late")
        await asyncio.sleep(0)
        assert drain(b) == b""  # the real transport raises on this write: the usual report
        assert transport.writes[-1] == b"late"


async def test_a_subclass_or_a_foreign_object_is_flushed_by_its_own_method(
    flush_path: str,
) -> None:
    class Custom(Outbox):
        __slots__ = ()

    with pair() as (a, b):
        transport = FakeTransport()
        flusher = Flusher()
        box = Custom(transport, flusher, 1 << 20, fd=a.fileno())
        box.write(b"sub")
        await asyncio.sleep(0)
        assert drain(b) == b"" and transport.writes == [b"sub"]


def test_the_switch_and_the_missing_extension() -> None:
    """TIDINGS_PURE_PYTHON=1 turns the compiled loop off, and so does its absence."""
    import os
    import subprocess
    import sys

    probe = "import tidings.wire.outbox as o; print(o.COMPILED)"
    env = {**os.environ, "TIDINGS_PURE_PYTHON": "1"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=True)
    assert run.stdout.strip() == b"False"
    env.pop("TIDINGS_PURE_PYTHON")
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=True)
    assert run.stdout.strip() == b"True"  # built by scripts/bootstrap
    hide = (
        "import sys; sys.modules['tidings.wire._cflush'] = None; " + probe  # import fails
    )
    run = subprocess.run([sys.executable, "-c", hide], env=env, capture_output=True, check=True)
    assert run.stdout.strip() == b"False"


def test_bind_refuses_a_class_without_the_slots() -> None:
    from tidings.wire import _cflush

    class NoSlots:
        _chunks: list[bytes] = []

    with pytest.raises(TypeError):
        _cflush.bind(NoSlots)


# -- property: whatever the chunks and the kernel take, bytes arrive once and in order ------
iterations = st.lists(
    st.lists(st.binary(min_size=0, max_size=6000), min_size=0, max_size=40), max_size=8
)


@pytest.mark.parametrize("path", ["compiled", "python"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=iterations, sndbuf=st.sampled_from([2048, 8192, 65536, 0]), read=st.booleans())
def test_bytes_arrive_once_and_in_order(
    path: str, rounds: list[list[bytes]], sndbuf: int, read: bool
) -> None:
    from tidings.wire import _cflush

    saved = outbox._cflush
    outbox._cflush = _cflush if path == "compiled" else None
    loop = asyncio.new_event_loop()
    try:
        with pair(sndbuf) as (a, b):
            transport = BufferingTransport()
            flusher = Flusher(loop)
            box = Outbox(transport, flusher, 1 << 30, fd=a.fileno())
            received = bytearray()
            for chunks in rounds:
                for chunk in chunks:
                    box.write(chunk)
                flusher._flush()  # what the loop's call_soon runs
                if read:  # a reader keeping up between iterations, or one that never reads
                    received += drain(b)
            received += drain(b)
            whole = b"".join(c for chunks in rounds for c in chunks)
            assert bytes(received) + b"".join(transport.writes) == whole
            assert flusher.stats.bytes_written == len(whole)
            assert box.queued == 0
            if path == "python":
                assert received == b""
    finally:
        outbox._cflush = saved
        loop.close()
