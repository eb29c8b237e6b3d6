"""Resumes older than memory history, served from the binlog, on a real MariaDB.

The daemon runs in-process with `--state-dir`, a history of 1,000 events and a
mark every 500; a redis-py subscriber away during 20,000 writes comes back with
TIDINGS.SUBSCRIBE and its last id.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tests.system.daemons import bulk_writes, receive, start_daemon, stop_daemon, wait_for
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count(1)
ROWS = 20_000
PER_TXN = 100


async def resume(daemon: Daemon, since: int, channel: str) -> tuple[aioredis.Redis, Any]:
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    client = aioredis.Redis(host=host, port=port)
    pubsub = client.pubsub()
    await pubsub.execute_command("TIDINGS.SUBSCRIBE", since, channel)
    confirmation = await pubsub.get_message(timeout=10)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return client, pubsub


async def test_a_resume_older_than_history_is_served_from_the_binlog_until_purged(
    own_mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    mariadb = own_mariadb  # its binlog gets purged
    schema = f"reread{next(_dbs)}"
    mariadb.sql(
        f"CREATE DATABASE {schema}; CREATE TABLE {schema}.t (n INT PRIMARY KEY, v VARCHAR(20));"
        f"CREATE TABLE {schema}.done (x INT)"
    )
    channel = f"{schema}.t"
    daemon = await start_daemon(
        mariadb,
        replica_server_id,
        state_dir=str(tmp_path / "state"),
        history_events=1000,
        mark_every=500,
        checkpoint_interval=0.05,
    )
    hub = daemon.hub
    try:
        rereader = daemon.rereader
        assert rereader is not None and hub.reread is rereader
        client, pubsub = await resume(daemon, hub.next_id - 1, channel)
        await asyncio.to_thread(
            mariadb.sql, bulk_writes(schema, 3 * PER_TXN, per_txn=PER_TXN), schema
        )
        before = await receive(pubsub, timeout=120, count=2 * PER_TXN + 17)
        last_id = before[-1]["id"]
        await pubsub.aclose()
        await client.aclose()

        rest = bulk_writes(schema, ROWS - 3 * PER_TXN, first=3 * PER_TXN + 1, per_txn=PER_TXN)
        await asyncio.to_thread(mariadb.sql, rest + f"INSERT INTO {schema}.done VALUES (1)", schema)
        await wait_for(lambda: f"{schema}.done" in hub.history.channels, what="writes published")
        oldest_in_memory = hub.history.first_after(channel, 0)
        assert oldest_in_memory is not None and oldest_in_memory > last_id + ROWS // 2

        # back with the last id: the old ones from the binlog, then memory, then live
        client, pubsub = await resume(daemon, last_id, channel)
        after = await receive(pubsub, timeout=120, count=ROWS - len(before))
        await asyncio.to_thread(
            mariadb.sql, bulk_writes(schema, 3, first=ROWS + 1, per_txn=PER_TXN), schema
        )
        live = await receive(pubsub, timeout=120, count=3)
        assert await pubsub.get_message(timeout=0.3) is None  # nothing more

        events = before + after + live
        assert [e["data"]["n"] for e in events] == list(range(1, ROWS + 4))  # once, in order
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids)) and after[0]["id"] == last_id + 1
        assert all(e["type"] == "insert" and e["channel"] == channel for e in events)
        assert rereader.started == 1
        # the re-read's connection is closed once it handed over to memory
        await wait_for(lambda: not rereader.feeds, what="the re-read closed")
        await pubsub.aclose()

        # the binlog is purged past its id: a gap, never a silent skip
        mark = rereader.mark_for(last_id)
        assert mark is not None
        mariadb.sql("FLUSH BINARY LOGS")
        newest = mariadb.sql("SHOW BINARY LOGS").split()[-2]
        deadline = asyncio.get_running_loop().time() + 20
        while mark.position.file in mariadb.sql(
            f"PURGE BINARY LOGS TO '{newest}'; SHOW BINARY LOGS"
        ):
            assert asyncio.get_running_loop().time() < deadline, "purge"
            await asyncio.sleep(0.05)  # a dump thread may still hold the file
        pubsub = (await resume(daemon, last_id, channel))[1]
        gap, *kept = await receive(pubsub, timeout=120, count=1 + 5)
        assert gap["type"] == "gap" and gap["since"] == last_id and gap["epoch"] == hub.epoch
        assert gap["oldest"] == kept[0]["id"] == hub.history.first_after(channel, 0)
        assert [e["id"] for e in kept] == list(range(gap["oldest"], gap["oldest"] + 5))
        assert rereader.started == 2
        await pubsub.aclose()
        await client.aclose()
    finally:
        await stop_daemon(daemon)
