"""Running the daemon in-process for system tests, and subscribing to it with redis-py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import redis.asyncio as aioredis

from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.hub import Hub
from tidings.sandbox import PrivateMariaDB

_tasks: WeakKeyDictionary[Daemon, asyncio.Future[None]] = WeakKeyDictionary()


async def wait_for(
    predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def start_daemon(
    db: PrivateMariaDB, server_id: int, hub: Hub | None = None, **settings: Any
) -> Daemon:
    """Run a daemon on `db` until its replica is connected and its listener is open."""
    settings = {"mysql": db.url(), "resp": "127.0.0.1:0", "http": "", **settings}
    daemon = Daemon(Settings(server_id=server_id, **settings), hub)
    task = _tasks[daemon] = asyncio.ensure_future(daemon.run())
    await wait_for(
        lambda: (
            (daemon.replica is not None and daemon.replica.connected and daemon.resp_address)
            or task.done()
        ),
        what="replica connected and clients let in",
    )
    if task.done():
        task.result()  # the start-up error
    return daemon


async def stop_daemon(daemon: Daemon) -> None:
    daemon.stop()
    await asyncio.wait_for(_tasks.pop(daemon), 20)


def daemon_task(daemon: Daemon) -> asyncio.Future[None]:
    return _tasks[daemon]


async def subscriber(daemon: Daemon, *channels: str) -> aioredis.client.PubSub:
    """A redis-py PubSub on `channels` (globs through PSUBSCRIBE), confirmations consumed."""
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    pubsub = aioredis.Redis(host=host, port=port).pubsub()
    globs = [c for c in channels if "*" in c]
    exact = [c for c in channels if c not in globs]
    if exact:
        await pubsub.subscribe(*exact)
    if globs:
        await pubsub.psubscribe(*globs)
    for _ in channels:
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] in ("subscribe", "psubscribe")
    return pubsub


async def receive(pubsub: aioredis.client.PubSub, count: int, timeout: float = 20) -> list[Any]:
    """The next `count` messages, decoded from JSON; fails after `timeout` seconds."""
    events: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(events) < count:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"got {len(events)} of {count} events: {events[-3:]}")
        message = await pubsub.get_message(timeout=min(remaining, 1.0))
        if message and message["type"] in ("message", "pmessage"):
            events.append(json.loads(message["data"]))
    return events


async def assert_silent(pubsub: aioredis.client.PubSub, seconds: float = 0.5) -> None:
    message = await pubsub.get_message(timeout=seconds)
    assert message is None, f"unexpected message {message}"


def bulk_writes(schema: str, rows: int, first: int = 1, per_txn: int = 500) -> str:
    """SQL for `rows` inserts into `schema`.t (n, v), `per_txn` rows a transaction, numbered
    from `first` (MariaDB's sequence engine makes them without a client loop)."""
    end = first + rows
    return "".join(
        f"INSERT INTO {schema}.t SELECT seq, CONCAT('row ', seq) "
        f"FROM seq_{a}_to_{min(a + per_txn, end) - 1};"
        for a in range(first, end, per_txn)
    )
