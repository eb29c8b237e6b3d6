"""`tidings serve --cluster redis://...` as operators run it: three real node processes,
a private redis-server and MariaDB, redis-py subscribers spread over the nodes. The
leader is SIGKILLed mid-stream, or paused past its lease (SIGSTOP) and let go again;
one node is cut off from Redis. Every subscriber must get every row once, in order."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.system.proxy import Proxy
from tidings.feed import FrameReader
from tidings.feed.codec import EVENT, decode_event
from tidings.sandbox import PrivateMariaDB, free_port

_names = itertools.count(1)
TIDINGS = [sys.executable, "-m", "tidings.cli"]
LEASE = 2.0


class Node:
    """One `tidings serve --cluster ...` process; its log goes to a file."""

    def __init__(self, tmp: Path, name: str, cluster: str, *args: str) -> None:
        self.name = name
        self.port = free_port()
        self.http_port = free_port()
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in kill)
        self.proc = subprocess.Popen(
            [
                *TIDINGS, "serve", "--cluster", cluster, "--cluster-node", name,
                "--cluster-lease", str(LEASE), "--resp", f"127.0.0.1:{self.port}",
                "--http", f"127.0.0.1:{self.http_port}", *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def has(self, pattern: str) -> bool:
        return re.search(pattern, self.log()) is not None

    def wait_log(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.has(pattern):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no {pattern!r} in the log:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"cluster{next(_names)}"
    mariadb.sql(f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v TEXT)")
    return name


@pytest.fixture
def start_nodes(mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path) -> Iterator[Any]:
    nodes: list[Node] = []

    def start(cluster: str, count: int, name: str = "n") -> list[Node]:
        started = [
            Node(tmp_path, f"{name}{i}", cluster, "--mysql", mariadb.url(), "--server-id",
                 str(replica_server_id))
            for i in range(1, count + 1)
        ]  # fmt: skip
        nodes.extend(started)
        for node in started:
            node.wait_log(r"serving \(caught up")
        return started

    yield start
    for node in nodes:
        node.kill()


def leader_of(nodes: list[Node], after: int = 0) -> Node:
    """The node that logged taking the lease most recently (`after` log lines seen)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in nodes:
            if node.alive and node.log().count(" leads: ") > after:
                return node
        time.sleep(0.05)
    raise AssertionError("no node took the lease")


