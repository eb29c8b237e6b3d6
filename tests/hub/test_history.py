"""Bounded history: limits, eviction order, exact gap detection (against a plain model)."""

from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.native import require_native
from tidings.event import Event
from tidings.hub import Hub
from tidings.hub.history import EVENT_OVERHEAD, History, HistoryLimits, event_size


def ev(i: int, channel: str = "c", size: int = 0) -> Event:
    return Event(i, channel, b"x" * size)


def retained(history: History) -> list[int]:
    return [e.id for e in history.after(0)]


def test_count_limit_overall_evicts_the_oldest() -> None:
    h = History(HistoryLimits(events=3))
    for i in range(1, 6):
        h.append(ev(i, "ab"[i % 2]))
    assert retained(h) == [3, 4, 5]
    assert len(h) == 3
    assert h.lost_upto("a", 6) == 2 and h.lost_upto("b", 6) == 1
    assert [e.id for e in h.channel_after("a", 0)] == [4]
    assert [e.id for e in h.channel_after("b", 0)] == [3, 5]


def test_per_channel_limit_leaves_other_channels_alone() -> None:
    h = History(HistoryLimits(channel_events=2))
    h.append(ev(1, "quiet"))
    for i in range(2, 10):
        h.append(ev(i, "busy"))
    assert retained(h) == [1, 8, 9]
    assert h.lost_upto("quiet", 10) == 0  # nothing of quiet was lost
    assert h.lost_upto("busy", 10) == 7
    assert h.first_after("busy", 7) == 8
    # what was appended, evicted or not (status pages rank channels by it)
    assert (h.channels["busy"].appended, h.channels["quiet"].appended) == (8, 1)


def test_byte_limits_count_body_twice_plus_overhead() -> None:
    one = event_size(ev(1, "c", 100))
    assert one == 200 + 1 + EVENT_OVERHEAD
    h = History(HistoryLimits(bytes=3 * one))
    for i in range(1, 6):
        h.append(ev(i, "c", 100))
    assert retained(h) == [3, 4, 5] and h.size == 3 * one


def test_the_newest_event_stays_even_when_larger_than_every_limit() -> None:
    h = History(HistoryLimits(bytes=100, channel_bytes=100))
    h.append(ev(1, "c", 10))
    h.append(ev(2, "c", 10_000))
    assert retained(h) == [2]
    h.append(ev(3, "d", 5))  # the big one goes once something newer exists
    assert retained(h) == [3]


def test_zero_limits_keep_nothing_and_report_everything_lost() -> None:
    hub = Hub(history_events=0)
    hub.publish("c", b"x")
    hub.publish("d", b"y")
    assert len(hub.history) == 0
    assert hub.history.lost_upto("c", hub.next_id) == 2
    assert hub.history.lost_upto("never", hub.next_id) == 2


def test_ids_before_the_first_event_are_unknown() -> None:
    h = History()
    assert h.unknown_upto(next_id=500) == 499  # nothing yet: everything before 500 unknown
    h.append(ev(500))
    h.append(ev(501, "d"))
    assert h.unknown_upto(next_id=502) == 499
    assert h.lost_upto("c", 502) == 499
    assert h.lost_upto("new", 502) == 499


def test_dead_entries_are_compacted() -> None:
    h = History(HistoryLimits(channel_events=1))
    h.append(ev(1, "quiet"))  # pins the front of the global log
    for i in range(2, 20_000):
        h.append(ev(i, "busy"))
    assert retained(h) == [1, 19_999]
    assert len(h._log) - h._head < 2 * 1024 + 10  # not 20,000 dead entries


class Tracked(Event):
    """An Event that can be weakly referenced: to see when history lets go of it."""

    __slots__ = ("__weakref__",)


@pytest.mark.parametrize("channels", [1, 3])
def test_evicted_events_are_freed_at_once(channels: int) -> None:
    """At 2 events/s a history of 600 used to keep up to 4,096 evicted events (~4 MB with
    their frames) before deleting its dead prefix: it looked like a leak in the soak."""
    h = History(HistoryLimits(events=600))
    refs = []
    gc.disable()  # freed by reference counting, as soon as evicted
    try:
        for i in range(1, 5001):
            event = Tracked(i, f"c{i % channels}", b"x" * 200)
            refs.append(weakref.ref(event))
            h.append(event)
            del event
            alive = [ref for ref in refs if ref() is not None]
            assert len(alive) == min(i, 600), i
    finally:
        gc.enable()
    assert retained(h) == list(range(4401, 5001))


