"""The token codec (tidings.auth): byte-level checks, PyJWT interoperability, every refusal
with its reason, and hypothesis properties (round trip, tamper evidence, no stray
exceptions on arbitrary input)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.auth import LEEWAY, AuthError, Grant, check_secret, mint, verify

SECRET = b"s" * 32 + b"-a test secret, long enough"
OTHER = b"o" * 48
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def signed(claims: Any, header: Any = None, secret: bytes = SECRET) -> str:
    """A token over exactly these JSON values, correctly signed (to test the claims checks)."""
    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"} if header is None else header))
    body = b64(orjson.dumps(claims))
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def refused(token: str | bytes, now: float = NOW, secret: bytes = SECRET) -> str:
    with pytest.raises(AuthError) as info:
        verify(secret, token, now)
    return str(info.value)


# -- the bytes ---------------------------------------------------------------------------------
def test_rfc_7515_example_signature_verifies_then_lacks_channels() -> None:
    # RFC 7515 appendix A.1: an HS256 JWS with its key. Our HMAC and base64url agree with
    # the RFC byte for byte (the signature is accepted); its claims grant nothing here.
    key = unb64(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
    )
    token = (
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
        ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    )
    assert (
        refused(token, now=0, secret=key) == "the token has no 'channels' claim: it allows nothing"
    )
    assert refused(token, now=0, secret=key[:-1]).startswith("bad signature")


def test_minted_token_bytes() -> None:
    token = mint(SECRET, ["shop.orders?customer_id=eq.42"], 3600, "bob", now=NOW + 0.5)
    head, body, signature = token.split(".")
    assert "=" not in token
    assert unb64(head) == b'{"alg":"HS256","typ":"JWT"}'
    assert orjson.loads(unb64(body)) == {
        "channels": ["shop.orders?customer_id=eq.42"],
        "iat": int(NOW),
        "exp": int(NOW) + 3601,  # ceil(now + ttl): never shorter than asked
        "sub": "bob",
    }
    assert unb64(signature) == hmac.new(SECRET, f"{head}.{body}".encode(), "sha256").digest()
    admin = orjson.loads(unb64(mint(SECRET, [], 60, admin=True, publish=["chat.*"]).split(".")[1]))
    assert admin["admin"] is True and admin["publish"] == ["chat.*"] and admin["channels"] == []


def test_verify_gives_the_grant() -> None:
    token = mint(SECRET, ["shop.*", "crm.people?id=eq.7"], 60, "svc", publish=["chat.*"], now=NOW)
    grant = verify(SECRET, token, NOW + 30)
    assert isinstance(grant, Grant)
    assert (grant.subject, grant.admin, grant.expires, grant.issued) == (
        "svc",
        False,
        NOW + 60,
        NOW,
    )
    assert grant.channels.entries == ("shop.*", "crm.people?id=eq.7")
    assert grant.allows_channel("shop.orders") and not grant.allows_channel("crm.people")
    assert grant.allows_publish("chat.room1") and not grant.allows_publish("shop.orders")
    assert verify(SECRET, token.encode(), NOW).subject == "svc"  # bytes as RESP gives them


# -- PyJWT, the library users know ---------------------------------------------------------------
def test_pyjwt_tokens_verify_here() -> None:
    now = time.time()
    claims = {"channels": ["shop.*"], "exp": int(now) + 60, "iat": int(now), "sub": "u1"}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    grant = verify(SECRET, token, now)
    assert grant.subject == "u1" and grant.allows_pattern("shop.*")
    # extra registered and private claims are ignored; nbf in the past is fine
    token = jwt.encode(
        {**claims, "nbf": int(now) - 10, "iss": "me", "aud": "x", "x": [1]},
        SECRET,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    assert verify(SECRET, token, now).subject == "u1"


def test_our_tokens_decode_with_pyjwt() -> None:
    token = mint(SECRET, ["shop.orders?status=in.(new,paid)"], 120, "u2", admin=True)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["channels"] == ["shop.orders?status=in.(new,paid)"]
    assert decoded["sub"] == "u2" and decoded["admin"] is True
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, OTHER, algorithms=["HS256"])
    expired = mint(SECRET, ["x"], -60)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, SECRET, algorithms=["HS256"])


# -- refusals, each with its reason ----------------------------------------------------------------
def test_wrong_secret() -> None:
    token = mint(OTHER, ["shop.*"], 60, now=NOW)
    assert refused(token) == "bad signature: the token was not made with this server's secret"


def test_alg_none_and_every_other_algorithm_are_refused() -> None:
    claims = {"channels": ["*"], "exp": NOW + 60}
    none = jwt.encode(claims, None, algorithm="none")
    assert refused(none) == "the token is signed with 'none'; only 'HS256' is accepted"
    hs512 = jwt.encode(claims, SECRET * 2, algorithm="HS512")
    assert refused(hs512) == "the token is signed with 'HS512'; only 'HS256' is accepted"
    # the classic confusion: an RS256 header over an HMAC made with a public key
    assert "only 'HS256'" in refused(signed(claims, {"alg": "RS256", "typ": "JWT"}))
    assert "only 'HS256'" in refused(signed(claims, {"typ": "JWT"}))
    assert "only 'HS256'" in refused(signed(claims, {"alg": "hs256"}))
    assert "'crit'" in refused(signed(claims, {"alg": "HS256", "crit": ["exp"]}))


def test_expiry_with_leeway() -> None:
    token = mint(SECRET, ["x"], 60, now=NOW)
    assert verify(SECRET, token, NOW + 60 + LEEWAY - 0.01).expires == NOW + 60
    assert refused(token, NOW + 60 + LEEWAY) == f"the token expired {60 + LEEWAY - 60}s ago"
    assert refused(token, NOW + 3 * 3600) == "the token expired 2h ago"
    assert refused(token, NOW + 600) == "the token expired 9m ago"


def test_not_yet_valid() -> None:
    token = signed({"channels": ["x"], "exp": NOW + 600, "nbf": NOW + 300})
    assert refused(token) == "the token is not valid yet (for another 5m)"
    assert verify(SECRET, token, NOW + 300 - LEEWAY).expires == NOW + 600


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": NOW + 60}, "the token has no 'channels' claim: it allows nothing"),
        ({"channels": "shop.*", "exp": NOW + 60}, "'channels' claim must be a list of non-empty"),
        ({"channels": [""], "exp": NOW + 60}, "'channels' claim must be a list of non-empty"),
        ({"channels": [1], "exp": NOW + 60}, "'channels' claim must be a list of non-empty"),
        ({"channels": ["x"] * 1025, "exp": NOW + 60}, "more than 1024 entries"),
        ({"channels": ["x"]}, "the token has no 'exp' claim: tokens must expire"),
        ({"channels": ["x"], "exp": "soon"}, "'exp' claim must be a number"),
        ({"channels": ["x"], "exp": True}, "'exp' claim must be a number"),
        ({"channels": ["x"], "exp": NOW + 60, "nbf": "x"}, "'nbf' claim must be a number"),
        ({"channels": ["x"], "exp": NOW + 60, "iat": []}, "'iat' claim must be a number"),
        ({"channels": ["x"], "exp": NOW + 60, "sub": 7}, "'sub' claim must be a string"),
        ({"channels": ["x"], "exp": NOW + 60, "admin": "yes"}, "'admin' claim must be true"),
        ({"channels": ["x"], "exp": NOW + 60, "publish": "x"}, "'publish' claim must be a list"),
        (
            {"channels": ["shop.orders?customer_id=42"], "exp": NOW + 60},
            "the 'channels' claim has a bad entry: ",
        ),
        ([1, 2], "malformed token: the claims are not a JSON object"),
    ],
)
def test_bad_claims(claims: Any, reason: str) -> None:
    assert reason in refused(signed(claims))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty token"),
        ("abc", "a JWT has three parts"),
        ("a.b.c.d", "a JWT has three parts"),
        ("é.b.c", "the header is not base64url"),
        ("a+b.b.c", "the header is not base64url"),
        ("abcde.b.c", "the header is not base64url"),  # 5 characters: impossible length
        ("YQ==.b.c", "the header is not base64url"),  # padding is not allowed
        ("YR.b.c", "the header is not canonical base64url"),  # stray low bits
        (b64(b"not json") + ".b.c", "the header is not JSON"),
        (b64(b"[1]") + ".b.c", "the header is not a JSON object"),
        ("x" * 20000, "longer than 16384 characters"),
    ],
)
def test_malformed(token: str, reason: str) -> None:
    assert reason in refused(token)


def test_malformed_after_a_valid_header() -> None:
    head = b64(b'{"alg":"HS256"}')
    signature = b64(hmac.new(SECRET, f"{head}.{b64(b'nope')}".encode(), "sha256").digest())
    assert refused(f"{head}.{b64(b'nope')}.{signature}") == (
        "malformed token: the claims are not JSON"
    )
    assert "signature is not base64url" in refused(f"{head}.e30.***")
    assert refused(b"\xff.a.b") == "malformed token: it is not ASCII text"


def test_secrets_and_mint_refuse_what_verify_would() -> None:
    with pytest.raises(ValueError, match="is 31 bytes; use at least 32"):
        check_secret(b"x" * 31)
    check_secret(b"x" * 32)
    with pytest.raises(ValueError, match="at least 32"):
        mint(b"short", ["x"], 60)
    with pytest.raises(AuthError, match="bad entry"):
        mint(SECRET, ["shop.orders?nonsense"], 60)
    with pytest.raises(AuthError, match="non-empty strings"):
        mint(SECRET, [""], 60)


# -- properties ------------------------------------------------------------------------------------
_names = st.text(st.sampled_from("abcxyz._-*"), min_size=1, max_size=12).filter(
    lambda n: "?" not in n
)
_filters = st.sampled_from(["", "?id=eq.1", "?status=in.(new,paid)", "?n=gte.2&n=lt.9"])
_entries = st.lists(st.builds(lambda n, f: n + f, _names, _filters), max_size=5)


@given(
    channels=_entries,
    ttl=st.integers(1, 10**7),
    subject=st.none() | st.text(max_size=20),
    admin=st.booleans(),
    publish=st.lists(_names, max_size=3),
    now=st.floats(0, 4e9),
)
def test_mint_verify_round_trip(
    channels: list[str],
    ttl: int,
    subject: str | None,
    admin: bool,
    publish: list[str],
    now: float,
) -> None:
    token = mint(SECRET, channels, ttl, subject, admin, publish, now=now)
    grant = verify(SECRET, token, now)
    assert grant.channels.entries == tuple(channels)
    assert grant.publish.entries == tuple(publish)
    assert (grant.subject, grant.admin) == (subject, admin)
    assert now + ttl <= grant.expires < now + ttl + 1
    assert grant.valid_until == grant.expires + LEEWAY
    with pytest.raises(AuthError):
        verify(OTHER, token, now)


_TOKEN = mint(SECRET, ["shop.orders?customer_id=eq.42", "crm.*"], 3600, "who", now=NOW)


@given(st.data())
def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(_TOKEN) - 1), label="index")
    char = data.draw(st.characters(codec="ascii").filter(lambda c: c != _TOKEN[index]))
    tampered = _TOKEN[:index] + char + _TOKEN[index + 1 :]
    with pytest.raises(AuthError):
        verify(SECRET, tampered, NOW)


def test_every_single_character_change_in_the_alphabet_is_refused() -> None:
    # exhaustive over the characters a token can hold: this includes the changes to a
    # part's last character that only touch its unused low bits (a non-canonical spelling)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.= "
    for index, current in enumerate(_TOKEN):
        for char in alphabet.replace(current, ""):
            tampered = _TOKEN[:index] + char + _TOKEN[index + 1 :]
            with pytest.raises(AuthError):
                verify(SECRET, tampered, NOW)


@given(st.data())
def test_any_single_byte_change_is_refused(data: st.DataObject) -> None:
    raw = _TOKEN.encode()
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]))
    with pytest.raises(AuthError):
        verify(SECRET, raw[:index] + bytes([byte]) + raw[index + 1 :], NOW)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_arbitrary_input_only_ever_raises_auth_error(token: str | bytes) -> None:
    with contextlib.suppress(AuthError):
        verify(SECRET, token, NOW)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_claims = (
    st.fixed_dictionaries(
        {},
        optional={
            "channels": _json | st.lists(st.text(max_size=30), max_size=4),
            "exp": _json,
            "nbf": _json,
            "iat": _json,
            "sub": _json,
            "admin": _json,
            "publish": _json | st.lists(st.text(max_size=30), max_size=4),
        },
    )
    | _json
)


@settings(max_examples=300)
@given(claims=_claims, header=st.none() | _json)
def test_signed_arbitrary_claims_give_a_grant_or_auth_error(claims: Any, header: Any) -> None:
    try:
        token = signed(claims, header)
    except (TypeError, orjson.JSONEncodeError):  # NaN, infinity: not JSON
        return
    try:
        grant = verify(SECRET, token, NOW)
    except AuthError:
        return
    assert isinstance(grant, Grant) and grant.valid_until > NOW
