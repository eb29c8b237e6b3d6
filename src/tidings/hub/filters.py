"""Row filters written inside channel names: `shop.orders?customer_id=eq.42&status=in.(new,paid)`.

Pure: no hub state, no I/O. `parse_channel()` splits a channel name into the table
channel and a `RowFilter`; the hub evaluates each distinct filter (`RowFilter.text`)
once per event with `classify()`, and the snapshot reader turns the same filter into
SQL with `to_sql()`. docs/reference/filters.md is the user-facing reference.

Theory of operation. A filter is a conjunction of conditions `column=[not.]op.value`.
Values are typed by how they are written, never by the column (the stream has no
schema, only the event's JSON values):

- number (`42`, `-0.5`): compared numerically with int and float values and with
  strings written as plain decimals (DECIMAL columns arrive as strings), as
  MySQL's DECIMAL(65,30) would (strings are rounded half-up to 30 decimals).
- date-time (`2024-01-02`, `2024-01-02T03:04:05.5`, optional `Z`): compared with
  strings of the same shape after normalising both to `YYYY-MM-DD HH:MM:SS.ffffff`;
  DATE, DATETIME and TIMESTAMP values order as MySQL orders them.
- time (`-12:30:00`, `838:59:59.5`): compared with TIME-shaped strings as a signed
  duration, clipped to TIME's range as MySQL's CAST does.
- string (anything else, or any value in double quotes): compared with string values
  code point by code point: case-sensitive, trailing spaces significant (the order
  of UTF-8 bytes, which is what `to_sql()` compares).

A value that is NULL, missing from the row, or of another domain (an int against a
string literal, a list, a JSON object) does not satisfy a condition; `not.` inverts
a condition for every non-NULL value present in the row. Each condition compiles
to one closure; a filter is the AND of its closures.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias

#: longest filter text after the `?`, in characters
MAX_FILTER_LENGTH = 4096
#: most conditions in one filter
MAX_CONDITIONS = 32
#: most values in one `in.(...)` list
MAX_IN_VALUES = 256
#: longest column name (MySQL's limit)
MAX_COLUMN_LENGTH = 64

Classification: TypeAlias = Literal["match", "enter", "leave"] | None
Row: TypeAlias = Mapping[str, Any]
Predicate: TypeAlias = Callable[[Row], bool]

OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "in", "is")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_SQL_OP = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


class FilterError(ValueError):
    """A channel's filter part is malformed; the message names the bad part."""


# -- value domains ---------------------------------------------------------------------------
# The same patterns run in Python and (as MariaDB PCRE, case-sensitive) in `to_sql()`.
_NUMBER_PATTERN = r"-?[0-9]+(?:[.][0-9]+)?"
_DATETIME_PATTERN = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.][0-9]{1,6})?)?Z?"
)
_TIME_PATTERN = r"-?[0-9]{2,3}:[0-5][0-9]:[0-5][0-9](?:[.][0-9]{1,6})?"
_NUMBER = re.compile(_NUMBER_PATTERN).fullmatch
_DATETIME = re.compile(_DATETIME_PATTERN).fullmatch
_TIME = re.compile(_TIME_PATTERN).fullmatch

# DECIMAL(65,30): what MySQL compares numbers as in to_sql(); strings round half-up to it
_CTX = Context(prec=120, rounding=ROUND_HALF_UP)
_Q30 = Decimal("1e-30")
_DEC_MAX = Decimal("1e35") - _Q30
_DEC_LIMIT = 35  # integer digits

_DT_PAD = " 00:00:00.000000"
# TIME's range; MariaDB's CAST(... AS TIME(6)) clips to it
_TIME_MAX = ((838 * 60 + 59) * 60 + 59) * 1_000_000 + 999_999


def decimal30(text: str) -> Decimal:
    """A plain decimal string as MySQL's CAST(text AS DECIMAL(65,30)): rounded, clamped."""
    value = Decimal(text)
    if len(text) <= 31:  # too short to exceed 30 decimals or 34 integer digits: exact as is
        return value
    if value.adjusted() >= _DEC_LIMIT:
        return _DEC_MAX.copy_sign(value)
    return value.quantize(_Q30, context=_CTX)


