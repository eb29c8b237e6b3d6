"""NOTIFY, client PUBLISH through the outbox, purging and DDL events, on a real MariaDB.

NOTIFY and PUBLISH go through the daemon and redis-py subscribers, as users run
them. DDL events are checked on the source -> publish -> hub path itself (a
replica pumping into a hub), with `ddl=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncmy
import pytest

from tests.system.daemons import (
    assert_silent,
    receive,
    start_daemon,
    stop_daemon,
    subscriber,
    wait_for,
)
from tidings.daemon import Daemon
from tidings.event import Event
from tidings.hub import Hub
from tidings.publish import DEFAULT_OUTBOX, publish_transaction
from tidings.sandbox import PrivateMariaDB, free_port
from tidings.source.notify import (
    Outbox,
    OutboxPublisher,
    OutboxPurger,
    PublishError,
    install,
)
from tidings.source.replica import Replica
from tidings.source.schema import SchemaLookup
from tidings.source.url import MySQLURL

_names = itertools.count(1)


@pytest.fixture(scope="module")
def installed(mariadb: PrivateMariaDB) -> PrivateMariaDB:
    """The session server with `tidings.notify` installed (the default schema)."""
    asyncio.run(install(MySQLURL.parse(mariadb.url())))
    return mariadb


@pytest.fixture
def name(installed: PrivateMariaDB) -> str:
    """A database of this test's own, and the prefix of its NOTIFY channels."""
    db = f"nt{next(_names)}"
    installed.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (id INT PRIMARY KEY, v INT)")
    return db


@pytest.fixture
async def daemon(installed: PrivateMariaDB, replica_server_id: int) -> AsyncIterator[Daemon]:
    d = await start_daemon(installed, replica_server_id)
    yield d
    await stop_daemon(d)


def daemon_outbox(daemon: Daemon) -> Outbox:
    """The outbox the daemon's publish mapping resolves: its own once wired, else the default."""
    outbox = getattr(daemon, "outbox", None)
    return outbox if isinstance(outbox, Outbox) else DEFAULT_OUTBOX


async def connect(db: PrivateMariaDB) -> Any:
    return await asyncmy.connect(host="127.0.0.1", port=db.port, user="root", autocommit=True)


async def outbox_count(db: PrivateMariaDB) -> int:
    out = await asyncio.to_thread(db.sql, "SELECT COUNT(*) FROM tidings.outbox")
    return int(out)


# -- NOTIFY ----------------------------------------------------------------------------------


