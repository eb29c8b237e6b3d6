"""Row filters in the hub: filtered channel names, one evaluation per filter per event.

A subscription to `shop.orders?customer_id=eq.42` is a subscription to the base
channel `shop.orders` through a `RowFilter` (tidings.hub.filters). Subscribers are
grouped by the exact name they subscribed with, because that name is the
channel their messages carry; names that spell the same filter differently
share its evaluation (keyed by the filter's canonical `text`). For each event
on the base channel, each distinct filter is evaluated once (`Classifier`), and
each name gets one derived `Event` per outcome, encoded once for all of its
subscribers: the body unchanged for a match, with `"match":"enter"` or
`"match":"leave"` added for an update that moved the row into or out of the
filter. History replays (tidings.hub.resume) go through the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from tidings.event import Event
from tidings.hub.filters import Classification, RowFilter, parse_channel

if TYPE_CHECKING:
    from tidings.hub.hub import Subscriber

__all__ = ["Classifier", "FilteredChannel", "derive", "split"]

_TAILS: Final = {"enter": b',"match":"enter"}', "leave": b',"match":"leave"}'}


def split(name: str) -> tuple[str, RowFilter | None]:
    """(base channel, filter) for a channel name; raises FilterError if the filter is bad."""
    if "?" not in name:
        return name, None
    return parse_channel(name)


def derive(event: Event, name: str, outcome: str) -> Event:
    """The event as subscribers of filtered channel `name` receive it."""
    tail = _TAILS.get(outcome)
    body = event.body if tail is None else event.body[:-1] + tail
    return Event(event.id, name, body)


class FilteredChannel:
    """The subscribers of one filtered channel name."""

    __slots__ = ("filter", "name", "subs")

    def __init__(self, name: str, row_filter: RowFilter) -> None:
        self.name = name
        self.filter = row_filter
        self.subs: dict[Subscriber, None] = {}


_UNSET: Final[Any] = object()


class Classifier:
    """Classifies one event against filters, each distinct filter once."""

    __slots__ = ("_record", "event", "results")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._record: Mapping[str, Any] | None = _UNSET
        self.results: dict[str, Classification] = {}

    def record(self) -> Mapping[str, Any] | None:
        """The event's fields: kept while live, re-read from the body for history."""
        if self._record is _UNSET:
            record = self.event.record
            if record is None:
                try:
                    loaded = orjson.loads(self.event.body)
                except orjson.JSONDecodeError:  # a raw PUBLISH payload: not a row event
                    loaded = None
                record = loaded if isinstance(loaded, dict) else None
            self._record = record
        return self._record

    def classify(self, row_filter: RowFilter) -> Classification:
        text = row_filter.text
        try:
            return self.results[text]
        except KeyError:
            record = self.record()
            outcome = None if record is None else row_filter.classify(record)
            self.results[text] = outcome
            return outcome
