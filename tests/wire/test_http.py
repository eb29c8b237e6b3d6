"""The sans-I/O HTTP/1.1 parser and the SSE/response encoders: byte literals and hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.wire import http
from tidings.wire.http import HttpError, Request, RequestParser


def parse_all(data: bytes, **kwargs: object) -> list[Request]:
    parser = RequestParser(**kwargs)  # type: ignore[arg-type]
    parser.feed(data)
    out = []
    while (request := parser.next_request()) is not None:
        out.append(request)
    return out


def error_of(data: bytes, **kwargs: object) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_all(data, **kwargs)
    return info.value


def test_a_get_with_query_and_headers() -> None:
    (req,) = parse_all(
        b"GET /sse?channel=shop.orders%3Fstatus%3Deq.paid&channel=b&since=4 HTTP/1.1\r\n"
        b"Host: x\r\nLast-Event-ID: 17\r\nAccept: a\r\naccept: b\r\n\r\n"
    )
    assert req.method == "GET" and req.path == "/sse" and req.version == "HTTP/1.1"
    assert req.target == "/sse?channel=shop.orders%3Fstatus%3Deq.paid&channel=b&since=4"
    assert req.query == {"channel": ["shop.orders?status=eq.paid", "b"], "since": ["4"]}
    assert req.headers == {"host": "x", "last-event-id": "17", "accept": "a, b"}
    assert req.keep_alive and req.body == b""


def test_keep_alive_rules_and_pipelining() -> None:
    reqs = parse_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /c HTTP/1.0\r\n\r\n"
        b"GET /d HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    )
    assert [(r.path, r.keep_alive) for r in reqs] == [
        ("/a", True),
        ("/b", False),
        ("/c", False),
        ("/d", True),
    ]


def test_body_by_content_length_and_the_per_route_bound() -> None:
    limits = {"/publish": 100}

    def limit(method: str, path: str) -> int:
        return limits.get(path, 4)

    raw = b'POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{"a":"bcd"}GET'
    parser = RequestParser(body_limit=limit)
    for i in range(len(raw)):  # one byte at a time
        parser.feed(raw[i : i + 1])
        request = parser.next_request()
        if request is not None:
            break
    assert request is not None and request.body == b'{"a":"bcd"}'
    assert parser.rest() == b""
    parser.feed(b"GET")
    assert parser.next_request() is None and parser.rest() == b"GET"
    err = error_of(
        b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", body_limit=limit
    )
    assert err.status == 413 and "at most 4" in err.message


def test_expect_continue_is_exposed_before_the_body() -> None:
    parser = RequestParser(body_limit=lambda m, p: 100)
    parser.feed(
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert parser.next_request() is None
    head = parser.head_pending()
    assert head is not None and head.expect_continue
    parser.feed(b"{}")
    request = parser.next_request()
    assert request is not None and request.body == b"{}"


def test_rest_keeps_bytes_after_an_upgrade_request() -> None:
    parser = RequestParser()
    parser.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x81\x85abc")
    request = parser.next_request()
    assert request is not None and request.headers["upgrade"] == "websocket"
    assert parser.rest() == b"\x81\x85abc"


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request line longer"),
        (b"GET /" + b"a" * 9000, 414, "request line longer"),  # no newline yet
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 17000 + b"\r\n\r\n", 431, "headers larger"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 17000, 431, "headers larger"),
        (b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 101 + b"\r\n", 431, "more than 100 header"),
        (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, "malformed request line"),
        (b"GET /\r\n\r\n", 400, "malformed request line"),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "method"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/1.0 and HTTP/1.1"),
        (b"GET / FTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"),
        (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "must be a path"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "Host header"),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, "malformed header line"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "malformed header line"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, "control character"),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400, "CRLF"),
        (b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400, "CRLF"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        # found by fuzz/http.py: "1\xb21" (latin-1 "1²1") passed isdigit() and broke int()
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\xb21\r\n\r\n", 400, "Content-Length"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            400,
            "repeated content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
            "Content-Length",
        ),
        (b"GET /?a=%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "UTF-8"),
    ],
)
def test_bad_requests_get_a_status_and_a_reason(raw: bytes, status: int, words: str) -> None:
    err = error_of(raw)
    assert err.status == status and words in err.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_any_bytes_split_anywhere_give_requests_or_http_error(data: bytes, cuts: list[int]) -> None:
    """Arbitrary input never raises anything but HttpError, and splitting does not matter."""
    parser = RequestParser(max_line=64, max_headers=128, body_limit=lambda m, p: 16)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    got: list[Request] = []
    failed: int | None = None
    try:
        for a, b in itertools.pairwise(points):
            parser.feed(data[a:b])
            while (request := parser.next_request()) is not None:
                got.append(request)
    except HttpError as exc:
        failed = exc.status
    whole: list[Request] = []
    whole_failed: int | None = None
    try:
        whole = parse_all(data, max_line=64, max_headers=128, body_limit=lambda m, p: 16)
    except HttpError as exc:
        whole_failed = exc.status
    if failed is None and whole_failed is None:
        assert got == whole
    else:
        assert failed is not None and whole_failed is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "DELETE"]),
            st.text("abc/%?=&", max_size=20),
            st.binary(max_size=16),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 50),
)
def test_valid_requests_round_trip_in_any_chunking(
    items: list[tuple[str, str, bytes]], chunk: int
) -> None:
    raw = b"".join(
        b"%s /%s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        % (m.encode(), p.replace("%", "%25").encode(), len(body), body)
        for m, p, body in items
    )
    parser = RequestParser(body_limit=lambda m, p: 16)
    got = []
    for i in range(0, len(raw), chunk):
        parser.feed(raw[i : i + chunk])
        while (request := parser.next_request()) is not None:
            got.append(request)
    assert [(r.method, r.path.split("?")[0], r.body) for r in got] == [
        (m, "/" + p.split("?")[0], body) for m, p, body in items
    ]


def test_responses_and_sse_frames() -> None:
    data = http.response(200, b"hi", keep_alive=False, headers=(("Allow", "GET"),))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hi"
    assert b"Content-Length: 2\r\n" in head and b"Connection: close" in head
    assert b"Allow: GET" in head
    err = http.error_response(431, "too big")
    assert err.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert err.endswith(b'{"error":"too big","status":431}')
    assert http.sse_event(7, "insert", b'{"a":1}') == b'id: 7\nevent: insert\ndata: {"a":1}\n\n'
    # every line of the data is its own data: line; EventSource joins them with \n again
    assert http.sse_event(8, "message", b"a\r\nb\nc\rd") == (
        b"id: 8\nevent: message\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert http.sse_comment("bye\nnow") == b": bye\n: now\n\n"
    assert http.sse_retry(2000, 41) == b"retry: 2000\nid: 41\n\n"
