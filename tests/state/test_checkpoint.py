"""The checkpoint file: round trip, atomic replacement, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.source.changes import Position
from tidings.state import Checkpoint, CheckpointStore, ServerIdentity, StateDir, StateError

SERVER = ServerIdentity(1, None, "db1")


def checkpoint(next_id: int = 1_000_017, gtid: str | None = "0-1-57") -> Checkpoint:
    return Checkpoint(1_000_000, next_id, Position("binlog.000003", 1234, gtid), SERVER, 1.5)


def test_round_trip_and_missing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load() is None
    store.save(checkpoint())
    assert store.load() == checkpoint()
    store.save(checkpoint(2_000_000, None))
    assert store.load() == checkpoint(2_000_000, None)
    with_events = Checkpoint(1, 2, Position("b.1", 4), SERVER, 1.0, {"ddl_events": True})
    store.save(with_events)
    assert store.load() == with_events
    assert not (tmp_path / "checkpoint.json.tmp").exists()


@given(
    epoch=st.integers(0, 2**62),
    ahead=st.integers(0, 2**40),
    file=st.text(min_size=1, max_size=30),
    pos=st.integers(4, 2**63),
    gtid=st.none() | st.text(max_size=60),
    uuid=st.none() | st.uuids().map(str),
)
def test_json_round_trip_property(
    epoch: int, ahead: int, file: str, pos: int, gtid: str | None, uuid: str | None
) -> None:
    cp = Checkpoint(epoch, epoch + ahead, Position(file, pos, gtid), ServerIdentity(7, uuid), 9.0)
    assert Checkpoint.from_json(cp.to_json()) == cp


def test_crash_between_temp_write_and_rename_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1_000_017))

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt("power cut before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(checkpoint(1_000_099))
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.json.tmp").exists()  # the new content, never renamed
    assert store.load() == checkpoint(1_000_017)
    store.save(checkpoint(1_000_100))  # a stale temp file does not get in the way
    assert store.load() == checkpoint(1_000_100)


def test_killed_writer_process_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    # a child process rewrites the checkpoint as fast as it can and is SIGKILLed
    script = f"""
import sys
from pathlib import Path
from tidings.source.changes import Position
from tidings.state import Checkpoint, CheckpointStore, ServerIdentity
store = CheckpointStore(Path({str(tmp_path)!r}))
n = 0
while True:
    n += 1
    store.save(Checkpoint(1, 1 + n, Position("binlog.000001", 4 + n, None), ServerIdentity(1), n))
    if n == 20:
        print("ready", flush=True)
"""
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.kill()
        proc.wait()
        loaded = CheckpointStore(tmp_path).load()
        assert loaded is not None and loaded.next_id >= 21
        assert loaded.position.pos == loaded.next_id + 3  # the fields of one write, together


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON"),
        (b'{"format": 1, "epoch": 5', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"format": 99}', "unknown format 99"),
        (b'{"format": 1, "epoch": 5, "next_id": 6, "time": 1}', "missing field 'position'"),
        (
            b'{"format": 1, "epoch": 5, "next_id": 4, "time": 1, "position": {}, "server": {}}',
            "bad epoch/next_id",
        ),
        (
            b'{"format": 1, "epoch": 5, "next_id": 6, "time": 1, '
            b'"position": {"file": "b.1", "pos": "x"}, "server": {"server_id": 1}}',
            "bad binlog position",
        ),
    ],
)
def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "checkpoint.json").write_bytes(content)
    with pytest.raises(StateError) as info:
        CheckpointStore(tmp_path).load()
    message = str(info.value)
    assert str(tmp_path / "checkpoint.json") in message
    assert reason in message
    assert "delete it to start a new epoch" in message


def test_identity_mismatch() -> None:
    a = ServerIdentity(1, None, "db1")
    assert a.mismatch(ServerIdentity(1, None, "container-7f3a")) is None  # hostnames change
    assert a.mismatch(ServerIdentity(2, None, "db1")) == "server_id 2 instead of 1"
    u1 = ServerIdentity(1, "3e11fa47-71ca-11e1-9e33-c80aa9429562")
    u2 = ServerIdentity(1, "4e11fa47-71ca-11e1-9e33-c80aa9429562")
    assert u1.mismatch(u1) is None
    assert u1.mismatch(u2) == f"server_uuid {u2.server_uuid} instead of {u1.server_uuid}"


def test_state_dir_is_locked_against_a_second_daemon(tmp_path: Path) -> None:
    first = StateDir(tmp_path / "state")
    first.open()
    try:
        # flock is per open file description: a child process stands in for a second daemon
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from tidings.state import StateDir; StateDir({str(tmp_path / 'state')!r}).open()",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert child.returncode == 1
        assert f"another tidings (pid {os.getpid()}) is using the state directory" in child.stderr
    finally:
        first.close()
    again = StateDir(tmp_path / "state")
    again.open()
    again.close()


def test_unusable_state_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot use the state directory"):
        StateDir(tmp_path / "file" / "state").open()
