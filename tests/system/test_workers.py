"""`tidings serve --workers 2` as a user runs it: real processes, a real MariaDB, redis-py
and plain HTTP clients that find out which worker they reached (INFO's `tidings_worker`,
/healthz's `worker`) and reconnect until they have the one they want."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.system.daemons import bulk_writes, receive
from tidings.sandbox import PrivateMariaDB, free_port
from tidings.source.notify import install
from tidings.source.url import MySQLURL
from tidings.state import CheckpointStore

_dbs = itertools.count(1)
TIMEOUT = 30
TIDINGS = [sys.executable, "-m", "tidings.cli"]


class Served:
    """One `tidings serve --workers N` process; its log (all processes) goes to a file."""

    def __init__(self, tmp: Path, *args: str, workers: int = 2) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.workers = workers
        self.log_path = tmp / f"tidings-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                *TIDINGS,
                "serve",
                "--workers",
                str(workers),
                "--resp",
                f"127.0.0.1:{self.port}",
                "--http",
                f"127.0.0.1:{self.http_port}",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_log(r"worker \d+ \(pid \d+\) serving", workers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 60) -> list[str]:
        """Wait until the log has `count` lines matching `pattern`; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log().splitlines() if re.search(pattern, line)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {count} x {pattern!r} in the log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def worker_pids(served: Served) -> dict[int, int]:
    """The current pid of each worker, from the supervisor's "started" log lines."""
    pids: dict[int, int] = {}
    for line in served.wait_log(r"worker \d+ started \(pid \d+\)", served.workers):
        match = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
        assert match is not None
        pids[int(match[1])] = int(match[2])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def info_field(info: bytes, name: str) -> int:
    match = re.search(rb"\r\n" + name.encode() + rb":(\d+)\r\n", info)
    assert match is not None, info
    return int(match[1])


async def on_worker(
    served: Served, worker: int, tries: int = 400, password: str | None = None
) -> Any:
    """A redis-py PubSub whose connection is on `worker` (reconnecting until it is)."""
    for _ in range(tries):
        client = aioredis.Redis(port=served.port, password=password)
        pubsub = client.pubsub()
        await pubsub.connect()
        conn = pubsub.connection
        await conn.send_command("INFO")
        info = await conn.read_response()
        if info_field(info, "tidings_worker") == worker:
            return pubsub
        await pubsub.aclose()
        await client.aclose()
    raise AssertionError(f"{tries} connections and none reached worker {worker}")


async def client_on_worker(
    served: Served, worker: int, tries: int = 400, password: str | None = None
) -> aioredis.Redis:
    """A redis-py client with one connection, on `worker`."""
    for _ in range(tries):
        client = aioredis.Redis(port=served.port, single_connection_client=True, password=password)
        info = await client.info("server")
        if info["tidings_worker"] == worker:
            return client
        await client.aclose()
    raise AssertionError(f"{tries} connections and none reached worker {worker}")


async def http_get(served: Served, path: str) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.http_port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"workers{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v TEXT)")
    return name


@pytest.fixture
def served(mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path) -> Iterator[Served]:
    asyncio.run(install(MySQLURL.parse(mariadb.url())))  # for PUBLISH through the outbox
    served = Served(
        tmp_path,
        "--mysql",
        mariadb.url(),
        "--server-id",
        str(replica_server_id),
        "--state-dir",
        str(tmp_path / "state"),
        "--allow-publish",
    )
    yield served
    served.kill()


async def closing(*pubsubs: Any) -> None:
    for pubsub in pubsubs:
        await pubsub.aclose()


