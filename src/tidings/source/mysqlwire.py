"""The MySQL client/server protocol, sans-I/O: bytes in, values out, bytes to send.

Theory of operation. Everything the server sends is a *packet*: a 3-byte
little-endian payload length, a 1-byte sequence id, the payload. A payload of
16 MiB - 1 or more is split into full-size packets followed by a shorter one
(possibly empty); `PacketSplitter` joins them back, so callers only ever see
whole payloads. `frame()` does the reverse for what the client sends.

A connection starts with the server's greeting (`parse_greeting`), answered by
a HandshakeResponse41 that `Handshake` builds; `Handshake.receive()` then
consumes the server's replies (auth switch, caching_sha2 fast auth, or its
full auth with the password RSA-encrypted to the server's key, OK/ERR) until
it is `done`, returning each payload the client must send back. After
that, commands (`com_query`, `com_register_slave`, `com_binlog_dump`, ...)
produce payloads, and `ResultReader` turns the replies to one COM_QUERY into an
`OkPacket` or a text result set. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from dataclasses import dataclass

# -- capability flags (client and server) ---------------------------------------------------
CLIENT_LONG_PASSWORD = 1  # MariaDB clears it in its greeting: "not MySQL", extended caps follow
CLIENT_MYSQL = CLIENT_LONG_PASSWORD
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_DEPRECATE_EOF = 1 << 24

#: what tidings asks for (intersected with what the server offers)
CLIENT_CAPABILITIES = (
    CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
)
#: capabilities the protocol code below cannot do without
REQUIRED_CAPABILITIES = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION

UTF8MB4_GENERAL_CI = 45

# -- commands ----------------------------------------------------------------------------------
COM_QUIT = 0x01
COM_QUERY = 0x03
COM_PING = 0x0E
COM_BINLOG_DUMP = 0x12
COM_REGISTER_SLAVE = 0x15
COM_BINLOG_DUMP_GTID = 0x1E

# COM_BINLOG_DUMP flags
BINLOG_DUMP_NON_BLOCK = 0x01  # EOF once caught up instead of waiting for more
BINLOG_SEND_ANNOTATE_ROWS_EVENT = 0x02  # MariaDB: send the SQL text before row events
BINLOG_THROUGH_POSITION = 0x02  # MySQL COM_BINLOG_DUMP_GTID
BINLOG_THROUGH_GTID = 0x04  # MySQL COM_BINLOG_DUMP_GTID: the GTID set is in the packet

MAX_PAYLOAD = 0xFFFFFF  # a packet of this length is continued by the next one

# server status flags
SERVER_MORE_RESULTS_EXISTS = 0x0008

_LENENC_NULL = 0xFB


# -- errors ------------------------------------------------------------------------------------
class MySQLError(Exception):
    """Base of every error raised by the MySQL client code."""


class ProtocolError(MySQLError):
    """The server sent something this client cannot parse."""


class AuthError(MySQLError):
    """Authentication cannot proceed on the client side (unsupported plugin, missing TLS)."""


class ServerError(MySQLError):
    """An ERR packet: the server's own error code, SQLSTATE and message."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(f"({code}, {sqlstate}) {message}" if sqlstate else f"({code}) {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message


