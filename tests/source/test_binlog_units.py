"""Byte-level tests of the binlog decoder: framing, each value type, metadata, transactions."""

from __future__ import annotations

import struct
import uuid
import zlib
from decimal import Decimal
from typing import Any

import pytest

from tests.source.test_binlog_builders import (
    MARIADB_FDE,
    MARIADB_GTID,
    MARIADB_TABLE_MAP,
    MARIADB_WRITE_ROWS,
    MARIADB_XID,
    date_bytes,
    datetime2_bytes,
    decimal_bytes,
    event,
    fde,
    mariadb_gtid,
    names_tlv,
    new_decoder,
    packed_int,
    query,
    rotate,
    row_image,
    rows_event,
    table_map,
    time2_bytes,
    timestamp2_bytes,
    tlv,
    xid,
)
from tidings.source.binlog import BinlogDecoder, BinlogError, TableInfo, TableInfoRequest
from tidings.source.binlog.events import parse_xa_query, uncompress
from tidings.source.binlog.gtid import MariaDBGtidState, MySQLGtidSet
from tidings.source.changes import Position, Transaction

SIGNED = b""
UNSIGNED = tlv(1, b"\x80")  # SIGNEDNESS: the first numeric column is unsigned


def charset(collation: int) -> bytes:
    return tlv(3, packed_int(collation))  # COLUMN_CHARSET of the one character column


def decode_one(
    col_type: int,
    meta: bytes,
    value: bytes | None,
    *,
    optional: bytes = b"",
    mariadb: bool = True,
    nullable: bool = True,
    json_columns: frozenset[str] = frozenset(),
) -> Any:
    """Decode one value of one column through TABLE_MAP + WRITE_ROWS + XID."""
    d = new_decoder(mariadb=mariadb)
    tm = table_map(
        7, "db", "t", [(col_type, meta)], nullable=[nullable], optional=names_tlv(["c"]) + optional
    )
    req = d.feed(tm)
    if isinstance(req, TableInfoRequest):
        d.provide_table_info(req, TableInfo(("c",), json_columns))
    assert d.feed(rows_event(23, 7, 1, row_image([value]))) is None
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    (change,) = txn.changes
    return change.data["c"]


# -- integers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("col_type", "fmt", "signed", "unsigned"),
    [
        (1, "b", (-128, 127), (0, 255)),
        (2, "h", (-32768, 32767), (0, 65535)),
        (3, "i", (-(2**31), 2**31 - 1), (0, 2**32 - 1)),
        (8, "q", (-(2**63), 2**63 - 1), (0, 2**64 - 1)),
    ],
)
def test_integers_signed_and_unsigned_extremes(
    col_type: int, fmt: str, signed: tuple[int, int], unsigned: tuple[int, int]
) -> None:
    for v in signed:
        assert decode_one(col_type, b"", struct.pack("<" + fmt, v)) == v
    for v in unsigned:
        raw = struct.pack("<" + fmt.upper(), v)
        assert decode_one(col_type, b"", raw, optional=UNSIGNED) == v


def test_mediumint() -> None:
    assert decode_one(9, b"", b"\x00\x00\x80") == -8388608
    assert decode_one(9, b"", b"\xff\xff\x7f") == 8388607
    assert decode_one(9, b"", b"\xff\xff\xff", optional=UNSIGNED) == 16777215


def test_not_null_integers_share_one_unpack_and_keep_signedness() -> None:
    d = new_decoder()
    cols = [(1, b""), (2, b""), (3, b""), (8, b"")]
    # SIGNEDNESS 0b0101...: the 2nd and 4th numeric columns are unsigned
    tm = table_map(
        9, "db", "t", cols, nullable=[False] * 4, optional=tlv(1, b"\x50") + names_tlv("abcd")
    )
    assert d.feed(tm) is None
    image = row_image([b"\xff", b"\xff\xff", b"\xff\xff\xff\xff", b"\xff" * 8])
    d.feed(rows_event(23, 9, 4, image + image))
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert [c.data for c in txn.changes] == [{"a": -1, "b": 65535, "c": -1, "d": 2**64 - 1}] * 2