class Follower:
    """A subscriber that follows one channel from node to node, resuming with its last id."""

    def __init__(self, channel: str, nodes: list[Node], first: int) -> None:
        self.channel = channel
        self.nodes = nodes
        self.at = first  # index of the node it is on
        self.events: list[dict[str, Any]] = []
        self.subscribed = asyncio.Event()
        self.move = False  # set: leave for the next node (and resume there)
        self.moves = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def last_id(self) -> int | None:
        return self.events[-1]["id"] if self.events else None

    async def run(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"got {len(self.events)} of {count}"
            node = self.nodes[self.at]
            if not node.alive:
                self.at = (self.at + 1) % len(self.nodes)
                continue
            client = aioredis.Redis(port=node.port)
            pubsub = client.pubsub()
            try:
                if self.last_id is None:
                    await pubsub.subscribe(self.channel)
                else:
                    await pubsub.execute_command("TIDINGS.SUBSCRIBE", self.last_id, self.channel)
                while len(self.events) < count and not self.move:
                    message = await pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                    elif message["type"] == "message":
                        self.events.append(json.loads(message["data"]))
            except (RedisConnectionError, OSError):
                await asyncio.sleep(0.2)  # its node went: another one
            finally:
                await pubsub.aclose()
                await client.aclose()
            if self.move or not node.alive:
                self.move = False
                self.moves += 1
                self.at = (self.at + 1) % len(self.nodes)


def assert_exactly_once_in_order(follower: Follower, rows: int) -> None:
    events = follower.events
    assert [e["data"]["n"] for e in events] == list(range(1, rows + 1)), "every row, once, in order"
    ids = [e["id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + rows)), "the same consecutive ids"


async def stream_ids(redis_port: int, name: str) -> list[int]:
    """The ids of every event in the cluster's stream, in stream order."""
    client = aioredis.Redis(port=redis_port)
    entries = await client.xrange(f"{name}:stream")
    await client.aclose()
    frames = FrameReader()
    return [
        decode_event(m).event.id
        for _, fields in entries
        for m in frames.feed(fields[b"d"])
        if m[0] == EVENT
    ]


async def write_rows(mariadb: PrivateMariaDB, schema: str, rows: int) -> None:
    """`rows` rows, continuously: transactions of 5 rows, every fourth one of 400 (which
    the leader appends in several entries: a leader killed there left half of it)."""
    first = 1
    for size in itertools.cycle((5, 5, 5, 400)):
        last = min(first + size, rows + 1)
        values = ",".join(f"({n}, 'row {n}')" for n in range(first, last))
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {schema}.t VALUES {values}")
        first = last
        if first > rows:
            return
        await asyncio.sleep(0.01)


async def test_kill_9_the_leader_mid_stream_every_subscriber_gets_every_row_once(
    mariadb: PrivateMariaDB, schema: str, redis_server: int, start_nodes: Any
) -> None:
    nodes = start_nodes(f"redis://127.0.0.1:{redis_server}/0", 3)
    leader = leader_of(nodes)
    channel = f"{schema}.t"
    followers = [Follower(channel, nodes, i % 3) for i in range(6)]
    rows = 1500
    for f in followers:
        f.task = asyncio.ensure_future(f.run(rows))
    await asyncio.wait_for(asyncio.gather(*(f.subscribed.wait() for f in followers)), 30)

    writing = asyncio.ensure_future(write_rows(mariadb, schema, rows))
    while sum(len(f.events) for f in followers) < 6 * 300:
        await asyncio.sleep(0.05)
    leader.proc.kill()  # SIGKILL, mid-stream
    # a subscriber on a surviving node moves too, with its last id
    for f in followers:
        if nodes[f.at] is not leader:
            f.move = True
            break
    successor = leader_of([n for n in nodes if n is not leader])
    await writing
    await asyncio.wait_for(asyncio.gather(*(f.task for f in followers if f.task)), 120)

    for f in followers:
        assert_exactly_once_in_order(f, rows)
    assert sum(f.moves for f in followers) >= 3, "some subscribers resumed on other nodes"
    assert successor.has(r"taking over the cluster stream at")
    ids = await stream_ids(redis_server, "tidings")
    assert ids == sorted(set(ids)), "no id twice in the stream"


async def test_a_leader_paused_past_its_lease_is_fenced_off_and_steps_down(
    mariadb: PrivateMariaDB, schema: str, redis_server: int, start_nodes: Any
) -> None:
    nodes = start_nodes(f"redis://127.0.0.1:{redis_server}/0", 2)
    leader = leader_of(nodes)
    other = nodes[1] if leader is nodes[0] else nodes[0]
    follower = Follower(f"{schema}.t", [other], 0)
    rows = 1200
    follower.task = asyncio.ensure_future(follower.run(rows))
    await asyncio.wait_for(follower.subscribed.wait(), 30)
    writing = asyncio.ensure_future(write_rows(mariadb, schema, rows))
    while len(follower.events) < 100:
        await asyncio.sleep(0.02)
    os.kill(leader.proc.pid, signal.SIGSTOP)  # paused, with its lease and token
    await asyncio.to_thread(other.wait_log, r" leads: ", 30)
    await asyncio.sleep(1)
    os.kill(leader.proc.pid, signal.SIGCONT)  # it wakes up believing it leads
    await asyncio.to_thread(leader.wait_log, r"steps down: ", 30)
    await writing
    await asyncio.wait_for(follower.task, 120)

    assert_exactly_once_in_order(follower, rows)
    assert other.has(r"taking over the cluster stream at")
    assert leader.alive, "the old leader stays a node, serving from the stream"
    ids = await stream_ids(redis_server, "tidings")
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no id twice or missing in the stream"


async def test_a_node_cut_off_from_redis_goes_unhealthy_and_its_clients_are_told_to_go(
    mariadb: PrivateMariaDB, schema: str, redis_server: int, start_nodes: Any
) -> None:
    proxy = await Proxy(("127.0.0.1", redis_server)).start()
    try:
        (direct,) = start_nodes(f"redis://127.0.0.1:{redis_server}/0", 1, "direct")
        # (in a thread: the proxy runs on this loop)
        through = f"redis://127.0.0.1:{proxy.address[1]}/0"
        (cut,) = await asyncio.to_thread(start_nodes, through, 1, "cut")
        await healthy(cut)  # once the leader's status says its binlog is connected
        client = aioredis.Redis(port=cut.port)
        pubsub = client.pubsub()
        await pubsub.subscribe(f"{schema}.t")
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        raw = await asyncio.open_connection("127.0.0.1", cut.port)  # sees the close as is
        raw[1].write(f"SUBSCRIBE {schema}.t\r\n".encode())
        assert b"subscribe" in await asyncio.wait_for(raw[0].read(200), 10)
        sse = await asyncio.open_connection("127.0.0.1", cut.http_port)
        sse[1].write(f"GET /sse?channel={schema}.t HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {schema}.t VALUES (1, 'before')")
        first = json.loads((await wait_message(pubsub))["data"])
        assert first["data"]["n"] == 1

        proxy.cut()  # the network to Redis goes silent, then its connections drop
        proxy.reset()
        await asyncio.to_thread(cut.wait_log, r"no backplane for", 30)
        status, health = await http_get(cut, "/healthz")
        assert status == 503, health
        assert health["cluster"]["backplane"] == "unreachable"
        assert "backplane" in health["reason"]
        # RESP: closed without a word (after the row it had), as redis on shutdown
        rest = await asyncio.wait_for(raw[0].read(), 10)  # returns at the close
        assert rest.startswith(b"*3\r\n$7\r\nmessage\r\n") and rest.endswith(b'"before"}}\r\n')
        tail = await asyncio.wait_for(sse[0].read(), 10)  # the stream ends, with the reason
        assert b": this tidings node lost its cluster backplane" in tail
        assert (await http_get(direct, "/healthz"))[0] == 200, "the other node is fine"

        proxy.restore()  # back: healthy again, and it catches up with what it missed
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {schema}.t VALUES (2, 'after')")
        await asyncio.to_thread(cut.wait_log, r"the backplane answers again", 30)
        await healthy(cut)
        # a client resuming there with its last id gets what the node caught up with
        again = aioredis.Redis(port=cut.port)
        resumed = again.pubsub()
        await resumed.execute_command("TIDINGS.SUBSCRIBE", first["id"], f"{schema}.t")
        second = json.loads((await wait_message(resumed))["data"])
        assert (second["id"], second["data"]["n"]) == (first["id"] + 1, 2)
        for closing in (resumed, again, pubsub, client):
            await closing.aclose()
        sse[1].close()
        raw[1].close()
    finally:
        await proxy.close()


async def healthy(node: Node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (found := await http_get(node, "/healthz"))[0] != 200:
        assert time.monotonic() < deadline, f"{node.name} is not healthy: {found}"
        await asyncio.sleep(0.2)


async def wait_message(pubsub: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.5)
        if message is not None and message["type"] == "message":
            return dict(message)
    raise AssertionError("no message")


async def http_get(node: Node, path: str) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)
