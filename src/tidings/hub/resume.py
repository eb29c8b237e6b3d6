"""Resume: one subscriber catches up from an id through history, then goes live.

Theory of operation. `Hub.resume(sub, since, channels=..., patterns=...)` makes
a `Replay`: a cursor into the hub's history for one subscriber and a set of
targets (exact channels, filtered channels such as `shop.orders?id=gt.5`, and
glob patterns). It is sans-I/O and used by every
wire protocol the same way: the connection calls `pump(budget)` whenever its
output has room, and each call delivers, through the subscriber's ordinary
`deliver`, retained events with ids above the cursor, in id order, until about
`budget` bytes went out. Meanwhile the subscriber is *not* registered with the
hub for those targets: events published during the replay are appended to
history and reach it through the same cursor. When a pump finds nothing left
above the cursor, it registers the subscriber for live delivery and reports
done. The loop is single-threaded, so that switch happens between two events:
no gap, no duplicate at the seam.

Gaps. Before walking, each pump checks whether a target has lost ids above
what its client already has (`History.lost_upto`): evicted while the client
was away, or evicted during a slow replay, or older than this history. Then
the client gets one `gap` message for that target,
`{"type":"gap","channel":T,"since":S,"oldest":O,"epoch":E}`, on the target's
own name (the pattern, for a pattern), and the cursor skips to what is left:
events from O on follow. The quick test `position >= History.gap_floor()`
makes this free in the common case. A filtered channel gets a gap when its base
channel lost ids, whether or not the lost rows matched (they cannot be known).

Older than memory: the binlog. When the hub has a `reread` service (the
daemon sets one with `--state-dir`, tidings.state.reread) and a pump finds
that a target lost ids above what its client has, the replay first asks it
for a `Feed`: the events from the binlog, re-read from the newest mark at or
before `since + 1`, with the ids they had, verified against the marks before
they are handed out. The pump then delivers those (filtered per target like
history) until no target has lost anything above the cursor any more: from
there memory history holds every id, the feed is closed and the walk goes on
in history, then live, in the same synchronous step. No gap, no duplicate at
either seam. A feed that cannot serve (no mark that old, the binlog purged,
ids that do not line up) ends with `failed` set, and the pump falls back to
the `gap` message from wherever the cursor got to. While a feed has nothing
ready the pump returns False with `waiting` set; the feed calls the
subscriber's `replay_wake()` (or `snapshot_wake()`) when it has more.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final, Protocol

import orjson

from tidings.event import Event
from tidings.hub.filtering import Classifier, derive, split
from tidings.hub.filters import RowFilter
from tidings.hub.history import History
from tidings.hub.patterns import GlobPattern

if TYPE_CHECKING:
    from tidings.hub.hub import Hub, Subscriber

__all__ = ["FRAME_OVERHEAD", "Feed", "Replay", "Reread", "ResumeError"]

log = logging.getLogger("tidings.hub.resume")

#: bytes a message frame adds around body and channel (for budgeting, roughly)
FRAME_OVERHEAD: Final = 40
#: more exact channels than this are walked through the global log instead of merged
_MERGE_MAX: Final = 8
#: events looked at per pump at most, delivered or not (a pattern matching few channels
#: walks the global log: the loop gets a turn between stretches of it)
SCAN_MAX: Final = 4096


class ResumeError(ValueError):
    """A resume request that cannot be served (e.g. an id ahead of the stream)."""


class Feed(Protocol):
    """Events older than history, in id order, from a re-read of the binlog."""

    #: why it cannot serve (any more): the replay falls back to a gap; None while it can
    failed: str | None

    def peek(self) -> Event | None:
        """The next verified event, or None if none is ready yet (or it failed)."""

    def pop(self) -> None:
        """Consume the event `peek()` returned."""

    def close(self) -> None:
        """Stop reading (the replay caught up with history, or was dropped)."""


#: the hub's binlog re-read service: (since, wake) -> a feed of the ids after `since`, or
#: None when it cannot serve them (no mark that old); `wake` is called when a feed that had
#: nothing ready has more (or failed)
Reread = Callable[[int, Callable[[], None]], Feed | None]


def check_since(since: int, next_id: int) -> None:
    if since < 0:
        raise ResumeError(f"since-id must be >= 0, not {since}")
    if since >= next_id:
        raise ResumeError(
            f"since-id {since} is ahead of the stream: the last event id is {next_id - 1}"
        )


def gap_body(target: str, since: int, oldest: int, epoch: int) -> bytes:
    return orjson.dumps(
        {"type": "gap", "channel": target, "since": since, "oldest": oldest, "epoch": epoch}
    )


def _id(event: Event) -> int:
    return event.id


#: (target, its pattern or None, last id its client has, last id lost, oldest id retained)
Loss = tuple[str, str | None, int, int, int]


class Replay:
    """One subscriber's replay of some targets; see the module docstring."""

    __slots__ = (
        "_bases",
        "_feed",
        "_globs",
        "_matching",
        "_reread_tried",
        "channels",
        "hub",
        "patterns",
        "position",
        "state",
        "sub",
    )

    def __init__(
        self,
        hub: Hub,
        sub: Subscriber,
        since: int,
        channels: Iterable[str] = (),
        patterns: Iterable[str] = (),
    ) -> None:
        check_since(since, hub.next_id)
        channels = list(dict.fromkeys(channels))
        # base channel -> [(name as subscribed, its filter or None)]; raises FilterError
        self._bases: dict[str, list[tuple[str, RowFilter | None]]] = {}
        for name in channels:
            base, row_filter = split(name)
            self._bases.setdefault(base, []).append((name, row_filter))
        self.hub = hub
        self.sub = sub
        #: the last id the walk has consumed
        self.position = since
        #: target -> ids up to here are not (or no longer) to be sent on it
        self.channels: dict[str, int] = dict.fromkeys(channels, since)
        self.patterns: dict[str, int] = dict.fromkeys(patterns, since)
        self._globs = {p: GlobPattern(p) for p in self.patterns}
        self._matching: dict[str, tuple[str, ...]] = {}  # channel -> patterns it matches
        #: "replay" until caught up, then "live"; "cancelled" if dropped first
        self.state = "replay"
        #: the binlog re-read serving ids older than history, while it does
        self._feed: Feed | None = None
        self._reread_tried = False

    def __repr__(self) -> str:
        targets = [*self.channels, *self.patterns]
        return f"<Replay {self.state} at {self.position} of {targets}>"

    @property
    def done(self) -> bool:
        return self.state != "replay"

    @property
    def waiting(self) -> bool:
        """Waiting for the binlog re-read: pumping is useless until the subscriber's
        `replay_wake()` (or `snapshot_wake()`) is called."""
        feed = self._feed
        return feed is not None and feed.failed is None and feed.peek() is None

    @property
    def rereading(self) -> bool:
        """Serving ids older than history from the binlog right now."""
        return self._feed is not None

    # -- the caller's side -----------------------------------------------------------------
    def pump(self, budget: int) -> bool:
        """Deliver up to about `budget` bytes of history; go live when caught up.

        Returns True once the subscriber is live (or the replay was cancelled); False
        when it stopped at the budget (or after SCAN_MAX events): call again later.
        """
        if self.state != "replay":
            return True
        hub = self.hub
        history = hub.history
        sent = 0
        if self._feed is not None or (
            self.position < history.gap_floor(hub.next_id) and self._start_reread(history)
        ):
            sent = self._pump_feed(budget)
            if sent < 0:
                return self.state != "replay"
        if self.position < history.gap_floor(hub.next_id):
            self._gaps(history, hub.next_id)
        for scanned, event in enumerate(self._source(history), 1):
            sent += self._deliver(event)
            self.position = event.id
            if self.state != "replay":  # delivery cut the connection, which cancelled us
                return True
            if sent >= budget or scanned >= SCAN_MAX:
                return False
        self._go_live()
        return True

    def discard(self, name: str, *, pattern: bool = False) -> None:
        """Stop replaying target `name` (the client unsubscribed from it)."""
        if pattern:
            self.patterns.pop(name, None)
            self._globs.pop(name, None)
            self._matching.clear()
        elif self.channels.pop(name, None) is not None:
            base = split(name)[0]
            targets = [t for t in self._bases[base] if t[0] != name]
            if targets:
                self._bases[base] = targets
            else:
                del self._bases[base]
        if not self.channels and not self.patterns and self.state == "replay":
            self.state = "cancelled"
            self._close_feed()

    def cancel(self) -> None:
        """Drop the replay (the connection is gone); a live subscription is not undone."""
        if self.state == "replay":
            self.state = "cancelled"
            self._close_feed()

    # -- internals ---------------------------------------------------------------------------
    def _source(self, history: History) -> Iterator[Event]:
        after = self.position
        if self.patterns or len(self._bases) > _MERGE_MAX:
            return history.after(after)
        if len(self._bases) == 1:
            return history.channel_after(next(iter(self._bases)), after)
        return heapq.merge(*(history.channel_after(c, after) for c in self._bases), key=_id)

    def _patterns_for(self, channel: str) -> tuple[str, ...]:
        found = self._matching.get(channel)
        if found is None:
            if len(self._matching) > 65536:
                self._matching.clear()
            found = tuple(p for p, glob in self._globs.items() if glob.matches(channel))
            self._matching[channel] = found
        return found

    def _gaps(self, history: History, next_id: int) -> None:
        epoch = self.hub.epoch
        for name, pattern, have, lost, oldest in self._losses(history, next_id):
            self._gap(name, pattern, have, oldest, epoch)
            if pattern is None:
                self.channels[name] = lost
            else:
                self.patterns[name] = lost

    def _losses(self, history: History, next_id: int) -> list[Loss]:
        """(target, pattern or None, last id it has, last id lost, oldest retained) for
        each target that lost ids above what its client has."""
        found: list[Loss] = []
        for base, targets in self._bases.items():
            lost = history.lost_upto(base, next_id)
            for name, _ in targets:
                have = max(self.channels[name], self.position)
                if lost <= have:
                    continue
                oldest = history.first_after(base, lost)
                found.append((name, None, have, lost, next_id if oldest is None else oldest))
        if not self.patterns:
            return found
        floor = max(history.unknown_upto(next_id), history.forgotten_upto)
        for name, skip in self.patterns.items():
            have = max(skip, self.position)
            glob = self._globs[name]
            lost = floor
            matching = []
            for channel, log in history.channels.items():
                if glob.matches(channel):
                    matching.append(log)
                    lost = max(lost, log.evicted_upto)
            if lost > have:
                firsts = [f for log in matching if (f := log.first_after(lost)) is not None]
                found.append((name, name, have, lost, min(firsts, default=next_id)))
        return found

    # -- ids older than history, from the binlog -------------------------------------------
    def _start_reread(self, history: History) -> bool:
        """Ask the hub's re-read service for the ids history lost; True if it took them."""
        reread = self.hub.reread
        if reread is None or self._reread_tried:
            return False
        self._reread_tried = True
        if not self._losses(history, self.hub.next_id):
            return False
        self._feed = reread(self.position, self._wake)
        return self._feed is not None

    def _pump_feed(self, budget: int) -> int:
        """Deliver re-read events up to `budget`; the bytes sent, or -1 to stop this pump
        (waiting for the feed, out of budget, or cancelled). Returns with the feed closed
        once history holds everything above the cursor, or the feed failed."""
        feed = self._feed
        assert feed is not None
        hub = self.hub
        history = hub.history
        sent = 0
        full_check = True  # the exact (costlier) test: per pump and when the feed runs dry
        while True:
            next_id = hub.next_id
            if self.position >= history.gap_floor(next_id) or (
                full_check and not self._losses(history, next_id)
            ):
                log.debug("%r: history holds everything after %d now", self, self.position)
                self._close_feed()
                return sent
            full_check = False
            event = feed.peek()
            if event is None or event.id >= next_id:  # (the feed waits for the stream)
                if feed.failed is not None:
                    log.info("%r: the binlog cannot serve it: %s", self, feed.failed)
                    self._close_feed()
                    return sent
                if sent:  # the exact test once more before waiting
                    full_check = True
                    if self._losses(history, next_id):
                        return -1
                    continue
                return -1
            feed.pop()
            if event.id > self.position:
                sent += self._deliver(event)
                self.position = event.id
                if self.state != "replay":
                    return -1
                if sent >= budget:
                    return -1

    def _deliver(self, event: Event) -> int:
        """Deliver `event` on each target that wants it; the bytes sent, roughly."""
        sent = 0
        name = event.channel
        targets = self._bases.get(name)
        sub = self.sub
        if targets is not None:
            classifier: Classifier | None = None
            for target, row_filter in targets:
                if event.id <= self.channels[target]:
                    continue
                if row_filter is None:
                    sub.deliver(event, None)
                else:
                    classifier = classifier or Classifier(event)
                    outcome = classifier.classify(row_filter)
                    if outcome is None:
                        continue
                    sub.deliver(derive(event, target, outcome), None)
                sent += len(event.body) + len(target) + FRAME_OVERHEAD
        if self.patterns:
            for pattern in self._patterns_for(name):
                since = self.patterns.get(pattern)
                if since is not None and event.id > since:
                    sub.deliver(event, pattern)
                    sent += len(event.body) + len(name) + len(pattern) + FRAME_OVERHEAD
        return sent

    def _wake(self) -> None:
        if self.state != "replay":
            return
        wake = getattr(self.sub, "replay_wake", None)
        if wake is not None:
            wake(self)
            return
        wake = getattr(self.sub, "snapshot_wake", None)  # RESP's: pumps its replays again
        if wake is not None:
            wake(self)

    def _close_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.close()

    def _gap(self, name: str, pattern: str | None, since: int, oldest: int, epoch: int) -> None:
        body = gap_body(name, since, oldest, epoch)
        self.sub.deliver(Event(oldest - 1, name, body), pattern)

    def _go_live(self) -> None:
        hub, sub = self.hub, self.sub
        for channel in self.channels:
            hub.subscribe(sub, channel)
        for pattern in self.patterns:
            hub.psubscribe(sub, pattern)
        self.state = "live"
