"""The sans-I/O MySQL client protocol, on byte literals: no server, no event loop."""

from __future__ import annotations

import functools
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.source import mysqlwire as wire

# A real greeting from MariaDB 10.11 (captured from the test sandbox).
MARIADB_GREETING = (
    b"\n5.5.5-10.11.19-MariaDB-0+deb12u1-log\x00\x05\x00\x00\x00\\Vy#;Ar=\x00\xfe\xf7\xe0"
    b"\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00v^Rar8_VpT04\x00"
    b"mysql_native_password\x00"
)
MARIADB_NONCE = b"\\Vy#;Ar=v^Rar8_VpT04"

# A MySQL 8.0 greeting, laid out field by field.
MYSQL_NONCE = b"abcdefgh" + b"ijklmnopqrst"
MYSQL_GREETING = (
    b"\x0a"
    + b"8.0.36\x00"
    + struct.pack("<I", 42)  # connection id
    + MYSQL_NONCE[:8]
    + b"\x00"
    + struct.pack("<H", 0xFFFF)  # capabilities, low half (CLIENT_MYSQL set)
    + b"\xff"  # charset utf8mb4_0900_ai_ci
    + struct.pack("<H", 0x0002)  # status: autocommit
    + struct.pack("<H", 0xDFFF)  # capabilities, high half
    + b"\x15"  # auth data length: 21
    + bytes(10)
    + MYSQL_NONCE[8:]
    + b"\x00"
    + b"caching_sha2_password\x00"
)


def packet(payload: bytes, seq: int) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq,)) + payload


def ok_packet(affected: int = 0, insert_id: int = 0, status: int = 2, info: bytes = b"") -> bytes:
    return (
        b"\x00"
        + wire.lenenc_int(affected)
        + wire.lenenc_int(insert_id)
        + struct.pack("<HH", status, 0)
        + info
    )


def err_packet(code: int, state: str, message: str) -> bytes:
    return b"\xff" + struct.pack("<H", code) + b"#" + state.encode() + message.encode()


def lenenc_str(value: bytes) -> bytes:
    return wire.lenenc_int(len(value)) + value


def column_packet(name: str, type_: int = 253, table: str = "t") -> bytes:
    return (
        lenenc_str(b"def")
        + lenenc_str(b"db")
        + lenenc_str(table.encode())
        + lenenc_str(table.encode())
        + lenenc_str(name.encode())
        + lenenc_str(name.encode())
        + b"\x0c"
        + struct.pack("<HIBHB", 45, 1024, type_, 0, 0)
        + b"\x00\x00"
    )


EOF_PACKET = b"\xfe\x00\x00\x02\x00"


# -- framing -----------------------------------------------------------------------------------
def test_splitter_returns_whole_payloads_and_tracks_sequence() -> None:
    splitter = wire.PacketSplitter()
    stream = packet(b"hello", 0) + packet(b"", 1) + packet(b"world!", 2)
    assert splitter.feed(stream[:3]) == []
    assert splitter.feed(stream[3:12]) == [b"hello"]
    assert splitter.seq == 0
    assert splitter.feed(stream[12:]) == [b"", b"world!"]
    assert splitter.seq == 2
    assert splitter.buffered == 0


def test_frame_round_trip_and_sequence_wraps() -> None:
    data, nxt = wire.frame(b"abc", 255)
    assert data == b"\x03\x00\x00\xffabc"
    assert nxt == 0
    assert wire.PacketSplitter().feed(data) == [b"abc"]


