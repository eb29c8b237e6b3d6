"""Resume: history replay, gaps, the seam to live delivery, pacing by budget."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.event import Event
from tidings.hub import Hub, ResumeError
from tidings.hub.resume import SCAN_MAX

BIG = 1 << 30


class Recorder:
    """A Subscriber that remembers (kind, target, id or gap) in arrival order."""

    def __init__(self) -> None:
        self.got: list[tuple[Event, str | None]] = []

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.got.append((event, pattern))

    def ids(self, target: str | None = None) -> list[int]:
        return [e.id for e, p in self.got if not is_gap(e) and (target is None or p == target)]

    def gaps(self) -> list[dict[str, Any]]:
        return [orjson.loads(e.body) for e, _ in self.got if is_gap(e)]


def is_gap(event: Event) -> bool:
    return event.body.startswith(b'{"type":"gap"')


def fill(hub: Hub, *channels: str) -> None:
    for channel in channels:
        hub.publish(channel, channel.encode())


def test_replay_then_live_without_gap_or_duplicate() -> None:
    hub = Hub()
    fill(hub, "a", "b", "a", "a", "b", "a")  # ids 1..6; a = 1, 3, 4, 6
    sub = Recorder()
    replay = hub.resume(sub, 3, channels=["a"])
    assert hub.subscriber_count("a") == 0  # not live until caught up
    assert replay.pump(BIG) is True
    assert sub.ids() == [4, 6]
    assert hub.subscriber_count("a") == 1 and replay.state == "live"
    fill(hub, "a", "b", "a")
    assert sub.ids() == [4, 6, 7, 9]
    assert sub.gaps() == []


def test_since_at_the_last_id_goes_live_at_once() -> None:
    hub = Hub()
    fill(hub, "a", "a")
    sub = Recorder()
    assert hub.resume(sub, 2, channels=["a"]).pump(BIG)
    assert sub.got == []
    fill(hub, "a")
    assert sub.ids() == [3]


def test_since_ahead_of_the_stream_or_negative_is_refused() -> None:
    hub = Hub()
    fill(hub, "a", "a")
    with pytest.raises(ResumeError, match="ahead of the stream: the last event id is 2"):
        hub.resume(Recorder(), 3, channels=["a"])
    with pytest.raises(ResumeError, match=">= 0"):
        hub.resume(Recorder(), -1, channels=["a"])
    empty = Hub()
    assert empty.resume(Recorder(), 0, channels=["a"]).pump(BIG)  # 0 on a fresh stream is fine


def test_since_older_than_the_channel_history_gets_one_gap() -> None:
    hub = Hub(history_channel_events=3)
    hub.epoch = 1
    fill(hub, *"aaaaaaaaaa", "b")  # a = 1..10, only 8, 9, 10 retained
    sub = Recorder()
    assert hub.resume(sub, 2, channels=["a", "b"]).pump(BIG)
    gap = {"type": "gap", "channel": "a", "since": 2, "oldest": 8, "epoch": 1}
    assert sub.gaps() == [gap]
    assert sub.got[0][0].channel == "a" and sub.got[0][1] is None  # first, on its channel
    assert sub.ids() == [8, 9, 10, 11]  # b lost nothing: no gap for it
    # since at or after what a lost: no gap
    sub2 = Recorder()
    assert hub.resume(sub2, 7, channels=["a"]).pump(BIG)
    assert sub2.gaps() == [] and sub2.ids() == [8, 9, 10]


def test_gap_body_is_exact_json() -> None:
    hub = Hub(first_id=1000, history_channel_events=1)
    hub.epoch = 1000
    fill(hub, "a", "a")
    sub = Recorder()
    hub.resume(sub, 5, channels=["a"]).pump(BIG)
    assert sub.got[0][0].body == (
        b'{"type":"gap","channel":"a","since":5,"oldest":1001,"epoch":1000}'
    )


def test_ids_from_before_this_history_are_a_gap_even_on_a_quiet_channel() -> None:
    # a new epoch (or a restart without refill): ids below its first are unknown
    hub = Hub(first_id=5000)
    hub.epoch = 5000
    fill(hub, "b")
    sub = Recorder()
    hub.resume(sub, 100, channels=["a"]).pump(BIG)
    assert sub.gaps() == [
        {"type": "gap", "channel": "a", "since": 100, "oldest": 5001, "epoch": 5000}
    ]


def test_pattern_replay_delivers_with_the_pattern_and_gaps_on_the_pattern() -> None:
    hub = Hub(history_channel_events=2)
    fill(hub, "shop.orders", "shop.items", "other", "shop.orders", "shop.orders")  # 1 evicted
    sub = Recorder()
    assert hub.resume(sub, 0, patterns=["shop.*"], channels=["other"]).pump(BIG)
    assert sub.gaps() == [{"type": "gap", "channel": "shop.*", "since": 0, "oldest": 2, "epoch": 1}]
    gap_event, gap_pattern = sub.got[0]
    assert gap_event.channel == "shop.*" and gap_pattern == "shop.*"
    assert [(e.id, p) for e, p in sub.got[1:]] == [
        (2, "shop.*"),
        (3, None),
        (4, "shop.*"),
        (5, "shop.*"),
    ]
    assert hub.pattern_count() == 1 and hub.subscriber_count("other") == 1
    fill(hub, "shop.new")
    assert sub.got[-1][0].id == 6 and sub.got[-1][1] == "shop.*"


def test_exact_and_pattern_targets_on_one_channel_both_deliver() -> None:
    hub = Hub()
    fill(hub, "a.x")
    sub = Recorder()
    hub.resume(sub, 0, channels=["a.x"], patterns=["a.*"]).pump(BIG)
    assert [(e.id, p) for e, p in sub.got] == [(1, None), (1, "a.*")]


def test_pacing_stops_at_the_budget_and_events_published_meanwhile_come_in_order() -> None:
    hub = Hub()
    fill(hub, *["a"] * 100)
    sub = Recorder()
    replay = hub.resume(sub, 0, channels=["a"])
    assert replay.pump(1) is False  # at least one event per pump
    assert sub.ids() == [1]
    steps = 1
    while not replay.pump(500):
        steps += 1
        fill(hub, "a", "b")  # published mid-replay: reaches it through history
    assert steps > 5
    fill(hub, "a")  # now live
    a_ids = [e.id for e in hub.history.channel_after("a", 0)]
    assert sub.ids() == a_ids
    assert hub.subscriber_count("a") == 1


def test_eviction_during_a_slow_replay_is_a_gap_not_a_skip() -> None:
    hub = Hub(history_channel_events=10)
    fill(hub, *["a"] * 10)  # 1..10
    sub = Recorder()
    replay = hub.resume(sub, 0, channels=["a"])
    replay.pump(1)  # got 1
    fill(hub, *["a"] * 15)  # 11..25: 1..15 now evicted
    assert replay.pump(BIG)
    assert sub.ids() == [1, *range(16, 26)]
    assert sub.gaps() == [{"type": "gap", "channel": "a", "since": 1, "oldest": 16, "epoch": 1}]


def test_merge_and_global_walk_agree() -> None:
    hub = Hub()
    names = [f"c{i}" for i in range(12)]
    for i in range(200):
        hub.publish(names[(i * 7) % 12], b"x")
    few, many = Recorder(), Recorder()
    hub.resume(few, 50, channels=names[:3]).pump(BIG)
    hub.resume(many, 50, channels=names).pump(BIG)  # more than 8 channels: global walk
    assert few.ids() == [e.id for e in hub.history.after(50) if e.channel in names[:3]]
    assert many.ids() == list(range(51, 201))


def test_discard_and_cancel() -> None:
    hub = Hub()
    fill(hub, "a", "b", "a", "b")
    sub = Recorder()
    replay = hub.resume(sub, 0, channels=["a", "b"])
    replay.pump(1)
    replay.discard("b")
    assert replay.pump(BIG)
    assert sub.ids() == [1, 3]
    assert hub.subscriber_count("b") == 0 and hub.subscriber_count("a") == 1
    other = hub.resume(Recorder(), 0, channels=["a"])
    other.discard("a")  # no target left: nothing to do
    assert other.state == "cancelled" and other.pump(BIG)
    third = hub.resume(Recorder(), 0, channels=["a"])
    third.cancel()
    assert third.pump(BIG) and hub.subscriber_count("a") == 1  # never went live


def test_a_subscriber_cut_during_replay_stops_it() -> None:
    hub = Hub()
    fill(hub, *["a"] * 10)

    class Cut(Recorder):
        replay: Any = None

        def deliver(self, event: Event, pattern: str | None) -> None:
            super().deliver(event, pattern)
            if len(self.got) == 3:
                self.replay.cancel()

    sub = Cut()
    sub.replay = hub.resume(sub, 0, channels=["a"])
    assert sub.replay.pump(BIG)
    assert sub.ids() == [1, 2, 3] and hub.subscriber_count("a") == 0


def test_not_live_events_are_history_only() -> None:
    hub = Hub()
    live = Recorder()
    hub.subscribe(live, "a")
    assert hub.publish("a", b"old", live=False) == 0
    old = hub.publish_record("a", {"n": 1}, live=False)
    assert live.got == [] and old.id == 2
    sub = Recorder()
    hub.resume(sub, 0, channels=["a"]).pump(BIG)
    assert sub.ids() == [1, 2]


def test_retained_events_drop_their_record_and_bodies_are_compact() -> None:
    hub = Hub()
    event = hub.publish_record("a", {"data": {"x": 1}})
    assert event.record is None  # history keeps the body only
    assert orjson.loads(event.body) == {"id": 1, "channel": "a", "data": {"x": 1}}


# -- property: any interleaving of publishes and paced pumps ---------------------------------
@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(st.sampled_from(["a", "b", "ca", "cb", "d"]), max_size=40),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("pub"), st.sampled_from(["a", "b", "ca", "cb", "d"])),
            st.tuples(st.just("pump"), st.integers(1, 300)),
        ),
        max_size=80,
    ),
    since_back=st.integers(0, 45),
    channel_limit=st.integers(1, 12),
    total_limit=st.integers(1, 30),
    targets=st.sampled_from([(["a"], []), (["a", "b"], []), (["a"], ["c*"]), ([], ["*"])]),
)
def test_any_interleaving_delivers_every_event_once_in_order_or_a_gap(
    before: list[str],
    ops: list[tuple[str, Any]],
    since_back: int,
    channel_limit: int,
    total_limit: int,
    targets: tuple[list[str], list[str]],
) -> None:
    hub = Hub(history_events=total_limit, history_channel_events=channel_limit)
    published: list[tuple[int, str]] = []

    def publish(channel: str) -> None:
        published.append((hub.next_id, channel))
        hub.publish(channel, b"%d" % hub.next_id)

    for channel in before:
        publish(channel)
    since = max(0, hub.next_id - 1 - since_back)
    channels, patterns = targets
    sub = Recorder()
    replay = hub.resume(sub, since, channels=channels, patterns=patterns)
    for op, arg in ops:
        if op == "pub":
            publish(arg)
        else:
            replay.pump(arg)
    while not replay.pump(100):
        pass
    for channel in ("a", "b", "ca", "d"):  # live from here on
        publish(channel)

    def covered(target: str, channel: str) -> bool:
        return channel == target if target in channels else channel.startswith(target[:-1])

    for target in [*channels, *patterns]:
        pattern = target if target in patterns else None
        stream = [(e, p) for e, p in sub.got if p == pattern and (pattern or e.channel == target)]
        got = [e.id for e, _ in stream if not is_gap(e)]
        assert got == sorted(set(got)), "duplicate or out of order"
        gaps = [orjson.loads(e.body) for e, _ in stream if is_gap(e)]
        expected = [i for i, ch in published if i > since and covered(target, ch)]
        for i in expected:
            if i not in got:
                assert any(g["since"] < i < g["oldest"] for g in gaps), (
                    f"{target}: {i} lost silently"
                )
        for gap in gaps:
            assert gap["channel"] == target and gap["since"] < gap["oldest"]
            # a gap is never spurious: something of the target really was in that range
            assert any(gap["since"] < i < gap["oldest"] for i in expected)
        assert set(got) <= set(expected)
        # the live tail always arrives
        assert got[-1] == max(expected)


def test_a_pump_looks_at_a_bounded_number_of_events() -> None:
    hub = Hub()
    for _ in range(10_000):
        hub.publish("busy", b"x")
    hub.publish("rare.one", b"y")
    sub = Recorder()
    replay = hub.resume(sub, 0, patterns=["rare.*"])
    pumps = 1
    while not replay.pump(BIG):  # nothing to send for a long stretch: still yields
        pumps += 1
    assert pumps >= 10_000 // SCAN_MAX
    assert [e.body for e, _ in sub.got] == [b"y"]