async def test_notify_only_on_commit_in_commit_order_among_the_rows(
    installed: PrivateMariaDB, name: str, daemon: Daemon
) -> None:
    db = installed
    sub = await subscriber(daemon, f"{name}.t", f"{name}:*")
    db.sql(
        f"BEGIN; INSERT INTO {name}.t VALUES (1, 1);"
        f" CALL tidings.notify('{name}:a', '{{\"n\": 1}}');"
        f" INSERT INTO {name}.t VALUES (2, 2); COMMIT;"
        f" BEGIN; CALL tidings.notify('{name}:a', 'rolled back');"
        f" INSERT INTO {name}.t VALUES (9, 9); ROLLBACK;"
        f" CALL tidings.notify('{name}:b', 'plain text');"
    )
    # two sessions: the first to NOTIFY (lower outbox id) commits last, and arrives last
    first, second = await connect(db), await connect(db)
    try:
        async with first.cursor() as c1, second.cursor() as c2:
            await c1.execute("BEGIN")
            await c1.execute(f"CALL tidings.notify('{name}:a', 'called first, committed last')")
            await c2.execute("BEGIN")
            await c2.execute(f"INSERT INTO {name}.t VALUES (3, 3)")
            await c2.execute(f"CALL tidings.notify('{name}:a', 'called last, committed first')")
            await c2.execute("COMMIT")
            await c1.execute("COMMIT")
    finally:
        first.close()
        second.close()
    events = await receive(sub, 7)
    await assert_silent(sub)
    summary = [
        (e["channel"], e["type"], e.get("payload", e.get("data"))) for e in events
    ]  # fmt: skip
    assert summary == [
        (f"{name}.t", "insert", {"id": 1, "v": 1}),
        (f"{name}:a", "notify", {"n": 1}),
        (f"{name}.t", "insert", {"id": 2, "v": 2}),
        (f"{name}:b", "notify", "plain text"),
        (f"{name}.t", "insert", {"id": 3, "v": 3}),
        (f"{name}:a", "notify", "called last, committed first"),
        (f"{name}:a", "notify", "called first, committed last"),
    ]
    ids = [e["id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + 7))  # nothing between: not even outbox rows
    # rows and notifies of one transaction share its gtid and xid
    assert len({(e["gtid"], e["xid"]) for e in events[:3]}) == 1
    assert events[4]["gtid"] == events[5]["gtid"] != events[6]["gtid"]


async def test_notify_from_a_trigger_and_the_outbox_channel_stays_silent(
    installed: PrivateMariaDB, name: str, daemon: Daemon
) -> None:
    db = installed
    db.sql(
        f"CREATE TRIGGER {name}.t_ins AFTER INSERT ON {name}.t FOR EACH ROW "
        f"CALL tidings.notify('{name}:trig', JSON_OBJECT('id', NEW.id, 'v', NEW.v))"
    )
    sub = await subscriber(daemon, f"{name}:trig", "tidings.outbox")
    db.sql(f"INSERT INTO {name}.t VALUES (1, 10), (2, 20)")
    events = await receive(sub, 2)
    await assert_silent(sub)
    assert [e["payload"] for e in events] == [{"id": 1, "v": 10}, {"id": 2, "v": 20}]


# -- purging ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def purger_for(
    daemon: Daemon, db: PrivateMariaDB, **options: Any
) -> AsyncIterator[OutboxPurger]:
    """The daemon's purger (with `options` set on it), or one on the outbox it publishes from."""
    own = getattr(daemon, "purger", None)
    if isinstance(own, OutboxPurger):
        saved = {key: getattr(own, key) for key in options}
        for key, value in options.items():
            setattr(own, key, value)
        # once its current idle wait is over, it runs a round and then keeps to `options`
        rounds = own.rounds
        own.outbox.wakeup.set()
        await wait_for(lambda: own.rounds > rounds, what="a purge round")
        try:
            yield own
        finally:
            for key, value in saved.items():
                setattr(own, key, value)
        return
    purger = OutboxPurger(MySQLURL.parse(db.url()), daemon_outbox(daemon), **options)
    task = asyncio.ensure_future(purger.run())
    try:
        yield purger
    finally:
        await purger.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_outbox_stays_small_under_continuous_notifies_and_ends_empty(
    installed: PrivateMariaDB, name: str, daemon: Daemon
) -> None:
    db = installed
    total, per_txn = 3000, 20
    sub = await subscriber(daemon, f"{name}:load")
    async with purger_for(daemon, db, interval=0.05, batch=500) as purger:
        rounds, purged = purger.rounds, purger.purged
        sizes: list[int] = []
        conn = await connect(db)
        try:
            async with conn.cursor() as cur:
                for start in range(0, total, per_txn):
                    await cur.execute("BEGIN")
                    for n in range(start, start + per_txn):
                        await cur.execute(f"CALL tidings.notify('{name}:load', '{n}')")
                    await cur.execute("COMMIT")
                    if start % 500 == 0:
                        await cur.execute("SELECT COUNT(*) FROM tidings.outbox")
                        sizes.append(int((await cur.fetchone())[0]))
        finally:
            conn.close()
        events = await receive(sub, total, timeout=60)
        assert [e["payload"] for e in events] == list(range(total))  # none lost, in order
        await wait_for(lambda: purger.purged - purged >= total, what="purge of every row")
        for _ in range(100):  # the last round may still be deleting
            if await outbox_count(db) == 0:
                break
            await asyncio.sleep(0.05)
        assert await outbox_count(db) == 0
    assert purger.rounds - rounds > 1
    # under load the table holds a fraction of what went through it
    assert max(sizes) < total / 2, sizes


async def test_purge_deletes_nothing_the_daemon_has_not_published(
    installed: PrivateMariaDB, name: str
) -> None:
    # no daemon reads this outbox's fences: the purge must wait, then give up, deleting nothing
    db = installed
    db.sql(f"CALL tidings.notify('{name}:x', 'undelivered')")
    before = await outbox_count(db)
    purger = OutboxPurger(MySQLURL.parse(db.url()), Outbox(), fence_timeout=0.3)
    try:
        with pytest.raises(TimeoutError, match="nothing deleted"):
            await purger.purge_once()
    finally:
        await purger.close()
    assert await outbox_count(db) == before + 1  # the fence stays for a later round


async def test_purge_skips_open_transactions_without_waiting_for_them(
    installed: PrivateMariaDB, name: str, daemon: Daemon
) -> None:
    db = installed
    sub = await subscriber(daemon, f"{name}:open")
    holder = await connect(db)
    try:
        async with holder.cursor() as cur:
            await cur.execute("BEGIN")
            await cur.execute(f"CALL tidings.notify('{name}:open', 'held')")
            await cur.execute("SELECT LAST_INSERT_ID()")
            held_id = int((await cur.fetchone())[0])
            # later rows commit first: a watermark purge (id <= last delivered) would block
            # on the held row's lock and delete it before its commit reached the binlog
            db.sql(f"CALL tidings.notify('{name}:open', 'after')")
            (after,) = await receive(sub, 1)
            assert after["payload"] == "after"
            async with purger_for(daemon, db, interval=0.05) as purger:
                await wait_for(lambda: purger.purged >= 1, what="purge around the open txn")
            # the purge finished while the transaction stayed open, and left its row alone
            await cur.execute(f"SELECT COUNT(*) FROM tidings.outbox WHERE id = {held_id}")
            assert (await cur.fetchone())[0] == 1
            await cur.execute("COMMIT")
        (held,) = await receive(sub, 1)
        assert held["payload"] == "held"
    finally:
        holder.close()


# -- client PUBLISH through the outbox --------------------------------------------------------


async def test_publish_goes_through_the_binlog_raw_with_receivers(
    installed: PrivateMariaDB, name: str, daemon: Daemon
) -> None:
    channel = f"{name}:pub"
    publisher = OutboxPublisher(MySQLURL.parse(installed.url()), daemon_outbox(daemon))
    try:
        assert await publisher.publish(channel, b"nobody listens") == 0
        exact = await subscriber(daemon, channel)
        pattern = await subscriber(daemon, f"{name}:*")
        payload = bytes(range(256)) + "é🌍".encode()
        assert await publisher.publish(channel, payload) == 2
        for sub in (exact, pattern):
            message = await sub.get_message(timeout=5)
            assert message is not None and message["data"] == payload  # byte for byte
        # many at once: one INSERT per batch, replies in call order, ids in call order
        counts = await asyncio.gather(
            *(publisher.publish(channel, str(n).encode()) for n in range(300))
        )
        assert counts == [2] * 300
        received = [m["data"] async for m in _messages(exact, 300)]
        assert received == [str(n).encode() for n in range(300)]
        with pytest.raises(ValueError, match="over 65536"):
            await publisher.publish(channel, b"x" * 65537)
        with pytest.raises(ValueError, match="1 to 255"):
            await publisher.publish("", b"x")
    finally:
        await publisher.close()
    with pytest.raises(PublishError, match="shutting down"):
        await publisher.publish(channel, b"late")


async def test_publish_reports_a_missing_outbox(
    own_mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    outbox = Outbox()
    publisher = OutboxPublisher(MySQLURL.parse(own_mariadb.url()), outbox)
    try:
        with pytest.raises(PublishError, match=r"cannot write to `tidings`.`outbox`.*1146"):
            await publisher.publish("c", b"x")
    finally:
        await publisher.close()


async def _messages(sub: Any, count: int) -> AsyncIterator[dict[str, Any]]:
    got = 0
    while got < count:
        message = await sub.get_message(timeout=5)
        assert message is not None, f"only {got} of {count} messages"
        if message["type"] == "message":
            got += 1
            yield message


# -- DDL events ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.events.append(json.loads(event.body))


@contextlib.asynccontextmanager
async def pumping(db: PrivateMariaDB, server_id: int) -> AsyncIterator[tuple[Hub, Recorder]]:
    """Replica -> publish_transaction(ddl=True) -> hub, with a recorder on every channel."""
    url = MySQLURL.parse(db.url())
    schema = SchemaLookup(url)
    replica = Replica(url, server_id=server_id, start=None, table_info=schema.table_info)
    hub = Hub()
    rec = Recorder()
    hub.psubscribe(rec, "*")

    async def pump() -> None:
        async for txn in replica.transactions():
            await publish_transaction(hub, txn, ddl=True)

    task = asyncio.ensure_future(pump())
    try:
        await wait_for(lambda: replica.connected or task.done(), what="replica connected")
        yield hub, rec
    finally:
        await replica.close()
        await schema.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_ddl_events_for_each_statement_kind(
    installed: PrivateMariaDB, replica_server_id: int
) -> None:
    db = installed
    d = f"ddl{next(_names)}"
    statements = [
        (f"CREATE DATABASE {d}", [(d, None)]),
        (f"CREATE TABLE {d}.a (id INT PRIMARY KEY)", [(d, "a")]),
        (f"CREATE TABLE {d}.b LIKE {d}.a", [(d, "b")]),
        (f"ALTER TABLE {d}.a ADD COLUMN v INT", [(d, "a")]),
        (f"CREATE INDEX iv ON {d}.a (v)", [(d, "a")]),
        (f"RENAME TABLE {d}.a TO {d}.c, {d}.b TO {d}.a", [(d, "a"), (d, "c"), (d, "b")]),
        (f"ALTER TABLE {d}.c RENAME TO {d}.e", [(d, "c"), (d, "e")]),
        (f"TRUNCATE TABLE {d}.e", [(d, "e")]),
        (f"CREATE VIEW {d}.v AS SELECT * FROM {d}.e", [(d, "v")]),
        (f"DROP VIEW {d}.v", [(d, "v")]),
        (f"DROP TABLE {d}.a, {d}.e", [(d, "a"), (d, "e")]),
        (f"CREATE PROCEDURE {d}.p() SELECT 1", [(d, None)]),
        (f"DROP DATABASE {d}", [(d, None)]),
    ]
    async with pumping(db, replica_server_id) as (_, rec):
        for sql, _ in statements:
            db.sql(sql)
        expected = [(sql, t) for sql, targets in statements for t in targets]
        await wait_for(lambda: len(rec.events) >= len(expected), what="ddl events")
        await asyncio.sleep(0)
    got = [(e["sql"], (e["database"], e["table"])) for e in rec.events if e["type"] == "ddl"]
    assert [t for _, t in got] == [t for _, t in expected]
    # the statement as the server logged it: verbatim, but for what it adds (a view's
    # DEFINER and ALGORITHM, a DROP TABLE's comment)
    assert [sql.split()[0] for sql, _ in got] == [sql.split()[0] for sql, _ in expected]
    assert got[0][0] == f"CREATE DATABASE {d}"
    for event in rec.events:
        table = event["table"]
        assert event["channel"] == (event["database"] if table is None else f"{d}.{table}")
        assert isinstance(event["ts"], int) and isinstance(event["gtid"], str)


async def test_alter_mid_stream_with_ddl_events_keeps_rows_right(
    installed: PrivateMariaDB, replica_server_id: int
) -> None:
    db = installed
    d = f"ddl{next(_names)}"
    db.sql(f"CREATE DATABASE {d}; CREATE TABLE {d}.t (id INT PRIMARY KEY, a INT, b VARCHAR(9))")
    async with pumping(db, replica_server_id) as (_, rec):
        db.sql(
            f"INSERT INTO {d}.t VALUES (1, 10, 'x');"
            f"ALTER TABLE {d}.t ADD COLUMN c INT DEFAULT 7 AFTER id;"
            f"INSERT INTO {d}.t (id, a, b) VALUES (2, 20, 'y');"
            f"ALTER TABLE {d}.t DROP COLUMN a;"
            f"INSERT INTO {d}.t VALUES (3, 8, 'z');"
            f"ALTER TABLE {d}.t RENAME COLUMN b TO label;"
            f"UPDATE {d}.t SET label='zz' WHERE id=3;"
        )
        await wait_for(lambda: len(rec.events) >= 7, what="rows and ddl events")
    summary = [
        (e["type"], e["data"] if e["type"] != "ddl" else e["sql"].split(" ", 4)[3])
        for e in rec.events
    ]
    assert summary == [
        ("insert", {"id": 1, "a": 10, "b": "x"}),
        ("ddl", "ADD"),
        ("insert", {"id": 2, "c": 7, "a": 20, "b": "y"}),
        ("ddl", "DROP"),
        ("insert", {"id": 3, "c": 8, "b": "z"}),
        ("ddl", "RENAME"),
        ("update", {"id": 3, "c": 8, "label": "zz"}),
    ]
    assert all(e["channel"] == f"{d}.t" for e in rec.events)


# -- the install-sql command -----------------------------------------------------------------


def test_install_sql_command_and_its_printed_script(installed: PrivateMariaDB) -> None:
    db = installed
    schema = f"cli{next(_names)}"
    tidings = [sys.executable, "-m", "tidings.cli", "install-sql", "--mysql", db.url()]
    done = subprocess.run(
        [*tidings, "--schema", schema], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"procedure `{schema}`.`notify`: created" in done.stdout
    assert f"CALL {schema}.notify('channel', 'payload');" in done.stdout
    # the printed script, fed to the mariadb client, installs the same thing elsewhere
    other = f"cli{next(_names)}"
    script = subprocess.run(
        [*tidings, "--schema", other, "--print"], capture_output=True, text=True, check=True
    ).stdout
    db.sql(script)
    db.sql(f"CALL {other}.notify('c', 'from the script'); CALL {schema}.notify('c', 'x')")
    assert db.sql(f"SELECT payload FROM {other}.outbox").strip() == "from the script"
    # a server error is one line on stderr and exit status 1
    bad = subprocess.run(
        [*tidings, "--schema", "no way"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "schema name 'no way'" in bad.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "install-sql", "--mysql",
         f"mysql://root@127.0.0.1:{free_port()}/"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert gone.returncode == 1 and gone.stderr.startswith("tidings: cannot install on"), gone


async def test_daemon_with_ddl_events_publishes_them_to_subscribers(
    installed: PrivateMariaDB, name: str, replica_server_id: int
) -> None:
    daemon = await start_daemon(installed, replica_server_id, ddl_events=True)
    try:
        sub = await subscriber(daemon, f"{name}.t", name)
        installed.sql(
            f"ALTER TABLE {name}.t ADD COLUMN w INT; INSERT INTO {name}.t VALUES (1, 2, 3);"
            f"CREATE PROCEDURE {name}.p() SELECT 1"
        )
        alter, insert, procedure = await receive(sub, 3)
        assert (alter["type"], alter["channel"], alter["table"]) == ("ddl", f"{name}.t", "t")
        assert insert["data"] == {"id": 1, "v": 2, "w": 3}
        assert (procedure["channel"], procedure["table"]) == (name, None)
        assert alter["id"] < insert["id"] < procedure["id"]
    finally:
        await stop_daemon(daemon)


async def test_client_publish_goes_through_the_binlog_in_order_with_the_rows(
    installed: PrivateMariaDB, name: str, replica_server_id: int
) -> None:
    """With a MySQL source, PUBLISH takes its id from the binlog: deterministic like rows."""
    daemon = await start_daemon(installed, replica_server_id, allow_publish=True)
    try:
        assert daemon.resp_address is not None
        host, port = daemon.resp_address
        sub = await subscriber(daemon, f"{name}.*")
        reader, writer = await asyncio.open_connection(host, port)
        installed.sql(f"INSERT INTO {name}.t VALUES (1, 1)")
        (before,) = await receive(sub, 1)
        payload = b"\x00raw \xff bytes"  # not JSON, not UTF-8: delivered byte for byte
        # pipelined: the PING's reply must wait behind the PUBLISH's, as in Redis
        writer.write(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s.x\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n"
            % (len(name) + 2, name.encode(), len(payload), payload)
        )
        assert await asyncio.wait_for(reader.readexactly(4 + 7), 20) == b":1\r\n+PONG\r\n"
        message = await sub.get_message(timeout=10)
        assert message is not None and message["channel"] == f"{name}.x".encode()
        assert message["data"] == payload
        installed.sql(f"INSERT INTO {name}.t VALUES (2, 2)")
        (after,) = await receive(sub, 1)
        # the published message took exactly one id of the stream, between the two rows
        assert after["id"] == before["id"] + 2
        published = [e for e in daemon.hub.history.after(before["id"]) if e.id < after["id"]]
        assert [(e.channel, e.body) for e in published] == [(f"{name}.x", payload)]
        writer.close()
    finally:
        await stop_daemon(daemon)
