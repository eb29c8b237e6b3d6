"""Schema facts the binlog does not carry, looked up on an ordinary connection.

The binlog (with binlog_row_metadata=FULL) names every column, but MariaDB's
JSON type is LONGTEXT with a `CHECK (json_valid(col))` constraint, invisible
in the binlog; and a server without FULL metadata sends no names at all. The
decoder asks for a table's `TableInfo` once per table map id; this module
answers from information_schema over an asyncmy connection (the event loop
never blocks on MySQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import asyncmy

from tidings.source.binlog import TableInfo
from tidings.source.url import MySQLURL

log = logging.getLogger("tidings.source.schema")

_JSON_CHECK = re.compile(r"^\s*json_valid\(`((?:[^`]|``)+)`\)\s*$", re.IGNORECASE)


def json_columns_from_checks(clauses: list[str]) -> frozenset[str]:
    """Columns guarded by MariaDB's `json_valid(`col`)` check: its JSON type."""
    found = set()
    for clause in clauses:
        match = _JSON_CHECK.match(clause)
        if match:
            found.add(match[1].replace("``", "`"))
    return frozenset(found)


class SchemaLookup:
    """Answers TableInfo requests; one lazily (re)opened connection, one query at a time."""

    def __init__(self, url: MySQLURL, *, timeout: float = 10.0) -> None:
        self._url = url
        self._timeout = timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def table_info(self, database: str, table: str) -> TableInfo | None:
        async with self._lock:
            for attempt in (1, 2):  # a stale connection gets one fresh retry
                try:
                    return await asyncio.wait_for(self._lookup(database, table), self._timeout)
                except (TimeoutError, OSError, asyncmy.errors.OperationalError) as exc:
                    await self.close()
                    if attempt == 2:
                        log.warning("schema lookup for %s.%s failed: %s", database, table, exc)
                        raise
        return None

    async def _lookup(self, database: str, table: str) -> TableInfo | None:
        if self._conn is None:
            self._conn = await asyncmy.connect(
                host=self._url.host,
                port=self._url.port,
                user=self._url.user,
                password=self._url.password,
                connect_timeout=self._timeout,
                autocommit=True,
            )
        async with self._conn.cursor() as cur:
            await cur.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s ORDER BY ORDINAL_POSITION",
                (database, table),
            )
            columns = tuple(row[0] for row in await cur.fetchall())
            if not columns:
                return None  # dropped since: the decoder falls back to its own defaults
            clauses: list[str] = []
            try:
                await cur.execute(
                    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                    "WHERE CONSTRAINT_SCHEMA=%s AND TABLE_NAME=%s",
                    (database, table),
                )
                clauses = [row[0] for row in await cur.fetchall()]
            except asyncmy.errors.MySQLError:
                pass  # MySQL: no TABLE_NAME there, and its JSON is a binlog type of its own
        return TableInfo(columns=columns, json_columns=json_columns_from_checks(clauses))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # closing a broken connection must not mask the real error
            with contextlib.suppress(Exception):
                conn.close()
