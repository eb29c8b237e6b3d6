"""Resume on a real MariaDB: a subscriber away during 50,000 writes gets them all back.

Real peers only: a private MariaDB with binlog on, the daemon in-process, and
redis-py (asyncio) subscribers using TIDINGS.SUBSCRIBE through `execute_command`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.system.daemons import bulk_writes, receive, start_daemon, stop_daemon, wait_for
from tidings.daemon import Daemon
from tidings.hub import Hub
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count(1)
ROWS = 50_000
PER_TXN = 500


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"resume{next(_dbs)}"
    mariadb.sql(
        f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v VARCHAR(20));"
        f"CREATE TABLE {name}.done (x INT)"
    )
    return name


async def connect(daemon: Daemon) -> tuple[aioredis.Redis, Any]:
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    client = aioredis.Redis(host=host, port=port)
    return client, client.pubsub()


async def test_a_subscriber_away_during_50k_writes_resumes_with_every_event_once_in_order(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str
) -> None:
    hub = Hub()  # the default history keeps a 50,000-event burst on one table
    daemon = await start_daemon(mariadb, replica_server_id, hub)
    channel = f"{schema}.t"
    try:
        client, pubsub = await connect(daemon)
        await pubsub.subscribe(channel)
        # the first 5 transactions while subscribed; it leaves after reading 3 and a bit,
        # and the other 95 are written while it is away
        first = 5 * PER_TXN
        await asyncio.to_thread(mariadb.sql, bulk_writes(schema, first, per_txn=PER_TXN), schema)
        before = await receive(pubsub, timeout=120, count=3 * PER_TXN + 17)
        last_id = before[-1]["id"]
        await pubsub.aclose()
        await client.aclose()
        rest = bulk_writes(schema, ROWS - first, first=first + 1, per_txn=PER_TXN)
        await asyncio.to_thread(mariadb.sql, rest + f"INSERT INTO {schema}.done VALUES (1)", schema)
        await wait_for(
            lambda: f"{schema}.done" in hub.history.channels, what="all writes published"
        )

        # come back with the last id seen
        client, pubsub = await connect(daemon)
        await pubsub.execute_command("TIDINGS.SUBSCRIBE", last_id, channel)
        confirmation = await pubsub.get_message(timeout=10)
        assert confirmation is not None and confirmation["type"] == "subscribe"
        after = await receive(pubsub, timeout=120, count=ROWS - len(before))
        # then live, across the seam
        await asyncio.to_thread(
            mariadb.sql, bulk_writes(schema, 3, first=ROWS + 1, per_txn=PER_TXN), schema
        )
        live = await receive(pubsub, timeout=120, count=3)
        assert await pubsub.get_message(timeout=0.3) is None  # and nothing more

        events = before + after + live
        assert [e["data"]["n"] for e in events] == list(range(1, ROWS + 4))  # each once, in order
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids)) and after[0]["id"] > last_id
        assert all(e["type"] == "insert" and e["channel"] == channel for e in events)
        assert daemon.resp is not None and daemon.resp.slow_consumers_cut == 0
        await pubsub.aclose()
        await client.aclose()
    finally:
        await stop_daemon(daemon)


async def test_an_id_older_than_history_gets_a_gap_never_a_silent_skip(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str
) -> None:
    hub = Hub(history_channel_events=1000)
    daemon = await start_daemon(mariadb, replica_server_id, hub)
    channel = f"{schema}.t"
    try:
        client, pubsub = await connect(daemon)
        await pubsub.subscribe(channel)
        await asyncio.to_thread(
            mariadb.sql, bulk_writes(schema, 10 * PER_TXN, per_txn=PER_TXN), schema
        )
        seen = await receive(pubsub, timeout=120, count=10 * PER_TXN)
        await pubsub.aclose()
        first_id, last_id = seen[0]["id"], seen[-1]["id"]
        retained = last_id - 999

        # from the first id: 3,999 events after it are gone; one gap, then the 1,000 kept
        pubsub = client.pubsub()
        await pubsub.execute_command("TIDINGS.SUBSCRIBE", first_id, channel)
        gap, *rest = await receive(pubsub, timeout=120, count=1 + 1000)
        assert gap == {
            "type": "gap",
            "channel": channel,
            "since": first_id,
            "oldest": retained,
            "epoch": hub.epoch,
        }
        assert [e["id"] for e in rest] == list(range(retained, last_id + 1))
        assert [e["data"]["n"] for e in rest] == list(range(4001, 5001))
        await pubsub.aclose()

        # an id from before this daemon's stream (another epoch): a gap too
        pubsub = client.pubsub()
        await pubsub.execute_command("TIDINGS.SUBSCRIBE", 5, channel)
        gap, following = await receive(pubsub, timeout=120, count=2)
        assert gap["type"] == "gap" and gap["since"] == 5 and gap["oldest"] == retained
        assert following["id"] == retained
        await pubsub.aclose()

        # an id ahead of the stream is refused plainly
        with pytest.raises(aioredis.ResponseError, match="ahead of the stream"):
            await client.execute_command("TIDINGS.SUBSCRIBE", hub.next_id + 10, channel)
        await client.aclose()
    finally:
        await stop_daemon(daemon)
