"""Binlog decoding throughput: tidings' BinlogDecoder beside the pure-Python anchors.

Generates N row changes (60% inserts, 30% updates, 10% deletes) on a table of a
dozen mixed columns in a private MariaDB, then:

- tidings: decodes the binlog file's events (already in memory) with BinlogDecoder,
  then the same fed from the file, then from tidings' own replica connection;
- python-mysql-replication: BinLogStreamReader over a replica connection to the same
  server, from the start, until N rows, every value materialised;
- asyncmy.replication: BinLogStream likewise.

The anchors include their network reads (from localhost): compare them with the
"network" tidings line; the first line is the decoder alone.
Each figure is the median of 3 runs, on one core (single-threaded).

    .venv/bin/python bench/binlog_decode.py [--rows 200000] [--skip-anchors]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidings.sandbox import PrivateMariaDB
from tidings.source.binlog import BinlogDecoder, TableInfo, TableInfoRequest
from tidings.source.binlog.binlogfile import BinlogTail
from tidings.source.changes import Position

TABLE = """
CREATE TABLE orders (
  id BIGINT UNSIGNED PRIMARY KEY,
  user_id INT NOT NULL,
  status ENUM('new','paid','shipped','cancelled') NOT NULL,
  price DECIMAL(10,2) NOT NULL,
  qty SMALLINT NOT NULL,
  score DOUBLE,
  name VARCHAR(64) NOT NULL,
  email VARCHAR(128),
  created_at DATETIME(6) NOT NULL,
  updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  note TEXT,
  active TINYINT(1) NOT NULL
)
"""

COLUMNS = (
    "id",
    "user_id",
    "status",
    "price",
    "qty",
    "score",
    "name",
    "email",
    "created_at",
    "updated_at",
    "note",
    "active",
)

BATCH = 1000


def generate(db: PrivateMariaDB, rows: int) -> None:
    """`rows` row changes: inserts, then updates and deletes, in transactions of BATCH rows."""
    db.sql("CREATE DATABASE bench")
    db.sql(TABLE, "bench")
    inserts = rows * 6 // 10
    updates = rows * 3 // 10
    deletes = rows - inserts - updates
    script = []
    for lo in range(1, inserts + 1, BATCH):
        hi = min(lo + BATCH - 1, inserts)
        script.append(
            "INSERT INTO orders SELECT seq, seq % 5000, 1 + seq % 4, (seq % 100000) / 100,"
            " seq % 30, seq / 7, CONCAT('customer ', seq), CONCAT('user', seq, '@example.com'),"
            " '2024-05-06 07:08:09.123456' + INTERVAL seq SECOND, NOW(),"
            " IF(seq % 3 = 0, NULL, 'a short note about the order'), seq % 2"
            f" FROM seq_{lo}_to_{hi};"
        )
    for lo in range(1, updates + 1, BATCH):
        hi = min(lo + BATCH - 1, updates)
        script.append(
            "UPDATE orders SET status = 'shipped', qty = qty + 1, note = 'updated'"
            f" WHERE id BETWEEN {lo} AND {hi};"
        )
    for lo in range(inserts - deletes + 1, inserts + 1, BATCH):
        hi = min(lo + BATCH - 1, inserts)
        script.append(f"DELETE FROM orders WHERE id BETWEEN {lo} AND {hi};")
    db.sql("\n".join(script), "bench")


def median_rate(runs: int, fn: Callable[[], int]) -> tuple[float, int]:
    rates = []
    count = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        count = fn()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates), count


def tidings_decode(events: list[bytes], rows: int) -> int:
    decoder = BinlogDecoder(Position("binlog.000001", 4))
    info = TableInfo(COLUMNS, frozenset())
    feed = decoder.feed
    n = 0
    for event in events:
        result = feed(event)
        if result is None:
            continue
        if isinstance(result, TableInfoRequest):
            decoder.provide_table_info(result, info)
        else:
            n += len(result.changes)
    if n != rows:
        raise SystemExit(f"tidings decoded {n} rows, expected {rows}")
    return n


def tidings_file(db: PrivateMariaDB, rows: int) -> int:
    return tidings_decode(BinlogTail(db.datadir, "binlog.000001").read(), rows)


def tidings_network(db: PrivateMariaDB, rows: int, server_id: int) -> int:
    """tidings' own replica connection (tidings.source.connection) feeding the decoder."""
    from tidings.source.connection import MySQLConnection
    from tidings.source.url import MySQLURL

    async def run() -> int:
        conn = await MySQLConnection.connect(MySQLURL.parse(db.url()))
        start = Position("binlog.000001", 4)
        decoder = BinlogDecoder(start)
        info = TableInfo(COLUMNS, frozenset())
        n = 0
        try:
            await conn.start_binlog(server_id=server_id, position=start)
            while n < rows:
                event = await conn.next_event()
                if event is None:
                    break
                result = decoder.feed(event)
                if isinstance(result, TableInfoRequest):
                    decoder.provide_table_info(result, info)
                elif result is not None:
                    n += len(result.changes)
        finally:
            conn.close()
        return n

    return asyncio.run(run())


