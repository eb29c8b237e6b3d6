"""Shared by the targets: cut one input into the reads a connection would see."""

from __future__ import annotations

from collections.abc import Iterator


def reads(data: bytes) -> Iterator[bytes]:
    """The first byte picks a read size (0: everything at once); the rest is the stream.

    Parsers must give the same answer however the stream is cut, so the fuzzer
    gets to choose the cuts too.
    """
    if not data:
        return
    size = data[0] or len(data)
    for start in range(1, len(data), size):
        yield data[start : start + size]