# -- framing -----------------------------------------------------------------------------------
class PacketSplitter:
    """Cuts a byte stream into payloads, joining multi-packet (>= 16 MiB) payloads.

    `feed()` returns the payloads completed by `data`, in order; a partial packet
    stays buffered for the next call. `seq` is the sequence id of the last packet
    seen, which the client's reply must follow.
    """

    __slots__ = ("_buf", "_parts", "seq")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self.seq = -1

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete payload."""
        return len(self._buf) + sum(map(len, self._parts))

    def feed(self, data: bytes) -> list[bytes]:
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # common case: parse the chunk in place, buffer only a tail
        out: list[bytes] = []
        pos = 0
        size = len(buf)
        while size - pos >= 4:
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            end = pos + 4 + length
            if end > size:
                break
            self.seq = buf[pos + 3]
            payload = bytes(buf[pos + 4 : end])
            pos = end
            if length == MAX_PAYLOAD:
                self._parts.append(payload)
                continue
            if self._parts:
                self._parts.append(payload)
                payload = b"".join(self._parts)
                self._parts.clear()
            out.append(payload)
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < size:
            self._buf += buf[pos:]
        return out


def frame(payload: bytes, seq: int) -> tuple[bytes, int]:
    """Packets carrying `payload` from sequence id `seq`; returns them and the next id."""
    if len(payload) < MAX_PAYLOAD:
        return struct.pack("<I", len(payload) | (seq & 0xFF) << 24) + payload, (seq + 1) & 0xFF
    chunks = []
    for start in range(0, len(payload) + 1, MAX_PAYLOAD):
        # a payload that is an exact multiple of the maximum ends with an empty packet
        chunk = payload[start : start + MAX_PAYLOAD]
        chunks.append(struct.pack("<I", len(chunk) | (seq & 0xFF) << 24))
        chunks.append(chunk)
        seq = (seq + 1) & 0xFF
    return b"".join(chunks), seq


# -- primitive readers ---------------------------------------------------------------------------
def read_lenenc_int(data: bytes, pos: int) -> tuple[int | None, int]:
    """A length-encoded integer at `pos`: (value, next pos); value None for 0xFB (NULL)."""
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        return data[pos + 1] | data[pos + 2] << 8, pos + 3
    if first == 0xFD:
        return data[pos + 1] | data[pos + 2] << 8 | data[pos + 3] << 16, pos + 4
    if first == 0xFE:
        return int.from_bytes(data[pos + 1 : pos + 9], "little"), pos + 9
    if first == _LENENC_NULL:
        return None, pos + 1
    raise ProtocolError(f"bad length-encoded integer prefix 0x{first:02x}")


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def read_lenenc_bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = read_lenenc_int(data, pos)
    if length is None:
        return None, pos
    end = pos + length
    if end > len(data):
        raise ProtocolError("length-encoded string runs past the end of the packet")
    return data[pos:end], end


def read_nul_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\x00", pos)
    if end < 0:
        return data[pos:], len(data)  # tolerated: some servers omit the final NUL
    return data[pos:end], end + 1


# -- generic response packets ------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class OkPacket:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = 0
    warnings: int = 0
    info: str = ""


def is_ok(payload: bytes) -> bool:
    return bool(payload) and payload[0] == 0x00


def is_err(payload: bytes) -> bool:
    return bool(payload) and payload[0] == 0xFF


def is_eof(payload: bytes) -> bool:
    """An EOF packet (0xFE and shorter than 9 bytes, so not a lenenc-int row)."""
    return bool(payload) and payload[0] == 0xFE and len(payload) < 9


def parse_ok(payload: bytes) -> OkPacket:
    if not is_ok(payload) and not (payload and payload[0] == 0xFE):
        raise ProtocolError(f"expected an OK packet, got {payload[:16]!r}")
    try:
        affected, pos = read_lenenc_int(payload, 1)
        insert_id, pos = read_lenenc_int(payload, pos)
        status, warnings = struct.unpack_from("<HH", payload, pos)
    except (IndexError, struct.error):
        raise ProtocolError(f"truncated OK packet {payload!r}") from None
    info = payload[pos + 4 :]  # without CLIENT_SESSION_TRACK: the rest of the packet
    return OkPacket(affected or 0, insert_id or 0, status, warnings, info.decode(errors="replace"))


def parse_err(payload: bytes) -> ServerError:
    """The exception an ERR packet stands for (returned, for the caller to raise)."""
    if not is_err(payload) or len(payload) < 3:
        raise ProtocolError(f"expected an ERR packet, got {payload[:16]!r}")
    code = payload[1] | payload[2] << 8
    if payload[3:4] == b"#":
        sqlstate = payload[4:9].decode("ascii", "replace")
        message = payload[9:]
    else:  # errors sent before the handshake carry no SQLSTATE
        sqlstate = ""
        message = payload[3:]
    return ServerError(code, sqlstate, message.decode("utf-8", "replace"))


def check_ok(payload: bytes) -> OkPacket:
    """OK packet -> OkPacket; ERR packet -> raise its ServerError."""
    if is_err(payload):
        raise parse_err(payload)
    return parse_ok(payload)


# -- handshake ---------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Greeting:
    """The server's HandshakeV10."""

    protocol_version: int
    server_version: str
    connection_id: int
    capabilities: int
    charset: int
    status: int
    #: MariaDB's extended capabilities (0 from MySQL)
    mariadb_capabilities: int
    auth_plugin: str
    #: the scramble (nonce) for the auth plugin, 20 bytes normally
    auth_data: bytes

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in self.server_version.lower() or not self.capabilities & CLIENT_MYSQL


