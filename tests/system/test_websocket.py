"""WebSocket with a real MariaDB: rows inserted reach a `websockets` client as event JSON.

The daemon runs in-process; until the HTTP listener is wired into it, the WebSocket
side is the test-only listener of tests/wire/test_websocket_session.py, calling
`ws_session.accept` on the daemon's hub exactly as tidings.wire.http_server does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.system.daemons import start_daemon, stop_daemon, subscriber
from tests.wire.test_websocket_session import Listener, RawClient
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB
from tidings.wire import websocket as ws
from tidings.wire.ws_session import WsService, WsSettings

_dbs = itertools.count(1)
TIMEOUT = 20


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"wsys{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v TEXT)")
    return name


class Running:
    def __init__(self, daemon: Daemon, service: WsService, server: asyncio.Server) -> None:
        self.daemon = daemon
        self.service = service
        self.server = server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def running(mariadb: PrivateMariaDB, replica_server_id: int) -> AsyncIterator[Running]:
    daemon = await start_daemon(mariadb, replica_server_id)
    service = WsService(daemon.hub, WsSettings())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Listener(daemon.hub, service), "127.0.0.1", 0)
    try:
        yield Running(daemon, service, server)
    finally:
        service.close_clients()
        server.close()
        await stop_daemon(daemon)


async def request(client: ClientConnection, **message: Any) -> Any:
    await client.send(orjson.dumps(message).decode())
    return orjson.loads(await asyncio.wait_for(client.recv(), TIMEOUT))


async def next_event(client: ClientConnection) -> tuple[str, Any]:
    text = await asyncio.wait_for(client.recv(), TIMEOUT)
    assert isinstance(text, str)
    return text, orjson.loads(text)


async def test_an_insert_reaches_a_websocket_client_as_the_same_json_as_on_resp(
    mariadb: PrivateMariaDB, running: Running, schema: str
) -> None:
    channel = f"{schema}.t"
    resp = await subscriber(running.daemon, channel)
    async with connect(running.url) as client:
        assert await request(client, op="subscribe", channel=channel) == {
            "op": "subscribed",
            "channel": channel,
        }
        mariadb.sql(f"INSERT INTO {channel} VALUES (1, 'héllo')")
        text, event = await next_event(client)
        assert event["type"] == "insert" and event["channel"] == channel
        assert event["data"] == {"n": 1, "v": "héllo"}
        message = None
        while message is None or message["type"] != "message":
            message = await resp.get_message(timeout=TIMEOUT)
        assert message["data"] == text.encode()  # byte for byte RESP's payload
    await resp.aclose()  # type: ignore[no-untyped-call]


async def test_resume_with_since_then_live(
    mariadb: PrivateMariaDB, running: Running, schema: str
) -> None:
    channel = f"{schema}.t"
    async with connect(running.url) as first:
        await request(first, op="subscribe", channel=channel)
        mariadb.sql(f"INSERT INTO {channel} VALUES (1, 'a'); INSERT INTO {channel} VALUES (2, 'b')")
        ids = [(await next_event(first))[1]["id"] for _ in range(2)]
    mariadb.sql(f"INSERT INTO {channel} VALUES (3, 'c')")  # while nobody listens
    async with connect(running.url) as again:
        reply = await request(again, op="subscribe", channel=channel, since=ids[0])
        assert reply == {"op": "subscribed", "channel": channel}
        replayed = [(await next_event(again))[1] for _ in range(2)]
        assert [e["data"]["n"] for e in replayed] == [2, 3]
        assert replayed[0]["id"] == ids[1]
        mariadb.sql(f"INSERT INTO {channel} VALUES (4, 'd')")
        live = (await next_event(again))[1]
        assert live["data"]["n"] == 4 and live["id"] > replayed[1]["id"]


async def test_bad_frames_get_their_close_codes_while_another_client_keeps_receiving(
    mariadb: PrivateMariaDB, running: Running, schema: str
) -> None:
    channel = f"{schema}.t"
    async with connect(running.url) as good:
        await request(good, op="subscribe", channel=channel)
        cases = [
            (ws.encode_frame(ws.OP_TEXT, b'{"op":"ping"}'), 1002),  # no mask
            (ws.mask_frame(0xB, b"", b"abcd"), 1002),  # bad opcode
            (ws.mask_frame(ws.OP_BINARY, b"x" * 70000, b"abcd"), 1009),  # over 64 KiB
            (ws.mask_frame(ws.OP_TEXT, b"\xff", b"abcd"), 1007),
        ]
        for n, (frame, code) in enumerate(cases, 1):
            bad = await RawClient.connect(running.port)
            bad.send_json(op="subscribe", channel=channel)
            assert (await bad.json())["op"] == "subscribed"
            bad.writer.write(frame)
            assert (await bad.until_close()).code == code
            bad.writer.close()
            mariadb.sql(f"INSERT INTO {channel} VALUES ({n}, 'still here')")
            event = (await next_event(good))[1]
            assert event["data"] == {"n": n, "v": "still here"}
        assert running.service.stats.protocol_errors == len(cases)
