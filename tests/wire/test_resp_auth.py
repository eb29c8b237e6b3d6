"""RESP with an auth secret, byte for byte over real sockets (no database: the hub publishes).

The system tests (tests/system/test_auth.py) show the same against MariaDB with
redis-py and redis-cli; here are the command-level details: which commands need a
token, AUTH's spellings, HELLO AUTH, RESET, re-AUTH, PUBSUB and PUBLISH permissions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError

from tests.wire.test_resp_server import Client, Server, confirm, message, until
from tidings.auth import LEEWAY, mint
from tidings.hub import Hub
from tidings.wire.resp_server import RespService, RespSettings, start_resp_server

SECRET = b"resp-auth-test-secret-0123456789abcdef"


def token(*channels: str, ttl: float = 600, **claims: object) -> str:
    return mint(SECRET, channels, ttl, **claims)  # type: ignore[arg-type]


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    hub = Hub()
    service = RespService(hub, RespSettings(allow_publish=True, auth_secret=SECRET))
    server = await start_resp_server(hub, "127.0.0.1", 0, service=service)
    yield Server(hub, service, server.sockets[0].getsockname()[1])
    await service.close()


NOAUTH = b"-NOAUTH Authentication required.\r\n"


async def silent(c: Client, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        data = await asyncio.wait_for(c.reader.read(1), seconds)
        raise AssertionError(f"unexpected bytes {data!r}")


async def test_subscribing_commands_need_auth_the_harmless_ones_do_not(srv: Server) -> None:
    c = await Client.connect(srv.port)
    for command in (
        ("SUBSCRIBE", "a"),
        ("PSUBSCRIBE", "a*"),
        ("TIDINGS.SUBSCRIBE", "0", "a"),
        ("TIDINGS.PSUBSCRIBE", "0", "a*"),
        ("TIDINGS.SNAPSHOT", "a.b"),
        ("PUBLISH", "a", "x"),
        ("PUBSUB", "CHANNELS"),
    ):
        await c.call(*command, reply=NOAUTH)
    await c.call("PING", reply=b"+PONG\r\n")
    await c.call("ECHO", "hi", reply=b"$2\r\nhi\r\n")
    await c.call("CLIENT", "SETNAME", "me", reply=b"+OK\r\n")
    await c.call("UNSUBSCRIBE", reply=b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n")
    await c.call("SUBSCRIBE", reply=b"-ERR wrong number of arguments for 'subscribe' command\r\n")
    srv.hub.publish("a", b"never")
    await silent(c)
    assert srv.hub.channels() == {}


async def test_auth_spellings_and_refusals(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("AUTH", "nonsense", reply=b"-WRONGPASS invalid token: malformed token: a JWT "
                 b"has three parts separated by dots (header.claims.signature)\r\n")  # fmt: skip
    foreign = mint(b"x" * 40, ["a"], 600)
    await c.call("AUTH", foreign, reply=b"-WRONGPASS invalid token: bad signature: the token "
                 b"was not made with this server's secret\r\n")  # fmt: skip
    expired = token("a", ttl=-(LEEWAY + 60))
    c.send("AUTH", expired)
    line = await asyncio.wait_for(c.reader.readline(), 5)
    assert line.startswith(b"-WRONGPASS invalid token: the token expired 6")
    await c.call("SUBSCRIBE", "a", reply=NOAUTH)  # still not authenticated
    await c.call("AUTH", "u", "p", "x", reply=b"-ERR syntax error\r\n")
    await c.call("AUTH", "default", token("a"), reply=b"+OK\r\n")  # redis-py with a username
    await c.call("SUBSCRIBE", "a", reply=confirm(b"subscribe", b"a", 1))
    srv.hub.publish("a", b"one")
    await c.expect(message(b"a", b"one"))


async def test_channels_outside_the_grant_are_refused_and_nothing_is_subscribed(
    srv: Server,
) -> None:
    c = await Client.connect(srv.port)
    await c.call("AUTH", token("shop.*", "crm.people?id=eq.7"), reply=b"+OK\r\n")
    await c.call(
        "SUBSCRIBE", "shop.orders", "hr.salaries",
        reply=b"-NOPERM this token does not allow channel 'hr.salaries'\r\n",
    )  # fmt: skip
    await c.call(
        "SUBSCRIBE", "crm.people",
        reply=b"-NOPERM this token does not allow channel 'crm.people'\r\n",
    )  # fmt: skip
    await c.call("PSUBSCRIBE", "*", reply=b"-NOPERM this token does not allow pattern '*'\r\n")
    await c.call(
        "TIDINGS.SUBSCRIBE", "0", "hr.x",
        reply=b"-NOPERM this token does not allow channel 'hr.x'\r\n",
    )  # fmt: skip
    await c.call(
        "TIDINGS.SNAPSHOT", "hr.x", reply=b"-NOPERM this token does not allow channel 'hr.x'\r\n"
    )
    assert srv.hub.channels() == {} and srv.hub.pattern_count() == 0
    for channel in ("shop.orders", "hr.salaries", "crm.people"):
        srv.hub.publish(channel, b"x")
    await silent(c)
    # what the grant allows
    await c.call(
        "SUBSCRIBE", "crm.people?id=eq.7", reply=confirm(b"subscribe", b"crm.people?id=eq.7", 1)
    )
    await c.call("PSUBSCRIBE", "shop.o*", reply=confirm(b"psubscribe", b"shop.o*", 2))


async def test_hello_auth_reset_and_reauth(srv: Server) -> None:
    c = await Client.connect(srv.port)
    c.send("HELLO", "3", "AUTH", "default", "bad")
    assert (await c.reader.readline()).startswith(b"-WRONGPASS invalid token: malformed")
    await c.call("CLIENT", "GETNAME", reply=b"$-1\r\n")  # still RESP2, no name
    c.send("HELLO", "3", "AUTH", "default", token("a", "b"), "SETNAME", "x")
    hello = await asyncio.wait_for(c.reader.readuntil(b"$7\r\nmodules\r\n*0\r\n"), 5)
    assert hello.startswith(b"%7\r\n")  # a RESP3 map: authenticated and switched
    await c.call("CLIENT", "GETNAME", reply=b"$1\r\nx\r\n")
    await c.call("SUBSCRIBE", "a", "b", reply=confirm(b"subscribe", b"a", 1, True)
                 + confirm(b"subscribe", b"b", 2, True))  # fmt: skip
    # a new token must allow what is subscribed, else it is not taken (the old one stays)
    await c.call(
        "AUTH", token("a"),
        reply=b"-NOPERM the new token is not taken: this token does not allow channel 'b', "
        b"to which this connection is subscribed (UNSUBSCRIBE it first)\r\n",
    )  # fmt: skip
    await c.call("AUTH", token("*"), reply=b"+OK\r\n")
    await c.call("RESET", reply=b"+RESET\r\n")  # as redis: unsubscribed and unauthenticated
    await c.call("SUBSCRIBE", "a", reply=NOAUTH)


async def test_auth_is_allowed_in_resp2_subscribed_mode(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("AUTH", token("a"), reply=b"+OK\r\n")
    await c.call("SUBSCRIBE", "a", reply=confirm(b"subscribe", b"a", 1))
    await c.call("AUTH", token("a", ttl=3600), reply=b"+OK\r\n")
    await c.call(
        "ECHO", "x",
        reply=b"-ERR Can't execute 'echo': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
        b"QUIT / RESET are allowed in this context\r\n",
    )  # fmt: skip


async def test_pubsub_needs_an_admin_token_publish_a_publish_grant(srv: Server) -> None:
    c = await Client.connect(srv.port)
    await c.call("AUTH", token("a", publish=["chat.*"]), reply=b"+OK\r\n")
    await c.call("PUBSUB", "NUMPAT", reply=b"-NOPERM PUBSUB needs an admin token\r\n")
    await c.call("PUBLISH", "chat.1", "hi", reply=b":0\r\n")
    await c.call(
        "PUBLISH", "a", "fake row",
        reply=b"-NOPERM this token does not allow publishing to 'a'\r\n",
    )  # fmt: skip
    await c.call("AUTH", token(admin=True), reply=b"+OK\r\n")
    await c.call("PUBSUB", "NUMPAT", reply=b":0\r\n")
    await c.call("PUBLISH", "a", "anything", reply=b":0\r\n")  # admin: anywhere


async def test_expiry_closes_the_connection_unless_a_fresh_token_came(srv: Server) -> None:
    short = token("a", ttl=0.2 - LEEWAY)  # valid for about 0.2 s more
    cut = await Client.connect(srv.port)
    kept = await Client.connect(srv.port)
    for c in (cut, kept):
        await c.call("AUTH", short, reply=b"+OK\r\n")
        await c.call("SUBSCRIBE", "a", reply=confirm(b"subscribe", b"a", 1))
    await kept.call("AUTH", token("a"), reply=b"+OK\r\n")
    assert (await cut.read_to_eof()) == (
        b"-NOAUTH the token expired: this connection is closed (AUTH with a fresh token "
        b"before the current one expires to keep a connection)\r\n"
    )
    await until(lambda: srv.hub.subscriber_count("a") == 1)
    srv.hub.publish("a", b"after")
    await kept.expect(message(b"a", b"after"))


async def test_redis_py_with_password_and_username(srv: Server) -> None:
    good = redis.asyncio.Redis(port=srv.port, username="anyone", password=token("a"))
    pubsub = good.pubsub()
    await pubsub.subscribe("a")
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
    srv.hub.publish("a", b"hello")
    got = await pubsub.get_message(timeout=5)
    assert got is not None and got["data"] == b"hello"
    bad = redis.asyncio.Redis(  # no retries: redis-py retries AuthenticationError by default
        port=srv.port, password=mint(b"y" * 40, ["a"], 60), retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(AuthenticationError, match="invalid token: bad signature"):
        await bad.ping()
    # RESP3: redis-py authenticates with HELLO 3 AUTH <user> <token>
    narrow = redis.asyncio.Redis(port=srv.port, password=token("b"), protocol=3)
    refused = narrow.pubsub()
    await refused.subscribe("a")
    with pytest.raises(NoPermissionError, match="this token does not allow channel 'a'"):
        await refused.get_message(timeout=5)
    srv.hub.publish("a", b"not for narrow")
    assert await refused.get_message(timeout=0.3) is None
    for client in (good, bad, narrow):
        await client.aclose()
    for ps in (pubsub, refused):
        await ps.aclose()
