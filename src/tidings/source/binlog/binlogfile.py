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


class BinlogTail:
    """Follow a server's binlog files on disk from a start point, as a dump thread would.

    `read()` returns the events written since the last call: first the file's
    FORMAT_DESCRIPTION event when starting past it, then each complete event, moving
    on to the next file listed in `<base>.index` once the current one is finished.
    For tests, benchmarks and offline decoding; the daemon reads from a replica
    connection instead.
    """

    def __init__(self, datadir: str | Path, file: str, pos: int = 4, base: str = "binlog") -> None:
        self.datadir = Path(datadir)
        self.base = base
        self.file = file
        self.pos = max(pos, 4)
        self._need_format = self.pos > 4

    def _files(self) -> list[str]:
        index = self.datadir / f"{self.base}.index"
        return [Path(line.strip()).name for line in index.read_text().splitlines() if line.strip()]

    def read(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            data = (self.datadir / self.file).read_bytes()
            if self._need_format:
                out.append(next(split_events(data)))
                self._need_format = False
            for event in split_events(data, self.pos):
                out.append(event)
                self.pos += len(event)
            files = self._files()
            if self.file in files and files.index(self.file) + 1 < len(files):
                if self.pos < len(data):
                    break  # a partial event at the end of a finished file: caller retries
                self.file = files[files.index(self.file) + 1]
                self.pos = 4
                continue
            return out
        return out
