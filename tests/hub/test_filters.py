"""Row filters: parsing, canonical text, semantics against a plain model and against MariaDB."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.source.test_binlog_golden import Follower, changes
from tidings.hub.filters import (
    MAX_CONDITIONS,
    MAX_FILTER_LENGTH,
    MAX_IN_VALUES,
    FilterError,
    RowFilter,
    parse_channel,
    parse_filter,
)
from tidings.sandbox import PrivateMariaDB


def f(text: str) -> RowFilter:
    return parse_filter(text)


# -- parsing and canonical text ------------------------------------------------------------------


def test_parse_channel_splits_at_the_first_question_mark() -> None:
    assert parse_channel("shop.orders") == ("shop.orders", None)
    channel, flt = parse_channel("shop.orders?customer_id=eq.42&status=in.(new,paid)")
    assert channel == "shop.orders"
    assert flt is not None
    assert flt.text == "customer_id=eq.42&status=in.(new,paid)"
    assert flt.columns == {"customer_id", "status"}
    _, flt = parse_channel("a.b?q=eq.what?")  # later '?' belong to the value
    assert flt is not None and flt.matches({"q": "what?"})


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("a=eq.1&b=eq.2", "b=eq.2&a=eq.1"),  # order of conditions
        ("a=eq.1&a=eq.1", "a=eq.1"),  # duplicates
        ("a=eq.12.50", "a=eq.12.5"),  # numbers by value
        ("a=eq.-0", "a=eq.0"),
        ("a=eq.007", "a=eq.7"),
        ("a=in.(b,a,b)", "a=in.(a,b)"),  # in-lists are sets
        ("a=in.(1,1.0,01)", "a=in.(1)"),
        ('a=eq."x"', "a=eq.x"),  # quotes only where needed
        ("a=eq.2024-01-02T00:00:00", "a=eq.2024-01-02"),  # date-times by value
        ("a=eq.2024-01-02 03:04:05.500Z", "a=eq.2024-01-02T03:04:05.5"),
        ("a=eq.01:02:03.000", "a=eq.01:02:03"),
        ("a=eq.900:00:00", "a=eq.838:59:59.999999"),  # clipped as MySQL's TIME is
    ],
)
def test_equal_filters_have_equal_text(one: str, other: str) -> None:
    assert f(one).text == f(other).text
    assert f(one) == f(other) and hash(f(one)) == hash(f(other))
    assert f(f(one).text).text == f(one).text  # the canonical text parses to itself


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ('a=eq."42"', 'a=eq."42"'),  # a quoted number stays a string
        ('a=eq."2024-01-02"', 'a=eq."2024-01-02"'),
        ('a=eq."a,b"', 'a=eq."a,b"'),
        ("a=eq.a,b", 'a=eq."a,b"'),  # outside lists, commas need no quotes...
        ('a=eq." x "', 'a=eq." x "'),  # ...but the canonical form quotes them anyway
        ('a=eq.""', 'a=eq.""'),
        ('a=eq."say \\"hi\\" \\\\o/"', 'a=eq."say \\"hi\\" \\\\o/"'),
        ('a=in.("x,y",z,"(")', 'a=in.("(","x,y",z)'),
        ("a=not.is.null&a=is.null", "a=is.null&a=not.is.null"),
        ("a=not.in.(1,x)", "a=not.in.(1,x)"),
        ("café=eq.thé", "café=eq.thé"),
        ("a=eq.x=y.z", "a=eq.x=y.z"),
    ],
)
def test_canonical_spelling(text: str, canonical: str) -> None:
    assert f(text).text == canonical
    assert f(canonical).text == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty filter"),
        ("a", "'a': expected column=operator.value"),
        ("a=", "unknown operator ''"),
        ("a=eqq.1", "unknown operator 'eqq'"),
        ("a=eq", "expected a value after 'eq.'"),
        ("a=eq.", "empty value"),
        ("=eq.1", "missing column name"),
        ("a(=eq.1", "bad column name"),
        ("a=not", "expected an operator after 'not.'"),
        ("a=not.not.eq.1", "unknown operator 'not'"),
        ("a=is.nothing", "'is' takes only null"),
        ("a=in.1", "'in' takes a list"),
        ("a=in.(1,2", "unterminated in-list"),
        ("a=in.(1,)", "empty value"),
        ("a=in.()", "empty value"),
        ("a=in.(1)x", "unexpected text after ')'"),
        ('a=eq."x', "unterminated quoted value"),
        ('a=eq."x"y', "unexpected text after a quoted value"),
        ('a=eq.x"y"', "quote a whole value"),
        ('a=eq."\\n"', "must be followed by"),
        ("a=eq.1&", "filter ends with '&'"),
        ("a=eq.1&&b=eq.2", "'': expected column=operator.value"),
        ("a=eq.1" + "0" * 40, "out of range"),
        ("a=eq.0." + "0" * 30 + "1", "out of range"),
        ("a=eq.1&b=gt.2&c=lt", "'c=lt': expected a value"),
    ],
)
def test_parse_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=re.escape(message)):
        parse_filter(text)


def test_parse_channel_errors() -> None:
    with pytest.raises(FilterError, match="no channel before"):
        parse_channel("?a=eq.1")
    with pytest.raises(FilterError, match="empty filter"):
        parse_channel("shop.orders?")
    assert isinstance(FilterError("x"), ValueError)


def test_limits() -> None:
    conds = "&".join(f"c{i}=eq.{i}" for i in range(MAX_CONDITIONS))
    assert len(f(conds).conditions) == MAX_CONDITIONS
    with pytest.raises(FilterError, match="more than"):
        parse_filter(conds + "&x=eq.1")
    values = ",".join(str(i) for i in range(MAX_IN_VALUES))
    assert len(f(f"a=in.({values})").conditions[0].values) == MAX_IN_VALUES
    with pytest.raises(FilterError, match="more than"):
        parse_filter(f"a=in.({values},x)")
    with pytest.raises(FilterError, match="longer than"):
        parse_filter("a=eq." + "x" * MAX_FILTER_LENGTH)
    with pytest.raises(FilterError, match="longer than 64"):
        parse_filter("x" * 65 + "=eq.1")


# -- semantics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "yes", "no"),
    [
        # numbers: ints, DECIMAL strings and doubles by value; other strings never
        ("n=eq.42", [42, "42", "42.000", 42.0], [41, "042x", "forty-two", True, None, [42]]),
        ("n=eq.12", ["12", "012"], ["\u0661\u0662", "1\u00b2", "12 ", "+12"]),  # ASCII digits only
        ("n=eq.12.5", ["12.50", 12.5], [12, "12.5 ", 12.499999]),
        ("n=gt.-1", [0, "-0.5", 1e300, 18446744073709551615], [-1, "-1.00", -2.5, "abc"]),
        ("n=lt.0.1", [0.09, "0.0999"], [0.1, "0.1", 1]),
        ("n=eq.0", ["0." + "0" * 30 + "4"], ["0." + "0" * 29 + "5"]),  # DECIMAL(65,30)
        ("n=neq.5", [4, "6"], [5, "5.0", "x", None]),
        # strings: exact code points, case and trailing spaces matter
        ("s=eq.paid", ["paid"], ["Paid", "paid ", " paid", 1, None]),
        ("s=lt.b", ["a", "B", "Zebra", "", "ab"], ["b", "ba", "é"]),
        ('s=eq."42"', ["42"], [42, "42.0"]),
        ('s=gte."10"', ["9", "10"], ["1", 10]),  # a quoted number compares as text
        # date-times: normalised, then ordered as MySQL orders them
        ("d=eq.2024-01-02", ["2024-01-02", "2024-01-02T00:00:00", "2024-01-02T00:00:00.000Z"], []),
        (
            "d=gt.2024-01-02",
            ["2024-01-02T00:00:00.000001", "2024-01-03", "9999-12-31T23:59:59Z"],
            ["2024-01-02", "2024-01-01T23:59:59.999999", "0000-00-00", "2024-01-03x", 20240103],
        ),
        # '...T12:00' (no seconds) is a string: compared as text
        (
            "d=lt.2024-01-02T12:00",
            ["2024-01-02T11", "2024-01-01"],
            ["2024-01-02T12:00", "2024-01-03"],
        ),
        ("d=lte.2024-02-29T23:59:59.99", ["2024-02-29T23:59:59.990", "2024-02-29"], []),
        # times: a signed duration
        ("t=lt.00:00:00", ["-00:00:00.000001", "-838:59:59"], ["00:00:00", "-00:00:00"]),
        ("t=gt.99:00:00", ["100:00:00", "838:59:59"], ["98:59:59.9", "9:00:00"]),
        ("t=eq.838:59:59.999999", ["900:00:00"], ["838:59:59"]),  # clipped like CAST AS TIME
        # NULL and missing columns
        ("x=is.null", [None], [0, "", []]),
        ("x=not.is.null", [0, "", []], [None]),
        # negation holds for every non-NULL value that fails the condition
        ("x=not.eq.1", [2, "a", [], 1.5], [1, "1", None]),
        ("x=not.lt.b", ["b", "c", 5], ["a", None]),
        # in: any of the values, each in its own domain
        ("x=in.(1,b,2024-01-01,10:00:00)", [1, "1.0", "b", "2024-01-01T00:00:00", "10:00:00"], []),
        ("x=in.(1,b)", [1.0], ["B", 2, None, "10:00:00"]),
        ("x=not.in.(1,b)", ["c", 2, 1.5], [1, "b", None]),
    ],
)
def test_semantics(text: str, yes: list[Any], no: list[Any]) -> None:
    flt = f(text)
    (column,) = flt.columns
    for value in yes:
        assert flt.matches({column: value}), (text, value)
    for value in no:
        assert not flt.matches({column: value}), (text, value)


def test_a_missing_column_never_matches() -> None:
    for text in ("x=is.null", "x=not.is.null", "x=not.eq.1", "x=not.in.(1)", "x=eq.1"):
        assert not f(text).matches({"y": 1}), text


def test_conjunction() -> None:
    flt = f("a=gte.1&a=lt.3&b=in.(x,y)")
    assert flt.matches({"a": 1, "b": "x"})
    assert flt.matches({"a": "2.5", "b": "y"})
    assert not flt.matches({"a": 3, "b": "x"})
    assert not flt.matches({"a": 2, "b": "z"})


def test_classify() -> None:
    flt = f("status=eq.paid")
    row = {"id": 1, "status": "paid", "total": "9.90"}
    assert flt.classify({"type": "insert", "data": row}) == "match"
    assert flt.classify({"type": "insert", "data": {**row, "status": "new"}}) is None
    assert flt.classify({"type": "delete", "data": row}) == "match"
    assert flt.classify({"type": "delete", "data": {**row, "status": "new"}}) is None
    # updates: the previous row is {**data, **old}
    paid, new = row, {**row, "status": "new"}
    assert flt.classify({"type": "update", "data": paid, "old": {"total": "1.00"}}) == "match"
    assert flt.classify({"type": "update", "data": paid, "old": {"status": "new"}}) == "enter"
    assert flt.classify({"type": "update", "data": new, "old": {"status": "paid"}}) == "leave"
    assert flt.classify({"type": "update", "data": new, "old": {"status": "x"}}) is None
    assert flt.classify({"type": "update", "data": new, "old": {"total": "1"}}) is None
    assert flt.classify({"type": "update", "data": paid}) == "match"  # no old: nothing changed
    nulls = f("status=is.null")
    assert nulls.classify({"type": "update", "data": new, "old": {"status": None}}) == "leave"
    # not row changes
    assert flt.classify({"type": "ddl", "sql": "ALTER TABLE ..."}) is None
    assert flt.classify({"type": "notify", "channel": "x", "payload": "paid"}) is None


# -- property test against a plain model -----------------------------------------------------------
# The model is written independently of the implementation: literals and values go through
# regular expressions with groups and tuples, not the compiled closures.

_NUM = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_DT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?)?Z?",
    re.ASCII,
)
_TM = re.compile(r"(-?)([0-9]{2,3}):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,6}))?", re.ASCII)
TIME_MAX = 838 * 3600 * 10**6 + 59 * 60 * 10**6 + 59 * 10**6 + 999_999


def model_number(text: str) -> Decimal | None:
    m = _NUM.fullmatch(text)
    if not m:
        return None
    d = Decimal(text)
    if abs(d) >= Decimal(10) ** 35:
        return (Decimal(10) ** 35 - Decimal("1e-30")).copy_sign(d)
    return d.quantize(Decimal("1e-30"), context=Context(prec=100, rounding=ROUND_HALF_UP))


def model_datetime(text: str) -> tuple[int, ...] | None:
    m = _DT.fullmatch(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    return (
        int(y),
        int(mo),
        int(d),
        int(h or 0),
        int(mi or 0),
        int(s or 0),
        int((frac or "").ljust(6, "0")),
    )


def model_time(text: str) -> int | None:
    m = _TM.fullmatch(text)
    if not m:
        return None
    sign, h, mi, s, frac = m.groups()
    us = ((int(h) * 60 + int(mi)) * 60 + int(s)) * 10**6 + int((frac or "").ljust(6, "0"))
    us = min(us, TIME_MAX)
    return -us if sign else us


@dataclass
class Lit:
    kind: str  # number | datetime | time | string
    raw: str

    def spelled(self, quote: bool) -> str:
        if self.kind != "string":
            return self.raw
        if (
            not quote
            and self.raw
            and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_ ]*[a-zA-Z0-9_]", self.raw)
        ):
            return self.raw
        return '"' + self.raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Cond:
    column: str
    op: str
    negated: bool
    lits: list[Lit]

    def spelled(self, quote: bool) -> str:
        head = f"{self.column}={'not.' if self.negated else ''}{self.op}."
        if self.op == "is":
            return head + "null"
        if self.op == "in":
            return head + "(" + ",".join(lit.spelled(quote) for lit in self.lits) + ")"
        return head + self.lits[0].spelled(quote)


def model_compare(op: str, value: Any, lit: Lit) -> bool:
    ops = {
        "eq": lambda a, b: a == b,
        "neq": lambda a, b: a != b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
    }
    cmp = ops[op]
    if lit.kind == "number":
        n = Decimal(lit.raw)
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return bool(cmp(Decimal(value), n))
        if isinstance(value, float):
            return bool(cmp(value, float(n)))
        if isinstance(value, str):
            v = model_number(value)
            return v is not None and bool(cmp(v, n))
        return False
    if not isinstance(value, str):
        return False
    if lit.kind == "datetime":
        a, b = model_datetime(value), model_datetime(lit.raw)
        return a is not None and b is not None and bool(cmp(a, b))
    if lit.kind == "time":
        ta, tb = model_time(value), model_time(lit.raw)
        return ta is not None and tb is not None and bool(cmp(ta, tb))
    return bool(cmp(value, lit.raw))


def model_holds(cond: Cond, row: dict[str, Any]) -> bool:
    if cond.column not in row:
        return False
    value = row[cond.column]
    if cond.op == "is":
        return (value is not None) == cond.negated
    if value is None:
        return False
    if cond.op == "in":
        result = any(model_compare("eq", value, lit) for lit in cond.lits)
    else:
        result = model_compare(cond.op, value, cond.lits[0])
    return not result if cond.negated else result


def model_matches(conds: list[Cond], row: dict[str, Any]) -> bool:
    return all(model_holds(c, row) for c in conds)


COLUMNS = ["a", "b", "c"]

digits = st.text("0123456789", min_size=1, max_size=4)
number_lits = st.builds(
    lambda sign, i, frac: f"{sign}{i}{'.' + frac if frac else ''}",
    st.sampled_from(["", "-"]),
    digits,
    st.one_of(st.just(""), digits),
)
two = st.integers(0, 99).map(lambda n: f"{n:02d}")
date_texts = st.builds(
    lambda y, m, d: f"{y:04d}-{m}-{d}", st.sampled_from([0, 1970, 2024, 9999]), two, two
)
datetime_texts = st.one_of(
    date_texts,
    st.builds(
        lambda d, sep, h, mi, s, frac, z: f"{d}{sep}{h}:{mi}:{s}{frac}{z}",
        date_texts,
        st.sampled_from(["T", " "]),
        two,
        two,
        two,
        st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=6).map(".".__add__)),
        st.sampled_from(["", "Z"]),
    ),
)
sixty = st.integers(0, 59).map(lambda n: f"{n:02d}")
time_texts = st.builds(
    lambda sign, h, m, s, frac: f"{sign}{h}:{m}:{s}{frac}",
    st.sampled_from(["", "-"]),
    st.one_of(two, st.integers(100, 999).map(str)),
    sixty,
    sixty,
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=6).map(".".__add__)),
)
plain_strings = st.one_of(
    st.sampled_from(["a", "A", "a ", "b", "ab", "é", "paid", "", " ", "10", "-", "x,y", 'q"']),
    st.text(max_size=5),
)
lits = st.one_of(
    number_lits.map(lambda t: Lit("number", t)),
    datetime_texts.map(lambda t: Lit("datetime", t)),
    time_texts.map(lambda t: Lit("time", t)),
    plain_strings.map(lambda t: Lit("string", t)),
    # quoted numbers, dates and times are strings
    st.one_of(number_lits, datetime_texts, time_texts).map(lambda t: Lit("string", t)),
)
conds = st.builds(
    Cond,
    st.sampled_from(COLUMNS),
    st.sampled_from(["eq", "neq", "lt", "lte", "gt", "gte", "in", "is"]),
    st.booleans(),
    st.lists(lits, min_size=1, max_size=4),
).map(lambda c: c if c.op == "in" else Cond(c.column, c.op, c.negated, c.lits[:1]))
values = st.one_of(
    st.none(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    number_lits,
    datetime_texts,
    time_texts,
    plain_strings,
    st.lists(st.sampled_from(["x", "y"]), max_size=2),
)
rows = st.dictionaries(st.sampled_from(COLUMNS), values)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(conds, min_size=1, max_size=4), st.lists(rows, min_size=1, max_size=8), st.booleans()
)
def test_matches_agrees_with_the_model(
    conditions: list[Cond], sample: list[dict[str, Any]], quote: bool
) -> None:
    text = "&".join(c.spelled(quote) for c in conditions)
    flt = parse_filter(text)
    assert parse_filter(flt.text).text == flt.text
    shuffled = conditions[:]
    random.Random(len(text)).shuffle(shuffled)
    assert parse_filter("&".join(c.spelled(not quote) for c in shuffled)).text == flt.text
    for row in sample:
        assert flt.matches(row) == model_matches(conditions, row), (text, row)


@settings(max_examples=200, deadline=None)
@given(st.lists(conds, min_size=1, max_size=3), rows, rows)
def test_classify_agrees_with_the_model(
    conditions: list[Cond], before: dict[str, Any], after: dict[str, Any]
) -> None:
    flt = parse_filter("&".join(c.spelled(True) for c in conditions))
    data = {**before, **after}
    old = {k: v for k, v in before.items() if k not in after or after[k] != v}
    was, now = model_matches(conditions, {**data, **old}), model_matches(conditions, data)
    expected = {(True, True): "match", (False, True): "enter", (True, False): "leave"}
    record = {"type": "update", "data": data, "old": old}
    assert flt.classify(record) == expected.get((was, now))
    assert flt.classify({"type": "insert", "data": data}) == ("match" if now else None)


# -- to_sql against MariaDB ------------------------------------------------------------------------

TABLE = """
CREATE TABLE t (
  id INT PRIMARY KEY,
  i INT, bu BIGINT UNSIGNED, dc DECIMAL(12,4), d0 DECIMAL(5,0), dbl DOUBLE,
  s VARCHAR(30), c CHAR(6), lat VARCHAR(10) CHARACTER SET latin1, en ENUM('a','B','c ','10'),
  dt DATE, dtm DATETIME(3), ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(2), yr YEAR,
  bn VARBINARY(8), st SET('x','y')
)
"""
# pools of values, so that equality and ordering between rows and literals are hit often
POOL: dict[str, list[Any]] = {
    "i": [-5, -1, 0, 1, 2, 10, 42, 2147483647, -2147483648],
    "bu": [0, 1, 42, 2**53 + 1, 2**64 - 1, 2**64 - 2],
    "dc": ["0", "1.5", "-1.5", "42", "12.5", "12.4999", "-0.0001", "99999999.9999"],
    "d0": ["0", "42", "-7", "99999"],
    "dbl": [0.0, 0.1, 0.30000000000000004, -2.5, 42.0, 1e20, 2.5e-300, 12.5],
    "s": [
        "a",
        "A",
        "a ",
        "ab",
        "b",
        "B",
        "é",
        "É",
        "",
        "10",
        "010",
        "42",
        "12.50",
        "-1.5",
        "2024-01-02",
        "2024-01-02T03:04:05",
        "12:00:00",
        "-01:00:00",
        "x,y",
        "Zz",
        "900:00:00",
        "-999:00:00.5",
        "1e3",
        " 42",
        "42 ",
        "2024-01-02 00:00:00.000Z",
        "ß",
        "😀",
    ],
    "c": ["a", "A", "ab", "b", "", "42", "é"],
    "lat": ["a", "A", "é", "É", "€", "zz"],
    "en": ["a", "B", "c ", "10", ""],
    "dt": ["2024-01-02", "2024-01-01", "1970-01-01", "9999-12-31", "0000-00-00", "2024-02-29"],
    "dtm": [
        "2024-01-02 00:00:00",
        "2024-01-02 03:04:05.5",
        "2024-01-01 23:59:59.999",
        "0000-00-00 00:00:00",
        "1000-01-01 00:00:00",
    ],
    "ts": [
        "2024-01-02 00:00:00",
        "2024-01-02 03:04:05.000001",
        "1970-01-01 00:00:01",
        "2038-01-19 03:14:07.5",
    ],
    "tm": [
        "00:00:00",
        "-00:00:00.01",
        "12:00:00",
        "-838:59:59",
        "838:59:59",
        "100:00:00.5",
        "-01:00:00",
        "01:00:00",
    ],
    "yr": [0, 1970, 2024, 2155],
    "bn": [b"", b"\x00", b"ab", b"AB", b"42"],
    "st": ["", "x", "x,y", "y"],
}
ROWS = 400


@dataclass
class Table:
    conn: Any
    types: dict[str, str]
    rows: list[dict[str, Any]]  # as the binlog decoder delivers them

    def select(self, where: str, params: list[Any]) -> set[int]:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT id FROM t WHERE {where}", params)
            return {r[0] for r in cur.fetchall()}

    def matching(self, flt: RowFilter) -> set[int]:
        return {r["id"] for r in self.rows if flt.matches(r)}


@pytest.fixture(scope="module")
def table(mariadb: PrivateMariaDB) -> Iterator[Table]:
    mariadb.sql("DROP DATABASE IF EXISTS filters; CREATE DATABASE filters")
    mariadb.sql(TABLE, "filters")
    conn = pymysql.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="root",
        database="filters",
        charset="utf8mb4",
        autocommit=True,
    )
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00', sql_mode = ''")
    follower = Follower(mariadb)
    rng = random.Random(20240102)
    cols = list(POOL)
    with conn.cursor() as cur:
        for i in range(ROWS):
            values = [None if rng.random() < 0.12 else rng.choice(POOL[c]) for c in cols]
            marks = ", ".join(["%s"] * (len(cols) + 1))
            cur.execute(f"INSERT INTO t (id, {', '.join(cols)}) VALUES ({marks})", [i, *values])
    rows = [c.data for c in changes(follower.transactions("filters")) if c.type == "insert"]
    assert len(rows) == ROWS
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = 'filters' AND TABLE_NAME = 't'"
        )
        types = {name: data_type for name, data_type in cur.fetchall()}
    yield Table(conn, types, rows)
    conn.close()


def _json_texts(rows: list[dict[str, Any]], column: str) -> list[str]:
    """Literal spellings taken from the values rows really have (as the stream sees them)."""
    out = []
    for r in rows:
        v = r[column]
        if v is None:
            continue
        if isinstance(v, list):
            out.extend(v)
            continue
        out.append(str(v) if not isinstance(v, float) else repr(v))
    return sorted(set(out))


SQL_COLUMNS = list(POOL)


@st.composite
def table_filters(draw: st.DrawFn, pools: dict[str, list[str]]) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        column = draw(st.sampled_from(SQL_COLUMNS))
        pool = pools[column]
        op = draw(st.sampled_from(["eq", "neq", "lt", "lte", "gt", "gte", "in", "is"]))
        neg = "not." if draw(st.booleans()) else ""
        literal = st.one_of(
            st.sampled_from(pool).map(lambda t: t.removesuffix(".0") if "e" not in t else t),
            st.sampled_from(pool).map(
                lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
            ),
            lits.map(lambda lit: lit.spelled(True)),
        ).filter(lambda t: _spellable(t))
        if op == "is":
            parts.append(f"{column}={neg}is.null")
        elif op == "in":
            items = draw(st.lists(literal, min_size=1, max_size=4))
            parts.append(f"{column}={neg}in.({','.join(_list_item(x) for x in items)})")
        else:
            parts.append(f"{column}={neg}{op}.{draw(literal)}")
    return "&".join(parts)


def _spellable(text: str) -> bool:
    if text.startswith('"'):
        return True
    try:
        parse_filter(f"x=eq.{text}")
    except FilterError:
        return False
    return True


def _list_item(text: str) -> str:
    if text.startswith('"') or not set(text) & set(',()"'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_to_sql_selects_what_matches_selects(table: Table) -> None:
    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(table_filters({c: _json_texts(table.rows, c) for c in SQL_COLUMNS}))
    def check(text: str) -> None:
        flt = parse_filter(text)
        where, params = flt.to_sql(table.types)
        assert table.select(where, params) == table.matching(flt), (text, where, params)

    check()


@pytest.mark.parametrize(
    "text",
    [
        "s=eq.a",  # case-sensitive, unlike the column's collation
        "s=eq.a ",  # trailing spaces count, unlike PAD SPACE collations
        "s=lt.b",
        "s=gt.é",
        "c=in.(a,é)",
        "lat=gt.z",
        "lat=eq.€",
        "en=eq.c ",
        "en=lt.a",
        "en=eq.10",
        "s=eq.10",
        's=eq."10"',
        "s=gte.2024-01-02",
        "s=lt.00:00:00",
        "i=gt.-2&i=lt.42",
        "i=eq.a",
        "i=not.eq.a",
        "bu=eq.18446744073709551614",
        "bu=gt.9007199254740992",
        "dc=eq.12.5",
        "dc=gt.12.4999",
        "dc=eq.-0.0001",
        "dc=lt.0",
        'dc=eq."12.5000"',
        "d0=in.(42,-7)",
        "dbl=eq.0.30000000000000004",
        "dbl=lt.0.3",
        "dbl=gt.0",
        "dt=eq.2024-01-02",
        "dt=lt.1970-01-01",
        "dt=eq.0000-00-00",
        "dtm=eq.2024-01-02",
        "dtm=gt.2024-01-02T03:04:05.4999",
        "dtm=lt.2024-01-02",
        "ts=eq.2024-01-02T03:04:05.000001Z",
        "ts=gte.2024-01-02",
        'ts=eq."2024-01-02T00:00:00.000000Z"',
        "tm=lt.00:00:00",
        "tm=gt.99:59:59",
        "tm=eq.-00:00:00.01",
        'tm=eq."12:00:00.00"',
        "yr=eq.0",
        "yr=gte.2024",
        "bn=eq.YWI=",
        'bn=eq.""',
        "st=eq.x",
        "st=not.eq.x",
        "st=is.null",
        "i=not.in.(1,2,b)&s=not.is.null",
    ],
)
def test_to_sql_examples(table: Table, text: str) -> None:
    flt = parse_filter(text)
    where, params = flt.to_sql(table.types)
    expected = table.matching(flt)
    assert table.select(where, params) == expected, (where, params)


def test_to_sql_untyped_is_exact_for_character_columns(table: Table) -> None:
    # without types every column is taken as text: right for the string-valued types
    for text in (
        "s=eq.a",
        "s=gt.10",
        "s=lt.2024-01-03",
        "dc=gte.12.5",
        "dt=lt.2024-01-02",
        "tm=gt.-01:00:00",
        "en=in.(a,c )",
        's=not.eq."42"',
        "c=lte.a",
    ):
        flt = parse_filter(text)
        where, params = flt.to_sql()
        assert table.select(where, params) == table.matching(flt), text


def test_to_sql_loose_types_widen_and_quote(table: Table) -> None:
    flt = parse_filter("dbl=eq.1&s=eq.a")
    where, params = flt.to_sql({"dbl": "float", "s": "varchar"})
    assert where.startswith("TRUE AND ") and params == ["a"]
    with pytest.raises(FilterError, match="no column 'nope'"):
        parse_filter("nope=eq.1").to_sql(table.types)
    where, _ = parse_filter("we`ird%=eq.1").to_sql()
    assert "`we``ird%%`" in where
