"""tidings.wire.access and the loopback test behind the admin routes."""

from __future__ import annotations

import asyncio

import pytest

from tidings.auth import AuthError, mint
from tidings.config import Settings
from tidings.wire.access import Authority, Throttle, bearer_token, refusal, uncovered
from tidings.wire.http_server import ROUTES, HttpSettings, is_loopback
from tidings.wire.ws_session import WsSettings

SECRET = b"access-test-secret-0123456789abcdef"


def test_bearer_token_from_header_or_query() -> None:
    assert bearer_token({"authorization": "Bearer abc"}, {"token": ["q"]}) == "abc"
    assert bearer_token({"authorization": "bearer  abc "}, {}) == "abc"
    assert bearer_token({}, {"token": ["one", "two"]}) == "two"
    assert bearer_token({}, {}) is None
    with pytest.raises(AuthError, match="must be 'Bearer <token>'"):
        bearer_token({"authorization": "Basic dTpw"}, {})
    with pytest.raises(AuthError, match="must be 'Bearer <token>'"):
        bearer_token({"authorization": "Bearer "}, {})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("localhost", False),  # a name is not an address: a socket never reports one
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_admin_routes_are_flagged_in_the_route_table() -> None:
    assert {path for path, route in ROUTES.items() if route.admin} == {
        "/channels",
        "/metrics",
        "/publish",
        "/stats",
    }
    # the dashboard's files are public (the page brings its token in its URL)
    assert not ROUTES["/"].admin and not ROUTES["/dashboard.js"].admin


async def test_authority_watches_expiry_and_never_shows_the_secret() -> None:
    now = [1000.0]
    authority = Authority(SECRET, clock=lambda: now[0])
    assert SECRET.decode() not in repr(authority)
    grant = authority.verify(mint(SECRET, ["a.*"], 60, now=1000))
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    now[0] = grant.valid_until - 0.05  # the timer is due in 50 ms
    authority.watch(loop, grant, fired.set)
    await asyncio.wait_for(fired.wait(), 2)
    assert (
        uncovered(grant, ["a.b", "c.d"])
        == refusal("c.d")
        == "this token does not allow channel 'c.d'"
    )
    assert uncovered(grant, ["a.b"], ["a.*", "*"]) == "this token does not allow pattern '*'"
    assert uncovered(grant, ["a.b"], ["a.x*"]) is None


def test_the_websocket_side_gets_the_secret_from_the_http_listener_or_the_daemon() -> None:
    # the listener's settings carry it as bytes: a /ws without its own service checks tokens
    assert WsSettings.from_settings(HttpSettings(auth_secret=SECRET)).auth_secret == SECRET
    assert WsSettings.from_settings(HttpSettings()).auth_secret is None
    # the daemon's settings hold text (or a file name): the daemon passes the bytes it read
    settings = Settings(auth_secret=SECRET.decode())
    assert WsSettings.from_settings(settings).auth_secret is None
    assert WsSettings.from_settings(settings, auth_secret=SECRET).auth_secret == SECRET
    assert SECRET.decode() not in repr(HttpSettings(auth_secret=SECRET))


def test_throttle_refuses_an_address_after_its_failures_doubling_then_forgives() -> None:
    now = [0.0]
    throttle = Throttle(3, clock=lambda: now[0])
    authority = Authority(SECRET, clock=lambda: 1000.0, throttle=throttle)
    good = mint(SECRET, ["a"], 60, now=1000)
    bad = mint(SECRET[::-1], ["a"], 60, now=1000)  # another secret's
    for _ in range(3):
        with pytest.raises(AuthError, match="signature"):
            authority.verify(bad, "10.0.0.1")
    # the third failure started a 1 s wait: even a good token is refused unchecked
    with pytest.raises(AuthError, match=r"too many refused tokens from 10\.0\.0\.1: try again"):
        authority.verify(good, "10.0.0.1")
    assert authority.verify(good, "10.0.0.2").allows_channel("a")  # others are not affected
    now[0] = 1.5
    with pytest.raises(AuthError, match="signature"):
        authority.verify(bad, "10.0.0.1")  # the 4th failure: 2 s now
    now[0] = 3.0
    with pytest.raises(AuthError, match="try again in 1 s"):
        authority.verify(good, "10.0.0.1")
    now[0] = 3.6
    assert authority.verify(good, "10.0.0.1").allows_channel("a")  # and the record is cleared
    with pytest.raises(AuthError, match="signature"):
        authority.verify(bad, "10.0.0.1")
    assert authority.verify(good, "10.0.0.1")  # one failure after a clean slate: no wait
    assert (authority.failures, throttle.refused) == (5, 2)


def test_throttle_forgets_the_quietest_address_when_full() -> None:
    now = [0.0]
    throttle = Throttle(1, clock=lambda: now[0], max_hosts=2)
    for host in ("a", "b", "c"):
        now[0] += 1
        throttle.failed(host)
    throttle.check("a")  # forgotten: no wait
    with pytest.raises(AuthError):
        throttle.check("c")
