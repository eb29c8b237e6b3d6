"""The daemon on both flush paths (`flush_path`: the compiled loop and pure Python), with
redis-py subscribers: every row once and in commit order, some subscribers leaving while
rows flow, and /metrics' `tidings_bytes_out` equal to the bytes the subscribers were sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import urllib.request

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from tests.system.daemons import bulk_writes, start_daemon, stop_daemon, subscriber
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count(1)


def message_frame(channel: bytes, data: bytes) -> bytes:
    """The RESP2 push a subscriber was sent for one message (its size is what counts)."""
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(channel), channel, len(data), data,
    )  # fmt: skip


async def collect(pubsub: aioredis.client.PubSub, count: int, timeout: float = 60) -> list[bytes]:
    """The next `count` message frames as sent, in the order received."""
    frames: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(frames) < count:
        assert loop.time() < deadline, f"got {len(frames)} of {count}"
        message = await pubsub.get_message(timeout=1.0)
        if message and message["type"] == "message":
            frames.append(message_frame(message["channel"], message["data"]))
    return frames


def rows_of(frames: list[bytes]) -> list[int]:
    return [json.loads(f.rsplit(b"\r\n", 2)[-2])["data"]["n"] for f in frames]


def resp_bytes_out(where: str) -> float:
    with urllib.request.urlopen(f"http://{where}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("tidings_bytes_out") and sample.labels == {
                "protocol": "resp"
            }:
                return sample.value
    raise AssertionError("no tidings_bytes_out{protocol=resp}")


async def test_redis_py_subscribers_on_both_flush_paths(
    mariadb: PrivateMariaDB, replica_server_id: int, flush_path: str
) -> None:
    schema = f"flush{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {schema}; CREATE TABLE {schema}.t (n INT PRIMARY KEY, v TEXT)")
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0")
    assert daemon.http_address is not None
    where = "{}:{}".format(*daemon.http_address)
    rng = random.Random(7)
    try:
        subs = [await subscriber(daemon, f"{schema}.t") for _ in range(40)]
        before = await asyncio.to_thread(resp_bytes_out, where)

        # 1. everyone stays: every row once, in order, and the counter is exact
        await asyncio.to_thread(mariadb.sql, bulk_writes(schema, 500, per_txn=50), schema)
        got = await asyncio.gather(*(collect(s, 500) for s in subs))
        assert all(rows_of(frames) == list(range(1, 501)) for frames in got)
        after = await asyncio.to_thread(resp_bytes_out, where)
        assert after - before == sum(len(f) for frames in got for f in frames)

        # 2. a quarter leave (reset, not a clean QUIT) while 2,000 more rows flow
        leaving = rng.sample(subs, 10)
        staying = [s for s in subs if s not in leaving]
        writer = asyncio.ensure_future(
            asyncio.to_thread(mariadb.sql, bulk_writes(schema, 2000, first=501, per_txn=20), schema)
        )
        readers = [asyncio.ensure_future(collect(s, 2000)) for s in staying]
        await asyncio.sleep(0.05)
        for pubsub in leaving:
            connection = pubsub.connection
            assert connection is not None
            await connection.disconnect()
            await asyncio.sleep(rng.random() / 50)
        await writer
        got = await asyncio.gather(*readers)
        assert all(rows_of(frames) == list(range(501, 2501)) for frames in got)
        for pubsub in staying:
            await pubsub.aclose()
    finally:
        await stop_daemon(daemon)
