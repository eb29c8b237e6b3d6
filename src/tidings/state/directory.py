"""The state directory: one daemon at a time (an flock), the checkpoint and the marks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tidings.state.checkpoint import CheckpointStore, StateError
from tidings.state.index import MarkIndex


class StateDir:
    __slots__ = ("_lock_fd", "checkpoints", "path")

    LOCK = "lock"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = CheckpointStore(self.path)
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed and take its lock (StateError when another has it).

        Two daemons writing one checkpoint would each overwrite the other's ids;
        the kernel drops the flock when its holder dies, even by kill -9.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(
                f"cannot use the state directory {self.path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"another tidings (pid {holder}) is using the state directory {self.path}: "
                "each daemon needs its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def marks(self, epoch: int) -> MarkIndex:
        return MarkIndex(self.path, epoch)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