@pytest.mark.parametrize("extra", [0, 1, wire.MAX_PAYLOAD])
def test_multi_packet_payload(extra: int) -> None:
    """Payloads of 16 MiB - 1 and more span packets; a multiple of the maximum ends empty."""
    payload = bytes(range(256)) * ((wire.MAX_PAYLOAD + extra) // 256 + 1)
    payload = payload[: wire.MAX_PAYLOAD + extra]
    data, nxt = wire.frame(payload, 3)
    npackets = len(payload) // wire.MAX_PAYLOAD + 1
    assert nxt == 3 + npackets
    assert len(data) == len(payload) + 4 * npackets
    # the last packet header: shorter than the maximum (empty for an exact multiple)
    last_len = len(payload) % wire.MAX_PAYLOAD
    assert data[-(last_len + 4) : -last_len or None][:3] == last_len.to_bytes(3, "little")
    splitter = wire.PacketSplitter()
    out: list[bytes] = []
    for start in range(0, len(data), 1 << 20):  # as a socket would deliver it
        out += splitter.feed(data[start : start + (1 << 20)])
    assert out == [payload]
    assert splitter.seq == (3 + npackets - 1) & 0xFF
    assert splitter.buffered == 0


def test_exact_maximum_is_split_in_two() -> None:
    data, _ = wire.frame(b"x" * wire.MAX_PAYLOAD, 0)
    assert data[:4] == b"\xff\xff\xff\x00"
    assert data[-4:] == b"\x00\x00\x00\x01"  # the empty terminating packet


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=15),
)
def test_split_anywhere_gives_the_same_payloads(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(packet(p, i & 0xFF) for i, p in enumerate(payloads))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    splitter = wire.PacketSplitter()
    out: list[bytes] = []
    prev = 0
    for point in [*points, len(stream)]:
        out += splitter.feed(stream[prev:point])
        prev = point
    assert out == payloads
    assert splitter.buffered == 0


# A smaller fixed multi-packet stream for the hypothesis test: one 16 MiB + 10 payload
# between small ones, cut at random points.
_BIG = b"\xab" * (wire.MAX_PAYLOAD + 10)
_BIG_STREAM = packet(b"before", 0) + wire.frame(_BIG, 1)[0] + packet(b"after", 3)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_BIG_STREAM)), max_size=6))
def test_split_multi_packet_anywhere(cuts: list[int]) -> None:
    splitter = wire.PacketSplitter()
    out: list[bytes] = []
    prev = 0
    for point in [*sorted(set(cuts)), len(_BIG_STREAM)]:
        out += splitter.feed(_BIG_STREAM[prev:point])
        prev = point
    assert len(out) == 3
    assert out[0] == b"before" and out[2] == b"after"
    assert out[1] == _BIG


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lenenc_int_round_trip(value: int) -> None:
    encoded = wire.lenenc_int(value)
    assert wire.read_lenenc_int(encoded + b"tail", 0) == (value, len(encoded))


def test_lenenc_null() -> None:
    assert wire.read_lenenc_int(b"\xfb", 0) == (None, 1)
    with pytest.raises(wire.ProtocolError):
        wire.read_lenenc_int(b"\xff", 0)


# -- greeting and authentication -----------------------------------------------------------------
def test_parse_mariadb_greeting() -> None:
    g = wire.parse_greeting(MARIADB_GREETING)
    assert g.server_version == "5.5.5-10.11.19-MariaDB-0+deb12u1-log"
    assert g.connection_id == 5
    assert g.auth_plugin == "mysql_native_password"
    assert g.auth_data == MARIADB_NONCE
    assert g.is_mariadb
    assert not g.capabilities & wire.CLIENT_MYSQL  # MariaDB's "extended capabilities follow"
    assert g.mariadb_capabilities == 0x1D
    assert g.capabilities & wire.CLIENT_PLUGIN_AUTH


def test_parse_mysql_greeting() -> None:
    g = wire.parse_greeting(MYSQL_GREETING)
    assert g.server_version == "8.0.36"
    assert g.connection_id == 42
    assert g.auth_plugin == "caching_sha2_password"
    assert g.auth_data == MYSQL_NONCE
    assert not g.is_mariadb
    assert g.mariadb_capabilities == 0
    assert g.charset == 0xFF