def test_year() -> None:
    assert decode_one(13, b"", b"\x00") == 0
    assert decode_one(13, b"", bytes([2024 - 1900])) == 2024
    assert decode_one(13, b"", b"\xff") == 2155


# -- floating point and decimals ---------------------------------------------------------


def test_float_gives_the_shortest_decimal() -> None:
    assert decode_one(4, b"\x04", struct.pack("<f", 1.1)) == 1.1
    assert decode_one(4, b"\x04", struct.pack("<f", -3.4028235e38)) == -3.4028235e38
    assert decode_one(4, b"\x04", struct.pack("<f", 0.1)) == 0.1
    assert decode_one(5, b"\x08", struct.pack("<d", 2.5e-300)) == 2.5e-300


@pytest.mark.parametrize(
    ("text", "precision", "scale"),
    [
        ("9.90", 4, 2),
        ("-0.001", 5, 3),
        ("0.05", 10, 2),
        ("0", 5, 0),
        ("-99999", 5, 0),
        ("0.00", 10, 2),
        ("123456789", 9, 0),
        ("-123456789.123456789", 18, 9),
        ("1234567890.1234", 14, 4),
        ("-12345678901234567890.0000000001", 30, 10),
        ("0.000000000000000000000000000001", 65, 30),
        ("99999999999999999999999999999999999.999999999999999999999999999999", 65, 30),
    ],
)
def test_newdecimal_exact_strings(text: str, precision: int, scale: int) -> None:
    raw = decimal_bytes(Decimal(text), precision, scale)
    assert decode_one(246, bytes([precision, scale]), raw) == text


# -- dates and times -----------------------------------------------------------------------


def test_date_and_zero_date() -> None:
    assert decode_one(10, b"", date_bytes(2024, 1, 2)) == "2024-01-02"
    assert decode_one(10, b"", date_bytes(0, 0, 0)) == "0000-00-00"
    assert decode_one(10, b"", date_bytes(9999, 12, 31)) == "9999-12-31"


@pytest.mark.parametrize(
    ("fsp", "parts", "text"),
    [
        (0, (2024, 1, 2, 3, 4, 5, 0), "2024-01-02T03:04:05"),
        (6, (2024, 1, 2, 3, 4, 5, 123456), "2024-01-02T03:04:05.123456"),
        (3, (2024, 1, 2, 3, 4, 5, 120000), "2024-01-02T03:04:05.120"),
        (1, (1000, 1, 1, 0, 0, 0, 900000), "1000-01-01T00:00:00.9"),
        (5, (9999, 12, 31, 23, 59, 59, 999990), "9999-12-31T23:59:59.99999"),
        (0, (0, 0, 0, 0, 0, 0, 0), "0000-00-00T00:00:00"),
    ],
)
def test_datetime2(fsp: int, parts: tuple[int, int, int, int, int, int, int], text: str) -> None:
    assert decode_one(18, bytes([fsp]), datetime2_bytes(*parts, fsp)) == text


def test_old_datetime_time_timestamp() -> None:
    assert decode_one(12, b"", struct.pack("<Q", 20240102030405)) == "2024-01-02T03:04:05"
    assert decode_one(11, b"", (-8385959).to_bytes(3, "little", signed=True)) == "-838:59:59"
    assert decode_one(11, b"", (123456).to_bytes(3, "little")) == "12:34:56"
    assert decode_one(7, b"", struct.pack("<I", 1)) == "1970-01-01T00:00:01Z"
    assert decode_one(7, b"", struct.pack("<I", 0)) == "0000-00-00T00:00:00Z"


@pytest.mark.parametrize(
    ("fsp", "seconds", "usec", "text"),
    [
        (0, 2147483647, 0, "2038-01-19T03:14:07Z"),
        (6, 1, 1, "1970-01-01T00:00:01.000001Z"),
        (2, 1_700_000_000, 500000, "2023-11-14T22:13:20.50Z"),
        (0, 0, 0, "0000-00-00T00:00:00Z"),
        (3, 0, 0, "0000-00-00T00:00:00.000Z"),
        (4, 951_782_400, 123400, "2000-02-29T00:00:00.1234Z"),
    ],
)
def test_timestamp2_is_utc(fsp: int, seconds: int, usec: int, text: str) -> None:
    assert decode_one(17, bytes([fsp]), timestamp2_bytes(seconds, usec, fsp)) == text


