"""Stopping the daemon (SIGTERM's path): listeners close first, every connected client gets
what was published, then the reason, on every protocol."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest
import redis.exceptions
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.system.daemons import (
    bulk_writes,
    receive,
    start_daemon,
    stop_daemon,
    subscriber,
    wait_for,
)
from tests.system.test_sse import Stream
from tidings.daemon import SHUTDOWN_REASON
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count()


async def test_stop_delivers_everything_then_tells_each_client_why(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = f"drain{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY, v TEXT)")
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0")
    assert daemon.resp_address is not None and daemon.http_address is not None
    resp_address, http_address = daemon.resp_address, daemon.http_address
    pubsub = await subscriber(daemon, f"{db}.t")
    sse = await Stream.open(daemon, f"/sse?channel={db}.t")
    ws = await connect(f"ws://{http_address[0]}:{http_address[1]}/ws")
    await ws.send(orjson.dumps({"op": "subscribe", "channel": f"{db}.t"}).decode())
    assert orjson.loads(await ws.recv())["op"] == "subscribed"

    first = daemon.hub.next_id
    await asyncio.to_thread(mariadb.sql, bulk_writes(db, 2000), db)
    # every row is published before the stop, then the clients read at their own pace
    await wait_for(lambda: daemon.hub.next_id - first >= 2000, what="2000 rows published")
    stopping = asyncio.ensure_future(stop_daemon(daemon))
    await asyncio.sleep(0.05)
    for address in (resp_address, http_address):  # nobody new is let in meanwhile
        with pytest.raises(OSError):
            await asyncio.open_connection(*address)

    async def on_resp() -> None:
        assert [e["data"]["n"] for e in await receive(pubsub, 2000)] == list(range(1, 2001))
        # as redis does: no reply nobody asked for, the connection just ends (redis-py
        # takes that for "reconnect"; an error reply would end its reconnect loop)
        with pytest.raises(redis.exceptions.ConnectionError):
            await pubsub.get_message(timeout=5)
        await pubsub.aclose()

    async def on_sse() -> None:
        assert [e["data"]["n"] for _, _, e in await sse.events(2000)] == list(range(1, 2001))
        last = await asyncio.wait_for(sse.reader.read(), 5)
        assert last == f": {SHUTDOWN_REASON}\n\n".encode()
        sse.writer.close()

    async def on_ws() -> None:
        got = [orjson.loads(await ws.recv())["data"]["n"] for _ in range(2000)]
        assert got == list(range(1, 2001))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, SHUTDOWN_REASON)

    # the three read at once, as real clients do: the daemon gives them 5 s to drain
    await asyncio.gather(on_resp(), on_sse(), on_ws())
    await stopping
