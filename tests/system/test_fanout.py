"""1,000 RESP subscribers on one channel each receive all of 10,000 rows, in order."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.system.daemons import start_daemon, stop_daemon
from tidings.sandbox import PrivateMariaDB

CLIENT = Path(__file__).with_name("fanout_client.py")


async def test_thousand_subscribers_receive_ten_thousand_rows_in_order(
    mariadb: PrivateMariaDB, replica_server_id: int
) -> None:
    subscribers, rows, processes = 1000, 10_000, 4
    mariadb.sql(
        "DROP DATABASE IF EXISTS fan; CREATE DATABASE fan;"
        " CREATE TABLE fan.t (k INT PRIMARY KEY, v INT NOT NULL)"
    )
    daemon = await start_daemon(mariadb, replica_server_id)
    try:
        assert daemon.resp_address is not None
        host, port = daemon.resp_address
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, str(CLIENT), host, str(port), "fan.t",
                str(subscribers // processes), str(rows),
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(processes)
        ]  # fmt: skip
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"READY"
        assert daemon.hub.subscriber_count("fan.t") == subscribers

        # 100 transactions of 100 rows each; v counts 0..9999 in commit order
        batches = [
            "INSERT INTO fan.t VALUES "
            + ",".join(f"({v},{v})" for v in range(start, start + 100))
            + ";"
            for start in range(0, rows, 100)
        ]
        await asyncio.to_thread(mariadb.sql, "\n".join(batches))

        results = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), 300)
            results.extend(json.loads(out.splitlines()[-1]))
        assert len(results) == subscribers
        failures = [r for r in results if r["count"] != rows or r["errors"]]
        assert not failures, f"{len(failures)} subscribers failed, e.g. {failures[:3]}"
    finally:
        await stop_daemon(daemon)
