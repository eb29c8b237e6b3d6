"""Consistent snapshots on a real MariaDB: decoder-exact rows, the right binlog position."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncmy
import pytest

from tests.source.test_binlog_golden import (
    ALL_TYPES,
    ROW_1,
    ROW_2_ZERO,
    Follower,
    changes,
    table_info,
)
from tidings.hub.filters import FilterError, RowFilter, parse_filter
from tidings.sandbox import PrivateMariaDB
from tidings.source.binlog import BinlogDecoder, TableInfoRequest
from tidings.source.binlog.binlogfile import BinlogTail
from tidings.source.changes import Position, RowChange
from tidings.source.snapshot import (
    Snapshot,
    SnapshotError,
    SnapshotUnsupported,
    read_snapshot,
)
from tidings.source.url import MySQLURL


def url(db: PrivateMariaDB) -> MySQLURL:
    return MySQLURL.parse(db.url())


async def all_rows(snap: Snapshot) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for batch in snap:
        assert 0 < len(batch) <= snap.batch
        out.extend(batch)
    return out


def changes_since(db: PrivateMariaDB, position: Position, database: str) -> list[RowChange]:
    """Row changes in `database` written to the binlog after `position`, decoded from disk."""
    tail = BinlogTail(db.datadir, position.file, position.pos)
    decoder = BinlogDecoder(position)
    out = []
    for event in tail.read():
        result = decoder.feed(event)
        if isinstance(result, TableInfoRequest):
            decoder.provide_table_info(result, table_info(db, result))
        elif result is not None:
            out.extend(c for c in result.changes if c.database == database)
    return out


# -- values --------------------------------------------------------------------------------------

EXTRA_ROWS = [
    "(10, 0.33333334, 0.1e0 + 0.2e0)",
    "(11, 16777217, 1.7976931348623157e308)",
    "(12, -3.4028234e38, 4.9e-324)",
    "(13, 1e-45, -2.2250738585072014e-308)",
    "(14, 0.1, 1e0 / 3e0)",
]


async def test_rows_equal_the_decoders_data(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_types; CREATE DATABASE snap_types")
    mariadb.sql(ALL_TYPES, "snap_types")
    follower = Follower(mariadb)
    prelude = "SET NAMES utf8mb4; SET time_zone = '+00:00'; SET sql_mode = '';"
    mariadb.sql(f"{prelude} INSERT INTO all_types VALUES {ROW_1}", "snap_types")
    mariadb.sql(f"{prelude} INSERT INTO all_types VALUES {ROW_2_ZERO}", "snap_types")
    mariadb.sql("INSERT INTO all_types (id) VALUES (3)", "snap_types")
    extra = list(EXTRA_ROWS)
    rng = random.Random(7)
    for i in range(100, 160):  # random doubles and floats, any exponent
        d = rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10.0 ** rng.randint(-300, 300)])
        f = rng.uniform(-1e4, 1e4) * 10.0 ** rng.randint(-30, 30)
        extra.append(f"({i}, {f!r}, {d!r})")
    mariadb.sql(f"INSERT INTO all_types (id, f, d) VALUES {', '.join(extra)}", "snap_types")
    decoded = {c.data["id"]: c.data for c in changes(follower.transactions("snap_types"))}
    assert len(decoded) == 3 + len(extra)

    async with await read_snapshot(url(mariadb), "snap_types", "all_types", batch=16) as snap:
        rows = await all_rows(snap)
    assert snap.columns == tuple(decoded[1])
    by_id = {r["id"]: r for r in rows}
    assert by_id.keys() == decoded.keys()
    for key, row in by_id.items():
        assert row == decoded[key], key
        assert list(row) == list(decoded[key])  # same column order too


# -- position --------------------------------------------------------------------------------------


async def test_position_splits_snapshot_and_stream(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_pos; CREATE DATABASE snap_pos")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))", "snap_pos")
    mariadb.sql(
        "INSERT INTO t VALUES " + ", ".join(f"({i}, 'v{i}')" for i in range(1, 21)), "snap_pos"
    )
    snap = await read_snapshot(url(mariadb), "snap_pos", "t", batch=6)
    try:
        # committed after the snapshot began: invisible to it, after its position in the binlog
        mariadb.sql("INSERT INTO t VALUES (21, 'new'), (22, 'new')", "snap_pos")
        mariadb.sql("UPDATE t SET v = 'changed' WHERE id = 1", "snap_pos")
        mariadb.sql("DELETE FROM t WHERE id = 2", "snap_pos")
        rows = await all_rows(snap)
    finally:
        snap.close()
    assert rows == [{"id": i, "v": f"v{i}"} for i in range(1, 21)]
    assert snap.rows_read == 20
    assert snap.position.gtid  # MariaDB's GTID state at that point, for GTID resumes
    after = changes_since(mariadb, snap.position, "snap_pos")
    assert [(c.type, c.data["id"]) for c in after] == [
        ("insert", 21),
        ("insert", 22),
        ("update", 1),
        ("delete", 2),
    ]


async def test_position_is_at_the_end_when_idle(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_idle; CREATE DATABASE snap_idle")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY)", "snap_idle")
    file, pos = mariadb.sql("SHOW MASTER STATUS").split("\t")[:2]
    gtid = mariadb.sql("SELECT @@gtid_binlog_pos").strip()
    async with await read_snapshot(url(mariadb), "snap_idle", "t") as snap:
        assert await all_rows(snap) == []
    assert snap.position == Position(file, int(pos), gtid)


# -- snapshot + stream = the table ----------------------------------------------------------------

WRITER_TABLE = """
CREATE TABLE t (
  id INT PRIMARY KEY, v INT, s VARCHAR(10), amount DECIMAL(8,2), at DATETIME(3), f FLOAT
)
"""


class Writer:
    """Random transactions on `snap_live.t` until stopped; counts commits for readiness."""

    def __init__(self, db: PrivateMariaDB, seed: int) -> None:
        self.db = db
        self.rng = random.Random(seed)
        self.commits = 0
        self.stop = False
        self.milestones: dict[int, asyncio.Event] = {}

    def reached(self, commits: int) -> asyncio.Event:
        event = self.milestones.setdefault(commits, asyncio.Event())
        if self.commits >= commits:
            event.set()
        return event

    async def run(self) -> None:
        conn = await asyncmy.connect(
            host="127.0.0.1", port=self.db.port, user="root", database="snap_live"
        )
        rng = self.rng
        try:
            async with conn.cursor() as cur:
                while not self.stop:
                    for _ in range(rng.randint(1, 3)):
                        key = rng.randint(1, 60)
                        op = rng.random()
                        values = (
                            rng.randint(0, 9),
                            rng.choice(["a", "A", "b", "paid", "new", None]),
                            f"{rng.randint(-500, 500) / 4:.2f}",
                            f"2024-01-0{rng.randint(1, 3)} 0{rng.randint(0, 9)}:00:00.5",
                            rng.choice([1.1, 0.5, None]),
                        )
                        if op < 0.5:
                            await cur.execute(
                                "REPLACE INTO t VALUES (%s, %s, %s, %s, %s, %s)", (key, *values)
                            )
                        elif op < 0.8:
                            await cur.execute(
                                "UPDATE t SET v = %s, s = %s, amount = %s, at = %s, f = %s "
                                "WHERE id = %s",
                                (*values, key),
                            )
                        else:
                            await cur.execute("DELETE FROM t WHERE id = %s", (key,))
                    await conn.commit()
                    self.commits += 1
                    for count, event in self.milestones.items():
                        if self.commits >= count:
                            event.set()
        finally:
            conn.close()


def apply(state: dict[int, dict[str, Any]], change: RowChange, flt: RowFilter | None) -> None:
    """Apply one streamed change strictly: a duplicate or a gap raises."""
    key = change.data["id"]
    if flt is not None:
        record = {"type": change.type, "data": change.data, "old": change.old}
        verdict = flt.classify(record)
        if verdict is None:
            assert key not in state
            return
        if verdict == "enter":
            assert key not in state, change
            state[key] = change.data
            return
        if verdict == "leave":
            assert state.pop(key) == {**change.data, **(change.old or {})}, change
            return
    if change.type == "insert":
        assert key not in state, change
        state[key] = change.data
    elif change.type == "update":
        assert state[key] == {**change.data, **(change.old or {})}, change
        state[key] = change.data
    else:
        assert state.pop(key) == change.data, change


@pytest.mark.parametrize("filter_text", [None, "v=lt.5&s=neq.b", "amount=gte.0&f=is.null"])
async def test_snapshot_then_stream_reproduces_the_table(
    mariadb: PrivateMariaDB, filter_text: str | None
) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_live; CREATE DATABASE snap_live")
    mariadb.sql(WRITER_TABLE, "snap_live")
    flt = parse_filter(filter_text) if filter_text else None
    writer = Writer(mariadb, seed=len(filter_text or ""))
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.wait_for(writer.reached(30).wait(), 30)
        snap = await read_snapshot(url(mariadb), "snap_live", "t", flt, batch=7)
        started = writer.commits
        async with snap:
            rows = await all_rows(snap)
        # keep writing well past the snapshot, so the stream has work to do
        await asyncio.wait_for(writer.reached(started + 60).wait(), 30)
    finally:
        writer.stop = True
        await task
    assert all(flt is None or flt.matches(r) for r in rows)
    state = {r["id"]: r for r in rows}
    for change in changes_since(mariadb, snap.position, "snap_live"):
        apply(state, change, flt)
    async with await read_snapshot(url(mariadb), "snap_live", "t", flt) as final:
        expected = {r["id"]: r for r in await all_rows(final)}
    assert state == expected
    assert expected  # the test exercised something


# -- filters, batches, errors ---------------------------------------------------------------------


async def test_filter_and_batches(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_filter; CREATE DATABASE snap_filter")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(5), f FLOAT)", "snap_filter")
    values = ", ".join(f"({i}, '{'aA'[i % 2]}', {1.1 if i % 3 else 0.5})" for i in range(50))
    mariadb.sql(f"INSERT INTO t VALUES {values}", "snap_filter")
    async with await read_snapshot(url(mariadb), "snap_filter", "t", batch=7) as snap:
        batches = [b async for b in snap]
    assert [len(b) for b in batches] == [7] * 7 + [1]
    # s: exact case in SQL; f (FLOAT): not expressible in SQL exactly, decided by matches()
    flt = parse_filter("s=eq.a&f=eq.1.1")
    async with await read_snapshot(url(mariadb), "snap_filter", "t", flt, batch=4) as snap:
        rows = await all_rows(snap)
    assert [r["id"] for r in rows] == [i for i in range(50) if i % 2 == 0 and i % 3]
    assert all(r["f"] == 1.1 and r["s"] == "a" for r in rows)
    assert snap.rows_read == 25  # the SQL kept s=a only; Python dropped the f mismatches


KEYED_TABLES = {
    # composite key, case-insensitive collation (the seek must follow ORDER BY's order)
    "composite": (
        "CREATE TABLE composite (a VARCHAR(5), b INT, v INT, PRIMARY KEY (a, b))",
        [f"('{a}', {b}, {b})" for a in ["a", "B", "c", "é", "Z", ""] for b in range(-3, 4)],
    ),
    "temporal": (
        "CREATE TABLE temporal (at DATETIME(3), n DECIMAL(6,2), PRIMARY KEY (at, n))",
        [
            f"('2024-01-0{d} 00:00:0{s}.5', {n / 4})"
            for d in range(1, 4)
            for s in range(3)
            for n in range(-2, 3)
        ],
    ),
    "unkeyed": (
        "CREATE TABLE unkeyed (v INT, e ENUM('x','y'))",
        [f"({i % 5}, '{'xy'[i % 2]}')" for i in range(40)],
    ),
    "enum_key": (
        "CREATE TABLE enum_key (e ENUM('z','a'), PRIMARY KEY (e))",
        ["('z')", "('a')"],
    ),
}


@pytest.mark.parametrize("name", sorted(KEYED_TABLES))
@pytest.mark.parametrize("batch", [1, 3, 4, 1000])
async def test_pages_by_primary_key(mariadb: PrivateMariaDB, name: str, batch: int) -> None:
    create, rows = KEYED_TABLES[name]
    mariadb.sql("CREATE DATABASE IF NOT EXISTS snap_keys")
    mariadb.sql(f"DROP TABLE IF EXISTS {name}; {create}", "snap_keys")
    mariadb.sql(f"INSERT INTO {name} VALUES {', '.join(rows)}", "snap_keys")
    async with await read_snapshot(url(mariadb), "snap_keys", name, batch=batch) as snap:
        got = await all_rows(snap)
    # ENUM keys sort by index but compare by label: those tables are read in one stream
    assert snap.paged == (name in ("composite", "temporal"))
    assert len(got) == len(rows)
    assert len({tuple(r.values()) for r in got}) == len(rows) or name == "unkeyed"


async def test_paged_reads_stay_in_the_snapshot(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_pages; CREATE DATABASE snap_pages")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)", "snap_pages")
    mariadb.sql(
        "INSERT INTO t VALUES " + ", ".join(f"({i}, 0)" for i in range(0, 100, 2)), "snap_pages"
    )
    async with await read_snapshot(url(mariadb), "snap_pages", "t", batch=10) as snap:
        pages = aiter(snap)
        first = await anext(pages)
        # rows inserted between pages, before and after the seek point, and changed rows
        mariadb.sql("INSERT INTO t VALUES (1, 1), (51, 1), (99, 1)", "snap_pages")
        mariadb.sql(
            "UPDATE t SET v = 2 WHERE id IN (0, 60); DELETE FROM t WHERE id = 80", "snap_pages"
        )
        rest = [r async for page in pages for r in page]
    assert [r["id"] for r in first + rest] == list(range(0, 100, 2))
    assert all(r["v"] == 0 for r in first + rest)


async def test_close_ends_the_transaction(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS snap_close; CREATE DATABASE snap_close")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY)", "snap_close")
    mariadb.sql("INSERT INTO t VALUES " + ", ".join(f"({i})" for i in range(5000)), "snap_close")
    snap = await read_snapshot(url(mariadb), "snap_close", "t", batch=10)
    first = await anext(aiter(snap))
    assert len(first) == 10
    snap.close()
    # an open snapshot would hold the table's metadata lock and make this wait, then fail
    alter = "SET SESSION lock_wait_timeout = 5; ALTER TABLE t ADD COLUMN x INT"
    await asyncio.to_thread(mariadb.sql, alter, "snap_close")  # the loop runs: the socket closes


async def test_errors(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("CREATE DATABASE IF NOT EXISTS snap_err")
    mariadb.sql("CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY)", "snap_err")
    with pytest.raises(SnapshotError, match=r"no table snap_err\.nope"):
        await read_snapshot(url(mariadb), "snap_err", "nope")
    with pytest.raises(FilterError, match="no column 'x'"):
        await read_snapshot(url(mariadb), "snap_err", "t", parse_filter("x=eq.1"))
    with pytest.raises(ValueError, match="batch"):
        await read_snapshot(url(mariadb), "snap_err", "t", batch=0)
    bad = MySQLURL(host="127.0.0.1", port=1, user="root")
    with pytest.raises(SnapshotError, match="cannot connect"):
        await read_snapshot(bad, "snap_err", "t", timeout=2)


async def test_mysql_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = []

    class FakeCursor:
        async def __aenter__(self) -> FakeCursor:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def execute(self, sql: str, args: object = None) -> None:
            assert sql == "SELECT VERSION()"

        async def fetchone(self) -> tuple[str]:
            return ("8.0.36",)

    class FakeConnection:
        def cursor(self) -> FakeCursor:
            return FakeCursor()

        def close(self) -> None:
            closed.append(True)

    async def connect(**kwargs: object) -> FakeConnection:
        return FakeConnection()

    monkeypatch.setattr(asyncmy, "connect", connect)
    with pytest.raises(SnapshotUnsupported, match="FLUSH TABLES WITH READ LOCK"):
        await read_snapshot(MySQLURL(), "db", "t")
    assert closed == [True]


async def test_binlog_off_is_an_error(tmp_path: Any) -> None:
    db = PrivateMariaDB(tmp_path / "nolog", log_bin=False)
    db.start()
    try:
        db.sql("CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY)")
        with pytest.raises(SnapshotError, match="binary logging"):
            await read_snapshot(url(db), "d", "t")
    finally:
        db.stop()
