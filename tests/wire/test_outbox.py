"""The bounded outbox: coalescing, flow control, the slow-consumer cut, closing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tidings.wire.outbox import EARLY_FLUSH, Flusher, Outbox

# every test on both flush loops: these transports have no socket, so the compiled loop
# must hand each outbox to its Python flush and end up doing exactly what it does
pytestmark = pytest.mark.usefixtures("flush_path")


class FakeTransport(asyncio.Transport):
    """Records writes; `buffered` plays the transport's own write buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffered = 0
        self.stuck = False  # the kernel takes nothing: writes pile up in `buffered`
        self.closing = False
        self.aborted = asyncio.Event()
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closing, "write after close/abort"
        self.writes.append(bytes(data))
        if self.stuck:
            self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True
        self.aborted.set()

    def close(self) -> None:
        self.closing = True
        self.closed = True


async def next_iteration() -> None:
    """Let the loop run the callbacks scheduled so far (the flusher's included)."""
    await asyncio.sleep(0)


def make(limit: int = 1 << 20, farewell: bytes = b"") -> tuple[Outbox, FakeTransport, Flusher]:
    transport = FakeTransport()
    flusher = Flusher()
    return Outbox(transport, flusher, limit, farewell=farewell, name="t"), transport, flusher


async def test_writes_in_one_iteration_become_one_transport_write() -> None:
    box, transport, flusher = make()
    for i in range(100):
        box.write(b"%d," % i)
    assert transport.writes == []  # nothing is sent synchronously
    assert box.queued == sum(len(b"%d," % i) for i in range(100))
    await next_iteration()
    assert transport.writes == [b"".join(b"%d," % i for i in range(100))]
    assert box.queued == 0
    assert flusher.stats.writes == 1
    assert flusher.stats.bytes_written == len(transport.writes[0])


async def test_one_flush_callback_serves_every_dirty_outbox() -> None:
    flusher = Flusher()
    transports = [FakeTransport() for _ in range(50)]
    boxes = [Outbox(t, flusher, 1 << 20) for t in transports]
    shared = b"event"
    for _ in range(3):
        for box in boxes:
            box.write(shared)
    await next_iteration()
    assert flusher.stats.flushes == 1
    assert all(t.writes == [b"eventeventevent"] for t in transports)
    # a quiet iteration schedules nothing
    await next_iteration()
    assert flusher.stats.flushes == 1
    boxes[0].write(b"x")
    await next_iteration()
    assert flusher.stats.flushes == 2
    assert transports[0].writes[-1] == b"x"


async def test_single_chunk_is_written_as_is() -> None:
    box, transport, _ = make()
    chunk = b"only one"
    box.write(chunk)
    await next_iteration()
    assert transport.writes[0] is chunk or transport.writes[0] == chunk


