"""Sans-I/O HTTP/1.1: a bounded request parser, response bytes, Server-Sent Events frames.

Theory of operation. `RequestParser` takes bytes (`feed`) and hands out complete
`Request`s (`next_request`), in order, for keep-alive and pipelining. It never
does I/O and never grows without bound: the request line, the header block and
the body each have a limit, and input past one raises `HttpError` carrying the
status to answer (414, 431, 413, 400, 501, 505) and a sentence saying why. After
an error the parser is done: the connection answers and closes, since the
request boundary is lost. The body limit is decided per request by a callback
(`body_limit(method, path)`), so one route (POST /publish) may take more than the
small bound every other request gets.

Only `Content-Length` bodies are read; `Transfer-Encoding` is refused with 501
(browsers, curl and every HTTP library send a length for small bodies). A
request that asks `Expect: 100-continue` gets `expect_continue` set on it so the
server can say "100 Continue" before the body arrives.

The response side is plain functions returning bytes, and the SSE side encodes
one event as the `id:` / `event:` / `data:` lines of the HTML standard's
event-stream format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, unquote

import orjson

__all__ = [
    "HttpError",
    "Request",
    "RequestParser",
    "error_response",
    "json_response",
    "response",
    "sse_comment",
    "sse_event",
    "sse_head",
]

#: longest request line (method, target, version), as most servers (8 KiB)
MAX_LINE: Final = 8 * 1024
#: largest header block, all lines together
MAX_HEADERS: Final = 16 * 1024
#: most header fields in one request
MAX_FIELDS: Final = 100
#: request body bound for every request whose route does not allow more
SMALL_BODY: Final = 1024

REASONS: Final = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# RFC 9110 token characters, for methods and header names
_TOKEN: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# header values: visible ASCII, obs-text, space and tab (no CR, LF or NUL)
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION: Final = re.compile(rb"^HTTP/1\.[01]$")


class HttpError(Exception):
    """Input that cannot be served: answer `status` with `message`, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    """One parsed request (the contract with tidings.wire.ws_session)."""

    method: str
    #: path and query as sent
    target: str
    #: percent-decoded path
    path: str
    query: dict[str, list[str]]
    #: lower-case names; repeated fields joined with ", " (RFC 9110 5.3)
    headers: dict[str, str]
    #: "HTTP/1.1" or "HTTP/1.0"
    version: str
    body: bytes = b""
    #: the client waits for "100 Continue" before sending its body
    expect_continue: bool = False
    #: the connection may carry another request after this one's response
    keep_alive: bool = field(default=True)


def _small_body(method: str, path: str) -> int:
    return SMALL_BODY


