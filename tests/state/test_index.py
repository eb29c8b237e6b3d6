"""The mark index and the choice of where to start the warm-up."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.fullfs import fill, tiny_tmpfs
from tidings.source.changes import Position
from tidings.state import Mark, MarkIndex, choose_warmup


def mark(n: int, file: str = "binlog.000001") -> Mark:
    return Mark(n, Position(file, 4 + n, f"0-1-{n}"))


def test_append_load_and_epochs(tmp_path: Path) -> None:
    index = MarkIndex(tmp_path, epoch=100)
    index.replace([mark(100)])
    index.append(mark(200))
    index.append(mark(150))  # not newer: ignored
    index.append(mark(300))
    index.close()
    assert MarkIndex(tmp_path, 100).load() == [mark(100), mark(200), mark(300)]
    assert MarkIndex(tmp_path, 999).load() == []  # another epoch's marks mean nothing
    other = MarkIndex(tmp_path, 999)
    other.replace([mark(999)])  # a new epoch replaces the file
    assert MarkIndex(tmp_path, 100).load() == []
    assert MarkIndex(tmp_path, 999).load() == [mark(999)]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    index = MarkIndex(tmp_path, epoch=1)
    index.replace([mark(1), mark(2)])
    with open(index.path, "ab") as f:
        f.write(b'{"epoch": 1, "id": 3, "fi')  # a crash in the middle of an append
    loaded = MarkIndex(tmp_path, 1)
    assert loaded.load() == [mark(1), mark(2)]
    loaded.append(mark(4))  # appends still work after the torn line
    loaded.close()
    assert MarkIndex(tmp_path, 1).load() == [mark(1), mark(2), mark(4)]


def test_a_full_disk_leaves_no_torn_line_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real full file system (tmpfs): the append that gets only part of its line in
    raises, and leaves the file whole, so the append after space is freed is not glued to
    half a line (which would lose both)."""
    with tiny_tmpfs(tmp_path / "state", "64k") as state:
        index = MarkIndex(state, epoch=1)
        index.replace([mark(1)])
        filler = fill(state)
        n = 1
        with pytest.raises(OSError) as full:
            while True:  # until a line does not fit in the file's last page
                n += 1
                index.append(mark(n))
        assert full.value.errno == errno.ENOSPC
        kept = list(range(1, n))
        assert [m.id for m in index.marks] == kept
        filler.unlink()
        index.append(mark(n + 1))
        index.close()
        assert index.path.read_bytes().endswith(b"\n")
        assert [m.id for m in MarkIndex(state, 1).load()] == [*kept, n + 1]
        assert "torn" not in caplog.text


def test_prune_drops_purged_files(tmp_path: Path) -> None:
    index = MarkIndex(tmp_path, epoch=1)
    index.replace([mark(1, "binlog.000001"), mark(2, "binlog.000002"), mark(3, "binlog.000003")])
    assert index.prune({"binlog.000002", "binlog.000003"}) == 1
    assert index.prune({"binlog.000002", "binlog.000003"}) == 0
    assert MarkIndex(tmp_path, 1).load() == [mark(2, "binlog.000002"), mark(3, "binlog.000003")]


def test_choose_warmup() -> None:
    files = {"binlog.000001", "binlog.000002"}
    marks = [mark(1000), mark(11000), mark(21000, "binlog.000002"), mark(31000, "binlog.000002")]
    # the newest mark at least `history` events before the checkpoint
    assert choose_warmup(marks, 35000, 10000, files) == mark(21000, "binlog.000002")
    assert choose_warmup(marks, 31000, 10000, files) == mark(21000, "binlog.000002")
    assert choose_warmup(marks, 31001, 10000, files) == mark(21000, "binlog.000002")
    assert choose_warmup(marks, 30999, 10000, files) == mark(11000)
    # a young epoch: the oldest mark refills what it can
    assert choose_warmup(marks, 5000, 10000, files) == mark(1000)
    # purged files are skipped
    assert choose_warmup(marks, 35000, 30000, {"binlog.000002"}) == mark(21000, "binlog.000002")
    # nothing before the checkpoint, or no history wanted
    assert choose_warmup(marks, 1000, 10000, files) is None
    assert choose_warmup(marks, 35000, 0, files) is None
    assert choose_warmup([], 35000, 10000, files) is None
