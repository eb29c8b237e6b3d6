"""Row images, compiled once per table and column set.

Theory of operation. A rows event is a run of row images; each image is a null
bitmap followed by the non-null values back to back, so a value's offset depends
on every value before it. Interpreting that per value (a loop over columns calling
one decoder each) costs a Python call per column. Instead, the first rows event
for a given table layout and column set generates the source of one function that
decodes every row of such an event: fixed-width NOT NULL neighbours share one
`struct.unpack_from`, integers, strings, DECIMALs up to 18 digits and the common
temporal types are inlined (dates and times reuse cached "YYYY-MM-DDTHH:MM:"
prefixes, see `values.py`), the rest call helpers, and each row dict is built from
a literal. The function is cached on the table's `Binding`; names, database and
table reach the source only through `repr()`, constants through the namespace.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from tidings.source.binlog import constants as c
from tidings.source.binlog import values as v
from tidings.source.binlog.charsets import MYSQL_LATIN1, codec_for, decode_latin1
from tidings.source.binlog.errors import BinlogError
from tidings.source.binlog.mysqljson import decode_json
from tidings.source.binlog.tablemap import Column, TableMap
from tidings.source.changes import RowChange, RowType

#: (rows, position after the last row)
RowsDecoder = Callable[[bytes, int, int], tuple[list[RowChange], int]]

# struct codes of fixed-width types, (signed, unsigned)
_STRUCT = {
    c.T_TINY: ("b", "B"),
    c.T_SHORT: ("h", "H"),
    c.T_LONG: ("i", "I"),
    c.T_LONGLONG: ("q", "Q"),
    c.T_FLOAT: ("f", "f"),
    c.T_DOUBLE: ("d", "d"),
    c.T_YEAR: ("B", "B"),
}


def _json_text(data: bytes) -> Any:
    """A MariaDB JSON (LONGTEXT) value; text that is not JSON stays a string."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


def _geometry(data: bytes) -> str:
    # MySQL stores a 4-byte SRID before the WKB
    return v.base64(data[4:])


def _null_in_not_null(table: str) -> BinlogError:
    return BinlogError(f"{table}: NULL flagged for a NOT NULL column (corrupt row image)")


_HELPERS: dict[str, Any] = {
    "_RC": RowChange,
    "_b64": v.base64,
    "_latin1": decode_latin1,
    "_float32": v.float32,
    "_decimal": v.read_decimal,
    "_time": v.read_time,
    "_time2": v.read_time2,
    "_datetime": v.read_datetime,
    "_timestamp": v.read_timestamp,
    "_set": v.set_labels,
    "_json_text": _json_text,
    "_mysql_json": decode_json,
    "_geometry": _geometry,
    "_null_error": _null_in_not_null,
    "_from_bytes": int.from_bytes,
    "_TWO": v.TWO_DIGITS,
    "_dtp": v.DATETIME_PREFIX,
    "_dt_prefix": v.datetime2_prefix,
    "_tsp": v.EPOCH_PREFIX,
    "_ts_prefix": v.epoch_prefix,
    "_dates": v.DATES,
    "_date_text": v.date_text,
}


_MAX_DECODERS = 256


class Binding:
    """A table map bound to its final column names and JSON columns, with compiled decoders."""

    __slots__ = ("_decoders", "json", "names", "table_map")

    def __init__(self, table_map: TableMap, names: Sequence[str], json: frozenset[int]) -> None:
        self.table_map = table_map
        self.names = tuple(names)
        #: column indexes holding MariaDB JSON text
        self.json = json
        self._decoders: dict[tuple[str, bytes, bytes], RowsDecoder] = {}

    def decoder(self, kind: RowType, present: bytes, present_after: bytes) -> RowsDecoder:
        key = (kind, present, present_after)
        fn = self._decoders.get(key)
        if fn is None:
            # binlog_row_image=MINIMAL can vary the column set per row: bound the cache
            if len(self._decoders) >= _MAX_DECODERS:
                self._decoders.clear()
            fn = self._decoders[key] = compile_rows(self, kind, present, present_after)
        return fn


def _columns_in(bitmap: bytes, count: int) -> list[int]:
    return [i for i in range(count) if bitmap[i >> 3] >> (i & 7) & 1]