def pymysqlreplication_read(db: PrivateMariaDB, rows: int, server_id: int) -> int:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": db.port, "user": "root", "passwd": ""},
        server_id=server_id,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        only_schemas=["bench"],
        is_mariadb=True,
        blocking=True,
        log_file="binlog.000001",
        log_pos=4,
        resume_stream=True,
        enable_logging=False,
    )
    n = 0
    sink: list[Any] = []
    try:
        for event in stream:
            for row in event.rows:  # materialise every value
                sink.append(row)
                n += 1
            sink.clear()
            if n >= rows:
                break
    finally:
        stream.close()
    return n


def asyncmy_read(db: PrivateMariaDB, rows: int, server_id: int) -> int:
    from asyncmy import connect
    from asyncmy.replication.binlogstream import BinLogStream
    from asyncmy.replication.row_events import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    async def run() -> int:
        conn = await connect(host="127.0.0.1", port=db.port, user="root", password="")
        ctl = await connect(host="127.0.0.1", port=db.port, user="root", password="")
        stream = BinLogStream(
            conn,
            ctl,
            server_id=server_id,
            master_log_file="binlog.000001",
            master_log_position=4,
            resume_stream=True,
            blocking=True,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
            only_schemas=["bench"],
        )
        n = 0
        sink: list[Any] = []
        async for event in stream:
            for row in event.rows:
                sink.append(row)
                n += 1
            sink.clear()
            if n >= rows:
                break
        conn.close()
        ctl.close()
        return n

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-anchors", action="store_true")
    args = parser.parse_args()
    rows: int = args.rows

    with tempfile.TemporaryDirectory() as tmp, PrivateMariaDB(Path(tmp) / "db") as db:
        t0 = time.perf_counter()
        generate(db, rows)
        print(f"generated {rows} row changes in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        events = BinlogTail(db.datadir, "binlog.000001").read()
        size = sum(map(len, events))
        print(f"binlog: {len(events)} events, {size / 1e6:.1f} MB", file=sys.stderr)

        results: list[tuple[str, float | None, str]] = []
        rate, _ = median_rate(args.runs, lambda: tidings_decode(events, rows))
        results.append(("tidings BinlogDecoder (events in memory)", rate, ""))
        rate, _ = median_rate(args.runs, lambda: tidings_file(db, rows))
        results.append(("tidings BinlogDecoder + file read/split", rate, ""))
        ids = iter(range(1000, 2000))
        rate, _ = median_rate(args.runs, lambda: tidings_network(db, rows, next(ids)))
        results.append(("tidings connection + BinlogDecoder (network)", rate, ""))
        if not args.skip_anchors:
            anchors: list[tuple[str, Callable[[], int]]] = [
                (
                    "python-mysql-replication (network)",
                    lambda: pymysqlreplication_read(db, rows, next(ids)),
                ),
                ("asyncmy.replication (network)", lambda: asyncmy_read(db, rows, next(ids))),
            ]
            for name, fn in anchors:
                try:
                    rate, n = median_rate(args.runs, fn)
                    results.append((name, rate, "" if n >= rows else f"only {n} rows"))
                except Exception as e:  # an anchor failing must not hide the others
                    results.append((name, None, f"failed: {e!r}"[:80]))

    base = results[0][1] or 1.0
    print(f"\nbinlog decode, {rows} row changes, 12 columns, median of {args.runs}")
    print(f"{'implementation':44} {'rows/s':>10} {'vs tidings':>10}")
    for name, measured, note in results:
        if measured is None:
            print(f"{name:44} {'-':>10} {'-':>10}  {note}")
        else:
            print(f"{name:44} {measured:10,.0f} {measured / base:10.2f}x  {note}".rstrip())


if __name__ == "__main__":
    main()
