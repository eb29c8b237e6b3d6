"""A closed connection is freed by reference counting, with the cyclic GC off.

With 19,000 live connections every full collection walks all of them, so closed
ones must not wait for it (docs/reliability-soak.md, "For the lead"). Each test
opens real sockets to a real listener (RESP, WebSocket, SSE; asyncio's loop and
uvloop, which the daemon uses), subscribes, ends the connection the way clients
do (FIN, RST, cut off as a slow consumer, in the middle of a resume), and then,
with `gc.disable()` since before the connection existed, looks for any server-side
connection object left: `gc.get_objects()` lists every container object still
allocated, reachable or not, so a cycle that only the collector could free shows
up there. On uvloop a collection must then find nothing at all to free.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from tidings.hub import Hub
from tidings.wire.http_server import HttpConnection, HttpService, HttpSettings
from tidings.wire.outbox import Outbox
from tidings.wire.replay_queue import ReplayQueue
from tidings.wire.resp import encode_command
from tidings.wire.resp_server import RespConnection, RespService, RespSettings
from tidings.wire.ws_session import WsConnection, WsService

TIMEOUT = 10
#: the server-side objects of one connection; none may outlive it
CONNECTION_TYPES = (RespConnection, HttpConnection, WsConnection, Outbox, ReplayQueue)
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def leftovers() -> list[str]:
    return [repr(obj) for obj in gc.get_objects() if isinstance(obj, CONNECTION_TYPES)]


def run(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())
        assert not gc.isenabled()
        assert leftovers() == [], "freed only by the cyclic GC (or leaked)"


def garbage() -> list[str]:
    """What a collection would free now (DEBUG_SAVEALL keeps it in gc.garbage to look at)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = [type(obj).__qualname__ for obj in gc.garbage]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return found


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def end(sock: socket.socket, how: str) -> None:
    if how == "rst":  # SO_LINGER 0: close() sends RST and drops unread data
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def read_some(sock: socket.socket, until: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while until not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert chunk, f"closed before {until!r}: {data!r}"
        data += chunk
    return data


async def gone(connections: dict[Any, None]) -> None:
    """Wait until the service has forgotten every connection, then a few more loop turns
    (for the transport's own connection_lost callbacks)."""
    for _ in range(TIMEOUT * 100):
        if not connections:
            break
        await asyncio.sleep(0.01)
    assert not connections
    for _ in range(5):
        await asyncio.sleep(0)
    if isinstance(asyncio.get_running_loop(), uvloop.Loop):
        # the daemon's loop: nothing at all is left for the collector (asyncio's own socket
        # transport keeps a bound method of itself, a cycle of the standard library's)
        assert garbage() == []


async def resp_service(**settings: Any) -> tuple[Hub, RespService, int]:
    hub = Hub()
    service = RespService(hub, RespSettings(**settings))
    server = await service.start("127.0.0.1", 0)
    return hub, service, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize(
    "command",
    [
        (b"SUBSCRIBE", b"db.t"),
        (b"PSUBSCRIBE", b"db.*"),
        (b"TIDINGS.SUBSCRIBE", b"0", b"db.t"),
    ],
)
def test_resp_connection_freed_after_the_client_leaves(
    no_gc: None, loop: str, how: str, command: tuple[bytes, ...]
) -> None:
    async def scenario() -> None:
        hub, service, port = await resp_service()
        hub.publish("db.t", b'{"n":0}')
        sock = await connect(port)
        sock.send(encode_command(*command))
        await read_some(sock, b"subscribe")
        hub.publish("db.t", b'{"n":1}')
        await read_some(sock, b'{"n":1}')
        end(sock, how)
        await gone(service.connections)
        await service.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_resp_connection_freed_when_cut_off_as_a_slow_consumer(no_gc: None, loop: str) -> None:
    async def scenario() -> None:
        hub, service, port = await resp_service(output_limit=64 * 1024)
        sock = await connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.send(encode_command(b"SUBSCRIBE", b"db.t"))
        await read_some(sock, b"db.t")
        body = b'{"pad":"' + b"x" * 8000 + b'"}'
        for _ in range(2000):  # far more than the limit and the socket buffers
            hub.publish("db.t", body)
            if not service.connections:
                break
            await asyncio.sleep(0)
        assert service.slow_consumers_cut == 1
        end(sock, "rst")
        await gone(service.connections)
        await service.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_resp_connection_freed_when_reset_in_the_middle_of_a_resume(no_gc: None, loop: str) -> None:
    async def scenario() -> None:
        hub, service, port = await resp_service(output_limit=64 * 1024)
        first = hub.publish("db.t", b'{"n":0}')
        for n in range(1, 3000):  # a replay of ~3 MB: paced by the limit, still running
            hub.publish("db.t", b'{"n":%d,"pad":"%b"}' % (n, b"y" * 1000))
        sock = await connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.send(encode_command(b"TIDINGS.SUBSCRIBE", str(first).encode(), b"db.t"))
        await read_some(sock, b'{"n":1,')
        (conn,) = service.connections
        assert conn._replays, "the replay should still be running"
        del conn
        end(sock, "rst")
        await gone(service.connections)
        await service.close()

    run(loop, scenario)


async def http_service() -> tuple[Hub, HttpService, int]:
    hub = Hub()
    service = HttpService(hub, HttpSettings(sse_heartbeat=0))
    service.websocket = WsService(hub)  # as the daemon does
    server = await service.start("127.0.0.1", 0)
    return hub, service, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_sse_stream_freed_after_the_client_leaves(no_gc: None, loop: str, how: str) -> None:
    async def scenario() -> None:
        hub, service, port = await http_service()
        sock = await connect(port)
        sock.send(b"GET /sse?channel=db.t HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_some(sock, b"\r\n\r\n")
        hub.publish_record("db.t", {"type": "insert", "data": {"n": 1}})
        await read_some(sock, b'"n":1')
        end(sock, how)
        await gone(service.connections)
        await service.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_plain_http_connection_freed(no_gc: None, loop: str) -> None:
    async def scenario() -> None:
        _, service, port = await http_service()
        sock = await connect(port)
        sock.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_some(sock, b"\r\n\r\n")
        end(sock, "fin")
        await gone(service.connections)
        await service.close()

    run(loop, scenario)


WS_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked_text(payload: bytes) -> bytes:
    """A client's text frame (clients must mask; a zero mask keeps the payload readable)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_websocket_freed_after_the_client_leaves(no_gc: None, loop: str, how: str) -> None:
    async def scenario() -> None:
        hub, service, port = await http_service()
        sock = await connect(port)
        sock.send(WS_UPGRADE)
        await read_some(sock, b"\r\n\r\n")
        sock.send(masked_text(b'{"op":"subscribe","channel":"db.t"}'))
        await read_some(sock, b"subscribed")
        hub.publish_record("db.t", {"type": "insert", "data": {"n": 1}})
        await read_some(sock, b'"n":1')
        end(sock, how)
        assert service.websocket is not None
        await gone(service.websocket.connections)
        await gone(service.connections)
        await service.close()

    run(loop, scenario)