@pytest.mark.parametrize(
    ("fsp", "parts", "text"),
    [
        (0, (True, 838, 59, 59, 0), "-838:59:59"),
        (6, (True, 838, 59, 59, 0), "-838:59:59.000000"),
        (6, (False, 838, 59, 59, 999999), "838:59:59.999999"),
        (3, (True, 1, 2, 3, 500000), "-01:02:03.500"),
        (2, (True, 0, 0, 0, 10000), "-00:00:00.01"),
        (4, (True, 0, 0, 1, 999900), "-00:00:01.9999"),
        (1, (False, 0, 0, 0, 0), "00:00:00.0"),
        (6, (True, 0, 0, 0, 1), "-00:00:00.000001"),
    ],
)
def test_time2(fsp: int, parts: tuple[bool, int, int, int, int], text: str) -> None:
    assert decode_one(19, bytes([fsp]), time2_bytes(*parts, fsp)) == text


# -- strings and binary -------------------------------------------------------------------


def test_varchar_charsets() -> None:
    emoji = "emoji 😀".encode()
    assert decode_one(15, b"\x50\x00", bytes([len(emoji)]) + emoji, optional=charset(45)) == (
        "emoji 😀"
    )
    # MySQL latin1 is cp1252 whose holes map to C1 controls
    assert decode_one(15, b"\x0a\x00", b"\x03\x80\x81\xe9", optional=charset(8)) == "€\x81é"
    assert decode_one(15, b"\x0a\x00", b"\x02\xcf\xf0", optional=charset(51)) == "Пр"  # cp1251
    assert decode_one(15, b"\x0a\x00", b"\x02\x00\xff", optional=charset(63)) == "AP8="
    assert decode_one(15, b"\x0a\x00", b"\x04\x00\xfc\x20\xac", optional=charset(54)) == "ü€"
    assert decode_one(15, b"\x0a\x00", b"\x02ok", optional=charset(2304)) == "ok"  # uca1400


def test_long_varchar_has_two_byte_length() -> None:
    text = "x" * 300
    raw = struct.pack("<H", 300) + text.encode()
    assert decode_one(15, struct.pack("<H", 1200), raw, optional=charset(45)) == text


def test_char_binary_is_padded_and_long_char_metadata() -> None:
    # BINARY(4): MySQL drops trailing zero bytes in the binlog; SELECT returns them
    assert decode_one(254, b"\xfe\x04", b"\x02\x01\x02", optional=charset(63)) == "AQIAAA=="
    # CHAR(100) utf8mb4 = 400 bytes: two length bits hide in the real-type byte
    raw = struct.pack("<H", 3) + b"abc"
    assert decode_one(254, b"\xee\x90", raw, optional=charset(45)) == "abc"


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_blob_length_widths(width: int) -> None:
    data = b"\x00\x01binary"
    raw = len(data).to_bytes(width, "little") + data
    assert decode_one(252, bytes([width]), raw, optional=charset(63)) == "AAFiaW5hcnk="
    text = "tëxt".encode()
    raw = len(text).to_bytes(width, "little") + text
    assert decode_one(252, bytes([width]), raw, optional=charset(45)) == "tëxt"


def test_mariadb_json_from_table_info() -> None:
    doc = b'{"a": [1, 2.5, null, "x"]}'
    raw = struct.pack("<I", len(doc)) + doc
    json = frozenset({"c"})
    value = decode_one(252, b"\x04", raw, optional=charset(46), json_columns=json)
    assert value == {"a": [1, 2.5, None, "x"]}
    # without the hint it is text; text that is not JSON stays text
    assert decode_one(252, b"\x04", raw, optional=charset(46)) == doc.decode()
    bad = b"{not json"
    raw = struct.pack("<I", len(bad)) + bad
    assert decode_one(252, b"\x04", raw, optional=charset(46), json_columns=json) == "{not json"


