"""Server-Sent Events on a real MariaDB: a row inserted arrives on the stream; a client that
disconnects and comes back with Last-Event-ID gets exactly the rows it missed.

Real peers only: a private MariaDB with binlog on, the daemon in-process with its HTTP
listener on 127.0.0.1:0, and a plain socket client speaking HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system.daemons import start_daemon, stop_daemon, wait_for
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB

_dbs = itertools.count(1)
TIMEOUT = 20


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"sse{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v TEXT)")
    return name


class Stream:
    """One GET /sse, read block by block."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_id: int | None = None

    @classmethod
    async def open(cls, daemon: Daemon, target: str, last_id: int | None = None) -> Stream:
        assert daemon.http_address is not None
        reader, writer = await asyncio.open_connection(*daemon.http_address)
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
        writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        stream = cls(reader, writer)
        stream.last_id = last_id
        return stream

    async def events(self, count: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The next `count` events as (id, type, JSON); tracks the id as EventSource does."""
        out: list[tuple[int, str, dict[str, Any]]] = []
        while len(out) < count:
            block = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), TIMEOUT)
            fields = dict(
                line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
            )
            if "id" in fields:
                self.last_id = int(fields["id"])
            if "data" in fields:
                out.append((int(fields["id"]), fields["event"], orjson.loads(fields["data"])))
        return out

    def close(self) -> None:
        self.writer.close()


async def http_get(daemon: Daemon, path: str) -> tuple[int, bytes]:
    assert daemon.http_address is not None
    reader, writer = await asyncio.open_connection(*daemon.http_address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_sse_delivers_rows_and_resumes_with_last_event_id(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0")
    try:
        status, body = await http_get(daemon, "/healthz")
        assert status == 200 and orjson.loads(body)["status"] == "ok", body

        stream = await Stream.open(daemon, f"/sse?channel={schema}.t")
        await wait_for(lambda: daemon.hub.subscriber_count(f"{schema}.t") == 1, what="stream")
        mariadb.sql(f"INSERT INTO {schema}.t VALUES (1, 'first')")
        ((first_id, kind, event),) = await stream.events(1)
        assert (kind, event["data"], event["id"]) == ("insert", {"n": 1, "v": "first"}, first_id)
        stream.close()
        await wait_for(lambda: daemon.hub.subscriber_count(f"{schema}.t") == 0, what="gone")

        # away: a transaction of three rows, an update, a delete, and a multi-line value
        mariadb.sql(
            f"BEGIN; INSERT INTO {schema}.t VALUES (2, 'a'), (3, 'b'), (4, 'c'); COMMIT;"
            f"UPDATE {schema}.t SET v = 'line1\\nline2' WHERE n = 1;"
            f"DELETE FROM {schema}.t WHERE n = 2;"
        )
        await wait_for(lambda: daemon.hub.next_id > first_id + 5, what="writes published")

        back = await Stream.open(daemon, f"/sse?channel={schema}.t", last_id=stream.last_id)
        missed = await back.events(5)
        assert [e[0] for e in missed] == list(range(first_id + 1, first_id + 6))
        assert [(k, e["data"]["n"]) for _, k, e in missed] == [
            ("insert", 2),
            ("insert", 3),
            ("insert", 4),
            ("update", 1),
            ("delete", 2),
        ]
        assert missed[3][2]["data"]["v"] == "line1\nline2"
        # then live, with nothing repeated and nothing extra in between
        await wait_for(lambda: daemon.hub.subscriber_count(f"{schema}.t") == 1, what="live")
        mariadb.sql(f"INSERT INTO {schema}.t VALUES (5, 'live')")
        ((live_id, _, live),) = await back.events(1)
        assert live_id == first_id + 6 and live["data"] == {"n": 5, "v": "live"}

        status, body = await http_get(daemon, "/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        # 1 + 5 replayed + 1 live, all to SSE; the daemon published at least those
        assert samples[("tidings_deliveries_total", (("protocol", "sse"),))] == 7
        assert samples[("tidings_events_published_total", ())] >= 7
        assert samples[("tidings_connections", (("protocol", "sse"),))] == 1
        assert samples[("tidings_connections_opened_total", (("protocol", "sse"),))] == 2
        assert samples[("tidings_binlog_connected", ())] == 1
        assert samples[("tidings_binlog_lag_seconds", ())] < 10
        back.close()
    finally:
        await stop_daemon(daemon)
