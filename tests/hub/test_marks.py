"""Position marks: binlog position -> next id, and waiting for a position."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from tidings.hub import Hub
from tidings.hub.marks import Marks, gtid_covers, position_key
from tidings.source.changes import Position


def p(file: str, pos: int, gtid: str | None = None) -> Position:
    return Position(file, pos, gtid)


def test_file_order_uses_the_numeric_suffix() -> None:
    assert position_key(p("mysql-bin.999999", 900)) < position_key(p("mysql-bin.1000000", 4))  # type: ignore[operator]
    assert position_key(p("b.000002", 4)) > position_key(p("b.000001", 99999))  # type: ignore[operator]
    assert position_key(Position("", 4, "0-1-5")) is None


def test_gtid_covers_mariadb_and_mysql() -> None:
    assert gtid_covers("0-1-10,1-2-5", "0-1-10")
    assert gtid_covers("0-1-10,1-2-5", "0-1-9,1-2-5")
    assert not gtid_covers("0-1-10", "0-1-10,1-2-1")
    assert not gtid_covers("0-1-9", "0-1-10")
    uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    assert gtid_covers(f"{uuid}:1-50", f"{uuid}:1-49")
    assert not gtid_covers(f"{uuid}:1-5", f"{uuid}:1-6")


def test_id_at_maps_each_boundary_to_the_next_id() -> None:
    hub = Hub(first_id=100)
    assert hub.id_at(p("b.000001", 10)) is None  # nothing marked yet
    hub.mark(p("b.000001", 10))  # boundary before any event: next id 100
    hub.publish("c", b"1", live=False)
    hub.publish("c", b"2")
    hub.mark(p("b.000001", 50))  # after a transaction of two events
    hub.mark(p("b.000001", 70))  # an empty transaction
    hub.publish("c", b"3")
    hub.mark(p("b.000002", 4))
    assert hub.id_at(p("b.000001", 10)) == 100
    assert hub.id_at(p("b.000001", 30)) == 100  # between boundaries: the earlier one
    assert hub.id_at(p("b.000001", 50)) == 102
    assert hub.id_at(p("b.000001", 70)) == 102
    assert hub.id_at(p("b.000001", 900)) == 102
    assert hub.id_at(p("b.000002", 4)) == 103
    assert hub.id_at(p("b.000001", 9)) is None  # before the first mark: unknown
    assert hub.id_at(p("b.000002", 5)) is None  # not reached yet
    assert len(hub.marks) == 3  # the empty transaction's mark is folded into the one before


def test_gtid_only_positions_are_answered_by_gtid() -> None:
    hub = Hub(first_id=1)
    hub.mark(p("b.000001", 10, "0-1-5"))
    hub.publish("c", b"x")
    hub.mark(p("b.000001", 90, "0-1-6"))
    assert hub.id_at(Position("", 4, "0-1-5")) == 1
    assert hub.id_at(Position("", 4, "0-1-6")) == 2
    assert hub.id_at(Position("", 4, "0-1-7")) is None
    with pytest.raises(ValueError, match="no common coordinate"):
        hub.id_at(Position("", 4, None))


def test_marks_are_bounded() -> None:
    marks = Marks(limit=16)
    for i in range(1000):
        marks.add(p("b.000001", 4 + i), i)
    assert len(marks) <= 32
    assert marks.id_at(p("b.000001", 4 + 999)) == 999
    assert marks.id_at(p("b.000001", 4)) is None  # forgotten


async def test_wait_position_wakes_when_the_stream_passes_it() -> None:
    hub = Hub(first_id=7)
    hub.mark(p("b.000001", 4))
    assert await hub.wait_position(p("b.000001", 4)) == 7  # already there
    waiter = asyncio.ensure_future(hub.wait_position(p("b.000001", 500)))
    other = asyncio.ensure_future(hub.wait_position(p("b.000003", 4)))
    await asyncio.sleep(0)
    hub.publish("c", b"x")
    hub.mark(p("b.000001", 300))
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish("c", b"y")
    hub.mark(p("b.000002", 4))  # passes 500 in file 1 without stopping there
    assert await asyncio.wait_for(waiter, 1) == 8
    assert not other.done()
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other
    assert hub.marks._waiters == []


def test_a_mark_costs_about_90_bytes() -> None:
    """At 22 transactions/s the 65,536 marks kept at most took 50 minutes to fill, at 320
    bytes each (a Position and a key tuple): a 20 MiB climb a soak took for a leak."""
    marks = Marks(limit=40_000)
    file = "binlog.000001"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40_000):  # as the replica makes them: a new Position and GTID each
            marks.add(p(file, 1000 + i * 300, f"0-1-{5000 + i}"), 100_000 + i)
        per_mark = (tracemalloc.get_traced_memory()[0] - before) / len(marks)
    finally:
        tracemalloc.stop()
    assert len(marks) == 40_000
    assert per_mark < 120, per_mark
    assert marks.id_at(p("binlog.000001", 1000 + 123 * 300 + 1)) == 100_123
    assert marks.export()[123] == (p("binlog.000001", 1000 + 123 * 300, "0-1-5123"), 100_123)
