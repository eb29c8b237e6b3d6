"""Property tests: decode(encode(x)) == x per value type; garbage only ever raises BinlogError."""

from __future__ import annotations

import base64
import datetime as dt
import struct
from decimal import Decimal

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.source.test_binlog_builders import (
    MARIADB_FDE,
    MARIADB_TABLE_MAP,
    MARIADB_WRITE_ROWS,
    date_bytes,
    datetime2_bytes,
    decimal_bytes,
    event,
    fde,
    names_tlv,
    new_decoder,
    row_image,
    rows_event,
    table_map,
    time2_bytes,
    timestamp2_bytes,
    tlv,
    xid,
)
from tests.source.test_binlog_units import decode_one
from tidings.source.binlog import BinlogDecoder, BinlogError, TableInfo, TableInfoRequest
from tidings.source.changes import Position, Transaction

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INTS = [(1, 8), (2, 16), (9, 24), (3, 32), (8, 64)]  # (column type, bits)


@FAST
@given(st.sampled_from(INTS), st.booleans(), st.data())
def test_integers(spec: tuple[int, int], unsigned: bool, data: st.DataObject) -> None:
    col_type, bits = spec
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    value = data.draw(st.integers(lo, hi))
    raw = value.to_bytes(bits // 8, "little", signed=not unsigned)
    optional = tlv(1, b"\x80" if unsigned else b"\x00")
    assert decode_one(col_type, b"", raw, optional=optional) == value


@FAST
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trips_to_the_same_float(value: float) -> None:
    decoded = decode_one(4, b"\x04", struct.pack("<f", value))
    assert struct.pack("<f", decoded) == struct.pack("<f", value)
    assert len(repr(decoded)) <= max(len(repr(value)), 16)  # never longer than needed


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double(value: float) -> None:
    assert decode_one(5, b"\x08", struct.pack("<d", value)) == value


@st.composite
def decimals(draw: st.DrawFn) -> tuple[str, int, int]:
    precision = draw(st.integers(1, 65))
    scale = draw(st.integers(0, min(precision, 30)))
    unscaled = draw(st.integers(-(10**precision) + 1, 10**precision - 1))
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    text = f"{digits[:-scale]}.{digits[-scale:]}" if scale else digits
    return ("-" + text if unscaled < 0 else text), precision, scale


@FAST
@given(decimals())
def test_decimal_exact(case: tuple[str, int, int]) -> None:
    text, precision, scale = case
    raw = decimal_bytes(Decimal(text), precision, scale)
    assert decode_one(246, bytes([precision, scale]), raw) == text


fsps = st.integers(0, 6)


def _frac(usec: int, fsp: int) -> tuple[int, str]:
    """usec truncated to fsp digits, and its text."""
    usec -= usec % 10 ** (6 - fsp)
    return usec, (f".{usec:06d}"[: fsp + 1] if fsp else "")


@FAST
@given(st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)), fsps)
def test_datetime2(value: dt.datetime, fsp: int) -> None:
    usec, frac = _frac(value.microsecond, fsp)
    raw = datetime2_bytes(
        value.year, value.month, value.day, value.hour, value.minute, value.second, usec, fsp
    )
    assert decode_one(18, bytes([fsp]), raw) == value.strftime("%Y-%m-%dT%H:%M:%S") + frac


@FAST
@given(st.integers(1, 2**31 - 1), st.integers(0, 999999), fsps)
def test_timestamp2(seconds: int, usec: int, fsp: int) -> None:
    usec, frac = _frac(usec, fsp)
    expected = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    raw = timestamp2_bytes(seconds, usec, fsp)
    assert decode_one(17, bytes([fsp]), raw) == expected + frac + "Z"


@FAST
@given(st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31)))
def test_date(value: dt.date) -> None:
    assert decode_one(10, b"", date_bytes(value.year, value.month, value.day)) == value.isoformat()


@FAST
@given(
    st.booleans(),
    st.integers(0, 838),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999999),
    fsps,
)
def test_time2(negative: bool, h: int, m: int, s: int, usec: int, fsp: int) -> None:
    usec, frac = _frac(usec, fsp)
    zero = not (h or m or s or usec)
    sign = "-" if negative and not zero else ""
    raw = time2_bytes(negative and not zero, h, m, s, usec, fsp)
    assert decode_one(19, bytes([fsp]), raw) == f"{sign}{h:02d}:{m:02d}:{s:02d}{frac}"


