"""A real file system that fills up (ENOSPC), for tests of what a full disk does."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` at `path`, which fills up (ENOSPC) like a real disk.
    Needs `mount` and the right to mount (root with CAP_SYS_ADMIN): without them the test
    fails and says so, rather than skip."""
    mount = shutil.which("mount")
    assert mount is not None, "this test needs the `mount` command (util-linux)"
    path.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(
            f"this test needs a real file system that fills up: `mount -t tmpfs` failed "
            f"({done.stderr.strip() or done.returncode}); run it as root with CAP_SYS_ADMIN"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the file system is full; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out, pytest.raises(OSError) as full:
        while True:
            out.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC, full.value
    return filler
