"""A hub fed from a FeedHub's messages holds what a single hub would: ids, history,
losses, marks; a consumer seeded mid-stream too; client PUBLISH refs come back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.event import Event
from tidings.feed import FeedConsumer, FeedError, FeedHub, FrameReader, seed_frames
from tidings.feed.codec import frame_event, frame_mark
from tidings.hub import Hub
from tidings.source.changes import Position

LIMITS: dict[str, Any] = {
    "history_events": 12,
    "history_bytes": 20_000,
    "history_channel_events": 5,
    "history_channel_bytes": 4_000,
}


class Wire:
    """The sink: frames every event and mark, as the workers' link does."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def event(self, event: Event, live: bool, ref: int | None) -> None:
        self.frames.append(frame_event(event, live, ref))

    def mark(self, next_id: int, position: Position) -> None:
        self.frames.append(frame_mark(next_id, position))

    def take(self) -> bytes:
        data = b"".join(self.frames)
        self.frames.clear()
        return data


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[int, str, bytes]] = []

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.got.append((event.id, event.channel, event.body))


def consume(consumer: FeedConsumer, reader: FrameReader, data: bytes) -> None:
    for message in reader.feed(data):
        assert consumer.message(message)


def same_history(a: Hub, b: Hub) -> None:
    state_a, events_a = a.history.export()
    state_b, events_b = b.history.export()
    assert state_a == state_b
    assert [(e.id, e.channel, e.body) for e in events_a] == [
        (e.id, e.channel, e.body) for e in events_b
    ]
    assert (a.next_id, a.epoch) == (b.next_id, b.epoch)
    assert a.marks.export() == b.marks.export()


# one step: publish a record, publish raw bytes (a client's), or mark a transaction end
steps = st.lists(
    st.tuples(
        st.sampled_from(["record", "raw", "mark"]),
        st.sampled_from("abcd"),
        st.integers(0, 900),
        st.booleans(),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(steps=steps, join=st.integers(0, 80))
def test_consumers_match_a_single_hub_whenever_they_join(
    steps: list[tuple[str, str, int, bool]], join: int
) -> None:
    wire = Wire()
    producer = FeedHub(wire, **LIMITS)
    single = Hub(**LIMITS)  # what one process would hold
    producer.epoch = producer.next_id = single.epoch = single.next_id = 1000
    early, late = Hub(**LIMITS), Hub(**LIMITS)
    consumers = {"early": (early, FeedConsumer(early), FrameReader())}
    for _, consumer, reader in consumers.values():
        for frame in seed_frames(producer):
            consume(consumer, reader, frame)
    listener = Collector()
    early.subscribe(listener, "a")
    expected = Collector()
    single.subscribe(expected, "a")
    join = join % (len(steps) + 1)

    def seed_late() -> None:
        consumers["late"] = (late, FeedConsumer(late), FrameReader())
        consume(consumers["late"][1], consumers["late"][2], b"".join(seed_frames(producer)))

    for n, (kind, channel, size, live) in enumerate(steps):
        if n == join:
            seed_late()
        if kind == "record":
            fields = {"n": n, "pad": "x" * size}
            producer.publish_record(channel, fields, live=live)
            single.publish_record(channel, fields, live=live)
        elif kind == "raw":
            producer.publish(channel, b"y" * size, live=live)
            single.publish(channel, b"y" * size, live=live)
        else:
            position = Position("bin.000001", 4 + n)
            producer.mark(position)
            single.mark(position)
        data = wire.take()
        for _, consumer, reader in consumers.values():
            # cut anywhere: a stream socket gives no message boundaries
            consume(consumer, reader, data[:7])
            consume(consumer, reader, data[7:])
    if join == len(steps):
        seed_late()
    for hub, consumer, _ in consumers.values():
        assert consumer.seeded
        same_history(hub, single)
        for channel in "abcd":
            for since in (0, 999, 1000 + len(steps) // 2):
                assert hub.history.lost_upto(channel, hub.next_id) == single.history.lost_upto(
                    channel, single.next_id
                )
                assert [e.id for e in hub.history.channel_after(channel, since)] == [
                    e.id for e in single.history.channel_after(channel, since)
                ]
    assert listener.got == expected.got  # live events reached the subscriber, same ids


def test_a_client_publish_ref_comes_back_with_the_local_receivers() -> None:
    wire = Wire()
    producer = FeedHub(wire)
    replies: list[tuple[int, int]] = []
    hub = Hub()
    consumer = FeedConsumer(hub, replied=lambda ref, receivers: replies.append((ref, receivers)))
    reader = FrameReader()
    consume(consumer, reader, b"".join(seed_frames(producer)))
    hub.subscribe(Collector(), "news")
    hub.psubscribe(Collector(), "n*")
    producer.publish("news", b"hello", ref=77)
    producer.publish("news", b"again")
    consume(consumer, reader, wire.take())
    assert replies == [(77, 2)]
    assert hub.next_id == producer.next_id


def test_out_of_order_ids_and_events_before_the_seed_are_refused() -> None:
    hub = Hub()
    consumer = FeedConsumer(hub)
    with pytest.raises(FeedError, match="before the seed"):
        consumer.message(frame_event(Event(1, "c", b""), True)[4:])
    producer = FeedHub(Wire())
    for frame in seed_frames(producer):
        consumer.message(frame[4:])
    with pytest.raises(FeedError, match="expected 1"):
        consumer.message(frame_event(Event(5, "c", b""), True)[4:])
    with pytest.raises(FeedError, match="mark at id 3"):
        consumer.message(frame_mark(3, Position("f", 4))[4:])
    with pytest.raises(FeedError, match="second seed"):
        consumer.message(seed_frames(producer)[0][4:])
    assert not consumer.message(b"Q")  # not a feed message: the caller's to handle


def test_row_filters_on_a_consumer_read_the_fields_from_the_body() -> None:
    wire = Wire()
    producer = FeedHub(wire)
    hub = Hub()
    consumer = FeedConsumer(hub)
    reader = FrameReader()
    consume(consumer, reader, b"".join(seed_frames(producer)))
    sub = Collector()
    hub.subscribe(sub, "shop.orders?total=gt.10")
    producer.publish_record("shop.orders", {"type": "insert", "data": {"total": 5}})
    producer.publish_record("shop.orders", {"type": "insert", "data": {"total": 50}})
    consume(consumer, reader, wire.take())
    assert [(i, c) for i, c, _ in sub.got] == [(2, "shop.orders?total=gt.10")]
