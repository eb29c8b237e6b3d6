"""The lease, the fencing token and the fenced append, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tidings.cluster.backplane import Backplane, Checkpoint, connect
from tidings.event import Event
from tidings.feed import FrameReader
from tidings.feed.codec import decode_event, frame_event
from tidings.source.changes import Position


@pytest.fixture
async def backplanes(redis_server: int) -> AsyncIterator[tuple[Backplane, Backplane]]:
    url = f"redis://127.0.0.1:{redis_server}/0"
    one = Backplane(connect(url, timeout=5), "t", maxlen=1000)
    two = Backplane(connect(url, timeout=5), "t", maxlen=1000)
    yield one, two
    await one.close()
    await two.close()


async def test_one_lease_holder_and_a_paused_one_cannot_write_after_losing_it(
    backplanes: tuple[Backplane, Backplane],
) -> None:
    one, two = backplanes
    token = await one.acquire("one", 0.3)
    assert token is not None
    assert await two.acquire("two", 0.3) is None, "the lease is held"
    assert await one.renew("one", token, 0.3)
    assert not await two.renew("two", token, 0.3), "not the holder"
    cp = Checkpoint(10, 12, Position("bin.000001", 400))
    assert await one.append(token, 10, 10, b"x", 12, cp) is not None

    await asyncio.sleep(0.5)  # "one" is paused past its lease; "two" takes over
    later = await two.acquire("two", 5)
    assert later is not None and later > token
    assert await one.append(token, 10, 12, b"late", 13, None) is None, "fenced"
    assert not await one.renew("one", token, 5)
    assert not await one.release("one", token), "not its lease any more"
    assert await two.leader() == "two"
    assert await two.append(later, 10, 12, b"y", 13, None) is not None

    checkpoint, following = await two.state()
    assert checkpoint == cp and following == 13
    entries = await two.read(b"0-0", 10, block_ms=100)
    assert [(e.epoch, e.next_id, e.data) for e in entries] == [(10, 10, b"x"), (10, 12, b"y")]
    assert await two.release("two", later)
    assert await one.leader() is None


async def test_entries_carry_feed_messages_and_the_stream_is_trimmed(
    backplanes: tuple[Backplane, Backplane],
) -> None:
    one, _ = backplanes
    token = await one.acquire("one", 5)
    assert token is not None
    for n in range(3000):
        data = frame_event(Event(n, "db.t", b'{"n":%d}' % n), True)
        assert await one.append(token, 1, n, data, n + 1, None) is not None
    entries = await one.read(b"0-0", 5000, block_ms=100)
    assert 1000 <= len(entries) < 3000, "MAXLEN ~ 1000 trims, roughly"
    assert entries[-1].next_id == 2999
    frames = FrameReader()
    ids = [decode_event(m).event.id for e in entries for m in frames.feed(e.data)]
    assert ids == list(range(ids[0], 3000))
    assert await one.last_stream_id() == entries[-1].stream_id
