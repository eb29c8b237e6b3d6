"""Golden tests: SQL against a real MariaDB, its binlog file decoded, exact values asserted.

The binlog file holds the same event bytes a replica connection receives, so these
tests pin the decoder to what MariaDB 10.11 really writes, type by type.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings.sandbox import PrivateMariaDB
from tidings.source.binlog import BinlogDecoder, TableInfo, TableInfoRequest
from tidings.source.binlog.binlogfile import BinlogTail
from tidings.source.changes import Position, RowChange, Transaction


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def table_info(db: PrivateMariaDB, req: TableInfoRequest) -> TableInfo | None:
    """What the schema side would answer, straight from information_schema."""
    names = db.sql(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
        f"'{req.database}' AND TABLE_NAME = '{req.table}' ORDER BY ORDINAL_POSITION"
    ).split()
    if not names:
        return None
    checks = db.sql(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE "
        f"CONSTRAINT_SCHEMA = '{req.database}' AND TABLE_NAME = '{req.table}'"
    ).splitlines()
    json = {n for n in names if f"json_valid(`{n}`)" in checks}
    return TableInfo(tuple(names), frozenset(json))


class Follower:
    """Decode a server's binlog from a point on, as a replica would, answering table requests."""

    def __init__(self, db: PrivateMariaDB, *, names_from_binlog: bool = True) -> None:
        self.db = db
        file, pos, gtid = master_status(db)
        self.tail = BinlogTail(db.datadir, file, pos)
        self.decoder = BinlogDecoder(Position(file, pos, gtid), names_from_binlog=names_from_binlog)
        self.requests: list[TableInfoRequest] = []

    def transactions(self, database: str | None = None) -> list[Transaction]:
        """Transactions written since the last call (touching `database`, if given)."""
        out = []
        for event in self.tail.read():
            result = self.decoder.feed(event)
            if isinstance(result, TableInfoRequest):
                self.requests.append(result)
                self.decoder.provide_table_info(result, table_info(self.db, result))
            elif result is not None:
                out.append(result)
        if database is None:
            return out
        return [
            t
            for t in out
            if any(c.database == database for c in t.changes)
            or any(d == database for d, _ in t.ddl)
        ]


def master_status(db: PrivateMariaDB) -> tuple[str, int, str]:
    file, pos = db.sql("SHOW MASTER STATUS").split("\t")[:2]
    gtid = db.sql("SELECT @@gtid_binlog_pos").strip()
    return file, int(pos), gtid


def changes(txns: list[Transaction]) -> list[RowChange]:
    return [c for t in txns for c in t.changes]


# -- every column type --------------------------------------------------------------------

ALL_TYPES = """
CREATE TABLE all_types (
  id INT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  f FLOAT, d DOUBLE, dec1 DECIMAL(10,2), dec2 DECIMAL(30,10), dec3 DECIMAL(5,0),
  dec4 DECIMAL(65,30),
  yr YEAR, dt DATE, tm TIME, tm3 TIME(3), tm6 TIME(6), tm1 TIME(1),
  dtm DATETIME, dtm2 DATETIME(2), dtm6 DATETIME(6),
  ts TIMESTAMP NULL DEFAULT NULL, ts6 TIMESTAMP(6) NULL DEFAULT NULL,
  vc VARCHAR(20), vcl VARCHAR(300), c CHAR(5), cbig CHAR(255),
  cl1 CHAR(10) CHARACTER SET latin1, vl1 VARCHAR(10) CHARACTER SET latin1,
  u3 VARCHAR(10) CHARACTER SET utf8mb3, u16 VARCHAR(10) CHARACTER SET utf16,
  cyr VARCHAR(10) CHARACTER SET cp1251,
  txt TEXT, ttxt TINYTEXT, mtxt MEDIUMTEXT, ltxt LONGTEXT,
  bn BINARY(4), vbn VARBINARY(10), bl BLOB, tbl TINYBLOB, lbl LONGBLOB,
  bt1 BIT(1), bt10 BIT(10), bt64 BIT(64),
  en ENUM('a','b','c'), st SET('x','y','z'),
  js JSON, geo GEOMETRY, pt POINT
)
"""