async def test_a_large_burst_is_handed_over_before_the_iteration_ends() -> None:
    box, transport, _ = make()
    piece = b"x" * 1024
    for _ in range(EARLY_FLUSH // len(piece)):
        box.write(piece)
    assert sum(map(len, transport.writes)) == EARLY_FLUSH
    box.write(b"tail")
    await next_iteration()
    assert b"".join(transport.writes) == piece * (EARLY_FLUSH // len(piece)) + b"tail"


async def test_paused_transport_gets_nothing_until_resumed() -> None:
    box, transport, _ = make()
    box.pause_writing()
    assert box.paused
    for _ in range(EARLY_FLUSH // 1024 + 10):  # past the early-flush size too
        box.write(b"y" * 1024)
    await next_iteration()
    assert transport.writes == []
    box.resume_writing()
    assert len(transport.writes) == 1
    assert len(transport.writes[0]) == (EARLY_FLUSH // 1024 + 10) * 1024


async def test_cut_when_queue_passes_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    box, transport, flusher = make(limit=10_000, farewell=b"-ERR bye\r\n")
    box.pause_writing()  # the kernel is full: nothing leaves
    with caplog.at_level(logging.WARNING, logger="tidings.wire.outbox"):
        for _ in range(10):
            box.write(b"z" * 1000)
        assert not transport.closing  # exactly at the limit is fine
        box.write(b"z")
    assert transport.closed
    assert box.closed
    assert flusher.stats.slow_consumers_cut == 1
    assert transport.writes == [b"-ERR bye\r\n"]  # nothing was in flight: the farewell fits
    box.write(b"more")  # dropped silently
    box.resume_writing()
    await next_iteration()
    assert transport.writes == [b"-ERR bye\r\n"]
    records = [r for r in caplog.records if "slow consumer" in r.getMessage()]
    assert len(records) == 1
    assert "10001 bytes" in records[0].getMessage()


async def test_transport_buffer_counts_toward_the_limit() -> None:
    box, transport, flusher = make(limit=10_000, farewell=b"-ERR bye\r\n")
    transport.stuck = True
    box.write(b"a" * 6000)
    await next_iteration()
    box.write(b"b" * 3000)
    await next_iteration()
    assert transport.buffered == 9000
    box.write(b"c" * 1000)
    assert not transport.closing
    box.write(b"c")
    assert transport.closed and not transport.aborted.is_set()
    assert flusher.stats.slow_consumers_cut == 1
    # the transport holds whole frames only: the reason goes after them; the queue is dropped
    assert transport.writes == [b"a" * 6000, b"b" * 3000, b"-ERR bye\r\n"]


async def test_drained_transport_buffer_is_noticed_before_cutting() -> None:
    box, transport, flusher = make(limit=10_000)
    transport.stuck = True
    box.write(b"a" * 9000)
    await next_iteration()
    box.write(b"b" * 500)
    transport.buffered = 0  # the peer read everything meanwhile
    box.write(b"c" * 5000)  # queue + stale backlog > limit, but the real total is not
    assert not transport.aborted.is_set()
    await next_iteration()
    assert transport.writes[-1] == b"b" * 500 + b"c" * 5000
    assert flusher.stats.slow_consumers_cut == 0


async def test_cut_logging_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    flusher = Flusher()
    with caplog.at_level(logging.WARNING, logger="tidings.wire.outbox"):
        for _ in range(100):
            box = Outbox(FakeTransport(), flusher, 100)
            box.pause_writing()
            box.write(b"x" * 60)
            box.write(b"x" * 60)
    assert flusher.stats.slow_consumers_cut == 100
    assert len([r for r in caplog.records if "slow consumer" in r.getMessage()]) == 1


async def test_writes_to_a_closing_transport_are_dropped() -> None:
    box, transport, _ = make()
    box.write(b"a")
    transport.closing = True  # the peer reset; connection_lost() is still to come
    await next_iteration()
    assert transport.writes == []
    assert box.closed


async def test_close_sends_the_queue_then_closes() -> None:
    box, transport, _ = make()
    box.pause_writing()
    box.write(b"+OK\r\n")
    box.close()
    assert transport.writes == [b"+OK\r\n"]
    assert transport.closed
    box.write(b"late")
    await next_iteration()
    assert transport.writes == [b"+OK\r\n"]


async def test_close_aborts_a_peer_that_never_drains() -> None:
    box, transport, _ = make()
    box.write(b"data")
    transport.buffered = 4  # stuck in the transport
    box.close(linger=0.01)
    await asyncio.wait_for(transport.aborted.wait(), 5)


async def test_lost_cancels_the_linger_timer() -> None:
    box, transport, _ = make()
    box.write(b"data")
    transport.buffered = 4
    box.close(linger=60)
    handle = box._linger
    assert handle is not None
    box.lost()
    assert handle.cancelled()


async def test_a_burst_larger_than_a_small_limit_flows_to_a_fast_peer() -> None:
    box, transport, flusher = make(limit=8 * 1024)
    for _ in range(100):  # 100 KiB in one iteration: the kernel takes it as it comes
        box.write(b"k" * 1024)
    await next_iteration()
    assert flusher.stats.slow_consumers_cut == 0
    assert sum(map(len, transport.writes)) == 100 * 1024
    assert max(map(len, transport.writes)) <= 4 * 1024  # handed over at half the limit


async def test_a_frame_larger_than_the_limit_reaches_an_idle_connection() -> None:
    box, transport, flusher = make(limit=4096)
    box.write(b"h" * 5000)  # a big row must not cut every subscriber of its table
    await next_iteration()
    assert flusher.stats.slow_consumers_cut == 0
    assert transport.writes == [b"h" * 5000]


async def test_a_second_oversized_frame_behind_a_stuck_one_cuts_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box, transport, flusher = make(limit=4096, farewell=b"-ERR bye\r\n")
    transport.stuck = True
    box.write(b"h" * 5000)
    await next_iteration()
    assert transport.buffered == 5000 and flusher.stats.slow_consumers_cut == 0
    with caplog.at_level(logging.WARNING, logger="tidings.wire.outbox"):
        box.write(b"i" * 5000)
    assert flusher.stats.slow_consumers_cut == 1
    assert transport.closed
    assert transport.writes == [b"h" * 5000, b"-ERR bye\r\n"]
    assert "one frame alone is 5000 bytes" in caplog.records[0].getMessage()


async def test_a_cut_connection_that_never_reads_is_aborted_after_the_linger() -> None:
    transport = FakeTransport()
    transport.stuck = True
    cut: list[bool] = []
    box = Outbox(
        transport, Flusher(), 1000, farewell=b"-ERR bye\r\n", on_cut=lambda: cut.append(True)
    )
    box.write(b"a" * 800)
    await next_iteration()
    box.pause_writing()
    box.write(b"b" * 300)
    assert cut == [True] and transport.closed
    box.close(linger=0.01)  # a second close is a no-op: the first one's linger timer stands
    await asyncio.wait_for(transport.aborted.wait(), 10)
