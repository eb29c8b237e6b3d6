"""Resume from ids older than history through a binlog feed (`Hub.reread`), sans-I/O.

A `FakeBinlog` records every event the hub publishes (the binlog, as it were)
and serves feeds from it, as tidings.state.reread does from the real binlog.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.event import Event
from tidings.hub import Hub

BIG = 1 << 30


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[Event, str | None]] = []
        self.wakes = 0

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.got.append((event, pattern))

    def replay_wake(self, replay: object) -> None:
        self.wakes += 1

    def ids(self) -> list[int]:
        return [e.id for e, _ in self.got if not e.body.startswith(b'{"type":"gap"')]

    def gaps(self) -> list[dict[str, object]]:
        return [orjson.loads(e.body) for e, _ in self.got if e.body.startswith(b'{"type":"gap"')]


class FakeFeed:
    def __init__(self, log: list[Event], start: int, since: int, wake: Callable[[], None]):
        self.log = log
        self.index = next((i for i, e in enumerate(log) if e.id >= start), len(log))
        self.since = since
        self.wake = wake
        self.failed: str | None = None
        self.limit: int | None = None  # events readable so far (None: all published)
        self.fail_at: int | None = None  # fails when reaching this id
        self.closed = False

    def peek(self) -> Event | None:
        if self.closed or self.index >= len(self.log):
            return None
        if self.limit is not None and self.index >= self.limit:
            return None
        event = self.log[self.index]
        if self.fail_at is not None and event.id >= self.fail_at:
            self.failed = "ids do not line up"
            return None
        return event

    def pop(self) -> None:
        self.index += 1

    def close(self) -> None:
        self.closed = True


class FakeBinlog:
    """Every event ever published, and the hub's reread service over it."""

    def __init__(self, hub: Hub, oldest: int = 1) -> None:
        self.log: list[Event] = []
        self.oldest = oldest  # ids before this are not readable any more
        self.feeds: list[FakeFeed] = []
        hub.reread = self
        hub.psubscribe(self, "*")  # sees everything live (every test publishes live)

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.log.append(Event(event.id, event.channel, event.body))

    def __call__(self, since: int, wake: Callable[[], None]) -> FakeFeed | None:
        if since + 1 < self.oldest:
            return None
        feed = FakeFeed(self.log, since + 1, since, wake)
        self.feeds.append(feed)
        return feed


def publish(hub: Hub, *channels: str) -> None:
    for channel in channels:
        hub.publish(channel, b'{"c":"%b"}' % channel.encode())


def test_ids_older_than_history_come_from_the_feed_then_history_then_live() -> None:
    hub = Hub(history_events=3)
    binlog = FakeBinlog(hub)
    publish(hub, *"abababab")  # ids 1..8; history keeps 6, 7, 8
    sub = Recorder()
    replay = hub.resume(sub, 1, channels=["a"])
    assert replay.pump(BIG) is True
    assert sub.ids() == [3, 5, 7] and sub.gaps() == []
    (feed,) = binlog.feeds
    assert feed.closed and not replay.rereading  # closed at the seam
    publish(hub, "a", "b", "a")
    assert sub.ids() == [3, 5, 7, 9, 11]


def test_a_feed_that_is_not_ready_waits_and_the_pump_resumes() -> None:
    hub = Hub(history_events=2)
    binlog = FakeBinlog(hub)
    publish(hub, *"aaaaaa")
    sub = Recorder()
    replay = hub.resume(sub, 0, channels=["a"])
    replay.pump(0)  # starts the feed; budget 0 delivers one event at most
    (feed,) = binlog.feeds
    feed.limit = feed.index  # nothing more readable for now
    assert replay.pump(BIG) is False and replay.waiting
    feed.limit = None
    assert replay.pump(BIG) is True
    assert sub.ids() == [1, 2, 3, 4, 5, 6] and sub.gaps() == []