def normalize_datetime(text: str) -> str:
    """`2024-01-02T03:04:05.5Z` -> `2024-01-02 03:04:05.500000` (26 characters, sortable)."""
    t = text.replace("T", " ").replace("Z", "")
    return t + _DT_PAD[len(t) - 10 :]


def time_micros(text: str) -> int:
    """`-01:02:03.5` -> signed microseconds, clipped to TIME's range."""
    negative = text.startswith("-")
    hms, _, frac = text.lstrip("-").partition(".")
    h, m, s = hms.split(":")
    micros = ((int(h) * 60 + int(m)) * 60 + int(s)) * 1_000_000 + int(frac.ljust(6, "0") or 0)
    micros = min(micros, _TIME_MAX)
    return -micros if negative else micros


def _number_key(value: Any) -> Any:
    """An int/float/numeric string as a number; anything else None (not comparable)."""
    t = type(value)
    if t is int or t is float:
        return value
    if t is str and _NUMBER(value):
        return decimal30(value)
    return None


def _datetime_key(value: Any) -> str | None:
    if type(value) is str and _DATETIME(value):
        return normalize_datetime(value)
    return None


def _time_key(value: Any) -> int | None:
    if type(value) is str and _TIME(value):
        return time_micros(value)
    return None


def _string_key(value: Any) -> str | None:
    return value if type(value) is str else None


Kind = Literal["number", "datetime", "time", "string"]


@dataclass(frozen=True, slots=True)
class Value:
    """One literal of a filter: its domain, canonical text and comparison key."""

    kind: Kind
    #: canonical spelling (as it appears in `RowFilter.text`)
    text: str
    #: Decimal (number), normalised str (datetime), int micros (time) or the str itself
    key: Any
    #: the SQL parameter standing for it in `to_sql()`
    param: str

    @classmethod
    def parse(cls, raw: str, quoted: bool) -> Value:
        if not quoted:
            if _NUMBER(raw):
                return cls.number(raw)
            if _DATETIME(raw):
                key = normalize_datetime(raw)
                return cls("datetime", _datetime_text(key), key, key)
            if _TIME(raw):
                micros = time_micros(raw)
                text = _time_text(micros)
                return cls("time", text, micros, text)
        return cls("string", _string_text(raw), raw, raw)

    @classmethod
    def number(cls, raw: str) -> Value:
        value = Decimal(raw).normalize(_CTX) if Decimal(raw) else Decimal(0)
        exponent = value.as_tuple().exponent
        if value.adjusted() >= _DEC_LIMIT or (isinstance(exponent, int) and exponent < -30):
            raise FilterError(
                f"number {raw} out of range: at most 35 digits before the point and 30 after"
            )
        text = f"{value:f}"
        key: Any = int(value) if value == value.to_integral_value() else value
        return cls("number", text, key, text)


def _datetime_text(norm: str) -> str:
    date, clock = norm[:10], norm[11:]
    if clock == "00:00:00.000000":
        return date
    hms, frac = clock[:8], clock[9:].rstrip("0")
    return f"{date}T{hms}.{frac}" if frac else f"{date}T{hms}"