ROW_1 = """(1,
  -128, 255, -32768, 65535,
  -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
  1.1, 2.5e-300, -0.01, 12345678901234567890.0123456789, -99999,
  -12345678901234567890123456789012345.123456789012345678901234567891,
  2155, '9999-12-31', '-838:59:59', '-01:02:03.500', '12:34:56.789012', '-00:00:00.1',
  '1000-01-01 00:00:00', '2024-02-29 23:59:59.99', '2024-01-02 03:04:05.123456',
  '2038-01-19 03:14:07', '1970-01-01 00:00:01.000001',
  'emoji 😀', REPEAT('x', 300), 'ab  ', REPEAT('é', 255),
  'café€', 'ñ', 'été', 'ü€', 'Привет',
  'text', 'tiny', 'medium', REPEAT('long ', 100),
  x'0102', x'00ff', x'deadbeef', '', 'big',
  b'1', b'1010101010', x'ffffffffffffffff',
  'b', 'x,z',
  '{"k": [1, 2.5, "s", null, true], "o": {}}',
  ST_GeomFromText('LINESTRING(0 0,1 1)'), POINT(1, 2)
)"""

EXPECTED_1: dict[str, Any] = {
    "id": 1,
    "ti": -128,
    "tiu": 255,
    "si": -32768,
    "siu": 65535,
    "mi": -8388608,
    "miu": 16777215,
    "i": -2147483648,
    "iu": 4294967295,
    "bi": -9223372036854775808,
    "biu": 18446744073709551615,
    "f": 1.1,
    "d": 2.5e-300,
    "dec1": "-0.01",
    "dec2": "12345678901234567890.0123456789",
    "dec3": "-99999",
    "dec4": "-12345678901234567890123456789012345.123456789012345678901234567891",
    "yr": 2155,
    "dt": "9999-12-31",
    "tm": "-838:59:59",
    "tm3": "-01:02:03.500",
    "tm6": "12:34:56.789012",
    "tm1": "-00:00:00.1",
    "dtm": "1000-01-01T00:00:00",
    "dtm2": "2024-02-29T23:59:59.99",
    "dtm6": "2024-01-02T03:04:05.123456",
    "ts": "2038-01-19T03:14:07Z",
    "ts6": "1970-01-01T00:00:01.000001Z",
    "vc": "emoji 😀",
    "vcl": "x" * 300,
    "c": "ab",  # CHAR drops trailing spaces, as SELECT does
    "cbig": "é" * 255,
    "cl1": "café€",
    "vl1": "ñ",
    "u3": "été",
    "u16": "ü€",
    "cyr": "Привет",
    "txt": "text",
    "ttxt": "tiny",
    "mtxt": "medium",
    "ltxt": "long " * 100,
    "bn": b64(b"\x01\x02\x00\x00"),  # BINARY(4) is zero-padded
    "vbn": b64(b"\x00\xff"),
    "bl": b64(b"\xde\xad\xbe\xef"),
    "tbl": "",
    "lbl": b64(b"big"),
    "bt1": 1,
    "bt10": 0b1010101010,
    "bt64": 2**64 - 1,
    "en": "b",
    "st": ["x", "z"],
    "js": {"k": [1, 2.5, "s", None, True], "o": {}},
    # WKB: byte order 1, type 2 (LineString), 2 points
    "geo": b64(
        bytes.fromhex("010200000002000000") + bytes(16) + bytes.fromhex("000000000000f03f") * 2
    ),
    "pt": b64(bytes.fromhex("0101000000000000000000f03f0000000000000040")),
}

