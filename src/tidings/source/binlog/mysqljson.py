"""MySQL's binary JSON (column type 245) to Python values.

Format: sql-common/json_binary.cc. A value is a type byte then its payload;
objects and arrays hold offsets relative to the start of their own payload,
in 2-byte ("small") or 4-byte ("large") form. Scalars that fit an offset slot
are stored inline in the value entry.
"""

from __future__ import annotations

import struct
from typing import Any

from tidings.source.binlog import constants as c
from tidings.source.binlog.errors import BinlogError
from tidings.source.binlog.values import base64, read_decimal

SMALL_OBJECT = 0x00
LARGE_OBJECT = 0x01
SMALL_ARRAY = 0x02
LARGE_ARRAY = 0x03
LITERAL = 0x04
INT16 = 0x05
UINT16 = 0x06
INT32 = 0x07
UINT32 = 0x08
INT64 = 0x09
UINT64 = 0x0A
DOUBLE = 0x0B
STRING = 0x0C
OPAQUE = 0x0F

_LITERALS = {0: None, 1: True, 2: False}
_SCALAR = {
    INT16: struct.Struct("<h"),
    UINT16: struct.Struct("<H"),
    INT32: struct.Struct("<i"),
    UINT32: struct.Struct("<I"),
    INT64: struct.Struct("<q"),
    UINT64: struct.Struct("<Q"),
    DOUBLE: struct.Struct("<d"),
}


def decode_json(data: bytes) -> Any:
    """Decode one binary JSON document; an empty value is JSON null (as MySQL treats it)."""
    if not data:
        return None
    return _value(data[0], data, 1, len(data))


def _value(t: int, buf: bytes, pos: int, end: int) -> Any:
    if t in (SMALL_OBJECT, LARGE_OBJECT):
        return _container(buf, pos, end, t == LARGE_OBJECT, True)
    if t in (SMALL_ARRAY, LARGE_ARRAY):
        return _container(buf, pos, end, t == LARGE_ARRAY, False)
    if t == LITERAL:
        return _literal(buf[pos] if pos < end else -1)
    scalar = _SCALAR.get(t)
    if scalar is not None:
        if pos + scalar.size > end:
            raise BinlogError("truncated JSON scalar")
        return scalar.unpack_from(buf, pos)[0]
    if t == STRING:
        n, pos = _varlen(buf, pos, end)
        if pos + n > end:
            raise BinlogError("truncated JSON string")
        return buf[pos : pos + n].decode("utf-8", "replace")
    if t == OPAQUE:
        if pos >= end:
            raise BinlogError("truncated JSON opaque value")
        field_type = buf[pos]
        n, pos = _varlen(buf, pos + 1, end)
        if pos + n > end:
            raise BinlogError("truncated JSON opaque value")
        return _opaque(field_type, buf[pos : pos + n])
    raise BinlogError(f"unknown JSON value type 0x{t:02x}")


def _literal(code: int) -> bool | None:
    if code not in _LITERALS:
        raise BinlogError(f"bad JSON literal {code}")
    return _LITERALS[code]


def _varlen(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length stored 7 bits per byte, low bits first, high bit = more follows."""
    n = 0
    for i in range(5):
        if pos >= end:
            raise BinlogError("truncated JSON length")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return n, pos
    raise BinlogError("JSON length too long")


def _container(buf: bytes, base: int, end: int, large: bool, is_object: bool) -> Any:
    w = 4 if large else 2
    if base + 2 * w > end:
        raise BinlogError("truncated JSON container")
    count = int.from_bytes(buf[base : base + w], "little")
    size = int.from_bytes(buf[base + w : base + 2 * w], "little")
    if base + size > end:
        raise BinlogError("JSON container larger than its value")
    end = base + size
    entries = base + 2 * w
    keys: list[str] = []
    if is_object:
        for i in range(count):
            k = entries + i * (w + 2)
            if k + w + 2 > end:
                raise BinlogError("truncated JSON key entry")
            offset = base + int.from_bytes(buf[k : k + w], "little")
            length = int.from_bytes(buf[k + w : k + w + 2], "little")
            if offset + length > end:
                raise BinlogError("JSON key outside its object")
            keys.append(buf[offset : offset + length].decode("utf-8", "replace"))
        entries += count * (w + 2)
    values = []
    for i in range(count):
        e = entries + i * (1 + w)
        if e + 1 + w > end:
            raise BinlogError("truncated JSON value entry")
        t = buf[e]
        if t == LITERAL:
            values.append(_literal(buf[e + 1]))
        elif t in (INT16, UINT16) or (large and t in (INT32, UINT32)):
            values.append(_SCALAR[t].unpack_from(buf, e + 1)[0])  # inlined in the entry
        else:
            offset = base + int.from_bytes(buf[e + 1 : e + 1 + w], "little")
            if offset >= end:
                raise BinlogError("JSON value outside its container")
            values.append(_value(t, buf, offset, end))
    if is_object:
        return dict(zip(keys, values, strict=True))
    return values


def _opaque(field_type: int, data: bytes) -> Any:
    """MySQL-typed scalars inside JSON, rendered as MySQL prints them (JSON_UNQUOTE)."""
    if field_type == c.T_NEWDECIMAL and len(data) >= 2:
        return read_decimal(data, 2, data[0], data[1])
    if field_type in (c.T_DATE, c.T_DATETIME, c.T_TIMESTAMP, c.T_TIME) and len(data) >= 8:
        packed = int.from_bytes(data[:8], "little", signed=True)
        return _packed_temporal(field_type, packed)
    return f"base64:type{field_type}:{base64(data)}"


def _packed_temporal(field_type: int, packed: int) -> str:
    """my_time.cc TIME_from_longlong_*_packed, printed like MySQL's JSON text."""
    if field_type == c.T_TIME:
        sign = "-" if packed < 0 else ""
        packed = abs(packed)
        hms = packed >> 24
        usec = packed & 0xFFFFFF
        return f"{sign}{hms >> 12 & 1023:02d}:{hms >> 6 & 63:02d}:{hms & 63:02d}.{usec:06d}"
    intpart = packed >> 24
    usec = packed & 0xFFFFFF
    ymd = intpart >> 17
    ym = ymd >> 5
    hms = intpart & 0x1FFFF
    date = f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 31:02d}"
    if field_type == c.T_DATE:
        return date
    return f"{date} {hms >> 12:02d}:{hms >> 6 & 63:02d}:{hms & 63:02d}.{usec:06d}"
