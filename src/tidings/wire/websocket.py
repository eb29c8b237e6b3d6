"""Sans-I/O WebSocket (RFC 6455), server side: the opening handshake and the frame codec.

Theory of operation. Nothing here touches a socket. The handshake is two pure
functions: `check_handshake(method, headers)` validates an HTTP upgrade request
and returns the `Sec-WebSocket-Accept` value (or raises `HandshakeError` with
the HTTP status to answer), and `handshake_response(accept)` gives the 101
response bytes. After it, a `FrameParser` takes the client's bytes (`feed`) and
hands back whole events (`next_event`): a complete `Message` (fragments joined,
text checked as UTF-8), a `Ping`, a `Pong` or a `Close`. Every violation the
RFC says must fail the connection raises `ProtocolError` carrying the close
code to send: 1002 for framing errors (unmasked client frame, reserved bits,
unknown opcode, fragmented or oversized control frame, a continuation with
nothing to continue, a bad close payload), 1009 for a message over the size
bound (checked on each frame header, before its payload is buffered), 1007 for
text that is not UTF-8 (checked per fragment, so a bad byte fails at once).
The encoders (`encode_frame`, `text_frame`, `close_frame`, ...) build unmasked
server frames: a text event is one header plus its body, built once per event
and shared by every subscriber (tidings.wire.ws_session). `mask_frame` builds
masked client frames, for tests and benchmarks.

Why our own codec: the server's hot path is encoding one text frame per event
(once, whatever the number of subscribers) and the inbound traffic is a few
small JSON commands; a header of 2 to 10 bytes plus a bytes concatenation is
all the encoder needs. docs/reference/websocket.md records the measurement
against the `websockets` package's sans-I/O core.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "GUID",
    "MAX_MESSAGE",
    "Close",
    "FrameParser",
    "HandshakeError",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "accept_key",
    "check_handshake",
    "close_frame",
    "encode_frame",
    "handshake_response",
    "mask_frame",
    "parse_close",
    "reject_response",
    "text_frame",
]

#: the RFC's magic string for Sec-WebSocket-Accept
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: largest message (all its fragments) accepted by default
MAX_MESSAGE: Final = 64 * 1024

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA_OPS: Final = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
_CONTROL_OPS: Final = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# close codes (RFC 6455 §7.4.1)
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
UNSUPPORTED_DATA: Final = 1003
NO_STATUS: Final = 1005  # never sent: "the close frame had no code"
INVALID_DATA: Final = 1007
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
#: codes a peer may put in a close frame (1004-1006, 1015 are reserved; 3000-4999 are apps')
_SENDABLE: Final = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                              1014))  # fmt: skip


class ProtocolError(Exception):
    """The peer broke RFC 6455: fail the connection with close `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """An upgrade request that cannot be accepted: answer with HTTP `status`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# -- handshake ------------------------------------------------------------------------------
def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    digest = hashlib.sha1(key.encode("ascii") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def _tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


def check_handshake(method: str, headers: Mapping[str, str]) -> str:
    """Validate an opening handshake (header names lower-case); return the accept value.

    Raises HandshakeError: 405 for a method other than GET, 400 for missing or bad
    Upgrade/Connection/Sec-WebSocket-Key, 426 (with `Sec-WebSocket-Version: 13`) for a
    version other than 13.
    """
    if method != "GET":
        raise HandshakeError(405, "a WebSocket handshake must be a GET", {"Allow": "GET"})
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError(400, "missing 'Upgrade: websocket'")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(400, "missing 'Connection: Upgrade'")
    version = headers.get("sec-websocket-version", "").strip()
    if version != "13":
        raise HandshakeError(
            426,
            f"unsupported Sec-WebSocket-Version {version!r}: this server speaks 13",
            {"Sec-WebSocket-Version": "13"},
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return accept_key(key)


def handshake_response(accept: str, extra: Mapping[str, str] | None = None) -> bytes:
    """The 101 Switching Protocols response."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
        *(f"{name}: {value}" for name, value in (extra or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS: Final = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
                   426: "Upgrade Required", 500: "Internal Server Error",
                   503: "Service Unavailable"}  # fmt: skip


def reject_response(error: HandshakeError) -> bytes:
    """A complete HTTP error response for a refused handshake (the connection closes)."""
    body = (error.message + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {error.status} {_REASONS.get(error.status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- encoding ------------------------------------------------------------------------------
_H16: Final = struct.Struct("!BBH")
_H64: Final = struct.Struct("!BBQ")


def encode_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked (server) frame."""
    head = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((head, n)) + payload
    if n < 65536:
        return _H16.pack(head, 126, n) + payload
    return _H64.pack(head, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """A whole text message in one frame; `payload` must be UTF-8."""
    return encode_frame(OP_TEXT, payload)


def close_frame(code: int = NORMAL, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit a control frame's 125 bytes."""
    data = reason.encode("utf-8")[:123]
    # cutting may split a character: drop the partial one
    data = data.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + data)


def _xor(data: bytes, mask: bytes) -> bytes:
    """Unmask: one big-integer XOR (about 1 GB/s in CPython, no per-byte loop)."""
    n = len(data)
    if n == 0:
        return b""
    repeated = mask * (n // 4 + 1)
    value = int.from_bytes(data, "little") ^ int.from_bytes(repeated[:n], "little")
    return value.to_bytes(n, "little")


def mask_frame(opcode: int, payload: bytes, mask: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """One masked (client) frame; for tests and benchmarks."""
    head = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((head, 0x80 | n))
    elif n < 65536:
        header = _H16.pack(head, 0x80 | 126, n)
    else:
        header = _H64.pack(head, 0x80 | 127, n)
    return header + mask + _xor(payload, mask)


# -- decoding ------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Message:
    """A complete data message (fragments joined)."""

    data: bytes
    text: bool


@dataclass(slots=True, frozen=True)
class Ping:
    data: bytes


@dataclass(slots=True, frozen=True)
class Pong:
    data: bytes


@dataclass(slots=True, frozen=True)
class Close:
    """The peer's close frame: code 1005 when it carried none."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close


def parse_close(payload: bytes) -> Close:
    """Decode a close frame's payload (RFC 6455 §5.5.1, §7.4)."""
    if not payload:
        return Close(NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE and not 3000 <= code < 5000:
        raise ProtocolError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)


class FrameParser:
    """Client frames in, events out; see the module docstring."""

    __slots__ = ("_buf", "_decoder", "_fragments", "_opcode", "_size", "max_message", "need_mask")

    def __init__(self, max_message: int = MAX_MESSAGE, *, need_mask: bool = True) -> None:
        self.max_message = max_message
        #: a server requires masked frames (RFC 6455 §5.1); False parses server frames
        self.need_mask = need_mask
        self._buf = bytearray()
        # the message being reassembled from fragments (opcode 0 when none)
        self._opcode = 0
        self._fragments: list[bytes] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def events(self) -> list[Event]:
        """Every complete event buffered so far (raises at the first violation)."""
        found: list[Event] = []
        while (event := self.next_event()) is not None:
            found.append(event)
        return found

    def next_event(self) -> Event | None:
        """The next complete event, or None until more bytes are fed."""
        while True:
            buf = self._buf
            n = len(buf)
            if n < 2:
                return None
            b0, b1 = buf[0], buf[1]
            if b0 & 0x70:
                raise ProtocolError(PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            masked = b1 & 0x80
            if masked:
                if not self.need_mask:
                    raise ProtocolError(PROTOCOL_ERROR, "masked frame from the server")
            elif self.need_mask:
                raise ProtocolError(PROTOCOL_ERROR, "unmasked frame from a client")
            length = b1 & 0x7F
            head = 2
            if opcode in _CONTROL_OPS:
                if not fin:
                    raise ProtocolError(PROTOCOL_ERROR, "fragmented control frame")
                if length > 125:
                    raise ProtocolError(PROTOCOL_ERROR, "control frame over 125 bytes")
            elif opcode not in _DATA_OPS:
                raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            elif opcode == OP_CONT:
                if not self._opcode:
                    raise ProtocolError(
                        PROTOCOL_ERROR, "continuation frame with nothing to continue"
                    )
            elif self._opcode:
                raise ProtocolError(PROTOCOL_ERROR, "new message before the last one finished")
            if length == 126:
                if n < 4:
                    return None
                length = (buf[2] << 8) | buf[3]
                head = 4
            elif length == 127:
                if n < 10:
                    return None
                length = int.from_bytes(buf[2:10], "big")
                if length >> 63:
                    raise ProtocolError(PROTOCOL_ERROR, "frame length with its top bit set")
                head = 10
            if opcode in _DATA_OPS and self._size + length > self.max_message:
                raise ProtocolError(MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")
            if masked:
                head += 4
            end = head + length
            if n < end:
                return None
            payload = bytes(buf[head:end])
            if masked:
                payload = _xor(payload, bytes(buf[head - 4 : head]))
            del buf[:end]
            if opcode in _CONTROL_OPS:
                if opcode == OP_PING:
                    return Ping(payload)
                if opcode == OP_PONG:
                    return Pong(payload)
                return parse_close(payload)
            event = self._data(opcode, fin, payload)
            if event is not None:
                return event

    def _data(self, opcode: int, fin: int, payload: bytes) -> Message | None:
        if opcode != OP_CONT:
            if fin:  # the common case: a whole message in one frame
                if opcode == OP_TEXT:
                    _check_utf8(payload)
                return Message(payload, opcode == OP_TEXT)
            self._opcode = opcode
            if opcode == OP_TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        decoder = self._decoder
        if decoder is not None:
            try:
                decoder.decode(payload, final=bool(fin))
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_DATA, "text message is not valid UTF-8") from None
        if payload:  # empty fragments are legal: do not let them grow the list unbounded
            self._fragments.append(payload)
            self._size += len(payload)
        if not fin:
            return None
        message = Message(b"".join(self._fragments), self._opcode == OP_TEXT)
        self._opcode = 0
        self._fragments = []
        self._size = 0
        self._decoder = None
        return message


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "text message is not valid UTF-8") from None
