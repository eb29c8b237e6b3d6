"""Transactional NOTIFY for MySQL/MariaDB: an outbox table read back from the binlog.

Theory of operation. `tidings install-sql` creates a schema (default `tidings`)
holding an InnoDB table `outbox` and a procedure `notify(channel, payload)` that
checks its arguments and inserts one row. The insert is part of the caller's
transaction, so the binlog carries it exactly when, and where, the transaction
commits: the daemon sees outbox inserts among the other row changes, in commit
order, and publishes each as an event on its channel instead of as a row of
`tidings.outbox` (see `tidings.publish`). Nothing ever reads the table for
delivery; its rows only have to live until the binlog has carried them past the
daemon, after which `OutboxPurger` deletes them.

Rows have a `kind`:

    0 NOTIFY   from the procedure; published as {"type":"notify","payload":...}
               (the payload as JSON when it parses, else as a string)
    1 PUBLISH  a client's PUBLISH through `OutboxPublisher`; the payload is
               delivered byte for byte, as Redis does
    2 FENCE    written by the purger to learn how far delivery has got;
               never published

A process that waits for its own row (a PUBLISH waiting to reply with the
number of receivers, the purger waiting for its fence) puts a random `ref` in
it and registers a future under that ref with `Outbox.expect()`; the publish
mapping resolves it when the row goes by. Refs, not row ids: the future exists
before the row does, so the binlog can never beat the registration.

Purging never deletes an undelivered row. Each round reads the ids of committed
rows, then commits a fence row and waits until the daemon has published it. A
row visible to the read was written to the binlog before the fence (the server
writes a transaction to the binlog before making it visible), so once the fence
has gone by, every row read has been delivered, and exactly those ids are
deleted. Rows of transactions still open are neither read nor locked; a purge by
`id <= watermark` would instead wait on their locks and delete them before their
commit reached the binlog, since auto-increment ids are handed out in statement
order, not commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import sys
from binascii import Error as BinasciiError
from binascii import a2b_base64
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import asyncmy
import orjson

from tidings.source.url import MySQLURL

log = logging.getLogger("tidings.notify")

#: largest NOTIFY payload in bytes; the procedure refuses larger ones at call time
PAYLOAD_LIMIT = 65536
#: longest channel name in characters
CHANNEL_LIMIT = 255
NOTIFY, PUBLISH, FENCE = 0, 1, 2
#: bumped whenever the procedure's text changes; install-sql replaces older ones
PROCEDURE_VERSION = "tidings notify v1"
_REQUIRED_COLUMNS = {"id", "channel", "payload", "kind", "ref"}
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
# MySQL error codes
_NO_SUCH_TABLE = (1049, 1146)  # unknown database, unknown table
_ACCESS_DENIED = (1044, 1045, 1142, 1143, 1227, 1370)


class InstallError(Exception):
    """install-sql cannot proceed; the message says why and what to do."""


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"schema name {schema!r}: use 1 to 64 letters, digits, '_' or '$' "
            "(it is written unquoted into application SQL: CALL <schema>.notify(...))"
        )
    return schema


def check_channel(channel: str) -> str:
    if not channel or len(channel) > CHANNEL_LIMIT:
        raise ValueError(f"channel must be 1 to {CHANNEL_LIMIT} characters, not {len(channel)}")
    return channel


# -- the SQL ---------------------------------------------------------------------------------


def install_statements(schema: str = "tidings") -> tuple[list[str], str, str]:
    """(schema and table DDL, DROP PROCEDURE, CREATE PROCEDURE) for `schema`."""
    q = f"`{check_schema_name(schema)}`"
    tables = [
        f"CREATE DATABASE IF NOT EXISTS {q} CHARACTER SET utf8mb4",
        f"""CREATE TABLE IF NOT EXISTS {q}.`outbox` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `channel` VARCHAR({CHANNEL_LIMIT}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  `payload` MEDIUMBLOB NOT NULL,
  `kind` TINYINT UNSIGNED NOT NULL DEFAULT {NOTIFY}
    COMMENT '{NOTIFY} notify, {PUBLISH} client PUBLISH (raw payload), {FENCE} purge fence',
  `ref` BIGINT UNSIGNED NULL COMMENT 'set by a tidings process waiting for this row',
  `created` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (`id`),
  CONSTRAINT `notify_payload_limit`
    CHECK (`kind` <> {NOTIFY} OR LENGTH(`payload`) <= {PAYLOAD_LIMIT})
) ENGINE=InnoDB
  COMMENT='tidings NOTIFY outbox: rows reach subscribers through the binlog, then are purged'""",
    ]
    drop = f"DROP PROCEDURE IF EXISTS {q}.`notify`"
    # SIGNAL's MESSAGE_TEXT holds 128 characters: keep the messages short
    create = f"""CREATE PROCEDURE {q}.`notify`(
  IN p_channel TEXT CHARACTER SET utf8mb4, IN p_payload LONGTEXT CHARACTER SET utf8mb4)
  MODIFIES SQL DATA
  SQL SECURITY DEFINER
  COMMENT '{PROCEDURE_VERSION}: CALL {schema}.notify(channel, payload)'
