"""glibc's view of the heap, and malloc_trim giving free pages back: real allocations,
RSS read from /proc."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tidings import memory


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_free_memory_kept_by_malloc_is_seen_and_trim_gives_it_back() -> None:
    assert memory.available(), "these figures need glibc >= 2.33 (mallinfo2)"
    before = memory.mallinfo()
    assert before is not None and before.heap >= before.in_use > 0
    # 1 KiB blocks (malloc's, not pymalloc's: over 512 bytes), every 64th kept: the heap's
    # top stays in use, so free() alone cannot shrink it
    blocks = [bytes(1024) for _ in range(64 * 1024)]
    kept = blocks[::64]
    grown = memory.mallinfo()
    assert grown is not None and grown.in_use - before.in_use > 60 << 20
    del blocks
    held = memory.mallinfo()
    assert held is not None and held.free - grown.free > 60 << 20  # free, but kept
    rss_held = rss()
    assert memory.trim() is True
    after = memory.mallinfo()
    assert after is not None and after.free > 60 << 20  # still free, its pages returned
    assert rss_held - rss() > 40 << 20, "malloc_trim returned the free pages"
    assert len(kept) == 1024


async def test_the_trimmer_returns_free_memory_on_its_own() -> None:
    trimmer = memory.Trimmer(0.05)
    trimmer.start()
    try:
        blocks = [bytes(1024) for _ in range(64 * 1024)]
        kept = blocks[::64]
        del blocks
        held = rss()
        runs = trimmer.runs
        while trimmer.runs < runs + 2:
            await asyncio.sleep(0.01)
        assert held - rss() > 40 << 20, "the free pages went back to the kernel"
        assert len(kept) == 1024
    finally:
        trimmer.stop()
    assert trimmer.seconds < trimmer.runs * 0.1


async def test_an_interval_of_0_never_trims() -> None:
    trimmer = memory.Trimmer(0)
    trimmer.start()
    await asyncio.sleep(0.05)
    assert trimmer.runs == 0
