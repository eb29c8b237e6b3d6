"""The consuming side of a feed: a hub that publishes the producer's events, same ids."""

from __future__ import annotations

from collections.abc import Callable

from tidings.event import Event
from tidings.feed.codec import EVENT, MARK, SEED, FeedError, decode_event, decode_json, decode_mark
from tidings.hub import Hub
from tidings.hub.history import HistoryState
from tidings.hub.marks import Marks

__all__ = ["FeedConsumer"]


class _Seed:
    """A seed being received: its header, then its events, then its marks."""

    __slots__ = ("events", "events_left", "marks_left", "state")

    def __init__(self, header: dict[str, object]) -> None:
        try:
            self.state = HistoryState(**header["history"])  # type: ignore[arg-type]
            self.events_left = int(header["events"])  # type: ignore[call-overload]
            self.marks_left = int(header["marks"])  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            raise FeedError(f"bad seed header: {exc!r}") from None
        self.events: list[Event] = []


class FeedConsumer:
    """Applies feed messages to `hub`; see tidings.feed.

    `replied(ref, receivers)` is called after each event a client published with
    `ref` has been delivered here (the process holding that client replies).
    """

    __slots__ = ("_seed", "applied", "hub", "replied", "seeded")

    def __init__(self, hub: Hub, *, replied: Callable[[int, int], None] | None = None) -> None:
        self.hub = hub
        self.replied = replied
        self._seed: _Seed | None = None
        #: set once a seed has been applied (until then the hub's ids mean nothing)
        self.seeded = False
        #: events applied, seed included
        self.applied = 0

    def message(self, message: bytes) -> bool:
        """Apply one message; False when it is not a feed message (the caller's kind)."""
        kind = message[0]
        if kind == EVENT:
            decoded = decode_event(message)
            seed = self._seed
            if seed is not None and seed.events_left:
                seed.events.append(decoded.event)
                seed.events_left -= 1
                if not seed.events_left:
                    self._seed_events(seed)
                return True
            self._check_seeded()
            try:
                receivers = self.hub.apply(decoded.event, live=decoded.live)
            except ValueError as exc:
                raise FeedError(str(exc)) from None
            self.applied += 1
            if decoded.ref is not None and self.replied is not None:
                self.replied(decoded.ref, receivers)
            return True
        if kind == MARK:
            next_id, position = decode_mark(message)
            seed = self._seed
            if seed is not None and not seed.events_left and seed.marks_left:
                self.hub.marks.add(position, next_id)  # older marks: ids already passed
                seed.marks_left -= 1
                if not seed.marks_left:
                    self._seed_done()
                return True
            self._check_seeded()
            if next_id != self.hub.next_id:
                raise FeedError(f"mark at id {next_id}, but the next id here is {self.hub.next_id}")
            self.hub.mark(position)
            return True
        if kind == SEED:
            if self.seeded or self._seed is not None:
                raise FeedError("a second seed on one feed")
            header = decode_json(message)
            if not isinstance(header, dict):
                raise FeedError("bad seed header")
            seed = self._seed = _Seed(header)
            hub = self.hub
            hub.epoch = int(header["epoch"])
            hub.next_id = int(header["next_id"])
            hub.marks = Marks()
            if not seed.events_left:
                self._seed_events(seed)
            return True
        return False

    def _seed_events(self, seed: _Seed) -> None:
        try:
            self.hub.history.restore(seed.state, seed.events)
        except ValueError as exc:
            raise FeedError(f"seed history: {exc}") from None
        self.applied += len(seed.events)
        seed.events = []
        if not seed.marks_left:
            self._seed_done()

    def _seed_done(self) -> None:
        self._seed = None
        self.seeded = True

    def _check_seeded(self) -> None:
        if not self.seeded:
            raise FeedError("events before the seed")
