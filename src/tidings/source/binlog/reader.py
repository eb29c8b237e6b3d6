"""Bounds-checked reading of event bodies (not used on the per-row hot path)."""

from __future__ import annotations

from tidings.source.binlog.errors import BinlogError


class Reader:
    """A cursor over `buf[pos:end]` whose reads raise BinlogError past the end."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            have = self.end - pos
            raise BinlogError(f"truncated event: need {n} bytes at offset {pos}, have {have}")
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def u8(self) -> int:
        if self.pos >= self.end:
            raise BinlogError(f"truncated event at offset {self.pos}")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def packed(self) -> int:
        """A length-encoded integer (1, 3, 4 or 9 bytes)."""
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.uint(2)
        if first == 0xFD:
            return self.uint(3)
        if first == 0xFE:
            return self.uint(8)
        raise BinlogError(f"bad length-encoded integer 0x{first:02x} at offset {self.pos - 1}")

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)


def bits(data: bytes, count: int) -> list[bool]:
    """A little-endian bitmap (bit i of byte i//8) as `count` booleans."""
    if len(data) * 8 < count:
        raise BinlogError("truncated bitmap")
    return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(count)]