class _Source:
    """Lines of generated code plus the constants they refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = dict(_HELPERS)

    def const(self, value: Any) -> str:
        name = f"_k{len(self.ns)}"
        self.ns[name] = value
        return name

    def emit(self, indent: int, *lines: str) -> None:
        self.lines.extend("    " * indent + line for line in lines)


def compile_rows(
    binding: Binding, kind: RowType, present: bytes, present_after: bytes
) -> RowsDecoder:
    tm = binding.table_map
    cols = tm.columns
    before = _columns_in(present, len(cols))
    after = _columns_in(present_after, len(cols)) if kind == "update" else []
    for i in (*before, *after):
        _check_supported(tm, cols[i])
    src = _Source()
    qualified = f"{tm.database}.{tm.table}"
    src.emit(0, "def rows(buf, pos, end):", "    out = []", "    append = out.append")
    src.emit(1, "while pos < end:")
    names = binding.names
    if kind == "update":
        _emit_image(src, binding, before, "b", qualified)
        _emit_image(src, binding, after, "a", qualified)
        src.emit(2, "old = {}")
        for i in sorted(set(before) & set(after)):
            src.emit(2, f"if b{i} != a{i}:", f"    old[{names[i]!r}] = b{i}")
        # binlog_row_image=MINIMAL: the before image holds the key, the after image only
        # the changed columns; `data` gets both (with FULL images they are the same set)
        after_set = set(after)
        data = ", ".join(
            f"{names[i]!r}: {'a' if i in after_set else 'b'}{i}" for i in sorted({*before, *after})
        )
        src.emit(2, f"append(_RC('update', {tm.database!r}, {tm.table!r}, {{{data}}}, old))")
    else:
        _emit_image(src, binding, before, "a", qualified)
        data = ", ".join(f"{names[i]!r}: a{i}" for i in before)
        src.emit(2, f"append(_RC({kind!r}, {tm.database!r}, {tm.table!r}, {{{data}}}))")
    src.emit(1, "return out, pos")
    code = "\n".join(src.lines)
    exec(compile(code, f"<rows {qualified} {kind}>", "exec"), src.ns)
    fn: RowsDecoder = src.ns["rows"]
    return fn


def _check_supported(tm: TableMap, col: Column) -> None:
    if _fixed_size(col) is None and col.type not in _VARIABLE:
        raise BinlogError(
            f"{tm.database}.{tm.table}: unsupported column type {col.type} "
            f"(column {col.name or col.index + 1})"
        )


_VARIABLE = frozenset(
    {
        c.T_VARCHAR,
        c.T_VAR_STRING,
        c.T_STRING,
        c.T_BLOB,
        c.T_TINY_BLOB,
        c.T_MEDIUM_BLOB,
        c.T_LONG_BLOB,
        c.T_GEOMETRY,
        c.T_JSON,
    }
)


def _fixed_size(col: Column) -> int | None:
    """Bytes a value of `col` always takes, or None when it has a length prefix."""
    t = col.type
    if t in _STRUCT:
        return struct.calcsize("<" + _STRUCT[t][0])
    if t in (c.T_DATE, c.T_NEWDATE, c.T_TIME, c.T_INT24):
        return 3
    if t in (c.T_TIMESTAMP,):
        return 4
    if t == c.T_DATETIME:
        return 8
    if t == c.T_TIMESTAMP2:
        return 4 + v.frac_size(col.length)
    if t == c.T_DATETIME2:
        return 5 + v.frac_size(col.length)
    if t == c.T_TIME2:
        return 3 + v.frac_size(col.length)
    if t == c.T_NEWDECIMAL:
        return v.decimal_size(col.length, col.scale)
    if t == c.T_BIT:
        return (col.length + 7) // 8
    if t in (c.T_ENUM, c.T_SET):
        return col.length
    if t == c.T_NULL:
        return 0
    return None


def _struct_code(col: Column) -> str | None:
    codes = _STRUCT.get(col.type)
    return None if codes is None else codes[col.unsigned]


def _emit_image(
    src: _Source, binding: Binding, present: list[int], prefix: str, table: str
) -> None:
    cols = binding.table_map.columns
    nb = (len(present) + 7) // 8
    if nb == 1:
        src.emit(2, "nulls = buf[pos]", "pos += 1")
    elif nb > 1:
        src.emit(2, f"nulls = _from_bytes(buf[pos:pos + {nb}], 'little')", f"pos += {nb}")
    not_null = sum(1 << j for j, i in enumerate(present) if not cols[i].nullable)
    if not_null:
        src.emit(2, f"if nulls & {not_null}:", f"    raise _null_error({table!r})")
    j = 0
    while j < len(present):
        col = cols[present[j]]
        if not col.nullable and _struct_code(col) is not None:
            run = [col]
            while (
                j + len(run) < len(present)
                and not (nxt := cols[present[j + len(run)]]).nullable
                and _struct_code(nxt) is not None
            ):
                run.append(nxt)
            unpack = src.const(struct.Struct("<" + "".join(_struct_code(r) or "" for r in run)))
            names = ", ".join(f"{prefix}{r.index}" for r in run)
            src.emit(2, f"{names}, = {unpack}.unpack_from(buf, pos)")
            src.emit(2, f"pos += {src.ns[unpack].size}")
            for r in run:
                src.emit(2, *_post_struct(r, f"{prefix}{r.index}"))
            j += len(run)
            continue
        var = f"{prefix}{col.index}"
        lines = _value_lines(src, binding, col, var)
        if col.nullable:
            src.emit(2, f"if nulls & {1 << j}:", f"    {var} = None", "else:")
            src.emit(3, *lines)
        else:
            src.emit(2, *lines)
        j += 1


def _post_struct(col: Column, var: str) -> list[str]:
    if col.type == c.T_FLOAT:
        return [f"{var} = _float32({var})"]
    if col.type == c.T_YEAR:
        return [f"if {var}:", f"    {var} += 1900"]
    return []


def _text_expr(src: _Source, binding: Binding, col: Column, data: str) -> str:
    """Expression turning the bytes expression `data` into the column's JSON value."""
    if col.index in binding.json:
        return f"_json_text({data})"
    codec = codec_for(col.collation)
    if codec is None:
        return f"_b64({data})"
    if codec == MYSQL_LATIN1:
        return f"_latin1({data})"
    return f"{data}.decode({codec!r}, 'replace')"


