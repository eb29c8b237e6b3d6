"""Consistent snapshot of a table's rows, and the binlog position it reflects.

Theory of operation. A client that wants "the current rows, then every change"
needs both halves to meet exactly: no change between them, none twice. MariaDB
gives that pairing directly: `START TRANSACTION WITH CONSISTENT SNAPSHOT` opens
an InnoDB read view and, in the same step, records the binlog coordinate of the
last transaction the view contains, readable as the status variables
`binlog_snapshot_file` / `binlog_snapshot_position`. Every transaction committed
after that coordinate is invisible to the snapshot and comes after it in the
binlog, so streaming from `Snapshot.position` completes the snapshot.

The rows are read in pages of `batch` rows by primary key (`WHERE key > last
ORDER BY key LIMIT batch`), every page in the same transaction and so the same
read view: memory stays bounded by `batch` however slowly the rows are taken.
(asyncmy's unbuffered cursor would not do: it reads ahead without flow control,
so a slow consumer lets the whole result pile up in its buffer.) A table without
a primary key of simple types is read as one streaming query instead. The
transaction stays open until the last batch or `close()`. Each value is formatted
exactly as the binlog decoder formats it (`tidings.source.binlog`), so a
snapshot row equals the `data` an insert event of the same row would carry:
the SELECT list asks the server for lossless text (FLOAT through DOUBLE, the
session in UTC for TIMESTAMP) and `_formatter()` turns each column's text or
bytes into the decoder's JSON value.

The filter's `to_sql()` narrows the scan on the server; every row is then
checked with `RowFilter.matches()`, so the snapshot holds exactly the rows the
stream's filter would deliver, even for conditions SQL cannot express exactly.

MySQL has no `binlog_snapshot_*`: pairing a read view with a binlog position
there takes a global read lock (`FLUSH TABLES WITH READ LOCK`, needing RELOAD),
then `START TRANSACTION WITH CONSISTENT SNAPSHOT`, `SHOW MASTER STATUS`
(`SHOW BINARY LOG STATUS` on 8.4) and `UNLOCK TABLES`, which stalls every
writer for the duration. tidings does not take that lock silently: a MySQL
server gets `SnapshotUnsupported`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import asyncmy
import orjson
from asyncmy import converters
from asyncmy.cursors import SSCursor

from tidings.hub.filters import RowFilter, quote_identifier
from tidings.source.binlog.values import base64, float32
from tidings.source.changes import Position
from tidings.source.schema import json_columns_from_checks
from tidings.source.url import MySQLURL

log = logging.getLogger(__name__)

__all__ = [
    "Snapshot",
    "SnapshotError",
    "SnapshotUnsupported",
    "read_snapshot",
]

# ER_TABLE_DEF_CHANGED: the table was altered after the snapshot began
_TABLE_DEF_CHANGED = 1412


class SnapshotError(RuntimeError):
    """The snapshot could not be taken or read; the message says why."""


class SnapshotUnsupported(SnapshotError):
    """The server cannot pair a consistent snapshot with a binlog position (MySQL)."""


MYSQL_UNSUPPORTED = (
    "consistent snapshots need MariaDB: MySQL has no binlog_snapshot_file/position, so "
    "pairing a snapshot with a binlog position would take FLUSH TABLES WITH READ LOCK "
    "(RELOAD privilege; it blocks every writer) around START TRANSACTION WITH CONSISTENT "
    "SNAPSHOT and SHOW MASTER STATUS; tidings does not do that yet"
)

# The decoder's formats, from the text protocol: numbers and dates arrive as ASCII str,
# character data as str in the connection's utf8mb4, binary data as bytes.
Formatter = Callable[[Any], Any]


def _int(text: str) -> int:
    return int(text)


def _bit(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _double(text: str) -> float:
    return float(text)


def _float(text: str) -> float:
    # selected as CAST(col AS DOUBLE): the float's exact value, then its shortest spelling
    return float32(float(text))


def _datetime(text: str) -> str:
    return text.replace(" ", "T")


def _timestamp(text: str) -> str:
    return text.replace(" ", "T") + "Z"


def _set(text: str) -> list[str]:
    return text.split(",") if text else []


def _json(text: str | bytes) -> Any:
    # as the decoder's MariaDB JSON (LONGTEXT) reader: text that is not JSON stays a string
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _binary(data: bytes | str) -> str:
    return base64(data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape"))


def _geometry(data: bytes) -> str:
    return base64(data[4:])  # the 4-byte SRID the server stores before the WKB, as the decoder


def _text(value: str | bytes) -> Any:
    return value if isinstance(value, str) else base64(value)


_INTS = ("tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year")
_BLOBS = ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob")
_GEOMETRY = (
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
)
_TEXTS = ("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum")
_PLAIN = ("decimal", "numeric", "date", "time")  # the server's text is the decoder's text


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    #: information_schema DATA_TYPE, lower case; "json" for MariaDB's JSON (LONGTEXT)
    data_type: str

    def select(self) -> str:
        """The SELECT expression giving a lossless text of the value."""
        col = quote_identifier(self.name)
        if self.data_type == "float":
            return f"CAST({col} AS DOUBLE)"  # FLOAT's own text has 6 digits
        return col

    def formatter(self) -> Formatter | None:
        """Text -> the decoder's JSON value; None when the text is already that value."""
        t = self.data_type
        if t in _INTS:
            return _int
        if t in _TEXTS or t in _PLAIN:
            return None
        found: Formatter = _FORMATTERS.get(t, _text)
        return found


