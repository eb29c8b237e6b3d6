"""Durability end to end: ids that survive restarts, crashes (kill -9) and purged binlogs.

Real peers only: a private MariaDB, the daemon in-process (restarts) or as the
`tidings serve` command (SIGKILL, exit codes), redis-py subscribers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pytest

from tests.fullfs import fill, tiny_tmpfs
from tests.system.daemons import receive, start_daemon, stop_daemon, subscriber, wait_for
from tests.system.test_status import status
from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.hub import Hub
from tidings.sandbox import PrivateMariaDB, free_port
from tidings.state import CheckpointStore, MarkIndex, StateError

_dbs = itertools.count(1)


class RecordingHub(Hub):
    """A hub that remembers every database event it publishes, live or history refill."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, bytes, bool]] = []

    def publish_record(self, channel: str, fields: dict[str, Any], *, live: bool = True) -> Any:
        event = super().publish_record(channel, fields, live=live)
        self.seen.append((event.id, event.body, live))
        return event


def bodies(events: list[dict[str, Any]]) -> dict[int, bytes]:
    return {e["id"]: orjson.dumps(e) for e in events}


async def test_restart_rederives_identical_ids_and_refills_history(
    mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    db = f"dur{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (k INT PRIMARY KEY, v INT)")
    state = tmp_path / "state"
    settings: dict[str, Any] = {
        "state_dir": str(state),
        "checkpoint_interval": 0.02,
        "mark_every": 7,
        "history_events": 10_000,
    }
    store = CheckpointStore(state)

    def write(start: int, stop: int) -> None:
        # single rows and three-row transactions, so marks fall between transactions
        sql = []
        for k in range(start, stop, 4):
            sql.append(f"INSERT INTO {db}.t VALUES ({k},{k});")
            rows = ",".join(f"({j},{j})" for j in range(k + 1, min(k + 4, stop)))
            if rows:
                sql.append(f"BEGIN; INSERT INTO {db}.t VALUES {rows}; COMMIT;")
        mariadb.sql("".join(sql))

    # -- first run: 40 rows, checkpointed; then 40 more ----------------------------------
    first = await start_daemon(mariadb, replica_server_id, **settings)
    try:
        sub = await subscriber(first, f"{db}.*")
        write(0, 40)
        batch1 = await receive(sub, 40)
        last1 = batch1[-1]["id"]

        def checkpointed(upto: int) -> bool:
            cp = store.load()
            return cp is not None and cp.next_id == upto + 1

        await wait_for(lambda: checkpointed(last1), what="checkpoint after batch 1")
        shutil.copy(store.path, tmp_path / "older.json")  # as a crash would leave it
        write(40, 80)
        batch2 = await receive(sub, 40)
        await sub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await stop_daemon(first)
    ids = [e["id"] for e in batch1 + batch2]
    assert ids == list(range(ids[0], ids[0] + 80)), "ids grow by exactly one per event"
    final = store.load()
    assert final is not None and final.next_id == ids[-1] + 1, "final checkpoint on shutdown"
    assert final.epoch == first.hub.epoch <= ids[0]
    marks = MarkIndex(state, final.epoch).load()
    assert len(marks) >= 80 // 7 - 1 and marks[0].id == final.epoch

    # -- a "crash" right after batch 1's checkpoint: batch 2 comes again, same ids -------
    shutil.copy(tmp_path / "older.json", store.path)
    hub = RecordingHub()
    second = await start_daemon(mariadb, replica_server_id, hub=hub, **settings)
    try:
        # clients are let in once history is refilled; batch 2 is then published live again
        assert second.live.is_set()
        await wait_for(lambda: sum(live for _, _, live in hub.seen) >= 40, what="batch 2 again")
        replayed = {i: orjson.dumps(orjson.loads(b)) for i, b, live in hub.seen if live}
        assert replayed == bodies(batch2), "same row change, same id, same bytes"
        # the refill re-read batch 1 (from the epoch's first mark) without delivering it
        refill = [(i, orjson.dumps(orjson.loads(b))) for i, b, live in hub.seen if not live]
        assert refill == sorted(bodies(batch1).items())
        sub = await subscriber(second, f"{db}.*")
        write(80, 90)  # and new rows continue the sequence
        batch3 = await receive(sub, 10)
        assert [e["id"] for e in batch3] == list(range(ids[-1] + 1, ids[-1] + 11))
        await sub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await stop_daemon(second)

    # -- a clean restart: nothing is delivered twice, ids go on ----------------------------
    third = await start_daemon(mariadb, replica_server_id, **settings)
    try:
        sub = await subscriber(third, f"{db}.*")
        write(90, 91)
        (event,) = await receive(sub, 1)
        assert event["id"] == ids[-1] + 11 and event["data"]["k"] == 90
        await sub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await stop_daemon(third)


