"""TABLE_MAP events: a table's column types, metadata and (optional) names.

The optional metadata block (MySQL 8 / MariaDB 10.5+ `binlog_row_metadata`)
carries signedness, collations, names, ENUM/SET labels and the primary key as
type-length-value fields; see `Table_map_log_event::init_metadata_fields`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.source.binlog import constants as c
from tidings.source.binlog.charsets import text_decoder
from tidings.source.binlog.errors import BinlogError
from tidings.source.binlog.reader import Reader, bits


@dataclass(slots=True, frozen=True)
class TableInfo:
    """What the schema side knows about a table (from information_schema)."""

    #: column names in ordinal order (used only when the binlog lacks names)
    columns: tuple[str, ...]
    #: MariaDB JSON columns (LONGTEXT with CHECK json_valid): decoded as JSON
    json_columns: frozenset[str]


@dataclass(slots=True, frozen=True)
class TableInfoRequest:
    """Asks the caller for a `TableInfo` before the next event is fed."""

    database: str
    table: str
    table_id: int


BLOBS = frozenset({c.T_BLOB, c.T_TINY_BLOB, c.T_MEDIUM_BLOB, c.T_LONG_BLOB})
_NUMERIC = frozenset(
    {c.T_TINY, c.T_SHORT, c.T_INT24, c.T_LONG, c.T_LONGLONG, c.T_NEWDECIMAL, c.T_FLOAT, c.T_DOUBLE}
)
# MariaDB's Field_year derives from Field_tiny and so gets a signedness bit; MySQL's doesn't
_NUMERIC_MARIADB = _NUMERIC | {c.T_YEAR}
_CHARACTER = frozenset({c.T_STRING, c.T_VAR_STRING, c.T_VARCHAR}) | BLOBS
# MariaDB's Field_geom has a (binary) charset, so it counts as a character column
_CHARACTER_MARIADB = _CHARACTER | {c.T_GEOMETRY}


@dataclass(slots=True)
class Column:
    index: int
    #: binlog type; a STRING column whose real type is ENUM or SET gets T_ENUM/T_SET
    type: int
    nullable: bool
    #: type-specific size: max bytes (CHAR/VARCHAR), length bytes (BLOB family), pack
    #: length (ENUM/SET), bits (BIT), fsp (temporal 2 types), precision (DECIMAL)
    length: int = 0
    #: DECIMAL scale
    scale: int = 0
    unsigned: bool = False
    #: collation id; None when the binlog does not say
    collation: int | None = None
    name: str | None = None
    #: ENUM/SET labels
    labels: tuple[str, ...] | None = None


@dataclass(slots=True)
class TableMap:
    table_id: int
    database: str
    table: str
    columns: list[Column]
    has_names: bool = False
    #: primary key column indexes, when the binlog says (binlog_row_metadata=FULL)
    primary_key: tuple[int, ...] = ()
    #: whether the binlog gave column collations (binlog_row_metadata MINIMAL or FULL)
    has_charsets: bool = False
    #: optional metadata fields not interpreted here (GEOMETRY_TYPE, COLUMN_VISIBILITY...)
    extra: dict[int, bytes] = field(default_factory=dict)

    def needs_info(self, mariadb: bool) -> bool:
        """True when names are missing or a text BLOB might be a MariaDB JSON column."""
        if not self.has_names:
            return True
        return mariadb and any(
            col.type in BLOBS and col.collation != c.BINARY_COLLATION for col in self.columns
        )


def parse_table_map(body: bytes, table_id_size: int, mariadb: bool) -> TableMap:
    """Parse a TABLE_MAP event body (after the common header, before the CRC)."""
    r = Reader(body)
    table_id = r.uint(table_id_size)
    r.take(2)  # flags
    database = r.take(r.u8()).decode("utf-8", "replace")
    r.take(1)
    table = r.take(r.u8()).decode("utf-8", "replace")
    r.take(1)
    count = r.packed()
    types = r.take(count)
    meta = Reader(r.take(r.packed()))
    nullable = bits(r.take((count + 7) // 8), count)
    columns = [_column(i, t, meta, nullable[i]) for i, t in enumerate(types)]
    if meta.remaining():
        raise BinlogError(f"TABLE_MAP {database}.{table}: {meta.remaining()} metadata bytes left")
    tm = TableMap(table_id, database, table, columns)
    if r.remaining():
        _optional_metadata(tm, r, mariadb)
    return tm


def _column(index: int, type_: int, meta: Reader, nullable: bool) -> Column:
    col = Column(index, type_, nullable)
    if type_ in (c.T_FLOAT, c.T_DOUBLE, c.T_GEOMETRY, c.T_JSON) or type_ in BLOBS:
        col.length = meta.u8()
    elif type_ in (c.T_VARCHAR, c.T_VAR_STRING):
        col.length = meta.uint(2)
    elif type_ == c.T_BIT:
        extra_bits = meta.u8()
        col.length = meta.u8() * 8 + extra_bits
    elif type_ == c.T_NEWDECIMAL:
        col.length = meta.u8()
        col.scale = meta.u8()
    elif type_ in (c.T_STRING, c.T_ENUM, c.T_SET):
        b0 = meta.u8()
        b1 = meta.u8()
        if b0 in (c.T_ENUM, c.T_SET):
            col.type = b0
            col.length = b1  # pack length
        elif (b0 & 0x30) != 0x30:
            # CHAR longer than 255 bytes: two length bits hide in the real-type byte
            col.length = b1 | (((b0 & 0x30) ^ 0x30) << 4)
        else:
            col.length = b1
    elif type_ in (c.T_TIMESTAMP2, c.T_DATETIME2, c.T_TIME2):
        col.length = meta.u8()
    _check(col)
    return col


def _check(col: Column) -> None:
    """Reject metadata no server writes, so row decoding can trust it."""
    t, n = col.type, col.length
    bad = (
        (t == c.T_NEWDECIMAL and not (col.scale <= n <= 65 and col.scale <= 38 and n > 0))
        or (t in (c.T_TIMESTAMP2, c.T_DATETIME2, c.T_TIME2) and n > 6)
        or ((t in BLOBS or t in (c.T_GEOMETRY, c.T_JSON)) and not 1 <= n <= 4)
        or (t == c.T_BIT and n > 64)
        or (t == c.T_ENUM and n not in (1, 2))
        or (t == c.T_SET and not 1 <= n <= 8)
    )
    if bad:
        raise BinlogError(f"bad TABLE_MAP metadata for column {col.index + 1} (type {t})")


def _optional_metadata(tm: TableMap, r: Reader, mariadb: bool) -> None:
    cols = tm.columns
    numeric = _NUMERIC_MARIADB if mariadb else _NUMERIC
    character = _CHARACTER_MARIADB if mariadb else _CHARACTER
    char_cols = [col for col in cols if col.type in character]
    enum_set_cols = [col for col in cols if col.type in (c.T_ENUM, c.T_SET)]
    raw_labels: dict[int, list[list[bytes]]] = {}
    while r.remaining():
        kind = r.u8()
        value = Reader(r.take(r.packed()))
        if kind == c.OM_SIGNEDNESS:
            nums = [col for col in cols if col.type in numeric]
            data = value.rest()
            if len(data) * 8 < len(nums):
                raise BinlogError(f"TABLE_MAP {tm.database}.{tm.table}: short SIGNEDNESS")
            for i, col in enumerate(nums):
                col.unsigned = bool(data[i >> 3] & (0x80 >> (i & 7)))
        elif kind in (c.OM_DEFAULT_CHARSET, c.OM_ENUM_AND_SET_DEFAULT_CHARSET):
            targets = char_cols if kind == c.OM_DEFAULT_CHARSET else enum_set_cols
            default = value.packed()
            for col in targets:
                col.collation = default
            while value.remaining():
                i = value.packed()
                collation = value.packed()
                if i >= len(targets):
                    raise BinlogError(f"TABLE_MAP {tm.database}.{tm.table}: bad charset index")
                targets[i].collation = collation
            tm.has_charsets = True
        elif kind in (c.OM_COLUMN_CHARSET, c.OM_ENUM_AND_SET_COLUMN_CHARSET):
            targets = char_cols if kind == c.OM_COLUMN_CHARSET else enum_set_cols
            for col in targets:
                col.collation = value.packed()
            tm.has_charsets = True
        elif kind == c.OM_COLUMN_NAME:
            for col in cols:
                col.name = value.take(value.packed()).decode("utf-8", "replace")
            tm.has_names = True
        elif kind in (c.OM_SET_STR_VALUE, c.OM_ENUM_STR_VALUE):
            lists = raw_labels.setdefault(kind, [])
            while value.remaining():
                lists.append([value.take(value.packed()) for _ in range(value.packed())])
        elif kind == c.OM_SIMPLE_PRIMARY_KEY:
            pk = []
            while value.remaining():
                pk.append(value.packed())
            tm.primary_key = tuple(pk)
        elif kind == c.OM_PRIMARY_KEY_WITH_PREFIX:
            pk = []
            while value.remaining():
                pk.append(value.packed())
                value.packed()  # prefix length
            tm.primary_key = tuple(pk)
        else:  # GEOMETRY_TYPE, COLUMN_VISIBILITY and anything newer: not needed
            tm.extra[kind] = value.rest()
    for kind, type_ in ((c.OM_SET_STR_VALUE, c.T_SET), (c.OM_ENUM_STR_VALUE, c.T_ENUM)):
        targets = [col for col in cols if col.type == type_]
        lists = raw_labels.get(kind, [])
        if lists and len(lists) != len(targets):
            raise BinlogError(f"TABLE_MAP {tm.database}.{tm.table}: label lists do not match")
        for col, labels in zip(targets, lists, strict=False):
            decode = text_decoder(col.collation)
            col.labels = tuple(decode(label) for label in labels)