BEGIN
  DECLARE msg VARCHAR(128);
  IF p_channel IS NULL OR CHAR_LENGTH(p_channel) NOT BETWEEN 1 AND {CHANNEL_LIMIT} THEN
    SET msg = CONCAT('tidings.notify: channel must be 1 to {CHANNEL_LIMIT} characters, not ',
                     COALESCE(CHAR_LENGTH(p_channel), 'NULL'));
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
  END IF;
  IF LENGTH(p_payload) > {PAYLOAD_LIMIT} THEN
    SET msg = CONCAT('tidings.notify: payload is ', LENGTH(p_payload),
                     ' bytes, over the limit of {PAYLOAD_LIMIT} bytes');
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
  END IF;
  INSERT INTO {q}.`outbox` (`channel`, `payload`, `kind`, `ref`)
    VALUES (p_channel, COALESCE(p_payload, ''), {NOTIFY}, NULL);
END"""
    return tables, drop, create


async def _connect(
    url: MySQLURL, timeout: float, init_command: str | None = None, database: str | None = None
) -> Any:
    return await asyncmy.connect(
        database=database,
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password,
        connect_timeout=timeout,
        autocommit=True,
        charset="utf8mb4",
        init_command=init_command,
    )


async def install(url: MySQLURL, schema: str = "tidings", *, timeout: float = 10.0) -> list[str]:
    """Create the schema, outbox table and procedure unless present; report what was done.

    Idempotent. The procedure is replaced only when an older version is installed
    (a DROP loses the EXECUTE grants given on it, so an unchanged one is kept).
    """
    tables, drop, create = install_statements(schema)
    done: list[str] = []
    conn = await _connect(url, timeout)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION sql_notes = 0")  # no 'already exists' notes
            for statement in tables:
                await cur.execute(statement)
            await cur.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME='outbox'",
                (schema,),
            )
            columns = {row[0] for row in await cur.fetchall()}
            missing = _REQUIRED_COLUMNS - columns
            if missing:
                raise InstallError(
                    f"`{schema}`.`outbox` exists without the column(s) {', '.join(sorted(missing))}"
                    f": it is not tidings' outbox table; choose another schema (--schema) or "
                    f"rename that table"
                )
            done.append(f"table `{schema}`.`outbox`: ready")
            await cur.execute(
                "SELECT ROUTINE_COMMENT FROM information_schema.ROUTINES WHERE "
                "ROUTINE_SCHEMA=%s AND ROUTINE_NAME='notify' AND ROUTINE_TYPE='PROCEDURE'",
                (schema,),
            )
            found = await cur.fetchall()
            if found and str(found[0][0]).startswith(PROCEDURE_VERSION + ":"):
                done.append(f"procedure `{schema}`.`notify`: already installed, kept")
            else:
                # a strict, known sql_mode is stored with the procedure
                await cur.execute(
                    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
                )
                await cur.execute(drop)
                await cur.execute(create)
                done.append(
                    f"procedure `{schema}`.`notify`: "
                    + ("replaced (give EXECUTE on it again)" if found else "created")
                )
    finally:
        conn.close()
    done += [
        "applications and triggers call it inside their transactions:",
        f"  CALL {schema}.notify('channel', 'payload');",
        "grant it to application users (it runs with its definer's rights):",
        f"  GRANT EXECUTE ON PROCEDURE {schema}.notify TO 'app'@'%';",
        "tidings' own user purges delivered rows (and writes client PUBLISH) there:",
        f"  GRANT SELECT, INSERT, DELETE ON {schema}.outbox TO 'tidings'@'%';",
    ]
    return done


# -- rows, as the binlog decoder hands them over ---------------------------------------------


@dataclass(slots=True, frozen=True)
class OutboxRow:
    kind: int
    channel: str
    payload: bytes
    ref: int | None


def decode_row(data: dict[str, Any]) -> OutboxRow:
    """An inserted outbox row as decoded from the binlog (BLOB payloads arrive as base64)."""
    payload = data.get("payload")
    if isinstance(payload, str):
        try:
            raw = a2b_base64(payload)
        except BinasciiError:  # not our BLOB column (an altered table): take the text
            raw = payload.encode()
    else:
        raw = b""
    kind = data.get("kind")
    ref = data.get("ref")
    return OutboxRow(
        kind if isinstance(kind, int) else NOTIFY,
        str(data.get("channel") or ""),
        raw,
        ref if isinstance(ref, int) else None,
    )


def payload_value(payload: bytes) -> Any:
    """A NOTIFY payload for the event JSON: the JSON value when it parses, else the text."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", "replace")


