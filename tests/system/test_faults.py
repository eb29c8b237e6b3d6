"""Faults with real processes: the network to MariaDB cut and restored, subscribers vanishing
mid-write. In each, every row reaches every remaining subscriber exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct

import redis.asyncio as aioredis

from tests.system.daemons import (
    assert_silent,
    receive,
    start_daemon,
    stop_daemon,
    subscriber,
    wait_for,
)
from tests.system.proxy import Proxy
from tests.system.test_sse import http_get
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count()


def make_table(mariadb: PrivateMariaDB) -> str:
    db = f"faults{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY)")
    return db


async def write_rows(mariadb: PrivateMariaDB, db: str, rows: range, pause: float) -> None:
    """One transaction per row, straight to MariaDB (not through the proxy)."""
    for n in rows:
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {db}.t VALUES ({n})")
        await asyncio.sleep(pause)


async def test_a_silently_cut_network_to_mariadb_is_noticed_and_healed(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = make_table(mariadb)
    proxy = await Proxy(("127.0.0.1", mariadb.port)).start()
    url = f"mysql://root@127.0.0.1:{proxy.address[1]}/"
    daemon = await start_daemon(
        mariadb, replica_server_id, http="127.0.0.1:0", heartbeat=0.5, mysql=url
    )
    try:
        pubsub = await subscriber(daemon, f"{db}.t")
        await write_rows(mariadb, db, range(1, 11), 0.02)
        assert [e["data"]["n"] for e in await receive(pubsub, 10)] == list(range(1, 11))
        replica = daemon.replica
        assert replica is not None
        reconnects = replica.reconnects

        proxy.cut()  # no FIN, no RST: the binlog stream just goes quiet
        writing = asyncio.ensure_future(write_rows(mariadb, db, range(11, 61), 0.05))
        # three silent heartbeat periods: the replica knows the link is dead
        await wait_for(lambda: not replica.connected, timeout=20, what="the cut noticed")
        status, body = await http_get(daemon, "/healthz")
        assert status == 503, body
        await writing
        await asyncio.sleep(1)  # still cut while it retries
        proxy.restore()
        await wait_for(lambda: replica.connected, timeout=30, what="reconnected")
        assert replica.reconnects > reconnects
        got = [e["data"]["n"] for e in await receive(pubsub, 50, timeout=30)]
        assert got == list(range(11, 61))
        assert await pubsub.get_message(timeout=0.5) is None  # nothing twice
        await wait_for(lambda: daemon.http is not None and daemon.http.health()[0],
                       what="healthy again")  # fmt: skip
        await pubsub.aclose()
    finally:
        await stop_daemon(daemon)
        await proxy.close()


async def test_subscribers_vanishing_mid_write_disturb_nobody_else(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = make_table(mariadb)
    daemon = await start_daemon(mariadb, replica_server_id)
    assert daemon.resp_address is not None and daemon.resp is not None
    try:
        stayers = [await subscriber(daemon, f"{db}.t") for _ in range(5)]
        leavers: list[socket.socket] = []
        for _ in range(50):  # raw subscribers that will vanish with unread data in flight
            sock = socket.create_connection(daemon.resp_address)
            sock.sendall(f"SUBSCRIBE {db}.t\r\n".encode())
            leavers.append(sock)
        await wait_for(lambda: daemon.hub.subscriber_count(f"{db}.t") == 55, what="55 subscribed")
        writing = asyncio.ensure_future(
            asyncio.to_thread(
                mariadb.sql,
                "".join(f"INSERT INTO {db}.t VALUES ({n});" for n in range(1, 2001)),
            )
        )
        await wait_for(lambda: daemon.hub.next_id > 100, what="rows flowing")
        for i, sock in enumerate(leavers):
            if i % 2:  # half reset (RST, as a crashed host's kernel answers), half closed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await writing
        for pubsub in stayers:
            got = [e["data"]["n"] for e in await receive(pubsub, 2000, timeout=60)]
            assert got == list(range(1, 2001))
            await pubsub.aclose()
        await wait_for(lambda: daemon.hub.subscriber_count(f"{db}.t") == 0, what="all gone")
        await wait_for(lambda: daemon.resp is not None and daemon.resp.connections_open == 0,
                       what="every connection released")  # fmt: skip
        assert daemon.admission.open == 0 and daemon.admission.by_host == {}
    finally:
        await stop_daemon(daemon)


async def test_a_subscriber_behind_a_silently_cut_network_is_cut_off_and_resumes(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    """The network between the daemon and one subscriber goes silent (no FIN, no RST):
    its output backs up through the kernel's buffers into the daemon, which cuts it off at
    `output_limit` while the others get every row; once the network is back the
    subscriber resumes from its last id and has every row exactly once."""
    db = f"faults{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY, v TEXT)")
    channel = f"{db}.t"
    daemon = await start_daemon(mariadb, replica_server_id)  # output_limit 1 MiB
    assert daemon.resp_address is not None and daemon.resp is not None
    proxy = await Proxy(daemon.resp_address, upstream_rcvbuf=64 * 1024).start()
    host, port = proxy.address
    # about 17 MB of events, more than the daemon's send buffer (at most tcp_wmem's 4 MB),
    # the proxy's 64 KiB and the limit hold; paced, so the live subscriber keeps up
    rows, per_txn = 8000, 100
    try:
        stayer = await subscriber(daemon, channel)
        remote = aioredis.Redis(host=host, port=port).pubsub()
        await remote.subscribe(channel)
        assert (await remote.get_message(timeout=5) or {}).get("type") == "subscribe"
        mariadb.sql(f"INSERT INTO {db}.t VALUES (1, 'before')")
        seen = await receive(remote, 1)
        assert [e["data"]["n"] for e in await receive(stayer, 1)] == [1]

        proxy.cut()
        stats = daemon.resp.flusher.stats
        cut_before = stats.slow_consumers_cut
        receiving = asyncio.ensure_future(receive(stayer, rows, timeout=120))
        for a in range(2, rows + 2, per_txn):
            await asyncio.to_thread(
                mariadb.sql,
                f"INSERT INTO {db}.t SELECT seq, REPEAT('x', 2000) "
                f"FROM seq_{a}_to_{a + per_txn - 1}",
                db,  # the sequence engine needs a selected database
            )
            await asyncio.sleep(0.02)
        expected = list(range(1, rows + 2))
        got = [e["data"]["n"] for e in await receiving]
        assert got == expected[1:]  # the live subscriber was never held back
        await wait_for(lambda: stats.slow_consumers_cut > cut_before, timeout=30,
                       what="the silent subscriber cut off")  # fmt: skip
        assert daemon.hub.subscriber_count(channel) == 1

        proxy.restore()
        # what the network held arrives, then the daemon's close: the client notices
        with contextlib.suppress(ConnectionError, aioredis.ConnectionError, aioredis.ResponseError):
            while message := await remote.get_message(timeout=5):
                if message["type"] == "message":
                    seen.append(json.loads(message["data"]))
        await remote.aclose()
        resumed = aioredis.Redis(host=host, port=port).pubsub()
        await resumed.execute_command("TIDINGS.SUBSCRIBE", seen[-1]["id"], channel)
        left = len(expected) - len(seen)
        assert left > 0  # it was really cut off short of the end
        seen += await receive(resumed, left, timeout=60)
        assert [e["data"]["n"] for e in seen] == expected  # each row once, in order
        ids = [e["id"] for e in seen]
        assert ids == sorted(set(ids))
        await assert_silent(resumed)
        await resumed.aclose()
        await stayer.aclose()
    finally:
        await stop_daemon(daemon)
        await proxy.close()
