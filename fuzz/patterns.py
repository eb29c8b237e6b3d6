"""PSUBSCRIBE glob patterns (tidings.hub.patterns.GlobPattern) against channel names.

Every pattern is valid, so nothing may be raised: the point is time. The input is
the pattern, a NUL, then the channel name (both raw bytes, as a RESP client sends).
"""

from __future__ import annotations

from tidings.hub.patterns import GlobPattern

ERRORS: tuple[type[BaseException], ...] = ()


def fuzz_one(data: bytes) -> None:
    pattern, _, channel = data.partition(b"\0")
    glob = GlobPattern(pattern.decode("utf-8", "surrogateescape"))
    glob.matches(channel.decode("utf-8", "surrogateescape"))
    glob.matches(channel.decode("utf-8", "surrogateescape") * 8)
