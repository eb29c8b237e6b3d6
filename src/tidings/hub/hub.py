"""The hub: who listens to what, and synchronous fan-out.

Theory of operation. A client connection (any wire protocol) is a `Subscriber`:
an object with one method, `deliver(event, pattern)`. The hub maps channel names
to the set of subscribers and glob patterns to theirs. `publish()` gives the
event its stream id, then calls `deliver` on every interested subscriber and
returns; it never awaits a client. A subscriber encodes the event with
`event.frame(key, encoder)`, so the bytes for one wire format are produced once
per event and shared by all its subscribers, then queues them on its own
bounded buffer (see `tidings.wire.outbox`). A slow subscriber is cut off by its
own connection; the hub never waits.

Around that core: every event also goes into a bounded `History`
(tidings.hub.history), from which `resume()` replays a subscriber's missed
events before it goes live (tidings.hub.resume); a channel name with a `?`
subscribes through a row filter, evaluated once per distinct filter per event
(tidings.hub.filtering); and `mark()` pairs binlog positions with ids
(tidings.hub.marks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from tidings.event import Event
from tidings.hub import history as _history
from tidings.hub.filtering import Classifier, FilteredChannel, derive, split
from tidings.hub.history import History, HistoryLimits
from tidings.hub.marks import Marks
from tidings.hub.patterns import GlobPattern
from tidings.hub.resume import Replay, Reread
from tidings.source.changes import Position


class Subscriber(Protocol):
    def deliver(self, event: Event, pattern: str | None) -> None:
        """Queue `event` for the client; `pattern` is the glob that matched, if any.

        Must not block. It may unsubscribe (a connection cut off for being slow leaves
        at once): dispatch iterates over copies.
        """


class Hub:
    __slots__ = (
        "_channels",
        "_filtered",
        "_matching",
        "_patterns",
        "delivered",
        "epoch",
        "history",
        "marks",
        "next_id",
        "published",
        "reread",
    )

    def __init__(
        self,
        first_id: int = 1,
        *,
        history_events: int = _history.DEFAULT_EVENTS,
        history_bytes: int = _history.DEFAULT_BYTES,
        history_channel_events: int = _history.DEFAULT_CHANNEL_EVENTS,
        history_channel_bytes: int = _history.DEFAULT_CHANNEL_BYTES,
    ) -> None:
        self._channels: dict[str, dict[Subscriber, None]] = {}
        # base channel -> filtered channel name -> its subscribers (see tidings.hub.filtering)
        self._filtered: dict[str, dict[str, FilteredChannel]] = {}
        self._patterns: dict[str, tuple[GlobPattern, dict[Subscriber, None]]] = {}
        # channel -> patterns that match it; rebuilt lazily whenever patterns change
        self._matching: dict[str, tuple[str, ...]] = {}
        #: id the next published event gets
        self.next_id = first_id
        #: first id of the current epoch (see docs/topics/delivery.md); set with next_id
        self.epoch = first_id
        #: live events dispatched, and deliveries made (one per event per subscriber)
        self.published = 0
        self.delivered = 0
        #: recent events, for resume (bounded; see tidings.hub.history)
        self.history = History(
            HistoryLimits(
                history_events, history_bytes, history_channel_events, history_channel_bytes
            )
        )
        #: binlog positions -> next id, at transaction boundaries (see `mark`)
        self.marks = Marks()
        #: serves resumes older than history by re-reading the binlog (set by the daemon
        #: with --state-dir, tidings.state.reread); None: those get a gap
        self.reread: Reread | None = None

    # -- subscriptions -------------------------------------------------------------------
    def subscribe(self, sub: Subscriber, channel: str) -> None:
        """Subscribe to `channel`, which may carry a row filter (`base?col=op.value...`).

        Raises `FilterError` for a malformed filter (any name with a `?` is one).
        """
        base, row_filter = split(channel)
        if row_filter is None:
            self._channels.setdefault(channel, {})[sub] = None
            return
        names = self._filtered.setdefault(base, {})
        group = names.get(channel)
        if group is None:
            group = names[channel] = FilteredChannel(channel, row_filter)
        group.subs[sub] = None

    def unsubscribe(self, sub: Subscriber, channel: str) -> None:
        subs = self._channels.get(channel)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._channels[channel]
            return
        if "?" in channel:
            base = channel.partition("?")[0]
            names = self._filtered.get(base)
            group = names.get(channel) if names else None
            if names is not None and group is not None:
                group.subs.pop(sub, None)
                if not group.subs:
                    del names[channel]
                    if not names:
                        del self._filtered[base]

    def psubscribe(self, sub: Subscriber, pattern: str) -> None:
        entry = self._patterns.get(pattern)
        if entry is None:
            entry = self._patterns[pattern] = (GlobPattern(pattern), {})
            self._matching.clear()
        entry[1][sub] = None

    def punsubscribe(self, sub: Subscriber, pattern: str) -> None:
        entry = self._patterns.get(pattern)
        if entry is not None:
            entry[1].pop(sub, None)
            if not entry[1]:
                del self._patterns[pattern]
                self._matching.clear()

    # -- introspection -------------------------------------------------------------------
    def subscriber_count(self, channel: str) -> int:
        """Exact subscribers of `channel` (pattern subscribers not counted, as in Redis)."""
        subs = self._channels.get(channel)
        if subs is None and "?" in channel:
            group = self._filtered.get(channel.partition("?")[0], {}).get(channel)
            return len(group.subs) if group else 0
        return len(subs) if subs else 0

    def channels(self) -> dict[str, int]:
        """Subscribed channel names (filtered ones as subscribed) and their subscribers."""
        found = {name: len(subs) for name, subs in self._channels.items()}
        for names in self._filtered.values():
            found.update((name, len(group.subs)) for name, group in names.items())
        return found

    def pattern_count(self) -> int:
        return len(self._patterns)

    # -- fan-out ---------------------------------------------------------------------------
    def publish(
        self, channel: str, body: bytes, *, live: bool = True, ref: int | None = None
    ) -> int:
        """Deliver `body` on `channel` as-is; return the number of receivers.

        With `live=False` the event only takes its id (and its place in history):
        used while re-reading old binlog at start-up. `ref` is the publishing
        client's reference (tidings.source.notify); only a hub that feeds other
        hubs uses it (tidings.feed.FeedHub), so that the one holding the client replies.
        """
        event_id = self.next_id  # _take_id(), inlined: once per client PUBLISH
        self.next_id = event_id + 1
        event = Event(event_id, channel, body)
        receivers = self.dispatch(event) if live else 0
        self.history.append(event)
        return receivers

    def publish_record(self, channel: str, fields: dict[str, Any], *, live: bool = True) -> Event:
        """Deliver a database event: JSON object with `id` and `channel` first."""
        event_id = self._take_id()
        record = {"id": event_id, "channel": channel, **fields}
        # orjson's bytes keep a 4 KiB allocation whatever their length; an exact copy
        # (0.2 us) makes a retained event cost its size, not 4 KiB
        event = Event(event_id, channel, b"%b" % orjson.dumps(record), record)
        if live:
            self.dispatch(event)
        self.history.append(event)
        return event

    def apply(self, event: Event, *, live: bool = True) -> int:
        """Publish an event whose id was given elsewhere (a hub fed from an event feed,
        tidings.feed): it must be the id this hub expects next. Returns the receivers."""
        if event.id != self.next_id:
            raise ValueError(f"event id {event.id} from the feed, expected {self.next_id}")
        self.next_id = event.id + 1
        receivers = self.dispatch(event) if live else 0
        self.history.append(event)
        return receivers

    # -- resume ----------------------------------------------------------------------------
    def resume(
        self,
        sub: Subscriber,
        since: int,
        *,
        channels: Iterable[str] = (),
        patterns: Iterable[str] = (),
    ) -> Replay:
        """Replay to `sub` every retained event after id `since` on these targets, then
        subscribe it live. Drive it with `Replay.pump(budget)` as its output drains.

        Raises `ResumeError` for a `since` below 0 or ahead of the stream, `FilterError`
        for a malformed filtered channel name. A target that lost ids after `since` is
        served them from the binlog when `reread` can, else first gets a `gap` message
        (see tidings.hub.resume).
        """
        return Replay(self, sub, since, channels, patterns)

    # -- binlog positions ----------------------------------------------------------------
    def mark(self, position: Position) -> None:
        """Record that the stream is at `position` (a transaction boundary) with `next_id`."""
        self.marks.add(position, self.next_id)

    def id_at(self, position: Position) -> int | None:
        """The next id at transaction boundary `position`, if reached and still recorded."""
        return self.marks.id_at(position)

    async def wait_position(self, position: Position) -> int | None:
        """Wait until the stream has reached `position`; return `id_at(position)`."""
        return await self.marks.wait(position)

    def dispatch(self, event: Event) -> int:
        self.published += 1
        receivers = 0
        subs = self._channels.get(event.channel)
        if subs:
            # a copy: delivery may close a connection whose cleanup edits the dict
            receivers = len(subs)
            for sub in tuple(subs):
                sub.deliver(event, None)
        if self._filtered:
            filtered = self._filtered.get(event.channel)
            if filtered:
                receivers += self._dispatch_filtered(event, filtered)
        if self._patterns:
            for pattern in self._patterns_for(event.channel):
                entry = self._patterns.get(pattern)
                if entry is None:  # its last subscriber left during this dispatch
                    continue
                psubs = entry[1]
                receivers += len(psubs)
                for sub in tuple(psubs):
                    sub.deliver(event, pattern)
        self.delivered += receivers
        return receivers

    def _dispatch_filtered(self, event: Event, filtered: dict[str, FilteredChannel]) -> int:
        """Each distinct filter evaluated once; one derived event per name and outcome."""
        receivers = 0
        classifier = Classifier(event)
        for group in tuple(filtered.values()):
            outcome = classifier.classify(group.filter)
            if outcome is None or not group.subs:
                continue
            derived = derive(event, group.name, outcome)
            receivers += len(group.subs)
            for sub in tuple(group.subs):
                sub.deliver(derived, None)
        return receivers

    def _take_id(self) -> int:
        event_id = self.next_id
        self.next_id = event_id + 1
        return event_id

    def _patterns_for(self, channel: str) -> tuple[str, ...]:
        found = self._matching.get(channel)
        if found is None:
            if len(self._matching) > 65536:  # bound the cache on high-cardinality channels
                self._matching.clear()
            found = tuple(p for p, (glob, _) in self._patterns.items() if glob.matches(channel))
            self._matching[channel] = found
        return found