# -- the daemon's side ---------------------------------------------------------------------


class Outbox:
    """Where the outbox table is, and who waits for which of its rows."""

    __slots__ = ("_next_ref", "_waiters", "inserts_seen", "schema", "table", "wakeup")

    def __init__(self, schema: str = "tidings", table: str = "outbox") -> None:
        self.schema = check_schema_name(schema)
        self.table = table
        self._waiters: dict[int, asyncio.Future[int]] = {}
        # random start: refs of two tidings processes on one server do not meet
        self._next_ref = secrets.randbits(62) + 1
        #: outbox inserts the publish mapping has seen (any kind)
        self.inserts_seen = 0
        #: set by the mapping on every outbox insert: the purger has work
        self.wakeup = asyncio.Event()

    def expect(self) -> tuple[int, asyncio.Future[int]]:
        """A fresh ref and the future its row resolves (with the receivers) when published."""
        ref = self._next_ref
        self._next_ref = ref + 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[ref] = future
        return ref, future

    def waiting(self, ref: int) -> bool:
        return ref in self._waiters

    def forget(self, ref: int) -> None:
        self._waiters.pop(ref, None)

    def fail(self, ref: int, exc: BaseException) -> None:
        future = self._waiters.pop(ref, None)
        if future is not None and not future.done():
            future.set_exception(exc)

    def fail_all(self, exc: BaseException) -> None:
        """Every waiter gets `exc` (the rows can no longer be seen: the feed is gone)."""
        for ref in list(self._waiters):
            self.fail(ref, exc)

    def seen(self, ref: int | None, receivers: int) -> None:
        """The publish mapping went past an outbox row; resolve whoever waits for it."""
        self.inserts_seen += 1
        self.wakeup.set()
        if ref is not None and self._waiters:
            future = self._waiters.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(receivers)


class PublishError(Exception):
    """A client PUBLISH could not be written to the outbox."""