def test_pacing_by_budget_and_events_published_while_reading() -> None:
    hub = Hub(history_events=4)
    FakeBinlog(hub)
    publish(hub, *("a" * 20))
    sub = Recorder()
    replay = hub.resume(sub, 0, channels=["a"])
    rounds = 0
    while not replay.pump(60):  # about one event per pump
        rounds += 1
        publish(hub, "a", "b")  # history keeps moving (and evicting) meanwhile
    assert rounds > 10
    assert sub.ids() == [e for e in range(1, hub.next_id) if e <= 20 or e % 2 == 1]
    assert sub.gaps() == []


def test_no_mark_that_old_or_a_failing_feed_gives_a_gap_from_where_it_got() -> None:
    hub = Hub(history_events=3)
    binlog = FakeBinlog(hub, oldest=3)
    publish(hub, *("a" * 10))
    sub = Recorder()
    hub.resume(sub, 1, channels=["a"]).pump(BIG)  # since + 1 = 2 is older than the binlog
    assert sub.gaps() == [
        {"type": "gap", "channel": "a", "since": 1, "oldest": 8, "epoch": hub.epoch}
    ]
    assert sub.ids() == [8, 9, 10]

    binlog.oldest = 1
    sub = Recorder()
    replay = hub.resume(sub, 2, channels=["a"])
    replay.pump(0)
    binlog.feeds[-1].fail_at = 5
    assert replay.pump(BIG) is True
    assert sub.ids() == [3, 4, 8, 9, 10]
    assert sub.gaps() == [
        {"type": "gap", "channel": "a", "since": 4, "oldest": 8, "epoch": hub.epoch}
    ]
    assert binlog.feeds[-1].closed


def test_filters_and_patterns_apply_to_re_read_events() -> None:
    hub = Hub(history_events=2)
    FakeBinlog(hub)
    for n in range(1, 9):
        hub.publish_record("shop.orders", {"type": "insert", "data": {"n": n}})
    sub = Recorder()
    hub.resume(sub, 0, channels=["shop.orders?n=gt.5"]).pump(BIG)
    assert sub.ids() == [6, 7, 8]
    assert all(e.channel == "shop.orders?n=gt.5" for e, _ in sub.got)
    sub = Recorder()
    hub.resume(sub, 3, patterns=["shop.*"]).pump(BIG)
    assert sub.ids() == [4, 5, 6, 7, 8] and {p for _, p in sub.got} == {"shop.*"}


def test_cancel_closes_the_feed() -> None:
    hub = Hub(history_events=2)
    binlog = FakeBinlog(hub)
    publish(hub, *("a" * 10))
    sub = Recorder()
    replay = hub.resume(sub, 0, channels=["a"])
    assert replay.pump(0) is False
    replay.cancel()
    assert binlog.feeds[0].closed and replay.pump(BIG) is True
    assert hub.subscriber_count("a") == 0


@settings(max_examples=150, deadline=None)
@given(
    channels=st.lists(st.sampled_from("abc"), min_size=1, max_size=60),
    later=st.lists(st.sampled_from("abc"), max_size=30),
    since=st.integers(0, 60),
    history=st.integers(0, 8),
    budget=st.integers(0, 200),
    target=st.sampled_from("abc"),
)
def test_every_id_once_in_order_whatever_history_and_pacing(
    channels: list[str], later: list[str], since: int, history: int, budget: int, target: str
) -> None:
    hub = Hub(history_events=history, history_channel_events=max(1, history // 2))
    FakeBinlog(hub)
    publish(hub, *channels)
    since = min(since, hub.next_id - 1)
    sub = Recorder()
    replay = hub.resume(sub, since, channels=[target])
    pending = list(later)
    while not replay.pump(budget):
        if pending:
            publish(hub, pending.pop(0))
    publish(hub, *pending)
    everything = channels + later
    expected = [i for i, c in enumerate(everything, 1) if c == target and i > since]
    assert sub.ids() == expected and sub.gaps() == []