async def test_two_workers_deliver_the_same_rows_with_the_same_ids_and_resume_across(
    mariadb: PrivateMariaDB, schema: str, served: Served
) -> None:
    channel = f"{schema}.t"
    one, two = await on_worker(served, 1), await on_worker(served, 2)
    await one.subscribe(channel)
    await two.subscribe(channel)
    for pubsub in (one, two):
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
    await asyncio.to_thread(mariadb.sql, bulk_writes(schema, 300, per_txn=50), schema)
    got_one, got_two = await receive(one, 300), await receive(two, 300)
    assert got_one == got_two, "same rows, same ids, same bytes on both workers"
    ids = [e["id"] for e in got_one]
    assert ids == list(range(ids[0], ids[0] + 300))
    assert [e["data"]["n"] for e in got_one] == list(range(1, 301))

    # the subscriber on worker 1 leaves; 200 more rows; it comes back on worker 2 with its
    # last id and gets exactly what it missed, with the ids worker 2's subscriber saw live
    await closing(one)
    await asyncio.to_thread(mariadb.sql, bulk_writes(schema, 200, first=301, per_txn=50), schema)
    live = await receive(two, 200)
    back = await on_worker(served, 2)
    await back.execute_command("TIDINGS.SUBSCRIBE", ids[-1], channel)
    assert (await back.get_message(timeout=5))["type"] == "subscribe"
    assert await receive(back, 200) == live
    assert await back.get_message(timeout=0.5) is None
    # and the other way round: from worker 2's history on worker 1
    again = await on_worker(served, 1)
    await again.execute_command("TIDINGS.SUBSCRIBE", live[99]["id"], channel)
    assert (await again.get_message(timeout=5))["type"] == "subscribe"
    assert await receive(again, 100) == live[100:]

    # a snapshot on a worker pairs with the reader's position marks, sent through the feed
    snap = await on_worker(served, 1)
    await snap.execute_command("TIDINGS.SNAPSHOT", channel)
    assert (await snap.get_message(timeout=10))["type"] == "subscribe"
    rows = await receive(snap, 501)
    assert [r["type"] for r in rows] == ["snapshot"] * 500 + ["snapshot-end"]
    assert sorted(r["data"]["n"] for r in rows[:500]) == list(range(1, 501))
    assert rows[-1]["id"] == live[-1]["id"]
    await asyncio.to_thread(mariadb.sql, f"INSERT INTO {channel} VALUES (501, 'after')")
    assert [e["id"] for e in await receive(snap, 1)] == [live[-1]["id"] + 1]
    assert (await receive(two, 1))[0]["id"] == live[-1]["id"] + 1

    # /healthz on every worker reports the one binlog reader
    for _ in range(10):
        status, health = await http_get(served, "/healthz")
        assert status == 200 and health["status"] == "ok" and health["worker"] in (1, 2)
        assert health["lag_seconds"] < 5

    # PUBLISH from either worker goes through the outbox into the one id stream; the reply
    # counts the receivers on the worker that took it (here: none on 1, one on 2)
    await two.subscribe(channel + ".chat")
    assert (await two.get_message(timeout=5))["type"] == "subscribe"
    pub_one, pub_two = await client_on_worker(served, 1), await client_on_worker(served, 2)
    assert await pub_one.publish(channel + ".chat", "from one") == 0
    assert await pub_two.publish(channel + ".chat", "from two") == 1
    for text in (b"from one", b"from two"):
        message = await two.get_message(timeout=10)
        assert message is not None and message["data"] == text
    for client in (pub_one, pub_two):
        await client.aclose()
    await closing(two, back, again, snap)


async def test_kill_9_a_worker_it_comes_back_and_the_other_loses_nothing(
    mariadb: PrivateMariaDB, schema: str, served: Served
) -> None:
    channel = f"{schema}.t"
    pids = worker_pids(served)
    one, two = await on_worker(served, 1), await on_worker(served, 2)
    for pubsub in (one, two):
        await pubsub.subscribe(channel)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
    await asyncio.to_thread(mariadb.sql, bulk_writes(schema, 100, per_txn=20), schema)
    before = await receive(one, 100)
    assert await receive(two, 100) == before

    async def write() -> None:  # 40 transactions while worker 1 dies and comes back
        for k in range(40):
            first = 101 + 25 * k
            await asyncio.to_thread(
                mariadb.sql, bulk_writes(schema, 25, first=first, per_txn=25), schema
            )
            await asyncio.sleep(0.05)

    writer = asyncio.ensure_future(write())
    await asyncio.sleep(0.3)
    os.kill(pids[1], signal.SIGKILL)
    await writer
    # worker 2's subscriber: every row once, in order, ids without a hole
    after = await receive(two, 1000, timeout=60)
    ids = [e["id"] for e in before + after]
    assert ids == list(range(ids[0], ids[0] + 1100))
    assert [e["data"]["n"] for e in after] == list(range(101, 1101))

    # the supervisor noticed and started worker 1 again, which serves from its new copy of
    # history: a client back on it resumes from the last id it had before the kill
    served.wait_log(r"worker 1 killed by SIGKILL; starting it again")
    served.wait_log(r"worker 1 \(pid \d+\) serving", 2)
    starts = served.wait_log(r"worker 1 started \(pid \d+\)", 2)
    new_pid = int(re.findall(r"\(pid (\d+)\)", starts[-1])[0])
    assert new_pid != pids[1] and alive(new_pid)
    restarted = await on_worker(served, 1)
    await restarted.execute_command("TIDINGS.SUBSCRIBE", before[-1]["id"], channel)
    assert (await restarted.get_message(timeout=5))["type"] == "subscribe"
    assert await receive(restarted, 1000) == after
    assert not alive(pids[1]) and alive(pids[2]), "worker 2 was never restarted"
    await closing(one, two, restarted)


