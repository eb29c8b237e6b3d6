"""The binlog decoder (tidings.source.binlog.BinlogDecoder) fed corrupted event streams.

The input is a flags byte, then events back to back as in a binlog file (seeds are
real streams from MariaDB and MySQL-format builders). Each event's own size field
cuts the stream (what does not fit is one last, truncated event). Flags:

  1: rewrite each event's size field to its real length (so truncated and resized
     events get past the header check)
  2: recompute each event's CRC32 (so flipped bytes reach the event parsers)
  4: answer table-info requests with a schema (else: "table unknown")
  8: decode with names_from_binlog=False (every TABLE_MAP asks for the schema)
  16: start mid-file at a GTID position instead of at the head of a file
  32: after an error, reset to the last good position (as the daemon does on
      reconnecting) instead of feeding on

Whatever the decoder returns must become event JSON as tidings.publish makes it.
"""

from __future__ import annotations

import struct
import zlib

import orjson

from fuzz import check_clear
from tidings.publish import DEFAULT_OUTBOX, change_record, ddl_records
from tidings.source.binlog import BinlogDecoder, BinlogError, TableInfo, TableInfoRequest
from tidings.source.changes import Position, Transaction

ERRORS = (BinlogError,)

_HEADER = 19
_SCHEMA = TableInfo(("id", "a", "b", "c", "d", "e", "f", "g", "j"), frozenset({"j", "g"}))


def events(stream: bytes, fix_size: bool, fix_crc: bool) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(stream):
        size = int.from_bytes(stream[pos + 9 : pos + 13], "little")
        if size < _HEADER or pos + size > len(stream):
            size = len(stream) - pos
        event = bytearray(stream[pos : pos + size])
        pos += size
        if fix_size and len(event) >= _HEADER:
            struct.pack_into("<I", event, 9, len(event))
        if fix_crc and len(event) >= _HEADER + 4:
            struct.pack_into("<I", event, len(event) - 4, zlib.crc32(event[:-4]))
        out.append(bytes(event))
    return out


def fuzz_one(data: bytes) -> None:
    flags = data[0] if data else 0
    start = Position("binlog.000001", 4)
    if flags & 16:
        start = Position("binlog.000001", 1234, gtid="0-1-5")
    decoder = BinlogDecoder(start, names_from_binlog=not flags & 8)
    for event in events(data[1:], bool(flags & 1), bool(flags & 2)):
        try:
            result = decoder.feed(event)
        except BinlogError as exc:
            check_clear(exc)
            if flags & 32:
                decoder.reset(decoder.position)
            continue
        if isinstance(result, TableInfoRequest):
            decoder.provide_table_info(result, _SCHEMA if flags & 4 else None)
        elif isinstance(result, Transaction):
            _publishable(result)


def _publishable(txn: Transaction) -> None:
    """The events the daemon would publish for `txn` encode (as Hub.publish_record does)."""
    for index in range(len(txn.changes)):
        orjson.dumps(change_record(txn, index))
    for channel, fields in ddl_records(txn, DEFAULT_OUTBOX):
        orjson.dumps({"id": 1, "channel": channel, **fields})
