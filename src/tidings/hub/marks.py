"""Position marks: which stream id comes next at which binlog position.

After each committed transaction the publisher calls `Hub.mark(position)`; the
hub records (position, next id) here. That answers "which id does the stream
have at binlog position P?" (`id_at`), which a consistent snapshot needs to
hand over to the stream exactly at P, and lets a caller wait until the stream
has passed P (`wait`).

Positions are ordered by binlog coordinate: file name (its numeric suffix as a
number, so `.999999` < `.1000000`) then offset. A position with no file (a
bare GTID state) is compared by GTID instead: per MariaDB domain (or MySQL
server uuid) the highest sequence number, a partial order that is exact for
the gap-free GTID histories a replica stream produces.

Consecutive marks with the same next id (transactions that published nothing)
are stored once: any position between two stored marks maps to the earlier
one's id, which is the same.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import re
from array import array

from tidings.source.changes import Position

__all__ = ["Marks", "gtid_covers", "position_key"]

_SUFFIX = re.compile(r"^(.*?)(\d*)$")

#: a file coordinate as a sortable key: (file prefix, numeric suffix, offset)
Key = tuple[str, int, int]


def position_key(position: Position) -> Key | None:
    """The sort key of a position's file coordinate; None for a GTID-only position."""
    if not position.file:
        return None
    match = _SUFFIX.match(position.file)
    assert match is not None  # the pattern matches any string
    return match[1], int(match[2] or -1), position.pos


@functools.lru_cache(maxsize=64)
def _file_key(file: str) -> tuple[str, int]:
    """A file name's part of `position_key` (a regex match: cached, marks share files)."""
    match = _SUFFIX.match(file)
    assert match is not None  # the pattern matches any string
    return match[1], int(match[2] or -1)


def _gtid_state(text: str) -> dict[str, int]:
    """'0-1-5,1-2-9' (MariaDB) or 'uuid:1-5:7-9,...' (MySQL) -> {domain or uuid: last seq}."""
    state: dict[str, int] = {}
    for item in text.replace("\n", "").split(","):
        item = item.strip()
        if not item:
            continue
        if ":" in item:  # MySQL: uuid:interval[:interval...]
            uuid, _, intervals = item.partition(":")
            last = intervals.rsplit(":", 1)[-1].rsplit("-", 1)[-1]
            state[uuid.lower()] = int(last)
        else:  # MariaDB: domain-server-seq
            domain, _, rest = item.partition("-")
            state[domain] = int(rest.rpartition("-")[2])
    return state


def gtid_covers(later: str, earlier: str) -> bool:
    """Whether GTID state `later` includes everything in `earlier`."""
    have = _gtid_state(later)
    return all(have.get(k, -1) >= seq for k, seq in _gtid_state(earlier).items())


class Marks:
    """A bounded, ordered record of (position, next id) at transaction boundaries.

    Stored column-wise, about 90 bytes a mark (a `Position` and a key tuple each took
    320): the ids and offsets in arrays, the file names as one shared string per file,
    the GTID states as given. At 22 transactions/s the 65,536 marks kept at most once
    took 20 MiB and 50 minutes to fill: in a soak that looked like a leak.

    Between `limit` and twice as many are kept. A snapshot asks for the id at its
    position as soon as the stream passes it (a GTID-only position: within
    `GTID_RECHECK`, 0.25 s), so 8,192 covers that even at 32,000 transactions/s, and
    fills within 12 minutes at 22 transactions/s (about 0.7 MiB)."""

    __slots__ = (
        "_files",
        "_gtids",
        "_ids",
        "_keyed",
        "_limit",
        "_offsets",
        "_waiters",
        "reached",
        "reached_id",
    )

    def __init__(self, limit: int = 8_192) -> None:
        self._limit = max(16, limit)
        self._ids = array("q")
        self._offsets = array("q")
        self._files: list[str] = []  # one str object for a run of marks in the same file
        self._gtids: list[str | None] = []
        self._keyed = True  # every mark has a file coordinate: bisect by it
        #: the last position marked, and the next id there
        self.reached: Position | None = None
        self.reached_id = 0
        self._waiters: list[tuple[Position, asyncio.Future[int | None]]] = []

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, position: Position, next_id: int) -> None:
        self.reached = position
        self.reached_id = next_id
        ids = self._ids
        if not ids or ids[-1] != next_id:
            file = position.file
            files = self._files
            if not file:
                self._keyed = False
            elif files and files[-1] == file:
                file = files[-1]  # shared: 8 bytes a mark, not a string each
            files.append(file)
            self._offsets.append(position.pos)
            self._gtids.append(position.gtid)
            ids.append(next_id)
            if len(ids) > 2 * self._limit:  # trim in halves: amortised O(1)
                limit = self._limit
                del ids[:limit], self._offsets[:limit], files[:limit], self._gtids[:limit]
        if self._waiters:
            self._wake()

    def _position(self, index: int) -> Position:
        return Position(self._files[index], self._offsets[index], self._gtids[index])

    def _key(self, index: int) -> Key:
        prefix, suffix = _file_key(self._files[index])
        return prefix, suffix, self._offsets[index]

    def export(self) -> list[tuple[Position, int]]:
        """The (position, next id) pairs that `add`, in order, rebuilds these marks from."""
        pairs = [(self._position(i), self._ids[i]) for i in range(len(self._ids))]
        if self.reached is not None and (not pairs or pairs[-1][0] != self.reached):
            pairs.append((self.reached, self.reached_id))
        return pairs

    def passed(self, position: Position) -> bool:
        """Whether the stream has reached `position` (or gone past it)."""
        return self.reached is not None and _not_after(position, self.reached)

    def id_at(self, position: Position) -> int | None:
        """The next id at `position`, if the stream has reached it and it is still recorded."""
        if not self._ids or not self.passed(position):
            return None
        key = position_key(position)
        if key is not None and self._keyed:
            index = bisect.bisect_right(range(len(self._ids)), key, key=self._key) - 1
            return self._ids[index] if index >= 0 else None
        # a GTID-only position (or marks without files): the last mark it covers
        for index in range(len(self._ids) - 1, -1, -1):
            if _not_after(self._position(index), position):
                return self._ids[index]
        return None

    async def wait(self, position: Position) -> int | None:
        """Wait until the stream has reached `position`; return `id_at(position)`."""
        if self.passed(position):
            return self.id_at(position)
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        entry = (position, future)
        self._waiters.append(entry)
        try:
            return await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake(self) -> None:
        waiting = []
        for position, future in self._waiters:
            if future.done():
                continue
            if self.passed(position):
                future.set_result(self.id_at(position))
            else:
                waiting.append((position, future))
        self._waiters = waiting


def _not_after(a: Position, b: Position) -> bool:
    """a <= b in stream order: by file coordinate when both have one, else by GTID."""
    ka, kb = position_key(a), position_key(b)
    if ka is not None and kb is not None:
        return ka <= kb
    if a.gtid is not None and b.gtid is not None:
        return gtid_covers(b.gtid, a.gtid)
    raise ValueError(f"cannot order positions {a} and {b}: no common coordinate")