async def test_sigterm_stops_everything_then_a_restart_resumes_the_ids_on_every_worker(
    mariadb: PrivateMariaDB, schema: str, served: Served, tmp_path: Path, replica_server_id: int
) -> None:
    channel = f"{schema}.t"
    pids = worker_pids(served)
    sub = await on_worker(served, 2)
    await sub.subscribe(channel)
    assert (await sub.get_message(timeout=5))["type"] == "subscribe"
    await asyncio.to_thread(mariadb.sql, bulk_writes(schema, 50, per_txn=10), schema)
    events = await receive(sub, 50)
    code = await asyncio.to_thread(served.stop)
    assert code == 0, served.log()[-3000:]
    assert not any(alive(pid) for pid in pids.values())
    checkpoint = CheckpointStore(tmp_path / "state").load()
    assert checkpoint is not None and checkpoint.next_id == events[-1]["id"] + 1
    assert "Traceback" not in served.log(), served.log()
    # a client still connected was disconnected, and nothing listens any more
    with pytest.raises(aioredis.ConnectionError):
        await sub.get_message(timeout=5)
    await closing(sub)

    # 30 rows while it is down; it starts again with history for 10 events only: the
    # reader refills that, the workers get it through the feed, and a client resuming
    # from before all 80 is served the older ones by its worker re-reading the binlog
    await asyncio.to_thread(mariadb.sql, bulk_writes(schema, 30, first=51, per_txn=10), schema)
    again = await asyncio.to_thread(
        Served,
        tmp_path,
        "--mysql",
        mariadb.url(),
        "--server-id",
        str(replica_server_id),
        "--state-dir",
        str(tmp_path / "state"),
        "--history-events",
        "10",
    )
    try:
        for worker in (1, 2):
            back = await on_worker(again, worker)
            await back.execute_command("TIDINGS.SUBSCRIBE", events[0]["id"] - 1, channel)
            assert (await back.get_message(timeout=5))["type"] == "subscribe"
            got = await receive(back, 80)
            assert got[:50] == events, "the same ids and bytes as before the restart"
            ids = [e["id"] for e in got]
            assert ids == list(range(ids[0], ids[0] + 80))
            assert [e["data"]["n"] for e in got] == list(range(1, 81))
            await closing(back)
        # each worker re-read with server_ids of its own (server_id + 1 + (k-1) * 2 + slot)
        for worker, server_id in ((1, replica_server_id + 1), (2, replica_server_id + 3)):
            again.wait_log(
                rf"worker{worker}\.tidings.*re-reading the binlog .* server_id={server_id}"
            )
    finally:
        assert await asyncio.to_thread(again.stop) == 0


def test_a_fatal_reader_error_stops_the_workers_and_exits_1(
    mariadb: PrivateMariaDB, tmp_path: Path
) -> None:
    url = mariadb.url(user="nobody", password="wrong")
    resp = f"127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [*TIDINGS, "serve", "--workers", "2", "--mysql", url, "--resp", resp, "--http", ""],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "tidings: replication stopped:" in proc.stderr and "Access denied" in proc.stderr
    pids = [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", proc.stderr)]
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)