# -- the `tidings serve` command: kill -9, purged binlogs ------------------------------------

TIDINGS = [sys.executable, "-m", "tidings.cli"]


def read_reply(f: BinaryIO) -> Any:
    """One RESP2 reply from a buffered socket file (enough for pub/sub pushes)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        return [read_reply(f) for _ in range(int(rest))]
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = f.read(int(rest) + 2)
        if len(data) != int(rest) + 2:
            raise ConnectionError("connection closed")
        return data[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"-":
        raise RuntimeError(rest.decode())
    return rest


def command(*args: str | int) -> bytes:
    parts = [str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Collector(threading.Thread):
    """A subscriber that reconnects whenever the daemon goes away.

    Plain mode: SUBSCRIBE after each reconnect. Resume mode: TIDINGS.SUBSCRIBE
    with the last id received, so nothing missed while away is lost.
    """

    def __init__(self, port: int, channel: str, resume: bool, first: int = 0) -> None:
        super().__init__(daemon=True)
        self.port, self.channel, self.resume, self.first = port, channel, resume, first
        #: every (id, raw body) received, in order of arrival
        self.received: list[tuple[int, bytes]] = []
        self.subscriptions = 0  # confirmed (re)subscriptions
        self.gaps: list[Any] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                time.sleep(0.01)  # not listening yet: poll (a thread, not the test)
                continue
            try:
                sock.settimeout(0.5)
                f = sock.makefile("rb")
                if self.resume and self.received:
                    since = self.received[-1][0]
                    sock.sendall(command("TIDINGS.SUBSCRIBE", since, self.channel))
                elif self.resume:  # from the start of the epoch
                    sock.sendall(command("TIDINGS.SUBSCRIBE", self.first - 1, self.channel))
                else:
                    sock.sendall(command("SUBSCRIBE", self.channel))
                while not self.done.is_set():
                    try:
                        push = read_reply(f)
                    except TimeoutError:
                        continue
                    if push[0] == b"subscribe":
                        self.subscriptions += 1
                    elif push[0] == b"message":
                        event = orjson.loads(push[2])
                        if event.get("type") == "gap":
                            self.gaps.append(event)
                        elif event.get("type") == "insert":
                            self.received.append((event["id"], push[2]))
            except (OSError, ConnectionError):
                pass  # killed: reconnect
            finally:
                sock.close()


class Writer(threading.Thread):
    """Continuous inserts through one `mariadb` client: rows 1, 2, 3, ... in commit order."""

    def __init__(self, db: PrivateMariaDB, table: str) -> None:
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(
            ["mariadb", "--no-defaults", "-uroot", "-h127.0.0.1", f"-P{db.port}", "--batch"],
            stdin=subprocess.PIPE,
        )
        self.table = table
        self.written = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        assert self.proc.stdin is not None
        rng = random.Random(7)
        while not self.stopping.is_set():
            n = self.written
            if rng.random() < 0.3:  # a transaction of several rows now and then
                rows = ",".join(f"({s})" for s in range(n + 1, n + 4))
                sql, count = f"BEGIN; INSERT INTO {self.table} VALUES {rows}; COMMIT;\n", 3
            else:
                sql, count = f"INSERT INTO {self.table} VALUES ({n + 1});\n", 1
            self.proc.stdin.write(sql.encode())
            self.proc.stdin.flush()
            self.written += count
            time.sleep(0.0005)

    def finish(self) -> int:
        """Stop writing; return the number of rows, all committed."""
        self.stopping.set()
        self.join()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0
        return self.written


def serve(db: PrivateMariaDB, server_id: int, port: int, state: Path, log: Path,
          *extra: str) -> subprocess.Popen[bytes]:  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*TIDINGS, "serve", "--mysql", db.url(), "--resp", f"127.0.0.1:{port}",
             "--http", "127.0.0.1:0", "--server-id", str(server_id), "--state-dir", str(state),
             *extra],
            stderr=out,
        )  # fmt: skip


def test_kill_9_at_random_moments_loses_and_repeats_nothing(
    own_mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    db = own_mariadb  # its own binlog: every event in it is one of this test's rows
    db.sql("CREATE DATABASE k; CREATE TABLE k.t (seq INT PRIMARY KEY)")
    port, state, log = free_port(), tmp_path / "state", tmp_path / "tidings.log"
    flags = ("--checkpoint-interval", "0.05", "--mark-every", "1000", "--history-events", "20000")
    store = CheckpointStore(state)
    proc = serve(db, replica_server_id, port, state, log, *flags)
    try:
        deadline = time.monotonic() + 20
        while store.load() is None:  # the new epoch's checkpoint is written before any event
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        epoch = store.load().epoch  # type: ignore[union-attr]
        collector = Collector(port, "k.t", resume=True, first=epoch)
        collector.start()
        writer = Writer(db, "k.t")
        writer.start()
        rng = random.Random()
        kills = 0
        while kills < 20:
            # a random moment: often mid-stream, sometimes during start-up or the refill
            time.sleep(rng.uniform(0.0, 0.6))
            proc.kill()
            assert proc.wait(10) == -signal.SIGKILL
            kills += 1
            proc = serve(db, replica_server_id, port, state, log, *flags)
        rows = writer.finish()
        # let the last daemon catch up: its checkpoint reaches the end of the rows
        received = collector.received
        assert received, "the subscriber received nothing"
        last_id, last_body = received[-1]
        offset = last_id - orjson.loads(last_body)["data"]["seq"]  # id of row n: offset + n
        deadline = time.monotonic() + 60
        while (cp := store.load()) is None or cp.next_id < offset + rows + 1:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"checkpoint {cp} never reached row {rows}"
            time.sleep(0.02)
        deadline = time.monotonic() + 60
        while len(received) < rows and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        collector.done.set()
        collector.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert kills >= 20 and collector.subscriptions >= 2
    cp = store.load()
    assert cp is not None and cp.epoch == epoch, "one epoch across every crash"
    # resuming with its last id after each crash, the subscriber got every row once, in order
    assert not collector.gaps
    seqs = [orjson.loads(b)["data"]["seq"] for _, b in received]
    assert seqs == list(range(1, rows + 1))
    # and ids are deterministic: the rows' own sequence numbers and the ids advance together
    # (no id skipped, none given twice, whichever run of the daemon published the row) ...
    offsets = {i - seq for (i, _), seq in zip(received, seqs, strict=True)}
    assert offsets == {offset}, f"ids and rows drifted apart: {sorted(offsets)[:5]}"
    assert offset + 1 >= epoch
    # ... and the last checkpoint is right after row N
    assert cp.next_id == offset + rows + 1


def test_purged_binlog_is_fatal_until_new_epoch(
    own_mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    db = own_mariadb
    db.sql("CREATE DATABASE p; CREATE TABLE p.t (seq INT PRIMARY KEY)")
    port, state, log = free_port(), tmp_path / "state", tmp_path / "tidings.log"
    store = CheckpointStore(state)
    proc = serve(db, replica_server_id, port, state, log)
    try:
        collector = Collector(port, "p.t", resume=False)
        collector.start()
        deadline = time.monotonic() + 60  # a loaded CI machine
        while not collector.subscriptions or store.load() is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        db.sql("INSERT INTO p.t VALUES (1)")
        while not collector.received:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ((old_id, _),) = collector.received
    before = store.load()
    assert before is not None and before.next_id == old_id + 1

    # while tidings is down, the binlog it would resume from is purged
    db.sql("INSERT INTO p.t VALUES (2); FLUSH BINARY LOGS; INSERT INTO p.t VALUES (3);"
           " FLUSH BINARY LOGS")  # fmt: skip
    newest = db.sql("SHOW MASTER STATUS").split("\t")[0]
    deadline = time.monotonic() + 60  # a loaded CI machine
    # MariaDB keeps a file until InnoDB's binlog checkpoint has passed it: retry
    while before.position.file in db.sql(f"PURGE BINARY LOGS TO '{newest}'; SHOW BINARY LOGS"):
        assert time.monotonic() < deadline, db.sql("SHOW WARNINGS")
        time.sleep(0.05)

    result = subprocess.run(
        [*TIDINGS, "serve", "--mysql", db.url(), "--resp", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--server-id", str(replica_server_id), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("tidings: the checkpoint in ")
    assert f"no longer has binlog file {before.position.file}" in last_line
    assert "--new-epoch" in last_line and "binlog_expire_logs_seconds" in last_line
    assert store.load() == before, "a refused start leaves the checkpoint alone"

    # the operator skips ahead: a new epoch from the current end of the binlog
    subscribed = collector.subscriptions
    proc = serve(db, replica_server_id, port, state, log, "--new-epoch")
    try:
        deadline = time.monotonic() + 60  # a loaded CI machine
        # the plain subscriber must be back before the write: SUBSCRIBE replays nothing
        while (
            (cp := store.load()) is None
            or cp.epoch == before.epoch
            or collector.subscriptions == subscribed
        ):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        assert cp.epoch > before.next_id, "a new epoch's ids are above the old ones"
        collector.received.clear()
        db.sql("INSERT INTO p.t VALUES (4)")
        while not collector.received:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        ((new_id, body),) = collector.received
        assert orjson.loads(body)["data"] == {"seq": 4}  # rows 2 and 3 were skipped
        assert new_id == cp.epoch  # the first event of the new epoch
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        collector.done.set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "starting a new epoch" in log.read_text()


async def test_another_server_other_event_options_and_a_second_daemon_are_refused(
    mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    daemon = await start_daemon(mariadb, replica_server_id, state_dir=str(state))
    try:
        # one state directory, one daemon: a second is refused before it touches anything
        url = mariadb.url()
        second = Daemon(Settings(mysql=url, resp="127.0.0.1:0", http="",
                                 server_id=replica_server_id + 1000,
                                 state_dir=str(state)))  # fmt: skip
        with pytest.raises(StateError, match=r"another tidings .* is using the state directory"):
            await asyncio.wait_for(second.run(), 20)
    finally:
        await stop_daemon(daemon)
    cp = CheckpointStore(state).load()
    assert cp is not None and cp.events == {"ddl_events": True, "outbox": "tidings.outbox"}
    # DDL events turned off: fewer events exist, so re-read ones would get other ids
    changed = Daemon(Settings(mysql=mariadb.url(), resp="127.0.0.1:0", http="", ddl_events=False,
                              server_id=replica_server_id, state_dir=str(state)))  # fmt: skip
    with pytest.raises(StateError, match=r"ddl_events True -> False.*--new-epoch"):
        await asyncio.wait_for(changed.run(), 20)
    # the same directory pointed at a different server (here: a forged server_id)
    CheckpointStore(state).save(
        replace(cp, server=replace(cp.server, server_id=cp.server.server_id + 1))
    )
    other = Daemon(Settings(mysql=mariadb.url(), resp="127.0.0.1:0", http="",
                            server_id=replica_server_id, state_dir=str(state)))  # fmt: skip
    with pytest.raises(StateError, match=r"belongs to another server .* --new-epoch"):
        await asyncio.wait_for(other.run(), 20)


async def test_a_failing_state_disk_keeps_delivery_going_and_catches_up(
    mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    db = f"dur{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (k INT PRIMARY KEY)")
    state = tmp_path / "state"
    store = CheckpointStore(state)
    daemon = await start_daemon(
        mariadb, replica_server_id, state_dir=str(state), checkpoint_interval=0.02
    )
    try:
        writer = daemon.checkpoints
        assert writer is not None and store.load() is not None
        # the temporary file cannot be created (as a full or read-only disk would refuse it;
        # root ignores permissions, so a directory stands in its way)
        (state / "checkpoint.json.tmp").mkdir()
        sub = await subscriber(daemon, f"{db}.t")
        mariadb.sql(f"INSERT INTO {db}.t VALUES (1), (2), (3)")
        events = await receive(sub, 3)  # delivery goes on
        await wait_for(lambda: writer.failures >= 2, what="retries")
        assert writer.last_error is not None and "Is a directory" in writer.last_error
        stale = store.load()
        assert stale is not None and stale.next_id <= events[0]["id"]
        (state / "checkpoint.json.tmp").rmdir()  # the disk is back
        await wait_for(lambda: writer.last_error is None, what="a write that works")
        cp = store.load()
        assert cp is not None and cp.next_id == events[-1]["id"] + 1, "caught up"
    finally:
        await stop_daemon(daemon)


async def test_a_full_state_disk_is_reported_and_checkpoints_resume_once_space_is_freed(
    mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    db = f"dur{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (k INT PRIMARY KEY)")
    state = tmp_path / "state"
    caplog.set_level(logging.INFO, "tidings")
    with tiny_tmpfs(state, "256k"):
        settings = {"state_dir": str(state), "checkpoint_interval": 0.02, "mark_every": 1}
        daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", **settings)
        assert daemon.http_address is not None
        where = "{}:{}".format(*daemon.http_address)
        try:
            writer = daemon.checkpoints
            assert writer is not None
            await wait_for(lambda: writer.written >= 1, what="a first checkpoint")
            filler = fill(state)  # the disk is full: ENOSPC from now on
            sub = await subscriber(daemon, f"{db}.t")
            for k in range(1, 21):  # 20 transactions: 20 checkpoints and marks to write
                await asyncio.to_thread(mariadb.sql, f"INSERT INTO {db}.t VALUES ({k})")
            events = await receive(sub, 20)  # delivery goes on
            assert [e["data"]["k"] for e in events] == list(range(1, 21))
            await wait_for(lambda: writer.failures >= 2, what="failed checkpoint writes")
            assert writer.last_error == "No space left on device (OSError)"

            # reported: the log (once, not every retry), /metrics, /stats, `tidings status`
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1, errors
            assert errors[0].startswith(
                f"cannot write the checkpoint {state}/checkpoint.json: "
                "No space left on device (OSError). Still serving"
            )
            metrics = await http_get(daemon, "/metrics")
            assert "\ntidings_checkpoint_failing 1\n" in metrics
            failed = await asyncio.to_thread(status, "--http", where)
            assert failed.returncode == 0, failed.stderr  # healthy: clients are served
            line = failed.stdout.splitlines()[-1]
            assert line.startswith("checkpoint    FAILING for "), failed.stdout
            assert "No space left on device" in line and "Delivery goes on" in line

            filler.unlink()  # space is back
            await wait_for(lambda: writer.last_error is None, what="a checkpoint written")
            await wait_for(lambda: not writer.pending, what="the checkpoint caught up")
            cp = CheckpointStore(state).load()
            assert cp is not None and cp.next_id == events[-1]["id"] + 1, "caught up"
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(w.startswith(f"checkpoint {state}/checkpoint.json written again after ")
                       for w in warnings), warnings  # fmt: skip
            assert "\ntidings_checkpoint_failing 0\n" in await http_get(daemon, "/metrics")
            ok = await asyncio.to_thread(status, "--http", where)
            assert ok.stdout.splitlines()[-1].startswith("checkpoint    written "), ok.stdout
        finally:
            await stop_daemon(daemon)

        # what the full disk left in the state directory (a mark index cut short, perhaps)
        # still gives a clean restart: same epoch, ids continue
        again = await start_daemon(mariadb, replica_server_id, **settings)
        try:
            sub = await subscriber(again, f"{db}.t")
            await asyncio.to_thread(mariadb.sql, f"INSERT INTO {db}.t VALUES (21)")
            (event,) = await receive(sub, 1)
            assert event["id"] == events[-1]["id"] + 1
        finally:
            await stop_daemon(again)


async def http_get(daemon: Daemon, path: str) -> str:
    assert daemon.http_address is not None
    reader, writer = await asyncio.open_connection(*daemon.http_address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return body.decode()


async def test_marks_in_purged_binlogs_are_pruned_and_refill_starts_after_them(
    own_mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> None:
    db = own_mariadb
    db.sql("CREATE DATABASE m; CREATE TABLE m.t (k INT PRIMARY KEY)")
    state = tmp_path / "state"
    settings: dict[str, Any] = {"state_dir": str(state), "mark_every": 2, "history_events": 10**6}
    first = await start_daemon(db, replica_server_id, **settings)
    try:
        sub = await subscriber(first, "m.t")
        for start in (0, 10, 20):  # ten rows in each of three binlog files
            db.sql("".join(f"INSERT INTO m.t VALUES ({k});" for k in range(start, start + 10)))
            db.sql("FLUSH BINARY LOGS")
        events = await receive(sub, 30)
        await sub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await stop_daemon(first)
    cp = CheckpointStore(state).load()
    assert cp is not None
    marks = MarkIndex(state, cp.epoch).load()
    files = sorted({m.position.file for m in marks})
    assert len(files) >= 3
    # the two oldest files go; the checkpoint's (the newest) stays
    deadline = time.monotonic() + 20
    while files[1] in db.sql(f"PURGE BINARY LOGS TO '{files[2]}'; SHOW BINARY LOGS"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    hub = RecordingHub()
    second = await start_daemon(db, replica_server_id, hub=hub, **settings)
    try:
        kept = MarkIndex(state, cp.epoch).load()
        assert kept and {m.position.file for m in kept} == {files[2]}, "pruned on disk"
        assert second.plan is not None and second.plan.first_id == kept[0].id
        refill = [(i, orjson.dumps(orjson.loads(b))) for i, b, live in hub.seen if not live]
        # re-read from the oldest readable mark: the third file's rows, with their ids
        assert refill == [(i, b) for i, b in sorted(bodies(events).items()) if i >= kept[0].id]
        assert 0 < len(refill) <= 10
    finally:
        await stop_daemon(second)
