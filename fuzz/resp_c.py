"""RESP requests through the C fast path (tidings.wire._cresp), against the pure-Python
parser: the same reads into both must give the same commands, the same error text at the
same point, the same state after each read.

Input: a limits byte (which of `LIMITS`), then as `resp`: a read size byte and the
client's bytes. The C function is also run on the whole stream placed flush against an
unreadable page, from every position a request starts at: reading one byte past the
buffer is a crash (SIGSEGV), not a silent over-read. Coverage comes from the Python
parser (the C code mirrors it; atheris instruments Python only).
"""

from __future__ import annotations

import ctypes
import mmap
import os

from fuzz._pieces import reads
from tidings.wire import resp
from tidings.wire.resp import ProtocolError, RespParser

ERRORS = (ProtocolError,)

#: tight limits reach every bound; the last are the daemon's defaults
LIMITS = [
    {"max_bulk": 512, "max_args": 64, "max_inline": 256, "max_query": 4096},
    {"max_bulk": 16, "max_args": 4, "max_inline": 8, "max_query": 64},
    {"max_bulk": 0, "max_args": 1, "max_inline": 1, "max_query": 12},
    {"max_bulk": 64 * 1024, "max_args": 1 << 16, "max_inline": 64 * 1024, "max_query": 4 << 20},
]

_PAGES = 4  # room for -max_len=8192 and more


class GuardedBuffer:
    """Bytes that end where an unreadable page begins."""

    def __init__(self, pages: int = _PAGES) -> None:
        self.size = pages * mmap.PAGESIZE
        self.map = mmap.mmap(-1, self.size + mmap.PAGESIZE)
        self._anchor = ctypes.c_char.from_buffer(self.map)  # keeps the map's address
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        guard = ctypes.addressof(self._anchor) + self.size
        if libc.mprotect(guard, mmap.PAGESIZE, 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")

    def holding(self, data: bytes) -> memoryview:
        if len(data) > self.size:
            data = data[-self.size :]
        start = self.size - len(data)
        self.map[start : self.size] = data
        return memoryview(self.map)[start : self.size]


_guarded: GuardedBuffer | None = None


def _trace(data: bytes, native: bool, limits: dict[str, int]) -> list[object]:
    parser = RespParser(native=native, **limits)
    out: list[object] = []
    for chunk in reads(data):
        parser.feed(chunk)
        try:
            while (command := parser.next_command()) is not None:
                assert command and all(type(arg) is bytes for arg in command)
                out.append(command)
        except ProtocolError as exc:
            out.append(str(exc))
            return out
        held = len(parser._buf) - parser._pos
        assert held <= limits["max_query"] + limits["max_inline"] + len(chunk), held
        out.append(parser.mid_command)
    return out


def fuzz_one(data: bytes) -> None:
    global _guarded
    native = resp.NATIVE
    if len(data) < 2:
        return
    limits = LIMITS[data[0] % len(LIMITS)]
    with_c = _trace(data[1:], True, limits)
    if native is None:  # switched off (TIDINGS_PURE_PYTHON=1): the Python parser alone
        assert os.environ.get("TIDINGS_PURE_PYTHON", "") not in ("", "0"), (
            "tidings.wire._cresp is not built (pip install -e .)"
        )
        return
    assert with_c == _trace(data[1:], False, limits), (with_c, limits)

    if _guarded is None:
        _guarded = GuardedBuffer()
    stream = data[2:]
    view = _guarded.holding(stream)
    args = (limits["max_args"], limits["max_bulk"], limits["max_inline"], limits["max_query"])
    pos = 0
    while pos < len(view):
        found = native(view, pos, *args)
        if found is None:
            pos = stream.find(b"*", pos + 1)
            if pos < 0:
                break
            continue
        command, end = found
        assert pos < end <= len(view) and command
        pos = end
    if with_c and isinstance(with_c[-1], str):
        raise ProtocolError(with_c[-1].removeprefix("Protocol error: "))