def _length_prefix(width: int) -> str:
    if width == 1:
        return "buf[pos]"
    if width == 2:
        return "(buf[pos] | buf[pos + 1] << 8)"
    return f"_from_bytes(buf[pos:pos + {width}], 'little')"


def _value_lines(src: _Source, binding: Binding, col: Column, var: str) -> list[str]:
    t = col.type
    code = _struct_code(col)
    if code is not None:
        unpack = src.const(struct.Struct("<" + code))
        size = src.ns[unpack].size
        unpack_line = f"{var}, = {unpack}.unpack_from(buf, pos)"
        return [unpack_line, f"pos += {size}", *_post_struct(col, var)]
    inline = _INLINE.get(t)
    if inline is not None and (lines := inline(col, var)):
        return lines
    size = _fixed_size(col)
    if size is not None:
        return [f"{var} = {_fixed_expr(src, col)}", f"pos += {size}"]
    # length-prefixed values
    if t in (c.T_VARCHAR, c.T_VAR_STRING, c.T_STRING):
        width = 1 if col.length < 256 else 2
    else:  # BLOB family, GEOMETRY, JSON: the metadata is the length width
        width = col.length
        if not 1 <= width <= 4:
            raise BinlogError(f"column {col.name or col.index + 1}: bad length width {width}")
    data = "buf[pos:pos + n]"
    if t == c.T_STRING and codec_for(col.collation) is None and col.index not in binding.json:
        # BINARY(n): the binlog drops trailing zero bytes; SELECT returns them
        expr = f"_b64({data}.ljust({col.length}, b'\\x00'))"
    elif t == c.T_GEOMETRY:
        expr = f"_geometry({data})"
    elif t == c.T_JSON:
        expr = f"_mysql_json({data})"
    else:
        expr = _text_expr(src, binding, col, data)
    return [f"n = {_length_prefix(width)}", f"pos += {width}", f"{var} = {expr}", "pos += n"]


def _frac_format(fsp: int) -> str:
    """f-string piece for the fraction of TIME2/DATETIME2/TIMESTAMP2 held in `y`'s low bytes."""
    if not fsp:
        return ""
    width = v.frac_size(fsp)
    value = f"y & {(1 << 8 * width) - 1}"
    extra_digits = 2 * width - fsp  # the stored fraction has an even number of digits
    if extra_digits:
        value = f"({value}) // 10"
    return f".{{{value}:0{fsp}d}}"


