"""The binlog re-read service with a scripted source: ids, verification, failures, slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidings.event import Event
from tidings.hub import Hub
from tidings.publish import publish_transaction
from tidings.source.changes import Position, RowChange, Transaction
from tidings.state.index import Mark, MarkIndex
from tidings.state.reread import BinlogFeed, Rereader

FILE = "binlog.000001"


def txn(n: int, rows: int = 2) -> Transaction:
    changes = [RowChange("insert", "db", "t", {"n": n, "row": r}) for r in range(rows)]
    return Transaction(changes, ts=n, gtid=f"0-1-{n}", xid=n, position=Position(FILE, 100 * n))


class ScriptedSource:
    """Yields the given transactions from the one at `start`, then waits until closed."""

    opened: list[tuple[int, Position]] = []

    def __init__(self, txns: list[Transaction], server_id: int, start: Position) -> None:
        self.txns = [t for t in txns if t.position.pos > start.pos]
        self.closed = asyncio.Event()
        ScriptedSource.opened.append((server_id, start))

    async def transactions(self) -> AsyncIterator[Transaction]:
        for t in self.txns:
            yield t
        await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()


async def live_hub(txns: list[Transaction], first_id: int = 1000) -> Hub:
    hub = Hub(first_id, history_events=4)
    hub.epoch = first_id
    hub.mark(Position(FILE, 0))
    for t in txns:
        await publish_transaction(hub, t)
    return hub


def service(
    hub: Hub,
    txns: list[Transaction],
    marks: list[Mark],
    tmp_path: Path,
    files: frozenset[str] | None = frozenset({FILE}),
    concurrency: int = 2,
) -> Rereader:
    index = MarkIndex(tmp_path, hub.epoch)
    index.replace(marks)

    async def lookup() -> frozenset[str] | None:
        return files

    return Rereader(
        hub,
        index,
        source=lambda sid, start: ScriptedSource(txns, sid, start),
        files=lookup,
        server_id=50,
        concurrency=concurrency,
    )


async def drain(feed: BinlogFeed, until: int) -> list[Event]:
    got: list[Event] = []
    for _ in range(1000):
        while (event := feed.peek()) is not None:
            got.append(event)
            feed.pop()
        if feed.failed or (got and got[-1].id >= until):
            break
        await asyncio.sleep(0)
    return got


async def test_re_read_events_have_the_ids_and_bytes_they_had(tmp_path: Path) -> None:
    txns = [txn(n) for n in range(1, 21)]  # ids 1000..1039, two per transaction
    hub = await live_hub(txns)
    reference = Hub(1000, history_events=100)
    for t in txns:
        await publish_transaction(reference, t)
    marks = [Mark(1000, Position(FILE, 0)), Mark(1010, Position(FILE, 500))]
    rereader = service(hub, txns, marks, tmp_path)
    assert rereader.mark_for(1008) == marks[0] and rereader.mark_for(1009) == marks[1]
    assert rereader.mark_for(998) is None and rereader(998, lambda: None) is None

    wakes: list[None] = []
    feed = rereader(1012, lambda: wakes.append(None))
    assert feed is not None
    got = await drain(feed, 1039)
    assert ScriptedSource.opened[-1] == (51, marks[1].position)
    assert [e.id for e in got] == list(range(1013, 1040))  # only ids after since
    assert [e.body for e in got] == [e.body for e in reference.history.after(1012)]
    assert wakes and feed.failed is None
    feed.close()
    await feed.wait_closed()
    assert not rereader.feeds


async def test_ids_that_do_not_line_up_fail_before_anything_is_handed_out(
    tmp_path: Path,
) -> None:
    txns = [txn(n) for n in range(1, 11)]
    hub = await live_hub(txns)
    changed = [*txns[:2], txn(3, rows=3), *txns[3:]]  # the binlog maps to one more event
    rereader = service(hub, changed, [Mark(1000, Position(FILE, 0))], tmp_path)
    feed = rereader(1000, lambda: None)
    assert feed is not None
    got = await drain(feed, 1019)
    assert [e.id for e in got] == [1001, 1002, 1003]  # verified at pos 200; none of txn 3
    assert feed.failed is not None and "do not line up" in feed.failed


async def test_a_purged_binlog_file_fails_the_feed(tmp_path: Path) -> None:
    txns = [txn(n) for n in range(1, 5)]
    hub = await live_hub(txns)
    marks = [Mark(1000, Position(FILE, 0))]
    woken: list[None] = []
    feed = service(hub, txns, marks, tmp_path, files=frozenset({"binlog.000002"}))(
        1001, lambda: woken.append(None)
    )
    assert feed is not None
    await drain(feed, 1007)
    assert feed.failed is not None and "no longer has binlog file" in feed.failed and woken


async def test_concurrency_slots_each_with_its_own_server_id(tmp_path: Path) -> None:
    txns = [txn(n) for n in range(1, 5)]
    hub = await live_hub(txns)
    rereader = service(hub, txns, [Mark(1000, Position(FILE, 0))], tmp_path, concurrency=1)
    ScriptedSource.opened.clear()
    first = rereader(1000, lambda: None)
    second = rereader(1000, lambda: None)
    assert first is not None and second is not None
    await drain(first, 1007)
    assert [sid for sid, _ in ScriptedSource.opened] == [51]  # the second waits for a slot
    first.close()
    assert [e.id for e in await drain(second, 1007)] == list(range(1001, 1008))
    assert [sid for sid, _ in ScriptedSource.opened] == [51, 51]
    await rereader.close()
    assert not rereader.feeds and rereader(1000, lambda: None) is None


def test_concurrency_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Rereader(
            Hub(),
            MarkIndex(tmp_path, 1),
            source=lambda sid, start: ScriptedSource([], sid, start),
            files=lambda: asyncio.sleep(0, None),
            server_id=1,
            concurrency=0,
        )
