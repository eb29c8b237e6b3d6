"""The sans-I/O RESP codec: byte literals, then properties with hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.wire import resp
from tidings.wire.resp import ProtocolError, RespParser, encode_command, split_inline

# every test here runs twice: RespParser with its C fast path and without (conftest.py)
pytestmark = pytest.mark.usefixtures("resp_parser_kind")


def parse_all(data: bytes, parser: RespParser | None = None) -> list[list[bytes]]:
    parser = parser or RespParser()
    parser.feed(data)
    out = []
    while (cmd := parser.next_command()) is not None:
        out.append(cmd)
    return out


def error_of(data: bytes, **limits: int) -> str:
    parser = RespParser(**limits)
    parser.feed(data)
    with pytest.raises(ProtocolError) as info:
        while parser.next_command() is not None:
            pass
    return str(info.value)


# -- multibulk ---------------------------------------------------------------------------------
def test_multibulk_commands_and_pipelining() -> None:
    data = b"*1\r\n$4\r\nPING\r\n*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$0\r\n\r\n"
    assert parse_all(data) == [[b"PING"], [b"SUBSCRIBE", b"a", b""]]


def test_binary_bulk_keeps_every_byte() -> None:
    payload = bytes(range(256)) + b"\r\n*1\r\n"
    assert parse_all(encode_command(b"ECHO", payload)) == [[b"ECHO", payload]]


def test_incomplete_command_waits_then_completes() -> None:
    parser = RespParser()
    data = encode_command("SUBSCRIBE", "news", "sport")
    for i in range(len(data) - 1):
        parser.feed(data[i : i + 1])
        assert parser.next_command() is None
        assert parser.mid_command
    parser.feed(data[-1:])
    assert parser.next_command() == [b"SUBSCRIBE", b"news", b"sport"]
    assert parser.next_command() is None
    assert not parser.mid_command


@pytest.mark.parametrize("header", [b"*0\r\n", b"*-1\r\n", b"*-5\r\n"])
def test_empty_multibulk_is_skipped(header: bytes) -> None:
    assert parse_all(header + b"*1\r\n$4\r\nPING\r\n") == [[b"PING"]]


def test_bytes_after_a_bulk_are_skipped_unchecked_like_redis() -> None:
    # redis skips the two bytes after a bulk without checking they are CRLF
    assert parse_all(b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nECHO\r\n") == [[b"PING"], [b"ECHO"]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*x\r\n", "Protocol error: invalid multibulk length"),
        (b"*01\r\n", "Protocol error: invalid multibulk length"),
        (b"*+1\r\n", "Protocol error: invalid multibulk length"),
        (b"* 1\r\n", "Protocol error: invalid multibulk length"),
        (b"*\r\n", "Protocol error: invalid multibulk length"),
        (b"*-0\r\n", "Protocol error: invalid multibulk length"),
        (b"*3000000000\r\n", "Protocol error: invalid multibulk length"),
        (b"*99999999999999999999\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
        (b"*1\r\n\n\r\n", "Protocol error: expected '$', got ' '"),
        (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$03\r\nabc\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$99999999999\r\n", "Protocol error: invalid bulk length"),
        (b'ECHO "abc\r\n', "Protocol error: unbalanced quotes in request"),
        (b'ECHO "abc"x\r\n', "Protocol error: unbalanced quotes in request"),
        (b"ECHO 'abc\r\n", "Protocol error: unbalanced quotes in request"),
    ],
)
def test_malformed_requests_use_redis_wording(data: bytes, message: str) -> None:
    assert error_of(data) == message


def test_commands_before_an_error_are_returned_first() -> None:
    parser = RespParser()
    parser.feed(b"PING\r\n*1\r\n$4\r\nECHO\r\n*x\r\n*1\r\n$4\r\nPING\r\n")
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() == [b"ECHO"]
    with pytest.raises(ProtocolError):
        parser.next_command()
    with pytest.raises(ProtocolError):  # a broken stream stays broken
        parser.next_command()


# -- bounds ------------------------------------------------------------------------------------
def test_bulk_larger_than_max_bulk_is_refused_before_it_arrives() -> None:
    parser = RespParser(max_bulk=1024)
    parser.feed(b"*2\r\n$7\r\nPUBLISH\r\n$1025\r\n")
    with pytest.raises(ProtocolError, match=r"^Protocol error: invalid bulk length$"):
        parser.next_command()
    assert parse_all(encode_command(b"X", b"a" * 1024), RespParser(max_bulk=1024)) == [
        [b"X", b"a" * 1024]
    ]


def test_argument_count_is_bounded() -> None:
    assert error_of(b"*1001\r\n", max_args=1000) == "Protocol error: invalid multibulk length"
    assert parse_all(encode_command(*[b"a"] * 1000), RespParser(max_args=1000))[0] == [b"a"] * 1000


def test_total_request_size_is_bounded() -> None:
    data = encode_command(*[b"x" * 1000] * 10)
    assert error_of(data, max_query=5000) == "Protocol error: too big request"
    assert len(parse_all(data, RespParser(max_query=20000))[0]) == 10


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PING" + b"a" * 2000, "Protocol error: too big inline request"),
        (b"*" + b"1" * 2000, "Protocol error: too big mbulk count string"),
        (b"*1\r\n$" + b"1" * 2000, "Protocol error: too big bulk count string"),
    ],
)
def test_lines_without_end_are_bounded(data: bytes, message: str) -> None:
    parser = RespParser(max_inline=1024)
    parser.feed(data[:1000])
    assert parser.next_command() is None  # under the bound: keep waiting
    parser.feed(data[1000:])
    with pytest.raises(ProtocolError) as info:
        parser.next_command()
    assert str(info.value) == message


def test_long_inline_line_with_newline_is_refused_too() -> None:
    assert error_of(b"ECHO " + b"a" * 2000 + b"\r\n", max_inline=1024) == (
        "Protocol error: too big inline request"
    )


# -- inline commands ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"PING", [b"PING"]),
        (b"  PING   hello  ", [b"PING", b"hello"]),
        (b"\tECHO\ta", [b"ECHO", b"a"]),
        (b'ECHO "a\\x41b\\n"', [b"ECHO", b"aAb\n"]),
        (b'ECHO "\\r\\t\\b\\a\\"\\\\\\q"', [b"ECHO", b'\r\t\b\a"\\q']),
        (b'ECHO "\\x4"', [b"ECHO", b"x4"]),
        (b"ECHO 'a\\'b'", [b"ECHO", b"a'b"]),
        (b"ECHO 'a\\nb'", [b"ECHO", b"a\\nb"]),
        (b'ECHO ""', [b"ECHO", b""]),
        (b'ECHO a"b c"', [b"ECHO", b"ab c"]),
        (b"ECHO a\vb", [b"ECHO", b"a\vb"]),
        (b"ECHO a\0b c", [b"ECHO", b"a"]),
        (b"", []),
        (b"   ", []),
    ],
)
def test_split_inline_like_sdssplitargs(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize("line", [b'"abc', b"'abc", b'"a"b', b"'a'b", b'"a\\', b'"\\x4'])
def test_split_inline_unbalanced(line: bytes) -> None:
    assert split_inline(line) is None


def test_inline_lines_end_with_lf_or_crlf_and_blank_lines_are_skipped() -> None:
    assert parse_all(b"\r\n\nPING\nECHO x\r\n") == [[b"PING"], [b"ECHO", b"x"]]


# -- encoding ----------------------------------------------------------------------------------
def test_encoders() -> None:
    assert resp.simple(b"OK") == b"+OK\r\n"
    assert resp.error(b"ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert resp.integer(-3) == b":-3\r\n"
    assert resp.bulk(b"") == b"$0\r\n\r\n"
    assert resp.null(False) == b"$-1\r\n"
    assert resp.null(True) == b"_\r\n"
    assert resp.array([resp.integer(1), resp.bulk(b"x")]) == b"*2\r\n:1\r\n$1\r\nx\r\n"
    assert resp.push([resp.integer(1)], True) == b">1\r\n:1\r\n"
    assert resp.push([resp.integer(1)], False) == b"*1\r\n:1\r\n"
    assert resp.map_header(2, True) == b"%2\r\n"
    assert resp.map_header(2, False) == b"*4\r\n"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"-1", -1),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
    ],
)
def test_parse_int_accepts(text: bytes, value: int) -> None:
    assert resp.parse_int(text) == value


@pytest.mark.parametrize(
    "text", [b"", b"-", b"-0", b"01", b"+1", b" 1", b"1 ", b"1_0", b"9223372036854775808", b"\xd9"]
)
def test_parse_int_rejects(text: bytes) -> None:
    assert resp.parse_int(text) is None


# -- properties --------------------------------------------------------------------------------
def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[list[list[bytes]], str | None]:
    """Feed `data` split at `cuts`; return the commands and the error text, if any."""
    parser = RespParser(max_bulk=512, max_args=64, max_inline=256, max_query=4096)
    commands: list[list[bytes]] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, stop in itertools.pairwise(bounds):
            parser.feed(data[start:stop])
            while (cmd := parser.next_command()) is not None:
                commands.append(cmd)
    except ProtocolError as exc:
        return commands, str(exc)
    return commands, None


# byte streams that look like RESP often enough to reach the deep states
resp_ish = st.lists(
    st.one_of(
        st.binary(max_size=20),
        st.sampled_from(
            [b"*", b"$", b"\r\n", b"\r", b"\n", b"*2\r\n", b"$3\r\n", b"$-1\r\n", b"-", b"0", b'"']
        ),
        st.integers(-3, 600).map(lambda n: b"*%d\r\n" % n),
        st.integers(-3, 600).map(lambda n: b"$%d\r\n" % n),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=resp_ish, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_bytes_split_anywhere_parse_the_same_and_only_raise_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    whole = feed_in_pieces(data, [])
    assert feed_in_pieces(data, cuts) == whole


args_st = st.lists(st.binary(max_size=40), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(args_st, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 2000)))
def test_valid_commands_round_trip(commands: list[list[bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_command(*args) for args in commands)
    assert feed_in_pieces(data, cuts) == (commands, None)


inline_word = st.binary(min_size=1, max_size=10).filter(
    lambda w: not any(c in b" \t\r\n\v\f\0\"'" for c in w)
)


@given(st.lists(inline_word, min_size=1, max_size=6).filter(lambda w: not w[0].startswith(b"*")))
def test_plain_inline_words_round_trip(words: list[bytes]) -> None:
    assert parse_all(b" ".join(words) + b"\r\n") == [words]


@given(st.lists(st.binary(max_size=10), min_size=1, max_size=4))
def test_quoted_inline_round_trip(words: list[bytes]) -> None:
    # quote every byte as \xHH inside double quotes: any argument survives
    line = b" ".join(b'"' + b"".join(b"\\x%02x" % c for c in w) + b'"' for w in words)
    assert split_inline(line) == words
