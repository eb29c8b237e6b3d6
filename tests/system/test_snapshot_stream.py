"""TIDINGS.SNAPSHOT on a real MariaDB: snapshot + stream = the table, under concurrent writes.

Real peers only: a private MariaDB with binlog on, the daemon in-process, and
redis-py (asyncio) clients sending TIDINGS.SNAPSHOT through `execute_command`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import asyncmy
import orjson
import pytest
import redis.asyncio as aioredis

from tests.system.daemons import start_daemon, stop_daemon, wait_for
from tidings.daemon import Daemon
from tidings.hub import Hub
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count(1)
STATUSES = ("new", "paid", "done")
SENTINEL = 10**6


def make_schema(db: PrivateMariaDB, rows: int) -> str:
    name = f"snapstream{next(_dbs)}"
    db.sql(f"CREATE DATABASE {name}")
    db.sql(
        "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, status VARCHAR(10) NOT NULL);"
        "INSERT INTO t SELECT seq, seq % 97, ELT(1 + seq % 3, 'new', 'paid', 'done') "
        f"FROM seq_1_to_{rows}",
        name,
    )
    return name


def table_now(db: PrivateMariaDB, schema: str) -> dict[int, dict[str, Any]]:
    out = db.sql(f"SELECT id, v, status FROM {schema}.t ORDER BY id")
    rows = {}
    for line in out.splitlines():
        key, v, status = line.split("\t")
        rows[int(key)] = {"id": int(key), "v": int(v), "status": status}
    return rows


class Writer:
    """Random insert/update/delete transactions until stopped; counts commits."""

    def __init__(self, db: PrivateMariaDB, schema: str, first_new: int, seed: int) -> None:
        self.db = db
        self.schema = schema
        self.next_key = first_new
        self.rng = random.Random(seed)
        self.commits = 0
        self.stop = False

    async def run(self) -> None:
        conn = await asyncmy.connect(
            host="127.0.0.1", port=self.db.port, user="root", database=self.schema
        )
        rng = self.rng
        try:
            async with conn.cursor() as cur:
                while not self.stop:
                    for _ in range(rng.randint(1, 4)):
                        op = rng.random()
                        status = rng.choice(STATUSES)
                        if op < 0.3:
                            await cur.execute(
                                "INSERT INTO t VALUES (%s, %s, %s)",
                                (self.next_key, rng.randint(0, 99), status),
                            )
                            self.next_key += 1
                        elif op < 0.8:
                            await cur.execute(
                                "UPDATE t SET v = v + 1, status = %s WHERE id = %s",
                                (status, rng.randint(1, self.next_key)),
                            )
                        else:
                            key = rng.randint(1, self.next_key)
                            await cur.execute("DELETE FROM t WHERE id = %s", (key,))
                    await conn.commit()
                    self.commits += 1
                    await asyncio.sleep(0)  # other writers' turn (the daemon, the clients)
                # the last write, on both views: readers stop when they see it
                await cur.execute("INSERT INTO t VALUES (%s, 0, 'new')", (SENTINEL,))
                await conn.commit()
        finally:
            conn.close()


class View:
    """One client's view of the table, built strictly from snapshot rows then events:
    a duplicate (insert of a row it has) or a miss (update of a row it lacks) fails."""

    def __init__(self, channel: str, filtered: bool) -> None:
        self.channel = channel
        self.filtered = filtered
        self.rows: dict[int, dict[str, Any]] = {}
        self.end: dict[str, Any] | None = None
        self.last_id = 0
        self.events = 0
        self.commits_at_confirm = -1
        self.commits_at_end = -1

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        # snapshot messages name the channel as requested, events their table's channel
        named = self.channel if kind.startswith("snapshot") else self.channel.partition("?")[0]
        assert message["channel"] == named, message
        if kind == "snapshot":
            assert self.end is None
            key = message["data"]["id"]
            assert key not in self.rows
            self.rows[key] = message["data"]
            return
        if kind == "snapshot-end":
            assert self.end is None
            assert message["rows"] == len(self.rows)
            self.end = message
            self.last_id = message["id"]
            return
        assert self.end is not None, f"an event before snapshot-end: {message}"
        assert message["id"] > self.last_id, "ids after the snapshot, each once, in order"
        self.last_id = message["id"]
        self.events += 1
        data = message["data"]
        key = data["id"]
        match = message.get("match")
        if kind == "insert" or match == "enter":
            assert key not in self.rows, f"seen twice: {message}"
            self.rows[key] = data
        elif kind == "update":
            assert key in self.rows, f"missed: {message}"
            if match == "leave":
                del self.rows[key]
            else:
                self.rows[key] = data
        else:
            assert kind == "delete", message
            assert key in self.rows, f"missed: {message}"
            del self.rows[key]


async def follow(daemon: Daemon, view: View, writer: Writer) -> None:
    """TIDINGS.SNAPSHOT with redis-py; apply everything until the writer's sentinel."""
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    client = aioredis.Redis(host=host, port=port)
    pubsub = client.pubsub()
    try:
        await pubsub.execute_command("TIDINGS.SNAPSHOT", view.channel)
        confirmation = await pubsub.get_message(timeout=30)
        assert confirmation is not None and confirmation["type"] == "subscribe", confirmation
        view.commits_at_confirm = writer.commits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while SENTINEL not in view.rows:
            assert loop.time() < deadline, f"{view.channel}: no sentinel; {len(view.rows)} rows"
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            assert message["channel"] == view.channel.encode()  # the name as subscribed
            body = orjson.loads(message["data"])
            view.apply(body)
            if body["type"] == "snapshot-end":
                view.commits_at_end = writer.commits
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_snapshot_then_stream_is_the_table_under_concurrent_writes(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    initial = 20_000
    schema = make_schema(mariadb, initial)
    daemon = await start_daemon(mariadb, replica_server_id, Hub())
    writer = Writer(mariadb, schema, initial + 1, seed=replica_server_id)
    writing = asyncio.ensure_future(writer.run())
    try:
        await wait_for(lambda: writer.commits >= 20 or writing.done(), what="writer started")
        whole = View(f"{schema}.t", filtered=False)
        new = View(f"{schema}.t?status=eq.new", filtered=True)
        following = asyncio.gather(follow(daemon, whole, writer), follow(daemon, new, writer))
        # keep writing until both snapshots have ended and the stream has carried on a while
        await wait_for(
            lambda: (
                (whole.end is not None and new.end is not None and whole.events > 200)
                or following.done()
                or writing.done()
            ),
            what="both snapshots streamed",
        )
        writer.stop = True
        await writing
        await asyncio.wait_for(following, 120)
        final = table_now(mariadb, schema)
        assert whole.rows == final
        assert new.rows == {k: r for k, r in final.items() if r["status"] == "new"}
        # the writes really overlapped the snapshots (rows read while committing went on)
        for view in (whole, new):
            assert view.commits_at_end > view.commits_at_confirm >= 20, view.channel
            assert view.end is not None and view.end["rows"] > 0
        assert daemon.resp is not None and daemon.resp.slow_consumers_cut == 0
    finally:
        writer.stop = True
        await asyncio.gather(writing, return_exceptions=True)
        await stop_daemon(daemon)


async def test_a_slow_reader_of_a_100k_row_snapshot_is_not_cut_off(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    rows = 100_000
    schema = make_schema(mariadb, rows)
    limit = 256 * 1024
    daemon = await start_daemon(mariadb, replica_server_id, Hub(), output_limit=limit)
    try:
        assert daemon.resp is not None and daemon.resp_address is not None
        snapshots = daemon.resp.snapshots
        assert snapshots is not None
        host, port = daemon.resp_address
        client = aioredis.Redis(host=host, port=port)
        pubsub = client.pubsub()
        channel = f"{schema}.t"
        await pubsub.execute_command("TIDINGS.SNAPSHOT", channel)
        got = 0
        end: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        stalled = False
        while end is None:
            assert loop.time() < deadline, f"got {got} rows"
            if got == 1000 and not stalled:
                # stop reading until the daemon has stopped sending (its output is full)
                stalled = True
                (conn,) = daemon.resp.connections
                await wait_for(lambda c=conn: c.outbox.paused, what="output full")
                (stream,) = snapshots.streams
                held = stream.rows_sent
                await asyncio.sleep(0.2)
                assert stream.rows_sent == held < rows  # waiting for the reader, not sending
                assert snapshots.active == 1  # its transaction is open, one batch at a time
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            body = orjson.loads(message["data"])
            if body["type"] == "snapshot":
                got += 1
                assert body["data"]["id"] == got  # in key order, each once
            else:
                end = body
        assert stalled and got == rows
        assert end["type"] == "snapshot-end" and end["rows"] == rows
        assert daemon.resp.slow_consumers_cut == 0
        assert snapshots.active == 0 and snapshots.served == 1
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    finally:
        await stop_daemon(daemon)


async def test_mysql_side_errors_are_err_replies_and_subscribe_nothing(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    schema = make_schema(mariadb, 10)
    daemon = await start_daemon(mariadb, replica_server_id, Hub())
    try:
        assert daemon.resp_address is not None
        host, port = daemon.resp_address
        client = aioredis.Redis(host=host, port=port)
        for channel, error in [
            (f"{schema}.nope", f"no table {schema}.nope"),
            (f"{schema}.t?x=eq.1", "no column 'x' for filter condition 'x=eq.1'"),
        ]:
            with pytest.raises(aioredis.ResponseError) as raised:
                await client.execute_command("TIDINGS.SNAPSHOT", channel)  # type: ignore[no-untyped-call]
            assert str(raised.value) == error
        assert await client.ping()  # not in subscribed mode: nothing was subscribed
        assert daemon.hub.channels() == {}
        await client.aclose()
    finally:
        await stop_daemon(daemon)
