"""The hub's bounded in-memory history: recent events, by id and by channel.

Theory of operation. Every event the hub publishes is appended here, in id
order, to one global log and to its channel's log. Limits apply overall and per
channel, by count and by bytes; past a limit the oldest event goes (of the
channel, or overall). Eviction from a channel always takes that channel's
oldest event, and so does overall eviction (the oldest event overall is the
oldest of its channel): what a channel has lost is always a prefix of it, and
one number per channel, `evicted_upto`, says exactly which of its ids are
gone. A resume from `since` on channel C has a gap exactly when
`since < evicted_upto(C)`.

An event evicted from its channel stays in the global log as a dead entry
(recognised by `id <= evicted_upto` of its channel) until overall eviction
reaches it or the log is compacted (when dead entries outnumber live ones):
amortised O(1) per event. Both logs are lists with a head index, so a resume
finds its place by bisecting ids. An evicted event's slot before the head is
overwritten with `GONE` at once, so the event is freed when it is evicted, not
when the prefix of slots is deleted (amortised, later): at 2 events/s a log
that kept 4,096 evicted events until then climbed for half an hour.

Ids below the first event this history ever held are unknown (`start`), as are
the ids of channels whose log was forgotten: channels that have no event left
are remembered (with their `evicted_upto`) up to `MAX_EMPTY`, after which the
oldest are forgotten and `forgotten_upto` rises to cover them. A channel with no
log answers with `forgotten_upto`: a resume may then get a gap it did not
strictly need, never a silent skip.

Garbage collection. Retained events are taken out of the cyclic garbage
collector's lists when the C helpers are built (tidings.wire._cresp.untrack): an
event holds only its id, channel, body, a dict of encoded frames and a decoded
record (dropped here), none of which can lead back to it, so it is never part of
a cycle. Tracked, the up to 200,000 events kept made every full collection scan
them (tens of ms, every few tens of thousands of events) and set it off sooner.

Memory. `size` counts, per event, its body twice (the body and one encoded
wire frame, the common case) plus the channel name and `EVENT_OVERHEAD` for
the objects around them. Stored events drop their decoded `record` (a dict
costs several times its JSON); a filter replaying history re-reads the body.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from tidings.event import Event
from tidings.native import pure_python

__all__ = [
    "EVENT_OVERHEAD",
    "GONE",
    "MAX_EMPTY",
    "ChannelLog",
    "History",
    "HistoryLimits",
    "HistoryState",
    "event_size",
]

#: bytes per stored event besides body and frame: Event, frames dict, list slots (measured:
#: 922 bytes of Python objects per 255-byte row event with its RESP frame, accounted 921)
EVENT_OVERHEAD = 400
#: channel logs with no event left that are still remembered (see the module docstring)
MAX_EMPTY = 65_536


#: what an evicted event's slot before a log's head holds (8 bytes, not the event's ~1 KB)
GONE: Final = Event(0, "", b"")


def event_size(event: Event) -> int:
    """What one stored event counts against the byte limits."""
    return 2 * len(event.body) + len(event.channel) + EVENT_OVERHEAD


def _id(event: Event) -> int:
    return event.id


#: default limits: overall events and bytes, per channel events and bytes. A client away
#: during a burst of 50,000 writes to one table gets them all back, not a gap; a busy
#: table cannot take more than half the history from the quiet ones
DEFAULT_EVENTS = 200_000
DEFAULT_BYTES = 128 << 20
DEFAULT_CHANNEL_EVENTS = 100_000
DEFAULT_CHANNEL_BYTES = 64 << 20


@dataclass(slots=True, frozen=True)
class HistoryLimits:
    """How much history the hub keeps; 0 in any field keeps none."""

    events: int = DEFAULT_EVENTS
    bytes: int = DEFAULT_BYTES
    channel_events: int = DEFAULT_CHANNEL_EVENTS
    channel_bytes: int = DEFAULT_CHANNEL_BYTES

    def __post_init__(self) -> None:
        for name in ("events", "bytes", "channel_events", "channel_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"history limit {name} must be >= 0")

    @property
    def disabled(self) -> bool:
        return not (self.events and self.bytes and self.channel_events and self.channel_bytes)


@dataclass(slots=True)
class HistoryState:
    """What a `History` knows besides its events: enough for another process to hold
    the same history (`History.export` / `History.restore`; see tidings.feed)."""

    start: int | None
    last_id: int
    evicted_max: int
    forgotten_upto: int
    #: every channel log (empty ones included) -> its `evicted_upto`, in the dict's order
    channels: dict[str, int]
    #: the channels whose log is empty, oldest first (the order they are forgotten in)
    empty: list[str]
    #: every channel log -> events it ever appended (status pages)
    appended: dict[str, int]


def _untracker() -> Callable[[object], None] | None:
    """tidings.wire._cresp.untrack, unless not built or TIDINGS_PURE_PYTHON=1."""
    if pure_python():
        return None
    try:  # imported when a History is made: tidings.wire imports the hub
        from tidings.wire._cresp import untrack
    except ImportError:
        return None
    return untrack


class ChannelLog:
    """One channel's retained events (a list with a head index) and what it has lost."""

    __slots__ = ("appended", "count", "events", "evicted_upto", "head", "size")

    def __init__(self, evicted_upto: int) -> None:
        self.events: list[Event] = []
        self.head = 0
        #: events ever appended while this log existed (for status pages: busiest channels)
        self.appended = 0
        #: retained events (len(events) - head) and their accounted bytes
        self.count = 0
        self.size = 0
        #: every id of this channel up to here is gone (or unknown)
        self.evicted_upto = evicted_upto

    def index_after(self, after: int) -> int:
        """Index in `events` of the first retained event with id > `after`."""
        return bisect.bisect_right(self.events, after, lo=self.head, key=_id)

    def first_after(self, after: int) -> int | None:
        i = self.index_after(after)
        return self.events[i].id if i < len(self.events) else None


