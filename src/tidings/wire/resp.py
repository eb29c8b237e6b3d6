"""Sans-I/O RESP codec: request parsing (multibulk and inline) and reply encoding.

Theory of operation. `RespParser` buffers the bytes a client sends (`feed`) and
hands out one command at a time (`next_command`), as a list of byte-string
arguments, or None while the next command is incomplete. It follows redis's
`processMultibulkBuffer` / `processInlineBuffer` (networking.c) closely, error
wording included, so that clients see the replies they would get from Redis 7:

* a request starting with `*` is a multibulk array of `$`-bulk strings; a count
  <= 0 is an empty request and is skipped, as redis does;
* anything else is an inline command (telnet): one line split like redis's
  `sdssplitargs`, with "double" (escapes, `\\xHH`) and 'single' quotes;
* on malformed input `next_command` raises `ProtocolError`; the commands before
  it were already returned, so the server replies to them first, then sends
  `-ERR Protocol error: ...` and closes, like redis.

Every buffer is bounded: header lines and inline requests by `max_inline`,
bulk strings by `max_bulk`, argument counts by `max_args` and one request in
total by `max_query`, so a client can never make the parser buffer more than
about `max_query + max_inline` bytes plus one read.

The common request, a complete multibulk array of plain `$`-bulks, is parsed in
C when the optional extension `tidings.wire._cresp` is built (setup.py) and
TIDINGS_PURE_PYTHON=1 is not set: it takes only what this code takes, with the
same result, and hands everything else (inline, incomplete, malformed, unusual)
back to the Python code here, which keeps every error text and limit.

The encoders at the bottom build replies. RESP3 only changes a few type
markers (push `>`, map `%`, null `_`), so each takes a `resp3` flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final

from tidings.native import pure_python

__all__ = [
    "CRLF",
    "NATIVE",
    "ProtocolError",
    "RespParser",
    "array",
    "bulk",
    "encode_command",
    "error",
    "integer",
    "map_header",
    "null",
    "parse_int",
    "push",
    "simple",
    "split_inline",
]

CRLF = b"\r\n"

# redis string2ll: optional minus, no leading zeros, no sign or spaces; fits a long long
_INTEGER = re.compile(rb"-?[1-9][0-9]{0,18}|0")
_LLONG_MAX = (1 << 63) - 1


#: parse(buf, pos, max_args, max_bulk, max_inline, max_query) -> (args, new_pos) | None
NativeParse = Callable[[bytearray, int, int, int, int, int], "tuple[list[bytes], int] | None"]


def _native() -> NativeParse | None:
    if pure_python():
        return None
    try:
        from tidings.wire._cresp import parse
    except ImportError:  # not built (no compiler at install time): pure Python
        return None
    return parse


#: the C fast path of `RespParser`, None when not built or TIDINGS_PURE_PYTHON=1
NATIVE: Final = _native()


class ProtocolError(Exception):
    """Malformed request; `str(exc)` is redis's reply text, e.g. "Protocol error: ..."."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Protocol error: {detail}")


def parse_int(data: bytes | bytearray) -> int | None:
    """Parse a signed 64-bit integer as strictly as redis's `string2ll`; None if invalid."""
    # the common case first: a short plain number without a leading zero (isdigit is
    # ASCII-only on bytes, so this accepts nothing string2ll refuses)
    if data.isdigit() and len(data) < 19 and (data[0] != 0x30 or len(data) == 1):
        return int(data)
    if _INTEGER.fullmatch(data) is None:
        return None
    value = int(data)
    return value if -_LLONG_MAX - 1 <= value <= _LLONG_MAX else None


