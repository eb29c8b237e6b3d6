"""WebSocket frames (tidings.wire.websocket.FrameParser): a client's bytes after the
handshake, cut into reads; the first byte also picks the side (server or client).
"""

from __future__ import annotations

from fuzz._pieces import reads
from tidings.wire.websocket import Close, FrameParser, Message, ProtocolError

ERRORS = (ProtocolError,)

MAX_MESSAGE = 1024


def fuzz_one(data: bytes) -> None:
    # odd first byte: parse as a client parses server frames (unmasked)
    parser = FrameParser(MAX_MESSAGE, need_mask=not (data[:1] and data[0] & 1))
    for chunk in reads(data):
        parser.feed(chunk)
        while (event := parser.next_event()) is not None:
            if isinstance(event, Message):
                assert len(event.data) <= MAX_MESSAGE
                if event.text:
                    event.data.decode("utf-8")  # text messages are valid UTF-8
            elif isinstance(event, Close):
                assert event.code == 1005 or 1000 <= event.code < 5000
        # at most one frame's header, payload (bounded) and the read after it
        assert parser.buffered <= 14 + MAX_MESSAGE + len(chunk)
