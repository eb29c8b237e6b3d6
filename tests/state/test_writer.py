"""The checkpoint writer: coalesces boundaries, bounded rate, survives a failing disk."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from tidings.source.changes import Position
from tidings.state import Checkpoint, CheckpointStore, CheckpointWriter, ServerIdentity

SERVER = ServerIdentity(1)


def pos(n: int) -> Position:
    return Position("binlog.000001", n)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_writes_the_newest_boundary_and_the_last_one_on_close(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    writer = CheckpointWriter(store, epoch=10, server=SERVER, interval=0.05)
    writer.start()
    writer.advance(11, pos(100))
    await wait_until(lambda: writer.written == 1)
    loaded = store.load()
    assert loaded is not None and (loaded.epoch, loaded.next_id, loaded.position) == (
        10,
        11,
        pos(100),
    )
    for n in range(12, 500):  # a burst within one interval: coalesced
        writer.advance(n, pos(n * 10))
    assert await writer.close()
    loaded = store.load()
    assert loaded is not None and (loaded.next_id, loaded.position) == (499, pos(4990))
    assert loaded.server == SERVER
    assert writer.written <= 3  # not one write per boundary
    assert writer.last_written == loaded


async def test_rate_is_bounded_by_the_interval(tmp_path: Path) -> None:
    writer = CheckpointWriter(CheckpointStore(tmp_path), epoch=1, server=SERVER, interval=0.1)
    writer.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    n = 1
    while loop.time() - began < 0.5:
        n += 1
        writer.advance(n, pos(n))
        await asyncio.sleep(0.001)
    await writer.close()
    # about 0.5 s / 0.1 s writes, plus the final one; never one per boundary
    assert 3 <= writer.written <= 8, writer.written


async def test_a_failing_disk_is_counted_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = True

    class FullDisk(CheckpointStore):
        __slots__ = ()

        def save(self, checkpoint: Checkpoint) -> None:
            if broken:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().save(checkpoint)

    store = FullDisk(tmp_path)
    writer = CheckpointWriter(store, epoch=1, server=SERVER, interval=0.02)
    writer.start()
    writer.advance(5, pos(5))
    await wait_until(lambda: writer.failures >= 3)  # it keeps retrying on its own
    assert store.load() is None
    errors = [r for r in caplog.records if "cannot write the checkpoint" in r.getMessage()]
    assert len(errors) == 1, "logged once, not once per retry"
    assert "No space left on device" in errors[0].getMessage()
    assert writer.last_error is not None
    writer.advance(6, pos(6))  # the daemon keeps going meanwhile
    broken = False
    await wait_until(lambda: writer.written == 1)
    loaded = store.load()
    assert loaded is not None and loaded.next_id == 6
    assert writer.last_error is None
    assert any("written again after" in r.getMessage() for r in caplog.records)
    await writer.close()


async def test_close_reports_a_failed_final_write(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "gone")  # the directory does not exist
    writer = CheckpointWriter(store, epoch=1, server=SERVER, interval=10)
    writer.advance(2, pos(2))
    assert not await writer.close()
    assert writer.failures == 1 and writer.pending


async def test_close_without_anything_pending(tmp_path: Path) -> None:
    writer = CheckpointWriter(CheckpointStore(tmp_path), epoch=1, server=SERVER)
    writer.start()
    assert await writer.close()
    assert writer.written == 0 and CheckpointStore(tmp_path).load() is None