class RespParser:
    """Incremental request parser for one client connection."""

    __slots__ = (
        "_args",
        "_broken",
        "_buf",
        "_bulk",
        "_native",
        "_pos",
        "_remaining",
        "_size",
        "max_args",
        "max_bulk",
        "max_inline",
        "max_query",
    )

    def __init__(
        self,
        *,
        max_bulk: int = 64 * 1024,
        max_args: int = 1 << 16,
        max_inline: int = 64 * 1024,
        max_query: int = 4 << 20,
        native: bool = True,
    ) -> None:
        """`native=False`: never the C fast path (tests compare the two)."""
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_inline = max_inline
        self.max_query = max_query
        self._buf = bytearray()
        self._pos = 0  # start of unparsed data in _buf
        self._args: list[bytes] = []  # arguments of the multibulk request being read
        self._remaining = 0  # bulks still to read for it; 0 between requests
        self._bulk = -1  # length of the bulk being read, -1 while its header is pending
        self._size = 0  # bytes of the current request so far, for max_query
        self._broken: ProtocolError | None = None
        self._native = NATIVE if native else None

    @property
    def mid_command(self) -> bool:
        """Whether part of a command has been received (for logging a cut-short client)."""
        return self._remaining > 0 or self._pos < len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]  # drop what was consumed; one memmove per read
            self._pos = 0
        self._buf += data

    def next_command(self) -> list[bytes] | None:
        """The next complete command, or None if more bytes are needed.

        Raises ProtocolError on malformed input, and again on every later call.
        """
        native = self._native
        if native is not None and self._remaining == 0 and self._broken is None:
            found = native(
                self._buf, self._pos, self.max_args, self.max_bulk, self.max_inline, self.max_query
            )
            if found is not None:
                command, self._pos = found
                return command
        if self._broken is not None:
            raise self._broken
        try:
            while True:
                if self._remaining == 0:
                    buf = self._buf
                    if self._pos >= len(buf):
                        buf.clear()  # an idle connection keeps no request bytes
                        self._pos = 0
                        return None
                    if buf[self._pos] == 0x2A:  # '*'
                        if not self._start_multibulk():
                            return None
                        if self._remaining == 0:
                            continue  # "*0" or "*-1": an empty request, skipped like redis
                    else:
                        args = self._inline()
                        if args is None:
                            return None
                        if args:
                            return args
                        continue  # blank line
                if self._read_bulks():
                    args, self._args, self._size = self._args, [], 0
                    return args
                return None
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _start_multibulk(self) -> bool:
        buf, pos = self._buf, self._pos
        cr = buf.find(b"\r", pos)
        if cr < 0 or cr - pos > self.max_inline:
            if len(buf) - pos > self.max_inline:
                raise ProtocolError("too big mbulk count string")
            return False
        if cr + 1 >= len(buf):  # redis wants one byte after '\r' (it does not check it is '\n')
            return False
        count = parse_int(buf[pos + 1 : cr])
        if count is None or count > self.max_args:
            raise ProtocolError("invalid multibulk length")
        self._pos = cr + 2
        if count > 0:
            self._remaining = count
            self._size = cr + 2 - pos
        return True

    def _read_bulks(self) -> bool:
        buf, pos = self._buf, self._pos
        end = len(buf)
        args = self._args
        try:
            while self._remaining:
                if self._bulk < 0:
                    cr = buf.find(b"\r", pos)
                    if cr < 0 or cr - pos > self.max_inline:
                        if end - pos > self.max_inline:
                            raise ProtocolError("too big bulk count string")
                        return False
                    if cr + 1 >= end:
                        return False
                    if buf[pos] != 0x24:  # '$'
                        got = chr(buf[pos]) if buf[pos] not in (10, 13) else " "
                        raise ProtocolError(f"expected '$', got '{got}'")
                    size = parse_int(buf[pos + 1 : cr])
                    if size is None or size < 0 or size > self.max_bulk:
                        raise ProtocolError("invalid bulk length")
                    self._size += cr + 2 - pos + size + 2
                    if self._size > self.max_query:
                        raise ProtocolError("too big request")
                    self._bulk = size
                    pos = cr + 2
                stop = pos + self._bulk
                if stop + 2 > end:  # the bulk and the two bytes after it (skipped unchecked)
                    return False
                args.append(bytes(buf[pos:stop]))
                pos = stop + 2
                self._bulk = -1
                self._remaining -= 1
            return True
        finally:
            self._pos = pos

    def _inline(self) -> list[bytes] | None:
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos)
        if nl < 0 or nl - pos > self.max_inline:
            if len(buf) - pos > self.max_inline:
                raise ProtocolError("too big inline request")
            return None
        stop = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
        args = split_inline(bytes(buf[pos:stop]))
        if args is None:
            raise ProtocolError("unbalanced quotes in request")
        self._pos = nl + 1
        return args


# -- inline commands ---------------------------------------------------------------------------
_SPACE = frozenset(b" \t\n\r\v\f")  # C isspace()
_TOKEN_END = frozenset(b" \t\n\r")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline request like redis's `sdssplitargs`; None on unbalanced quotes.

    The line ends at a NUL byte, as the C string it is in redis.
    """
    zero = line.find(b"\0")
    if zero >= 0:
        line = line[:zero]
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        token = bytearray()
        quote = 0  # the quote character we are inside, if any
        while True:
            c = line[i] if i < n else 0
            if quote == 0x22:  # "double quotes": backslash escapes and \xHH
                if c == 0:
                    return None
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x78 and _hex2(line, i + 2):
                    token.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    token.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    token.append(c)
            elif quote == 0x27:  # 'single quotes': only \' is an escape
                if c == 0:
                    return None
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    token.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    token.append(c)
            elif c == 0 or c in _TOKEN_END:
                break
            elif c in (0x22, 0x27):
                quote = c
            else:
                token.append(c)
            i += 1
        args.append(bytes(token))


def _hex2(line: bytes, i: int) -> bool:
    return i + 1 < len(line) and line[i] in _HEX and line[i + 1] in _HEX


# -- encoding ----------------------------------------------------------------------------------
def encode_command(*args: bytes | str) -> bytes:
    """A request as clients send it: a multibulk array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def simple(text: bytes) -> bytes:
    return b"+" + text + CRLF


def error(message: bytes) -> bytes:
    """An error reply; CR and LF become spaces (redis does the same to keep the stream valid).

    `message` starts with its code ("ERR ...", "NOPROTO ...").
    """
    return b"-" + message.replace(b"\r", b" ").replace(b"\n", b" ") + CRLF


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def null(resp3: bool) -> bytes:
    return b"_\r\n" if resp3 else b"$-1\r\n"


def array(items: Sequence[bytes]) -> bytes:
    """An array of already-encoded replies."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def push(items: Sequence[bytes], resp3: bool) -> bytes:
    """An out-of-band message: a RESP3 push frame, or a plain array in RESP2."""
    return (b">%d\r\n" if resp3 else b"*%d\r\n") % len(items) + b"".join(items)


def map_header(pairs: int, resp3: bool) -> bytes:
    """A map of `pairs` key/value pairs; RESP2 has no maps and flattens it to an array."""
    return b"%%%d\r\n" % pairs if resp3 else b"*%d\r\n" % (2 * pairs)
