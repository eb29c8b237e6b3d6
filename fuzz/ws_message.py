"""The JSON messages WebSocket clients send (tidings.wire.ws_messages.parse_message).

The first byte says whether the message came as text (even) or binary (odd).
"""

from __future__ import annotations

import orjson

from tidings.wire.ws_messages import MessageError, parse_message

ERRORS = (MessageError,)


def fuzz_one(data: bytes) -> None:
    try:
        command = parse_message(data[1:], not (data[:1] and data[0] & 1))
    except MessageError as exc:
        orjson.dumps(exc.reply)  # the error must be sendable
        raise
    assert command.op in ("subscribe", "unsubscribe", "ping", "auth")
    assert command.since is None or type(command.since) is int
    orjson.dumps({"op": "subscribed", "channel": command.channel})  # the reply too
