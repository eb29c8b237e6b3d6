"""The binlog decoder: binlog events in, committed transactions out. No I/O.

Theory of operation. `feed()` takes one event as the server sends it. Control
events update the decoder's idea of where it is (file, position, GTID state);
TABLE_MAP events bind a table id to a compiled row decoder (see `rows.py`);
rows events append `RowChange`s to the open transaction; the event that commits
it (XID, COMMIT, or a DDL statement on its own) returns the `Transaction`.

Transaction boundaries, as the servers write them:

    MariaDB  GTID [ANNOTATE] (TABLE_MAP ROWS...)... XID|QUERY(COMMIT)
             GTID(standalone) QUERY(DDL)
    MySQL    GTID|ANONYMOUS_GTID QUERY(BEGIN) (TABLE_MAP ROWS...)... XID|QUERY(COMMIT)
             GTID|ANONYMOUS_GTID QUERY(DDL)
    old      QUERY(BEGIN) ... XID|QUERY(COMMIT);  QUERY(DDL)
    XA       GTID QUERY(XA START) ... QUERY(XA END) XA_PREPARE, later
             GTID QUERY(XA COMMIT|XA ROLLBACK): the changes are held in memory from
             the prepare and delivered with the XA COMMIT group

A ROLLBACK (non-transactional tables) ends its group with nothing delivered. Any
other statement (ALTER, CREATE, ...) goes to `Transaction.ddl` and forgets the
cached table info, since table layouts may have changed.

`position` only moves at group boundaries. Its GTID part is reported when the
decoder knows the whole state: given in the start position, or read from the
GTID_LIST / PREVIOUS_GTIDS event at the head of the file the stream starts at.

When a TABLE_MAP lacks what the binlog cannot say (column names without
binlog_row_metadata=FULL; whether a text BLOB is MariaDB's JSON), `feed()`
returns a `TableInfoRequest` and waits for `provide_table_info()`.
"""

from __future__ import annotations

from collections.abc import Callable

from tidings.source.binlog import constants as c
from tidings.source.binlog import events as ev
from tidings.source.binlog.errors import BinlogError
from tidings.source.binlog.gtid import MariaDBGtidState, MySQLGtidSet
from tidings.source.binlog.rows import Binding
from tidings.source.binlog.tablemap import (
    BLOBS,
    TableInfo,
    TableInfoRequest,
    TableMap,
    parse_table_map,
)
from tidings.source.changes import Position, RowChange, RowType, Transaction

_NO_TXN, _PENDING, _OPEN = 0, 1, 2  # _PENDING: a GTID was seen, BEGIN or a DDL comes next

_ROWS: dict[int, tuple[RowType, bool, bool]] = {  # type -> (kind, v2 header, compressed)
    c.WRITE_ROWS_EVENT_V1: ("insert", False, False),
    c.UPDATE_ROWS_EVENT_V1: ("update", False, False),
    c.DELETE_ROWS_EVENT_V1: ("delete", False, False),
    c.WRITE_ROWS_EVENT: ("insert", True, False),
    c.UPDATE_ROWS_EVENT: ("update", True, False),
    c.DELETE_ROWS_EVENT: ("delete", True, False),
    c.WRITE_ROWS_COMPRESSED_EVENT_V1: ("insert", False, True),
    c.UPDATE_ROWS_COMPRESSED_EVENT_V1: ("update", False, True),
    c.DELETE_ROWS_COMPRESSED_EVENT_V1: ("delete", False, True),
    c.WRITE_ROWS_COMPRESSED_EVENT: ("insert", True, True),
    c.UPDATE_ROWS_COMPRESSED_EVENT: ("update", True, True),
    c.DELETE_ROWS_COMPRESSED_EVENT: ("delete", True, True),
}

_UNSUPPORTED = {
    c.PARTIAL_UPDATE_ROWS_EVENT: "MySQL partial JSON updates are not supported: "
    "set binlog_row_value_options='' on the server",
    c.TRANSACTION_PAYLOAD_EVENT: "MySQL binlog transaction compression is not supported: "
    "set binlog_transaction_compression=OFF on the server",
}

