"""The producing side of a feed: the hub that gives ids, and the seed for late joiners."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from tidings.event import Event
from tidings.feed.codec import SEED, frame_event, frame_json, frame_mark
from tidings.hub import Hub
from tidings.source.changes import Position

__all__ = ["EventSink", "FeedHub", "seed_frames"]


class EventSink(Protocol):
    """Where a `FeedHub` sends every event (live or history only) and every mark."""

    def event(self, event: Event, live: bool, ref: int | None) -> None: ...

    def mark(self, next_id: int, position: Position) -> None: ...


class FeedHub(Hub):
    """A hub without subscribers of its own whose events and marks go to `sink`.

    It keeps its history: that is what a consumer joining late is seeded with.
    """

    __slots__ = ("sink",)

    def __init__(self, sink: EventSink, **limits: Any) -> None:
        super().__init__(**limits)
        self.sink = sink

    def publish(
        self, channel: str, body: bytes, *, live: bool = True, ref: int | None = None
    ) -> int:
        event = Event(self._take_id(), channel, body)
        self.sink.event(event, live, ref)
        self.history.append(event)
        return 0  # the receivers are counted where the subscribers are

    def publish_record(self, channel: str, fields: dict[str, Any], *, live: bool = True) -> Event:
        event = super().publish_record(channel, fields, live=False)  # nobody to deliver to
        self.sink.event(event, live, None)
        return event

    def mark(self, position: Position) -> None:
        super().mark(position)
        self.sink.mark(self.next_id, position)


def seed_frames(hub: Hub) -> list[bytes]:
    """What a consumer joining now needs to hold the same history and marks as `hub`:
    a SEED header, the retained events (history only), then the marks."""
    state, events = hub.history.export()
    marks = hub.marks.export()
    header = {
        "epoch": hub.epoch,
        "next_id": hub.next_id,
        "history": dataclasses.asdict(state),
        "events": len(events),
        "marks": len(marks),
    }
    frames = [frame_json(SEED, header)]
    frames += [frame_event(event, False) for event in events]
    frames += [frame_mark(next_id, position) for position, next_id in marks]
    return frames
