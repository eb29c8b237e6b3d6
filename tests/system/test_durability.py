"""Durability end to end: ids that survive restarts, crashes (kill -9) and purged binlogs.

Real peers only: a private MariaDB, the daemon in-process (restarts) or as the
`tidings serve` command (SIGKILL, exit codes), redis-py subscribers.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path
from typing import Any

import orjson

from tests.system.test_end_to_end import receive, stop_daemon, subscriber, wait_for
from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.hub import Hub
from tidings.sandbox import PrivateMariaDB
from tidings.state import CheckpointStore, MarkIndex

_dbs = itertools.count(1)


class RecordingHub(Hub):
    """A hub that remembers every database event it publishes, live or history refill."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, bytes, bool]] = []

    def publish_record(self, channel: str, fields: dict[str, Any], *, live: bool = True) -> Any:
        event = super().publish_record(channel, fields, live=live)
        self.seen.append((event.id, event.body, live))
        return event


async def start_daemon(
    db: PrivateMariaDB, server_id: int, hub: Hub | None = None, **settings: Any
) -> Daemon:
    daemon = Daemon(
        Settings(mysql=db.url(), resp="127.0.0.1:0", server_id=server_id, **settings), hub
    )
    daemon.task = asyncio.ensure_future(daemon.run())  # type: ignore[attr-defined]
    await wait_for(
        lambda: (daemon.replica is not None and daemon.replica.connected) or daemon.task.done(),  # type: ignore[attr-defined]
        what="replica connected",
    )
    if daemon.task.done():  # type: ignore[attr-defined]
        daemon.task.result()  # type: ignore[attr-defined]
    return daemon


def bodies(events: list[dict[str, Any]]) -> dict[int, bytes]:
    return {e["id"]: orjson.dumps(e) for e in events}


async def test_restart_rederives_identical_ids_and_refills_history(
    mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    db = f"dur{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (k INT PRIMARY KEY, v INT)")
    state = tmp_path / "state"
    settings: dict[str, Any] = {
        "state_dir": str(state),
        "checkpoint_interval": 0.02,
        "mark_every": 7,
        "history_events": 10_000,
    }
    store = CheckpointStore(state)

    def write(start: int, stop: int) -> None:
        # single rows and three-row transactions, so marks fall between transactions
        sql = []
        for k in range(start, stop, 4):
            sql.append(f"INSERT INTO {db}.t VALUES ({k},{k});")
            rows = ",".join(f"({j},{j})" for j in range(k + 1, min(k + 4, stop)))
            if rows:
                sql.append(f"BEGIN; INSERT INTO {db}.t VALUES {rows}; COMMIT;")
        mariadb.sql("".join(sql))

    # -- first run: 40 rows, checkpointed; then 40 more ----------------------------------
    first = await start_daemon(mariadb, replica_server_id, **settings)
    try:
        sub = await subscriber(first, f"{db}.*")
        write(0, 40)
        batch1 = await receive(sub, 40)
        last1 = batch1[-1]["id"]

        def checkpointed(upto: int) -> bool:
            cp = store.load()
            return cp is not None and cp.next_id == upto + 1

        await wait_for(lambda: checkpointed(last1), what="checkpoint after batch 1")
        shutil.copy(store.path, tmp_path / "older.json")  # as a crash would leave it
        write(40, 80)
        batch2 = await receive(sub, 40)
        await sub.aclose()
    finally:
        await stop_daemon(first)
    ids = [e["id"] for e in batch1 + batch2]
    assert ids == list(range(ids[0], ids[0] + 80)), "ids grow by exactly one per event"
    final = store.load()
    assert final is not None and final.next_id == ids[-1] + 1, "final checkpoint on shutdown"
    assert final.epoch == first.hub.epoch <= ids[0]
    marks = MarkIndex(state, final.epoch).load()
    assert len(marks) >= 80 // 7 - 1 and marks[0].id == final.epoch

    # -- a "crash" right after batch 1's checkpoint: batch 2 comes again, same ids -------
    shutil.copy(tmp_path / "older.json", store.path)
    hub = RecordingHub()
    second = await start_daemon(mariadb, replica_server_id, hub=hub, **settings)
    try:
        sub = await subscriber(second, f"{db}.*")
        await wait_for(lambda: second.live.is_set(), what="history refilled")
        replayed = await receive(sub, 40)
        assert bodies(replayed) == bodies(batch2), "same row change, same id, same bytes"
        # the refill re-read batch 1 (from the epoch's first mark) without delivering it
        refill = [(i, b) for i, b, live in hub.seen if not live]
        assert refill == sorted(bodies(batch1).items())
        assert [i for i, _, live in hub.seen if live][:40] == [e["id"] for e in batch2]
        write(80, 90)  # and new rows continue the sequence
        batch3 = await receive(sub, 10)
        assert [e["id"] for e in batch3] == list(range(ids[-1] + 1, ids[-1] + 11))
        await sub.aclose()
    finally:
        await stop_daemon(second)

    # -- a clean restart: nothing is delivered twice, ids go on ----------------------------
    third = await start_daemon(mariadb, replica_server_id, **settings)
    try:
        sub = await subscriber(third, f"{db}.*")
        write(90, 91)
        (event,) = await receive(sub, 1)
        assert event["id"] == ids[-1] + 11 and event["data"]["k"] == 90
        await sub.aclose()
    finally:
        await stop_daemon(third)
