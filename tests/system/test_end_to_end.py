"""The vertical slice end to end: MariaDB commit -> binlog -> tidings -> Redis clients.

Real peers only: a private MariaDB with binlog on, the daemon in-process, and
subscribers that are real Redis clients (redis-py asyncio and sync, redis-cli).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from tests.source import test_binlog_golden as golden
from tests.system.daemons import (
    assert_silent,
    receive,
    start_daemon,
    stop_daemon,
    subscriber,
    wait_for,
)
from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB
from tidings.source.replica import ReplicaError

_dbs = itertools.count(1)


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    """A fresh database name per test, so tests sharing the server do not see each other."""
    name = f"e2e{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {name}")
    return name


@pytest.fixture
async def daemon(mariadb: PrivateMariaDB, replica_server_id: int) -> AsyncIterator[Daemon]:
    d = await start_daemon(mariadb, replica_server_id)
    yield d
    await stop_daemon(d)


async def test_every_column_type_insert_update_delete(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    # the decoder's golden table (every column type) again, now through the daemon and RESP
    mariadb.sql(golden.ALL_TYPES, schema)
    sub = await subscriber(daemon, f"{schema}.all_types")
    prelude = "SET NAMES utf8mb4; SET time_zone = '+00:00'; SET sql_mode = '';"
    mariadb.sql(f"{prelude} INSERT INTO all_types VALUES {golden.ROW_1}", schema)
    mariadb.sql("UPDATE all_types SET vc='changed', bi=bi+1, js=NULL WHERE id=1", schema)
    mariadb.sql("DELETE FROM all_types WHERE id=1", schema)
    insert, update, delete = await receive(sub, 3)

    assert insert["type"] == "insert"
    assert insert["channel"] == f"{schema}.all_types"
    assert (insert["database"], insert["table"]) == (schema, "all_types")
    assert insert["data"] == golden.EXPECTED_1
    assert "old" not in insert
    assert isinstance(insert["ts"], int) and insert["ts"] > 1_700_000_000
    assert isinstance(insert["xid"], int)
    assert isinstance(insert["gtid"], str) and insert["gtid"].count("-") == 2

    after = {**golden.EXPECTED_1, "vc": "changed", "bi": -9223372036854775807, "js": None}
    assert update["type"] == "update"
    assert update["data"] == after
    assert update["old"] == {
        "vc": golden.EXPECTED_1["vc"],
        "bi": -9223372036854775808,
        "js": golden.EXPECTED_1["js"],
    }

    assert delete["type"] == "delete"
    assert delete["data"] == after
    assert "old" not in delete
    assert insert["id"] < update["id"] < delete["id"]


async def test_transactions_arrive_whole_in_commit_order_and_rollbacks_never(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    mariadb.sql(f"CREATE TABLE {schema}.a (id INT PRIMARY KEY, v INT)")
    mariadb.sql(f"CREATE TABLE {schema}.b (id INT PRIMARY KEY, v INT)")
    sub = await subscriber(daemon, f"{schema}.*")
    mariadb.sql(
        f"BEGIN; INSERT INTO {schema}.a VALUES (1,1),(2,2),(3,3);"
        f" INSERT INTO {schema}.b VALUES (1,10); UPDATE {schema}.a SET v=v*10; COMMIT;"
        f" BEGIN; INSERT INTO {schema}.a VALUES (99,99); ROLLBACK;"
        f" INSERT INTO {schema}.b VALUES (2,20);"
    )
    events = await receive(sub, 8)
    await assert_silent(sub)
    summary = [(e["table"], e["type"], e["data"]["id"], e["data"]["v"]) for e in events]
    assert summary == [
        ("a", "insert", 1, 1), ("a", "insert", 2, 2), ("a", "insert", 3, 3),
        ("b", "insert", 1, 10),
        ("a", "update", 1, 10), ("a", "update", 2, 20), ("a", "update", 3, 30),
        ("b", "insert", 2, 20),
    ]  # fmt: skip
    first_txn = events[:7]
    assert len({(e["gtid"], e["xid"]) for e in first_txn}) == 1
    assert events[7]["gtid"] != events[0]["gtid"]
    ids = [e["id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + 8))  # contiguous: nothing interleaved


async def test_alter_table_mid_stream_keeps_column_names(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    mariadb.sql(f"CREATE TABLE {schema}.t (id INT PRIMARY KEY, a INT, b VARCHAR(10))")
    sub = await subscriber(daemon, f"{schema}.t")
    mariadb.sql(
        f"INSERT INTO {schema}.t VALUES (1, 10, 'x');"
        f"ALTER TABLE {schema}.t ADD COLUMN c INT DEFAULT 7 AFTER id;"
        f"INSERT INTO {schema}.t (id, a, b) VALUES (2, 20, 'y');"
        f"ALTER TABLE {schema}.t DROP COLUMN a;"
        f"INSERT INTO {schema}.t VALUES (3, 8, 'z');"
        f"ALTER TABLE {schema}.t RENAME COLUMN b TO label;"
        f"UPDATE {schema}.t SET label='zz' WHERE id=3;"
    )
    events = await receive(sub, 7)
    # each schema change arrives as a ddl event on the table's channel, between the rows
    assert [e["type"] for e in events] == [
        "insert", "ddl", "insert", "ddl", "insert", "ddl", "update",
    ]  # fmt: skip
    assert all(e["table"] == "t" and e["database"] == schema for e in events)
    assert "ADD COLUMN c" in events[1]["sql"] and "RENAME COLUMN" in events[5]["sql"]
    rows = [e for e in events if e["type"] != "ddl"]
    assert [e["data"] for e in rows] == [
        {"id": 1, "a": 10, "b": "x"},
        {"id": 2, "c": 7, "a": 20, "b": "y"},
        {"id": 3, "c": 8, "b": "z"},
        {"id": 3, "c": 8, "label": "zz"},
    ]
    assert rows[3]["old"] == {"label": "z"}


async def test_sync_redis_py_and_redis_cli_subscribe(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    mariadb.sql(f"CREATE TABLE {schema}.orders (id INT PRIMARY KEY, total DECIMAL(6,2))")
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is needed (scripts/bootstrap installs redis-tools)"
    proc = subprocess.Popen(
        [cli, "-h", host, "-p", str(port), "SUBSCRIBE", f"{schema}.orders"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # the daemon shares this thread's event loop: blocking clients run in threads
    sync_client = redis.Redis(host=host, port=port)
    sync_sub = sync_client.pubsub()
    await asyncio.to_thread(sync_sub.subscribe, f"{schema}.orders")
    confirmation = await asyncio.to_thread(sync_sub.get_message, timeout=5)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    try:
        assert proc.stdout is not None
        # redis-cli prints "subscribe", the channel and the count once subscribed
        lines = [await asyncio.to_thread(proc.stdout.readline) for _ in range(3)]
        assert [line.strip() for line in lines] == ["subscribe", f"{schema}.orders", "1"]
        mariadb.sql(f"INSERT INTO {schema}.orders VALUES (1, 9.90)")
        # the CREATE TABLE's ddl event may come first if the daemon read it after the
        # subscriptions (a loaded machine): both clients get it, then the row
        event: dict[str, object] = {"type": "ddl"}
        while event["type"] == "ddl":
            lines = [await asyncio.to_thread(proc.stdout.readline) for _ in range(3)]
            assert [line.strip() for line in lines[:2]] == ["message", f"{schema}.orders"]
            event = json.loads(lines[2])
        assert event["data"] == {"id": 1, "total": "9.90"}
        got: dict[str, object] = {"type": "ddl"}
        while got["type"] == "ddl":
            message = await asyncio.to_thread(sync_sub.get_message, timeout=10)
            while message is not None and message["type"] != "message":
                message = await asyncio.to_thread(sync_sub.get_message, timeout=10)
            assert message is not None
            got = json.loads(message["data"])
        assert got == event  # same bytes to every client
    finally:
        proc.terminate()
        proc.wait()
        sync_sub.close()
        sync_client.close()


async def test_mariadb_restart_and_crash_mid_stream_lose_and_repeat_nothing(
    own_mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = own_mariadb
    db.sql("CREATE DATABASE r; CREATE TABLE r.t (k INT PRIMARY KEY, v INT NOT NULL)")
    daemon = await start_daemon(db, replica_server_id, heartbeat=0.5)
    try:
        sub = await subscriber(daemon, "r.t")

        def write(start: int, stop: int) -> None:
            db.sql("".join(f"INSERT INTO r.t VALUES ({v},{v});" for v in range(start, stop)))

        write(0, 50)
        await asyncio.to_thread(db.stop)  # clean shutdown
        await asyncio.to_thread(db.start)
        write(50, 100)  # committed while tidings is still reconnecting
        await wait_for(
            lambda: daemon.replica is not None and daemon.replica.connected,
            what="reconnect after restart",
        )
        write(100, 150)
        await asyncio.to_thread(db.kill)  # crash
        await asyncio.to_thread(db.start)
        write(150, 200)
        events = await receive(sub, 200, timeout=60)
        await assert_silent(sub, 1.0)
        assert [e["data"]["v"] for e in events] == list(range(200))
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
    finally:
        await stop_daemon(daemon)


async def test_server_without_full_row_metadata_is_refused_unless_told(
    tmp_path: Path, replica_server_id: int
) -> None:
    db = PrivateMariaDB(tmp_path / "minimal", binlog_row_metadata="MINIMAL")
    await asyncio.to_thread(db.start)
    try:
        db.sql("CREATE DATABASE m; CREATE TABLE m.t (id INT PRIMARY KEY, label VARCHAR(9))")
        settings = Settings(
            mysql=db.url(), resp="127.0.0.1:0", http="", server_id=replica_server_id
        )
        daemon = Daemon(settings)
        with pytest.raises(ReplicaError, match=r"binlog_row_metadata=MINIMAL.*--names-from-schema"):
            await asyncio.wait_for(daemon.run(), 20)

        daemon = await start_daemon(db, replica_server_id, names_from_schema=True)
        try:
            sub = await subscriber(daemon, "m.t")
            db.sql("INSERT INTO m.t VALUES (1, 'named')")
            (event,) = await receive(sub, 1)
            assert event["data"] == {"id": 1, "label": "named"}
        finally:
            await stop_daemon(daemon)
    finally:
        await asyncio.to_thread(db.stop)
