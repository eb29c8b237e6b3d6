"""Binlog files on disk: the 4-byte magic, then events back to back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tidings.source.binlog.errors import BinlogError

MAGIC = b"\xfebin"


def split_events(data: bytes, offset: int = 4) -> Iterator[bytes]:
    """Yield each complete event of a binlog file's bytes (a partial last one is left out)."""
    if data[:4] != MAGIC:
        raise BinlogError("not a binlog file (bad magic)")
    pos = max(offset, 4)
    while pos + 19 <= len(data):
        size = int.from_bytes(data[pos + 9 : pos + 13], "little")
        if size < 19:
            raise BinlogError(f"bad event size {size} at offset {pos}")
        if pos + size > len(data):
            return
        yield data[pos : pos + size]
        pos += size


def read_events(path: str | Path, offset: int = 4) -> Iterator[bytes]:
    yield from split_events(Path(path).read_bytes(), offset)
