"""`tidings demo`: a private MariaDB, the daemon, a writer and a live subscriber, in one go.

Everything runs in a temporary directory and is removed at the end; nothing
touches a MariaDB or Redis already on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO, cast

import asyncmy
import orjson

from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB, free_port
from tidings.tail import encode_command, format_event, read_reply

SCHEMA = """
CREATE DATABASE shop;
CREATE TABLE shop.customers (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(200)
);
CREATE TABLE shop.orders (
  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  customer_id INT NOT NULL,
  total DECIMAL(10,2) NOT NULL,
  status ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new',
  note VARCHAR(200),
  extra JSON,
  created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
);
CREATE USER 'tidings'@'127.0.0.1' IDENTIFIED BY 'demo-secret';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'tidings'@'127.0.0.1';
INSERT INTO shop.customers(name, email) VALUES
  ('Ada', 'ada@example.com'), ('Linus', NULL), ('Grace', 'grace@example.com');
"""

NAMES = ["Ada", "Linus", "Grace", "Edsger", "Barbara", "Ken", "Dennis", "Margaret"]
NOTES = ["gift wrap", "leave at door", "🎁 birthday", "déjà vu", None]


def _preferred_port(port: int) -> int:
    """`port` (as in the README) when free, else any free port."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        return port
    except OSError:
        return free_port()


async def _writer(port: int, seconds: float, out: TextIO) -> int:
    """Write sample transactions; return how many row changes were committed."""
    conn = await asyncmy.connect(host="127.0.0.1", port=port, user="root", autocommit=False)
    rows = 0
    deadline = time.monotonic() + seconds
    order_ids: list[int] = []
    try:
        async with conn.cursor() as cur:
            step = 0
            while time.monotonic() < deadline:
                step += 1
                kind = step % 6
                if kind in (1, 2, 4) or not order_ids:
                    total = f"{random.randint(100, 99999) / 100:.2f}"
                    extra = orjson.dumps({"items": random.randint(1, 5), "step": step}).decode()
                    await cur.execute(
                        "INSERT INTO shop.orders(customer_id,total,note,extra)"
                        " VALUES (%s,%s,%s,%s)",
                        (random.randint(1, 3), total, random.choice(NOTES), extra),
                    )
                    order_ids.append(int(cur.lastrowid))
                    print(f"writer: INSERT order {cur.lastrowid} total {total}", file=out)
                    rows += 1
                elif kind == 3:
                    oid = random.choice(order_ids)
                    await cur.execute(
                        "UPDATE shop.orders SET status='paid' WHERE id=%s AND status='new'", (oid,)
                    )
                    print(f"writer: UPDATE order {oid} -> paid", file=out)
                    rows += cast(int, cur.rowcount)
                elif kind == 5:
                    # one transaction, two tables: arrives complete and contiguous
                    await cur.execute(
                        "INSERT INTO shop.customers(name,email) VALUES (%s,%s)",
                        (random.choice(NAMES), None),
                    )
                    await cur.execute(
                        "INSERT INTO shop.orders(customer_id,total) VALUES (%s,'1.00')",
                        (cur.lastrowid,),
                    )
                    order_ids.append(int(cur.lastrowid))
                    print("writer: INSERT customer + order in one transaction", file=out)
                    rows += 2
                else:
                    oid = order_ids.pop(0)
                    await cur.execute("DELETE FROM shop.orders WHERE id=%s", (oid,))
                    print(f"writer: DELETE order {oid}", file=out)
                    rows += cast(int, cur.rowcount)
                await conn.commit()
                await asyncio.sleep(0.7)
            # a rolled-back transaction: produces nothing
            await cur.execute("INSERT INTO shop.orders(customer_id,total) VALUES (1,'0.01')")
            await conn.rollback()
            print("writer: INSERT then ROLLBACK (nothing should arrive)", file=out)
    finally:
        conn.close()
    return rows