def parse_greeting(payload: bytes) -> Greeting:
    if is_err(payload):
        raise parse_err(payload)  # e.g. "Host is blocked", "Too many connections"
    if not payload or payload[0] != 10:
        got = payload[0] if payload else None
        raise ProtocolError(f"unsupported handshake protocol version {got} (need 10)")
    try:
        version, pos = read_nul_bytes(payload, 1)
        if len(payload) < pos + 15:  # connection id, scramble part 1, filler, capabilities
            raise IndexError
        connection_id = int.from_bytes(payload[pos : pos + 4], "little")
        data1 = payload[pos + 4 : pos + 12]
        pos += 13  # 8 bytes of scramble + filler
        caps_low = int.from_bytes(payload[pos : pos + 2], "little")
        pos += 2
        charset = status = caps_high = data_len = mariadb_caps = 0
        auth_data = data1
        plugin = b"mysql_native_password"
        if len(payload) > pos:
            charset = payload[pos]
            status = int.from_bytes(payload[pos + 1 : pos + 3], "little")
            caps_high = int.from_bytes(payload[pos + 3 : pos + 5], "little")
            data_len = payload[pos + 5]
            pos += 6
            capabilities = caps_low | caps_high << 16
            if not capabilities & CLIENT_MYSQL:  # MariaDB: 6 filler bytes, 4 extended caps
                mariadb_caps = int.from_bytes(payload[pos + 6 : pos + 10], "little")
            pos += 10
            if capabilities & CLIENT_SECURE_CONNECTION:
                n = max(13, data_len - 8)
                data2 = payload[pos : pos + n]
                pos += n
                # 20-byte scramble = 8 + 12, then a NUL; longer plugin data keeps its length
                auth_data = data1 + data2[: max(12, data_len - 9)]
            if capabilities & CLIENT_PLUGIN_AUTH:
                name, pos = read_nul_bytes(payload, pos)
                if name:
                    plugin = name
    except IndexError:
        raise ProtocolError("truncated server greeting") from None
    return Greeting(
        protocol_version=10,
        server_version=version.decode("utf-8", "replace"),
        connection_id=connection_id,
        capabilities=caps_low | caps_high << 16,
        charset=charset,
        status=status,
        mariadb_capabilities=mariadb_caps,
        auth_plugin=plugin.decode("ascii", "replace"),
        auth_data=auth_data,
    )


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def scramble_native_password(password: bytes, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(nonce[:20] + stage2).digest())


