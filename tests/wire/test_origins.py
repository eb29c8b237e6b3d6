"""The origins allow-list (sans-I/O): parsing, matching, and the CORS headers it yields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.config import ConfigError, load
from tidings.wire.origins import ANY, Origins, OriginsError


def test_star_allows_any_page_with_a_shared_header() -> None:
    for text in ("*", " * ", "https://a.example, *"):
        policy = Origins.parse(text)
        assert policy.any and policy.allows("https://evil.example") and policy.allows("null")
        assert policy.cors_headers("https://x.example") == (("Access-Control-Allow-Origin", "*"),)
        assert policy.cors_headers(None) == (("Access-Control-Allow-Origin", "*"),)
    assert Origins.parse("*") == ANY


def test_a_list_allows_exactly_its_origins_and_echoes_them() -> None:
    policy = Origins.parse("https://App.example/, http://localhost:*, http://127.0.0.1:8000")
    assert policy.allows("https://app.example")
    assert policy.allows("HTTPS://APP.EXAMPLE")
    assert policy.allows("http://localhost:5173") and policy.allows("http://localhost:1")
    assert policy.allows("http://127.0.0.1:8000")
    for refused in (
        "https://app.example:8443",  # another port is another origin
        "http://app.example",  # another scheme too
        "https://evil.example",
        "https://app.example.evil.example",
        "http://localhost",  # no port: not "any port"
        "http://localhost:x",
        "http://127.0.0.1:8001",
        "null",
        "",
    ):
        assert not policy.allows(refused), refused
    assert policy.cors_headers("https://app.example") == (
        ("Access-Control-Allow-Origin", "https://app.example"),
        ("Vary", "Origin"),
    )
    # refused or absent: no Allow-Origin, but Vary so a cache does not mix origins
    assert policy.cors_headers("https://evil.example") == (("Vary", "Origin"),)
    assert policy.cors_headers(None) == (("Vary", "Origin"),)


def test_null_is_allowed_only_when_listed() -> None:
    assert Origins.parse("null").allows("null")
    assert not Origins.parse("https://a.example").allows("null")


def test_preflight_answers_name_methods_and_headers() -> None:
    headers = dict(Origins.preflight_headers("GET, POST"))
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "last-event-id", "content-type"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize(
    "text", ["example.com", "https://a.example/path", "https://a.example:99999x", "ftp//x", "*x"]
)
def test_what_is_not_an_origin_is_refused_with_a_clear_reason(text: str) -> None:
    with pytest.raises(OriginsError, match="is not an origin"):
        Origins.parse(text)
    with pytest.raises(ConfigError, match=r"origins: .* is not an origin"):
        load(env={}, overrides={"origins": text})


def test_the_setting_defaults_to_any_and_reads_the_environment() -> None:
    assert load(env={}).origins == "*"
    assert load(env={"TIDINGS_ORIGINS": "https://a.example"}).origins == "https://a.example"


_hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)
_ports = st.integers(1, 65535)


@given(_hosts, _ports, _hosts, _ports)
def test_any_port_entries_match_that_host_only(host: str, port: int, other: str, p2: int) -> None:
    policy = Origins.parse(f"http://{host}:*")
    assert policy.allows(f"http://{host}:{port}")
    assert not policy.allows(f"https://{host}:{port}")
    assert policy.allows(f"http://{other}:{p2}") == (other == host)


@given(st.lists(st.tuples(_hosts, _ports), min_size=1, max_size=5), _hosts, _ports)
def test_a_list_allows_a_listed_origin_and_nothing_else(
    listed: list[tuple[str, int]], host: str, port: int
) -> None:
    policy = Origins.parse(",".join(f"https://{h}:{p}" for h, p in listed))
    for h, p in listed:
        assert policy.allows(f"https://{h}:{p}")
    assert policy.allows(f"https://{host}:{port}") == ((host, port) in listed)
