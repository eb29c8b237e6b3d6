"""The JSON messages a WebSocket client sends, validated: pure, no connection state.

`parse_message(data, text)` turns one WebSocket message into a `Command`
(subscribe, unsubscribe, ping or auth) or raises `MessageError`, whose `reply` is
the `{"op":"error",...}` object to send back (the connection stays up). What
needs the server's state is checked by the session (tidings.wire.ws_session):
whether a resume id is ahead of the stream, the token of an auth (whose checks
depend on whether the server has an auth secret), the token's grants.
docs/reference/websocket.md describes the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from tidings.hub.filtering import split
from tidings.hub.filters import FilterError

__all__ = ["Command", "MessageError", "parse_message"]


@dataclass(frozen=True, slots=True)
class Command:
    op: Literal["subscribe", "unsubscribe", "ping", "auth"]
    #: the channel name as sent (filters included); "" for ping and auth
    channel: str = ""
    #: subscribe: resume after this event id; None: live from now
    since: int | None = None
    #: auth: the "token" value as sent, of any JSON type (the session checks it)
    token: object = None


class MessageError(Exception):
    """A message that cannot be acted on; `reply` says why, naming the channel if any."""

    def __init__(self, message: str, channel: str | None = None) -> None:
        super().__init__(message)
        self.reply: dict[str, Any] = {"op": "error", "message": message}
        if channel is not None:
            self.reply["channel"] = channel


def parse_message(data: bytes, text: bool) -> Command:
    """One client message -> Command; raises MessageError."""
    if not text:
        raise MessageError("binary messages are not understood: send JSON in text messages")
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"invalid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise MessageError('expected a JSON object such as {"op":"subscribe","channel":"db.table"}')
    op = request.get("op")
    if op == "ping":
        return Command("ping")
    if op == "unsubscribe":
        return Command("unsubscribe", _channel(request))
    if op == "auth":
        return Command("auth", token=request.get("token"))
    if op != "subscribe":
        raise MessageError(f"unknown op {op!r}: use subscribe, unsubscribe, ping or auth")
    channel = _channel(request)
    since = request.get("since")
    if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
        raise MessageError('"since" must be an integer event id')
    try:
        split(channel)
    except FilterError as exc:
        raise MessageError(str(exc), channel) from None
    return Command("subscribe", channel, since)


def _channel(request: dict[str, Any]) -> str:
    channel = request.get("channel")
    if not isinstance(channel, str) or not channel:
        raise MessageError('"channel" must be a non-empty string such as "shop.orders"')
    return channel