class RequestParser:
    """Bytes in, `Request`s out; see the module docstring."""

    __slots__ = ("_buf", "_pending", "body_limit", "max_fields", "max_headers", "max_line")

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        max_headers: int = MAX_HEADERS,
        max_fields: int = MAX_FIELDS,
        body_limit: Callable[[str, str], int] = _small_body,
    ) -> None:
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_fields = max_fields
        self.body_limit = body_limit
        self._buf = bytearray()
        # the head of a request whose body is still arriving, and the body's length
        self._pending: tuple[Request, int] | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def rest(self) -> bytes:
        """Bytes received after the last request handed out (e.g. a WebSocket's first frame)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def head_pending(self) -> Request | None:
        """A request whose headers arrived and whose body has not all: the caller may send
        "100 Continue" if it asked (`expect_continue`)."""
        return self._pending[0] if self._pending else None

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive; raises HttpError."""
        if self._pending is None:
            head = self._head()
            if head is None:
                return None
            self._pending = head
        request, length = self._pending
        if len(self._buf) < length:
            return None
        self._pending = None
        if length:
            request.body = bytes(self._buf[:length])
            del self._buf[:length]
        return request

    # -- internals -------------------------------------------------------------------------
    def _head(self) -> tuple[Request, int] | None:
        buf = self._buf
        # RFC 9112 2.2: ignore empty lines before a request line (robustness)
        while buf[:2] == b"\r\n":
            del buf[:2]
        while buf[:1] == b"\n":
            del buf[:1]
        end = buf.find(b"\r\n\r\n")
        line_end = buf.find(b"\n")
        if line_end < 0:
            if len(buf) > self.max_line:
                raise HttpError(414, f"request line longer than {self.max_line} bytes")
            return None
        if line_end > self.max_line:
            raise HttpError(414, f"request line longer than {self.max_line} bytes")
        if end < 0:
            if buf.find(b"\n\n") >= 0:
                raise HttpError(400, "header lines must end with CRLF")
            if len(buf) > line_end + 1 + self.max_headers:
                raise HttpError(431, f"request headers larger than {self.max_headers} bytes")
            return None
        if end - line_end - 1 > self.max_headers:
            raise HttpError(431, f"request headers larger than {self.max_headers} bytes")
        block = bytes(buf[:end])
        del buf[: end + 4]
        lines = block.split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise HttpError(400, "header lines must end with CRLF")
        request = self._request_line(lines[0])
        self._headers(request, lines[1:])
        return request, self._body_length(request)

    def _request_line(self, line: bytes) -> Request:
        parts = line.split(b" ")
        if len(parts) != 3 or not all(parts):
            raise HttpError(400, "malformed request line: expected 'METHOD /path HTTP/1.1'")
        method, target, version = parts
        if not _TOKEN.match(method):
            raise HttpError(400, "malformed request method")
        if not version.startswith(b"HTTP/"):
            raise HttpError(400, "malformed request line: expected 'METHOD /path HTTP/1.1'")
        if not _VERSION.match(version):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if not target.startswith(b"/") or any(c <= 0x20 or c >= 0x7F for c in target):
            raise HttpError(400, "the request target must be a path such as /sse?channel=x")
        text = target.decode("ascii")
        raw_path, _, raw_query = text.partition("?")
        path = unquote(raw_path, errors="surrogateescape")
        try:
            query = parse_qs(raw_query, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the query string is not valid UTF-8") from None
        return Request(method.decode("ascii"), text, path, query, {}, version.decode("ascii"))

    def _headers(self, request: Request, lines: list[bytes]) -> None:
        if len(lines) > self.max_fields:
            raise HttpError(431, f"more than {self.max_fields} header fields")
        headers = request.headers
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                # a space before the colon is a smuggling vector (RFC 9112 5.1): refuse it too
                raise HttpError(400, "malformed header line")
            value = value.strip(b" \t")
            if _BAD_VALUE.search(value):
                raise HttpError(400, "control character in a header value")
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            if key in headers:
                if key in ("content-length", "host"):
                    raise HttpError(400, f"repeated {key} header")
                headers[key] = f"{headers[key]}, {text}"
            else:
                headers[key] = text
        if request.version == "HTTP/1.1" and "host" not in headers:
            raise HttpError(400, "HTTP/1.1 requests need a Host header")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if request.version == "HTTP/1.1":
            request.keep_alive = "close" not in tokens
        else:
            request.keep_alive = "keep-alive" in tokens

    def _body_length(self, request: Request) -> int:
        headers = request.headers
        if "transfer-encoding" in headers:
            raise HttpError(501, "Transfer-Encoding is not supported: send a Content-Length")
        raw = headers.get("content-length")
        if raw is None:
            return 0
        # isdigit() alone takes "²" and other Unicode digits (the value is latin-1 text)
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise HttpError(400, "malformed Content-Length")
        length = int(raw)
        limit = self.body_limit(request.method, request.path)
        if length > limit:
            raise HttpError(413, f"request body of {length} bytes; at most {limit} here")
        if length and headers.get("expect", "").lower() == "100-continue":
            request.expect_continue = True
        return length


# -- responses ------------------------------------------------------------------------------
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    *,
    keep_alive: bool = True,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete response with a Content-Length (204: without body or length)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    if status != 204:
        lines += (f"Content-Type: {content_type}", f"Content-Length: {len(body)}")
    lines.append("Cache-Control: no-store")
    if not keep_alive:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool = True,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    return response(status, body, "application/json", keep_alive=keep_alive, headers=headers)


def error_response(status: int, message: str, *, keep_alive: bool = False) -> bytes:
    """`{"error": message}` with `status`; closes the connection unless told otherwise."""
    body = orjson.dumps({"error": message, "status": status})
    return json_response(status, body, keep_alive=keep_alive)


# -- Server-Sent Events (HTML Living Standard, 9.2) ---------------------------------------------
def sse_head(headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The response head that starts an event stream, with extra `headers` (e.g. CORS)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-store\r\n"
        # nginx buffers proxied responses by default; this header turns that off for the stream
        b"X-Accel-Buffering: no\r\n"
        b"Connection: close\r\n" + extra.encode("latin-1") + b"\r\n"
    )


SSE_HEAD: Final = sse_head()

_LINES: Final = re.compile(rb"\r\n|\r|\n")


def sse_event(event_id: int | None, event_type: str | None, data: bytes) -> bytes:
    """One event: `id:`, `event:`, then one `data:` line per line of `data`."""
    out = []
    if event_id is not None:
        out.append(b"id: %d\n" % event_id)
    if event_type is not None:
        out.append(b"event: " + _LINES.sub(b" ", event_type.encode("utf-8", "replace")) + b"\n")
    for line in _LINES.split(data):
        out.append(b"data: " + line + b"\n")
    out.append(b"\n")
    return b"".join(out)


def sse_comment(text: str) -> bytes:
    """A comment (ignored by EventSource; keeps proxies from timing the stream out)."""
    return b"".join(b": " + line + b"\n" for line in _LINES.split(text.encode("utf-8"))) + b"\n"


def sse_retry(ms: int, last_id: int | None = None) -> bytes:
    """The reconnection delay hint and, optionally, the id to resume from if the stream
    breaks before its first event (a dataless block sets EventSource's lastEventId)."""
    head = b"retry: %d\n" % ms
    if last_id is not None:
        head += b"id: %d\n" % last_id
    return head + b"\n"