@pytest.mark.parametrize("channels", [1, 3])
def test_events_evicted_by_a_channel_limit_are_freed_once_overall_eviction_passes(
    channels: int,
) -> None:
    """A channel over its own limit frees its log's slots at once; the global log's dead
    entries go with overall eviction or compaction (at most as many as are retained)."""
    h = History(HistoryLimits(events=600, channel_events=100))
    refs = []
    gc.disable()
    try:
        for i in range(1, 5001):
            event = Tracked(i, f"c{i % channels}", b"x" * 200)
            refs.append(weakref.ref(event))
            h.append(event)
            del event
            alive = sum(ref() is not None for ref in refs)
            assert alive <= 2 * len(h) + 1024, i
    finally:
        gc.enable()
    assert len(h) == 100 * channels


def test_forgotten_empty_channels_make_gaps_conservative_never_silent() -> None:
    h = History(HistoryLimits(events=1), max_empty=2)
    for i, channel in enumerate(["a", "b", "c", "d", "e"], start=1):
        h.append(ev(i, channel))
    # a, b were forgotten (only two empty channel logs are remembered): their losses
    # are now covered by forgotten_upto
    assert "a" not in h.channels and "b" not in h.channels
    assert h.forgotten_upto == 2
    assert h.lost_upto("a", 6) >= 1
    assert h.lost_upto("zzz", 6) == 2  # unknown channel: conservatively up to the floor
    h.append(ev(6, "a"))  # a new log for a still carries the floor
    assert h.lost_upto("a", 7) >= 1


# -- the model ------------------------------------------------------------------------------
class Model:
    """The eviction policy written the slow, obvious way."""

    def __init__(self, limits: HistoryLimits) -> None:
        self.limits = limits
        self.kept: list[Event] = []
        self.lost: list[Event] = []

    def append(self, event: Event) -> None:
        lim = self.limits
        self.kept.append(event)

        def of(channel: str) -> list[Event]:
            return [e for e in self.kept if e.channel == channel]

        while True:
            mine = of(event.channel)
            if len(mine) > 1 and (
                len(mine) > lim.channel_events or sum(map(event_size, mine)) > lim.channel_bytes
            ):
                self.kept.remove(mine[0])
                self.lost.append(mine[0])
                continue
            break
        while len(self.kept) > 1 and (
            len(self.kept) > lim.events or sum(map(event_size, self.kept)) > lim.bytes
        ):
            self.lost.append(self.kept.pop(0))


@settings(max_examples=300, deadline=None)
@given(
    limits=st.builds(
        HistoryLimits,
        events=st.integers(1, 12),
        bytes=st.integers(300, 3000),
        channel_events=st.integers(1, 6),
        channel_bytes=st.integers(300, 2000),
    ),
    appends=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 400)), max_size=60),
    since=st.integers(0, 61),
)
def test_history_matches_the_model_and_gaps_are_exact(
    limits: HistoryLimits, appends: list[tuple[str, int]], since: int
) -> None:
    h = History(limits)
    model = Model(limits)
    for i, (channel, size) in enumerate(appends, start=1):
        h.append(ev(i, channel, size))
        model.append(ev(i, channel, size))
    next_id = len(appends) + 1
    assert retained(h) == [e.id for e in model.kept]
    assert h.count == len(model.kept)
    assert h.size == sum(map(event_size, model.kept))
    for channel in "abcd":
        kept = [e.id for e in model.kept if e.channel == channel]
        assert [e.id for e in h.channel_after(channel, 0)] == kept
        # a gap for `since` exactly when some event of the channel after `since` is gone
        lost_after = [e.id for e in model.lost if e.channel == channel and e.id > since]
        assert (h.lost_upto(channel, next_id) > since) == bool(lost_after)
        if lost_after:
            assert h.lost_upto(channel, next_id) == max(lost_after)


def test_retained_events_are_left_out_of_garbage_collection() -> None:
    # with the C helpers built (tests/wire/test_resp_c.py requires them): a full collection
    # must not scan the retained events, and they are still there and intact after one
    require_native()
    h = History()
    events = [Event(i, "c", b"x", {"id": i}) for i in range(1, 1001)]
    assert all(gc.is_tracked(e) for e in events)
    for e in events:
        h.append(e)
    assert not any(gc.is_tracked(e) for e in events)
    gc.collect()
    assert [e.id for e in h.after(0)] == list(range(1, 1001))
    assert all(e.record is None and e.body == b"x" for e in h.after(0))
    restored = History()
    restored.restore(*h.export())
    assert not any(gc.is_tracked(e) for e in restored.after(0))


def test_without_the_c_helpers_events_stay_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_PURE_PYTHON", "1")
    h = History()
    event = ev(1)
    h.append(event)
    assert gc.is_tracked(event)
