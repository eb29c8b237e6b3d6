"""Tokens against a real daemon and MariaDB, on every protocol: a client with no token, a
token signed with another secret, an expired token or a token for another channel
receives nothing of a row that a client with a good token does receive; a token that
expires on a live connection cuts it; admin routes on a non-loopback listener need an
admin token; `tidings token` mints what the daemon accepts.

Silence is asserted for a bounded time *after* a control client with a good token has
received the same row, so it is not just the row being late.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.system.daemons import receive, start_daemon, stop_daemon, wait_for
from tests.wire.test_resp_server import Client, confirm
from tidings.auth import LEEWAY, mint
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB

SECRET = "system-auth-test-secret-0123456789abcdef"
KEY = SECRET.encode()
FOREIGN = b"another-daemon's-secret-0123456789abcdef"
TIMEOUT = 20
#: how long a refused client is watched for anything arriving, after the control got the row
SILENCE = 1.0
NOAUTH = b"-NOAUTH Authentication required.\r\n"

_dbs = itertools.count(1)


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"auth{next(_dbs)}"
    mariadb.sql(
        f"CREATE DATABASE {name}; "
        f"CREATE TABLE {name}.t (n INT PRIMARY KEY, customer_id INT, v TEXT)"
    )
    return name


async def started(mariadb: PrivateMariaDB, server_id: int, **settings: Any) -> Daemon:
    daemon = await start_daemon(mariadb, server_id, auth_secret=SECRET, **settings)
    await wait_for(lambda: daemon.http_address is not None, what="the HTTP listener")
    return daemon


@pytest.fixture
async def daemon(mariadb: PrivateMariaDB, replica_server_id: int) -> AsyncIterator[Daemon]:
    running = await started(mariadb, replica_server_id, http="127.0.0.1:0")
    yield running
    await stop_daemon(running)


class Tokens:
    """One of each kind, for `channel`."""

    def __init__(self, channel: str) -> None:
        self.good = mint(KEY, [channel], 600, "good")
        self.foreign = mint(FOREIGN, [channel], 600)
        self.expired = mint(KEY, [channel], -(LEEWAY + 30))
        self.other = mint(KEY, ["elsewhere.t", "elsewhere.*"], 600)
        self.customer42 = mint(KEY, [f"{channel}?customer_id=eq.42"], 600)


def insert(mariadb: PrivateMariaDB, schema: str, n: int, customer: int) -> None:
    mariadb.sql(f"INSERT INTO {schema}.t VALUES ({n}, {customer}, 'row {n}')")


async def redis_subscriber(daemon: Daemon, token: str, channel: str) -> aioredis.client.PubSub:
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    # no retries: redis-py retries a refused AUTH (an AuthenticationError) by default
    client = aioredis.Redis(host=host, port=port, password=token, retry=Retry(NoBackoff(), 0))
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    confirmation = await pubsub.get_message(timeout=5)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


async def resp_client(daemon: Daemon) -> Client:
    assert daemon.resp_address is not None
    return await Client.connect(daemon.resp_address[1])


async def line(c: Client) -> bytes:
    return await asyncio.wait_for(c.reader.readline(), TIMEOUT)


async def resp_silent(c: Client) -> None:
    try:
        data = await asyncio.wait_for(c.reader.read(1), SILENCE)
    except TimeoutError:
        return
    raise AssertionError(f"a refused RESP client received {data!r}")


# -- RESP ----------------------------------------------------------------------------------------
async def test_resp_refused_clients_receive_nothing(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    channel = f"{schema}.t"
    tokens = Tokens(channel)
    control = await redis_subscriber(daemon, tokens.good, channel)

    no_token = await resp_client(daemon)
    await no_token.call("SUBSCRIBE", channel, reply=NOAUTH)
    await no_token.call("PSUBSCRIBE", "*", reply=NOAUTH)
    await no_token.call("TIDINGS.SUBSCRIBE", "0", channel, reply=NOAUTH)

    foreign = await resp_client(daemon)
    foreign.send("AUTH", tokens.foreign)
    assert (await line(foreign)) == (
        b"-WRONGPASS invalid token: bad signature: the token was not made with this "
        b"server's secret\r\n"
    )
    await foreign.call("SUBSCRIBE", channel, reply=NOAUTH)

    expired = await resp_client(daemon)
    expired.send("AUTH", "default", tokens.expired)
    assert (await line(expired)).startswith(b"-WRONGPASS invalid token: the token expired 3")
    await expired.call("SUBSCRIBE", channel, reply=NOAUTH)

    other = await resp_client(daemon)
    await other.call("AUTH", tokens.other, reply=b"+OK\r\n")
    refused = f"-NOPERM this token does not allow channel '{channel}'\r\n".encode()
    await other.call("SUBSCRIBE", channel, reply=refused)
    await other.call("TIDINGS.SUBSCRIBE", "0", channel, reply=refused)
    await other.call("SUBSCRIBE", f"{channel}?customer_id=eq.7", reply=refused.replace(
        channel.encode(), f"{channel}?customer_id=eq.7".encode()))  # fmt: skip
    await other.call(
        "PSUBSCRIBE", f"{schema}.*",
        reply=f"-NOPERM this token does not allow pattern '{schema}.*'\r\n".encode(),
    )  # fmt: skip

    narrow = await resp_client(daemon)  # a token for customer 42's rows only
    await narrow.call("AUTH", tokens.customer42, reply=b"+OK\r\n")
    await narrow.call("SUBSCRIBE", channel, reply=refused)
    filtered = f"{channel}?customer_id=eq.42"
    await narrow.call("SUBSCRIBE", filtered, reply=confirm(b"subscribe", filtered.encode(), 1))

    insert(mariadb, schema, 1, customer=7)
    [event] = await receive(control, 1)
    assert event["data"] == {"n": 1, "customer_id": 7, "v": "row 1"}
    await asyncio.gather(*(resp_silent(c) for c in (no_token, foreign, expired, other, narrow)))

    insert(mariadb, schema, 2, customer=42)  # the narrow token's row
    [event] = await receive(control, 1)
    head = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n" % (len(filtered), filtered.encode())
    assert await asyncio.wait_for(narrow.reader.readexactly(len(head)), TIMEOUT) == head
    body = await line(narrow)
    assert orjson.loads(await line(narrow)) == event and body.startswith(b"$")
    await asyncio.gather(*(resp_silent(c) for c in (no_token, foreign, expired, other)))
    for c in (no_token, foreign, expired, other, narrow):
        c.close()
    await control.aclose()


async def test_redis_cli_with_a_token(mariadb: PrivateMariaDB, schema: str, daemon: Daemon) -> None:
    channel = f"{schema}.t"
    tokens = Tokens(channel)
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    base = ["redis-cli", "-h", host, "-p", str(port), "--no-auth-warning"]
    good = await asyncio.create_subprocess_exec(
        *base, "-a", tokens.good, "SUBSCRIBE", channel, stdout=asyncio.subprocess.PIPE
    )
    foreign = await asyncio.create_subprocess_exec(
        *base, "-a", tokens.foreign, "SUBSCRIBE", channel,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert good.stdout is not None and foreign.stdout is not None
    try:
        lines = [await asyncio.wait_for(good.stdout.readline(), TIMEOUT) for _ in range(3)]
        assert [x.strip() for x in lines] == [b"subscribe", channel.encode(), b"1"]
        refused = (await asyncio.wait_for(foreign.stdout.read(), TIMEOUT)).decode()
        assert "WRONGPASS invalid token: bad signature" in refused, refused
        assert "NOAUTH Authentication required." in refused, refused
        insert(mariadb, schema, 1, customer=7)
        lines = [await asyncio.wait_for(good.stdout.readline(), TIMEOUT) for _ in range(3)]
        assert lines[0].strip() == b"message"
        assert json.loads(lines[2])["data"]["n"] == 1
        assert "row 1" not in refused
    finally:
        for proc in (good, foreign):
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


# -- WebSocket -----------------------------------------------------------------------------------
def ws_url(daemon: Daemon, token: str | None = None) -> str:
    assert daemon.http_address is not None
    host, port = daemon.http_address
    return f"ws://{host}:{port}/ws" + (f"?token={token}" if token else "")


async def ws_request(client: ClientConnection, **message: Any) -> Any:
    await client.send(orjson.dumps(message).decode())
    return orjson.loads(await asyncio.wait_for(client.recv(), TIMEOUT))


async def ws_silent(client: ClientConnection) -> None:
    try:
        message = await asyncio.wait_for(client.recv(), SILENCE)
    except TimeoutError:
        return
    raise AssertionError(f"a refused WebSocket client received {message!r}")


async def ws_closed(client: ClientConnection, code: int, reason: str) -> None:
    """The server closed `client` with `code` and a reason starting with `reason`, sending
    nothing else first."""
    with pytest.raises(ConnectionClosed) as info:
        message = await asyncio.wait_for(client.recv(), TIMEOUT)
        raise AssertionError(f"received {message!r} instead of a close")
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == code
    assert info.value.rcvd.reason.startswith(reason), info.value.rcvd.reason


async def test_websocket_refused_clients_receive_nothing(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    channel = f"{schema}.t"
    tokens = Tokens(channel)
    subscribe = {"op": "subscribe", "channel": channel}
    control = await connect(ws_url(daemon, tokens.good))
    assert await ws_request(control, **subscribe) == {"op": "subscribed", "channel": channel}
    by_header = await connect(
        ws_url(daemon), additional_headers={"Authorization": f"Bearer {tokens.good}"}
    )
    assert await ws_request(by_header, **subscribe) == {"op": "subscribed", "channel": channel}

    no_token = await connect(ws_url(daemon))
    reply = await ws_request(no_token, **subscribe)
    assert reply["op"] == "error" and reply["channel"] == channel
    assert reply["message"].startswith('authentication required: send {"op":"auth"')

    foreign = await connect(ws_url(daemon, tokens.foreign))  # refused in the URL: told, closed
    reply = orjson.loads(await asyncio.wait_for(foreign.recv(), TIMEOUT))
    assert reply == {
        "op": "error",
        "message": "invalid token: bad signature: the token was not made with this server's secret",
    }
    await ws_closed(foreign, 1008, "invalid token: bad signature")

    expired = await connect(ws_url(daemon))  # refused in an auth message: told, closed
    reply = await ws_request(expired, op="auth", token=tokens.expired)
    assert reply["message"].startswith("invalid token: the token expired 3")
    await ws_closed(expired, 1008, "invalid token: the token expired")

    other = await connect(ws_url(daemon))
    reply = await ws_request(other, op="auth", token=tokens.other)
    assert reply["op"] == "authenticated" and "sub" not in reply
    assert await ws_request(other, **subscribe) == {
        "op": "error",
        "message": f"this token does not allow channel '{channel}'",
        "channel": channel,
    }

    insert(mariadb, schema, 1, customer=7)
    for client in (control, by_header):
        event = orjson.loads(await asyncio.wait_for(client.recv(), TIMEOUT))
        assert event["data"] == {"n": 1, "customer_id": 7, "v": "row 1"}
    await asyncio.gather(ws_silent(no_token), ws_silent(other))
    for client in (control, by_header, no_token, other):
        await client.close()


# -- SSE -----------------------------------------------------------------------------------------
class Http:
    """One HTTP/1.1 connection: requests and responses, then (for a stream) raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, daemon: Daemon) -> Http:
        assert daemon.http_address is not None
        return cls(*await asyncio.open_connection(*daemon.http_address))

    async def request(
        self, target: str, headers: str = "", method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(f"{method} {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *lines = head.decode().split("\r\n")
        fields = {}
        for item in lines:
            if item:
                name, _, value = item.partition(":")
                fields[name.lower()] = value.strip()
        body = b""
        if "content-length" in fields:
            body = await self.reader.readexactly(int(fields["content-length"]))
        return int(status_line.split(" ")[1]), fields, body

    async def silent(self) -> None:
        try:
            data = await asyncio.wait_for(self.reader.read(1), SILENCE)
        except TimeoutError:
            return
        raise AssertionError(f"a refused HTTP client received {data!r}")

    async def block(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\n\n"), TIMEOUT)

    async def event(self) -> dict[str, Any]:
        """The next SSE block with data, as JSON."""
        while True:
            block = await self.block()
            for text in block.decode().split("\n"):
                if text.startswith("data: "):
                    return dict(orjson.loads(text[6:]))

    def close(self) -> None:
        self.writer.close()


async def test_sse_refused_clients_receive_nothing(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    channel = f"{schema}.t"
    tokens = Tokens(channel)
    target = f"/sse?channel={quote(channel)}"
    control = await Http.open(daemon)
    status, _, _ = await control.request(target, f"Authorization: Bearer {tokens.good}\r\n")
    assert status == 200
    by_query = await Http.open(daemon)
    assert (await by_query.request(f"{target}&token={tokens.good}"))[0] == 200

    refused: list[Http] = []

    async def refusal(target: str, headers: str = "") -> tuple[int, str, str]:
        client = await Http.open(daemon)
        refused.append(client)
        status, fields, body = await client.request(target, headers)
        return status, fields.get("www-authenticate", ""), orjson.loads(body)["error"]

    assert await refusal(target) == (
        401,
        'Bearer realm="tidings"',
        "a stream needs a token: send 'Authorization: Bearer <token>' or add ?token=<token>",
    )
    status, challenge, error = await refusal(target, f"Authorization: Bearer {tokens.foreign}\r\n")
    assert (status, error) == (
        401,
        "invalid token: bad signature: the token was not made with this server's secret",
    )
    assert challenge == (
        'Bearer realm="tidings", error="invalid_token", error_description="invalid token: '
        "bad signature: the token was not made with this server's secret\""
    )
    status, challenge, error = await refusal(f"{target}&token={tokens.expired}")
    assert status == 401 and error.startswith("invalid token: the token expired 3")
    status, challenge, error = await refusal(f"{target}&token={tokens.other}")
    assert (status, error) == (403, f"this token does not allow channel '{channel}'")
    assert challenge.endswith('error="insufficient_scope", error_description="this token does '
                              f"not allow channel '{channel}'\"")  # fmt: skip
    status, _, error = await refusal(f"/sse?pattern={schema}.*&token={tokens.good}")
    assert (status, error) == (403, f"this token does not allow pattern '{schema}.*'")
    status, _, error = await refusal(target, "Authorization: Basic dXNlcjpwdw==\r\n")
    assert (status, error) == (
        401,
        "invalid token: the Authorization header must be 'Bearer <token>'",
    )

    insert(mariadb, schema, 1, customer=7)
    for client in (control, by_query):
        assert (await client.event())["data"] == {"n": 1, "customer_id": 7, "v": "row 1"}
    # each refused connection is still open (keep-alive) and gets nothing
    await asyncio.gather(*(client.silent() for client in refused))
    for client in (control, by_query, *refused):
        client.close()


# -- expiry on live connections -----------------------------------------------------------------
async def test_a_token_expiring_on_a_live_connection_cuts_it_on_every_protocol(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon
) -> None:
    channel = f"{schema}.t"
    good = Tokens(channel).good
    short = mint(KEY, [channel], 2 - LEEWAY)  # accepted for 2 to 3 s more
    control = await redis_subscriber(daemon, good, channel)

    resp_cut, resp_kept = await resp_client(daemon), await resp_client(daemon)
    for c in (resp_cut, resp_kept):
        await c.call("AUTH", short, reply=b"+OK\r\n")
        await c.call("SUBSCRIBE", channel, reply=confirm(b"subscribe", channel.encode(), 1))
    await resp_kept.call("AUTH", good, reply=b"+OK\r\n")  # a fresh token in time: kept

    subscribe = {"op": "subscribe", "channel": channel}
    ws_cut = await connect(ws_url(daemon, short))
    ws_kept = await connect(ws_url(daemon, short))
    for client in (ws_cut, ws_kept):
        assert (await ws_request(client, **subscribe))["op"] == "subscribed"
    assert (await ws_request(ws_kept, op="auth", token=good))["op"] == "authenticated"

    sse_cut = await Http.open(daemon)
    assert (await sse_cut.request(f"/sse?channel={quote(channel)}&token={short}"))[0] == 200

    insert(mariadb, schema, 1, customer=7)  # before the expiry: everyone gets it
    [first] = await receive(control, 1)
    assert first["data"]["n"] == 1
    for c in (resp_cut, resp_kept):
        for _ in range(7):  # *3, $7, message, $len, channel, $len, then the JSON
            text = await line(c)
        assert orjson.loads(text) == first
    for client in (ws_cut, ws_kept):
        assert orjson.loads(await asyncio.wait_for(client.recv(), TIMEOUT)) == first
    assert await sse_cut.event() == first

    # the expiry: each is told why and closed, with nothing else sent
    assert await asyncio.wait_for(resp_cut.reader.read(), TIMEOUT) == (
        b"-NOAUTH the token expired: this connection is closed (AUTH with a fresh token "
        b"before the current one expires to keep a connection)\r\n"
    )
    assert orjson.loads(await asyncio.wait_for(ws_cut.recv(), TIMEOUT)) == {
        "op": "error",
        "message": "token expired",
    }
    await ws_closed(ws_cut, 1008, "token expired")
    rest = await asyncio.wait_for(sse_cut.reader.read(), TIMEOUT)  # to the end of the stream
    assert rest == (
        b": disconnected: the token expired (reconnect with a fresh token and Last-Event-ID "
        b"or since=)\n\n"
    )

    insert(mariadb, schema, 2, customer=7)  # after it: only the refreshed connections
    [second] = await receive(control, 1)
    for _ in range(7):
        text = await line(resp_kept)
    assert orjson.loads(text) == second
    assert orjson.loads(await asyncio.wait_for(ws_kept.recv(), TIMEOUT)) == second
    for c in (resp_cut, resp_kept):
        c.close()
    for client in (ws_cut, ws_kept):
        await client.close()
    sse_cut.close()
    await control.aclose()


# -- admin routes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bind", "open_on_loopback", "needs_token"),
    [
        ("0.0.0.0:0", True, True),  # every address: not loopback
        ("127.0.0.1:0", True, False),
        ("127.0.0.1:0", False, True),
    ],
)
async def test_admin_routes_need_an_admin_token_unless_loopback_only(
    mariadb: PrivateMariaDB,
    replica_server_id: int,
    bind: str,
    open_on_loopback: bool,
    needs_token: bool,
) -> None:
    daemon = await started(
        mariadb, replica_server_id, http=bind, admin_open_on_loopback=open_on_loopback
    )
    try:
        assert daemon.http is not None and daemon.http_address is not None
        assert daemon.http.admin_open is not needs_token
        daemon.http_address = ("127.0.0.1", daemon.http_address[1])  # connect over loopback
        admin = mint(KEY, [], 60, admin=True)
        user = mint(KEY, ["*"], 60)
        client = await Http.open(daemon)
        assert (await client.request("/healthz"))[0] == 200  # load balancers: never a token
        for path, method in (("/channels", "GET"), ("/metrics", "GET"), ("/publish", "POST")):
            status, fields, body = await client.request(path, method=method)
            if not needs_token:
                assert status in (200, 403), body  # 403: publishing is off, not a token
                assert b"admin token" not in body
                continue
            assert status == 401, body
            assert fields["www-authenticate"] == 'Bearer realm="tidings"'
            assert orjson.loads(body)["error"] == (
                f"{path} needs an admin token: send 'Authorization: Bearer <token>' or add "
                "?token=<token>"
            )
            status, fields, body = await client.request(
                path, f"Authorization: Bearer {user}\r\n", method
            )
            assert status == 403 and orjson.loads(body)["error"] == f"{path} needs an admin token"
            status, _, body = await client.request(
                path, f"Authorization: Bearer {admin}\r\n", method
            )
            if path == "/publish":  # admitted: then refused for being off (--allow-publish)
                assert (status, orjson.loads(body)["error"]) == (
                    403,
                    "publishing is disabled: start tidings with --allow-publish",
                )
            else:
                assert status == 200, body
            assert (await client.request(f"{path}?token={admin}", method=method))[0] == status
        client.close()
    finally:
        await stop_daemon(daemon)


# -- tidings token --------------------------------------------------------------------------------
async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_tidings_token_mints_what_the_daemon_accepts(
    mariadb: PrivateMariaDB, schema: str, daemon: Daemon, tmp_path: Path
) -> None:
    channel = f"{schema}.t"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    code, out, err = await run_cli("token", "--channels", channel, env=env)
    assert code == 2 and out == "" and "tidings: no auth secret" in err
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = tmp_path / "tidings.toml"
    config.write_text(f'auth_secret_file = "{secret_file}"\n')
    code, out, err = await run_cli(
        "token", "--config", str(config), "--channels", f"{channel}?customer_id=eq.42",
        "--channels", "other.*", "--ttl", "15m", "--subject", "cli",
        env=env,
    )  # fmt: skip
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2  # alone on stdout
    code, out, err = await run_cli(
        "token", "--channels", channel, "--ttl", "1h", env={**env, "TIDINGS_AUTH_SECRET": SECRET}
    )
    assert code == 0, err
    plain = out.strip()

    filtered = f"{channel}?customer_id=eq.42"
    narrow = await redis_subscriber(daemon, token, filtered)
    full = await redis_subscriber(daemon, plain, channel)
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings.cli", "tail", "--resp", f"{host}:{port}",
        "--token", plain, "--count", "1", channel,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    await wait_for(lambda: daemon.hub.subscriber_count(channel) == 2, what="tail subscribed")
    insert(mariadb, schema, 1, customer=42)
    [event] = await receive(full, 1)
    assert (await receive(narrow, 1)) == [event]
    out_bytes, _ = await asyncio.wait_for(tail.communicate(), TIMEOUT)
    assert out_bytes.decode().startswith(f"#{event['id']} {channel} insert ")
    with pytest.raises(aioredis.AuthenticationError, match="bad signature"):
        await redis_subscriber(daemon, mint(FOREIGN, [channel], 60), channel)
    for pubsub in (narrow, full):
        await pubsub.aclose()


async def test_an_address_that_keeps_failing_waits_on_every_protocol(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str
) -> None:
    daemon = await started(mariadb, replica_server_id, http="127.0.0.1:0", auth_max_failures=3)
    assert daemon.resp_address is not None and daemon.http_address is not None
    tokens = Tokens(f"{schema}.t")
    try:
        reader, writer = await asyncio.open_connection(
            *daemon.resp_address, local_addr=("127.0.0.7", 0)
        )
        for _ in range(3):
            writer.write(f"AUTH {tokens.foreign}\r\n".encode())
            assert (await reader.readline()).startswith(b"-WRONGPASS invalid token: ")
        # now even a good token from there is refused, unchecked, on RESP and on SSE
        writer.write(f"AUTH {tokens.good}\r\n".encode())
        line = await reader.readline()
        assert line.startswith(b"-WRONGPASS invalid token: too many refused tokens from "
                               b"127.0.0.7: try again in "), line  # fmt: skip
        sse_reader, sse = await asyncio.open_connection(
            *daemon.http_address, local_addr=("127.0.0.7", 0)
        )
        sse.write(f"GET /sse?channel={schema}.t&token={tokens.good} HTTP/1.1\r\n"
                  "Host: t\r\n\r\n".encode())  # fmt: skip
        head = await asyncio.wait_for(sse_reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 401 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(sse_reader.readexactly(length), TIMEOUT)
        assert b"too many refused tokens from 127.0.0.7" in body
        # another address is not affected
        other_reader, other = await asyncio.open_connection(
            *daemon.resp_address, local_addr=("127.0.0.8", 0)
        )
        other.write(f"AUTH {tokens.good}\r\n".encode())
        assert await other_reader.readline() == b"+OK\r\n"
        for w in (writer, sse, other):
            w.close()
        assert daemon.http is not None
        metrics = daemon.http.metrics()
        assert "tidings_auth_failures_total 3\n" in metrics
        assert "tidings_auth_throttled_total 2\n" in metrics
    finally:
        await stop_daemon(daemon)
