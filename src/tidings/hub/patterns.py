"""Redis-style glob patterns (`*`, `?`, `[abc]`, `[^a-z]`, `\\x`) for PSUBSCRIBE."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache


def _translate(pattern: str) -> str:
    """Translate a Redis glob into an anchored regular expression.

    Follows redis `stringmatchlen`: `[` without a closing `]` matches itself
    literally, `\\` escapes the next character, `^` after `[` negates.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] == "^" else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                if negate:
                    body = body[1:]
                parts: list[str] = []
                j = 0
                while j < len(body):
                    if body[j] == "\\" and j + 1 < len(body):
                        parts.append(re.escape(body[j + 1]))
                        j += 2
                    elif j + 2 < len(body) and body[j + 1] == "-":
                        lo, hi = sorted((body[j], body[j + 2]))
                        parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
                        j += 3
                    else:
                        parts.append(re.escape(body[j]))
                        j += 1
                inner = "".join(parts)
                out.append(f"[^{inner}]" if negate else (f"[{inner}]" if inner else "(?!)"))
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + r"\Z"


class GlobPattern:
    """A compiled glob; equal patterns compare equal so they can key dicts."""

    __slots__ = ("_match", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._match = _compile(text)

    def matches(self, channel: str) -> bool:
        return self._match(channel) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GlobPattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"GlobPattern({self.text!r})"


@lru_cache(maxsize=4096)
def _compile(text: str) -> Callable[[str], re.Match[str] | None]:
    return re.compile(_translate(text), re.DOTALL).match
