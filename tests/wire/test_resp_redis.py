"""Differential tests: the same bytes sent to a real redis-server 7 and to tidings.

Each case opens one connection to each server, sends the same request bytes
(followed by QUIT), reads until the server closes, and compares the replies byte
for byte. Known, deliberate differences are normalised first and listed in
`normalise`. Our server runs on its own event loop in a thread, so both servers
are driven by the same blocking client code.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.hub import Hub
from tidings.sandbox import free_port
from tidings.wire.resp import encode_command as c
from tidings.wire.resp_server import RespService, RespSettings

# each case twice: the server's parser with its C fast path and without (conftest.py)
pytestmark = pytest.mark.usefixtures("resp_parser_kind")

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server (never the system one) for this module."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    assert Path(binary).exists(), "redis-server is missing: run scripts/bootstrap"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # ready once it answers PING
            assert proc.poll() is None, "redis-server exited"
            try:
                if exchange(port, b"PING\r\n") == b"+PONG\r\n+OK\r\n":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.fixture(scope="module")
def tidings_port() -> Iterator[int]:
    """Our server, with PUBLISH allowed, on an event loop of its own in a thread."""
    loop = asyncio.new_event_loop()
    started: list[int] = []
    ready = threading.Event()
    service_box: list[RespService] = []

    async def start() -> None:
        service = RespService(Hub(), RespSettings(allow_publish=True))
        server = await service.start("127.0.0.1", 0)
        service_box.append(service)
        started.append(server.sockets[0].getsockname()[1])
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
    assert ready.wait(TIMEOUT)
    yield started[0]
    asyncio.run_coroutine_threadsafe(service_box[0].close(), loop).result(TIMEOUT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` then QUIT; return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data + b"QUIT\r\n")
        out = bytearray()
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return bytes(out)


# -- a small independent RESP reply reader, for normalising --------------------------------------
Frame = tuple[bytes, object]  # (type byte, value)


def read_frames(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        frame, pos = _read(data, pos)
        frames.append(frame)
    return frames


def _read(data: bytes, pos: int) -> tuple[Frame, int]:
    end = data.index(b"\r\n", pos)
    kind, head = data[pos : pos + 1], data[pos + 1 : end]
    pos = end + 2
    if kind in b"$=" and head != b"-1":
        size = int(head)
        return (kind, data[pos : pos + size]), pos + size + 2
    if kind in b"*>~%" and head != b"-1":
        items = []
        for _ in range(int(head) * (2 if kind == b"%" else 1)):
            item, pos = _read(data, pos)
            items.append(item)
        return (kind, items), pos
    return (kind, head), pos


HELLO_HEAD = [(b"$", b"server"), (b"$", b"redis")]


def normalise(data: bytes) -> list[Frame]:
    """Replies with the deliberate differences taken out.

    * HELLO: `id` and `version` (redis reports its own release; we report 7.0.0).
    * UNSUBSCRIBE / PUNSUBSCRIBE without arguments: redis walks a hash table, we walk
      subscriptions in the order they were made. Within a run of such confirmations
      the names are sorted; the counts stay where they are.
    * PUBSUB CHANNELS: the same set, in hash order there; sorted here.
    """
    frames = read_frames(data)
    for kind, value in frames:
        if kind in b"%*" and isinstance(value, list) and value[:2] == HELLO_HEAD:
            for i in range(0, len(value) - 1, 2):
                if value[i][1] in (b"id", b"version"):
                    value[i + 1] = (b"?", b"")
    out: list[Frame] = []
    run: list[int] = []

    def flush_run() -> None:
        names = sorted(_items(out[i])[1] for i in run)
        for i, name in zip(run, names, strict=True):
            items = list(_items(out[i]))
            items[1] = name
            out[i] = (out[i][0], items)
        run.clear()

    for frame in frames:
        items = _items(frame)
        kind_name = items[0][1] if len(items) == 3 else None
        if kind_name in (b"unsubscribe", b"punsubscribe") and (
            not run or _items(out[run[-1]])[0][1] == kind_name
        ):
            run.append(len(out))
        elif run:
            flush_run()
            if kind_name in (b"unsubscribe", b"punsubscribe"):
                run.append(len(out))
        out.append(frame)
    if run:
        flush_run()
    return out


def _items(frame: Frame) -> list[Frame]:
    kind, value = frame
    return value if kind in b"*>" and isinstance(value, list) else []  # type: ignore[return-value]


def assert_same(redis_port: int, tidings_port: int, data: bytes) -> None:
    theirs = exchange(redis_port, data)
    ours = exchange(tidings_port, data)
    if theirs != ours:
        assert normalise(ours) == normalise(theirs), (theirs, ours)


# -- scripted cases ---------------------------------------------------------------------------
CASES = {
    "ping": c("PING") + c("PING", "x") + c("PING", "a", "b") + b"PING\r\nPING  hi  \r\n",
    "subscribed-mode": c("SUBSCRIBE", "a", "b")
    + c("PING")
    + c("PING", "hi")
    + c("GET", "x")
    + c("FOO", "bar")
    + c("ECHO", "x")
    + c("PUBLISH", "a", "m")
    + c("SELECT", "0")
    + c("CLIENT", "SETNAME", "x")
    + c("CLIENT", "ID")
    + c("HELLO", "3")
    + c("PUBSUB", "NUMPAT")
    + c("UNSUBSCRIBE", "b")
    + c("UNSUBSCRIBE"),
    "unsubscribe-when-idle": c("UNSUBSCRIBE") + c("PUNSUBSCRIBE") + c("UNSUBSCRIBE", "x", "y"),
    "patterns": c("PSUBSCRIBE", "a*", "b?")
    + c("UNSUBSCRIBE")
    + c("PSUBSCRIBE", "a*")
    + c("PUNSUBSCRIBE", "zz")
    + c("PUNSUBSCRIBE"),
    "arity": c("SUBSCRIBE")
    + c("PSUBSCRIBE")
    + c("ECHO")
    + c("SELECT")
    + c("PUBLISH", "a")
    + c("RESET", "x")
    + c("CLIENT")
    + c("PUBSUB")
    + c("CLIENT", "SETNAME")
    + c("CLIENT", "GETNAME", "x")
    + c("PUBSUB", "NUMPAT", "x"),
    "unknown": c("FOO")
    + c("FOO", "a", "b")
    + c("foo", "a" * 200, "b")
    + c("foo", "a\r\nb")
    + c("CLIENT", "FOO")
    + c("PUBSUB", "FOO")
    + c("PUBSUB", "CHANNELS", "a", "b")
    + c("COMMAND", "FOO"),
    "select-echo": c("SELECT", "0")
    + c("SELECT", "15")
    + c("SELECT", "16")
    + c("SELECT", "-1")
    + c("SELECT", "x")
    + c("SELECT", "99999999999999999999")
    + c("ECHO", bytes(range(256))),
    "client": c("CLIENT", "GETNAME")
    + c("CLIENT", "SETNAME", "a b")
    + c("CLIENT", "SETNAME", "ab")
    + c("CLIENT", "GETNAME")
    + c("CLIENT", "SETNAME", "")
    + c("CLIENT", "GETNAME"),
    "hello": c("HELLO")
    + c("HELLO", "2")
    + c("HELLO", "4")
    + c("HELLO", "1")
    + c("HELLO", "x")
    + c("HELLO", "3", "FOO")
    + c("HELLO", "3", "SETNAME")
    + c("HELLO", "2", "SETNAME", "a b")
    + c("HELLO", "3", "SETNAME", "me")
    + c("CLIENT", "GETNAME")
    + c("PING")
    + c("UNSUBSCRIBE"),
    "resp3-pubsub": c("HELLO", "3")
    + c("SUBSCRIBE", "a")
    + c("PSUBSCRIBE", "a*")
    + c("PUBLISH", "a", "hello")
    + c("PING")
    + c("PING", "x")
    + c("ECHO", "x")
    + c("PUBSUB", "NUMSUB", "a", "b")
    + c("PUBSUB", "CHANNELS")
    + c("PUBSUB", "CHANNELS", "a*")
    + c("PUBSUB", "CHANNELS", "z*")
    + c("PUBSUB", "NUMPAT")
    + c("UNSUBSCRIBE")
    + c("UNSUBSCRIBE")
    + c("PUNSUBSCRIBE")
    + c("CLIENT", "GETNAME"),
    "reset": c("HELLO", "3")
    + c("SUBSCRIBE", "a")
    + c("CLIENT", "SETNAME", "n")
    + c("RESET")
    + c("CLIENT", "GETNAME")
    + c("PING")
    + c("PUBSUB", "NUMSUB", "a"),
    "publish": c("PUBLISH", "nobody", "x")
    + c("pUbLiSh", "nobody", "y")  # the server's PUBLISH fast path, any case
    + c("PUBLISH", "nobody", "x", "z")
    + c("PUBSUB", "NUMSUB")
    + c("PUBSUB", "CHANNELS"),
    "quit-with-args": c("QUIT", "x") + c("PING"),
    "auth": c("AUTH", "x") + c("AUTH", "a", "b", "c"),
    "inline": b'ECHO "a\\x41b\\n"\r\n'
    + b"ECHO 'a\\'b'\r\n"
    + b"\r\n\r\nPING\n"
    + b"SUBSCRIBE x y\r\n"
    + b"UNSUBSCRIBE\r\n",
    "empty-multibulk": b"*0\r\n*-1\r\n" + c("PING"),
    "crlf-unchecked": b"*1\r\n$4\r\nPINGxx",
    "proto-mbulk": b"*x\r\n",
    "proto-mbulk-zero": b"*01\r\n$4\r\nPING\r\n",
    "proto-mbulk-plus": b"*+1\r\n$4\r\nPING\r\n",
    "proto-mbulk-huge": b"*3000000000\r\n",
    "proto-dollar": b"*1\r\n+PING\r\n",
    "proto-dollar-newline": b"*1\r\n\n\r\n",
    "proto-bulk-negative": b"*1\r\n$-1\r\n",
    "proto-bulk-x": b"*1\r\n$x\r\n",
    "proto-bulk-zero": b"*2\r\n$4\r\nECHO\r\n$03\r\nabc\r\n",
    "proto-after-commands": c("PING") + c("SUBSCRIBE", "a") + b"*1\r\n$x\r\n",
    "proto-quotes": b'ECHO "abc\r\n',
    "proto-quotes-after": b'ECHO "abc"x\r\n',
    "proto-inline-too-big": b"GET " + b"x" * (200 * 1024),
    "http": b"POST / HTTP/1.1\r\n",
    "http-host": b"Host: example.com\r\n",
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_bytes_as_redis(redis_port: int, tidings_port: int, name: str) -> None:
    assert_same(redis_port, tidings_port, CASES[name])


def test_normalise_is_not_a_blank_cheque() -> None:
    # reordered names compare equal; reordered counts do not
    frames = normalise(
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
    )
    assert frames == normalise(
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"
    )
    assert frames != normalise(
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n"
    )


# -- random command sequences -----------------------------------------------------------------
names = st.sampled_from([b"a", b"b", b"a*", b"?", b"[ab]", b"caf\xc3\xa9", b"\xff"])
# a '?' in a channel name starts a row filter (a deliberate difference): patterns only
channels = st.sampled_from([b"a", b"b", b"a*", b"[ab]", b"caf\xc3\xa9", b"\xff"])
commands = st.one_of(
    st.builds(lambda n: c(b"SUBSCRIBE", *n), st.lists(channels, min_size=1, max_size=3)),
    st.builds(lambda n: c(b"UNSUBSCRIBE", *n), st.lists(channels, max_size=2)),
    st.builds(lambda n: c(b"PSUBSCRIBE", *n), st.lists(names, min_size=1, max_size=3)),
    st.builds(lambda n: c(b"PUNSUBSCRIBE", *n), st.lists(names, max_size=2)),
    st.builds(lambda n, m: c(b"PUBLISH", n, m), channels, st.binary(max_size=8)),
    st.builds(lambda a: c(b"PING", *a), st.lists(st.binary(max_size=5), max_size=2)),
    st.sampled_from(
        [
            c("ECHO", "x"),
            c("NOPE"),
            c("HELLO", "3"),
            c("HELLO", "2"),
            c("HELLO"),
            c("RESET"),
            c("SELECT", "0"),
            c("CLIENT", "GETNAME"),
            c("CLIENT", "SETNAME", "x"),
            c("PUBSUB", "NUMSUB", "a", "b"),
            c("PUBSUB", "NUMPAT"),
            c("PUBSUB", "CHANNELS"),
            c("subscribe", "a"),
            b"PING\r\n",
            b"SUBSCRIBE b a\r\n",
            b"*0\r\n",
        ]
    ),
)
tails = st.sampled_from([b"", b"", b"", b"*x\r\n", b"*1\r\n+X\r\n", b"*1\r\n$-5\r\n", b'"q\r\n'])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(script=st.lists(commands, min_size=1, max_size=12), tail=tails)
def test_random_sessions_match_redis(
    redis_port: int, tidings_port: int, script: list[bytes], tail: bytes
) -> None:
    assert_same(redis_port, tidings_port, b"".join(script) + tail)
