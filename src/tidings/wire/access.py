"""Tokens on the wire: one `Authority` per listener turns tokens into grants (tidings.auth)
and tells a connection when its grant runs out; the refusal texts every protocol shares.

A connection checks its grant when a client subscribes, never per delivered event
(tidings.hub.grants); when the grant's token expires, the connection's timer ends its
subscriptions (RESP and SSE close, WebSocket closes with 1008) unless a fresh token
replaced it first. Tokens and the secret are never logged.

Guessing: after `max_failures` refused tokens from one address, that address's
next attempts are refused unchecked for a while (1 s, doubling with each further
failure, at most 60 s), on every protocol at once: the daemon shares one
Authority between its listeners. A good token clears the address's record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from tidings.auth import AuthError, Grant, verify

__all__ = [
    "REALM",
    "AuthError",
    "Authority",
    "Throttle",
    "bearer_token",
    "refusal",
    "uncovered",
]

#: the WWW-Authenticate realm of HTTP 401 answers
REALM: Final = "tidings"


class Throttle:
    """Failed token attempts per address, and how long each address must wait."""

    __slots__ = ("_hosts", "clock", "max_failures", "max_hosts", "refused")

    FIRST_DELAY: Final = 1.0
    MAX_DELAY: Final = 60.0

    def __init__(
        self,
        max_failures: int,
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.clock = clock
        #: addresses remembered at most (the one that failed longest ago is forgotten first)
        self.max_hosts = max_hosts
        #: host -> [failures, refused until (clock), last failure (clock)]
        self._hosts: dict[str, list[float]] = {}
        #: attempts refused unchecked because their address was waiting
        self.refused = 0

    def check(self, host: str) -> None:
        """Raise AuthError if `host` must still wait."""
        entry = self._hosts.get(host)
        if entry is not None:
            wait = entry[1] - self.clock()
            if wait > 0:
                self.refused += 1
                raise AuthError(
                    f"too many refused tokens from {host}: try again in {max(1, round(wait))} s"
                )

    def failed(self, host: str) -> None:
        if self.max_failures <= 0:
            return
        now = self.clock()
        entry = self._hosts.get(host)
        if entry is None:
            if len(self._hosts) >= self.max_hosts:
                oldest = min(self._hosts, key=lambda h: self._hosts[h][2])
                del self._hosts[oldest]
            entry = self._hosts[host] = [0, 0.0, now]
        entry[0] += 1
        entry[2] = now
        over = entry[0] - self.max_failures
        if over >= 0:
            entry[1] = now + min(self.FIRST_DELAY * 2**over, self.MAX_DELAY)

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)


class Authority:
    """The secret, the clock and the failure throttle shared by the listeners."""

    __slots__ = ("clock", "failures", "secret", "throttle")

    def __init__(
        self,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        throttle: Throttle | None = None,
    ) -> None:
        #: replaced on a reload that rotates the secret (tidings.reload)
        self.secret = secret
        self.clock = clock
        self.throttle = throttle or Throttle(10)
        #: tokens refused (bad, expired, foreign), for metrics
        self.failures = 0

    def __repr__(self) -> str:  # never the secret
        return "<Authority>"

    def verify(self, token: str | bytes, host: str = "?") -> Grant:
        """The token's grant; raises AuthError with the reason. Failures count against
        `host` (the client's address): see Throttle."""
        throttle = self.throttle
        throttle.check(host)
        try:
            grant = verify(self.secret, token, self.clock())
        except AuthError:
            self.failures += 1
            throttle.failed(host)
            raise
        throttle.succeeded(host)
        return grant

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
