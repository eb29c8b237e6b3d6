"""`tidings status` as an operator runs it, against a daemon that is healthy, then cut off
from MariaDB, and against nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess

from tests.system.daemons import start_daemon, stop_daemon, subscriber, wait_for
from tests.system.proxy import Proxy
from tests.system.test_cli import TIDINGS
from tidings.sandbox import PrivateMariaDB, free_port

_dbs = itertools.count()


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIDINGS, "status", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_status_of_a_healthy_then_cut_off_daemon(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    db = f"status{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (n INT PRIMARY KEY)")
    proxy = await Proxy(("127.0.0.1", mariadb.port)).start()
    daemon = await start_daemon(
        mariadb, replica_server_id, http="127.0.0.1:0", heartbeat=0.5,
        mysql=f"mysql://root@127.0.0.1:{proxy.address[1]}/",
    )  # fmt: skip
    assert daemon.http_address is not None
    where = "{}:{}".format(*daemon.http_address)
    try:
        pubsub = await subscriber(daemon, f"{db}.t")
        await asyncio.to_thread(mariadb.sql, f"INSERT INTO {db}.t VALUES (1), (2)")
        await wait_for(lambda: daemon.hub.delivered >= 2, what="2 rows delivered")

        done = await asyncio.to_thread(status, "--http", where)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith(f"tidings at http://{where}: healthy, up ")
        assert lines[1].startswith("binlog        connected, at ")
        assert "resp 1" in lines[2] and lines[3].startswith("subscriptions 1 on 1 channels")
        assert lines[4].startswith("events        2 published") and "2 delivered" in lines[4]
        assert lines[5] == f"busiest       {db}.t (2 events, 1 subscribers)"

        as_json = await asyncio.to_thread(status, "--http", where, "--json")
        report = json.loads(as_json.stdout)
        assert report["healthy"] is True and report["stats"]["deliveries"] == 2

        proxy.cut()
        replica = daemon.replica
        assert replica is not None
        await wait_for(lambda: not replica.connected, timeout=20, what="the cut noticed")
        cut = await asyncio.to_thread(status, "--http", where)
        assert cut.returncode == 1
        assert "UNHEALTHY" in cut.stdout and "not connected to the binlog source" in cut.stdout
        assert "binlog        DISCONNECTED" in cut.stdout
        await pubsub.aclose()
    finally:
        proxy.restore()
        await stop_daemon(daemon)
        await proxy.close()


def test_status_of_nothing_says_so() -> None:
    port = free_port()
    done = status("--http", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stderr.startswith(f"tidings: cannot reach tidings at 127.0.0.1:{port}: ")
