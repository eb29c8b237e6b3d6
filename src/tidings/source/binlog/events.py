"""Event framing and the small control events (everything but TABLE_MAP and rows).

An event is the 19-byte v4 header, a body, and a CRC32 of both when the
FORMAT_DESCRIPTION event says checksums are on. Parsers here take the whole
event and the end of its body (the CRC excluded).
"""

from __future__ import annotations

import re
import struct
import uuid
import zlib
from dataclasses import dataclass

from tidings.source.binlog import constants as c
from tidings.source.binlog.errors import BinlogError
from tidings.source.binlog.reader import Reader

HEADER = struct.Struct("<IBIIIH")  # timestamp, type, server_id, event_size, log_pos, flags


@dataclass(slots=True, frozen=True)
class Format:
    """What a FORMAT_DESCRIPTION event tells about the events after it."""

    server_version: str
    #: post-header length of each event type, indexed by type - 1
    post_header: bytes
    checksum: bool
    mariadb: bool

    def post_header_len(self, event_type: int, default: int) -> int:
        if 0 < event_type <= len(self.post_header):
            return self.post_header[event_type - 1]
        return default


def crc_ok(event: bytes) -> bool:
    return zlib.crc32(memoryview(event)[:-4]) == int.from_bytes(event[-4:], "little")


def _version(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in m.groups()) if m else (0, 0, 0)


def parse_format_description(event: bytes) -> Format:
    r = Reader(event, c.HEADER_LEN)
    r.uint(2)  # binlog version
    server_version = r.take(50).split(b"\0", 1)[0].decode("ascii", "replace")
    r.take(4)  # create timestamp
    header_len = r.u8()
    if header_len != c.HEADER_LEN:
        raise BinlogError(f"unsupported binlog header length {header_len} (need v4, 19 bytes)")
    mariadb = "mariadb" in server_version.lower()
    # servers since MySQL 5.6.1 / MariaDB 5.3 end the event with the checksum
    # algorithm byte and 4 CRC bytes (present, if meaningless, when checksums are off)
    has_alg = mariadb or _version(server_version) >= (5, 6, 1)
    end = len(event) - 5 if has_alg else len(event)
    if end < r.pos:
        raise BinlogError("truncated FORMAT_DESCRIPTION event")
    post_header = event[r.pos : end]
    checksum = has_alg and event[end] == c.CHECKSUM_CRC32
    # the server computes this event's CRC with LOG_EVENT_BINLOG_IN_USE_F clear, then
    # sets the flag in the file while the binlog is open
    if checksum and not crc_ok(event[:17] + bytes((event[17] & ~1,)) + event[18:]):
        raise BinlogError("FORMAT_DESCRIPTION event fails its CRC32 check")
    return Format(server_version, post_header, checksum, mariadb)


def parse_rotate(event: bytes, end: int) -> tuple[str, int]:
    """(next file name, position in it)."""
    r = Reader(event, c.HEADER_LEN, end)
    pos = r.uint(8)
    return r.rest().decode("utf-8", "replace"), pos


@dataclass(slots=True, frozen=True)
class Query:
    database: str
    sql: str


def parse_query(event: bytes, end: int, post_header_len: int, compressed: bool) -> Query:
    r = Reader(event, c.HEADER_LEN, end)
    r.take(8)  # thread id, exec time
    db_len = r.u8()
    r.take(2)  # error code
    status_len = r.uint(2) if post_header_len >= 13 else 0
    r.take(post_header_len - 13 if post_header_len > 13 else 0)
    r.take(status_len)
    database = r.take(db_len).decode("utf-8", "replace")
    r.take(1)
    raw = r.rest()
    if compressed:
        raw = uncompress(raw)
    return Query(database, raw.decode("utf-8", "replace"))