def test_greeting_error_and_garbage() -> None:
    with pytest.raises(wire.ServerError) as info:
        wire.parse_greeting(b"\xff\x10\x04Too many connections")
    assert info.value.code == 1040 and info.value.sqlstate == ""
    assert info.value.message == "Too many connections"
    with pytest.raises(wire.ProtocolError, match="protocol version"):
        wire.parse_greeting(b"\x09old")
    with pytest.raises(wire.ProtocolError):
        wire.parse_greeting(b"\x0a5.7\x00\x01")


@given(password=st.binary(min_size=1, max_size=40), nonce=st.binary(min_size=20, max_size=20))
def test_native_password_verifies_as_the_server_does(password: bytes, nonce: bytes) -> None:
    # the server stores SHA1(SHA1(pw)) and checks SHA1(reply XOR SHA1(nonce + stored)) == stored
    stored = hashlib.sha1(hashlib.sha1(password).digest()).digest()
    reply = wire.scramble_native_password(password, nonce)
    mask = hashlib.sha1(nonce + stored).digest()
    candidate = bytes(a ^ b for a, b in zip(reply, mask, strict=True))
    assert hashlib.sha1(candidate).digest() == stored


@given(password=st.binary(min_size=1, max_size=40), nonce=st.binary(min_size=20, max_size=20))
def test_caching_sha2_verifies_as_the_server_does(password: bytes, nonce: bytes) -> None:
    # the server caches SHA256(SHA256(pw)) and checks SHA256(reply XOR SHA256(cached + nonce))
    cached = hashlib.sha256(hashlib.sha256(password).digest()).digest()
    reply = wire.scramble_caching_sha2(password, nonce)
    mask = hashlib.sha256(cached + nonce).digest()
    candidate = bytes(a ^ b for a, b in zip(reply, mask, strict=True))
    assert hashlib.sha256(candidate).digest() == cached


def test_known_vectors() -> None:
    # values computed once with PyMySQL's implementation, as an independent reference
    nonce = b"0123456789abcdefghij"
    assert wire.scramble_native_password(b"secret", nonce).hex() == (
        "f5cac3f3b3df2133feb57db682c71e6ed433a988"
    )
    assert wire.scramble_caching_sha2(b"secret", nonce).hex() == (
        "7e4adda2f2d5ef09b4147518becb0cee2939376203650a8c2bb2815959364bd0"
    )
    assert wire.scramble_native_password(b"", nonce) == b""
    assert wire.scramble_caching_sha2(b"", nonce) == b""


def parse_response(payload: bytes) -> dict[str, object]:
    """Decode a HandshakeResponse41 the way a server would."""
    caps, max_packet, charset = struct.unpack_from("<IIB", payload)
    assert payload[9:32] == bytes(23)
    user, pos = wire.read_nul_bytes(payload, 32)
    if caps & wire.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth, pos = wire.read_lenenc_bytes(payload, pos)
    else:
        auth, pos = payload[pos + 1 : pos + 1 + payload[pos]], pos + 1 + payload[pos]
    db = b""
    if caps & wire.CLIENT_CONNECT_WITH_DB:
        db, pos = wire.read_nul_bytes(payload, pos)
    plugin, pos = wire.read_nul_bytes(payload, pos)
    attrs: dict[bytes, bytes] = {}
    if caps & wire.CLIENT_CONNECT_ATTRS:
        total, pos = wire.read_lenenc_int(payload, pos)
        end = pos + (total or 0)
        while pos < end:
            key, pos = wire.read_lenenc_bytes(payload, pos)
            value, pos = wire.read_lenenc_bytes(payload, pos)
            attrs[key or b""] = value or b""
        assert pos == len(payload)
    return {
        "caps": caps,
        "max_packet": max_packet,
        "charset": charset,
        "user": user,
        "auth": auth,
        "db": db,
        "plugin": plugin,
        "attrs": attrs,
    }


