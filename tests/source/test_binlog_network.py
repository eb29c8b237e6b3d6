"""The decoder on a live replica stream: the same transactions as from the binlog file.

A replica connection sees events the file does not hold (the artificial ROTATE,
a FORMAT_DESCRIPTION with log_pos 0, MariaDB's fake GTID_LIST, heartbeats) and
starts mid-file or from a GTID; positions must come out right all the same.
"""

from __future__ import annotations

import asyncio

from tests.source.test_binlog_golden import Follower, master_status, table_info
from tidings.sandbox import PrivateMariaDB
from tidings.source.binlog import BinlogDecoder, TableInfoRequest
from tidings.source.changes import Position, Transaction
from tidings.source.connection import MySQLConnection
from tidings.source.url import MySQLURL


async def stream(
    db: PrivateMariaDB, start: Position, server_id: int, until: Position
) -> list[Transaction]:
    """Decode the replica stream from `start` until the decoder reaches `until`."""
    conn = await MySQLConnection.connect(MySQLURL.parse(db.url()))
    decoder = BinlogDecoder(start)
    out: list[Transaction] = []
    try:
        await conn.start_binlog(server_id=server_id, position=start, heartbeat=0.2)
        async with asyncio.timeout(30):
            while decoder.position.pos != until.pos or decoder.position.file != until.file:
                event = await conn.next_event()
                assert event is not None
                result = decoder.feed(event)
                if isinstance(result, TableInfoRequest):
                    decoder.provide_table_info(result, table_info(db, result))
                elif result is not None:
                    out.append(result)
    finally:
        conn.close()
    return out


async def test_network_stream_matches_the_file(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS net; CREATE DATABASE net")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, s TEXT, j JSON, n DECIMAL(8,3))", "net")
    follower = Follower(mariadb)
    start = follower.decoder.position
    mariadb.sql(
        "INSERT INTO t VALUES (1, 'a', '{\"k\": 1}', -1.5), (2, 'b', NULL, 0);"
        "UPDATE t SET s = 'c' WHERE id = 2; DELETE FROM t WHERE id = 1;"
        "ALTER TABLE t ADD COLUMN z INT; INSERT INTO t VALUES (3, 'd', '[]', 9.999, 4)",
        "net",
    )
    expected = follower.transactions()
    end = Position(*master_status(mariadb))
    assert expected[-1].position == end
    by_file = await stream(mariadb, Position(start.file, start.pos), replica_server_id, end)
    by_gtid = await stream(mariadb, Position("", 4, start.gtid), replica_server_id, end)
    for got in (by_file, by_gtid):
        assert [(t.changes, t.ddl, t.gtid, t.xid) for t in got] == [
            (t.changes, t.ddl, t.gtid, t.xid) for t in expected
        ]
    assert [t.position for t in by_gtid] == [t.position for t in expected]
    assert by_gtid[-1].position == end
    # from file:pos with no GTID given, the state cannot be known: only file:pos is set
    assert [t.position for t in by_file] == [
        Position(t.position.file, t.position.pos) for t in expected
    ]