def test_mysql_binary_json_column() -> None:
    doc = bytes.fromhex("0c0568656c6c6f")  # "hello"
    value = decode_one(245, b"\x04", struct.pack("<I", len(doc)) + doc, mariadb=False)
    assert value == "hello"


def test_bit() -> None:
    assert decode_one(16, b"\x01\x00", b"\x01") == 1
    assert decode_one(16, b"\x02\x01", b"\x02\xaa") == 0b1010101010  # BIT(10)
    assert decode_one(16, b"\x00\x08", b"\xff" * 8) == 2**64 - 1


def test_enum_and_set_labels() -> None:
    enum_labels = tlv(6, b"\x03\x01a\x01b\x03c\xc3\xa9")
    assert decode_one(254, b"\xf7\x01", b"\x03", optional=enum_labels) == "cé"
    assert decode_one(254, b"\xf7\x01", b"\x00", optional=enum_labels) == ""  # invalid value
    set_labels = tlv(5, b"\x03\x01x\x01y\x01z")
    assert decode_one(254, b"\xf8\x01", b"\x05", optional=set_labels) == ["x", "z"]
    assert decode_one(254, b"\xf8\x01", b"\x00", optional=set_labels) == []
    # without FULL metadata the labels are unknown: the stored number
    assert decode_one(254, b"\xf7\x02", b"\x02\x01") == 258
    assert decode_one(254, b"\xf8\x01", b"\x05") == 5


def test_geometry_is_base64_wkb_without_srid() -> None:
    wkb = bytes.fromhex("0101000000000000000000f03f0000000000000040")
    raw = struct.pack("<I", 4 + len(wkb)) + b"\xe6\x10\x00\x00" + wkb
    assert decode_one(255, b"\x04", raw, optional=charset(63)) == ("AQEAAAAAAAAAAADwPwAAAAAAAABA")


def test_null_values() -> None:
    assert decode_one(3, b"", None) is None
    assert decode_one(15, b"\x0a\x00", None) is None
    assert decode_one(6, b"", b"") is None  # the NULL type has no bytes


# -- row events ------------------------------------------------------------------------------


def test_mariadb_captured_events_decode() -> None:
    d = BinlogDecoder(Position("binlog.000001", 4))
    assert d.feed(MARIADB_FDE) is None
    assert d.feed(MARIADB_GTID) is None
    req = d.feed(MARIADB_TABLE_MAP)
    assert req == TableInfoRequest("t1", "y", 18)  # TEXT columns: might be JSON
    d.provide_table_info(req, TableInfo(tuple("yagcedtjb"), frozenset({"j"})))
    assert d.feed(MARIADB_WRITE_ROWS) is None
    txn = d.feed(MARIADB_XID)
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {
        "y": 2024,
        "a": 5,
        "g": "AQEAAAAAAAAAAADwPwAAAAAAAABA",
        "c": "hé",
        "e": "y",
        "d": "2024-01-02",
        "t": "txt",
        "j": {"a": 1},
        "b": "YmI=",
    }
    assert (txn.gtid, txn.xid) == ("0-1-3", 17)
    assert txn.position == Position("binlog.000001", 1089, "0-1-3")


def _table(d: BinlogDecoder, table_id: int = 5, **kw: Any) -> None:
    cols = [(3, b""), (15, b"\x14\x00")]
    tm = table_map(table_id, "db", "t", cols, optional=names_tlv(["id", "s"]) + charset(45), **kw)
    assert d.feed(tm) is None


def _img(i: int, s: str | None) -> bytes:
    return row_image([struct.pack("<i", i), None if s is None else bytes([len(s)]) + s.encode()])


def test_update_old_has_changed_columns_only_and_multi_row_events() -> None:
    d = new_decoder()
    _table(d)
    d.feed(rows_event(24, 5, 2, _img(1, "a") + _img(1, "b") + _img(2, "x") + _img(2, "x")))
    d.feed(rows_event(25, 5, 2, _img(3, None)))
    txn = d.feed(xid(9))
    assert isinstance(txn, Transaction)
    assert [(c.type, c.data, c.old) for c in txn.changes] == [
        ("update", {"id": 1, "s": "b"}, {"s": "a"}),
        ("update", {"id": 2, "s": "x"}, {}),
        ("delete", {"id": 3, "s": None}, None),
    ]


