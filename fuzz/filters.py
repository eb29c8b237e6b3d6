"""Row filters in channel names (tidings.hub.filters): parsed, re-parsed from their
canonical text, evaluated against rows of every JSON type, and turned into SQL.

The input is a channel name as raw bytes (RESP hands names over with surrogateescape).
"""

from __future__ import annotations

from tidings.hub.filtering import split
from tidings.hub.filters import FilterError, parse_filter

ERRORS = (FilterError,)

_VALUES = (None, 0, -1, 42, 2**70, 1.5, -0.0, float("inf"), "", "42", "-0.50", "1e5", "abc",
           "2024-01-02", "2024-01-02T03:04:05.5Z", "12:30:00", "-838:59:59", "\udcff",
           [1, "a"], {"k": 1}, True)  # fmt: skip


def fuzz_one(data: bytes) -> None:
    name = data.decode("utf-8", "surrogateescape")
    base, row_filter = split(name)
    if row_filter is None:
        return
    assert base and "?" not in base
    again = parse_filter(row_filter.text)  # the canonical text means the same filter
    assert again == row_filter and again.text == row_filter.text
    for column in sorted(row_filter.columns)[:3]:
        for value in _VALUES:
            row = {column: value}
            row_filter.matches(row)
            row_filter.classify({"type": "update", "data": row, "old": {column: "x"}})
    row_filter.to_sql()
    row_filter.to_sql({column: "int" for column in row_filter.columns})
