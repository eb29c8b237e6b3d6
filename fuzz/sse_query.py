"""What a GET /sse asks for: the query string and Last-Event-ID, as the HTTP parser
hands them to tidings.wire.http_server.sse_targets, then each pattern compiled and
matched (as the hub would).

The input is the request target after `/sse?`; a line break, if any, ends it and
what follows is the Last-Event-ID header's value.
"""

from __future__ import annotations

from tidings.hub.patterns import GlobPattern
from tidings.wire.http import HttpError, RequestParser
from tidings.wire.http_server import sse_targets

ERRORS = (HttpError,)

NEXT_ID = 1_000_000
MAX_SUBSCRIPTIONS = 8
CHANNELS = ("shop.orders", "a" * 64, "", "caf\u00e9.x", "\udcff")


def fuzz_one(data: bytes) -> None:
    query, newline, last_id = data.partition(b"\n")
    head = b"GET /sse?" + query + b" HTTP/1.1\r\nHost: x\r\n"
    if newline:
        head += b"Last-Event-ID: " + last_id + b"\r\n"
    parser = RequestParser()
    parser.feed(head + b"\r\n")
    request = parser.next_request()
    assert request is not None
    channels, patterns, since = sse_targets(request, NEXT_ID, MAX_SUBSCRIPTIONS)
    assert channels or patterns
    assert len(channels) + len(patterns) <= MAX_SUBSCRIPTIONS
    assert since is None or 0 <= since < NEXT_ID
    for text in patterns:
        glob = GlobPattern(text)
        for channel in CHANNELS:
            glob.matches(channel)