def test_handshake_native_password_with_database() -> None:
    hs = wire.Handshake("repl", "s3cret", "shop")
    fields = parse_response(hs.start(MARIADB_GREETING))
    assert fields["user"] == b"repl"
    assert fields["db"] == b"shop"
    assert fields["plugin"] == b"mysql_native_password"
    assert fields["auth"] == wire.scramble_native_password(b"s3cret", MARIADB_NONCE)
    assert fields["charset"] == wire.UTF8MB4_GENERAL_CI
    assert fields["attrs"] == {b"_client_name": b"tidings"}
    caps = fields["caps"]
    assert isinstance(caps, int)
    assert caps & wire.CLIENT_PROTOCOL_41 and caps & wire.CLIENT_CONNECT_WITH_DB
    assert not caps & wire.CLIENT_MYSQL  # speaking MariaDB: it did not offer the bit
    assert not caps & wire.CLIENT_DEPRECATE_EOF  # ResultReader expects EOF packets
    assert not hs.done
    assert hs.receive(ok_packet()) is None
    assert hs.done


def test_handshake_without_password_or_database() -> None:
    hs = wire.Handshake("root")
    fields = parse_response(hs.start(MARIADB_GREETING))
    assert fields["auth"] == b""
    caps = fields["caps"]
    assert isinstance(caps, int) and not caps & wire.CLIENT_CONNECT_WITH_DB


def test_handshake_auth_switch_to_native() -> None:
    hs = wire.Handshake("u", "pw")
    hs.start(MYSQL_GREETING)
    nonce = b"ZYXWVUTSRQPONMLKJIHG"
    reply = hs.receive(b"\xfemysql_native_password\x00" + nonce + b"\x00")
    assert reply == wire.scramble_native_password(b"pw", nonce)
    assert hs.receive(ok_packet()) is None and hs.done


def test_handshake_caching_sha2_fast_path() -> None:
    hs = wire.Handshake("u", "pw")
    fields = parse_response(hs.start(MYSQL_GREETING))
    assert fields["plugin"] == b"caching_sha2_password"
    assert fields["auth"] == wire.scramble_caching_sha2(b"pw", MYSQL_NONCE)
    caps = fields["caps"]
    assert isinstance(caps, int) and caps & wire.CLIENT_MYSQL
    assert hs.receive(b"\x01\x03") is None  # fast auth success; OK follows
    assert not hs.done
    assert hs.receive(ok_packet()) is None and hs.done


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway RSA key pair made by openssl: an independent RSA implementation."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("rsa")
    key, spki, pkcs1 = d / "key.pem", d / "pub.pem", d / "pub_pkcs1.pem"
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key])
    run([openssl, "pkey", "-in", key, "-pubout", "-out", spki])
    run([openssl, "rsa", "-in", key, "-RSAPublicKey_out", "-out", pkcs1])
    return {"key": key, "spki": spki, "pkcs1": pkcs1, "openssl": Path(openssl)}


def openssl_oaep_decrypt(keys: dict[str, Path], ciphertext: bytes) -> bytes:
    result = subprocess.run(
        [
            str(keys["openssl"]),
            *("pkeyutl", "-decrypt", "-inkey", str(keys["key"])),
            *("-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1"),
        ],
        input=ciphertext,
        check=True,
        capture_output=True,
    )
    return result.stdout


@pytest.mark.parametrize("form", ["spki", "pkcs1"])
def test_password_encryption_decrypts_with_openssl(rsa_key: dict[str, Path], form: str) -> None:
    pem = rsa_key[form].read_bytes()
    nonce = b"0123456789abcdefghij"
    password = "a longer p\u00e4ssword than the twenty-byte nonce".encode()
    ciphertext = wire.encrypt_password(password, nonce, pem)
    assert len(ciphertext) == 256
    plain = openssl_oaep_decrypt(rsa_key, ciphertext)
    expected = password + b"\x00"
    mask = (nonce * 3)[: len(expected)]
    assert plain == bytes(a ^ b for a, b in zip(expected, mask, strict=True))


def test_handshake_caching_sha2_full_auth(rsa_key: dict[str, Path]) -> None:
    hs = wire.Handshake("u", "pw")
    hs.start(MYSQL_GREETING)
    assert hs.receive(b"\x01\x04") == b"\x02"  # no cached hash: ask for the RSA key
    reply = hs.receive(b"\x01" + rsa_key["spki"].read_bytes())
    assert reply is not None
    plain = openssl_oaep_decrypt(rsa_key, reply)
    assert plain == bytes(a ^ b for a, b in zip(b"pw\x00", MYSQL_NONCE, strict=False))
    assert hs.receive(ok_packet()) is None and hs.done