def uncompress(data: bytes) -> bytes:
    """MariaDB's compressed event payload: a header byte, the raw size, zlib data."""
    if not data or (data[0] & 0xE0) != 0x80:
        raise BinlogError("bad compressed event header")
    width = data[0] & 0x07
    if not 1 <= width <= 4 or len(data) < 1 + width:
        raise BinlogError("bad compressed event length")
    if data[0] & 0x70:
        raise BinlogError(f"unknown compression algorithm {(data[0] & 0x70) >> 4}")
    size = int.from_bytes(data[1 : 1 + width], "big")
    inflate = zlib.decompressobj()
    try:
        # at most one byte more than announced: a corrupt event cannot inflate without bound
        out = inflate.decompress(data[1 + width :], size + 1)
    except zlib.error as e:
        raise BinlogError(f"compressed event: {e}") from None
    if len(out) != size:
        raise BinlogError("compressed event: wrong uncompressed size")
    if not inflate.eof:
        raise BinlogError("compressed event: incomplete or truncated stream")
    return out


XaKey = tuple[int, bytes, bytes]  # format id, gtrid, bqual


def parse_xa_prepare(event: bytes, end: int) -> tuple[bool, XaKey]:
    """(one phase, XA transaction id) of an XA_PREPARE event."""
    r = Reader(event, c.HEADER_LEN, end)
    one_phase = bool(r.u8())
    format_id = r.uint(4)
    gtrid_len = r.uint(4)
    bqual_len = r.uint(4)
    return one_phase, (format_id, r.take(gtrid_len), r.take(bqual_len))


_XA_HEX = re.compile(r"XA\s+\w+\s+X'([0-9A-Fa-f]*)'\s*,\s*X'([0-9A-Fa-f]*)'\s*,\s*(\d+)", re.I)
_QUOTED = r"'((?:[^']|'')*)'"
_XA_QUOTED = re.compile(rf"XA\s+\w+\s+{_QUOTED}(?:\s*,\s*{_QUOTED}(?:\s*,\s*(\d+))?)?", re.I)


def parse_xa_query(sql: str) -> XaKey | None:
    """The XA id of "XA COMMIT X'7831',X'',1" (as servers log it) or "XA COMMIT 'x1'"."""
    m = _XA_HEX.match(sql.strip())
    if m:
        return int(m[3]), bytes.fromhex(m[1]), bytes.fromhex(m[2])
    m = _XA_QUOTED.match(sql.strip())
    if m:
        return int(m[3] or 1), _unquote(m[1]), _unquote(m[2])
    return None


def _unquote(text: str | None) -> bytes:
    return (text or "").replace("''", "'").encode()


def parse_xid(event: bytes, end: int) -> int:
    return Reader(event, c.HEADER_LEN, end).uint(8)


@dataclass(slots=True, frozen=True)
class MariaGtid:
    domain: int
    server_id: int
    seq: int
    flags: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server_id}-{self.seq}"


def parse_mariadb_gtid(event: bytes, end: int, server_id: int) -> MariaGtid:
    r = Reader(event, c.HEADER_LEN, end)
    seq = r.uint(8)
    domain = r.uint(4)
    flags = r.u8()
    return MariaGtid(domain, server_id, seq, flags)


def parse_gtid_list(event: bytes, end: int) -> list[MariaGtid]:
    r = Reader(event, c.HEADER_LEN, end)
    count = r.uint(4) & 0x0FFFFFFF
    if count * 16 > r.remaining():
        raise BinlogError("truncated GTID_LIST event")
    return [MariaGtid(r.uint(4), r.uint(4), r.uint(8), 0) for _ in range(count)]


def parse_mysql_gtid(event: bytes, end: int) -> tuple[str, int]:
    """(source uuid, transaction number) of a MySQL GTID event."""
    r = Reader(event, c.HEADER_LEN, end)
    r.u8()  # flags
    sid = str(uuid.UUID(bytes=r.take(16)))
    return sid, r.uint(8)


def parse_previous_gtids(event: bytes, end: int) -> dict[str, list[tuple[int, int]]]:
    """uuid -> [start, end) intervals."""
    r = Reader(event, c.HEADER_LEN, end)
    out: dict[str, list[tuple[int, int]]] = {}
    for _ in range(r.uint(8)):
        sid = str(uuid.UUID(bytes=r.take(16)))
        n = r.uint(8)
        if n * 16 > r.remaining():
            raise BinlogError("truncated PREVIOUS_GTIDS event")
        out.setdefault(sid, []).extend((r.uint(8), r.uint(8)) for _ in range(n))
    return out
