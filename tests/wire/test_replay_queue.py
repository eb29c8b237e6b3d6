"""ReplayQueue: one replay at a time, paced by the outbox's room, safe against a cut mid-pump."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tidings.wire.outbox import Flusher, Outbox
from tidings.wire.replay_queue import ReplayQueue


class Room:
    """The two things the queue reads of an outbox."""

    def __init__(self, room: int) -> None:
        self.free = room
        self.paused = False

    def room(self) -> int:
        return self.free


class Chunks:
    """A replay with `left` bytes of history, sent in pieces of at most the budget."""

    def __init__(self, left: int, log: list[tuple[str, int]], name: str) -> None:
        self.left, self.log, self.name = left, log, name
        self.waiting = False
        self.cancelled = False
        self.on_pump: Any = None

    def pump(self, budget: int) -> bool:
        sent = min(budget, self.left)
        self.left -= sent
        self.log.append((self.name, sent))
        if self.on_pump:
            self.on_pump()
        return self.left == 0

    def cancel(self) -> None:
        self.cancelled = True


def make(room: Room) -> ReplayQueue[Chunks]:
    return ReplayQueue(cast(Outbox, room), Flusher(asyncio.get_running_loop()))


async def test_replays_run_one_after_the_other_each_turn_as_room_allows() -> None:
    log: list[tuple[str, int]] = []
    queue = make(Room(100))
    first, second = Chunks(250, log, "a"), Chunks(50, log, "b")
    queue.add(first)
    queue.add(second)  # waits behind the first
    assert log == [("a", 100)]
    for _ in range(4):
        await asyncio.sleep(0)
    assert log == [("a", 100), ("a", 100), ("a", 50), ("b", 50)]
    assert not queue


async def test_a_paused_outbox_or_a_waiting_replay_is_not_polled() -> None:
    log: list[tuple[str, int]] = []
    room = Room(0)
    queue = make(room)
    replay = Chunks(10, log, "a")
    room.paused = True
    queue.add(replay)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert log == [] and queue  # resume_writing will call run()
    room.paused, room.free = False, 100
    replay.waiting = True
    replay.left = 200
    queue.run()
    await asyncio.sleep(0)
    assert log == [("a", 100)]  # its wake-up, not the loop, calls again
    queue.run()
    assert log == [("a", 100), ("a", 100)] and not queue


async def test_a_cut_during_pump_stops_the_queue() -> None:
    log: list[tuple[str, int]] = []
    room = Room(0)
    queue = make(room)
    first, second = Chunks(300, log, "a"), Chunks(100, log, "b")
    queue.add(first)
    queue.add(second)
    first.on_pump = queue.cancel_all  # the write inside pump cut the slow consumer off
    room.free = 100
    for _ in range(3):
        await asyncio.sleep(0)
    assert log == [("a", 100)]
    assert first.cancelled and second.cancelled and not queue