def test_partial_row_image_holds_present_columns_only() -> None:
    d = new_decoder()
    _table(d)
    image = b"\x00" + struct.pack("<i", 4)  # null bitmap of one present column, then id
    d.feed(rows_event(25, 5, 2, image, present=[True, False]))
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {"id": 4}


def test_mysql_v2_rows_events_and_gtids() -> None:
    d = BinlogDecoder(Position("binlog.000001", 4))
    d.feed(fde(mariadb=False))
    sid = uuid.UUID("3e11fa47-71ca-11e1-9e33-c80aa9429562")
    prev = struct.pack("<Q", 1) + sid.bytes + struct.pack("<Q", 1) + struct.pack("<QQ", 1, 8)
    assert d.feed(event(35, prev)) is None
    gtid = event(33, b"\x01" + sid.bytes + struct.pack("<Q", 8) + b"\x02" + bytes(16))
    assert d.feed(gtid) is None
    assert d.feed(query("BEGIN")) is None
    _table(d)
    d.feed(rows_event(30, 5, 2, _img(1, "new"), v2=True))
    d.feed(rows_event(31, 5, 2, _img(1, "new") + _img(1, "newer"), v2=True))
    txn = d.feed(xid(77, log_pos=999))
    assert isinstance(txn, Transaction)
    assert txn.gtid == f"{sid}:8"
    assert txn.position == Position("binlog.000001", 999, f"{sid}:1-8")
    assert [c.type for c in txn.changes] == ["insert", "update"]
    # DDL right after a GTID (no BEGIN) is a transaction of its own
    d.feed(event(33, b"\x01" + sid.bytes + struct.pack("<Q", 9) + b"\x02" + bytes(16)))
    ddl = d.feed(query("CREATE TABLE x (a INT)", "db2", log_pos=1200))
    assert isinstance(ddl, Transaction)
    assert ddl.ddl == [("db2", "CREATE TABLE x (a INT)")] and ddl.changes == []
    assert ddl.position.gtid == f"{sid}:1-9"


# -- transactions and positions -----------------------------------------------------------


def test_mariadb_standalone_ddl_and_gtid_state() -> None:
    d = BinlogDecoder(Position("binlog.000003", 400, "0-1-10,1-2-5"))
    d.feed(fde())
    d.feed(mariadb_gtid(0, 11, standalone=True))
    txn = d.feed(query("ALTER TABLE t ADD c INT", log_pos=500))
    assert isinstance(txn, Transaction)
    assert txn.gtid == "0-1-11" and txn.ddl == [("db", "ALTER TABLE t ADD c INT")]
    assert txn.position == Position("binlog.000003", 500, "0-1-11,1-2-5")
    d.feed(mariadb_gtid(1, 6, server_id=2))
    _table(d)
    d.feed(rows_event(23, 5, 2, _img(1, "x")))
    txn = d.feed(query("COMMIT", log_pos=700))  # non-transactional engines end with COMMIT
    assert isinstance(txn, Transaction)
    assert (txn.gtid, txn.xid) == ("1-2-6", None)
    assert d.position == Position("binlog.000003", 700, "0-1-11,1-2-6")


def test_rollback_ends_the_group_without_a_transaction() -> None:
    d = new_decoder()
    d.feed(mariadb_gtid(0, 3))
    _table(d)
    d.feed(rows_event(23, 5, 2, _img(1, "x")))
    assert d.feed(query("ROLLBACK", log_pos=800)) is None
    assert d.position.pos == 800
    d.feed(query("BEGIN"))
    _table(d)
    d.feed(rows_event(23, 5, 2, _img(2, "y")))
    txn = d.feed(xid(5, log_pos=900))
    assert isinstance(txn, Transaction)
    assert [c.data["id"] for c in txn.changes] == [2]  # nothing of the rolled-back group


def test_gtid_list_fills_domains_when_starting_at_a_file_head() -> None:
    d = new_decoder()
    body = struct.pack("<I", 2) + struct.pack("<IIQ", 0, 1, 40) + struct.pack("<IIQ", 5, 3, 7)
    d.feed(event(163, body))
    d.feed(mariadb_gtid(0, 41, standalone=True))
    txn = d.feed(query("DROP TABLE x", log_pos=300))
    assert isinstance(txn, Transaction)
    assert txn.position.gtid == "0-1-41,5-3-7"


