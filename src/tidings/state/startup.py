"""Where to start after a (re)start: the epoch, the first id, the binlog position.

`read_server_facts()` asks the server who it is, which binlog files it still
has and where its binlog ends; `plan_start()` is pure and decides, from those
facts, the checkpoint and the mark index:

- no checkpoint, or `--new-epoch`: a new epoch at the end of the binlog (or
  `--start`), first id `time_ns() // 1000`;
- a checkpoint of another server, or one whose binlog file was purged: a
  `StateError` naming the fix (the operator chooses to skip ahead);
- otherwise resume: read from the newest mark about `history` events before
  the checkpoint (refilling history, events not delivered live) or from the
  checkpoint itself, with the ids the checkpoint and marks say.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.source import mysqlwire as wire
from tidings.source.changes import Position
from tidings.source.connection import MySQLConnection
from tidings.state.checkpoint import Checkpoint, ServerIdentity, StateError
from tidings.state.index import Mark, choose_warmup


@dataclass(frozen=True, slots=True)
class ServerFacts:
    identity: ServerIdentity
    #: binlog files the server still has (SHOW BINARY LOGS); None when it would not say
    files: frozenset[str] | None
    #: the current end of its binlog
    end: Position


async def read_server_facts(conn: MySQLConnection) -> ServerFacts:
    rows = await conn.query("SELECT @@server_id, @@hostname")
    server_id, hostname = rows[0]
    uuid: str | None = None
    if not conn.is_mariadb:  # MariaDB has no server_uuid
        try:
            uuid = await conn.variable("server_uuid")
        except wire.ServerError:
            uuid = None
    files: frozenset[str] | None
    try:
        files = frozenset(str(row[0]) for row in await conn.query("SHOW BINARY LOGS"))
    except wire.ServerError:  # no BINLOG MONITOR / REPLICATION CLIENT: the server will tell
        files = None
    identity = ServerIdentity(int(server_id or 0), uuid or None, hostname)
    return ServerFacts(identity, files, await conn.current_position())


@dataclass(frozen=True, slots=True)
class StartPlan:
    epoch: int
    #: where the replica starts reading
    read_from: Position
    #: the id of the first event read from there
    first_id: int
    #: events with smaller ids refill history only (they were delivered before the restart)
    live_from: int
    #: a new epoch starts: its checkpoint and first mark must be written before reading
    new_epoch: bool
    #: what happens, for the log
    summary: str


def plan_start(
    checkpoint: Checkpoint | None,
    facts: ServerFacts,
    marks: Sequence[Mark],
    *,
    state_dir: Path,
    new_epoch: bool,
    start: Position | None,
    history: int,
    now_us: int,
    events: dict[str, Any] | None = None,
) -> StartPlan:
    if checkpoint is None or new_epoch:
        # above every id an earlier epoch can have reached, even if the clock went back
        epoch = max(now_us, checkpoint.next_id + 1 if checkpoint else 0)
        where = start or facts.end
        if checkpoint is None:
            why = f"no checkpoint in {state_dir}"
        else:
            last = checkpoint.next_id - 1
            why = f"--new-epoch; the previous epoch {checkpoint.epoch} ended at id {last}"
        return StartPlan(
            epoch=epoch,
            read_from=where,
            first_id=epoch,
            live_from=epoch,
            new_epoch=True,
            summary=f"new epoch {epoch} ({why}), reading from {where}",
        )
    mismatch = checkpoint.server.mismatch(facts.identity)
    if mismatch is not None:
        raise StateError(
            f"the checkpoint in {state_dir} belongs to another server ({checkpoint.server}): "
            f"this one has {mismatch}. Point --mysql at the server the checkpoint came from, "
            "use another --state-dir for this server, or start over on this server with "
            "--new-epoch (resuming clients get a gap and reload their state)"
        )
    if checkpoint.events is not None and events is not None and checkpoint.events != events:
        changed = ", ".join(
            f"{key} {checkpoint.events.get(key)!r} -> {events.get(key)!r}"
            for key in sorted(checkpoint.events.keys() | events.keys())
            if checkpoint.events.get(key) != events.get(key)
        )
        raise StateError(
            f"the options that decide which events exist changed since the checkpoint in "
            f"{state_dir} ({changed}): re-read events would get other ids than before. "
            "Restore the previous options, or start over with --new-epoch (resuming "
            "clients get a gap and reload their state)"
        )
    _check_not_purged(checkpoint, facts.files, state_dir)
    mark = choose_warmup(marks, checkpoint.next_id, history, facts.files or ())
    if mark is None:
        return StartPlan(
            epoch=checkpoint.epoch,
            read_from=checkpoint.position,
            first_id=checkpoint.next_id,
            live_from=checkpoint.next_id,
            new_epoch=False,
            summary=f"resuming epoch {checkpoint.epoch} at id {checkpoint.next_id}, "
            f"{checkpoint.position}",
        )
    return StartPlan(
        epoch=checkpoint.epoch,
        read_from=mark.position,
        first_id=mark.id,
        live_from=checkpoint.next_id,
        new_epoch=False,
        summary=f"resuming epoch {checkpoint.epoch} at id {checkpoint.next_id}, "
        f"{checkpoint.position}, after refilling history with ids {mark.id}.."
        f"{checkpoint.next_id - 1} from {mark.position}",
    )


def _check_not_purged(
    checkpoint: Checkpoint, files: Collection[str] | None, state_dir: Path
) -> None:
    file = checkpoint.position.file
    if files is None or not file or file in files:
        return
    oldest = min(files) if files else "none"
    raise StateError(
        f"the checkpoint in {state_dir} resumes at {checkpoint.position}, but the server no "
        f"longer has binlog file {file} (its oldest is {oldest}): the changes in between are "
        "lost to tidings. Fix: keep binlogs longer than tidings can be down "
        "(binlog_expire_logs_seconds / expire_logs_days), and restart once with --new-epoch "
        "to follow from the current end of the binlog (resuming clients get a gap and reload "
        "their state)"
    )
