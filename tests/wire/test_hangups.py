"""Clients that vanish (reset, broken pipe) are counted and summarised once a minute, not
logged one info line each; protocol errors still get their own line. Real sockets."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct

import pytest
import uvloop

from tidings.hub import Hub
from tidings.wire.hangups import Hangups, ordinary
from tidings.wire.http_server import HttpService, HttpSettings
from tidings.wire.resp import encode_command
from tidings.wire.resp_server import RespService
from tidings.wire.ws_session import WsService

TIMEOUT = 10
SUMMARY = re.compile(r"(\w+): (\d+) client connection\(s\) ended by the peer")


def test_ordinary_ends_are_resets_and_broken_pipes_only() -> None:
    assert ordinary(ConnectionResetError(104, "reset"))
    assert ordinary(BrokenPipeError(32, "pipe"))
    assert ordinary(TimeoutError(110, "timed out"))
    assert not ordinary(None)
    assert not ordinary(OSError(5, "I/O error"))
    assert not ordinary(ValueError("bad"))


def test_one_summary_a_minute_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tidings.test.hangups")
    hangups = Hangups(logger, "RESP")
    caplog.set_level(logging.DEBUG, logger.name)
    for t in (100.0, 101.0, 130.0):
        hangups.count(f"client {t}", ConnectionResetError(104, "reset"), t)
    hangups.tick(159.9)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 3
    hangups.tick(160.0)
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert summaries == [
        "RESP: 3 client connection(s) ended by the peer without a goodbye (reset, broken "
        "pipe) in the last 60 s; each is logged at debug"
    ]
    hangups.tick(500.0)  # nothing pending: nothing said
    hangups.count("late", BrokenPipeError(32, "pipe"), 600.0)
    hangups.tick(659.0)
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    hangups.tick(660.0)
    assert SUMMARY.findall(caplog.records[-1].getMessage()) == [("RESP", "1")]
    assert hangups.total == 4


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def read_until(sock: socket.socket, marker: bytes) -> None:
    loop = asyncio.get_running_loop()
    data = b""
    while marker not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert chunk, data
        data += chunk


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def wait_until(predicate: object) -> None:
    for _ in range(TIMEOUT * 100):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("loop", LOOPS)
def test_resp_resets_are_debug_lines_and_one_summary(
    caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(resp_resets(caplog))


async def resp_resets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "tidings")
    service = RespService(Hub())
    service.hangups.interval = 0.5  # the minute, shortened; the sweep runs once a second
    server = await service.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        socks = [await connect(port) for _ in range(30)]
        for sock in socks:
            sock.send(encode_command(b"SUBSCRIBE", b"db.t"))
            await read_until(sock, b"subscribe")
        for sock in socks:
            reset(sock)
        await wait_until(lambda: not service.connections)
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert sum("connection lost: ConnectionResetError" in line for line in debug) == 30
        assert info_lines(caplog) == []  # not 30 info lines
        assert service.hangups.total == 30

        await wait_until(lambda: info_lines(caplog))  # the next sweep reports them
        [summary] = info_lines(caplog)
        assert SUMMARY.findall(summary) == [("RESP", "30")]

        # a protocol error is not an ordinary end: its own info line, as before
        bad = await connect(port)
        bad.send(b"*1\r\n$x\r\n")
        await read_until(bad, b"-ERR")
        bad.close()
        await wait_until(lambda: len(info_lines(caplog)) == 2)
        assert info_lines(caplog)[1].endswith(": Protocol error: invalid bulk length; closing")
    finally:
        await service.close()


WS_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize("loop", LOOPS)
def test_sse_and_websocket_resets_are_counted_not_logged(
    caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(http_resets(caplog))


async def http_resets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "tidings")
    hub = Hub()
    service = HttpService(hub, HttpSettings(sse_heartbeat=0))
    service.websocket = ws = WsService(hub)
    service.hangups.interval = ws.hangups.interval = 0.5
    server = await service.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        streams = [await connect(port) for _ in range(5)]
        for sock in streams:
            sock.send(b"GET /sse?channel=db.t HTTP/1.1\r\nHost: t\r\n\r\n")
            await read_until(sock, b"\r\n\r\n")
        sessions = [await connect(port) for _ in range(4)]
        for sock in sessions:
            sock.send(WS_UPGRADE)
            await read_until(sock, b"\r\n\r\n")
        await wait_until(lambda: len(ws.connections) == 4)
        for sock in streams + sessions:
            reset(sock)
        await wait_until(lambda: not service.connections and not ws.connections)
        assert (service.hangups.total, ws.hangups.total) == (5, 4)
        assert info_lines(caplog) == []
        await wait_until(lambda: len(info_lines(caplog)) == 2)
        found = sorted(SUMMARY.findall(line)[0] for line in info_lines(caplog))
        assert found == [("HTTP", "5"), ("WebSocket", "4")]
    finally:
        await service.close()