class OutboxPublisher:
    """Client PUBLISH through the outbox, so its id comes from the binlog like every other.

    `publish()` queues the message; one writer inserts everything queued in one
    multi-row INSERT (rows keep call order) and each caller returns once the
    daemon has published its row, with the number of receivers. Wrap a call in
    `asyncio.wait_for` to bound the wait: the row is then still delivered when
    the binlog catches up.
    """

    def __init__(
        self,
        url: MySQLURL,
        outbox: Outbox,
        *,
        max_payload: int = PAYLOAD_LIMIT,
        batch_rows: int = 256,
        batch_bytes: int = 1 << 20,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.outbox = outbox
        self.max_payload = max_payload
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.timeout = timeout
        self._queue: deque[tuple[str, bytes, int]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._last_used = 0.0
        self._closed = False
        self._table = f"`{outbox.schema}`.`{outbox.table}`"

    async def publish(self, channel: str, payload: bytes) -> int:
        """Insert a PUBLISH row; return its receivers once the daemon has published it."""
        if self._closed:
            raise PublishError("tidings is shutting down")
        check_channel(channel)
        channel.encode()  # a channel that is not UTF-8 cannot go into the table
        if len(payload) > self.max_payload:
            raise ValueError(f"payload is {len(payload)} bytes, over {self.max_payload}")
        ref, future = self.outbox.expect()
        self._queue.append((channel, payload, ref))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        try:
            return await future
        finally:
            self.outbox.forget(ref)

    async def _write(self) -> None:
        while self._queue:
            batch: list[tuple[str, bytes, int]] = []
            size = 0
            while self._queue and len(batch) < self.batch_rows and size < self.batch_bytes:
                item = self._queue.popleft()
                if self.outbox.waiting(item[2]):  # its caller may have given up already
                    batch.append(item)
                    size += len(item[1]) * 2 + len(item[0]) * 4
            if not batch:
                continue
            try:
                await self._insert(batch)
            except asyncio.CancelledError:  # close(): the rows may or may not be written
                for _, _, ref in batch:
                    self.outbox.fail(ref, PublishError("tidings is shutting down"))
                raise
            except Exception as exc:
                await self._drop()
                # after a timeout the rows may still commit, and then they are delivered
                error = PublishError(f"cannot write to {self._table}: {exc!r}")
                for _, _, ref in batch:
                    self.outbox.fail(ref, error)

    async def _insert(self, batch: list[tuple[str, bytes, int]]) -> None:
        loop = asyncio.get_running_loop()
        if self._conn is None:
            self._conn = await _connect(self.url, self.timeout)
        elif loop.time() - self._last_used > 30:  # idle: the server may have closed it
            await asyncio.wait_for(self._conn.ping(reconnect=True), self.timeout)
        values = ",".join([f"(%s,%s,{PUBLISH},%s)"] * len(batch))
        args = [x for channel, payload, ref in batch for x in (channel, payload, ref)]
        async with self._conn.cursor() as cur:
            await asyncio.wait_for(
                cur.execute(
                    f"INSERT INTO {self._table} (`channel`,`payload`,`kind`,`ref`) VALUES {values}",
                    args,
                ),
                self.timeout,
            )
        self._last_used = loop.time()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        error = PublishError("tidings is shutting down")
        while self._queue:
            self.outbox.fail(self._queue.popleft()[2], error)
        await self._drop()


def delete_statement(table: str, ids: Iterable[int]) -> str:
    """DELETE exactly the rows `ids` of `table`, each found by a unique key lookup.

    Not `id IN (...)`: on a small table the optimizer prefers a full scan, and a
    scan (like a range's read past its last row) waits on the lock of any row
    whose transaction is still open. Joined from a list of ids, in that order
    (STRAIGHT_JOIN), each row is looked up by its primary key and nothing else
    is touched.
    """
    listed = " UNION ALL ".join(f"SELECT {int(i)}" for i in sorted(set(ids)))
    return (
        f"DELETE o FROM (SELECT 0 AS id UNION ALL {listed}) AS d "
        f"STRAIGHT_JOIN {table} AS o ON o.`id` = d.id"
    )


class OutboxPurger:
    """Deletes delivered outbox rows in batches, never one the daemon has not published.

    `run()` until `close()`. Each round: read up to `batch` ids of committed rows,
    commit a fence row, wait until the daemon has published it, delete those ids
    and the fence. Rounds follow each other while full batches come back; then at
    most one per `interval`, and none while no outbox row goes by (the first waits
    for one). The table holds about `interval` seconds of NOTIFY traffic.
    """

    def __init__(
        self,
        url: MySQLURL,
        outbox: Outbox,
        *,
        batch: int = 1000,
        interval: float = 1.0,
        fence_timeout: float = 60.0,
        retry: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.outbox = outbox
        self.batch = batch
        self.interval = interval
        self.fence_timeout = fence_timeout
        self.retry = retry
        self.timeout = timeout
        self._conn: Any = None
        self._closed = asyncio.Event()
        self._table = f"`{outbox.schema}`.`{outbox.table}`"
        #: rows deleted so far, and rounds begun (with or without rows to delete)
        self.purged = 0
        self.rounds = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        # The first round waits for the first outbox row the daemon publishes: proof that
        # it reads the binlog, so the fence cannot land before the point it starts from
        # (a daemon starting at the binlog's end would never see it). Rows left from an
        # earlier run go with that round.
        await self._idle(0, wait_for_rows=True)
        while not self._closed.is_set():
            self.outbox.wakeup.clear()  # inserts seen from now on call for another round
            try:
                deleted = await self.purge_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._drop()
                if self._closed.is_set():
                    return  # close() dropped the connection under this round
                self._report(exc)
                await self._idle(self.retry, wait_for_rows=self._needs_rows(exc))
                continue
            self.last_error = None
            if deleted < self.batch:
                await self._idle(self.interval, wait_for_rows=True)

    async def purge_once(self) -> int:
        """One round; returns the number of rows deleted."""
        self.rounds += 1
        conn = await self._connection()
        async with conn.cursor() as cur:
            await self._run(cur, f"SELECT `id` FROM {self._table} ORDER BY `id` LIMIT {self.batch}")
            ids = [int(row[0]) for row in await cur.fetchall()]
            if not ids:
                return 0
            ref, fence = self.outbox.expect()
            try:
                await self._run(
                    cur,
                    f"INSERT INTO {self._table} (`channel`,`payload`,`kind`,`ref`) "
                    f"VALUES ('', '', {FENCE}, %s)",
                    (ref,),
                )
                ids.append(int(cur.lastrowid))
                # every row read above precedes the fence in the binlog
                await asyncio.wait_for(fence, self.fence_timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"the daemon did not publish the purge fence within {self.fence_timeout}s "
                    "(binlog far behind?); nothing deleted"
                ) from None
            finally:
                self.outbox.forget(ref)
            await self._run(cur, delete_statement(self._table, ids))
            deleted = int(cur.rowcount)
        self.purged += deleted
        return deleted

    async def _run(self, cur: Any, sql: str, args: Any = None) -> None:
        await asyncio.wait_for(cur.execute(sql, args), self.timeout)

    async def _connection(self) -> Any:
        if self._conn is None:
            # READ COMMITTED: deletes take no gap locks that would hold up new inserts
            conn = await _connect(
                self.url,
                self.timeout,
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                database=self.outbox.schema,  # MariaDB resolves DELETE's alias in it
            )
            try:  # deletes need only the key in the binlog; not every user may change this
                async with conn.cursor() as cur:
                    await cur.execute("SET SESSION binlog_row_image = 'MINIMAL'")
            except asyncmy.errors.MySQLError as exc:
                log.debug("purging with the server's binlog_row_image: %s", exc)
            self._conn = conn
        return self._conn

    def _needs_rows(self, exc: Exception) -> bool:
        # no table yet, or no rights: nothing to do until outbox rows show up at all
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        return code in _NO_SUCH_TABLE or code in _ACCESS_DENIED

    def _report(self, exc: Exception) -> None:
        message = str(exc) or f"{type(exc).__name__} (after {self.timeout}s?)"
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _NO_SUCH_TABLE:
            message = (
                f"no {self._table} table (run `tidings install-sql`): nothing to purge; "
                "checking again when NOTIFY rows show up"
            )
        elif code in _ACCESS_DENIED:
            message = (
                f"cannot purge {self._table} as {self.url.user!r} ({exc}): "
                f"GRANT SELECT, INSERT, DELETE ON {self.outbox.schema}.{self.outbox.table} "
                f"TO that user"
            )
        if message != self.last_error:
            (log.info if code in _NO_SUCH_TABLE else log.warning)("outbox purge: %s", message)
        self.last_error = message

    async def _idle(self, seconds: float, *, wait_for_rows: bool) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), seconds)
        if wait_for_rows and not self._closed.is_set():
            waits = [
                asyncio.ensure_future(self._closed.wait()),
                asyncio.ensure_future(self.outbox.wakeup.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def close(self) -> None:
        self._closed.set()
        await self._drop()


# -- the install-sql command ------------------------------------------------------------------


def install_script(schema: str = "tidings") -> str:
    """The install SQL as a script for the mysql/mariadb client (replaces the procedure)."""
    tables, drop, create = install_statements(schema)
    return ";\n\n".join([*tables, drop]) + ";\n\nDELIMITER $$\n" + create + "$$\nDELIMITER ;\n"


async def install_main(url_text: str, schema: str, out: TextIO, *, print_only: bool) -> int:
    """`tidings install-sql`: 0 when installed (or printed), 1 on a server error."""
    if print_only:
        out.write(install_script(schema))
        return 0
    url = MySQLURL.parse(url_text)
    try:
        lines = await install(url, schema)
    except InstallError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 1
    except (asyncmy.errors.MySQLError, OSError) as exc:
        print(f"tidings: cannot install on {url.redacted()}: {exc}", file=sys.stderr)
        return 1
    out.write("\n".join(lines) + "\n")
    return 0