ROW_2_ZERO = """(2,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, -0.0000000001, 0, 0.000000000000000000000000000001,
  0, '0000-00-00', '00:00:00', '00:00:00.000', '-00:00:00.000001', '00:00:00.0',
  '0000-00-00 00:00:00', '0000-00-00 00:00:00.00', '2024-01-02 03:04:05.000001',
  '0000-00-00 00:00:00', '2000-01-01 00:00:00.5',
  '', '', '', '', '', '', '', '', '', '', '', '', '', x'', x'', x'', x'', x'',
  b'0', b'0', 0, '', '', '[]', NULL, NULL
)"""

EXPECTED_2: dict[str, Any] = {
    "id": 2,
    **dict.fromkeys(["ti", "tiu", "si", "siu", "mi", "miu", "i", "iu", "bi", "biu"], 0),
    "f": 0.0,
    "d": 0.0,
    "dec1": "0.00",
    "dec2": "-0.0000000001",
    "dec3": "0",
    "dec4": "0.000000000000000000000000000001",
    "yr": 0,
    "dt": "0000-00-00",
    "tm": "00:00:00",
    "tm3": "00:00:00.000",
    "tm6": "-00:00:00.000001",
    "tm1": "00:00:00.0",
    "dtm": "0000-00-00T00:00:00",
    "dtm2": "0000-00-00T00:00:00.00",
    "dtm6": "2024-01-02T03:04:05.000001",
    "ts": "0000-00-00T00:00:00Z",
    "ts6": "2000-01-01T00:00:00.500000Z",
    **dict.fromkeys(
        ["vc", "vcl", "c", "cbig", "cl1", "vl1", "u3", "u16", "cyr", "txt", "ttxt", "mtxt"], ""
    ),
    "ltxt": "",
    "bn": b64(bytes(4)),
    "vbn": "",
    "bl": "",
    "tbl": "",
    "lbl": "",
    "bt1": 0,
    "bt10": 0,
    "bt64": 0,
    "en": "",  # the error value MySQL stores for an invalid ENUM
    "st": [],
    "js": [],
    "geo": None,
    "pt": None,
}


@pytest.fixture(scope="module")
def golden(mariadb: PrivateMariaDB) -> Iterator[tuple[Follower, list[Transaction]]]:
    """Run the golden script once; tests look at different parts of the result."""
    mariadb.sql("DROP DATABASE IF EXISTS golden; CREATE DATABASE golden")
    follower = Follower(mariadb)
    prelude = "SET NAMES utf8mb4; SET time_zone = '+00:00'; SET sql_mode = '';"
    mariadb.sql(ALL_TYPES, "golden")
    mariadb.sql(f"{prelude} INSERT INTO all_types VALUES {ROW_1}", "golden")
    mariadb.sql(f"{prelude} INSERT INTO all_types VALUES {ROW_2_ZERO}", "golden")
    mariadb.sql("INSERT INTO all_types (id) VALUES (3)", "golden")
    mariadb.sql(
        "SET NAMES utf8mb4; "
        "UPDATE all_types SET vc = 'changed', iu = 7, js = '{\"a\": 1}' WHERE id = 1",
        "golden",
    )
    mariadb.sql("DELETE FROM all_types WHERE id = 2", "golden")
    yield follower, follower.transactions("golden")


def test_every_type_decodes_exactly(golden: tuple[Follower, list[Transaction]]) -> None:
    _, txns = golden
    inserts = [c for c in changes(txns) if c.type == "insert"]
    assert inserts[0].data == EXPECTED_1
    assert inserts[1].data == EXPECTED_2
    assert inserts[2].data == {"id": 3, **{k: None for k in EXPECTED_1 if k != "id"}}
    assert [c.old for c in inserts] == [None, None, None]
    assert all(c.database == "golden" and c.table == "all_types" for c in inserts)


def test_update_old_holds_only_changed_columns(golden: tuple[Follower, list[Transaction]]) -> None:
    _, txns = golden
    (update,) = [c for c in changes(txns) if c.type == "update"]
    assert update.old == {"vc": "emoji 😀", "iu": 4294967295, "js": EXPECTED_1["js"]}
    assert update.data == {**EXPECTED_1, "vc": "changed", "iu": 7, "js": {"a": 1}}


