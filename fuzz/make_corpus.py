"""Write the seed corpora in fuzz/corpus/<target>/: a handful of valid inputs per target,
taken from the unit tests' literals (and, with --mariadb, real binlog streams).

    .venv/bin/python fuzz/make_corpus.py            # every target, from literals
    .venv/bin/python fuzz/make_corpus.py http       # one target's seeds
    .venv/bin/python fuzz/make_corpus.py --mariadb  # also capture binlogs (needs MariaDB)

Seeds follow each target's input layout (see its docstring): most start with a
flags / read-size byte.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[0] = str(HERE.parent)  # not this directory: its http.py would shadow the stdlib's

from tests.source import test_binlog_builders as b  # noqa: E402
from tests.source.test_binlog_units import _img, _table  # noqa: E402
from tests.source.test_mysqlwire import (  # noqa: E402
    EOF_PACKET,
    MARIADB_GREETING,
    MYSQL_GREETING,
    column_packet,
    err_packet,
    ok_packet,
    packet,
)

from tidings.source.binlog import BinlogDecoder  # noqa: E402
from tidings.source.binlog.binlogfile import split_events  # noqa: E402
from tidings.source.changes import Position  # noqa: E402
from tidings.wire.resp import encode_command  # noqa: E402
from tidings.wire.websocket import mask_frame  # noqa: E402

MAX_SEED = 8000  # under the runner's -max_len
MASK = b"\x37\xfa\x21\x3d"


def resp() -> Iterator[bytes]:
    yield b"\x00" + encode_command("SUBSCRIBE", "shop.orders", "shop.orders?id=eq.1")
    yield b"\x03" + encode_command("PSUBSCRIBE", "shop.*") + encode_command("PING")
    yield b"\x00" + encode_command("TIDINGS.SUBSCRIBE", "1764190000000017", "shop.orders")
    yield b"\x00PING\r\nECHO \"a\\x41\\n\" 'it\\'s'\r\n\r\n*0\r\n*-1\r\n"
    yield b"\x05" + encode_command("PUBLISH", "jobs", b"\x00\xff" * 40) + b"*2\r\n$4\r\nPING"


def resp_c() -> Iterator[bytes]:
    # a limits byte (fuzz/resp_c.py's LIMITS), then as resp
    for i, seed in enumerate(resp()):
        yield bytes([i % 4]) + seed
    publish = b"".join(encode_command("PUBLISH", f"c{i}", b"x" * 200) for i in range(30))
    yield b"\x03\x00" + publish
    yield b"\x00\x07" + publish[:4000]
    yield b"\x01\x03" + encode_command("PING", "x" * 16) + encode_command("A", "b", "c", "d")
    yield b"\x02\x00*1\r\n$0\r\n\r\n*1\r\n$1\r\nx\r\n*2\r\n$0\r\n\r\n"


def http() -> Iterator[bytes]:
    yield b"\x00GET /sse?channel=shop.orders&since=5 HTTP/1.1\r\nHost: x\r\n\r\n"
    yield (
        b"\x07POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
        b'Expect: 100-continue\r\n\r\n{"a":"b"}\r\n'
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    yield (
        b"\x00GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: http://a.example\r\n\r\n" + mask_frame(1, b"{}", MASK)
    )
    yield b"\x00\r\nGET /channels HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    yield b"\x00OPTIONS /sse HTTP/1.1\r\nHost: x\r\nOrigin: http://LocalHost:5173\r\n\r\n"


def websocket() -> Iterator[bytes]:
    text = mask_frame(1, b'{"op":"subscribe","channel":"shop.orders"}', MASK)
    yield b"\x00" + text + mask_frame(9, b"hi", MASK) + mask_frame(8, b"\x03\xe8bye", MASK)
    yield (
        b"\x04"
        + mask_frame(1, "caf\u00e9 ".encode(), MASK, fin=False)
        + mask_frame(10, b"", MASK)
        + mask_frame(0, b"x" * 200, MASK, fin=False)
        + mask_frame(0, b"end", MASK)
    )
    yield b"\x00" + mask_frame(2, bytes(300), MASK) + mask_frame(8, b"", MASK)
    yield b"\x01" + bytes((0x81, 5)) + b"hello" + bytes((0x88, 2)) + b"\x03\xe9"


def ws_message() -> Iterator[bytes]:
    yield b'\x00{"op":"subscribe","channel":"shop.orders?customer_id=eq.42","since":17}'
    yield b'\x00{"op":"unsubscribe","channel":"shop.orders"}'
    yield b'\x00{"op":"ping"}'
    yield b'\x00{"op":"subscribe","channel":"t.x","since":"12"}'
    yield b"\x01\x00binary"


def sse_query() -> Iterator[bytes]:
    yield b"channel=shop.orders&since=5"
    yield b"pattern=shop.*&pattern=h%5Ba-c%5Dllo&channel=a.b"
    yield b"channel=shop.orders%3Fstatus%3Din.(new%2Cpaid)%26total%3Dgt.9.5\n17"
    yield b"channel=x&since=-1"


def filters() -> Iterator[bytes]:
    yield b"shop.orders?customer_id=eq.42&status=in.(new,paid)"
    yield b'db.t?name=eq."a \\"quoted\\" value"&d=not.is.null'
    yield b"db.t?at=gte.2024-01-02T03:04:05.5Z&t=lt.-12:30:00&n=neq.-0.50"
    yield b'db.t?x=not.in.(1,2024-01-02,10:00:00,abc,"")&y=lte.99999999999999999999'


def patterns() -> Iterator[bytes]:
    yield b"shop.*\x00shop.orders"
    yield b"h[a-c]llo\x00hbllo"
    yield b"*a*b?[^x]\\*\x00aaab*"
    yield b"[?-\xc3\xa9\x00\xc3"


def config() -> Iterator[bytes]:
    yield b'resp = "127.0.0.1:7000"\nserver-id = 55\nmax_bulk = "1k"\nheartbeat = 2.5\n'
    yield (
        b'mysql = "mysql://repl:secret@127.0.0.1:3306/"\nstart = "0-1-57"\n'
        b'http = "[::1]:8080"\nallow_publish = true\noutput_limit = "2MiB"\n'
        b'history_bytes = 1048576\nlog_level = "debug"\nddl_events = false\n'
    )
    yield b'state_dir = "/var/lib/tidings"\ncheckpoint_interval = 0.5\nmark_every = 100\n'


def mysqlwire() -> Iterator[bytes]:
    ok = ok_packet()
    yield b"\x01" + packet(MARIADB_GREETING, 0) + packet(ok, 2)
    switch = b"\xfemysql_native_password\x00" + b"n" * 20 + b"\x00"
    yield b"\x01" + packet(MYSQL_GREETING, 0) + packet(switch, 2) + packet(ok, 4)
    yield b"\x01" + packet(MYSQL_GREETING, 0) + packet(b"\x01\x03", 2) + packet(ok, 3)
    pem = _rsa_public_key()
    if pem:
        yield (
            b"\x01"
            + packet(MYSQL_GREETING, 0)
            + packet(b"\x01\x04", 2)
            + packet(b"\x01" + pem, 4)
            + packet(ok, 6)
        )
    rows = [b"\x02", column_packet("a"), column_packet("b", 3), EOF_PACKET]
    rows += [b"\x01x\x0242", b"\xfb\x00", EOF_PACKET]
    yield b"\x00" + b"".join(packet(p, i + 1) for i, p in enumerate(rows))
    deprecate = [b"\x01", column_packet("a"), b"\x01x", b"\xfe\x00\x00\x02\x00\x00\x00"]
    yield b"\x02" + b"".join(packet(p, i + 1) for i, p in enumerate(deprecate))
    yield b"\x00" + packet(err_packet(1045, "28000", "Access denied"), 1)


def _rsa_public_key() -> bytes:
    openssl = shutil.which("openssl")
    if openssl is None:
        return b""
    with tempfile.TemporaryDirectory() as d:
        key = Path(d) / "key.pem"
        run = [openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]
        subprocess.run([*run, "-out", str(key)], check=True, capture_output=True)
        pub = subprocess.run(
            [openssl, "pkey", "-in", str(key), "-pubout"], check=True, capture_output=True
        )
        return pub.stdout


def binlog() -> Iterator[bytes]:
    """Streams from the builders: MariaDB bytes captured by the unit tests, MySQL format."""
    yield b"\x00" + b.MARIADB_FDE + b.MARIADB_GTID + b.MARIADB_TABLE_MAP
    yield b"\x04" + b.MARIADB_FDE + b.MARIADB_TABLE_MAP + b.MARIADB_WRITE_ROWS + b.MARIADB_XID
    sid = uuid.UUID("3e11fa47-71ca-11e1-9e33-c80aa9429562")
    prev = struct.pack("<Q", 1) + sid.bytes + struct.pack("<Q", 1) + struct.pack("<QQ", 1, 8)
    gtid = b.event(33, b"\x01" + sid.bytes + struct.pack("<Q", 8) + b"\x02" + bytes(16))
    recorder = _Recorder()
    _table(recorder)  # type: ignore[arg-type]
    yield b"\x00" + b"".join(
        [
            b.fde(mariadb=False),
            b.event(35, prev),
            gtid,
            b.query("BEGIN"),
            *recorder.events,
            b.rows_event(30, 5, 2, _img(1, "new"), v2=True),
            b.rows_event(31, 5, 2, _img(1, "new") + _img(1, "newer"), v2=True),
            b.xid(77, log_pos=999),
            b.query("CREATE TABLE x (a INT)", "db2", log_pos=1200),
        ]
    )
    yield b"\x00" + b"".join(
        [
            b.rotate("binlog.000002", artificial=True),
            b.fde(),
            b.mariadb_gtid(0, 11, standalone=True),
            b.query("ALTER TABLE t ADD COLUMN c INT", "db"),
            b.mariadb_gtid(0, 12),
            b.query("XA START 'x1'"),
            b.query("XA END 'x1'"),
            b.rotate("binlog.000003", 4),
        ]
    )


class _Recorder(BinlogDecoder):
    """Keeps what `_table()` feeds (it asserts a real decoder accepted each event)."""

    def __init__(self) -> None:
        super().__init__(Position("binlog.000001", 4))
        self.events: list[bytes] = []
        super().feed(b.fde(mariadb=False))

    def feed(self, event: bytes) -> None:  # type: ignore[override]
        self.events.append(event)
        super().feed(event)


def binlog_from_mariadb() -> Iterator[bytes]:
    """Real binlog streams: the golden all-types rows, XA, DDL; compressed without CRC."""
    from tests.source.test_binlog_golden import ALL_TYPES, ROW_1, ROW_2_ZERO

    from tidings.sandbox import PrivateMariaDB

    compressed = ["--log-bin-compress=ON", "--log-bin-compress-min-len=10"]
    for extra in ([], [*compressed, "--binlog-checksum=NONE"]):
        with tempfile.TemporaryDirectory() as d, PrivateMariaDB(Path(d), extra_args=extra) as db:
            db.sql("CREATE DATABASE golden")
            db.sql(ALL_TYPES, "golden")
            prelude = "SET NAMES utf8mb4; SET time_zone = '+00:00'; SET sql_mode = '';"
            db.sql(f"{prelude} INSERT INTO all_types VALUES {ROW_1}", "golden")
            db.sql(f"{prelude} INSERT INTO all_types VALUES {ROW_2_ZERO}", "golden")
            db.sql("UPDATE all_types SET vc = 'changed', iu = 7 WHERE id = 1", "golden")
            db.sql("DELETE FROM all_types WHERE id = 2", "golden")
            db.sql("CREATE TABLE t (id INT PRIMARY KEY, s TEXT)", "golden")
            db.sql(
                "XA START 'x1'; INSERT INTO t VALUES (1, 'a'); XA END 'x1'; XA PREPARE 'x1'",
                "golden",
            )
            db.sql("XA COMMIT 'x1'; INSERT INTO golden.t VALUES (2, REPEAT('abc', 50))", "golden")
            data = (db.datadir / "binlog.000001").read_bytes()
        yield from _seeds(list(split_events(data)))


def _seeds(events: list[bytes]) -> Iterator[bytes]:
    """The FORMAT_DESCRIPTION, then whole transactions (GTID to GTID), under MAX_SEED."""
    fde, *rest = events
    groups: list[list[bytes]] = []
    for event in rest:
        if event[4] == 162 or not groups:  # a MariaDB GTID starts a group
            groups.append([])
        groups[-1].append(event)
    seed = [fde]
    for group in groups:
        size = sum(map(len, group))
        if sum(map(len, seed)) + size > MAX_SEED and len(seed) > 1:
            yield b"\x00" + b"".join(seed)
            seed = [fde]
        if len(fde) + size <= MAX_SEED:
            seed += group
    if len(seed) > 1:
        yield b"\x00" + b"".join(seed)


def token() -> Iterator[bytes]:
    from fuzz.token import NOW, SECRET
    from tidings.auth import mint

    yield b"\x00" + mint(SECRET, ["shop.*", "shop.orders?customer_id=eq.42"], 3600, "alice",
                          publish=["jobs.*"], now=NOW).encode()  # fmt: skip
    yield b"\x00" + mint(SECRET, ["*"], 60, admin=True, now=NOW).encode()
    header = b'{"alg":"HS256","typ":"JWT"}'
    claims = b'{"channels":["shop.orders?status=in.(new,paid)","a.[bc]*"],"exp":1764193600,'
    yield b"\x01" + header + b"\x00" + claims + b'"nbf":1764189000,"sub":"svc"}'
    yield b"\x01" + header + b'\x00{"channels":["x"],"exp":1764180000}'  # expired


SEEDS = {
    "resp": resp,
    "resp_c": resp_c,
    "http": http,
    "websocket": websocket,
    "ws_message": ws_message,
    "sse_query": sse_query,
    "filters": filters,
    "patterns": patterns,
    "config": config,
    "mysqlwire": mysqlwire,
    "binlog": binlog,
    "token": token,
}


def write(target: str, seeds: Iterable[bytes], prefix: str = "seed") -> None:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{prefix}-*"):
        old.unlink()
    for i, seed in enumerate(seeds):
        (folder / f"{prefix}-{i:02d}").write_bytes(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mariadb", action="store_true", help="also capture real binlogs")
    parser.add_argument("targets", nargs="*", help="only these targets (default: all)")
    args = parser.parse_args()
    for target, make in SEEDS.items():
        if not args.targets or target in args.targets:
            write(target, make())
    if args.mariadb:
        write("binlog", binlog_from_mariadb(), prefix="mariadb")


if __name__ == "__main__":
    main()