def _time_text(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    seconds, frac = divmod(abs(micros), 1_000_000)
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    text = f"{sign}{h:02d}:{m:02d}:{s:02d}"
    return f"{text}.{frac:06d}".rstrip("0") if frac else text


_SPECIAL = frozenset('&,()"\\')


def _string_text(raw: str) -> str:
    """A string literal spelled so that it parses back as the same string."""
    if (
        raw
        and raw == raw.strip()
        and not _SPECIAL.intersection(raw)
        and not (_NUMBER(raw) or _DATETIME(raw) or _TIME(raw))
    ):
        return raw
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


_KEYS: dict[Kind, Callable[[Any], Any]] = {
    "number": _number_key,
    "datetime": _datetime_key,
    "time": _time_key,
    "string": _string_key,
}


# -- conditions --------------------------------------------------------------------------------
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str
    negated: bool
    #: one value, or the values of `in` (canonical order, no duplicates); empty for `is`
    values: tuple[Value, ...]

    @property
    def text(self) -> str:
        head = f"{self.column}={'not.' if self.negated else ''}{self.op}."
        if self.op == "is":
            return head + "null"
        if self.op == "in":
            return head + "(" + ",".join(v.text for v in self.values) + ")"
        return head + self.values[0].text

    def compile(self) -> Predicate:
        test = self._positive()
        column = self.column
        if not self.negated:
            return test
        if self.op == "is":

            def is_not_null(row: Row) -> bool:
                return row.get(column) is not None

            return is_not_null

        def negated(row: Row) -> bool:
            return row.get(column) is not None and not test(row)

        return negated

    def _positive(self) -> Predicate:
        column = self.column
        if self.op == "is":

            def is_null(row: Row) -> bool:
                return row.get(column, _MISSING) is None

            return is_null
        if self.op == "in":
            return _compile_in(column, self.values)
        value = self.values[0]
        compare = _COMPARE[self.op]
        if value.kind == "number":
            return _compile_number(column, compare, value)
        key_of = _KEYS[value.kind]
        key = value.key

        def test(row: Row) -> bool:
            k = key_of(row.get(column))
            return k is not None and compare(k, key)

        return test


def _compile_number(column: str, compare: Callable[[Any, Any], bool], value: Value) -> Predicate:
    exact = value.key  # int when integral, else Decimal: exact against ints and decimals
    as_float = float(value.key)  # MySQL compares DOUBLE columns with the literal as a double
    integral = type(exact) is int
    exact_decimal = Decimal(exact)  # Decimal against Decimal compares faster than with int

    def test(row: Row) -> bool:
        v: Any = row.get(column)
        t = type(v)
        if t is int:
            return compare(v, exact)
        if t is str:
            if integral and len(v) < 19 and v.isdigit() and v.isascii():  # common: skip Decimal
                return compare(int(v), exact)
            return _NUMBER(v) is not None and compare(decimal30(v), exact_decimal)
        if t is float:
            return compare(v, as_float)
        return False

    return test


def _compile_in(column: str, values: tuple[Value, ...]) -> Predicate:
    # one set per domain; equal numbers hash equal across int and Decimal
    groups: list[tuple[Callable[[Any], Any], frozenset[Any]]] = []
    floats: frozenset[float] = frozenset()
    for kind, key_of in _KEYS.items():
        keys = frozenset(v.key for v in values if v.kind == kind)
        if keys:
            groups.append((key_of, keys))
            if kind == "number":
                floats = frozenset(float(k) for k in keys)

    def test(row: Row) -> bool:
        v = row.get(column)
        if v is None:
            return False
        if type(v) is float:
            return v in floats
        for key_of, keys in groups:
            k = key_of(v)
            if k is not None and k in keys:
                return True
        return False

    return test


# -- parsing -------------------------------------------------------------------------------------
class _Reader:
    """A cursor over the filter text; errors quote the condition being read."""

    __slots__ = ("pos", "start", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.start = 0

    def error(self, message: str) -> FilterError:
        end = self.text.find("&", self.pos)
        part = self.text[self.start : end if end >= 0 else len(self.text)]
        return FilterError(f"bad filter condition {part!r}: {message}")

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def until(self, stops: str) -> str:
        text, pos = self.text, self.pos
        end = pos
        while end < len(text) and text[end] not in stops:
            end += 1
        self.pos = end
        return text[pos:end]

    def quoted(self) -> str:
        """A double-quoted string with \\" and \\\\ escapes; the opening quote is next."""
        text = self.text
        pos = self.pos + 1
        out: list[str] = []
        while pos < len(text):
            ch = text[pos]
            if ch == '"':
                self.pos = pos + 1
                return "".join(out)
            if ch == "\\":
                if pos + 1 >= len(text) or text[pos + 1] not in '"\\':
                    raise self.error('in a quoted value, "\\" must be followed by " or \\')
                ch = text[pos + 1]
                pos += 1
            out.append(ch)
            pos += 1
        raise self.error("unterminated quoted value")

    def value(self, stops: str) -> Value:
        if self.peek() == '"':
            raw = self.quoted()
            if not (self.at_end() or self.peek() in stops):
                raise self.error("unexpected text after a quoted value")
            return Value.parse(raw, quoted=True)
        raw = self.until(stops)
        if '"' in raw:
            raise self.error('quote a whole value ("...") or none of it')
        if not raw:
            raise self.error('empty value (write "" for the empty string)')
        try:
            return Value.parse(raw, quoted=False)
        except (InvalidOperation, ValueError) as exc:
            if isinstance(exc, FilterError):
                raise self.error(str(exc)) from None
            raise self.error(f"bad value {raw!r}") from None


_COLUMN_FORBIDDEN = frozenset('=&,()"?')


def _parse_condition(r: _Reader) -> Condition:
    r.start = r.pos
    column = r.until("=&")
    if r.at_end() or r.peek() != "=":
        raise r.error("expected column=operator.value")
    if not column:
        raise r.error("missing column name before '='")
    if len(column) > MAX_COLUMN_LENGTH:
        raise r.error(f"column name longer than {MAX_COLUMN_LENGTH} characters")
    if _COLUMN_FORBIDDEN.intersection(column) or not column.isprintable():
        raise r.error(f"bad column name {column!r}")
    r.pos += 1
    op = r.until(".&")
    negated = op == "not"
    if negated:
        if r.peek() != ".":
            raise r.error("expected an operator after 'not.'")
        r.pos += 1
        op = r.until(".&")
    if op not in OPERATORS:
        raise r.error(f"unknown operator {op!r} (expected {', '.join(OPERATORS)}, or not.<op>)")
    if r.peek() != ".":
        raise r.error(f"expected a value after '{op}.'")
    r.pos += 1
    if op == "is":
        word = r.until("&")
        if word != "null":
            raise r.error(f"'is' takes only null (is.null, not.is.null), not {word!r}")
        return Condition(column, op, negated, ())
    if op != "in":
        return Condition(column, op, negated, (r.value("&"),))
    if r.peek() != "(":
        raise r.error("'in' takes a list: in.(a,b,c)")
    r.pos += 1
    values: dict[str, Value] = {}
    while True:
        value = r.value(",)")
        values.setdefault(f"{value.kind}:{value.text}", value)
        if len(values) > MAX_IN_VALUES:
            raise r.error(f"more than {MAX_IN_VALUES} values in one in-list")
        if r.at_end():
            raise r.error("unterminated in-list: expected ')'")
        sep = r.text[r.pos]
        r.pos += 1
        if sep == ")":
            break
    if not (r.at_end() or r.peek() == "&"):
        raise r.error("unexpected text after ')'")
    ordered = tuple(sorted(values.values(), key=lambda v: (v.kind, v.text)))
    return Condition(column, op, negated, ordered)


def parse_filter(text: str) -> RowFilter:
    """Parse the part after `?`: `col=op.value&col=op.value...`."""
    if not text:
        raise FilterError("empty filter after '?'")
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter longer than {MAX_FILTER_LENGTH} characters")
    r = _Reader(text)
    conditions: dict[str, Condition] = {}
    while True:
        cond = _parse_condition(r)
        conditions.setdefault(cond.text, cond)
        if len(conditions) > MAX_CONDITIONS:
            raise FilterError(f"more than {MAX_CONDITIONS} conditions in one filter")
        if r.at_end():
            break
        if r.peek() != "&":
            raise r.error("expected '&' between conditions")
        r.pos += 1
        if r.at_end():
            raise FilterError("filter ends with '&'")
    return RowFilter(tuple(conditions[k] for k in sorted(conditions)))


def parse_channel(name: str) -> tuple[str, RowFilter | None]:
    """`shop.orders?status=eq.paid` -> ("shop.orders", RowFilter); no `?` -> (name, None)."""
    channel, sep, text = name.partition("?")
    if not sep:
        return name, None
    if not channel:
        raise FilterError(f"no channel before '?' in {name[:80]!r}")
    return channel, parse_filter(text)


# -- the filter ----------------------------------------------------------------------------------
class RowFilter:
    """A parsed, compiled filter. Equal filters have equal `text` (the canonical form)."""

    __slots__ = ("_test", "columns", "conditions", "text")

    def __init__(self, conditions: tuple[Condition, ...]) -> None:
        if not conditions:
            raise FilterError("a filter needs at least one condition")
        self.conditions = conditions
        self.text = "&".join(c.text for c in conditions)
        self.columns = frozenset(c.column for c in conditions)
        self._test = _conjunction([c.compile() for c in conditions])

    def matches(self, row: Row) -> bool:
        """Whether `row` (column -> JSON value, as in events' `data`) satisfies every condition."""
        return self._test(row)

    def classify(self, record: Mapping[str, Any]) -> Classification:
        """How a row event relates to the filter: None (not at all), match, enter or leave.

        Inserts and deletes match on their row (`data`, the whole deleted row for a
        delete). An update compares the previous row ({**data, **old}) with the new
        one: both match -> "match", only the new -> "enter", only the old -> "leave".
        Records that are not row changes (ddl, notify...) give None.
        """
        kind = record.get("type")
        data = record.get("data")
        if data is None:
            return None
        if kind == "update":
            now = self._test(data)
            old = record.get("old")
            # the old row differs only in the columns listed in `old`
            if old and not self.columns.isdisjoint(old):
                before = self._test({**data, **old})
            else:
                before = now
            if now:
                return "match" if before else "enter"
            return "leave" if before else None
        if kind == "insert" or kind == "delete":
            return "match" if self._test(data) else None
        return None

    def to_sql(self, types: Mapping[str, str] | None = None) -> tuple[str, list[Any]]:
        """A WHERE clause with %s placeholders selecting the rows `matches()` accepts.

        `types` maps column names to information_schema DATA_TYPE (lower case), with
        "json" for MariaDB's JSON (LONGTEXT) columns; the session must use
        time_zone '+00:00' and a utf8mb4 connection. With `types` the clause agrees
        with `matches()` on the JSON values the binlog decoder produces, except for
        conditions on FLOAT, JSON and spatial columns, which are left to `matches()`
        (the clause is then wider: callers re-check rows with `matches()`). Without
        `types` every column is taken as a character column.
        """
        params: list[Any] = []
        parts = [_condition_sql(c, types, params) for c in self.conditions]
        return " AND ".join(parts), params

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowFilter) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RowFilter({self.text!r})"


def _conjunction(tests: list[Predicate]) -> Predicate:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests

        def both(row: Row) -> bool:
            return first(row) and second(row)

        return both
    all_tests = tuple(tests)

    def every(row: Row) -> bool:
        for test in all_tests:  # noqa: SIM110 - a loop beats all(genexpr) on the hot path
            if not test(row):
                return False
        return True

    return every


# -- SQL -------------------------------------------------------------------------------------
_INT_TYPES = frozenset(
    {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "bool", "boolean"}
)
_TEXT_TYPES = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "date", "time"}
)
_BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
_SQL_PATTERN = {
    "number": "(?-i)^" + _NUMBER_PATTERN + r"\z",
    "datetime": "(?-i)^" + _DATETIME_PATTERN + r"\z",
    "time": "(?-i)^" + _TIME_PATTERN + r"\z",
}