async def _subscriber(port: int, out: TextIO, received: list[dict[str, Any]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_command("PSUBSCRIBE", "shop.*"))
    try:
        while True:
            reply = await read_reply(reader)
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
                channel, payload = reply[2], reply[3]
                assert isinstance(channel, bytes) and isinstance(payload, bytes)
                received.append(orjson.loads(payload))
                print("  tail:", format_event(channel, payload, pretty=False), file=out, flush=True)
    finally:
        writer.close()


async def _sse_subscriber(port: int, received: list[int]) -> None:
    """The browser's path: a Server-Sent Events stream of the same channels, ids collected."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /sse?pattern=shop.* HTTP/1.1\r\nHost: demo\r\n\r\n")
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"SSE refused: {head!r}")
        event_id, event = 0, b""
        while line := await reader.readline():
            if line.startswith(b"id:"):
                event_id = int(line[3:])
            elif line.startswith(b"event:"):
                event = line[6:].strip()
            elif line == b"\n":  # end of a block; the first one (retry:, no event) is skipped
                if event:
                    received.append(event_id)
                event_id, event = 0, b""
    finally:
        writer.close()


async def run_demo(seconds: float = 15.0, out: TextIO = sys.stdout) -> int:
    with tempfile.TemporaryDirectory(prefix="tidings-demo-") as tmp:
        db = PrivateMariaDB(Path(tmp))
        print(
            f"demo: starting a private MariaDB on 127.0.0.1:{db.port} (binlog ROW, FULL metadata)",
            file=out,
        )
        await asyncio.to_thread(db.start)
        try:
            await asyncio.to_thread(db.sql, SCHEMA)
            resp_port = _preferred_port(6380)
            http_port = _preferred_port(8080)
            settings = Settings(
                mysql=f"mysql://tidings:demo-secret@127.0.0.1:{db.port}/",
                resp=f"127.0.0.1:{resp_port}",
                http=f"127.0.0.1:{http_port}",
            )
            daemon = Daemon(settings)
            runner = asyncio.ensure_future(daemon.run())
            while daemon.replica is None or not daemon.replica.connected:
                if runner.done():
                    return runner.result() or 1  # surfaces the start-up error
                await asyncio.sleep(0.05)
            print(
                f"demo: tidings serving the Redis pub/sub protocol on 127.0.0.1:{resp_port}",
                file=out,
            )
            print(
                f"demo: in another terminal try:  redis-cli -p {resp_port} SUBSCRIBE shop.orders",
                file=out,
            )
            print(
                f"demo: or:  curl -N 'http://127.0.0.1:{http_port}/sse?channel=shop.orders'",
                file=out,
            )
            print(f"demo: or open the live dashboard: http://127.0.0.1:{http_port}/", file=out)
            received: list[dict[str, Any]] = []
            sse_ids: list[int] = []
            subs = [
                asyncio.ensure_future(_subscriber(resp_port, out, received)),
                asyncio.ensure_future(_sse_subscriber(http_port, sse_ids)),
            ]
            await asyncio.sleep(0.3)  # let the subscriptions land before the first write
            rows = await _writer(db.port, seconds, out)
            deadline = time.monotonic() + 5
            while min(len(received), len(sse_ids)) < rows and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a late (wrong) event from the rollback would show here
            for sub in subs:
                sub.cancel()
            daemon.stop()
            for sub in subs:
                with contextlib.suppress(asyncio.CancelledError):
                    await sub
            await runner
            ids = [e["id"] for e in received]
            in_order = ids == sorted(ids) and len(set(ids)) == len(ids)
            print(
                f"demo: {rows} row changes committed, {len(received)} events received over "
                f"RESP, ids {'strictly increasing' if in_order else 'OUT OF ORDER'}; "
                f"{len(sse_ids)} over Server-Sent Events, "
                f"{'the same ids' if sse_ids == ids else 'DIFFERENT ids'}",
                file=out,
            )
            return 0 if len(received) == rows and in_order and sse_ids == ids else 1
        finally:
            await asyncio.to_thread(db.stop)


def demo_main(seconds: float) -> int:
    from tidings.daemon import install_uvloop

    install_uvloop()
    return asyncio.run(run_demo(seconds))


__all__ = ["demo_main", "run_demo"]