def test_bad_rsa_key_is_an_auth_error() -> None:
    pem = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(wire.AuthError, match="RSA public key"):
        wire.encrypt_password(b"pw", b"n" * 20, pem)


def test_handshake_ed25519_names_the_plugin() -> None:
    hs = wire.Handshake("u", "pw")
    hs.start(MARIADB_GREETING)
    with pytest.raises(wire.AuthError, match=r"client_ed25519.*ed25519"):
        hs.receive(b"\xfeclient_ed25519\x00" + b"n" * 32 + b"\x00")


def test_handshake_unsupported_default_plugin_answers_native() -> None:
    greeting = MARIADB_GREETING.replace(b"mysql_native_password", b"client_ed25519")
    hs = wire.Handshake("u", "pw")
    fields = parse_response(hs.start(greeting))
    assert fields["plugin"] == b"mysql_native_password"


def test_handshake_access_denied() -> None:
    hs = wire.Handshake("u", "bad")
    hs.start(MARIADB_GREETING)
    with pytest.raises(wire.ServerError) as info:
        hs.receive(err_packet(1045, "28000", "Access denied for user 'u'@'localhost'"))
    assert (info.value.code, info.value.sqlstate) == (1045, "28000")
    assert "Access denied" in str(info.value)


# -- responses -----------------------------------------------------------------------------------
def test_ok_err_eof() -> None:
    ok = wire.parse_ok(ok_packet(3, 300, 0x22, b"Rows matched: 3"))
    assert ok == wire.OkPacket(3, 300, 0x22, 0, "Rows matched: 3")
    err = wire.parse_err(err_packet(1146, "42S02", "Table 'x.y' doesn't exist"))
    assert (err.code, err.sqlstate, err.message) == (1146, "42S02", "Table 'x.y' doesn't exist")
    assert wire.is_eof(EOF_PACKET)
    assert not wire.is_eof(b"\xfe" + bytes(8))  # a lenenc 8-byte length, not EOF
    with pytest.raises(wire.ServerError):
        wire.check_ok(err_packet(1, "HY000", "x"))
    assert wire.check_ok(ok_packet(1)).affected_rows == 1


def result_set(rows: list[bytes], *, deprecate_eof: bool = False, status: int = 2) -> list[bytes]:
    out = [b"\x03", column_packet("id", 3), column_packet("name"), column_packet("note")]
    if not deprecate_eof:
        out.append(EOF_PACKET)
    out += rows
    if deprecate_eof:
        out.append(b"\xfe" + b"\x00\x00" + struct.pack("<HH", status, 0))
    else:
        out.append(b"\xfe\x00\x00" + struct.pack("<H", status))
    return out


ROWS = [
    lenenc_str(b"1") + lenenc_str("h\u00e9".encode()) + b"\xfb",
    lenenc_str(b"2") + b"\xfb" + lenenc_str(b""),
    lenenc_str(b"3") + lenenc_str(b"x" * 300) + lenenc_str(b"\xff\xfe"),
]
EXPECTED = [
    ("1", "h\u00e9", None),
    ("2", None, ""),
    ("3", "x" * 300, b"\xff\xfe".decode("utf-8", "surrogateescape")),
]


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_text_result_set(deprecate_eof: bool) -> None:
    reader = wire.ResultReader(deprecate_eof=deprecate_eof)
    packets = result_set(ROWS, deprecate_eof=deprecate_eof)
    assert [reader.feed(p) for p in packets] == [False] * (len(packets) - 1) + [True]
    assert [c.name for c in reader.columns] == ["id", "name", "note"]
    assert reader.columns[0].type == 3 and reader.columns[0].table == "t"
    assert reader.rows == EXPECTED
    assert reader.done