_MAX_BINDINGS = 4096  # cached TABLE_MAP bodies; cleared wholesale past this
_MAX_PREPARED_XA = 10_000

Handler = Callable[[bytes, int, int, int, int, int], "Transaction | TableInfoRequest | None"]


class BinlogDecoder:
    """Sans-I/O decoder of a binlog event stream into committed transactions."""

    __slots__ = (
        "_bindings",
        "_changes",
        "_ddl",
        "_file",
        "_format",
        "_gtid_known",
        "_handlers",
        "_infos",
        "_mariadb_gtid",
        "_mysql_gtid",
        "_names_from_binlog",
        "_pending",
        "_position",
        "_prepared",
        "_tables",
        "_txn",
        "_txn_gtid",
        "_txn_mariadb",
        "_txn_mysql",
    )

    def __init__(self, start: Position, *, names_from_binlog: bool = True) -> None:
        self._names_from_binlog = names_from_binlog
        self._handlers: dict[int, Handler] = {
            c.FORMAT_DESCRIPTION_EVENT: self._on_format_description,
            c.ROTATE_EVENT: self._on_rotate,
            c.QUERY_EVENT: self._on_query,
            c.QUERY_COMPRESSED_EVENT: self._on_query,
            c.XID_EVENT: self._on_xid,
            c.TABLE_MAP_EVENT: self._on_table_map,
            c.GTID_EVENT: self._on_mariadb_gtid,
            c.GTID_LIST_EVENT: self._on_gtid_list,
            c.GTID_LOG_EVENT: self._on_mysql_gtid,
            c.ANONYMOUS_GTID_LOG_EVENT: self._on_mysql_gtid,
            c.PREVIOUS_GTIDS_LOG_EVENT: self._on_previous_gtids,
            c.XA_PREPARE_LOG_EVENT: self._on_xa_prepare,
            c.STOP_EVENT: self._on_stop,
        }
        for event_type in _ROWS:
            self._handlers[event_type] = self._on_rows
        for event_type in _UNSUPPORTED:
            self._handlers[event_type] = self._on_unsupported
        self._bindings: dict[bytes, Binding] = {}
        self._infos: dict[int, TableInfo | None] = {}
        self.reset(start)

    # -- public API ------------------------------------------------------------------------
    @property
    def position(self) -> Position:
        """The last transaction boundary: resuming here repeats nothing and skips nothing."""
        return self._position

    def reset(self, position: Position) -> None:
        """Start over at `position` (after a reconnect): drops any partial transaction."""
        self._position = position
        self._file = position.file
        self._format: ev.Format | None = None
        self._mariadb_gtid = MariaDBGtidState()
        self._mysql_gtid = MySQLGtidSet()
        if position.gtid and ":" in position.gtid:
            self._mysql_gtid = MySQLGtidSet(position.gtid)
        elif position.gtid:
            self._mariadb_gtid = MariaDBGtidState(position.gtid)
        # The GTID state can only be reported when complete: given, or read from the
        # GTID_LIST / PREVIOUS_GTIDS event at the head of a file we start reading at.
        self._gtid_known = position.gtid is not None or position.pos <= 4
        self._tables: dict[int, Binding] = {}
        self._infos.clear()
        self._bindings.clear()
        self._pending: tuple[TableInfoRequest, TableMap, bytes] | None = None
        self._prepared: dict[ev.XaKey, tuple[list[RowChange], list[tuple[str, str]]]] = {}
        self._clear_txn()

    def feed(self, event: bytes) -> Transaction | TableInfoRequest | None:
        """Decode one event; return the transaction it commits, a table info request, or None."""
        if self._pending is not None:
            raise BinlogError(f"feed() called before provide_table_info() for {self._pending[0]}")
        if type(event) is not bytes:
            event = bytes(event)  # a bytearray/memoryview slice: caches key on bytes
        size = len(event)
        if size < c.HEADER_LEN:
            raise BinlogError(f"event of {size} bytes is shorter than the binlog header")
        ts, event_type, server_id, event_size, log_pos, _ = ev.HEADER.unpack_from(event)
        if event_size != size:
            raise BinlogError(f"event header says {event_size} bytes, got {size}")
        handler = self._handlers.get(event_type)
        if handler is None:
            # unknown, statement-based, annotations, heartbeats (whose CRC some servers
            # omit): nothing here changes the stream's meaning, so not even the CRC is read
            return None
        fmt = self._format
        if fmt is not None and event_type != c.FORMAT_DESCRIPTION_EVENT:
            end = size
            if fmt.checksum:
                end -= c.CRC_LEN
                if end < c.HEADER_LEN or not ev.crc_ok(event):
                    raise BinlogError(
                        f"CRC32 mismatch in event type {event_type} ending at "
                        f"{self._file}:{log_pos}"
                    )
        else:
            # before the FORMAT_DESCRIPTION (the artificial ROTATE): a CRC is there if it matches
            has_crc = size >= c.HEADER_LEN + c.CRC_LEN and ev.crc_ok(event)
            end = size - c.CRC_LEN if has_crc else size
        try:
            return handler(event, end, event_type, ts, server_id, log_pos)
        except BinlogError:
            raise
        except Exception as e:  # any parse failure means corrupt input
            raise BinlogError(
                f"corrupt event type {event_type} ending at {self._file}:{log_pos}: {e!r}"
            ) from e

    def provide_table_info(self, request: TableInfoRequest, info: TableInfo | None) -> None:
        """Answer the last `TableInfoRequest`; None when the table is unknown to the schema."""
        pending = self._pending
        if pending is None or pending[0] != request:
            raise BinlogError(f"no pending request matches {request}")
        self._pending = None
        _, table_map, body = pending
        self._infos[request.table_id] = info
        self._bind(table_map, body, info)

    # -- transactions ----------------------------------------------------------------------
    def _clear_txn(self) -> None:
        self._txn = _NO_TXN
        self._changes: list[RowChange] = []
        self._ddl: list[tuple[str, str]] = []
        self._txn_gtid: str | None = None
        self._txn_mariadb: ev.MariaGtid | None = None
        self._txn_mysql: tuple[str, int] | None = None

    def _gtid_text(self) -> str | None:
        if not self._gtid_known:
            return None
        text = str(self._mysql_gtid) if self._mysql_gtid.sets else str(self._mariadb_gtid)
        return text or None

    def _commit(self, ts: int, log_pos: int, xid: int | None) -> Transaction:
        if self._txn_mariadb is not None:
            g = self._txn_mariadb
            self._mariadb_gtid.update(g.domain, g.server_id, g.seq)
        elif self._txn_mysql is not None:
            self._mysql_gtid.add(*self._txn_mysql)
        position = Position(self._file, log_pos or self._position.pos, self._gtid_text())
        txn = Transaction(self._changes, ts, self._txn_gtid, xid, position, self._ddl)
        self._position = position
        self._tables.clear()  # every transaction maps its tables again
        self._clear_txn()
        return txn

    def _rollback(self, log_pos: int) -> None:
        # the group is over (nothing to deliver) but its GTID is consumed
        self._commit(0, log_pos, None)

    # -- event handlers --------------------------------------------------------------------
    def _on_format_description(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> None:
        self._format = ev.parse_format_description(event)

    def _on_rotate(self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int) -> None:
        name, pos = ev.parse_rotate(event, end)
        self._file = name
        if self._txn == _NO_TXN:
            self._position = Position(name, pos, self._gtid_text())

    def _on_stop(self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int) -> None:
        self._clear_txn()  # the server stopped; an unfinished group will never finish

    def _on_query(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> Transaction | None:
        fmt = self._need_format()
        query = ev.parse_query(
            event, end, fmt.post_header_len(c.QUERY_EVENT, 13), et == c.QUERY_COMPRESSED_EVENT
        )
        head = query.sql[:24].lstrip().upper()
        if head == "BEGIN" or head.startswith("XA START"):
            self._txn = _OPEN
            return None
        if head == "COMMIT":
            return self._commit(ts, log_pos, None)
        if head == "ROLLBACK":
            self._rollback(log_pos)
            return None
        if head.startswith(("XA COMMIT", "XA ROLLBACK")) and self._txn != _OPEN:
            return self._xa_end(query.sql, head.startswith("XA COMMIT"), ts, log_pos)
        if head.startswith("XA COMMIT"):  # XA COMMIT ... ONE PHASE (MySQL)
            return self._commit(ts, log_pos, None)
        if head.startswith("XA ROLLBACK"):
            self._rollback(log_pos)
            return None
        if head.startswith(("SAVEPOINT", "ROLLBACK TO", "XA ")):
            return None
        # DDL (or a statement-based change): table layouts may have changed
        self._infos.clear()
        self._bindings.clear()
        self._ddl.append((query.database, query.sql))
        if self._txn == _OPEN:
            return None
        return self._commit(ts, log_pos, None)

    def _on_xid(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> Transaction:
        return self._commit(ts, log_pos, ev.parse_xid(event, end))

    def _on_xa_prepare(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> Transaction | None:
        one_phase, key = ev.parse_xa_prepare(event, end)
        if one_phase:
            return self._commit(ts, log_pos, None)
        # XA PREPARE ends its own group; the changes are delivered only when a later
        # group says XA COMMIT (they are held in memory until then)
        if len(self._prepared) >= _MAX_PREPARED_XA:
            raise BinlogError(f"more than {_MAX_PREPARED_XA} prepared XA transactions pending")
        self._prepared[key] = (self._changes, self._ddl)
        self._rollback(log_pos)
        return None

    def _xa_end(self, sql: str, commit: bool, ts: int, log_pos: int) -> Transaction | None:
        key = ev.parse_xa_query(sql)
        held = self._prepared.pop(key, None) if key is not None else None
        if commit and held is not None:
            self._changes, self._ddl = held
            return self._commit(ts, log_pos, None)
        # rolled back, or prepared before our start point: nothing to deliver
        self._rollback(log_pos)
        return None

    def _on_mariadb_gtid(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> None:
        gtid = ev.parse_mariadb_gtid(event, end, sid)
        self._clear_txn()  # a group left open by a crashed server never commits
        self._txn_mariadb = gtid
        self._txn_gtid = str(gtid)
        self._txn = _PENDING if gtid.flags & c.FL_STANDALONE else _OPEN

    def _on_mysql_gtid(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> None:
        self._clear_txn()
        if et == c.GTID_LOG_EVENT:
            self._txn_mysql = ev.parse_mysql_gtid(event, end)
            self._txn_gtid = f"{self._txn_mysql[0]}:{self._txn_mysql[1]}"
        self._txn = _PENDING

    def _on_gtid_list(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> None:
        latest: dict[int, ev.MariaGtid] = {}
        for g in ev.parse_gtid_list(event, end):
            if g.domain not in latest or g.seq > latest[g.domain].seq:
                latest[g.domain] = g
        for g in latest.values():
            self._mariadb_gtid.merge_missing(g.domain, g.server_id, g.seq)

    def _on_previous_gtids(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> None:
        for sid_, intervals in ev.parse_previous_gtids(event, end).items():
            for lo, hi in intervals:
                self._mysql_gtid.add_range(sid_, lo, hi - 1)

    def _on_unsupported(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> None:
        raise BinlogError(_UNSUPPORTED[et])

    # -- tables and rows -------------------------------------------------------------------
    def _need_format(self) -> ev.Format:
        if self._format is None:
            raise BinlogError("event before the FORMAT_DESCRIPTION event")
        return self._format

    def _on_table_map(
        self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int
    ) -> TableInfoRequest | None:
        body = event[c.HEADER_LEN : end]
        binding = self._bindings.get(body)
        if binding is not None:
            self._tables[binding.table_map.table_id] = binding
            return None
        fmt = self._need_format()
        id_size = 4 if fmt.post_header_len(c.TABLE_MAP_EVENT, 8) == 6 else 6
        table_map = parse_table_map(body, id_size, fmt.mariadb)
        needs = not self._names_from_binlog or table_map.needs_info(fmt.mariadb)
        if needs and table_map.table_id not in self._infos:
            request = TableInfoRequest(table_map.database, table_map.table, table_map.table_id)
            self._pending = (request, table_map, body)
            return request
        self._bind(table_map, body, self._infos.get(table_map.table_id))
        return None

    def _bind(self, tm: TableMap, body: bytes, info: TableInfo | None) -> None:
        cols = tm.columns
        if self._names_from_binlog and tm.has_names:
            names = [col.name or "" for col in cols]
        elif info is not None and len(info.columns) == len(cols):
            names = list(info.columns)
        else:  # the schema changed since, or is unknown: binlog names, else mysqlbinlog's @N
            names = [col.name or f"@{col.index + 1}" for col in cols]
        json = frozenset(
            i
            for i, name in enumerate(names)
            if info is not None and name in info.json_columns and cols[i].type in BLOBS
        )
        binding = Binding(tm, names, json)
        if len(self._bindings) >= _MAX_BINDINGS:
            self._bindings.clear()
        self._bindings[body] = binding
        self._tables[tm.table_id] = binding

    def _on_rows(self, event: bytes, end: int, et: int, ts: int, sid: int, log_pos: int) -> None:
        kind, v2, compressed = _ROWS[et]
        fmt = self._need_format()
        id_size = 4 if fmt.post_header_len(et, 10 if v2 else 8) == 6 else 6
        pos = c.HEADER_LEN
        table_id = int.from_bytes(event[pos : pos + id_size], "little")
        pos += id_size + 2  # table id, flags
        if v2:
            pos += int.from_bytes(event[pos : pos + 2], "little")  # extra data, length included
        width, pos = _packed(event, pos)
        nb = (width + 7) // 8
        present = event[pos : pos + nb]
        pos += nb
        present_after = b""
        if kind == "update":
            present_after = event[pos : pos + nb]
            pos += nb
        if pos > end:
            raise BinlogError("truncated rows event")
        buf = event
        if compressed:
            buf = ev.uncompress(event[pos:end])
            pos, end = 0, len(buf)
        binding = self._tables.get(table_id)
        if binding is None:
            if pos == end:
                return None  # an empty "dummy" rows event that only ends a statement
            raise BinlogError(f"rows event for table id {table_id} without its TABLE_MAP")
        if width != len(binding.table_map.columns):
            raise BinlogError(
                f"rows event has {width} columns, TABLE_MAP of "
                f"{binding.table_map.database}.{binding.table_map.table} has "
                f"{len(binding.table_map.columns)}"
            )
        # bits past the last column do not count: an image of no columns reads no bytes,
        # and rows of them would repeat until memory runs out
        if pos < end and not int.from_bytes(present, "little") & ((1 << width) - 1):
            raise BinlogError("rows event without columns")
        rows, pos = binding.decoder(kind, present, present_after)(buf, pos, end)
        if pos != end:
            raise BinlogError(
                f"row data of {binding.table_map.database}.{binding.table_map.table} "
                f"overruns its event by {pos - end} bytes"
            )
        if self._txn != _OPEN:
            self._txn = _OPEN  # rows without BEGIN (a group started before our start point)
        self._changes.extend(rows)
        return None


def _packed(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None:
        raise BinlogError(f"bad length-encoded integer 0x{first:02x}")
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little"), pos + 1 + width