def test_delete_carries_full_before_image(golden: tuple[Follower, list[Transaction]]) -> None:
    _, txns = golden
    (delete,) = [c for c in changes(txns) if c.type == "delete"]
    assert delete.data == EXPECTED_2
    assert delete.old is None


def test_transaction_metadata_and_positions(
    golden: tuple[Follower, list[Transaction]], mariadb: PrivateMariaDB
) -> None:
    follower, txns = golden
    ddl, *dml = txns
    assert ddl.changes == [] and ddl.xid is None
    assert ddl.ddl[0][0] == "golden" and "CREATE TABLE all_types" in ddl.ddl[0][1]
    assert len(dml) == 5 and all(len(t.changes) == 1 and t.xid for t in dml)
    domain, server, seqs = None, None, []
    for t in txns:
        assert t.gtid is not None
        d, s, n = t.gtid.split("-")
        domain, server = domain or d, server or s
        assert (d, s) == (domain, server)
        seqs.append(int(n))
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # positions are transaction ends, strictly increasing, and the last one is where
    # the server's binlog ended after the script (nothing else wrote in between)
    positions = [t.position.pos for t in txns]
    assert positions == sorted(positions)
    assert all(t.position.gtid == t.gtid for t in txns)  # one domain: state = last GTID
    assert all(t.ts > 1_600_000_000 for t in txns)
    assert follower.decoder.position == txns[-1].position
    # the JSON column was spotted through information_schema, once per table id
    assert {(r.database, r.table) for r in follower.requests} == {("golden", "all_types")}


# -- transactions and schema changes --------------------------------------------------------


def test_multi_row_rolled_back_and_ddl_mid_stream(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS evo; CREATE DATABASE evo")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10))", "evo")
    follower = Follower(mariadb)
    mariadb.sql(
        "BEGIN; INSERT INTO t VALUES (1, 'one'), (2, 'two');"
        "INSERT INTO t VALUES (3, 'three'); UPDATE t SET a = 'uno' WHERE id = 1;"
        "DELETE FROM t WHERE id = 2; COMMIT;",
        "evo",
    )
    mariadb.sql("BEGIN; INSERT INTO t VALUES (99, 'never'); ROLLBACK;", "evo")
    mariadb.sql("ALTER TABLE t ADD COLUMN b INT NOT NULL DEFAULT 7", "evo")
    mariadb.sql("INSERT INTO t VALUES (4, 'four', 4)", "evo")
    mariadb.sql("ALTER TABLE t RENAME COLUMN a TO aa", "evo")
    mariadb.sql("UPDATE t SET aa = 'drei' WHERE id = 3", "evo")
    mariadb.sql("ALTER TABLE t DROP COLUMN b", "evo")
    mariadb.sql("DELETE FROM t WHERE id = 4", "evo")
    txns = follower.transactions("evo")

    multi, add, ins, rename, upd, drop, delete = txns
    assert [(c.type, c.data, c.old) for c in multi.changes] == [
        ("insert", {"id": 1, "a": "one"}, None),
        ("insert", {"id": 2, "a": "two"}, None),
        ("insert", {"id": 3, "a": "three"}, None),
        ("update", {"id": 1, "a": "uno"}, {"a": "one"}),
        ("delete", {"id": 2, "a": "two"}, None),
    ]
    assert multi.xid is not None
    assert not any(c.data.get("id") == 99 for t in txns for c in t.changes)  # rolled back
    assert [d for t in (add, rename, drop) for d in t.ddl] == [
        ("evo", "ALTER TABLE t ADD COLUMN b INT NOT NULL DEFAULT 7"),
        ("evo", "ALTER TABLE t RENAME COLUMN a TO aa"),
        ("evo", "ALTER TABLE t DROP COLUMN b"),
    ]
    assert [c.data for c in ins.changes] == [{"id": 4, "a": "four", "b": 4}]
    assert [(c.data, c.old) for c in upd.changes] == [
        ({"id": 3, "aa": "drei", "b": 7}, {"aa": "three"})
    ]
    assert [c.data for c in delete.changes] == [{"id": 4, "aa": "four"}]


