"""The unit of delivery: one event, encoded once, shared by every subscriber.

An `Event` carries its JSON body (or, for client PUBLISH, the raw payload) and a
small cache of wire frames, so that each wire format encodes it once no matter
how many subscribers receive it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Event:
    """One message on one channel, with a strictly increasing stream `id`."""

    __slots__ = ("body", "channel", "frames", "id", "record")

    def __init__(
        self, id: int, channel: str, body: bytes, record: dict[str, Any] | None = None
    ) -> None:
        self.id = id
        self.channel = channel
        #: JSON bytes for database events; the payload as published for PUBLISH.
        self.body = body
        #: the decoded fields of a database event (what `body` encodes), for row filters
        self.record = record
        #: Per-format encodings keyed by the codec's own key (e.g. b"resp2:message").
        self.frames: dict[object, bytes] = {}

    def frame(self, key: object, encode: Callable[[Event], bytes]) -> bytes:
        """Return this event's frame for `key`, encoding it on first use only."""
        data = self.frames.get(key)
        if data is None:
            data = self.frames[key] = encode(self)
        return data

    def __repr__(self) -> str:
        return f"Event(id={self.id}, channel={self.channel!r}, body={self.body[:60]!r})"