def test_result_ok_only_and_error() -> None:
    reader = wire.ResultReader()
    assert reader.feed(ok_packet(5))
    assert reader.ok is not None and reader.ok.affected_rows == 5 and reader.rows == []
    reader = wire.ResultReader()
    with pytest.raises(wire.ServerError, match="1064"):
        reader.feed(err_packet(1064, "42000", "You have an error in your SQL syntax"))


@pytest.mark.parametrize("header", [b"\xfd", b"", b"\xfc\x01"])
def test_truncated_result_set_header_is_a_protocol_error(header: bytes) -> None:
    # found by fuzz/mysqlwire.py: b"\xfd" (a 3-byte column count with no bytes) was an IndexError
    with pytest.raises(wire.ProtocolError, match="truncated result set header"):
        wire.ResultReader().feed(header)


def test_result_error_mid_rows() -> None:
    reader = wire.ResultReader()
    for p in result_set(ROWS)[:6]:
        reader.feed(p)
    with pytest.raises(wire.ServerError, match="interrupted"):
        reader.feed(err_packet(1317, "70100", "Query execution was interrupted"))


def test_result_multiple_sets_keeps_the_last() -> None:
    reader = wire.ResultReader()
    first = result_set(ROWS[:1], status=2 | wire.SERVER_MORE_RESULTS_EXISTS)
    assert not any(reader.feed(p) for p in first)
    assert any(reader.feed(p) for p in result_set(ROWS[1:]))
    assert reader.rows == EXPECTED[1:]


def test_truncated_row_is_a_protocol_error() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_text_row(lenenc_str(b"1"), 2)


# -- commands ----------------------------------------------------------------------------------
def test_command_builders() -> None:
    assert wire.com_query("SELECT 'é'") == b"\x03SELECT '\xc3\xa9'"
    assert wire.com_ping() == b"\x0e"
    assert wire.com_quit() == b"\x01"
    assert wire.com_register_slave(1001, host="h1", port=3307) == (
        b"\x15\xe9\x03\x00\x00" + b"\x02h1" + b"\x00" + b"\x00" + b"\xeb\x0c" + bytes(8)
    )
    assert wire.com_binlog_dump("binlog.000002", 0x12345, 77, flags=0) == (
        b"\x12\x45\x23\x01\x00\x00\x00\x4d\x00\x00\x00binlog.000002"
    )
    with pytest.raises(ValueError, match="4 bytes"):
        wire.com_binlog_dump("b", 1 << 32, 1)
    with pytest.raises(ValueError, match="255"):
        wire.com_register_slave(1, host="h" * 256)


UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID_BYTES = bytes.fromhex("3e11fa4771ca11e19e33c80aa9429562")


def test_mysql_gtid_set_encoding() -> None:
    encoded = wire.encode_mysql_gtid_set(f"{UUID.upper()}:1-5:7,\n{UUID[:-1]}3:10")
    assert encoded == (
        struct.pack("<q", 2)
        + UUID_BYTES
        + struct.pack("<qqqqq", 2, 1, 6, 7, 8)
        + UUID_BYTES[:-1]
        + b"\x63"
        + struct.pack("<qqq", 1, 10, 11)
    )
    assert wire.encode_mysql_gtid_set("") == bytes(8)


@pytest.mark.parametrize(
    "bad", ["not-a-uuid:1-5", f"{UUID}:5-1", f"{UUID}:x", f"{UUID}:tag:1-5", f"{UUID}:0"]
)
def test_mysql_gtid_set_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        wire.encode_mysql_gtid_set(bad)


def test_com_binlog_dump_gtid() -> None:
    data = wire.encode_mysql_gtid_set(f"{UUID}:1-3")
    assert wire.com_binlog_dump_gtid(9, f"{UUID}:1-3") == (
        b"\x1e"
        + struct.pack("<H", wire.BINLOG_THROUGH_GTID)
        + struct.pack("<II", 9, 0)
        + struct.pack("<QI", 4, len(data))
        + data
    )
