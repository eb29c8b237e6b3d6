"""Bearer tokens (tidings.auth.verify), then what the grant allows.

The first byte picks the layout. Even: the rest is a token as a client sends it.
Odd: the rest is a JWT header and claims (split at the first NUL) that the target
signs with the server's secret, so that mutated claims and the channel rules they
make get past the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from tidings.auth import AuthError, verify

ERRORS = (AuthError,)

SECRET = b"fuzzing secret of at least 32 bytes"
NOW = 1_764_190_000.0
NAMES = ("shop.orders", "shop.orders?customer_id=eq.42", "shop.*", "jobs", "\udcff", "")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(header: bytes, claims: bytes) -> str:
    signing = f"{_b64(header)}.{_b64(claims)}"
    signature = hmac.new(SECRET, signing.encode("ascii"), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def fuzz_one(data: bytes) -> None:
    if data[:1] and data[0] & 1:
        header, _, claims = data[1:].partition(b"\0")
        grant = verify(SECRET, signed(header, claims), NOW)
    else:
        grant = verify(SECRET, data[1:], NOW)
    for name in NAMES:
        grant.allows_channel(name)
        grant.allows_pattern(name)
        grant.allows_publish(name)
    grant.who()