def quote_identifier(name: str) -> str:
    """`name` as a MySQL identifier, safe inside a %s-formatted statement."""
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def _json_text_sql(col: str, data_type: str) -> str | None:
    """SQL giving the column's JSON string value, for string-valued column types."""
    if data_type in _TEXT_TYPES or data_type in ("decimal", "numeric"):
        return f"CONVERT({col} USING utf8mb4)"
    if data_type == "datetime":
        return f"REPLACE(CONVERT({col} USING utf8mb4), ' ', 'T')"
    if data_type == "timestamp":
        return f"CONCAT(REPLACE(CONVERT({col} USING utf8mb4), ' ', 'T'), 'Z')"
    if data_type in _BINARY_TYPES:
        return f"REPLACE(TO_BASE64({col}), CHAR(10), '')"
    return None


def _compare_sql(kind: Kind, text: str, op: str, n: int, params: list[Any], guard: bool) -> str:
    """`text op value(s)` in `kind`'s domain; `op` "IN" takes `n` placeholders."""
    if kind == "number":
        lhs, rhs = f"CAST({text} AS DECIMAL(65,30))", "CAST(%s AS DECIMAL(65,30))"
    elif kind == "time":
        lhs, rhs = f"CAST({text} AS TIME(6))", "CAST(%s AS TIME(6))"
    elif kind == "datetime":
        t = f"REPLACE(REPLACE({text}, 'T', ' '), 'Z', '')"
        norm = f"CONCAT({t}, SUBSTRING('{_DT_PAD}', CHAR_LENGTH({t}) - 9))"
        lhs, rhs = f"CAST({norm} AS BINARY)", "CAST(%s AS BINARY)"
    else:
        lhs, rhs = f"CAST({text} AS BINARY)", "CAST(%s AS BINARY)"
    right = f"({', '.join([rhs] * n)})" if op == "IN" else rhs
    sql = f"{lhs} {op} {right}"
    if guard and kind != "string":
        params.insert(len(params) - n, _SQL_PATTERN[kind])
        sql = f"({text} REGEXP %s AND {sql})"
    return sql