def test_gtid_unknown_when_starting_mid_file_without_one() -> None:
    d = BinlogDecoder(Position("binlog.000001", 1000))
    d.feed(fde())
    d.feed(mariadb_gtid(0, 41, standalone=True))
    txn = d.feed(query("DROP TABLE x", log_pos=1100))
    assert isinstance(txn, Transaction)
    assert txn.gtid == "0-1-41" and txn.position == Position("binlog.000001", 1100, None)


def test_rotate_artificial_before_fde_with_and_without_crc() -> None:
    for checksum in (True, False):
        d = BinlogDecoder(Position("", 4, "0-1-1"))
        assert d.feed(rotate("binlog.000007", 4, artificial=True, checksum=checksum)) is None
        assert d.position == Position("binlog.000007", 4, "0-1-1")
        d.feed(fde(checksum=checksum))
        body = struct.pack("<QIB", 2, 0, 0x29) + bytes(6)
        d.feed(event(162, body, checksum=checksum))
        txn = d.feed(query("DROP TABLE x", log_pos=50, checksum=checksum))
        assert isinstance(txn, Transaction)
        assert txn.position == Position("binlog.000007", 50, "0-1-2")


def test_real_rotate_moves_to_the_next_file() -> None:
    d = new_decoder()
    d.feed(rotate("binlog.000002", 4))
    assert d.position.file == "binlog.000002"
    d.feed(query("CREATE DATABASE z", log_pos=200))
    assert d.position == Position("binlog.000002", 200, None)


def test_reset_drops_a_partial_transaction() -> None:
    d = new_decoder()
    d.feed(mariadb_gtid(0, 3))
    _table(d)
    d.feed(rows_event(23, 5, 2, _img(1, "lost")))
    d.reset(Position("binlog.000001", 4, "0-1-2"))
    d.feed(fde())
    d.feed(mariadb_gtid(0, 3))
    _table(d)
    d.feed(rows_event(23, 5, 2, _img(1, "kept")))
    txn = d.feed(xid(1, log_pos=10))
    assert isinstance(txn, Transaction)
    assert [c.data["s"] for c in txn.changes] == ["kept"]
    assert txn.position.gtid == "0-1-3"


# -- table info requests ----------------------------------------------------------------------


def _bare_map(table_id: int = 5, **kw: Any) -> bytes:
    """A TABLE_MAP as MINIMAL metadata writes it: no names."""
    return table_map(table_id, "db", "t", [(3, b""), (252, b"\x04")], optional=charset(46), **kw)


def _bare_row() -> bytes:
    return rows_event(23, 5, 2, row_image([struct.pack("<i", 1), b"\x02\x00\x00\x00[]"]))


def test_table_info_request_flow() -> None:
    d = new_decoder()
    req = d.feed(_bare_map())
    assert req == TableInfoRequest("db", "t", 5)
    with pytest.raises(BinlogError, match="provide_table_info"):
        d.feed(_bare_row())
    with pytest.raises(BinlogError, match="no pending request"):
        d.provide_table_info(TableInfoRequest("db", "other", 5), None)
    d.provide_table_info(req, TableInfo(("id", "doc"), frozenset({"doc"})))
    d.feed(_bare_row())
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {"id": 1, "doc": []}
    assert d.feed(_bare_map()) is None  # cached for this table id
    d.feed(query("ALTER TABLE t ADD x INT"))
    assert d.feed(_bare_map()) == req  # DDL invalidated the cache


def test_unknown_table_info_falls_back_to_positions() -> None:
    d = new_decoder()
    req = d.feed(_bare_map())
    assert isinstance(req, TableInfoRequest)
    d.provide_table_info(req, None)
    d.feed(_bare_row())
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {"@1": 1, "@2": "[]"}
    # a TableInfo for another column count (schema changed since) is not trusted either
    d = new_decoder()
    req = d.feed(_bare_map())
    assert isinstance(req, TableInfoRequest)
    d.provide_table_info(req, TableInfo(("id", "doc", "added"), frozenset({"doc"})))
    d.feed(_bare_row())
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {"@1": 1, "@2": "[]"}


