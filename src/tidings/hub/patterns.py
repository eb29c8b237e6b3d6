"""Redis glob patterns for PSUBSCRIBE, with Redis's exact semantics.

Mirrors redis `stringmatchlen` (util.c) over UTF-8 bytes, quirks included:
`?` is one byte; `\\x` is a literal x (also inside a class); `[^...]` negates;
`]` right after `[` closes an empty class (`[]` matches nothing, `[^]` any
byte); an unclosed `[` runs to the end of the pattern; `a-z` ranges may be
written backwards, and their ends compare as signed C chars (bytes >= 0x80 sort
below 0x00). The pattern is translated once into a bytes regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache


def _byte(c: int) -> bytes:
    return b"\\x%02x" % c


def _range(a: int, b: int) -> bytes:
    """The bytes in a class range `a-b` as redis compares them: as C `char`, signed on
    the platforms redis is built for, so 0x80-0xff sort below 0x00."""
    lo, hi = sorted((a - 256 if a > 127 else a, b - 256 if b > 127 else b))
    if lo >= 0 or hi < 0:  # one side of zero: a plain byte range
        return _byte(lo & 0xFF) + b"-" + _byte(hi & 0xFF)
    # from a high byte through 0xff, then 0x00 through the low one
    return _byte(0) + b"-" + _byte(hi) + _byte(lo & 0xFF) + b"-" + _byte(0xFF)


def _class(p: bytes, i: int) -> tuple[bytes, int]:
    """Translate the class starting after `[` at index i; return (regex, index after it)."""
    n = len(p)
    negate = i < n and p[i] == ord("^")
    if negate:
        i += 1
    items: list[bytes] = []
    while i < n:
        c = p[i]
        if c == ord("\\") and n - i >= 2:
            i += 1
            items.append(_byte(p[i]))
        elif c == ord("]"):
            break
        elif n - i >= 3 and p[i + 1] == ord("-"):
            items.append(_range(c, p[i + 2]))
            i += 2
        else:
            items.append(_byte(c))
        i += 1
    body = b"".join(items)
    if not body:
        return (b"." if negate else b"(?!)"), i + 1
    return (b"[^" if negate else b"[") + body + b"]", i + 1


def translate(pattern: bytes) -> bytes:
    """The anchored bytes regex equivalent to a Redis glob.

    Everything but `*` matches exactly one byte, so the glob is fixed-length pieces
    joined by stars. Each piece between two stars is searched for at its leftmost
    place, which is always as good as any later one, inside an atomic group that never
    backtracks: matching takes O(pattern x channel) steps. A plain `.*` per star would
    backtrack through every split of the channel: `*a*a*a*a*a*a*a*a*a*a*b` against 40
    a's takes seconds, and one such PSUBSCRIBE would stall every client.
    """
    pieces: list[list[bytes]] = [[]]  # the one-byte parts between stars
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == ord("*"):
            pieces.append([])
            i += 1
        elif c == ord("?"):
            pieces[-1].append(b".")
            i += 1
        elif c == ord("["):
            part, i = _class(pattern, i + 1)
            pieces[-1].append(part)
        else:
            if c == ord("\\") and n - i >= 2:
                i += 1
            pieces[-1].append(_byte(pattern[i]))
            i += 1
    parts = [b"".join(piece) for piece in pieces]
    if len(parts) == 1:  # no star
        return parts[0] + rb"\Z"
    first, *middle, last = parts
    found = b"".join(b"(?>.*?" + piece + b")" for piece in middle if piece)
    return first + found + b".*" + last + rb"\Z"


def encode(name: str) -> bytes:
    """Channel and pattern names are UTF-8 text in the hub; bytes that were not survive."""
    return name.encode("utf-8", "surrogateescape")


class GlobPattern:
    """A compiled glob; equal patterns compare equal so they can key dicts."""

    __slots__ = ("_match", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._match = _compile(text)

    def matches(self, channel: str) -> bool:
        return self._match(encode(channel)) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GlobPattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"GlobPattern({self.text!r})"


@lru_cache(maxsize=4096)
def _compile(text: str) -> Callable[[bytes], re.Match[bytes] | None]:
    return re.compile(translate(encode(text)), re.DOTALL).match
