"""The C fast path of the RESP parser (tidings.wire._cresp): byte literals against the
function itself, then the whole parser with and without it fed the same random streams.

The C function takes one complete plain multibulk request or answers None, and the
Python parser takes over from the same position: so for every input it must either
return exactly what the Python parser would, or None. The differential properties check
the parser as a whole gives the same commands, errors and state either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.native import require_native
from tidings.wire import resp
from tidings.wire.resp import ProtocolError, RespParser, encode_command

LIMITS = {"max_args": 64, "max_bulk": 512, "max_inline": 256, "max_query": 4096}
Parse = Callable[..., "tuple[list[bytes], int] | None"]


@pytest.fixture
def parse() -> Parse:
    require_native()
    assert resp.NATIVE is not None
    native = resp.NATIVE

    def call(data: bytes, pos: int = 0, **limits: int) -> tuple[list[bytes], int] | None:
        given_limits = {**LIMITS, **limits}
        return native(
            bytearray(data),
            pos,
            given_limits["max_args"],
            given_limits["max_bulk"],
            given_limits["max_inline"],
            given_limits["max_query"],
        )

    return call


# -- the C function alone ----------------------------------------------------------------------
def test_a_complete_request_and_where_the_next_starts(parse: Parse) -> None:
    data = b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nc1\r\n$3\r\nabc\r\n*1\r\n$4\r\nPING\r\n"
    assert parse(data) == ([b"PUBLISH", b"c1", b"abc"], 34)
    assert parse(data, 34) == ([b"PING"], len(data))
    assert parse(data, len(data)) is None


def test_bulks_are_copied_byte_for_byte(parse: Parse) -> None:
    payload = bytes(range(256)) + b"\r\n*1\r\n$0\r\n"
    data = encode_command(b"ECHO", payload, b"")
    assert parse(data) == ([b"ECHO", payload, b""], len(data))


def test_the_byte_after_each_cr_is_skipped_unchecked_like_python(parse: Parse) -> None:
    data = b"*2\r\x00$4\rxPING\rx$1\r\n!\r?"
    assert parse(data) == ([b"PING", b"!"], len(data))
    parser = RespParser(native=False)
    parser.feed(data)
    assert parser.next_command() == [b"PING", b"!"]


def test_bytes_and_memoryview_are_read_too(parse: Parse) -> None:
    native = resp.NATIVE
    assert native is not None
    data = b"xx*1\r\n$4\r\nPING\r\nyy"
    assert native(data, 2, 64, 512, 256, 4096) == ([b"PING"], 16)
    # a view that ends before the bulk's CRLF: nothing past its end may be read
    assert native(memoryview(data)[:15], 2, 64, 512, 256, 4096) is None
    assert native(memoryview(data)[:16], 2, 64, 512, 256, 4096) == ([b"PING"], 16)


@pytest.mark.parametrize(
    "data",
    [
        b"PING\r\n",  # inline
        b"\r\n",
        b"*0\r\n",  # empty requests: skipped by Python
        b"*-1\r\n",
        b"*-0\r\n",
        b"*01\r\n$4\r\nPING\r\n",  # numbers string2ll refuses
        b"*+1\r\n$4\r\nPING\r\n",
        b"* 1\r\n$4\r\nPING\r\n",
        b"*1 \r\n$4\r\nPING\r\n",
        b"*\r\n$4\r\nPING\r\n",
        b"*1\x00\r\n$4\r\nPING\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$\r\n\r\n",
        b"*1\r\n+PING\r\n",
        b"*1\r\n\n\r\n",
        b"*1\r\n$4\r\nPING",  # incomplete, at every kind of place
        b"*1\r\n$4\r\nPING\r",
        b"*1\r\n$4\r\nPIN",
        b"*1\r\n$4\r\n",
        b"*1\r\n$4\r",
        b"*1\r\n$4",
        b"*1\r\n$",
        b"*1\r\n",
        b"*1\r",
        b"*1",
        b"*",
        b"",
        b"*2\r\n$1\r\na\r\n",
        b"*1\r\n$1000000000000000000\r\n",  # 19 digits: never a plain number here
        b"*1000000000000000000\r\n",
        b"*9999999999999999999999\r\n",
        b"*65\r\n" + b"$0\r\n\r\n" * 65,  # over max_args
        b"*1\r\n$513\r\n" + b"x" * 513 + b"\r\n",  # over max_bulk
        b"*9\r\n" + b"$510\r\n" + b"x" * 510 + b"\r\n" * 9,  # cut short
    ],
)
def test_anything_else_is_left_to_python(parse: Parse, data: bytes) -> None:
    assert parse(data) is None


def test_limits_are_inclusive_as_in_python(parse: Parse) -> None:
    at_max_args = b"*64\r\n" + b"$0\r\n\r\n" * 64
    assert parse(at_max_args) == ([b""] * 64, len(at_max_args))
    at_max_bulk = encode_command(b"x" * 512)
    assert parse(at_max_bulk) == ([b"x" * 512], len(at_max_bulk))
    # max_query counts the whole request, headers and CRLFs included
    request = encode_command(b"x" * 500, b"y" * 500)
    assert parse(request, max_query=len(request)) == ([b"x" * 500, b"y" * 500], len(request))
    assert parse(request, max_query=len(request) - 1) is None
    # a header line of max_inline bytes before its '\r' ("$7": 2), then one more
    data = b"*1\r\n$7\r\nPUBLISH\r\n"
    assert parse(data, max_inline=2) == ([b"PUBLISH"], len(data))
    assert parse(data, max_inline=1) is None


def test_odd_limits_clamp_or_fall_back(parse: Parse) -> None:
    data = encode_command(b"PING")
    huge = 1 << 70
    assert parse(data, max_args=huge, max_bulk=huge, max_inline=huge, max_query=huge) == (
        [b"PING"],
        len(data),
    )
    assert parse(data, max_args=0) is None
    assert parse(data, max_bulk=-1) is None
    assert parse(data, max_query=-(1 << 70)) is None
    assert parse(data, -1) is None
    assert parse(data, 1 << 40) is None


def test_a_huge_count_allocates_nothing_before_its_bytes_are_there(parse: Parse) -> None:
    # every bulk takes 6 bytes at least: a count the buffer cannot hold is incomplete, and
    # no list of that size is made (10**17 slots would be a MemoryError, not a None)
    huge = 1 << 62
    assert parse(b"*100000000000000000\r\n$0\r\n\r\n", max_args=huge) is None
    assert parse(b"*2\r\n$0\r\n\r\n$0\r\n\r", max_args=huge) is None
    assert parse(b"*2\r\n$0\r\n\r\n$0\r\n\r\n", max_args=huge) == ([b"", b""], 16)


def test_wrong_calls_raise(parse: Parse) -> None:
    native = resp.NATIVE
    assert native is not None
    with pytest.raises(TypeError):
        native(bytearray(b"*1\r\n"), 0, 1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        native("*1\r\n$4\r\nPING\r\n", 0, 64, 512, 256, 4096)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        native(bytearray(b"*1\r\n"), 1 << 70, 64, 512, 256, 4096)


def test_parser_uses_it_unless_told_not_to() -> None:
    require_native()
    assert RespParser()._native is resp.NATIVE
    assert RespParser(native=False)._native is None


# -- the whole parser, with and without the C part ----------------------------------------------
Trace = list[tuple[str, object]]


def trace(data: bytes, cuts: list[int], native: bool, limits: dict[str, int]) -> Trace:
    """What a connection sees: per read, each command, then None or the error, and whether
    the parser holds part of a command."""
    parser = RespParser(native=native, **limits)
    out: Trace = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, stop in itertools.pairwise(bounds):
        parser.feed(data[start:stop])
        try:
            while (command := parser.next_command()) is not None:
                out.append(("command", command))
        except ProtocolError as exc:
            out.append(("error", str(exc)))
            with pytest.raises(ProtocolError) as again:  # it stays broken, with the same text
                parser.next_command()
            assert str(again.value) == str(exc)
            return out
        out.append(("wait", parser.mid_command))
    return out


def number(low: int, high: int) -> st.SearchStrategy[bytes]:
    """A length as clients (and attackers) write it, around the interesting values."""
    return st.one_of(
        st.integers(low, high).map(lambda n: b"%d" % n),
        st.sampled_from(
            [
                b"0",
                b"00",
                b"01",
                b"-0",
                b"-1",
                b"+1",
                b" 1",
                b"1 ",
                b"",
                b"x",
                b"1\x00",
                b"999999999999999999",
                b"1000000000000000000",
                b"9223372036854775807",
                b"9223372036854775808",
                b"18446744073709551616",
                b"-9223372036854775808",
            ]
        ),
    )


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """A multibulk request, mostly well formed, sometimes bent where parsers go wrong."""
    args = draw(st.lists(st.binary(max_size=600), min_size=0, max_size=8))
    count = draw(st.one_of(st.just(b"%d" % len(args)), number(-2, 70)))
    parts = [b"*" + count + draw(st.sampled_from([b"\r\n", b"\r\n", b"\rx", b"\n", b"\r"]))]
    for arg in args:
        size = draw(st.one_of(st.just(b"%d" % len(arg)), number(0, 520)))
        mark = draw(st.sampled_from([b"$", b"$", b"$", b"+", b":"]))
        crlf = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\r\0", b"xx", b"\r"]))
        parts.append(mark + size + b"\r\n" + arg + crlf)
    return b"".join(parts)


stream = st.lists(
    st.one_of(
        request(),
        st.binary(max_size=30),
        st.sampled_from([b"PING\r\n", b"\r\n", b'"', b"*", b"$", b"\r", b"\n", b"*1\r\n"]),
    ),
    max_size=12,
).map(b"".join)

limits_st = st.one_of(
    st.just(LIMITS),
    st.fixed_dictionaries(
        {
            "max_args": st.integers(1, 70),
            "max_bulk": st.integers(0, 600),
            "max_inline": st.integers(1, 300),
            "max_query": st.integers(1, 5000),
        }
    ),
)


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=stream, cuts=st.lists(st.integers(0, 20_000), max_size=10), limits=limits_st)
def test_c_and_python_parsers_see_the_same_commands_errors_and_state(
    data: bytes, cuts: list[int], limits: dict[str, int]
) -> None:
    require_native()
    assert trace(data, cuts, True, limits) == trace(data, cuts, False, limits)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_c_and_python_parsers_agree_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    require_native()
    assert trace(data, cuts, True, LIMITS) == trace(data, cuts, False, LIMITS)


@settings(max_examples=300, deadline=None)
@given(commands=st.lists(st.lists(st.binary(max_size=100), min_size=1, max_size=5), max_size=20))
def test_pipelined_valid_requests_come_out_whole_from_the_c_path(
    commands: list[list[bytes]],
) -> None:
    require_native()
    data = b"".join(encode_command(*args) for args in commands)
    parser = RespParser(**LIMITS)
    parser.feed(data)
    out = []
    while (command := parser.next_command()) is not None:
        out.append(command)
    assert out == commands
    assert not parser.mid_command
