"""The C allocator's view of the daemon's memory, and giving free memory back (glibc only).

RSS counts pages the process touched and still maps. Python's own small-object
allocator takes 1 MiB arenas straight from mmap and returns them when empty; everything
larger (event bodies, the bytes joined for a send, uvloop's buffers) comes from glibc's
malloc. glibc keeps what is freed inside its heaps for reuse and returns it to the
kernel only from the top of the main heap (and, for other arenas, when a whole heap
is free). After a stall, when output buffers and garbage piled up and were then freed,
RSS can therefore stay at the high-water mark although nothing is in use: `mallinfo2()`
then shows it as `fordblks` (free bytes held). `malloc_trim(0)` hands free whole pages
inside the heaps back (MADV_DONTNEED) as well.

Elsewhere (musl, macOS) these return None and do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["MallocInfo", "Trimmer", "available", "mallinfo", "trim"]


_MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2.split()]


@dataclass(frozen=True, slots=True)
class MallocInfo:
    """Bytes, as glibc's `mallinfo2()` reports them."""

    #: taken from the kernel for the heaps (sbrk and the other arenas' mmaps)
    heap: int
    #: in use by the program within those heaps
    in_use: int
    #: free inside the heaps: kept for reuse, still counted by RSS where touched
    free: int
    #: in blocks mmapped one by one (large allocations: 128 KiB or more at first)
    mmapped: int


def _load() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _Mallinfo2
        libc.mallinfo2.argtypes = []
        libc.malloc_trim.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    return libc


_libc = _load()


def available() -> bool:
    return _libc is not None


def mallinfo() -> MallocInfo | None:
    """The allocator's figures now (it walks its free lists: for /metrics and sweeps, not
    per event); None without glibc."""
    if _libc is None:
        return None
    info = _libc.mallinfo2()
    return MallocInfo(
        heap=info.arena, in_use=info.uordblks, free=info.fordblks, mmapped=info.hblkhd
    )


def trim() -> bool | None:
    """Give free memory inside the heaps back to the kernel; True if some was, None
    without glibc."""
    if _libc is None:
        return None
    return bool(_libc.malloc_trim(0))


class Trimmer:
    """Calls `trim()` every `interval` seconds on the running loop (the `malloc_trim_interval`
    setting): after a stall, the free memory glibc kept goes back to the kernel instead of
    staying in RSS. A call that has something to return takes milliseconds (12 ms for
    100 MB spread over a fragmented heap, measured), one with nothing well under 1."""

    __slots__ = ("_handle", "interval", "runs", "seconds")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        #: calls made, and the time they took in all
        self.runs = 0
        self.seconds = 0.0

    def start(self) -> None:
        if self._handle is None and self.interval > 0 and available():
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        started = time.perf_counter()
        trim()
        self.runs += 1
        self.seconds += time.perf_counter() - started
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
