"""A cluster of tidings nodes (`--cluster`): aggregate deliveries/s with 1, 2 and 3 nodes,
and the commit -> client latency the Redis backplane adds.

Throughput: a private MariaDB and redis-server; N cluster nodes, each with
--subscribers/N raw RESP subscribers to one table's channel (one subscriber process
per node, asyncio, counting messages); then --rows rows in transactions of 500. The
rate is deliveries (rows x subscribers) over the time from the first commit until the
last subscriber has every row. Every process shares this machine's cores: with 2 cores
the nodes, Redis, MariaDB and the subscriber processes compete, so more nodes do not
add cores here; the CPU per delivery (summed over the nodes) is the figure that
extrapolates to nodes on machines of their own.

Latency: single-row transactions at --rate per second carrying their commit-side
send time (time.time_ns() just before COMMIT); one subscriber measures arrival minus
that. Single node (no --cluster) against a 1-node and a 3-node cluster: the difference
is the backplane hop (leader -> XADD -> XREAD -> node).

    .venv/bin/python bench/cluster.py [--subscribers 600] [--rows 20000] [--nodes 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from harness import TIDINGS, Redis, free_port, machine, percentile, tree_cpu, wait_resp
from harness import table as md_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from tidings.sandbox import PrivateMariaDB

SERVER_ID = 4300


def start_node(logdir: Path, mysql: str, cluster: str | None, name: str) -> subprocess.Popen[bytes]:
    port = free_port()
    cmd = [str(TIDINGS), "serve", "--mysql", mysql, "--server-id", str(SERVER_ID)]
    cmd += ["--resp", f"127.0.0.1:{port}", "--http", "", "--output-limit", "64M"]
    if cluster:
        cmd += ["--cluster", cluster, "--cluster-node", name]
    with open(logdir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_resp(port, proc=proc, timeout=60)
    proc.port = port  # type: ignore[attr-defined]
    return proc


# -- subscribers (a process per node) -------------------------------------------------------
async def _subscribe(port: int, count: int, channel: bytes, expect: int, ctrl: Connection) -> None:
    marker = b"\r\n$7\r\nmessage\r\n"
    done = asyncio.Event()
    left = count

    async def one() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SUBSCRIBE " + channel + b"\r\n")
        await reader.readuntil(b":1\r\n")  # the confirmation
        got, tail = 0, b""
        while got < expect:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("closed")
            chunk = tail + data
            got += chunk.count(marker)
            tail = chunk[-(len(marker) - 1) :]  # a marker split across reads counts once
        left -= 1
        if not left:
            done.set()
        writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    ctrl.send("ready")
    await done.wait()
    ctrl.send(time.time())
    for task in tasks:
        task.cancel()


def _subscriber_process(
    port: int, count: int, channel: bytes, expect: int, ctrl: Connection
) -> None:
    asyncio.run(_subscribe(port, count, channel, expect, ctrl))


def throughput(
    db: PrivateMariaDB, logdir: Path, nodes: int, subscribers: int, rows: int
) -> dict[str, float]:
    redis = Redis(logdir / f"redis-{nodes}")
    cluster = f"redis://127.0.0.1:{redis.port}/0"
    procs = [start_node(logdir, db.url(), cluster, f"node{nodes}-{i}") for i in range(nodes)]
    try:
        schema = f"bench{nodes}"
        db.sql(f"DROP DATABASE IF EXISTS {schema}; CREATE DATABASE {schema}; "
               f"CREATE TABLE {schema}.t (n INT PRIMARY KEY, v VARCHAR(200))")  # fmt: skip
        time.sleep(2)
        ctrls = []
        for proc in procs:
            mine, theirs = multiprocessing.Pipe()
            p = multiprocessing.Process(
                target=_subscriber_process,
                args=(proc.port, subscribers // nodes, f"{schema}.t".encode(), rows, theirs),  # type: ignore[attr-defined]
            )
            p.start()
            assert mine.recv() == "ready"
            ctrls.append((mine, p))
        time.sleep(2)  # every subscription confirmed
        cpu_before = sum(sum(tree_cpu(p.pid).values()) for p in procs)
        start = time.time()
        statements = "".join(
            f"INSERT INTO {schema}.t SELECT seq, REPEAT('x', 150) "
            f"FROM seq_{a}_to_{min(a + 499, rows)};"
            for a in range(1, rows + 1, 500)
        )
        db.sql(statements, schema)
        ends = [ctrl.recv() for ctrl, _ in ctrls]
        elapsed = max(ends) - start
        cpu = sum(sum(tree_cpu(p.pid).values()) for p in procs) - cpu_before
        for _, p in ctrls:
            p.join(10)
        deliveries = rows * (subscribers // nodes) * nodes
        return {"nodes": nodes, "deliveries": deliveries, "seconds": elapsed,
                "rate": deliveries / elapsed, "cpu_us": cpu / deliveries * 1e6}  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        redis.stop()


# -- latency ------------------------------------------------------------------------------
async def _latency(
    db: PrivateMariaDB, port: int, schema: str, count: int, rate: float
) -> list[float]:
    import orjson

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"SUBSCRIBE {schema}.t\r\n".encode())
    await reader.readuntil(b":1\r\n")
    samples: list[float] = []

    async def read() -> None:
        while len(samples) < count:
            await reader.readuntil(b"\r\n$7\r\nmessage\r\n")
            await reader.readline()  # channel length
            await reader.readline()  # channel
            size = int((await reader.readline())[1:])
            body = orjson.loads(await reader.readexactly(size + 2))
            samples.append((time.time_ns() - int(body["data"]["v"])) / 1e6)

    reading = asyncio.ensure_future(read())
    conn = await asyncio.create_subprocess_exec(
        "mariadb", f"--socket={db.socket_path}", "-uroot", schema, stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert conn.stdin is not None
    for n in range(count):
        conn.stdin.write(f"INSERT INTO t VALUES ({n}, '{time.time_ns()}');\n".encode())
        await conn.stdin.drain()
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(reading, 60)
    conn.stdin.close()
    await conn.wait()
    writer.close()
    return samples


def latency(db: PrivateMariaDB, logdir: Path, nodes: int, count: int, rate: float) -> list[float]:
    """nodes 0: a single tidings without --cluster."""
    redis = Redis(logdir / f"redis-lat{nodes}") if nodes else None
    cluster = f"redis://127.0.0.1:{redis.port}/0" if redis else None
    procs = [start_node(logdir, db.url(), cluster, f"lat{nodes}-{i}") for i in range(max(1, nodes))]
    try:
        schema = f"lat{nodes}"
        db.sql(f"DROP DATABASE IF EXISTS {schema}; CREATE DATABASE {schema}; "
               f"CREATE TABLE {schema}.t (n INT PRIMARY KEY, v VARCHAR(40))")  # fmt: skip
        time.sleep(2)
        # on a node that does not lead, when there are several: the hop is the whole path
        return asyncio.run(_latency(db, procs[-1].port, schema, count, rate))  # type: ignore[attr-defined]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        if redis:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=600)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--latency-count", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="tidings-bench-cluster-"))
    print(machine())
    with PrivateMariaDB(logdir / "mariadb") as db:
        rows = []
        for nodes in (int(n) for n in args.nodes.split(",")):
            r = throughput(db, logdir, nodes, args.subscribers, args.rows)
            rows.append([nodes, f"{r['deliveries']:,}", f"{r['seconds']:.2f}",
                         f"{r['rate']:,.0f}", f"{r['cpu_us']:.2f}"])  # fmt: skip
            print(rows[-1], flush=True)
        print(
            md_table(
                ["nodes", "deliveries", "seconds", "deliveries/s", "node CPU µs/delivery"], rows
            )
        )
        lat_rows = []
        for nodes, label in (
            (0, "single node, no backplane"),
            (1, "1-node cluster"),
            (3, "3-node cluster, non-leader node"),
        ):
            samples = sorted(latency(db, logdir, nodes, args.latency_count, args.rate))
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            lat_rows.append([label, f"{p50:.2f}", f"{p99:.2f}", f"{statistics.mean(samples):.2f}"])
            print(lat_rows[-1], flush=True)
        print(md_table(["setup", "p50 ms", "p99 ms", "mean ms"], lat_rows))
    print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
