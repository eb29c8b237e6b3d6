"""The mark index: (first id, binlog position) pairs, one every few thousand events.

A checkpoint says where to resume; marks say where to start reading further
back, so that after a restart the daemon can refill its history (and serve ids
older than memory holds) by replaying the binlog from a mark with the ids it
had then. Ids are deterministic within an epoch, so a mark stays true for as
long as the server keeps the binlog file it points into: marks are never
rewritten, only pruned when their file is purged, and all of them are dropped
when a new epoch starts.

The file is JSON lines, appended without fsync: losing the last marks to a
power cut only means a shorter warm-up, and a torn last line is skipped.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from tidings.source.changes import Position
from tidings.state.checkpoint import (
    StateError,
    position_from_dict,
    position_to_dict,
    write_atomically,
)

log = logging.getLogger("tidings.state")


@dataclass(frozen=True, slots=True)
class Mark:
    """Reading the binlog from `position` gives the next event the id `id`."""

    id: int
    position: Position


class MarkIndex:
    """The marks of one epoch in `DIR/marks.jsonl`."""

    __slots__ = ("_out", "epoch", "marks", "path")

    NAME = "marks.jsonl"

    def __init__(self, directory: Path, epoch: int) -> None:
        self.path = Path(directory) / self.NAME
        self.epoch = epoch
        #: this epoch's marks, oldest first
        self.marks: list[Mark] = []
        self._out: IO[bytes] | None = None

    def load(self) -> list[Mark]:
        """Read this epoch's marks; lines of other epochs and torn lines are skipped."""
        marks: list[Mark] = []
        torn = False
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise StateError(f"cannot read the mark index {self.path}: {exc.strerror}") from None
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
                if doc["epoch"] != self.epoch:
                    continue
                mark = Mark(int(doc["id"]), position_from_dict(doc))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("%s line %d is not a mark (torn write?): skipped", self.path, number)
                torn = True
                continue
            if marks and mark.id <= marks[-1].id:
                continue  # ids only grow: anything else is a stale duplicate
            marks.append(mark)
        if torn or (data and not data.endswith(b"\n")):
            # rewrite it whole: an append after a torn line would be glued to it
            try:
                self.replace(marks)
            except OSError as exc:
                log.warning("cannot rewrite %s: %s", self.path, exc.strerror)
        self.marks = marks
        return marks

    def append(self, mark: Mark) -> None:
        """Add a mark (one short write to the page cache; no fsync, see above)."""
        if self.marks and mark.id <= self.marks[-1].id:
            return
        if self._out is None:
            self._out = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open)
        line = self._line(mark)
        end = self._out.seek(0, os.SEEK_END)
        if self._out.write(line) != len(line):  # a full disk takes part of a line
            # cut it off: the next append would be glued to it, and both lost
            self._out.truncate(end)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a short write)")
        self.marks.append(mark)

    def replace(self, marks: Iterable[Mark]) -> None:
        """Rewrite the file atomically with exactly `marks` (new epoch, pruning)."""
        self.close()
        self.marks = sorted(marks, key=lambda m: m.id)
        write_atomically(self.path, b"".join(self._line(m) for m in self.marks))

    def prune(self, available_files: Collection[str]) -> int:
        """Drop marks whose binlog file the server no longer has; return how many went."""
        keep = [m for m in self.marks if m.position.file in available_files]
        dropped = len(self.marks) - len(keep)
        if dropped:
            self.replace(keep)
        return dropped

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _line(self, mark: Mark) -> bytes:
        return (
            orjson.dumps({"epoch": self.epoch, "id": mark.id, **position_to_dict(mark.position)})
            + os.linesep.encode()
        )


def choose_warmup(
    marks: Sequence[Mark], next_id: int, history: int, available_files: Collection[str]
) -> Mark | None:
    """Where to start reading so that about `history` events precede `next_id`.

    The newest mark at least `history` events back; failing that (a young
    epoch, or the older files purged) the oldest mark still readable, which
    refills what it can. None when no mark before `next_id` is readable.
    """
    usable = [m for m in marks if m.id < next_id and m.position.file in available_files]
    if not usable or history <= 0:
        return None
    far_enough = [m for m in usable if m.id <= next_id - history]
    return far_enough[-1] if far_enough else usable[0]