def test_names_from_binlog_false_always_asks() -> None:
    d = new_decoder(names_from_binlog=False)
    tm = table_map(5, "db", "t", [(3, b"")], optional=names_tlv(["binlog_name"]))
    req = d.feed(tm)
    assert isinstance(req, TableInfoRequest)
    d.provide_table_info(req, TableInfo(("schema_name",), frozenset()))
    d.feed(rows_event(23, 5, 1, row_image([struct.pack("<i", 3)])))
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {"schema_name": 3}


def test_full_metadata_without_text_columns_needs_no_request() -> None:
    d = new_decoder()
    tm = table_map(5, "db", "t", [(3, b""), (252, b"\x02")], optional=names_tlv("ab") + charset(63))
    assert d.feed(tm) is None  # names known, the BLOB is binary: cannot be JSON


# -- framing and errors -------------------------------------------------------------------------


def test_framing_errors() -> None:
    d = new_decoder()
    with pytest.raises(BinlogError, match="shorter"):
        d.feed(b"\x00" * 10)
    bad_size = bytearray(xid(1))
    bad_size[9] += 1
    with pytest.raises(BinlogError, match="header says"):
        d.feed(bytes(bad_size))
    bad_crc = bytearray(xid(1))
    bad_crc[20] ^= 1
    with pytest.raises(BinlogError, match="CRC32"):
        d.feed(bytes(bad_crc))


def test_compressed_payloads_inflate_to_their_announced_size_only() -> None:
    header = b"\x81"  # compressed, zlib, a 1-byte size follows
    assert uncompress(header + b"\x05" + zlib.compress(b"hello")) == b"hello"
    bomb = zlib.compress(bytes(1 << 24))  # 16 MiB of zeros in 16 KiB, announced as 10 bytes
    with pytest.raises(BinlogError, match="wrong uncompressed size"):
        uncompress(header + b"\x0a" + bomb)
    with pytest.raises(BinlogError, match="truncated"):
        uncompress(header + b"\x05" + zlib.compress(b"hello")[:-2])


def test_checksums_off() -> None:
    d = BinlogDecoder(Position("binlog.000001", 4))
    d.feed(fde(checksum=False))
    d.feed(query("BEGIN", checksum=False))
    tm = table_map(5, "db", "t", [(3, b"")], optional=names_tlv(["a"]), checksum=False)
    d.feed(tm)
    d.feed(rows_event(23, 5, 1, row_image([b"\x01\x00\x00\x00"]), checksum=False))
    txn = d.feed(xid(1, checksum=False))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == {"a": 1}


def test_ignored_and_unsupported_events() -> None:
    d = new_decoder()
    for ignored in (27, 160, 161, 29, 5, 13, 14, 200):  # heartbeat, annotate, ..., unknown
        assert d.feed(event(ignored, b"whatever")) is None
    with pytest.raises(BinlogError, match="binlog_row_value_options"):
        d.feed(event(39, b""))
    with pytest.raises(BinlogError, match="binlog_transaction_compression"):
        d.feed(event(40, b""))


def test_corrupt_row_data() -> None:
    d = new_decoder()
    _table(d)
    with pytest.raises(BinlogError, match="overruns"):  # the string runs past the event
        d.feed(rows_event(23, 5, 2, struct.pack("<B", 0) + struct.pack("<i", 1) + b"\x10ab"))
    d = new_decoder()
    d.feed(table_map(5, "db", "t", [(3, b"")], nullable=[False], optional=names_tlv(["a"])))
    with pytest.raises(BinlogError, match="NOT NULL"):
        d.feed(rows_event(23, 5, 1, b"\x01"))
    d = new_decoder()
    with pytest.raises(BinlogError, match="without its TABLE_MAP"):
        d.feed(rows_event(23, 99, 1, row_image([b"\x01\x00\x00\x00"])))
    d = new_decoder()
    d.feed(table_map(5, "db", "t", [(0, b"")], optional=names_tlv(["old"])))
    with pytest.raises(BinlogError, match="unsupported column type 0"):
        d.feed(rows_event(23, 5, 1, row_image([b"\x00"])))


