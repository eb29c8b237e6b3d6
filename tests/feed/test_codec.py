"""The feed's messages: byte layout, round trips, framing over arbitrary splits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.event import Event
from tidings.feed.codec import (
    CONFIG,
    EVENT,
    INDEX,
    MARK,
    FeedError,
    FrameReader,
    decode_event,
    decode_json,
    decode_mark,
    decode_publish,
    frame_event,
    frame_json,
    frame_mark,
    frame_publish,
)
from tidings.source.changes import Position

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
# a client may name a channel with any bytes: they come back as surrogate escapes
channels = st.one_of(
    texts, st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))
)
ids = st.integers(0, 2**64 - 1)


def test_event_layout_is_length_kind_flags_id_channel_length_channel_body() -> None:
    frame = frame_event(Event(7, "a.b", b'{"x":1}'), live=True)
    assert frame == (
        (1 + 1 + 8 + 4 + 3 + 7).to_bytes(4, "big")
        + b"E\x01"
        + (7).to_bytes(8, "big")
        + (3).to_bytes(4, "big")
        + b"a.b"
        + b'{"x":1}'
    )
    with_ref = frame_event(Event(7, "a.b", b"p"), live=False, ref=5)
    assert with_ref[4:6] == b"E\x02" and with_ref[18:26] == (5).to_bytes(8, "big")


@given(
    event_id=ids,
    channel=channels,
    body=st.binary(max_size=200),
    live=st.booleans(),
    ref=st.none() | ids,
)
def test_event_round_trip(
    event_id: int, channel: str, body: bytes, live: bool, ref: int | None
) -> None:
    frame = frame_event(Event(event_id, channel, body), live, ref)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    decoded = decode_event(frame[4:])
    event = decoded.event
    assert (event.id, event.channel, event.body) == (event_id, channel, body)
    assert decoded.live is live and decoded.ref == ref
    assert decoded.event.record is None


@given(next_id=ids, file=texts, pos=ids, gtid=st.none() | texts, index=st.booleans())
def test_mark_round_trip(next_id: int, file: str, pos: int, gtid: str | None, index: bool) -> None:
    position = Position(file, pos, gtid)
    frame = frame_mark(next_id, position, INDEX if index else MARK)
    assert frame[4] == (INDEX if index else MARK)
    assert decode_mark(frame[4:]) == (next_id, position)


@given(ref=ids, channel=channels, payload=st.binary(max_size=100))
def test_publish_round_trip(ref: int, channel: str, payload: bytes) -> None:
    decoded = decode_publish(frame_publish(ref, channel, payload)[4:])
    assert (decoded.ref, decoded.channel, decoded.payload) == (ref, channel, payload)


def test_json_messages() -> None:
    frame = frame_json(CONFIG, {"a": [1, "x"]})
    assert frame[4] == CONFIG and decode_json(frame[4:]) == {"a": [1, "x"]}
    with pytest.raises(FeedError):
        decode_json(b"C{not json")


@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=20),
    cuts=st.lists(st.integers(1, 50), max_size=30),
)
def test_frames_survive_any_split_of_the_stream(sizes: list[int], cuts: list[int]) -> None:
    frames = [frame_event(Event(i, "c", b"x" * n), True) for i, n in enumerate(sizes)]
    stream = b"".join(frames)
    reader = FrameReader()
    got: list[bytes] = []
    at = 0
    for cut in cuts:
        got += reader.feed(stream[at : at + cut])
        at += cut
    got += reader.feed(stream[at:])
    assert got == [f[4:] for f in frames]
    assert reader.pending == 0


def test_a_bad_length_or_a_truncated_message_is_an_error() -> None:
    with pytest.raises(FeedError):
        FrameReader(max_frame=100).feed((101).to_bytes(4, "big"))
    with pytest.raises(FeedError):
        FrameReader().feed(b"\0\0\0\0")
    with pytest.raises(FeedError):
        decode_event(bytes([EVENT, 1]) + b"\0" * 3)
    with pytest.raises(FeedError):
        decode_event(frame_event(Event(1, "chan", b""), True)[4:-2])
    with pytest.raises(FeedError):
        decode_mark(frame_mark(1, Position("file", 4))[4:-2])
