"""The hub: subscriptions, ids, synchronous fan-out, the pattern cache."""

from __future__ import annotations

import orjson

from tidings.event import Event
from tidings.hub import Hub


class Recorder:
    """A Subscriber that remembers what it was given."""

    def __init__(self) -> None:
        self.got: list[tuple[Event, str | None]] = []

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.got.append((event, pattern))

    @property
    def bodies(self) -> list[bytes]:
        return [event.body for event, _ in self.got]


def test_publish_reaches_exact_subscribers_only() -> None:
    hub = Hub()
    a, b, other = Recorder(), Recorder(), Recorder()
    hub.subscribe(a, "news")
    hub.subscribe(b, "news")
    hub.subscribe(other, "sport")
    assert hub.publish("news", b"x") == 2
    assert a.bodies == b.bodies == [b"x"]
    assert a.got[0][0] is b.got[0][0]  # one Event object shared by every subscriber
    assert a.got[0][1] is None
    assert other.got == []
    assert hub.publish("nobody", b"y") == 0
    assert hub.published == 2
    assert hub.delivered == 2  # one per event per subscriber
    hub.psubscribe(other, "n*")
    assert hub.publish("news", b"z") == 3
    assert hub.delivered == 5


def test_subscribing_twice_delivers_once() -> None:
    hub = Hub()
    a = Recorder()
    hub.subscribe(a, "ch")
    hub.subscribe(a, "ch")
    assert hub.subscriber_count("ch") == 1
    assert hub.publish("ch", b"x") == 1
    assert len(a.got) == 1


def test_unsubscribe_forgets_empty_channels() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    hub.subscribe(a, "ch")
    hub.subscribe(b, "ch")
    hub.unsubscribe(a, "ch")
    assert hub.channels() == {"ch": 1}
    hub.unsubscribe(b, "ch")
    assert hub.channels() == {}
    hub.unsubscribe(b, "ch")  # not subscribed: a no-op
    hub.unsubscribe(b, "never")
    assert hub.publish("ch", b"x") == 0


def test_ids_increase_strictly_across_publish_kinds() -> None:
    hub = Hub(first_id=41)
    a = Recorder()
    hub.subscribe(a, "ch")
    hub.publish("ch", b"raw")
    event = hub.publish_record("ch", {"type": "insert"})
    hub.publish("empty", b"nobody listens")  # still consumes an id
    last = hub.publish_record("ch", {})
    assert [e.id for e, _ in a.got] == [41, 42, 44]
    assert event.id == 42 and last.id == 44
    assert hub.next_id == 45


def test_publish_record_puts_id_and_channel_first() -> None:
    hub = Hub()
    event = hub.publish_record("shop.orders", {"type": "insert", "data": {"id": 1, "s": "é"}})
    assert event.body == orjson.dumps(
        {"id": 1, "channel": "shop.orders", "type": "insert", "data": {"id": 1, "s": "é"}}
    )
    assert event.body.startswith(b'{"id":1,"channel":"shop.orders",')
    assert event.channel == "shop.orders"


def test_pattern_subscribers_get_the_matching_pattern() -> None:
    hub = Hub()
    exact, glob, both = Recorder(), Recorder(), Recorder()
    hub.subscribe(exact, "shop.orders")
    hub.psubscribe(glob, "shop.*")
    hub.subscribe(both, "shop.orders")
    hub.psubscribe(both, "shop.*")
    hub.psubscribe(both, "*.orders")
    # like redis: one delivery per matching subscription, all counted
    assert hub.publish("shop.orders", b"x") == 5
    assert [p for _, p in exact.got] == [None]
    assert [p for _, p in glob.got] == ["shop.*"]
    assert sorted(p or "" for _, p in both.got) == ["", "*.orders", "shop.*"]
    assert hub.subscriber_count("shop.orders") == 2  # pattern subscribers not counted
    assert hub.pattern_count() == 2
    assert hub.publish("shop.items", b"y") == 2


def test_pattern_cache_follows_subscriptions() -> None:
    hub = Hub()
    a = Recorder()
    assert hub.publish("a.b", b"1") == 0
    hub.psubscribe(a, "x*")  # the cache now knows "a.b" matches nothing
    assert hub.publish("a.b", b"2") == 0
    hub.psubscribe(a, "a.*")  # a new pattern must invalidate that
    assert hub.publish("a.b", b"3") == 1
    hub.punsubscribe(a, "a.*")
    assert hub.publish("a.b", b"4") == 0
    assert hub.pattern_count() == 1
    hub.punsubscribe(a, "x*")
    hub.punsubscribe(a, "x*")  # twice: a no-op
    assert hub.pattern_count() == 0
    assert a.bodies == [b"3"]


def test_a_pattern_shared_by_two_subscribers_survives_one_leaving() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    hub.psubscribe(a, "n*")
    hub.psubscribe(b, "n*")
    hub.punsubscribe(a, "n*")
    assert hub.pattern_count() == 1
    assert hub.publish("news", b"x") == 1
    assert b.bodies == [b"x"] and a.got == []


def test_pattern_cache_is_bounded() -> None:
    hub = Hub()
    hub.psubscribe(Recorder(), "never-*")
    for i in range(70_000):
        hub.publish(f"ch{i}", b"")
    assert len(hub._matching) <= 65_537


def test_subscriber_leaving_its_channel_during_delivery() -> None:
    # the hub iterates a copy of a channel's subscribers, so a subscriber that
    # unsubscribes while being delivered to does not disturb the others
    hub = Hub()
    got: list[str] = []

    class Leaver:
        def deliver(self, event: Event, pattern: str | None) -> None:
            got.append("leaver")
            hub.unsubscribe(self, "ch")

    hub.subscribe(Leaver(), "ch")
    hub.subscribe(Recorder(), "ch")
    hub.publish("ch", b"x")
    assert got == ["leaver"]
    assert hub.subscriber_count("ch") == 1


def test_subscriber_dropping_its_patterns_during_delivery() -> None:
    hub = Hub()

    class Leaver:
        def deliver(self, event: Event, pattern: str | None) -> None:
            hub.punsubscribe(self, "a*")
            hub.punsubscribe(self, "*b")

    leaver = Leaver()
    hub.psubscribe(leaver, "a*")
    hub.psubscribe(leaver, "*b")
    hub.publish("ab", b"x")