class History:
    """See the module docstring."""

    __slots__ = (
        "_bytes",
        "_channel_bytes",
        "_channel_events",
        "_dead",
        "_disabled",
        "_empty",
        "_events",
        "_head",
        "_log",
        "_untrack",
        "channels",
        "count",
        "evicted_max",
        "forgotten_upto",
        "last_id",
        "limits",
        "max_empty",
        "size",
        "start",
    )

    def __init__(self, limits: HistoryLimits | None = None, *, max_empty: int = MAX_EMPTY) -> None:
        self.limits = limits = limits or HistoryLimits()
        # the limits as plain attributes: append() runs once per event
        self._disabled = limits.disabled
        self._events = limits.events
        self._bytes = limits.bytes
        self._channel_events = limits.channel_events
        self._channel_bytes = limits.channel_bytes
        self._untrack = _untracker()  # see "Garbage collection" in the module docstring
        self._log: list[Event] = []
        self._head = 0
        self._dead = 0  # entries in _log[_head:] already evicted from their channel
        self.channels: dict[str, ChannelLog] = {}
        self._empty: dict[str, None] = {}  # channels whose log is empty, oldest first
        self.max_empty = max_empty
        #: retained events and their accounted bytes
        self.count = 0
        self.size = 0
        #: the first id ever appended (ids below it are unknown); None until then
        self.start: int | None = None
        #: the last id appended
        self.last_id = 0
        #: highest id evicted from any channel (a quick "no gap anywhere above" test)
        self.evicted_max = 0
        #: highest id evicted from a channel whose log has since been forgotten
        self.forgotten_upto = 0

    # -- appending and evicting ------------------------------------------------------------
    def append(self, event: Event) -> None:
        """Retain `event` (ids must increase); evict what the limits no longer allow."""
        event.record = None  # see "Memory" in the module docstring
        self.last_id = event.id
        if self.start is None:
            self.start = event.id
        if self._disabled:  # nothing is kept: every id is gone as soon as it is published
            self.evicted_max = self.forgotten_upto = event.id
            return
        channel = event.channel
        size = 2 * len(event.body) + len(channel) + EVENT_OVERHEAD  # event_size(), inlined
        log = self.channels.get(channel)
        if log is None:
            log = self.channels[channel] = ChannelLog(self.forgotten_upto)
        elif not log.count:
            del self._empty[channel]
        log.events.append(event)
        log.appended += 1
        log.count += 1
        log.size += size
        self._log.append(event)
        self.count += 1
        self.size += size
        if self._untrack is not None:
            self._untrack(event)
        if log.count > self._channel_events or log.size > self._channel_bytes:
            self._trim_channel(channel, log)
        if self.count > self._events or self.size > self._bytes:
            self._trim()

    def _trim_channel(self, channel: str, log: ChannelLog) -> None:
        # the newest event stays whatever its size, so every event is seen by a replay
        while (log.count > self._channel_events or log.size > self._channel_bytes) and (
            log.count > 1
        ):
            self._evict(channel, log)
            self._dead += 1
        if self._dead > 1024 and self._dead > self.count:
            self._compact()

    def _trim(self) -> None:
        """Evict the oldest events overall until within the limits."""
        events = self._log
        channels = self.channels
        while (self.count > self._events or self.size > self._bytes) and self.count > 1:
            event = events[self._head]
            events[self._head] = GONE  # freed now, whenever the slots go
            self._head += 1
            log = channels.get(event.channel)
            if log is None or event.id <= log.evicted_upto:
                self._dead -= 1  # already evicted from its channel
                continue
            self._evict(event.channel, log)
        if self._head > 4096 and self._head * 2 > len(events):
            del events[: self._head]
            self._head = 0

    def _evict(self, channel: str, log: ChannelLog) -> None:
        """Evict the oldest event of `channel` (from its log; the global entry goes dead)."""
        event = log.events[log.head]
        log.events[log.head] = GONE  # the global log's entry is dead or GONE too
        log.head += 1
        log.count -= 1
        size = 2 * len(event.body) + len(channel) + EVENT_OVERHEAD  # event_size(), inlined
        log.size -= size
        self.count -= 1
        self.size -= size
        log.evicted_upto = event.id
        if event.id > self.evicted_max:
            self.evicted_max = event.id
        if log.head > 64 and log.head * 2 > len(log.events):
            del log.events[: log.head]
            log.head = 0
        if not log.count:
            self._empty[channel] = None
            if len(self._empty) > self.max_empty:
                self._forget_oldest_empty()

    def _forget_oldest_empty(self) -> None:
        channel = next(iter(self._empty))
        del self._empty[channel]
        log = self.channels.pop(channel)
        if log.evicted_upto > self.forgotten_upto:
            self.forgotten_upto = log.evicted_upto

    def _compact(self) -> None:
        self._log = [event for event in self._log[self._head :] if self._alive(event)]
        self._head = 0
        self._dead = 0

    def _alive(self, event: Event) -> bool:
        log = self.channels.get(event.channel)
        return log is not None and event.id > log.evicted_upto

    # -- copying to another process -------------------------------------------------------------
    def export(self) -> tuple[HistoryState, list[Event]]:
        """This history's state and retained events (id order): `restore` rebuilds it."""
        state = HistoryState(
            start=self.start,
            last_id=self.last_id,
            evicted_max=self.evicted_max,
            forgotten_upto=self.forgotten_upto,
            channels={name: log.evicted_upto for name, log in self.channels.items()},
            empty=list(self._empty),
            appended={name: log.appended for name, log in self.channels.items()},
        )
        return state, list(self.after(0))

    def restore(self, state: HistoryState, events: list[Event]) -> None:
        """Become the history `export` described: same events, same losses, so resumes,
        gaps and later evictions come out the same as in the original."""
        self._log = []
        self._head = self._dead = self.count = self.size = 0
        self.channels = {name: ChannelLog(upto) for name, upto in state.channels.items()}
        for event in events:
            event.record = None
            log = self.channels.get(event.channel)
            if log is None or event.id <= log.evicted_upto:
                raise ValueError(f"event {event.id} on {event.channel!r} is not retained there")
            size = event_size(event)
            log.events.append(event)
            log.count += 1
            log.size += size
            self._log.append(event)
            self.count += 1
            self.size += size
            if self._untrack is not None:
                self._untrack(event)
        for name, appended in state.appended.items():
            self.channels[name].appended = appended
        self._empty = dict.fromkeys(state.empty)
        self.start = state.start
        self.last_id = state.last_id
        self.evicted_max = state.evicted_max
        self.forgotten_upto = state.forgotten_upto

    # -- reading -----------------------------------------------------------------------------
    def unknown_upto(self, next_id: int) -> int:
        """Every id up to here predates this history (and is unknown on every channel)."""
        return (next_id if self.start is None else self.start) - 1

    def gap_floor(self, next_id: int) -> int:
        """No channel has lost an id above this: a resume from here or later has no gap."""
        return max(self.unknown_upto(next_id), self.evicted_max, self.forgotten_upto)

    def lost_upto(self, channel: str, next_id: int) -> int:
        """Every id of `channel` up to here is gone (evicted, forgotten or unknown)."""
        log = self.channels.get(channel)
        lost = self.forgotten_upto if log is None else log.evicted_upto
        return max(lost, self.unknown_upto(next_id))

    def after(self, after: int) -> Iterator[Event]:
        """Retained events with id > `after`, in order (all channels). Do not append meanwhile."""
        events = self._log
        start = bisect.bisect_right(events, after, lo=self._head, key=_id)
        channels = self.channels
        for i in range(start, len(events)):
            event = events[i]
            log = channels.get(event.channel)
            if log is not None and event.id > log.evicted_upto:
                yield event

    def channel_after(self, channel: str, after: int) -> Iterator[Event]:
        """Retained events of `channel` with id > `after`, in order."""
        log = self.channels.get(channel)
        if log is None:
            return iter(())
        events = log.events
        return map(events.__getitem__, range(log.index_after(after), len(events)))

    def first_after(self, channel: str, after: int) -> int | None:
        """Id of the first retained event of `channel` above `after`, if any."""
        log = self.channels.get(channel)
        return None if log is None else log.first_after(after)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (
            f"<History {self.count} events, {self.size} bytes, {len(self.channels)} channels, "
            f"start={self.start} last={self.last_id}>"
        )
