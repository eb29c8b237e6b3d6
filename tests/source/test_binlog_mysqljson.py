"""MySQL binary JSON: byte literals, a test-side encoder, and a round-trip property."""

from __future__ import annotations

import contextlib
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.source.test_binlog_builders import datetime2_bytes, decimal_bytes
from tidings.source.binlog import BinlogError
from tidings.source.binlog.mysqljson import decode_json

# -- byte literals, laid out by hand from sql-common/json_binary.cc --------------------------


def test_small_object_with_inlined_int() -> None:
    # {"a": 1}: count, size, key entry (offset 11, length 1), value entry (int16 inline), "a"
    doc = bytes.fromhex("0001000c000b00010005010061")
    assert decode_json(doc) == {"a": 1}


def test_small_array_of_literal_string_double() -> None:
    # [true, "x", 3.5]
    doc = bytes.fromhex("02030017000401000c0d000b0f0001780000000000000c40")
    assert decode_json(doc) == [True, "x", 3.5]


def test_scalars() -> None:
    assert decode_json(b"") is None  # an empty value is JSON null
    assert decode_json(b"\x04\x00") is None
    assert decode_json(b"\x04\x02") is False
    assert decode_json(b"\x05\xff\xff") == -1
    assert decode_json(b"\x06\xff\xff") == 65535
    assert decode_json(b"\x07" + struct.pack("<i", -(2**31))) == -(2**31)
    assert decode_json(b"\x08" + struct.pack("<I", 2**32 - 1)) == 2**32 - 1
    assert decode_json(b"\x09" + struct.pack("<q", -(2**63))) == -(2**63)
    assert decode_json(b"\x0a" + struct.pack("<Q", 2**64 - 1)) == 2**64 - 1
    assert decode_json(b"\x0b" + struct.pack("<d", -0.5)) == -0.5
    long_text = "é" * 100  # 200 bytes: a two-byte variable length
    assert decode_json(b"\x0c\xc8\x01" + long_text.encode()) == long_text


def test_opaque_mysql_types() -> None:
    dec = bytes([5, 2]) + decimal_bytes(Decimal("-12.34"), 5, 2)
    assert decode_json(b"\x0f\xf6" + bytes([len(dec)]) + dec) == "-12.34"
    packed = (
        int.from_bytes(datetime2_bytes(2024, 1, 2, 3, 4, 5, 0, 0), "big") - 0x8000000000
    ) << 24
    packed += 6
    raw = struct.pack("<q", packed)
    assert decode_json(b"\x0f\x0c\x08" + raw) == "2024-01-02 03:04:05.000006"
    assert decode_json(b"\x0f\x0a\x08" + raw) == "2024-01-02"
    time_packed = -((1 << 12 | 2 << 6 | 3) << 24 | 500000)
    assert decode_json(b"\x0f\x0b\x08" + struct.pack("<q", time_packed)) == "-01:02:03.500000"
    assert decode_json(b"\x0f\xfc\x02\x01\x02") == "base64:type252:AQI="


@pytest.mark.parametrize(
    "doc",
    [
        b"\x00\x01\x00",  # truncated container header
        b"\x00\x01\x00\xff\x00",  # size past the end
        b"\x02\x01\x00\x07\x00\x0c\xff\x00",  # value offset outside
        b"\x0c\x80",  # truncated length
        b"\x0c\x05ab",  # string past the end
        b"\x04\x09",  # bad literal
        b"\x42",  # unknown type
    ],
)
def test_corrupt_documents_raise_binlog_error(doc: bytes) -> None:
    with pytest.raises(BinlogError):
        decode_json(doc)


# -- a test-side encoder (json_binary::serialize) for the round-trip property ----------------


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_json(value: Any) -> bytes:
    """Type byte + payload."""
    if value is None or isinstance(value, bool):
        return b"\x04" + bytes([{None: 0, True: 1, False: 2}[value]])
    if isinstance(value, int):
        for t, fmt in ((5, "<h"), (7, "<i"), (9, "<q"), (10, "<Q")):
            try:
                return bytes([t]) + struct.pack(fmt, value)
            except struct.error:
                continue
        raise ValueError(value)
    if isinstance(value, float):
        return b"\x0b" + struct.pack("<d", value)
    if isinstance(value, str):
        data = value.encode()
        return b"\x0c" + _varlen(len(data)) + data
    try:
        return _container(value, large=False)
    except OverflowError:  # an offset does not fit 16 bits: the large format
        return _container(value, large=True)


def _inline(t: int, large: bool) -> bool:
    return t in (4, 5, 6) or (large and t in (7, 8))


def _container(value: dict[str, Any] | list[Any], large: bool) -> bytes:
    w = 4 if large else 2
    keys = list(value) if isinstance(value, dict) else []
    items = list(value.values()) if isinstance(value, dict) else list(value)
    n = len(items)
    header = 2 * w + (n * (w + 2) if isinstance(value, dict) else 0) + n * (1 + w)
    key_data = b""
    key_entries = b""
    offset = header
    for k in keys:
        kb = k.encode()
        key_entries += offset.to_bytes(w, "little") + len(kb).to_bytes(2, "little")
        key_data += kb
        offset += len(kb)
    value_entries = b""
    value_data = b""
    for item in items:
        enc = encode_json(item)
        t, payload = enc[0], enc[1:]
        if _inline(t, large):
            value_entries += bytes([t]) + payload.ljust(w, b"\0")[:w]
        else:
            value_entries += bytes([t]) + offset.to_bytes(w, "little")
            value_data += payload
            offset += len(payload)
    body = n.to_bytes(w, "little") + offset.to_bytes(w, "little")
    body += key_entries + value_entries + key_data + value_data
    kind = (0 if isinstance(value, dict) else 2) + (1 if large else 0)
    return bytes([kind]) + body


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_round_trip(value: Any) -> None:
    assert decode_json(encode_json(value)) == value


def test_large_containers_round_trip() -> None:
    big = {f"key{i}": ["x" * 100, i, 2**40] for i in range(1000)}  # > 64 KiB: large format
    encoded = encode_json(big)
    assert encoded[0] == 1
    assert decode_json(encoded) == big


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_binlog_error(data: bytes) -> None:
    with contextlib.suppress(BinlogError):
        decode_json(data)