def test_a_column_bitmap_with_only_bits_past_the_last_column_is_refused() -> None:
    # found by fuzz/binlog.py: an image of no columns reads no bytes, so the rows loop
    # never advanced and appended empty rows until memory ran out
    d = new_decoder()
    d.feed(table_map(7, "db", "t", [(3, b"")], optional=names_tlv(["c"])))
    body = (7).to_bytes(6, "little") + b"\x01\x00" + b"\x01" + b"\x02" + b"\x00"
    with pytest.raises(BinlogError, match="without columns"):
        d.feed(event(23, body))


# -- GTID state ----------------------------------------------------------------------------------


def test_gtid_state_text_round_trips() -> None:
    assert str(MariaDBGtidState("1-2-5, 0-1-10")) == "0-1-10,1-2-5"
    s = MySQLGtidSet(
        "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:3"
    )
    s.add("3e11fa47-71ca-11e1-9e33-c80aa9429562", 6)
    s.add("4e11fa47-71ca-11e1-9e33-c80aa9429562", 1)
    assert str(s) == (
        "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-7,4e11fa47-71ca-11e1-9e33-c80aa9429562:1:3"
    )
    with pytest.raises(BinlogError):
        MariaDBGtidState("0-x-1")


def test_xa_query_ids() -> None:
    assert parse_xa_query("XA COMMIT X'7831',X'',1") == (1, b"x1", b"")
    assert parse_xa_query("xa rollback X'6162',X'63',7") == (7, b"ab", b"c")
    assert parse_xa_query("XA COMMIT 'it''s', 'b', 3") == (3, b"it's", b"b")
    assert parse_xa_query("XA COMMIT 'x'") == (1, b"x", b"")
    assert parse_xa_query("XA RECOVER") is None


def _xa_prepare(gtrid: bytes, one_phase: bool = False) -> bytes:
    body = struct.pack("<BIII", one_phase, 1, len(gtrid), 0) + gtrid
    return event(38, body)


def test_mysql_xa_prepare_then_commit() -> None:
    d = new_decoder(mariadb=False)
    sid = uuid.UUID(int=1)
    for n, gtrid in ((1, b"a"), (2, b"b")):
        d.feed(event(33, b"\x01" + sid.bytes + struct.pack("<Q", n) + bytes(17)))
        d.feed(query(f"XA START X'{gtrid.hex()}',X'',1"))
        _table(d)
        d.feed(rows_event(30, 5, 2, _img(n, "xa"), v2=True))
        d.feed(query(f"XA END X'{gtrid.hex()}',X'',1"))
        assert d.feed(_xa_prepare(gtrid)) is None  # held until XA COMMIT
        assert d.position.gtid == f"{sid}:{'1-2' if n == 2 else 1}"  # the group is consumed
    d.feed(event(33, b"\x01" + sid.bytes + struct.pack("<Q", 3) + bytes(17)))
    assert d.feed(query("XA ROLLBACK X'62',X'',1")) is None
    d.feed(event(33, b"\x01" + sid.bytes + struct.pack("<Q", 4) + bytes(17)))
    txn = d.feed(query("XA COMMIT X'61',X'',1", log_pos=4000))
    assert isinstance(txn, Transaction)
    assert [c.data for c in txn.changes] == [{"id": 1, "s": "xa"}]
    assert txn.gtid == f"{sid}:4" and txn.position == Position("binlog.000001", 4000, f"{sid}:1-4")


def test_heartbeats_need_no_crc_and_bytes_like_events_work() -> None:
    d = new_decoder()
    assert d.feed(event(27, b"binlog.000001", checksum=False)) is None
    d.feed(mariadb_gtid(0, 1))
    _table(d)
    d.feed(bytearray(rows_event(23, 5, 2, _img(1, "a"))))  # type: ignore[arg-type]
    txn = d.feed(memoryview(xid(1)))  # type: ignore[arg-type]
    assert isinstance(txn, Transaction) and txn.changes[0].data == {"id": 1, "s": "a"}
