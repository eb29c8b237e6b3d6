"""Writes the checkpoint behind the hot path: at most every `interval`, and on close.

The daemon calls `advance(next_id, position)` after each transaction has been
published, so the pair is always a transaction boundary whose events all have
their ids. `advance()` only stores the pair and wakes the writer task; the
task writes the newest pair in a worker thread (fsync must not stall the
loop), then sleeps `interval`. How often it writes changes only how much is
replayed after a crash, never which ids events get.

A failing disk (full, read-only, gone) is logged once, counted in `failures`,
and retried every interval while the daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from tidings.source.changes import Position
from tidings.state.checkpoint import Checkpoint, CheckpointStore, ServerIdentity

log = logging.getLogger("tidings.state")


class CheckpointWriter:
    __slots__ = (
        "_pending",
        "_stop",
        "_task",
        "_wake",
        "epoch",
        "events",
        "failing_since",
        "failures",
        "interval",
        "last_error",
        "last_written",
        "server",
        "store",
        "written",
    )

    def __init__(
        self,
        store: CheckpointStore,
        *,
        epoch: int,
        server: ServerIdentity,
        interval: float = 0.2,
        last_written: Checkpoint | None = None,
        events: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.epoch = epoch
        self.server = server
        self.interval = interval
        #: the last checkpoint known to be on disk
        self.last_written = last_written
        self.written = 0
        self.failures = 0
        #: why the last attempt failed; None while writes work
        self.last_error: str | None = None
        #: when (seconds since 1970) the current run of failures began; None while writes work
        self.failing_since: float | None = None
        self._pending: tuple[int, Position] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def advance(self, next_id: int, position: Position) -> None:
        """Record a transaction boundary: replaying from `position` gives `next_id` next."""
        self._pending = (next_id, position)
        self._wake.set()

    @property
    def last_written_time(self) -> float | None:
        """When the checkpoint on disk was written (seconds since 1970), as far as known."""
        return self.last_written.time if self.last_written is not None else None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    async def write_now(self) -> bool:
        """Write the pending boundary (if any) now; True when the disk has it."""
        pending = self._pending
        if pending is None:
            return True
        checkpoint = Checkpoint(
            self.epoch, pending[0], pending[1], self.server, time.time(), self.events
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.store.save, checkpoint)
        except Exception as exc:  # disk full, read-only, gone: keep serving, retry
            self.failures += 1
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            reason = f"{text} ({type(exc).__name__})"
            if reason != self.last_error:
                log.error(
                    "cannot write the checkpoint %s: %s. Still serving; retrying every %g s. "
                    "Until it works a restart replays from the last checkpoint written (%s)",
                    self.store.path,
                    reason,
                    self.interval,
                    self.last_written.position if self.last_written else "none",
                )
            self.last_error = reason
            if self.failing_since is None:
                self.failing_since = time.time()
            return False
        if self.last_error is not None:
            log.warning(
                "checkpoint %s written again after %d failures",
                self.store.path,
                self.failures,
            )
            self.last_error = None
            self.failing_since = None
        self.written += 1
        self.last_written = checkpoint
        if self._pending is pending:  # nothing newer arrived meanwhile
            self._pending = None
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._wake.wait()  # a boundary to write, or close()
            self._wake.clear()
            if self._stop.is_set():
                break
            if not await self.write_now():
                self._wake.set()  # retry after the pause
            # the pause bounds the write rate; close() cuts it short
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def close(self) -> bool:
        """Stop the task and write the last boundary; True when it reached the disk."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        return await self.write_now()
