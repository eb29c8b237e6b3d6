"""The checkpoint: (epoch, next id, binlog position) at a transaction boundary, on disk.

One small JSON file, replaced atomically: written to a temporary file in the
same directory, fsync'd, renamed over the old one, then the directory is
fsync'd so the rename itself survives a power cut. A crash at any point leaves
either the old checkpoint or the new one, never a mix. `save()` blocks on
fsync, so the daemon runs it in a worker thread (see `writer.py`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tidings.source.changes import Position

FORMAT = 1


class StateError(Exception):
    """A problem with the state directory or what it says; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Which database server a checkpoint's binlog position belongs to.

    MySQL has `@@server_uuid`; MariaDB does not, so there `@@server_id` is what
    tells servers apart. The hostname is kept for messages only: it changes
    with every container restart, which must not invalidate a checkpoint.
    """

    server_id: int
    server_uuid: str | None = None
    hostname: str | None = None

    def mismatch(self, other: ServerIdentity) -> str | None:
        """Why `other` is not the server this identity describes; None when it is."""
        if self.server_uuid and other.server_uuid:
            if self.server_uuid != other.server_uuid:
                return f"server_uuid {other.server_uuid} instead of {self.server_uuid}"
            return None
        if self.server_id != other.server_id:
            return f"server_id {other.server_id} instead of {self.server_id}"
        return None

    def __str__(self) -> str:
        name = self.server_uuid or f"server_id {self.server_id}"
        return f"{name} on {self.hostname}" if self.hostname else name

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "server_uuid": self.server_uuid,
            "hostname": self.hostname,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerIdentity:
        server_id = data["server_id"]
        uuid = data.get("server_uuid")
        host = data.get("hostname")
        if not isinstance(server_id, int) or not all(
            v is None or isinstance(v, str) for v in (uuid, host)
        ):
            raise ValueError(f"bad server identity {data!r}")
        return cls(server_id, uuid, host)


def position_to_dict(position: Position) -> dict[str, Any]:
    return {"file": position.file, "pos": position.pos, "gtid": position.gtid}


def position_from_dict(data: dict[str, Any]) -> Position:
    file, pos, gtid = data["file"], data["pos"], data.get("gtid")
    if not isinstance(file, str) or not isinstance(pos, int) or pos < 0:
        raise ValueError(f"bad binlog position {data!r}")
    if gtid is not None and not isinstance(gtid, str):
        raise ValueError(f"bad GTID {gtid!r}")
    return Position(file, pos, gtid)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Replaying the binlog from `position` gives the next event the id `next_id`."""

    #: first id of the epoch these ids belong to
    epoch: int
    next_id: int
    position: Position
    server: ServerIdentity
    #: when it was written (seconds since 1970), for operators
    time: float
    #: the options that decide which events exist (DDL events, the NOTIFY outbox): ids
    #: are only re-derived with the same ones. None in checkpoints that did not say
    events: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT,
                "epoch": self.epoch,
                "next_id": self.next_id,
                "position": position_to_dict(self.position),
                "server": self.server.to_dict(),
                "time": self.time,
                "events": self.events,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
        )

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint; ValueError (saying what is wrong) when it is not one."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r} (expected {FORMAT})")
        try:
            epoch, next_id, when = doc["epoch"], doc["next_id"], doc["time"]
            if not isinstance(epoch, int) or not isinstance(next_id, int) or next_id < epoch:
                raise ValueError(f"bad epoch/next_id {epoch!r}/{next_id!r}")
            if not isinstance(when, int | float):
                raise ValueError(f"bad time {when!r}")
            events = doc.get("events")
            if events is not None and not isinstance(events, dict):
                raise ValueError(f"bad events {events!r}")
            return cls(
                epoch=epoch,
                next_id=next_id,
                position=position_from_dict(doc["position"]),
                server=ServerIdentity.from_dict(doc["server"]),
                time=float(when),
                events=events,
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc}") from None
        except (TypeError, AttributeError) as exc:
            raise ValueError(str(exc)) from None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The checkpoint file `DIR/checkpoint.json`."""

    __slots__ = ("path",)

    NAME = "checkpoint.json"

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / self.NAME

    def load(self) -> Checkpoint | None:
        """The saved checkpoint; None when there is none; StateError when it is unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the checkpoint {self.path}: {exc.strerror}") from None
        try:
            return Checkpoint.from_json(data)
        except ValueError as exc:
            raise StateError(
                f"the checkpoint {self.path} is corrupt: {exc}. It is only ever replaced "
                "atomically, so something else wrote it (or the disk failed). Restore it from a "
                "backup, or delete it to start a new epoch from the end of the binlog "
                "(resuming clients then get a gap and reload their state)"
            ) from None

    def save(self, checkpoint: Checkpoint) -> None:
        """Write durably (blocks on fsync: call from a worker thread on the event loop)."""
        write_atomically(self.path, checkpoint.to_json())
