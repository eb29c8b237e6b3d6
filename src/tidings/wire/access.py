"""Tokens on the wire: one `Authority` per listener turns tokens into grants (tidings.auth)
and tells a connection when its grant runs out; the refusal texts every protocol shares.

A connection checks its grant when a client subscribes, never per delivered event
(tidings.hub.grants); when the grant's token expires, the connection's timer ends its
subscriptions (RESP and SSE close, WebSocket closes with 1008) unless a fresh token
replaced it first. Tokens and the secret are never logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from tidings.auth import AuthError, Grant, verify

__all__ = ["REALM", "AuthError", "Authority", "bearer_token", "refusal", "uncovered"]

#: the WWW-Authenticate realm of HTTP 401 answers
REALM: Final = "tidings"


class Authority:
    """The secret and the clock of one listener."""

    __slots__ = ("_secret", "clock")

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.clock = clock

    def __repr__(self) -> str:  # never the secret
        return "<Authority>"

    def verify(self, token: str | bytes) -> Grant:
        """The token's grant; raises AuthError with the reason."""
        return verify(self._secret, token, self.clock())

    def watch(
        self, loop: asyncio.AbstractEventLoop, grant: Grant, on_expiry: Callable[[], None]
    ) -> asyncio.TimerHandle:
        """Call `on_expiry` when `grant` stops being valid (cancel the handle to forget it)."""
        return loop.call_later(max(0.0, grant.valid_until - self.clock()), on_expiry)


def refusal(name: str, *, pattern: bool = False) -> str:
    kind = "pattern" if pattern else "channel"
    return f"this token does not allow {kind} {name!r}"


def uncovered(grant: Grant, channels: Iterable[str], patterns: Iterable[str] = ()) -> str | None:
    """The first subscription `grant` does not allow, as a refusal; None if all are allowed.

    A connection that changes its token keeps its subscriptions only if the new token
    allows every one of them.
    """
    for name in channels:
        if not grant.allows_channel(name):
            return refusal(name)
    for name in patterns:
        if not grant.allows_pattern(name):
            return refusal(name, pattern=True)
    return None


def bearer_token(headers: Mapping[str, str], query: Mapping[str, list[str]]) -> str | None:
    """The token of an HTTP request: `Authorization: Bearer T`, else `?token=T`.

    Raises AuthError for an Authorization header of another scheme.
    """
    header = headers.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        return token.strip()
    tokens = query.get("token")
    return tokens[-1] if tokens else None
