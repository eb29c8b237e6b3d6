"""Connection limits and timeouts against a real daemon: each refusal says why, nobody else
is disturbed, and /metrics counts what happened."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from websockets.asyncio.client import connect

from tests.system.daemons import receive, start_daemon, stop_daemon, subscriber
from tests.system.test_sse import Stream, http_get
from tests.system.test_tls import sourceless_daemon
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB
from tidings.wire.limits import somaxconn

_dbs = itertools.count()


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, its `reason` label) -> value."""
    return {
        (s.name, s.labels.get("reason", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def metrics(daemon: Daemon) -> dict[tuple[str, str], float]:
    status, body = await http_get(daemon, "/metrics")
    assert status == 200
    return samples(body.decode())


def client(daemon: Daemon) -> aioredis.Redis:
    """redis-py on one connection, without its retries (so each refusal is one attempt)."""
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    return aioredis.Redis(host=host, port=port, single_connection_client=True,
                          socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))  # fmt: skip


async def raw(daemon: Daemon, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert daemon.resp_address is not None
    return await asyncio.open_connection(*daemon.resp_address, local_addr=(source, 0))


async def test_max_clients_counts_every_listener_and_says_why(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", max_clients=3)
    try:
        held = [client(daemon) for _ in range(2)]
        for c in held:
            assert await c.ping()
        # the third place goes to an HTTP connection: the limit is the process's
        _, writer = await asyncio.open_connection(*daemon.http_address or ())
        refused = client(daemon)
        with pytest.raises(redis.exceptions.ConnectionError, match="max number of clients"):
            await refused.ping()  # redis-py knows redis's own words for this
        await refused.aclose()
        status, body = await http_get(daemon, "/healthz")
        assert status == 503 and b"max number of clients reached" in body
        writer.close()
        await held.pop().aclose()
        await asyncio.sleep(0.2)  # the server sees both go
        status, body = await http_get(daemon, "/metrics")
        assert status == 200
        found = samples(body.decode())
        assert found[("tidings_connections_refused_total", "max_clients")] == 2
        assert found[("tidings_max_clients", "")] == 3
        assert await held[0].ping()  # the connection kept all along still works
        await held[0].aclose()
    finally:
        await stop_daemon(daemon)


async def test_max_clients_per_ip_refuses_one_address_only(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    daemon = await start_daemon(
        mariadb, replica_server_id, http="127.0.0.1:0", max_clients_per_ip=2
    )
    try:
        first = [await raw(daemon, "127.0.0.2") for _ in range(2)]
        reader, writer = await raw(daemon, "127.0.0.2")
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line == (
            b"-ERR max number of clients from 127.0.0.2 reached (max_clients_per_ip=2)\r\n"
        )
        assert await reader.read() == b""  # then closed
        writer.close()
        other_reader, other = await raw(daemon, "127.0.0.3")  # another address: let in
        other.write(b"PING\r\n")
        assert await asyncio.wait_for(other_reader.readline(), 5) == b"+PONG\r\n"
        for r, w in first:
            w.write(b"PING\r\n")
            assert await asyncio.wait_for(r.readline(), 5) == b"+PONG\r\n"
            w.close()
        other.close()
        found = await metrics(daemon)
        assert found[("tidings_connections_refused_total", "max_clients_per_ip")] == 1
    finally:
        await stop_daemon(daemon)


async def test_idle_timeout_closes_idle_connections_never_subscribers(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = f"limits{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY)")
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", idle_timeout=1)
    try:
        pubsub = await subscriber(daemon, f"{db}.t")
        reader, writer = await raw(daemon, "127.0.0.1")
        writer.write(b"PING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        # closed within the timeout plus one sweep, silently (as redis does)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.sleep(1.5)  # the subscriber has been quiet longer than the timeout too
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {db}.t VALUES (1)")
        assert [e["data"] for e in await receive(pubsub, 1)] == [{"n": 1}]
        await pubsub.aclose()
        found = await metrics(daemon)
        assert found[("tidings_connections_timed_out_total", "idle_timeout")] == 1
    finally:
        await stop_daemon(daemon)


async def test_request_timeout_ends_slow_requests_but_not_streams(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = f"limits{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY)")
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", request_timeout=1)
    assert daemon.http_address is not None
    try:
        stream = await Stream.open(daemon, f"/sse?channel={db}.t")
        slow_reader, slow = await asyncio.open_connection(*daemon.http_address)
        slow.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        silent_reader, silent = await asyncio.open_connection(*daemon.http_address)
        answer = await asyncio.wait_for(slow_reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert b"request not received within 1 s" in answer
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""
        slow.close()
        silent.close()
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {db}.t VALUES (1)")
        assert [e["data"] for _, _, e in await stream.events(1)] == [{"n": 1}]
        stream.writer.close()
        found = await metrics(daemon)
        assert found[("tidings_connections_timed_out_total", "request_timeout")] == 2
    finally:
        await stop_daemon(daemon)


async def test_max_subscriptions_on_every_protocol(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", max_subscriptions=2)
    assert daemon.http_address is not None
    host, port = daemon.http_address
    try:
        reader, writer = await raw(daemon, "127.0.0.1")
        writer.write(b"SUBSCRIBE a b\r\nSUBSCRIBE a c\r\nPSUBSCRIBE x*\r\nPING\r\n")
        replies = [await asyncio.wait_for(reader.readline(), 5) for _ in range(15)]
        refusal = (
            b"-ERR too many subscriptions on this connection (max_subscriptions=2): "
            b"unsubscribe some, or open another connection\r\n"
        )
        # a b confirmed; "a c" and "x*" refused whole; PING in subscribed mode answers
        assert replies[12:] == [refusal, refusal, b"*2\r\n"], replies
        assert daemon.hub.subscriber_count("c") == 0 and daemon.hub.pattern_count() == 0
        writer.close()

        async with connect(f"ws://{host}:{port}/ws") as ws:
            for channel in ("a", "b", "c"):
                await ws.send(orjson.dumps({"op": "subscribe", "channel": channel}).decode())
            answers = [orjson.loads(await ws.recv()) for _ in range(3)]
        assert [a["op"] for a in answers] == ["subscribed", "subscribed", "error"]
        assert "max_subscriptions=2" in answers[2]["message"]

        status, body = await http_get(daemon, "/sse?channel=a&channel=b&pattern=c*")
        assert status == 400 and b"max_subscriptions=2" in body
    finally:
        await stop_daemon(daemon)


def storm(address: tuple[str, int], count: int) -> int:
    """Open `count` connections at once while the daemon's loop is stalled (this function
    never yields to it), like 19,000 subscribers reconnecting during a one-second stall;
    return how many the kernel completed: those its accept queue (the listen backlog)
    took in. The others' SYNs were dropped: they would wait out SYN retransmission."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            socks.append(sock)
            with contextlib.suppress(BlockingIOError):
                sock.connect(address)
        time.sleep(0.3)  # loopback handshakes complete in microseconds, if they complete
        established = 0
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.getpeername()  # ENOTCONN while still in SYN-SENT
                established += 1
        return established
    finally:
        for sock in socks:  # RST: nothing for the daemon to drain once it runs again
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


@pytest.mark.parametrize(("backlog", "held"), [(None, 1500), (100, 101)])
async def test_the_listen_backlog_is_a_setting_and_absorbs_a_reconnect_storm(
    backlog: int | None, held: int
) -> None:
    """By default a storm of 1,500 connects during a stall is held whole (the 511 it
    replaced, redis's tcp-backlog, held 512); `backlog` sets it (Linux queues backlog + 1)."""
    cap = somaxconn()
    assert cap is None or cap >= 1500, f"net.core.somaxconn is {cap}: this test needs 1500"
    settings = {} if backlog is None else {"backlog": backlog}
    async with sourceless_daemon(**settings) as daemon:
        assert daemon.resp_address is not None and daemon.http_address is not None
        for address in (daemon.resp_address, daemon.http_address):
            assert storm(address, 1500) == held, address
            await asyncio.sleep(0.5)  # the daemon accepts them and sees the resets
        async with client(daemon) as redis_client:
            assert await redis_client.ping()