@FAST
@given(st.text(max_size=100))
def test_utf8mb4_text(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    assume(len(data) <= 400)
    raw = struct.pack("<H", len(data)) + data
    value = decode_one(15, struct.pack("<H", 400), raw, optional=tlv(3, b"\x2d"))
    assert value == data.decode("utf-8", "replace")


@FAST
@given(st.binary(max_size=300))
def test_blob_base64(data: bytes) -> None:
    raw = struct.pack("<H", len(data)) + data
    assert decode_one(252, b"\x02", raw, optional=tlv(3, b"\x3f")) == (
        base64.b64encode(data).decode()
    )


# -- garbage ---------------------------------------------------------------------------------

ALL_TYPES = [2, 3, 4, 15, 16, 19, 23, 24, 25, 27, 30, 31, 32, 33, 34, 35, 38, 39, 160, 161]
ALL_TYPES += [162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 0, 255]


def _feed_all(d: BinlogDecoder, events: list[bytes]) -> None:
    """Feed events; answer table requests; only BinlogError may escape."""
    for e in events:
        try:
            result = d.feed(e)
        except BinlogError:
            continue
        if isinstance(result, TableInfoRequest):
            d.provide_table_info(result, None)
        else:
            assert result is None or isinstance(result, Transaction)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_random_bytes(events: list[bytes]) -> None:
    d = BinlogDecoder(Position("binlog.000001", 4))
    _feed_all(d, events)
    d.feed(fde())
    _feed_all(d, events)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ALL_TYPES), st.binary(max_size=200)), max_size=6))
def test_well_framed_garbage_bodies(bodies: list[tuple[int, bytes]]) -> None:
    """Right size, right CRC, nonsense inside: reaches every event parser."""
    for flavour in (True, False):
        d = new_decoder(mariadb=flavour)
        _feed_all(d, [event(t, body) for t, body in bodies])


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.sampled_from([23, 24, 25, 166]))
def test_garbage_rows_for_a_real_table(rows: bytes, rows_type: int) -> None:
    """A real TABLE_MAP with every kind of column, then rows events of random bytes."""
    d = BinlogDecoder(Position("binlog.000001", 4))
    d.feed(MARIADB_FDE)
    req = d.feed(MARIADB_TABLE_MAP)
    assert isinstance(req, TableInfoRequest)
    d.provide_table_info(req, TableInfo(tuple("yagcedtjb"), frozenset({"j"})))
    body = MARIADB_WRITE_ROWS[19:-4]
    header = body[:8] + b"\x09\xff\x01" + (b"\xff\x01" if rows_type in (24, 167) else b"")
    _feed_all(d, [event(rows_type, header + rows), xid(1)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_events(data: st.DataObject) -> None:
    """Real events with bytes flipped, checksums recomputed: decoded or BinlogError."""
    originals = [MARIADB_TABLE_MAP, MARIADB_WRITE_ROWS, xid(3)]
    mutated = []
    for e in originals:
        body = bytearray(e[19:-4])
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] = data.draw(st.integers(0, 255))
        mutated.append(event(e[4], bytes(body)))
    d = BinlogDecoder(Position("binlog.000001", 4))
    d.feed(MARIADB_FDE)
    _feed_all(d, mutated)


@FAST
@given(st.lists(st.sampled_from(["a", "b", "c"]), unique=True))
def test_set_labels(members: list[str]) -> None:
    bits = sum(1 << "abc".index(m) for m in members)
    value = decode_one(254, b"\xf8\x01", bytes([bits]), optional=tlv(5, b"\x03\x01a\x01b\x01c"))
    assert value == sorted(members)


def test_table_with_many_columns_and_names() -> None:
    """300 columns: multi-byte bitmaps, a packed column count, one struct run."""
    n = 300
    names = [f"c{i}" for i in range(n)]
    d = new_decoder()
    tm = table_map(3, "db", "wide", [(3, b"")] * n, nullable=[False] * n, optional=names_tlv(names))
    assert d.feed(tm) is None
    image = row_image([struct.pack("<i", i) for i in range(n)])
    d.feed(rows_event(23, 3, n, image))
    txn = d.feed(xid(1))
    assert isinstance(txn, Transaction)
    assert txn.changes[0].data == dict(zip(names, range(n), strict=True))