_FORMATTERS: dict[str, Formatter] = {
    "bit": _bit,
    "double": _double,
    "real": _double,
    "float": _float,
    "datetime": _datetime,
    "timestamp": _timestamp,
    "set": _set,
    "json": _json,
    **dict.fromkeys(_BLOBS, _binary),
    **dict.fromkeys(_GEOMETRY, _geometry),
}


def format_rows(
    rows: list[tuple[Any, ...]],
    names: tuple[str, ...],
    formatters: tuple[Formatter | None, ...],
) -> list[dict[str, Any]]:
    """Result rows (text protocol values) -> dicts of the decoder's JSON values."""
    plan = [(i, name, fmt) for i, (name, fmt) in enumerate(zip(names, formatters, strict=True))]
    out = []
    for row in rows:
        record: dict[str, Any] = {}
        for i, name, fmt in plan:
            value = row[i]
            record[name] = value if value is None or fmt is None else fmt(value)
        out.append(record)
    return out


# encoders only: result values stay text/bytes (the decoders would lose fractions and zero dates)
_ENCODERS = {k: v for k, v in converters.conversions.items() if not isinstance(k, int)}

# key column types whose text round-trips as a parameter and whose `>` agrees with ORDER BY
# (ENUM sorts by index but compares by label; FLOAT/BIT/JSON text does not round-trip)
_SEEKABLE = frozenset(
    {*_INTS, "decimal", "numeric", "char", "varchar", "binary", "varbinary"}
    | {"date", "datetime", "timestamp", "time", "double", "real"}
)


