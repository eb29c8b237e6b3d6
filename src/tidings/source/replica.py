"""The resilient replica: committed transactions, forever, across server restarts.

Theory of operation. `Replica.transactions()` is one async generator that owns
one binlog connection at a time and one decoder for its whole life. It reads
events, feeds them to the decoder, answers the decoder's table-info requests
and yields each `Transaction` the decoder completes. Just before yielding, it
records the transaction's `position`: the resume point, so after a reconnect
nothing already yielded is yielded again and nothing after it is skipped.

When the stream breaks (reset, EOF, server shutdown or crash, or silence for
three heartbeat periods, which the connection's idle watchdog turns into an
error) it logs once, closes the connection, waits with capped exponential
backoff and jitter, reconnects, calls `decoder.reset(position)` to drop any
half-read transaction, and asks the server for the binlog from `position`
again. Errors that no retry can fix (bad credentials, missing privileges, binlog
off, position purged or unknown, another replica using our server_id) raise
`ReplicaError` with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from tidings.source import mysqlwire as wire
from tidings.source.changes import Position, Transaction
from tidings.source.connection import BinlogUnavailable, ConnectionLost, MySQLConnection
from tidings.source.url import MySQLURL

if TYPE_CHECKING:
    from tidings.source.binlog import TableInfo, TableInfoRequest

log = logging.getLogger("tidings.source.replica")


class ReplicaError(Exception):
    """A replication problem that retrying cannot fix; the message says what to do."""


class _LookupFailed(wire.MySQLError):
    """The table_info callback failed; retried like a lost connection."""


class Decoder(Protocol):
    """What the replica needs of `tidings.source.binlog.BinlogDecoder`."""

    def feed(self, event: bytes) -> Transaction | TableInfoRequest | None: ...

    def provide_table_info(self, request: TableInfoRequest, info: TableInfo | None) -> None: ...

    def reset(self, position: Position) -> None: ...


DecoderFactory = Callable[[Position, bool], Decoder]


def _default_decoder(start: Position, names_from_binlog: bool) -> Decoder:
    from tidings.source.binlog import BinlogDecoder

    decoder: Decoder = BinlogDecoder(start, names_from_binlog=names_from_binlog)
    return decoder


# MySQL/MariaDB error codes that no reconnect can fix, with what to do about them
_ACCESS = (1044, 1045, 1698)  # access denied (db, user/password, no password given)
_PRIVILEGE = (1227,)  # needs a privilege (BINLOG MONITOR, REPLICATION SLAVE, ...)
_ACCOUNT = (1251, 1820, 1862, 3118, 4151)  # auth mode, must change/expired password, locked
_UNKNOWN_DB = 1049
_FATAL_READING_BINLOG = 1236
_SAME_SERVER_ID = 4052  # MariaDB ER_SLAVE_SAME_ID; MySQL says it inside a 1236
_GRANTS = (
    "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO the user (MariaDB; on MySQL: "
    "REPLICATION SLAVE, REPLICATION CLIENT), plus SELECT for schema lookups"
)


def _gtid_domains(state: str) -> dict[int, tuple[int, int]]:
    """MariaDB `d-s-n,d-s-n` -> {domain: (server_id, seq_no)}; {} when not MariaDB style."""
    found: dict[int, tuple[int, int]] = {}
    for part in filter(None, "".join(state.split()).split(",")):
        match = re.fullmatch(r"(\d+)-(\d+)-(\d+)", part)
        if match is None:
            return {}
        found[int(match[1])] = (int(match[2]), int(match[3]))
    return found


def gtid_ahead_of_server(requested: str, server: str | None) -> list[str]:
    """Domains where a MariaDB GTID position is past (or unknown to) the server's binlog.

    MariaDB does not refuse such a position: it waits, silently, until the
    server's binlog reaches it, then skips everything before. For a replica that
    delivered those transactions, that means the server lost them (restored
    from a backup, binlog reset) or is another server, and waiting would skip
    new transactions; so this is checked before connecting.
    """
    have = _gtid_domains(server or "")
    problems = []
    for domain, (sid, seq) in _gtid_domains(requested).items():
        if domain not in have:
            problems.append(f"domain {domain} ({domain}-{sid}-{seq}) is not in its binlog")
        elif have[domain][1] < seq:
            hs, hn = have[domain]
            problems.append(f"{domain}-{sid}-{seq} is past its last GTID {domain}-{hs}-{hn}")
    return problems


def classify(exc: BaseException, url: MySQLURL, server_id: int, position: object) -> str | None:
    """The ReplicaError message for an error retrying cannot fix; None when worth retrying."""
    user = url.user
    if isinstance(exc, ReplicaError):
        return str(exc)
    if isinstance(exc, wire.AuthError):
        return f"cannot log in to {url.redacted()} as {user!r}: {exc}"
    if isinstance(exc, BinlogUnavailable):
        return f"{url.redacted()}: {exc}"
    if not isinstance(exc, wire.ServerError):
        return None
    code, msg = exc.code, exc.message
    if code == _SAME_SERVER_ID or "same server_uuid/server_id" in msg or "same server_id" in msg:
        return (
            f"another replica connected to {url.redacted()} with server_id {server_id} and the "
            f"server disconnected this one ({msg}). Every replica needs its own server_id: "
            "give tidings a unique one (?server_id=N in the URL / --server-id)"
        )
    if code in (3159, 4036) or "insecure transport" in msg:
        return (
            f"{url.redacted()} requires TLS ({msg}), which tidings does not speak yet: allow "
            "plain connections for the replication user (require_secure_transport=OFF), or "
            "reach the server through a local TLS tunnel"
        )
    if code in _ACCESS:
        return (
            f"access denied for {user!r} on {url.redacted()}: {msg}. Check the user and password "
            "in the URL, and that neither the account (REQUIRE SSL) nor the server "
            "(require_secure_transport) demands TLS, which tidings does not speak yet; a "
            f"replica also needs privileges: {_GRANTS}"
        )
    if code in _PRIVILEGE:
        return f"{user!r} lacks a privilege on {url.redacted()}: {msg}. {_GRANTS}"
    if code in _ACCOUNT:
        return f"the account {user!r} cannot log in on {url.redacted()}: {msg}"
    if code == _UNKNOWN_DB:
        return f"{msg}: fix the database in the URL {url.redacted()} (or leave it empty)"
    if code == _FATAL_READING_BINLOG:
        if "not open" in msg.lower():
            return (
                f"{url.redacted()} has binary logging off ({msg}): start it with log-bin and "
                "binlog_format=ROW"
            )
        return (
            f"the server cannot send its binlog from {position}: {msg}. The binlog there was "
            "probably purged (expire_logs_days, binlog_expire_logs_seconds, PURGE BINARY LOGS) "
            "or the position/GTID is not from this server. Restart tidings with --new-epoch "
            "to follow from the current end (subscribers resuming across it get a gap and "
            "reload their state), and keep binlogs longer than tidings may be down"
        )
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (server down?)"
    if isinstance(exc, TimeoutError):
        return f"timed out{': ' + str(exc) if str(exc) else ''}"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, wire.MySQLError) else f"{type(exc).__name__}: {text}"


class Replica:
    """Streams committed transactions from `url` as replica `server_id`, reconnecting as needed."""

    def __init__(
        self,
        url: MySQLURL,
        *,
        server_id: int,
        start: Position | None,
        table_info: Callable[[str, str], Awaitable[TableInfo | None]],
        heartbeat: float = 1.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        names_from_binlog: bool = True,
        connect_timeout: float = 10.0,
        decoder_factory: DecoderFactory | None = None,
    ) -> None:
        if not 0 < server_id < 1 << 32:
            raise ValueError(f"server_id must be in 1..4294967295, not {server_id}")
        self.url = url
        self.server_id = server_id
        #: resume point after the last transaction yielded; None until the first
        #: connection finds the current end when started without a position
        self.position: Position | None = start
        self._table_info = table_info
        self.heartbeat = heartbeat
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.names_from_binlog = names_from_binlog
        self.connect_timeout = connect_timeout
        self._make_decoder = decoder_factory or _default_decoder
        self._decoder: Decoder | None = None
        self._conn: MySQLConnection | None = None
        self._closed = asyncio.Event()
        self._running = False
        # what SHOW SLAVE HOSTS shows as our host: tells our own stale registration
        # from another replica's when checking for server_id collisions
        self.report_host = f"tidings-{os.getpid()}-{secrets.token_hex(3)}"
        self.connected = False
        #: time.monotonic() of the last event (heartbeats included)
        self.last_event_time = 0.0
        #: commit timestamp (epoch seconds) of the last transaction yielded
        self.last_commit_ts = 0
        self.events_total = 0
        self.bytes_total = 0
        self.transactions_total = 0
        self.reconnects = 0
        #: why the last connection ended or failed, for status pages
        self.last_error: str | None = None

    # -- the stream ----------------------------------------------------------------------------
    async def transactions(self) -> AsyncIterator[Transaction]:
        """Every committed transaction from the start position on, in order; runs until close()."""
        if self._running:
            raise RuntimeError("transactions() is already running for this replica")
        self._running = True
        delay = self.backoff_initial
        down_since: float | None = None  # set while we are (re)connecting after a failure
        try:
            while not self._closed.is_set():
                try:
                    conn = await self._open()
                    if self._closed.is_set():  # close() came while we were connecting
                        self._drop(conn)
                        return
                except Exception as exc:
                    if self._closed.is_set():
                        return
                    self._give_up_if_fatal(exc)
                    reason = _describe(exc)
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning(
                            "cannot connect to %s: %s; retrying", self.url.redacted(), reason
                        )
                    elif reason != self.last_error:
                        log.debug("still cannot connect to %s: %s", self.url.redacted(), reason)
                    self.last_error = reason
                    await self._backoff(delay)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                if down_since is not None:
                    log.info(
                        "reconnected to %s after %.1fs; resuming at %s",
                        self.url.redacted(),
                        time.monotonic() - down_since,
                        self.position,
                    )
                    down_since = None
                decoder = self._decoder
                assert decoder is not None
                table_info = self._table_info
                first = True
                try:
                    while not self._closed.is_set():
                        event = await conn.next_event()
                        if event is None:
                            raise ConnectionLost("the server ended the binlog stream")
                        if first:  # the stream works: the next failure starts a fresh backoff
                            first = False
                            delay = self.backoff_initial
                        self.events_total += 1
                        self.bytes_total += len(event)
                        self.last_event_time = time.monotonic()
                        try:
                            result = decoder.feed(event)
                        except Exception as exc:
                            raise ReplicaError(
                                f"cannot decode the binlog after {self.position}: {exc!r}"
                            ) from exc
                        if result is None:
                            continue
                        if isinstance(result, Transaction):
                            self.position = result.position
                            self.last_commit_ts = result.ts
                            self.transactions_total += 1
                            yield result
                        else:  # TableInfoRequest: answer before the next event
                            try:
                                info = await table_info(result.database, result.table)
                            except Exception as exc:
                                # the decoder cannot go on without it: resume from the
                                # last transaction once the lookup works again
                                raise _LookupFailed(
                                    f"schema lookup for {result.database}.{result.table} "
                                    f"failed: {_describe(exc)}"
                                ) from exc
                            decoder.provide_table_info(result, info)
                except Exception as exc:
                    if self._closed.is_set():
                        return
                    self._give_up_if_fatal(exc)
                    reason = _describe(exc)
                    self.last_error = reason
                    log.warning(
                        "interrupted the binlog stream of %s at %s: %s; reconnecting"
                        if isinstance(exc, _LookupFailed)
                        else "lost the binlog stream of %s at %s: %s; reconnecting",
                        self.url.redacted(),
                        self.position,
                        reason,
                    )
                    down_since = time.monotonic()
                    self.reconnects += 1
                finally:
                    self._drop(conn)
                await self._backoff(delay)
                delay = min(delay * 2, self.backoff_max)
        finally:
            self._running = False
            if self._conn is not None:
                self._drop(self._conn)

    def _give_up_if_fatal(self, exc: Exception) -> None:
        message = classify(exc, self.url, self.server_id, self.position)
        if message is not None:
            log.error("replication stopped: %s", message)
            if isinstance(exc, ReplicaError):
                raise exc
            raise ReplicaError(message) from exc

    async def _open(self) -> MySQLConnection:
        """Connect, check the server, register and request the binlog from `position`."""
        conn = await MySQLConnection.connect(self.url, timeout=self.connect_timeout)
        self._conn = conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._check_server(conn)
                if self.position is None:
                    self.position = await conn.current_position()
                    log.info("starting at the current end of the binlog: %s", self.position)
                elif self.position.gtid and conn.is_mariadb:
                    problems = gtid_ahead_of_server(
                        self.position.gtid, await conn.variable("gtid_binlog_pos")
                    )
                    if problems:
                        raise ReplicaError(
                            f"cannot resume at GTID {self.position.gtid}: "
                            f"{'; '.join(problems)} on {self.url.redacted()}. The server lost "
                            "transactions that were already delivered (restored from a backup? "
                            "binlog reset?) or is not the same server. Restart tidings with "
                            "--new-epoch to follow from the current end (resuming subscribers "
                            "get a gap and reload their state)"
                        )
                await self._check_server_id_clash(conn)
                if self._decoder is None:
                    self._decoder = self._make_decoder(self.position, self.names_from_binlog)
                else:
                    self._decoder.reset(self.position)
                try:
                    await conn.start_binlog(
                        server_id=self.server_id,
                        position=self.position,
                        heartbeat=self.heartbeat,
                        report_host=self.report_host,
                    )
                except wire.ServerError as exc:
                    if exc.code in _ACCESS:  # at COM_REGISTER_SLAVE: a missing privilege
                        raise ReplicaError(
                            f"{self.url.user!r} may not register as a replica on "
                            f"{self.url.redacted()}: {exc.message}. {_GRANTS}"
                        ) from exc
                    raise
        except BaseException:
            self._drop(conn)
            raise
        self.connected = True
        # hearing nothing yet is silence since now, not since the epoch of the clock
        self.last_event_time = time.monotonic()
        return conn

    async def _check_server(self, conn: MySQLConnection) -> None:
        rows = await conn.query("SELECT @@log_bin, @@binlog_format")
        log_bin, binlog_format = rows[0] if rows else (None, None)
        if log_bin not in ("1", "ON"):
            raise BinlogUnavailable(
                "binary logging is off: start the server with log-bin (and binlog_format=ROW)"
            )
        if (binlog_format or "").upper() != "ROW":
            log.warning(
                "%s has binlog_format=%s: only row events carry changes, so statement-logged "
                "changes will not be seen; set binlog_format=ROW",
                self.url.redacted(),
                binlog_format,
            )
        if self.names_from_binlog:
            await self._check_row_metadata(conn)

    async def _check_row_metadata(self, conn: MySQLConnection) -> None:
        """Column names come from the binlog only with binlog_row_metadata=FULL: else refuse."""
        try:
            rows = await conn.query("SELECT @@binlog_row_metadata")
            metadata = (rows[0][0] if rows else None) or "unknown"
        except wire.ServerError:  # MariaDB < 10.5, MySQL < 8.0.14: no such variable
            metadata = "unsupported by this server version"
        if metadata.upper() != "FULL":
            raise ReplicaError(
                f"{self.url.redacted()} has binlog_row_metadata={metadata}, so the binlog does "
                "not carry column names. Fix: SET GLOBAL binlog_row_metadata=FULL (and "
                "binlog_row_metadata=FULL under [mysqld] in the server's config; MariaDB >= "
                "10.5 or MySQL >= 8.0.14), or start tidings with --names-from-schema to read "
                "names from information_schema instead (they can be wrong for rows written "
                "before an ALTER TABLE that tidings reads later)"
            )

    async def _check_server_id_clash(self, conn: MySQLConnection) -> None:
        """Look for another replica registered with our server_id (SHOW SLAVE HOSTS).

        On the first connection it may be a stale registration (an earlier run):
        warn, and the server disconnects it when we register. After we lost a
        working stream, it is the replica that pushed us out (MySQL just closes
        the old connection instead of telling it why): retrying would push each
        other out forever, so that is a ReplicaError.
        """
        try:
            rows = await conn.query("SHOW SLAVE HOSTS")
        except wire.ServerError:
            return  # needs a privilege we may not have; the server will tell us if we clash
        for row in rows:
            if row[0] != str(self.server_id) or row[1] == self.report_host:
                continue
            if self.reconnects:
                raise ReplicaError(
                    f"another replica ({row[1]!r}) is connected to {self.url.redacted()} with "
                    f"server_id {self.server_id} and took over this replica's stream. Every "
                    "replica needs its own server_id: give tidings a unique one "
                    "(?server_id=N in the URL / --server-id)"
                )
            log.warning(
                "server_id %d is already registered on %s by %r (another replica, or an "
                "earlier tidings run): the server will disconnect it now; if both keep "
                "running they will disconnect each other. Give each replica its own server_id",
                self.server_id,
                self.url.redacted(),
                row[1],
            )

    def _drop(self, conn: MySQLConnection) -> None:
        conn.close()
        if self._conn is conn:
            self._conn = None
            self.connected = False

    async def _backoff(self, delay: float) -> None:
        """Sleep about `delay` (jitter: replicas do not reconnect in step); close() wakes it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), delay * random.uniform(0.5, 1.0))

    # -- control -------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop: the running transactions() returns (a pending read is interrupted)."""
        self._closed.set()
        if self._conn is not None:
            self._drop(self._conn)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
