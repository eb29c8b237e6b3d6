"""The resilient replica against real MariaDB servers: resume, faults, fatal errors.

The key property: whatever happens to the server (clean stop, SIGKILL, a dead
link), the consumer sees every committed transaction exactly once, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.source.test_connection import FaultProxy, wait_until
from tidings.sandbox import PrivateMariaDB
from tidings.source import mysqlwire as wire
from tidings.source.binlog import TableInfo
from tidings.source.changes import Position, Transaction
from tidings.source.connection import MySQLConnection
from tidings.source.replica import Replica, ReplicaError, gtid_ahead_of_server
from tidings.source.url import MySQLURL

_names = itertools.count(1)


async def no_table_info(database: str, table: str) -> TableInfo | None:
    raise AssertionError(f"unexpected table info lookup for {database}.{table}")


class Consumer:
    """Runs `replica.transactions()` in a task and records what it yields."""

    def __init__(self, replica: Replica, table: str | None = None) -> None:
        self.replica = replica
        self.table = table
        self.txns: list[Transaction] = []
        self.ids: list[int] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for txn in self.replica.transactions():
            assert self.replica.position == txn.position  # recorded before the yield
            self.txns.append(txn)
            for change in txn.changes:
                if self.table is None or change.table == self.table:
                    self.ids.append(change.data["id"])

    async def wait_ids(self, count: int, timeout: float = 30.0) -> None:
        await wait_until(
            lambda: len(self.ids) >= count or self.task.done(), timeout, f"{count} rows"
        )
        if self.task.done():
            self.task.result()
            raise AssertionError("transactions() ended")

    async def stop(self) -> None:
        await self.replica.close()
        await asyncio.wait_for(self.task, 10)


def make_replica(url: MySQLURL | str, server_id: int, **kwargs: Any) -> Replica:
    if isinstance(url, str):
        url = MySQLURL.parse(url)
    kwargs.setdefault("start", None)
    kwargs.setdefault("table_info", no_table_info)
    kwargs.setdefault("heartbeat", 0.5)
    kwargs.setdefault("backoff_initial", 0.05)
    kwargs.setdefault("backoff_max", 0.5)
    return Replica(url, server_id=server_id, **kwargs)


@pytest.fixture
async def admin(mariadb: PrivateMariaDB) -> AsyncIterator[MySQLConnection]:
    conn = await MySQLConnection.connect(MySQLURL.parse(mariadb.url()))
    yield conn
    conn.close()


@pytest.fixture
async def table(admin: MySQLConnection) -> str:
    """A fresh `db.t (id INT PRIMARY KEY, v VARCHAR)` on the shared server."""
    db = f"rep{next(_names)}"
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.execute(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v VARCHAR(40))")
    return f"{db}.t"


# -- streaming and resuming --------------------------------------------------------------------
async def test_stream_from_current_end(
    mariadb: PrivateMariaDB, admin: MySQLConnection, table: str, replica_server_id: int
) -> None:
    await admin.execute(f"INSERT INTO {table} VALUES (0, 'before the start')")
    replica = make_replica(mariadb.url(), replica_server_id)
    consumer = Consumer(replica, "t")
    await wait_until(lambda: replica.connected, what="connected")
    start = replica.position
    assert start is not None and start.gtid
    for i in range(1, 6):
        await admin.execute(f"INSERT INTO {table} VALUES ({i}, 'row {i}')")
    await admin.execute(f"UPDATE {table} SET v = 'changed' WHERE id = 3")
    await consumer.wait_ids(6)
    await consumer.stop()
    assert consumer.ids == [1, 2, 3, 4, 5, 3]
    db, name = table.split(".")
    first = consumer.txns[0].changes[0]
    assert (first.type, first.database, first.table) == ("insert", db, name)
    assert first.data == {"id": 1, "v": "row 1"}
    update = consumer.txns[-1].changes[0]
    assert update.type == "update" and update.data["v"] == "changed"
    assert replica.position == consumer.txns[-1].position
    assert replica.position == await admin.current_position()
    assert replica.transactions_total == 6 and replica.events_total > 6 * 3
    assert replica.bytes_total > 0 and replica.last_commit_ts > 0
    assert not replica.connected


async def resume_and_collect(
    mariadb: PrivateMariaDB, start: Position, server_id: int, count: int
) -> list[int]:
    consumer = Consumer(make_replica(mariadb.url(), server_id, start=start), "t")
    await consumer.wait_ids(count)
    await consumer.stop()
    return consumer.ids


async def test_resume_from_gtid_and_from_file_pos(
    mariadb: PrivateMariaDB, admin: MySQLConnection, table: str, replica_server_id: int
) -> None:
    for i in range(1, 4):
        await admin.execute(f"INSERT INTO {table} VALUES ({i}, 'a')")
    middle = await admin.current_position()
    assert middle.gtid
    for i in range(4, 7):
        await admin.execute(f"INSERT INTO {table} VALUES ({i}, 'b')")
    # by GTID: the file name is not used
    by_gtid = Position("no-such-file.000001", 4, middle.gtid)
    assert await resume_and_collect(mariadb, by_gtid, replica_server_id, 3) == [4, 5, 6]
    # by file:pos
    by_pos = Position(middle.file, middle.pos)
    assert await resume_and_collect(mariadb, by_pos, replica_server_id, 3) == [4, 5, 6]


async def test_table_info_is_asked_and_used(
    mariadb: PrivateMariaDB, admin: MySQLConnection, table: str, replica_server_id: int
) -> None:
    asked: list[tuple[str, str]] = []

    async def lookup(database: str, name: str) -> TableInfo | None:
        asked.append((database, name))
        await asyncio.sleep(0)  # a real lookup awaits another connection
        return TableInfo(columns=("id", "label"), json_columns=frozenset())

    replica = make_replica(
        mariadb.url(), replica_server_id, table_info=lookup, names_from_binlog=False
    )
    consumer = Consumer(replica, "t")
    await wait_until(lambda: replica.connected, what="connected")
    await admin.execute(f"INSERT INTO {table} VALUES (1, 'x'), (2, 'y')")
    await consumer.wait_ids(2)
    await consumer.stop()
    assert asked == [tuple(table.split("."))]
    assert consumer.txns[0].changes[1].data == {"id": 2, "label": "y"}


# -- faults ------------------------------------------------------------------------------------
class Writer:
    """Inserts ids 1, 2, 3... one transaction each, riding out server outages."""

    def __init__(self, url: MySQLURL, table: str) -> None:
        self.url = url
        self.table = table
        self.attempted = 0
        self.failures = 0
        self._stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        conn: MySQLConnection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await MySQLConnection.connect(self.url, timeout=2)
                self.attempted += 1
                await conn.execute(f"INSERT INTO {self.table} VALUES ({self.attempted}, 'w')")
            except (OSError, wire.MySQLError):
                # in doubt whether it committed: the table tells at the end
                self.failures += 1
                if conn is not None:
                    conn.close()
                    conn = None
                await asyncio.sleep(0.05)  # pacing while the server is down
            await asyncio.sleep(0.002)  # a steady trickle, not a flood
        if conn is not None:
            conn.close()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.mark.parametrize("fault", ["stop", "kill"])
async def test_server_restart_mid_stream_loses_and_repeats_nothing(
    own_mariadb: PrivateMariaDB,
    replica_server_id: int,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.source.replica")
    db = own_mariadb
    db.sql("CREATE DATABASE f; CREATE TABLE f.t (id INT PRIMARY KEY, v VARCHAR(40))")
    url = MySQLURL.parse(db.url())
    replica = make_replica(url, replica_server_id)
    consumer = Consumer(replica, "t")
    await wait_until(lambda: replica.connected, what="connected")
    writer = Writer(url, "f.t")
    try:
        await consumer.wait_ids(100)
        # the fault lands while rows are being written and streamed
        await asyncio.to_thread(db.kill if fault == "kill" else db.stop)
        await wait_until(lambda: not replica.connected, what="replica notices")
        await wait_until(lambda: writer.failures > 0, what="writer notices")
        await asyncio.to_thread(db.start)
        seen = len(consumer.ids)
        await consumer.wait_ids(seen + 100)
    finally:
        await writer.stop()
    admin = await MySQLConnection.connect(url)
    try:
        committed = [int(r[0] or 0) for r in await admin.query("SELECT id FROM f.t ORDER BY id")]
    finally:
        admin.close()
    await consumer.wait_ids(len(committed))
    await consumer.stop()
    assert consumer.ids == committed  # every committed row, once, in commit order
    assert len(committed) >= 200
    assert replica.reconnects == 1
    lost = [r for r in caplog.records if "lost the binlog stream" in r.getMessage()]
    assert len(lost) == 1  # logged once for the outage, not once per retry
    assert any("reconnected" in r.getMessage() for r in caplog.records)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == lost


async def test_dead_link_is_detected_and_resumed(
    mariadb: PrivateMariaDB, admin: MySQLConnection, table: str, replica_server_id: int
) -> None:
    proxy = await FaultProxy("127.0.0.1", mariadb.port).start()
    try:
        replica = make_replica(
            MySQLURL(port=proxy.port), replica_server_id, heartbeat=0.1, backoff_initial=0.3
        )
        consumer = Consumer(replica, "t")
        await wait_until(lambda: replica.connected, what="connected")
        await admin.execute(f"INSERT INTO {table} VALUES (1, 'before')")
        await consumer.wait_ids(1)
        proxy.frozen = True  # silence, no FIN, no RST: only the heartbeat timeout can tell
        await admin.execute(f"INSERT INTO {table} VALUES (2, 'during')")
        await wait_until(lambda: replica.reconnects == 1, timeout=5, what="dead link detected")
        assert "presumed dead" in (replica.last_error or "")
        proxy.frozen = False
        proxy.cut()  # drop the frozen connection's sockets too
        await admin.execute(f"INSERT INTO {table} VALUES (3, 'after')")
        await consumer.wait_ids(3)
        await consumer.stop()
        assert consumer.ids == [1, 2, 3]
    finally:
        await proxy.close()


async def test_close_while_the_server_is_down(tmp_path: Path, replica_server_id: int) -> None:
    db = PrivateMariaDB(tmp_path / "never-started")  # a port nobody listens on
    replica = make_replica(db.url(), replica_server_id, backoff_initial=5, backoff_max=5)
    consumer = Consumer(replica)
    await wait_until(lambda: replica.last_error is not None, what="a failed attempt")
    assert "refused" in (replica.last_error or "")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await consumer.stop()  # wakes the 5 s backoff at once
    assert loop.time() - started < 2


# -- errors retrying cannot fix ----------------------------------------------------------------
async def expect_fatal(replica: Replica, timeout: float = 15.0) -> str:
    consumer = Consumer(replica)
    with pytest.raises(ReplicaError) as info:
        await asyncio.wait_for(consumer.task, timeout)
    return str(info.value)


async def test_wrong_password_is_fatal(
    mariadb: PrivateMariaDB, admin: MySQLConnection, replica_server_id: int
) -> None:
    user = f"rp{next(_names)}"
    await admin.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'right'")
    message = await expect_fatal(make_replica(mariadb.url(user, "wrong"), replica_server_id))
    assert "access denied" in message.lower() and "password" in message
    assert "wrong" not in message  # the password never appears


async def test_missing_replication_privilege_is_fatal(
    mariadb: PrivateMariaDB, admin: MySQLConnection, replica_server_id: int
) -> None:
    user = f"rp{next(_names)}"
    await admin.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    await admin.execute(f"GRANT BINLOG MONITOR ON *.* TO '{user}'@'%'")  # no REPLICATION SLAVE
    message = await expect_fatal(make_replica(mariadb.url(user, "pw"), replica_server_id))
    assert "GRANT REPLICATION SLAVE" in message


async def test_purged_position_is_fatal(mariadb: PrivateMariaDB, replica_server_id: int) -> None:
    gone = Position("binlog.999999", 4)
    message = await expect_fatal(make_replica(mariadb.url(), replica_server_id, start=gone))
    assert "binlog.999999:4" in message and "purged" in message
    assert "--new-epoch" in message


async def test_gtid_past_the_server_is_fatal(
    mariadb: PrivateMariaDB, admin: MySQLConnection, replica_server_id: int
) -> None:
    now = await admin.current_position()
    assert now.gtid
    ahead = Position(now.file, 4, "0-1-999999")
    message = await expect_fatal(make_replica(mariadb.url(), replica_server_id, start=ahead))
    assert "0-1-999999 is past its last GTID" in message
    unknown = Position(now.file, 4, f"{now.gtid},7-1-5")
    message = await expect_fatal(make_replica(mariadb.url(), replica_server_id, start=unknown))
    assert "domain 7" in message


def test_gtid_ahead_check() -> None:
    assert gtid_ahead_of_server("0-1-5", "0-1-5") == []
    assert gtid_ahead_of_server("0-1-5", "0-2-9,1-1-1") == []
    assert gtid_ahead_of_server("0-1-6", "0-1-5") == ["0-1-6 is past its last GTID 0-1-5"]
    assert gtid_ahead_of_server("1-1-1", "") == ["domain 1 (1-1-1) is not in its binlog"]
    assert gtid_ahead_of_server("uuid:1-5", "0-1-1") == []  # not MariaDB syntax: not checked


async def test_binlog_off_is_fatal(tmp_path: Path, replica_server_id: int) -> None:
    db = PrivateMariaDB(tmp_path / "nobinlog", log_bin=False)
    db.start()
    try:
        message = await expect_fatal(make_replica(db.url(), replica_server_id))
    finally:
        db.stop()
    assert "binary logging is off" in message and "log-bin" in message


async def test_server_id_collision_is_detected(
    mariadb: PrivateMariaDB, replica_server_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_replica(mariadb.url(), replica_server_id)
    consumer = Consumer(first)
    await wait_until(lambda: first.connected, what="first connected")
    second = make_replica(mariadb.url(), replica_server_id)
    other = Consumer(second)
    try:
        with pytest.raises(ReplicaError) as info:
            await asyncio.wait_for(consumer.task, 10)
        assert f"server_id {replica_server_id}" in str(info.value)
        assert "another replica" in str(info.value)
        # the newcomer was warned that it was about to push someone out
        assert any(first.report_host in r.getMessage() for r in caplog.records)
        assert second.connected
    finally:
        await other.stop()


async def test_server_id_taken_over_while_disconnected(
    mariadb: PrivateMariaDB, admin: MySQLConnection, replica_server_id: int
) -> None:
    """MySQL closes a pushed-out replica's connection without saying why: on reconnect,
    finding another replica registered with our server_id is fatal, not a retry loop."""
    proxy = await FaultProxy("127.0.0.1", mariadb.port).start()
    intruder = await MySQLConnection.connect(MySQLURL.parse(mariadb.url()))
    try:
        replica = make_replica(MySQLURL(port=proxy.port), replica_server_id, backoff_initial=1.0)
        consumer = Consumer(replica)
        await wait_until(lambda: replica.connected, what="connected")
        proxy.cut()
        await wait_until(lambda: replica.reconnects == 1, what="loss noticed")
        await intruder.start_binlog(
            server_id=replica_server_id,
            position=await admin.current_position(),
            report_host="intruder",
        )
        # start_binlog returns once COM_REGISTER_SLAVE is acknowledged: it is registered
        assert [r[1] for r in await admin.query("SHOW SLAVE HOSTS")].count("intruder") == 1
        with pytest.raises(ReplicaError, match=r"'intruder'.*server_id"):
            await asyncio.wait_for(consumer.task, 10)
    finally:
        intruder.close()
        await proxy.close()


async def test_failed_table_info_lookup_is_retried_from_the_last_transaction(
    mariadb: PrivateMariaDB, admin: MySQLConnection, table: str, replica_server_id: int
) -> None:
    calls = 0

    async def flaky(database: str, name: str) -> TableInfo | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("schema connection refused")
        return TableInfo(columns=("id", "v"), json_columns=frozenset())

    replica = make_replica(
        mariadb.url(), replica_server_id, table_info=flaky, names_from_binlog=False
    )
    consumer = Consumer(replica, "t")
    await wait_until(lambda: replica.connected, what="connected")
    await admin.execute(f"INSERT INTO {table} VALUES (1, 'a')")
    await admin.execute(f"INSERT INTO {table} VALUES (2, 'b')")
    await consumer.wait_ids(2)
    await consumer.stop()
    assert consumer.ids == [1, 2]
    assert calls >= 2 and replica.reconnects == 1
    assert "schema lookup" in (replica.last_error or "")


async def test_required_tls_is_fatal(
    mariadb: PrivateMariaDB, admin: MySQLConnection, replica_server_id: int
) -> None:
    await admin.execute("SET GLOBAL require_secure_transport = ON")
    try:
        message = await expect_fatal(make_replica(mariadb.url(), replica_server_id))
    finally:
        await admin.execute("SET GLOBAL require_secure_transport = OFF")  # still logged in
    # MariaDB says only "access denied"; MySQL's error 3159 gets its own message
    assert "require_secure_transport" in message
