"""HTTP/1.1 requests (tidings.wire.http.RequestParser): a client's bytes, cut into reads.

Small limits so the fuzzer reaches every bound; the parser never buffers more than
a request head, one body and one read. Each request's Origin header then goes
through the `origins` allow-list (tidings.wire.origins), whose CORS headers must
make a response that encodes.
"""

from __future__ import annotations

from fuzz._pieces import reads
from tidings.wire.http import HttpError, Request, RequestParser, response
from tidings.wire.origins import Origins

ERRORS = (HttpError,)

MAX_LINE, MAX_HEADERS, BODY = 256, 512, 64
ORIGINS = Origins.parse("https://app.example, http://localhost:*, null")


def _body_limit(method: str, path: str) -> int:
    return BODY * 4 if path == "/publish" else BODY


def fuzz_one(data: bytes) -> None:
    parser = RequestParser(
        max_line=MAX_LINE, max_headers=MAX_HEADERS, max_fields=16, body_limit=_body_limit
    )
    for chunk in reads(data):
        parser.feed(chunk)
        while (request := parser.next_request()) is not None:
            _check(request)
        assert parser.buffered <= MAX_LINE + MAX_HEADERS + 4 * BODY + 8 + len(chunk)


def _check(request: Request) -> None:
    assert request.version in ("HTTP/1.0", "HTTP/1.1")
    assert request.target.startswith("/") and request.path.startswith("/")
    assert len(request.body) <= 4 * BODY
    for name, value in request.headers.items():
        assert name == name.lower() and "\r" not in value and "\n" not in value
    origin = request.headers.get("origin")
    if origin is not None:
        ORIGINS.allows(origin)
    response(200, b"{}", headers=ORIGINS.cors_headers(origin))
