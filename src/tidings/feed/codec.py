"""The event feed's messages, as bytes: sans-I/O encoders and a decoder.

One message is one kind byte and its fields, big-endian. On a byte stream (the
unix socket between the binlog reader and a worker) each message is preceded
by its length (`>I`); the `frame_*` functions return it framed, because that is
what is written, and `FrameReader` splits a stream back into messages. A
message broker (Redis Streams, NATS: issue #6) would carry the same messages
unframed, one per entry (`frame[4:]`).

    EVENT    'E' flags:B id:Q channel-length:I [ref:Q] channel body
             flags: LIVE (deliver it; else history only), REF (a client's
             PUBLISH: `ref` says which, so the process holding that client
             replies). The body is the event as subscribers get it; row
             filters re-read their fields from it (tidings.hub.filtering).
    MARK     'M' flags:B next-id:Q pos:Q file-length:I file [gtid]
             the stream is at binlog `position` with `next-id` (Hub.mark)
    INDEX    'X' same fields: a mark of the state directory's index
    PUBLISH  'P' ref:Q channel-length:I channel payload: a client's PUBLISH
             for the one process that gives ids (no database source)
    SEED, STATUS, CONFIG, RELOAD: a JSON object after the kind byte (rare messages)
    LISTENING 'L' and nothing else: a worker's listeners are open

Text is UTF-8 with surrogateescape, so a channel name that came from a client
as arbitrary bytes crosses unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

import orjson

from tidings.event import Event
from tidings.source.changes import Position

__all__ = [
    "CONFIG",
    "EVENT",
    "INDEX",
    "LISTENING",
    "LIVE",
    "MARK",
    "PUBLISH",
    "REF",
    "RELOAD",
    "SEED",
    "STATUS",
    "DecodedEvent",
    "DecodedPublish",
    "FeedError",
    "FrameReader",
    "decode_event",
    "decode_json",
    "decode_mark",
    "decode_publish",
    "frame_bare",
    "frame_event",
    "frame_json",
    "frame_mark",
    "frame_publish",
]

EVENT: Final = ord("E")
MARK: Final = ord("M")
INDEX: Final = ord("X")
PUBLISH: Final = ord("P")
SEED: Final = ord("S")
STATUS: Final = ord("T")
CONFIG: Final = ord("C")
RELOAD: Final = ord("R")
LISTENING: Final = ord("L")

#: EVENT flags
LIVE: Final = 1
REF: Final = 2
#: MARK flag: a GTID state follows the file name
_GTID: Final = 1

# each with the frame length in front: >I, then the kind byte
_EVENT = struct.Struct(">IBBQI")
_EVENT_REF = struct.Struct(">IBBQIQ")
_MARK = struct.Struct(">IBBQQI")
_PUBLISH = struct.Struct(">IBQI")
_LENGTH = struct.Struct(">I")
# the same fields without the frame length, for decoding a message
_EVENT_FIELDS = struct.Struct(">BBQI")
_REF = struct.Struct(">Q")
_MARK_FIELDS = struct.Struct(">BBQQI")
_PUBLISH_FIELDS = struct.Struct(">BQI")

#: a frame longer than this is a corrupt stream, not a message
MAX_FRAME: Final = 1 << 30


class FeedError(ValueError):
    """A message that does not decode: the stream is corrupt or from another version."""


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


# -- encoding ---------------------------------------------------------------------------------
def frame_event(event: Event, live: bool, ref: int | None = None) -> bytes:
    channel = _text(event.channel)
    flags = LIVE if live else 0
    if ref is None:
        size = _EVENT.size - 4 + len(channel) + len(event.body)
        head = _EVENT.pack(size, EVENT, flags, event.id, len(channel))
    else:
        size = _EVENT_REF.size - 4 + len(channel) + len(event.body)
        head = _EVENT_REF.pack(size, EVENT, flags | REF, event.id, len(channel), ref)
    return b"".join((head, channel, event.body))


def frame_mark(next_id: int, position: Position, kind: int = MARK) -> bytes:
    file = _text(position.file)
    gtid = b"" if position.gtid is None else _text(position.gtid)
    flags = 0 if position.gtid is None else _GTID
    size = _MARK.size - 4 + len(file) + len(gtid)
    return b"".join((_MARK.pack(size, kind, flags, next_id, position.pos, len(file)), file, gtid))


def frame_publish(ref: int, channel: str, payload: bytes) -> bytes:
    name = _text(channel)
    size = _PUBLISH.size - 4 + len(name) + len(payload)
    return b"".join((_PUBLISH.pack(size, PUBLISH, ref, len(name)), name, payload))


def frame_bare(kind: int) -> bytes:
    """A message that is only its kind (LISTENING)."""
    return _LENGTH.pack(1) + bytes((kind,))


def frame_json(kind: int, value: Any) -> bytes:
    body = orjson.dumps(value)
    return b"".join((_LENGTH.pack(len(body) + 1), bytes((kind,)), body))


# -- decoding ---------------------------------------------------------------------------------
@dataclass(slots=True)
class DecodedEvent:
    event: Event
    live: bool
    ref: int | None


@dataclass(slots=True)
class DecodedPublish:
    ref: int
    channel: str
    payload: bytes


def decode_event(message: bytes) -> DecodedEvent:
    try:
        _, flags, event_id, length = _EVENT_FIELDS.unpack_from(message)
        at = _EVENT_FIELDS.size
        ref = None
        if flags & REF:
            (ref,) = _REF.unpack_from(message, at)
            at += 8
        end = at + length
        if end > len(message):
            raise FeedError("event channel runs past the message")
        channel = message[at:end].decode("utf-8", "surrogateescape")
    except struct.error as exc:
        raise FeedError(f"truncated event message: {exc}") from None
    return DecodedEvent(Event(event_id, channel, message[end:]), bool(flags & LIVE), ref)


def decode_mark(message: bytes) -> tuple[int, Position]:
    """(next id, position) of a MARK or INDEX message."""
    try:
        _, flags, next_id, pos, length = _MARK_FIELDS.unpack_from(message)
    except struct.error as exc:
        raise FeedError(f"truncated mark message: {exc}") from None
    at = _MARK_FIELDS.size
    end = at + length
    if end > len(message):
        raise FeedError("mark file name runs past the message")
    file = message[at:end].decode("utf-8", "surrogateescape")
    gtid = message[end:].decode("utf-8", "surrogateescape") if flags & _GTID else None
    return next_id, Position(file, pos, gtid)


def decode_publish(message: bytes) -> DecodedPublish:
    try:
        _, ref, length = _PUBLISH_FIELDS.unpack_from(message)
    except struct.error as exc:
        raise FeedError(f"truncated publish message: {exc}") from None
    at = _PUBLISH_FIELDS.size
    end = at + length
    if end > len(message):
        raise FeedError("publish channel runs past the message")
    channel = message[at:end].decode("utf-8", "surrogateescape")
    return DecodedPublish(ref, channel, message[end:])


def decode_json(message: bytes) -> Any:
    try:
        return orjson.loads(message[1:])
    except orjson.JSONDecodeError as exc:
        raise FeedError(f"message {chr(message[0])!r} is not JSON: {exc}") from None


class FrameReader:
    """Splits a byte stream into messages (each frame's length prefix removed)."""

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    @property
    def pending(self) -> int:
        """Bytes held: the start of a frame not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by `data`, in order; raises FeedError for a bad length."""
        buf = self._buf
        buf += data
        messages: list[bytes] = []
        end = len(buf)
        at = 0
        with memoryview(buf) as view:
            while end - at >= 4:
                (size,) = _LENGTH.unpack_from(view, at)
                if not 0 < size <= self.max_frame:
                    raise FeedError(f"frame length {size} is not a message")
                stop = at + 4 + size
                if stop > end:
                    break
                messages.append(bytes(view[at + 4 : stop]))
                at = stop
        del buf[:at]
        return messages