def scramble_caching_sha2(password: bytes, nonce: bytes) -> bytes:
    """caching_sha2_password fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    if not password:
        return b""
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + nonce[:20]).digest())


_UNSUPPORTED_PLUGINS = {
    "client_ed25519": "MariaDB's ed25519 authentication",
    "parsec": "MariaDB's PARSEC authentication",
    "mysql_clear_password": "cleartext passwords (refused without TLS)",
    "dialog": "PAM dialog authentication",
    "auth_gssapi_client": "GSSAPI/Kerberos authentication",
    "sha256_password": "sha256_password (needs TLS or RSA)",
    "mysql_old_password": "pre-4.1 passwords",
}


def auth_response(plugin: str, password: bytes, nonce: bytes) -> bytes:
    """The first response `plugin` expects to `nonce`; AuthError for plugins not supported."""
    if plugin == "mysql_native_password":
        return scramble_native_password(password, nonce)
    if plugin == "caching_sha2_password":
        return scramble_caching_sha2(password, nonce)
    what = _UNSUPPORTED_PLUGINS.get(plugin, "this plugin")
    raise AuthError(
        f"the server asks for auth plugin {plugin!r} ({what}), which tidings does not support; "
        "give the replication user mysql_native_password, e.g. "
        "ALTER USER ... IDENTIFIED VIA mysql_native_password USING PASSWORD('...') (MariaDB) or "
        "IDENTIFIED WITH mysql_native_password BY '...' (MySQL)"
    )


# -- caching_sha2_password full authentication: RSA-OAEP, stdlib only ---------------------------
def _der_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """One DER element of type `tag` at `pos`: (contents, position after it)."""
    if data[pos] != tag:
        raise ValueError(f"DER: expected tag 0x{tag:02x}, got 0x{data[pos]:02x}")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:  # long form: the low bits count the length bytes
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("DER: element runs past the end")
    return data[pos : pos + length], pos + length


def parse_rsa_public_key(pem: bytes) -> tuple[int, int]:
    """(modulus, exponent) of a PEM public key: SubjectPublicKeyInfo or PKCS#1 RSAPublicKey."""
    text = pem.decode("ascii", "replace")
    lines = [ln.strip() for ln in text.strip().splitlines()]
    body = "".join(ln for ln in lines if ln and not ln.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
        seq, _ = _der_read(der, 0, 0x30)
        if "BEGIN RSA PUBLIC KEY" not in text:  # SubjectPublicKeyInfo wraps PKCS#1
            _, pos = _der_read(seq, 0, 0x30)  # AlgorithmIdentifier (rsaEncryption)
            bits, _ = _der_read(seq, pos, 0x03)
            seq, _ = _der_read(bits[1:], 0, 0x30)  # skip the unused-bits byte
        n, pos = _der_read(seq, 0, 0x02)
        e, _ = _der_read(seq, pos, 0x02)
    except (ValueError, IndexError) as exc:
        raise AuthError(f"cannot read the server's RSA public key: {exc}") from None
    return int.from_bytes(n, "big"), int.from_bytes(e, "big")


def _mgf1_sha1(seed: bytes, length: int) -> bytes:
    out = b"".join(
        hashlib.sha1(seed + i.to_bytes(4, "big")).digest() for i in range((length + 19) // 20)
    )
    return out[:length]


def rsa_oaep_encrypt(message: bytes, n: int, e: int, seed: bytes | None = None) -> bytes:
    """RSAES-OAEP (SHA-1, MGF1-SHA-1, empty label) as MySQL's RSA_PKCS1_OAEP_PADDING."""
    k = (n.bit_length() + 7) // 8
    hlen = 20
    if len(message) > k - 2 * hlen - 2:
        raise AuthError("password too long for the server's RSA key")
    db = hashlib.sha1(b"").digest() + bytes(k - len(message) - 2 * hlen - 2) + b"\x01" + message
    seed = seed if seed is not None else os.urandom(hlen)
    masked_db = _xor(db, _mgf1_sha1(seed, k - hlen - 1))
    masked_seed = _xor(seed, _mgf1_sha1(masked_db, hlen))
    em = int.from_bytes(b"\x00" + masked_seed + masked_db, "big")
    return pow(em, e, n).to_bytes(k, "big")


def encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """caching_sha2/sha256 full auth without TLS: RSA-OAEP of (password NUL) XOR the nonce."""
    plain = password + b"\x00"
    nonce = nonce[:20] or b"\x00"
    mask = (nonce * (len(plain) // len(nonce) + 1))[: len(plain)]
    n, e = parse_rsa_public_key(public_key_pem)
    return rsa_oaep_encrypt(_xor(plain, mask), n, e)


def _connect_attrs(attrs: dict[str, str]) -> bytes:
    body = b"".join(
        lenenc_int(len(k)) + k + lenenc_int(len(v)) + v
        for k, v in ((k.encode(), v.encode()) for k, v in attrs.items())
    )
    return lenenc_int(len(body)) + body


class Handshake:
    """Client side of connection setup and authentication, as a state machine.

    `start(greeting_payload)` returns the HandshakeResponse41 to send; then feed
    each server packet to `receive()`, which returns the payload to send back
    (or None when there is nothing to send) until `done` is true. Errors from
    the server raise `ServerError`; unsupported authentication raises `AuthError`.
    """

    __slots__ = (
        "_awaiting_key",
        "_nonce",
        "_plugin",
        "attrs",
        "capabilities",
        "charset",
        "database",
        "done",
        "greeting",
        "password",
        "user",
    )

    def __init__(
        self,
        user: str,
        password: str = "",
        database: str = "",
        *,
        charset: int = UTF8MB4_GENERAL_CI,
        attrs: dict[str, str] | None = None,
    ) -> None:
        self.user = user
        self.password = password.encode()
        self.database = database
        self.charset = charset
        self.attrs = attrs if attrs is not None else {"_client_name": "tidings"}
        self.greeting: Greeting | None = None
        self.capabilities = 0
        self.done = False
        self._plugin = ""
        self._nonce = b""
        self._awaiting_key = False

    def start(self, payload: bytes) -> bytes:
        greeting = self.greeting = parse_greeting(payload)
        missing = REQUIRED_CAPABILITIES & ~greeting.capabilities
        if missing:
            raise ProtocolError(
                f"server {greeting.server_version} lacks capabilities 0x{missing:x} (pre-4.1?)"
            )
        caps = CLIENT_CAPABILITIES & greeting.capabilities
        if not greeting.capabilities & CLIENT_MYSQL:
            caps &= ~CLIENT_MYSQL  # speak MariaDB: extended capability bytes follow
        if self.database:
            caps |= CLIENT_CONNECT_WITH_DB & greeting.capabilities
        self.capabilities = caps
        plugin = greeting.auth_plugin
        if not caps & CLIENT_PLUGIN_AUTH:
            plugin = "mysql_native_password"
        if plugin not in ("mysql_native_password", "caching_sha2_password"):
            # the server's default plugin need not be the user's: answer as native and let
            # the server switch us to the user's plugin (AuthSwitchRequest) if it differs
            plugin = "mysql_native_password"
        self._plugin = plugin
        self._nonce = greeting.auth_data
        auth = auth_response(plugin, self.password, self._nonce)

        out = bytearray(struct.pack("<IIB", caps, MAX_PAYLOAD, self.charset))
        out += bytes(23)  # filler; for MariaDB the last 4 are extended capabilities: none
        out += self.user.encode() + b"\x00"
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out += lenenc_int(len(auth)) + auth
        else:
            out += bytes((len(auth),)) + auth
        if caps & CLIENT_CONNECT_WITH_DB:
            out += self.database.encode() + b"\x00"
        if caps & CLIENT_PLUGIN_AUTH:
            out += plugin.encode() + b"\x00"
        if caps & CLIENT_CONNECT_ATTRS:
            out += _connect_attrs(self.attrs)
        return bytes(out)

    def receive(self, payload: bytes) -> bytes | None:
        if self.done:
            raise ProtocolError("handshake already complete")
        if not payload:
            raise ProtocolError("empty packet during authentication")
        head = payload[0]
        if head == 0x00:
            self.done = True
            return None
        if head == 0xFF:
            raise parse_err(payload)
        if head == 0xFE:  # AuthSwitchRequest: another plugin, a fresh nonce
            name, pos = read_nul_bytes(payload, 1)
            self._plugin = name.decode("ascii", "replace")
            data = payload[pos:]
            self._nonce = data[:-1] if data.endswith(b"\x00") else data
            return auth_response(self._plugin, self.password, self._nonce)
        if head == 0x01 and self._plugin == "caching_sha2_password":
            if payload[1:2] == b"\x03":  # fast auth succeeded: the OK packet follows
                return None
            if payload[1:2] == b"\x04":
                # full authentication (no cached hash on the server, e.g. after a restart):
                # without TLS, ask for the server's RSA key and send the password encrypted
                self._awaiting_key = True
                return b"\x02"
            if self._awaiting_key and b"-----BEGIN" in payload[:40]:
                self._awaiting_key = False
                return encrypt_password(self.password, self._nonce, payload[1:])
        raise ProtocolError(f"unexpected packet during authentication: {payload[:32]!r}")


# -- text result sets --------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type: int
    charset: int
    length: int
    flags: int
    decimals: int
    table: str = ""
    schema: str = ""


def parse_column(payload: bytes) -> Column:
    try:
        pos = 0
        fields: list[bytes] = []
        for _ in range(6):  # catalog, schema, table, org_table, name, org_name
            value, pos = read_lenenc_bytes(payload, pos)
            fields.append(value or b"")
        _, pos = read_lenenc_int(payload, pos)  # length of the fixed fields: 0x0c
        charset, length, type_, flags, decimals = struct.unpack_from("<HIBHB", payload, pos)
    except (IndexError, struct.error):
        raise ProtocolError(f"truncated column definition {payload!r}") from None
    return Column(
        name=fields[4].decode("utf-8", "replace"),
        type=type_,
        charset=charset,
        length=length,
        flags=flags,
        decimals=decimals,
        table=fields[2].decode("utf-8", "replace"),
        schema=fields[1].decode("utf-8", "replace"),
    )


Row = tuple[str | None, ...]


def parse_text_row(payload: bytes, ncols: int) -> Row:
    """One text-protocol row: each value a str (undecodable bytes kept as surrogates) or None."""
    values: list[str | None] = []
    pos = 0
    try:
        for _ in range(ncols):
            if payload[pos] == _LENENC_NULL:
                values.append(None)
                pos += 1
                continue
            raw, pos = read_lenenc_bytes(payload, pos)
            values.append(raw.decode("utf-8", "surrogateescape") if raw is not None else None)
    except IndexError:
        raise ProtocolError(f"truncated row ({ncols} columns expected): {payload[:64]!r}") from None
    return tuple(values)


class ResultReader:
    """Collects the response to one COM_QUERY: an OK packet, or columns and rows.

    Feed each response payload to `feed()`; it returns True once the response is
    complete. ERR packets raise `ServerError`. Works with and without
    CLIENT_DEPRECATE_EOF. A statement that returns several result sets keeps the
    last one.
    """

    __slots__ = ("_deprecate_eof", "_ncols", "_state", "columns", "ok", "rows")

    _FIRST, _COLUMNS, _COLUMNS_EOF, _ROWS, _DONE = range(5)

    def __init__(self, *, deprecate_eof: bool = False) -> None:
        self._deprecate_eof = deprecate_eof
        self._state = self._FIRST
        self._ncols = 0
        self.columns: list[Column] = []
        self.rows: list[Row] = []
        self.ok: OkPacket | None = None

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, payload: bytes) -> bool:
        state = self._state
        if state == self._ROWS:
            # the end marker: EOF (< 9 bytes), or with DEPRECATE_EOF an OK packet headed 0xFE
            # (a row starting 0xFE holds a >= 16 MiB value, so it is never that short)
            if payload[:1] == b"\xfe" and len(payload) < (
                MAX_PAYLOAD if self._deprecate_eof else 9
            ):
                return self._end(payload)
            if is_err(payload):
                raise parse_err(payload)
            self.rows.append(parse_text_row(payload, self._ncols))
            return False
        if state == self._FIRST:
            if is_err(payload):
                raise parse_err(payload)
            if is_ok(payload):
                self.ok = parse_ok(payload)
                return self._more(self.ok.status)
            if payload and payload[0] == 0xFB:
                raise ProtocolError("LOAD DATA LOCAL INFILE is not supported")
            try:
                count, _ = read_lenenc_int(payload, 0)
            except IndexError:  # empty, or a length prefix cut short
                raise ProtocolError(f"truncated result set header {payload[:16]!r}") from None
            if not count:
                raise ProtocolError(f"bad result set header {payload[:16]!r}")
            self._ncols = count
            self.columns = []
            self.rows = []
            self._state = self._COLUMNS
            return False
        if state == self._COLUMNS:
            self.columns.append(parse_column(payload))
            if len(self.columns) == self._ncols:
                self._state = self._ROWS if self._deprecate_eof else self._COLUMNS_EOF
            return False
        if state == self._COLUMNS_EOF:
            if is_err(payload):
                raise parse_err(payload)
            if not is_eof(payload):
                raise ProtocolError(f"expected EOF after column definitions, got {payload[:16]!r}")
            self._state = self._ROWS
            return False
        raise ProtocolError("result set already complete")

    def _end(self, payload: bytes) -> bool:
        if len(payload) >= 5 and not self._deprecate_eof:
            status = int.from_bytes(payload[3:5], "little")  # EOF: 0xFE, warnings, status
        else:
            status = parse_ok(payload).status if len(payload) >= 7 else 0
        return self._more(status)

    def _more(self, status: int) -> bool:
        if status & SERVER_MORE_RESULTS_EXISTS:
            self._state = self._FIRST
            return False
        self._state = self._DONE
        return True


# -- commands ----------------------------------------------------------------------------------
def com_query(sql: str) -> bytes:
    return b"\x03" + sql.encode()


def com_ping() -> bytes:
    return b"\x0e"


def com_quit() -> bytes:
    return b"\x01"


def _short_string(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{what} longer than 255 bytes")
    return bytes((len(raw),)) + raw


def com_register_slave(
    server_id: int,
    *,
    host: str = "",
    user: str = "",
    password: str = "",
    port: int = 0,
    master_id: int = 0,
) -> bytes:
    """COM_REGISTER_SLAVE: what SHOW SLAVE HOSTS shows about this replica."""
    return (
        struct.pack("<BI", COM_REGISTER_SLAVE, server_id)
        + _short_string(host, "report host")
        + _short_string(user, "report user")
        + _short_string(password, "report password")
        + struct.pack("<HII", port, 0, master_id)  # port, replication rank (unused), master id
    )


def com_binlog_dump(file: str, pos: int, server_id: int, flags: int = 0) -> bytes:
    """COM_BINLOG_DUMP from `file`:`pos` (MariaDB ignores both when @slave_connect_state is set)."""
    if not 0 <= pos <= 0xFFFFFFFF:
        raise ValueError(f"binlog position {pos} does not fit COM_BINLOG_DUMP's 4 bytes")
    return struct.pack("<BIHI", COM_BINLOG_DUMP, pos, flags, server_id) + file.encode()


_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def encode_mysql_gtid_set(gtid_set: str) -> bytes:
    """A MySQL GTID set (`uuid:1-5:7,uuid2:1-9`) in the binary form COM_BINLOG_DUMP_GTID takes.

    Layout: n_sids (8), then per sid: 16-byte uuid, n_intervals (8), and for each
    interval start (8) and end (8, exclusive). Tagged GTIDs (MySQL 8.3+) are not
    supported.
    """
    sids: list[bytes] = []
    text = "".join(gtid_set.split())  # @@gtid_executed contains newlines
    for part in filter(None, text.split(",")):
        uuid, *ranges = part.split(":")
        if not _UUID.match(uuid):
            raise ValueError(f"bad GTID set {gtid_set!r}: {uuid!r} is not a server UUID")
        intervals = bytearray()
        for r in ranges:
            first, sep, last = r.partition("-")
            if not first.isdigit() or (sep and not last.isdigit()):
                raise ValueError(
                    f"bad GTID interval {r!r} in {gtid_set!r} (tagged GTIDs are not supported)"
                )
            start, stop = int(first), int(last if sep else first) + 1
            if start < 1 or stop <= start:
                raise ValueError(f"bad GTID interval {r!r} in {gtid_set!r}")
            intervals += struct.pack("<qq", start, stop)
        sids.append(
            bytes.fromhex(uuid.replace("-", "")) + struct.pack("<q", len(ranges)) + intervals
        )
    return struct.pack("<q", len(sids)) + b"".join(sids)


def com_binlog_dump_gtid(
    server_id: int, gtid_set: str, *, file: str = "", pos: int = 4, flags: int = 0
) -> bytes:
    """MySQL's COM_BINLOG_DUMP_GTID: stream everything not in `gtid_set`."""
    data = encode_mysql_gtid_set(gtid_set)
    name = file.encode()
    return (
        struct.pack(
            "<BHII", COM_BINLOG_DUMP_GTID, flags | BINLOG_THROUGH_GTID, server_id, len(name)
        )
        + name
        + struct.pack("<QI", pos, len(data))
        + data
    )