def _datetime2_lines(col: Column, var: str) -> list[str]:
    fsp = col.length
    shift = 8 * v.frac_size(fsp)
    size = 5 + v.frac_size(fsp)
    seconds = f"y >> {shift} & 63" if shift else "y & 63"
    return [
        f"y = _from_bytes(buf[pos:pos + {size}], 'big')",
        f"pos += {size}",
        f"k = y >> {shift + 6}",
        "p = _dtp.get(k)",
        "if p is None:",
        "    p = _dt_prefix(k)",
        f"{var} = f'{{p}}{{_TWO[{seconds}]}}{_frac_format(fsp)}'",
    ]


def _timestamp2_lines(col: Column, var: str) -> list[str]:
    fsp = col.length
    shift = 8 * v.frac_size(fsp)
    size = 4 + v.frac_size(fsp)
    zero = "0000-00-00T00:00:00" + ("." + "0" * fsp if fsp else "") + "Z"
    return [
        f"y = _from_bytes(buf[pos:pos + {size}], 'big')",
        f"pos += {size}",
        "if y:",
        f"    s = y >> {shift}" if shift else "    s = y",
        "    k = s // 60",
        "    p = _tsp.get(k)",
        "    if p is None:",
        "        p = _ts_prefix(k)",
        f"    {var} = f'{{p}}{{_TWO[s % 60]}}{_frac_format(fsp)}Z'",
        "else:",
        f"    {var} = {zero!r}",
    ]


def _date_lines(col: Column, var: str) -> list[str]:
    return [
        "x = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16",
        "pos += 3",
        f"{var} = _dates.get(x)",
        f"if {var} is None:",
        f"    {var} = _date_text(x)",
    ]


def _decimal_lines(col: Column, var: str) -> list[str]:
    """DECIMAL of up to 9 integer and 9 fraction digits: one integer, two bit fields."""
    precision, scale = col.length, col.scale
    if precision - scale > 9 or scale > 9:
        return []  # several 9-digit groups: the general helper
    size = v.decimal_size(precision, scale)
    frac_bits = 8 * v.DIG2BYTES[scale]
    sign = 1 << (8 * size - 1)
    if scale:
        text = f"f'{{x >> {frac_bits}}}.{{x & {(1 << frac_bits) - 1}:0{scale}d}}'"
    else:
        text = "str(x)"
    return [
        f"x = _from_bytes(buf[pos:pos + {size}], 'big')",
        f"pos += {size}",
        f"if x & {sign}:",  # the sign bit is set for positive values
        f"    x ^= {sign}",
        f"    {var} = {text}",
        "else:",  # negative: every bit is stored inverted
        f"    x ^= {sign - 1}",
        f"    {var} = '-' + {text} if x else {text}",
    ]


_INLINE: dict[int, Callable[[Column, str], list[str]]] = {
    c.T_DATETIME2: _datetime2_lines,
    c.T_TIMESTAMP2: _timestamp2_lines,
    c.T_DATE: _date_lines,
    c.T_NEWDATE: _date_lines,
    c.T_NEWDECIMAL: _decimal_lines,
}


def _fixed_expr(src: _Source, col: Column) -> str:
    t = col.type
    if t == c.T_INT24:
        return f"_from_bytes(buf[pos:pos + 3], 'little', signed={not col.unsigned})"
    if t == c.T_TIME:
        return "_time(buf, pos)"
    if t == c.T_TIME2:
        return f"_time2(buf, pos, {col.length})"
    if t == c.T_DATETIME:
        return "_datetime(buf, pos)"
    if t == c.T_TIMESTAMP:
        return "_timestamp(buf, pos)"
    if t == c.T_NEWDECIMAL:
        return f"_decimal(buf, pos, {col.length}, {col.scale})"
    if t == c.T_BIT:
        return f"_from_bytes(buf[pos:pos + {(col.length + 7) // 8}], 'big')"
    if t == c.T_NULL:
        return "None"
    # ENUM / SET: index or bitmask, little-endian
    raw = "buf[pos]" if col.length == 1 else f"_from_bytes(buf[pos:pos + {col.length}], 'little')"
    if col.labels is None:
        return raw  # labels unknown (binlog_row_metadata < FULL): the number itself
    if t == c.T_ENUM:
        # index 0 is the empty string MySQL stores for invalid values
        return f"{src.const(('', *col.labels))}[{raw}]"
    return f"_set({raw}, {src.const(col.labels)})"