def test_standalone_ddl_statements_commit_on_their_own(mariadb: PrivateMariaDB) -> None:
    follower = Follower(mariadb)
    mariadb.sql("DROP DATABASE IF EXISTS ddlonly; CREATE DATABASE ddlonly")
    mariadb.sql("CREATE TABLE t (id INT); CREATE INDEX ix ON t (id); DROP TABLE t", "ddlonly")
    txns = follower.transactions("ddlonly")
    assert [t.ddl[0][1].split()[0] for t in txns] == ["DROP", "CREATE", "CREATE", "CREATE", "DROP"]
    assert all(t.changes == [] and len(t.ddl) == 1 for t in txns)
    assert follower.decoder.position.pos == master_status(mariadb)[1]


def test_position_matches_server_after_each_transaction(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("CREATE DATABASE IF NOT EXISTS posdb")
    mariadb.sql("CREATE TABLE IF NOT EXISTS p (id INT PRIMARY KEY)", "posdb")
    follower = Follower(mariadb)
    for i in range(3):
        mariadb.sql(f"REPLACE INTO p VALUES ({i})", "posdb")
        (txn,) = follower.transactions()
        file, pos, gtid = master_status(mariadb)
        assert txn.position == Position(file, pos, gtid)


# -- servers configured differently --------------------------------------------------------


def test_names_from_information_schema_with_minimal_metadata(tmp_path: Path) -> None:
    with PrivateMariaDB(tmp_path / "db", binlog_row_metadata="MINIMAL") as db:
        db.sql("CREATE DATABASE m")
        db.sql(
            "CREATE TABLE t (id INT UNSIGNED PRIMARY KEY, name VARCHAR(10) CHARACTER SET latin1,"
            " doc JSON, raw BLOB, e ENUM('p','q'))",
            "m",
        )
        follower = Follower(db, names_from_binlog=False)
        db.sql("INSERT INTO t VALUES (4294967295, 'né', '{\"x\": [1]}', x'00', 'q')", "m")
        (txn,) = follower.transactions("m")
        # names and the JSON column come from information_schema; signedness and charsets
        # still from the binlog's MINIMAL metadata; ENUM labels need FULL: the index remains
        assert txn.changes[0].data == {
            "id": 4294967295,
            "name": "né",
            "doc": {"x": [1]},
            "raw": b64(b"\x00"),
            "e": 2,
        }
        assert [(r.database, r.table) for r in follower.requests] == [("m", "t")]
        # a schema change invalidates what was cached: the next TABLE_MAP asks again
        db.sql("ALTER TABLE t ADD COLUMN extra INT", "m")
        db.sql("UPDATE t SET extra = 5", "m")
        alter, update = follower.transactions("m")
        assert alter.ddl and update.changes[0].old == {"extra": None}
        assert update.changes[0].data["extra"] == 5
        assert len(follower.requests) == 2


def test_compressed_binlog_events_without_checksums(tmp_path: Path) -> None:
    args = ["--log-bin-compress=ON", "--log-bin-compress-min-len=10", "--binlog-checksum=NONE"]
    with PrivateMariaDB(tmp_path / "db", extra_args=args) as db:
        db.sql("CREATE DATABASE z")
        db.sql("CREATE TABLE t (id INT PRIMARY KEY, s TEXT CHARACTER SET latin1)", "z")
        follower = Follower(db)
        db.sql("INSERT INTO t VALUES (1, REPEAT('abc', 100)), (2, 'x')", "z")
        db.sql("UPDATE t SET s = 'y' WHERE id = 2; DELETE FROM t WHERE id = 1", "z")
        db.sql("ALTER TABLE t ADD COLUMN pad VARCHAR(200) DEFAULT 'ok'", "z")
        txns = follower.transactions("z")
        events = BinlogTail(db.datadir, "binlog.000001").read()
        assert {165, 166, 167, 168} <= {e[4] for e in events}  # really compressed events
        assert events[0][4] == 15 and events[0][-5] == 0  # FORMAT_DESCRIPTION: checksums off
        assert [(c.type, c.data, c.old) for c in changes(txns)] == [
            ("insert", {"id": 1, "s": "abc" * 100}, None),
            ("insert", {"id": 2, "s": "x"}, None),
            ("update", {"id": 2, "s": "y"}, {"s": "x"}),
            ("delete", {"id": 1, "s": "abc" * 100}, None),
        ]
        assert txns[-1].ddl == [("z", "ALTER TABLE t ADD COLUMN pad VARCHAR(200) DEFAULT 'ok'")]


def test_xa_changes_are_delivered_at_xa_commit(mariadb: PrivateMariaDB) -> None:
    mariadb.sql("DROP DATABASE IF EXISTS xadb; CREATE DATABASE xadb")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY)", "xadb")
    follower = Follower(mariadb)
    mariadb.sql("XA START 'x1'; INSERT INTO t VALUES (1); XA END 'x1'; XA PREPARE 'x1'", "xadb")
    mariadb.sql("XA START 'x3'; INSERT INTO t VALUES (3); XA END 'x3'; XA PREPARE 'x3'", "xadb")
    assert follower.transactions("xadb") == []  # prepared, not committed
    mariadb.sql("XA COMMIT 'x1'; XA ROLLBACK 'x3'", "xadb")
    mariadb.sql(
        "XA START 'x2'; INSERT INTO t VALUES (2); XA END 'x2'; XA COMMIT 'x2' ONE PHASE", "xadb"
    )
    txns = follower.transactions("xadb")
    assert [[c.data for c in t.changes] for t in txns] == [[{"id": 1}], [{"id": 2}]]
    file, pos, gtid = master_status(mariadb)
    assert follower.decoder.position == Position(file, pos, gtid)


