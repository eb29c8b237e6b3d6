"""Signed tokens: JSON Web Tokens (RFC 7519) with HMAC-SHA256 (HS256) only. Pure, no I/O.

A token is `base64url(header) . base64url(claims) . base64url(HMAC-SHA256(secret, the
first two parts))`, base64url without padding. `mint()` makes one; `verify()` checks
one against the secret and the clock and returns its `Grant`, or raises `AuthError`
with a sentence a user can act on. Nothing else escapes `verify()`, whatever the input.

Claims (docs/reference/auth.md):

* `channels` (required): list of channel entries the token may receive, each a
  Redis glob optionally followed by a row filter (`shop.*`,
  `shop.orders?customer_id=eq.42`); see tidings.hub.grants for what they allow.
* `exp` (required): expiry, seconds since the epoch; every token expires.
* `iat`, `nbf` (optional): issued at / not valid before.
* `sub` (optional): who the token is for (shown in logs).
* `admin` (optional, `true`): the HTTP admin endpoints and RESP PUBSUB; publish anywhere.
* `publish` (optional): Redis globs of the channels the token may PUBLISH to.

Only "HS256" is accepted: "none" and every other algorithm are refused before the
signature is looked at, so a token cannot choose how it is checked. Encodings must
be canonical (no padding, no stray bits), so any change to a token's text breaks it.
Times get `LEEWAY` seconds either way for clocks that disagree a little.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from tidings.hub.filters import FilterError
from tidings.hub.grants import ChannelRules, PublishRules

__all__ = [
    "LEEWAY",
    "MIN_SECRET_BYTES",
    "AuthError",
    "Grant",
    "check_secret",
    "mint",
    "verify",
]

#: seconds of clock difference forgiven on `exp` and `nbf`
LEEWAY: Final = 5
#: shortest secret accepted: HS256's key should be at least as long as its output
MIN_SECRET_BYTES: Final = 32
#: longest token accepted (a header, a query string or a RESP argument)
MAX_TOKEN: Final = 16 * 1024
#: most entries in `channels` or `publish`
MAX_ENTRIES: Final = 1024

_HEADER: Final = b'{"alg":"HS256","typ":"JWT"}'
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class AuthError(ValueError):
    """A token that cannot be used; the message says why (never the secret)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows, until `expires` (+ LEEWAY)."""

    channels: ChannelRules
    expires: float
    subject: str | None = None
    admin: bool = False
    publish: PublishRules = field(default_factory=lambda: PublishRules(()))
    issued: float | None = None

    @property
    def valid_until(self) -> float:
        """The moment (epoch seconds) the token stops being accepted."""
        return self.expires + LEEWAY

    def allows_channel(self, name: str) -> bool:
        return self.channels.allows_channel(name)

    def allows_pattern(self, pattern: str) -> bool:
        return self.channels.allows_pattern(pattern)

    def allows_publish(self, channel: str) -> bool:
        return self.admin or self.publish.allows(channel)

    def who(self) -> str:
        """For logs: the subject, or that there is none."""
        return f"sub={self.subject!r}" if self.subject is not None else "no sub"


def check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the auth secret is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
            "(e.g. the output of `openssl rand -base64 48`)"
        )


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise AuthError(f"malformed token: the {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AuthError(f"malformed token: the {what} is not base64url") from None
    if _b64encode(data) != part:  # stray low bits: a second spelling of the same bytes
        raise AuthError(f"malformed token: the {what} is not canonical base64url")
    return data


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def _entries(claims: dict[str, Any], name: str, *, required: bool) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthError(f"the token has no {name!r} claim: it allows nothing")
        return ()
    if not isinstance(value, list) or not all(isinstance(e, str) and e for e in value):
        raise AuthError(f"the {name!r} claim must be a list of non-empty strings")
    if len(value) > MAX_ENTRIES:
        raise AuthError(f"the {name!r} claim has more than {MAX_ENTRIES} entries")
    return tuple(value)


def _time(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthError(f"the token has no {name!r} claim: tokens must expire")
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise AuthError(f"the {name!r} claim must be a number of seconds since the epoch")
    return float(value)


def _grant(claims: dict[str, Any], now: float) -> Grant:
    channels = _entries(claims, "channels", required=True)
    publish = _entries(claims, "publish", required=False)
    expires = _time(claims, "exp", required=True)
    assert expires is not None
    not_before = _time(claims, "nbf", required=False)
    issued = _time(claims, "iat", required=False)
    subject = claims.get("sub")
    if subject is not None and not isinstance(subject, str):
        raise AuthError("the 'sub' claim must be a string")
    admin = claims.get("admin", False)
    if not isinstance(admin, bool):
        raise AuthError("the 'admin' claim must be true or false")
    if now >= expires + LEEWAY:
        raise AuthError(f"the token expired {_ago(now - expires)} ago")
    if not_before is not None and now < not_before - LEEWAY:
        raise AuthError(f"the token is not valid yet (for another {_ago(not_before - now)})")
    try:
        rules = ChannelRules(channels)
    except FilterError as exc:
        raise AuthError(f"the 'channels' claim has a bad entry: {exc}") from None
    return Grant(rules, expires, subject, admin, PublishRules(publish), issued)


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def verify(secret: bytes, token: str | bytes, now: float) -> Grant:
    """The grant of a valid token; raises AuthError saying why a token is refused."""
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("malformed token: it is not ASCII text") from None
    if not token:
        raise AuthError("empty token")
    if len(token) > MAX_TOKEN:
        raise AuthError(f"malformed token: longer than {MAX_TOKEN} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError(
            "malformed token: a JWT has three parts separated by dots (header.claims.signature)"
        )
    header_part, claims_part, signature_part = parts
    try:
        header = orjson.loads(_b64decode(header_part, "header"))
    except orjson.JSONDecodeError:
        raise AuthError("malformed token: the header is not JSON") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token: the header is not a JSON object")
    alg = header.get("alg")
    if alg != "HS256":
        raise AuthError(f"the token is signed with {alg!r}; only 'HS256' is accepted")
    if "crit" in header:
        raise AuthError("the token's header has 'crit' extensions, which are not supported")
    signature = _b64decode(signature_part, "signature")
    expected = _sign(secret, f"{header_part}.{claims_part}".encode("ascii"))
    if not hmac.compare_digest(signature, expected):
        raise AuthError("bad signature: the token was not made with this server's secret")
    try:
        claims = orjson.loads(_b64decode(claims_part, "claims part"))
    except orjson.JSONDecodeError:
        raise AuthError("malformed token: the claims are not JSON") from None
    if not isinstance(claims, dict):
        raise AuthError("malformed token: the claims are not a JSON object")
    return _grant(claims, now)


def mint(
    secret: bytes,
    channels: Iterable[str],
    ttl: float,
    subject: str | None = None,
    admin: bool = False,
    publish: Iterable[str] = (),
    *,
    now: float | None = None,
) -> str:
    """A token for `channels` (and `publish` globs), valid for `ttl` seconds from `now`
    (default: the current time).

    Raises ValueError (AuthError for a bad channel entry) instead of minting a token
    the server would refuse.
    """
    check_secret(secret)
    if now is None:
        now = time.time()
    claims: dict[str, Any] = {
        "channels": list(channels),
        "iat": int(now),
        "exp": math.ceil(now + ttl),
    }
    if subject is not None:
        claims["sub"] = subject
    if admin:
        claims["admin"] = True
    publish = list(publish)
    if publish:
        claims["publish"] = publish
    # refuse here what verify() would refuse (except the time: a past `exp` is for tests)
    _grant(claims, now=min(now, claims["exp"]))
    signing_input = f"{_b64encode(_HEADER)}.{_b64encode(orjson.dumps(claims))}"
    signature = _sign(secret, signing_input.encode("ascii"))
    return f"{signing_input}.{_b64encode(signature)}"