_KNOWN_TYPES = (
    _INT_TYPES
    | _TEXT_TYPES
    | _BINARY_TYPES
    | {"bit", "double", "real", "decimal", "numeric", "datetime", "timestamp", "set"}
)


def _positive_sql(cond: Condition, col: str, data_type: str, params: list[Any]) -> str | None:
    """SQL for the condition without `not.`: 'FALSE' outside its domain, None if loose."""
    if data_type and data_type not in _KNOWN_TYPES:
        return None  # FLOAT, JSON, spatial and types tidings does not know: matches() decides
    if cond.op == "in":
        groups: dict[Kind, list[Value]] = {}
        for v in cond.values:
            groups.setdefault(v.kind, []).append(v)
        parts = [
            _domain_sql(kind, col, data_type, "IN", values, params)
            for kind, values in groups.items()
        ]
        parts = [p for p in parts if p != "FALSE"] or ["FALSE"]
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    return _domain_sql(cond.values[0].kind, col, data_type, _SQL_OP[cond.op], cond.values, params)


def _domain_sql(
    kind: Kind, col: str, data_type: str, op: str, values: Iterable[Value], params: list[Any]
) -> str:
    vals = list(values)
    n = len(vals)
    if data_type in _INT_TYPES or data_type == "bit" or data_type in ("double", "real"):
        if kind != "number":
            return "FALSE"  # int and float values only compare with numbers
        # BIT as a number; YEAR as one too (compared with YEAR, 1 would mean 2001)
        expr = f"({col} + 0)" if data_type in ("bit", "year") else col
        cast = "DOUBLE" if data_type in ("double", "real") else "DECIMAL(65,30)"
        params.extend(v.param for v in vals)
        rhs = f"CAST(%s AS {cast})"
        right = f"({', '.join([rhs] * n)})" if op == "IN" else rhs
        return f"{expr} {op} {right}"
    if data_type == "set":
        return "FALSE"  # a list: never compares
    if kind == "datetime" and data_type in ("date", "datetime", "timestamp"):
        text: str | None = f"CONVERT({col} USING utf8mb4)"  # the same after normalising
    else:
        text = _json_text_sql(col, data_type)
    params.extend(v.param for v in vals)
    if text is None:  # no types known: a character column
        return _compare_sql(kind, f"CONVERT({col} USING utf8mb4)", op, n, params, guard=True)
    # the value's shape decides its domain in matches(); typed columns skip what cannot vary
    guard = not (
        (kind == "number" and data_type in ("decimal", "numeric"))
        or (kind == "datetime" and data_type in ("date", "datetime", "timestamp"))
        or (kind == "time" and data_type == "time")
    )
    if kind == "number" and data_type in ("date", "datetime", "timestamp", "time"):
        del params[len(params) - n :]
        return "FALSE"
    return _compare_sql(kind, text, op, n, params, guard)


def _condition_sql(cond: Condition, types: Mapping[str, str] | None, params: list[Any]) -> str:
    col = quote_identifier(cond.column)
    if types is not None and cond.column not in types:
        raise FilterError(f"no column {cond.column!r} for filter condition {cond.text!r}")
    data_type = types[cond.column].lower() if types is not None else ""
    if cond.op == "is":
        return f"{col} IS NOT NULL" if cond.negated else f"{col} IS NULL"
    mark = len(params)
    positive = _positive_sql(cond, col, data_type, params)
    if positive is None:
        del params[mark:]
        return "TRUE"
    if not cond.negated:
        return positive
    if positive == "FALSE":
        return f"{col} IS NOT NULL"
    return f"({col} IS NOT NULL AND NOT COALESCE({positive}, FALSE))"