def test_no_log_metadata_decodes_with_documented_losses(tmp_path: Path) -> None:
    """MariaDB's default binlog_row_metadata=NO_LOG: no signedness, charsets, or labels.

    Rows still decode, names and JSON come from information_schema, but unsigned
    values past the signed range wrap, every string is read as UTF-8, binary columns
    are not told apart from text, and ENUM/SET give their stored numbers.
    """
    with PrivateMariaDB(tmp_path / "db", binlog_row_metadata="NO_LOG") as db:
        db.sql("CREATE DATABASE n")
        db.sql(
            "CREATE TABLE t (id INT UNSIGNED PRIMARY KEY, small INT UNSIGNED, s VARCHAR(10),"
            " doc JSON, e ENUM('p','q'))",
            "n",
        )
        follower = Follower(db, names_from_binlog=False)
        db.sql("SET NAMES utf8mb4; INSERT INTO t VALUES (4294967295, 7, 'ü', '[1]', 'q')", "n")
        (txn,) = follower.transactions("n")
        assert txn.changes[0].data == {"id": -1, "small": 7, "s": "ü", "doc": [1], "e": 2}


def test_minimal_row_image(tmp_path: Path) -> None:
    """binlog_row_image=MINIMAL: keys in the before image, changed columns in the after."""
    with PrivateMariaDB(tmp_path / "db", extra_args=["--binlog-row-image=MINIMAL"]) as db:
        db.sql("CREATE DATABASE mi")
        db.sql("CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(5), c INT)", "mi")
        follower = Follower(db)
        db.sql("INSERT INTO t VALUES (1, 10, 'x', NULL)", "mi")
        db.sql("UPDATE t SET b = 'y', c = 3 WHERE id = 1", "mi")
        db.sql("DELETE FROM t WHERE id = 1", "mi")
        ins, upd, dele = changes(follower.transactions("mi"))
        assert ins.data == {"id": 1, "a": 10, "b": "x", "c": None}
        assert (upd.data, upd.old) == ({"id": 1, "b": "y", "c": 3}, {})
        assert dele.data == {"id": 1}