# -- without a database: the reader gives the ids of every worker's PUBLISH --------------------
class SseOnWorker:
    """GET /sse on a connection that first asked /healthz which worker it reached."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, served: Served, worker: int, target: str) -> SseOnWorker:
        for _ in range(400):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.http_port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
            health = json.loads(await reader.readexactly(length))
            if health["worker"] == worker:
                writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
                return cls(reader, writer)
            writer.close()
        raise AssertionError(f"no HTTP connection reached worker {worker}")

    async def events(self, count: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while len(out) < count:
            block = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), TIMEOUT)
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if b"data" in fields:
                out.append((int(fields[b"id"]), fields[b"data"]))
        return out


@pytest.fixture
async def pubsub_only(tmp_path: Path) -> AsyncIterator[Served]:
    served = await asyncio.to_thread(Served, tmp_path, "--allow-publish")
    yield served
    served.kill()


async def test_without_a_database_publish_on_both_workers_gets_unique_increasing_ids(
    pubsub_only: Served,
) -> None:
    served = pubsub_only
    streams = [await SseOnWorker.open(served, k, "/sse?channel=news") for k in (1, 2)]
    pub_one, pub_two = await client_on_worker(served, 1), await client_on_worker(served, 2)

    async def publish(client: aioredis.Redis, name: str) -> list[int]:
        replies = []
        for n in range(20):  # one at a time, then pipelined batches of 10
            replies.append(await client.publish("news", f"{name}-{n}"))
        for batch in range(3):
            pipe = client.pipeline(transaction=False)
            for n in range(10):
                pipe.publish("news", f"{name}-p{batch}-{n}")
            replies += await pipe.execute()
        return replies

    replies = await asyncio.gather(publish(pub_one, "one"), publish(pub_two, "two"))
    # each worker has one subscriber (its SSE stream): the count of the worker that took it
    assert replies == [[1] * 50, [1] * 50]
    seen = [await stream.events(100) for stream in streams]
    assert seen[0] == seen[1], "same messages, same ids, same order on both workers"
    ids = [i for i, _ in seen[0]]
    assert ids == list(range(ids[0], ids[0] + 100)), "unique, increasing by one"
    payloads = [data for _, data in seen[0]]
    assert sorted(payloads) == sorted(
        [f"{name}-{n}".encode() for name in ("one", "two") for n in range(20)]
        + [
            f"{name}-p{b}-{n}".encode()
            for name in ("one", "two")
            for b in range(3)
            for n in range(10)
        ]
    )
    for name in ("one", "two"):  # each client's messages in the order it sent them
        mine = [p for p in payloads if p.startswith(name.encode() + b"-")]
        expected = [f"{name}-{n}".encode() for n in range(20)]
        expected += [f"{name}-p{b}-{n}".encode() for b in range(3) for n in range(10)]
        assert mine == expected
    for client in (pub_one, pub_two):
        await client.aclose()
    for stream in streams:
        stream.writer.close()
    assert await asyncio.to_thread(served.stop) == 0


def test_under_systemd_ready_waits_for_every_worker_and_sighup_reaches_them(
    tmp_path: Path,
) -> None:
    from tests.system.test_systemd import receive as notifications

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    config = tmp_path / "tidings.toml"
    config.write_text("allow_publish = false\n")
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen(
        [*TIDINGS, "serve", "--workers", "2", "--config", str(config),
         "--resp", f"127.0.0.1:{port}", "--http", ""],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

    def publish_replies() -> dict[int, bytes]:
        """PUBLISH on new connections until both workers have answered."""
        replies: dict[int, bytes] = {}
        for _ in range(400):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"INFO\r\nPUBLISH news hello\r\n")
                data = b""
                while data.count(b"\r\n") < 9:  # INFO's bulk string, then the reply
                    data += client.recv(4096)
            worker = info_field(data, "tidings_worker")
            replies[worker] = data.rsplit(b"\r\n", 2)[-2]
            if len(replies) == 2:
                return replies
        raise AssertionError(f"reached only workers {sorted(replies)}")

    try:
        ready = notifications(notify, "READY")[-1]
        assert ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == f"serving with 2 workers: RESP 127.0.0.1:{port}"
        replies = publish_replies()  # READY: both workers answer
        assert all(r.startswith(b"-ERR PUBLISH is disabled") for r in replies.values()), replies
        config.write_text("allow_publish = true\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            replies = publish_replies()
            if all(reply == b":0" for reply in replies.values()):
                break
            assert time.monotonic() < deadline, replies
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert notifications(notify, "STOPPING")[-1]["STOPPING"] == "1"
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert proc.stderr is not None
    log = proc.stderr.read()
    for worker in (1, 2):
        assert f"worker{worker}.tidings.daemon: reload: applied allow_publish" in log, log


async def test_tokens_are_checked_on_every_worker(tmp_path: Path) -> None:
    from tidings.auth import mint

    secret = b"a-secret-for-the-workers-test-0123456789"
    (tmp_path / "secret").write_bytes(secret)
    served = await asyncio.to_thread(
        Served, tmp_path, "--auth-secret-file", str(tmp_path / "secret"), "--allow-publish"
    )
    try:
        token = mint(secret, ["news"], 600, publish=["news"])
        for k in (1, 2):
            pubsub = await on_worker(served, k)
            with pytest.raises(aioredis.AuthenticationError):
                await pubsub.subscribe("news")
                await pubsub.get_message(timeout=5)
            await pubsub.aclose()
        subs = [await on_worker(served, k, password=token) for k in (1, 2)]
        for pubsub in subs:
            await pubsub.subscribe("news")
            assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        publisher = await client_on_worker(served, 1, password=token)
        assert await publisher.publish("news", "signed") == 1  # its worker's subscriber
        for pubsub in subs:
            message = await pubsub.get_message(timeout=10)
            assert message is not None and message["data"] == b"signed"
        await closing(*subs, publisher)
    finally:
        assert await asyncio.to_thread(served.stop) == 0


def test_a_port_taken_by_another_program_stops_everything_with_exit_1() -> None:
    with socket.socket() as taken:  # listening without SO_REUSEPORT: nobody can join it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*TIDINGS, "serve", "--workers", "2", "--resp", f"127.0.0.1:{port}", "--http", ""],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    assert "cannot listen" in proc.stderr and "address already in use" in proc.stderr.lower()
    assert proc.stderr.strip().splitlines()[-1].startswith("tidings: worker ")
    pids = [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", proc.stderr)]
    assert pids and not any(alive(pid) for pid in pids)