@dataclass(frozen=True, slots=True)
class _Query:
    """How the rows are read: pages by key when the table has a usable one, else a stream."""

    select: str
    where: str
    params: tuple[Any, ...]
    #: positions (in the select list) and names of the key columns; empty: no usable key
    key: tuple[tuple[int, str], ...]

    def page(self, after: tuple[Any, ...] | None, limit: int) -> tuple[str, list[Any]]:
        """The next page: rows after the key values `after`, in key order."""
        where, params = self.where, list(self.params)
        if after is not None:
            # (a, b) > (x, y) spelled out, which MariaDB turns into an index range
            names = [quote_identifier(name) for _, name in self.key]
            ors = []
            for i, name in enumerate(names):
                equal = [f"{n} = %s" for n in names[:i]]
                ors.append("(" + " AND ".join([*equal, f"{name} > %s"]) + ")")
                params.extend(after[: i + 1])
            where = f"({where}) AND ({' OR '.join(ors)})"
        order = ", ".join(quote_identifier(name) for _, name in self.key)
        return f"{self.select} WHERE {where} ORDER BY {order} LIMIT {limit}", params

    def after(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(row[i] for i, _ in self.key)


class Snapshot:
    """An open snapshot: `position`, then `async for batch in snapshot` (lists of row dicts).

    Holds a transaction open on its own connection until the rows are exhausted or
    `close()` is called; use it as an async context manager to be sure.
    """

    __slots__ = (
        "_conn",
        "_done",
        "_filter",
        "_formatters",
        "_query",
        "batch",
        "columns",
        "database",
        "paged",
        "position",
        "rows_read",
        "table",
    )

    def __init__(
        self,
        conn: Any,
        query: _Query,
        position: Position,
        database: str,
        table: str,
        columns: tuple[ColumnInfo, ...],
        row_filter: RowFilter | None,
        batch: int,
    ) -> None:
        self._conn = conn
        self._query = query
        #: the binlog position the rows reflect: stream from here to continue them
        self.position = position
        self.database = database
        self.table = table
        self.columns = tuple(c.name for c in columns)
        self._formatters = tuple(c.formatter() for c in columns)
        self._filter = row_filter
        self.batch = batch
        #: True when rows are read in pages by primary key (memory bounded by `batch`)
        self.paged = bool(query.key)
        self.rows_read = 0
        self._done = False

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        return self.batches()

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Each batch holds at most `batch` rows (fewer when the filter drops some)."""
        try:
            async for raw in self._raw_pages():
                self.rows_read += len(raw)
                rows = format_rows(raw, self.columns, self._formatters)
                if self._filter is not None:
                    test = self._filter.matches
                    rows = [r for r in rows if test(r)]
                if rows:
                    yield rows
            await self._finish()
        finally:
            self.close()

    async def _raw_pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        query, batch = self._query, self.batch
        try:
            if query.key:
                # one bounded query per page, all in the snapshot's read view
                after = None
                while not self._done:
                    sql, params = query.page(after, batch)
                    async with self._conn.cursor() as cur:
                        await cur.execute(sql, params)
                        rows = list(await cur.fetchall())
                    if rows:
                        yield rows
                    if len(rows) < batch:
                        return
                    after = query.after(rows[-1])
                return
            # no usable key: one streaming query. asyncmy reads ahead without flow control,
            # so a consumer slower than the server lets the unread rows pile up client-side
            cursor = self._conn.cursor(SSCursor)
            await cursor.execute(f"{query.select} WHERE {query.where}", list(query.params))
            while not self._done:
                rows = await cursor.fetchmany(batch)
                if not rows:
                    return
                yield rows
        except asyncmy.errors.MySQLError as exc:
            raise _snapshot_error(exc, self.database, self.table) from exc

    async def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception):  # the rows are read; ending politely is a courtesy
            async with self._conn.cursor() as cur:
                await cur.execute("COMMIT")

    def close(self) -> None:
        """Drop the connection (and the transaction) at once, rows read or not."""
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def __aenter__(self) -> Snapshot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Snapshot({self.database}.{self.table} at {self.position})"


def _snapshot_error(exc: Exception, database: str, table: str) -> SnapshotError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    if code == _TABLE_DEF_CHANGED:
        return SnapshotError(
            f"{database}.{table} was altered while its snapshot was being taken: try again"
        )
    return SnapshotError(f"reading a snapshot of {database}.{table} failed: {exc}")


async def read_snapshot(
    url: MySQLURL,
    database: str,
    table: str,
    row_filter: RowFilter | None = None,
    *,
    batch: int = 1000,
    timeout: float = 10.0,
) -> Snapshot:
    """Open a consistent snapshot of `database.table` (rows matching `row_filter`).

    Returns once the snapshot is taken: `Snapshot.position` is known and the rows
    stream as you iterate. Raises `SnapshotUnsupported` on MySQL, `SnapshotError`
    when the table is missing, binary logging is off or the query fails, and
    `FilterError` when the filter names a column the table does not have.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    try:
        conn = await asyncmy.connect(
            host=url.host,
            port=url.port,
            user=url.user,
            password=url.password,
            connect_timeout=timeout,
            charset="utf8mb4",
            autocommit=True,
            conv=_ENCODERS,
        )
    except (OSError, asyncmy.errors.MySQLError) as exc:
        raise SnapshotError(f"cannot connect to {url.redacted()}: {exc}") from exc
    try:
        return await _open(conn, database, table, row_filter, batch)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise


async def _open(
    conn: Any, database: str, table: str, row_filter: RowFilter | None, batch: int
) -> Snapshot:
    async with conn.cursor() as cur:
        await cur.execute("SELECT VERSION()")
        (version,) = await cur.fetchone()
        if "mariadb" not in str(version).lower():
            raise SnapshotUnsupported(MYSQL_UNSUPPORTED)
        # UTC: TIMESTAMP text then matches the decoder's (which reads seconds since the epoch)
        await cur.execute("SET SESSION time_zone = '+00:00'")
        await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        await cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {name.lower(): value for name, value in await cur.fetchall()}
        file = status.get("binlog_snapshot_file") or ""
        pos = status.get("binlog_snapshot_position") or ""
        if not file or not str(pos).isdigit():
            raise SnapshotError(
                "the server reports no binlog snapshot position: is binary logging on "
                "(log-bin, binlog_format=ROW)?"
            )
        await cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, int(pos)))
        (gtid,) = await cur.fetchone()
        position = Position(file, int(pos), str(gtid) if gtid else None)
        # read after the snapshot began: an ALTER racing with us then fails the SELECT
        # (ER_TABLE_DEF_CHANGED) instead of leaving these names out of step with the rows
        columns = await _columns(cur, database, table)
        key = await _primary_key(cur, database, table)
    types = {c.name: c.data_type for c in columns}
    where, params = ("TRUE", []) if row_filter is None else row_filter.to_sql(types)
    select = ", ".join(c.select() for c in columns)
    source = f"{quote_identifier(database)}.{quote_identifier(table)}"
    index = {c.name: i for i, c in enumerate(columns)}
    usable = bool(key) and all(types[name] in _SEEKABLE for name in key)
    if not usable:
        log.warning(
            "%s.%s has no primary key of simple types: its snapshot is one streaming query, "
            "and rows a slow reader has not taken yet are held in memory",
            database,
            table,
        )
    query = _Query(
        select=f"SELECT {select} FROM {source}",
        where=where,
        params=tuple(params),
        key=tuple((index[name], name) for name in key) if usable else (),
    )
    log.debug("snapshot of %s.%s at %s", database, table, position)
    return Snapshot(conn, query, position, database, table, columns, row_filter, batch)


async def _primary_key(cur: Any, database: str, table: str) -> tuple[str, ...]:
    await cur.execute(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' "
        "ORDER BY SEQ_IN_INDEX",
        (database, table),
    )
    return tuple(str(name) for (name,) in await cur.fetchall())


async def _columns(cur: Any, database: str, table: str) -> tuple[ColumnInfo, ...]:
    await cur.execute(
        "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    found = [(str(name), str(data_type).lower()) for name, data_type in await cur.fetchall()]
    if not found:
        raise SnapshotError(f"no table {database}.{table}")
    await cur.execute(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
        (database, table),
    )
    json = json_columns_from_checks([str(clause) for (clause,) in await cur.fetchall()])
    return tuple(
        ColumnInfo(name, "json" if name in json and t in _TEXTS else t) for name, t in found
    )
