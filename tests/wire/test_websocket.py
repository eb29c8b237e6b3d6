"""The sans-I/O WebSocket codec: byte literals from RFC 6455, violations, hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.wire import websocket as ws
from tidings.wire.websocket import (
    Close,
    FrameParser,
    HandshakeError,
    Message,
    Ping,
    Pong,
    ProtocolError,
    accept_key,
    check_handshake,
    close_frame,
    encode_frame,
    handshake_response,
    mask_frame,
    reject_response,
    text_frame,
)

MASK = b"\x37\xfa\x21\x3d"  # the RFC's example masking key

HEADERS = {
    "host": "example.com",
    "upgrade": "websocket",
    "connection": "keep-alive, Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
}


# -- handshake --------------------------------------------------------------------------------
def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_handshake_gives_the_101_response() -> None:
    accept = check_handshake("GET", HEADERS)
    assert handshake_response(accept) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("method", "change", "status"),
    [
        ("POST", {}, 405),
        ("GET", {"upgrade": "h2c"}, 400),
        ("GET", {"connection": "keep-alive"}, 400),
        ("GET", {"sec-websocket-key": "short"}, 400),
        ("GET", {"sec-websocket-key": "not base64 at all!!!!!!!"}, 400),
        ("GET", {"sec-websocket-version": "8"}, 426),
        ("GET", {"sec-websocket-version": ""}, 426),
    ],
)
def test_bad_handshakes_are_refused_with_a_status(
    method: str, change: dict[str, str], status: int
) -> None:
    with pytest.raises(HandshakeError) as caught:
        check_handshake(method, {**HEADERS, **change})
    assert caught.value.status == status
    response = reject_response(caught.value)
    assert response.startswith(b"HTTP/1.1 %d " % status)
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in head


# -- encoding -------------------------------------------------------------------------------
def test_server_frames_are_unmasked_with_the_shortest_length() -> None:
    assert text_frame(b"Hello") == b"\x81\x05Hello"  # RFC 6455 §5.7
    assert encode_frame(ws.OP_PING, b"Hello") == b"\x89\x05Hello"
    assert encode_frame(ws.OP_TEXT, b"Hel", fin=False) == b"\x01\x03Hel"
    assert text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65535)[:4] == b"\x81\x7e\xff\xff"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"


def test_close_frames_carry_code_and_a_reason_cut_to_fit() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(1008, "slow") == b"\x88\x06\x03\xf0slow"
    long = close_frame(1008, "é" * 100)  # 200 bytes of reason: cut on a character boundary
    assert len(long) == 2 + 2 + 122
    assert long[4:].decode("utf-8") == "é" * 61


def test_masked_client_frame_is_the_rfc_example() -> None:
    assert mask_frame(ws.OP_TEXT, b"Hello", MASK) == b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


# -- decoding -------------------------------------------------------------------------------
def parse(data: bytes, **kwargs: int) -> list[ws.Event]:
    parser = FrameParser(**kwargs)  # type: ignore[arg-type]
    parser.feed(data)
    return parser.events()


def test_a_masked_text_message() -> None:
    assert parse(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58") == [Message(b"Hello", True)]


def test_fragments_are_joined_and_control_frames_may_interleave() -> None:
    data = (
        mask_frame(ws.OP_TEXT, b"Hel", MASK, fin=False)
        + mask_frame(ws.OP_PING, b"are you there", MASK)
        + mask_frame(ws.OP_CONT, b"lo", MASK, fin=False)
        + mask_frame(ws.OP_CONT, b"", MASK)
        + mask_frame(ws.OP_BINARY, b"\x00\xff", MASK)
        + mask_frame(ws.OP_PONG, b"", MASK)
        + mask_frame(ws.OP_CLOSE, b"\x03\xe8bye", MASK)
    )
    assert parse(data) == [
        Ping(b"are you there"),
        Message(b"Hello", True),
        Message(b"\x00\xff", False),
        Pong(b""),
        Close(1000, "bye"),
    ]


def test_an_empty_close_frame_means_no_status() -> None:
    assert parse(mask_frame(ws.OP_CLOSE, b"", MASK)) == [Close(1005, "")]


def test_incomplete_frames_wait_for_more_bytes() -> None:
    frame = mask_frame(ws.OP_TEXT, b"x" * 70000, MASK)
    parser = FrameParser(max_message=100000)
    for i in range(0, len(frame) - 1, 7001):
        parser.feed(frame[i : min(i + 7001, len(frame) - 1)])
        assert parser.next_event() is None
    parser.feed(frame[-1:])
    assert parser.events() == [Message(b"x" * 70000, True)]
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (encode_frame(ws.OP_TEXT, b"Hello"), 1002),  # unmasked
        (mask_frame(ws.OP_TEXT, b"x", MASK, rsv=4), 1002),  # RSV1 without an extension
        (mask_frame(ws.OP_TEXT, b"x", MASK, rsv=1), 1002),
        (mask_frame(0x3, b"x", MASK), 1002),  # reserved data opcode
        (mask_frame(0xB, b"x", MASK), 1002),  # reserved control opcode
        (mask_frame(ws.OP_PING, b"x", MASK, fin=False), 1002),  # fragmented control frame
        (mask_frame(ws.OP_PING, b"x" * 126, MASK), 1002),  # control frame too long
        (mask_frame(ws.OP_CONT, b"x", MASK), 1002),  # nothing to continue
        (
            mask_frame(ws.OP_TEXT, b"x", MASK, fin=False) + mask_frame(ws.OP_TEXT, b"y", MASK),
            1002,
        ),  # new message inside a fragmented one
        (mask_frame(ws.OP_CLOSE, b"\x03", MASK), 1002),  # one-byte close payload
        (mask_frame(ws.OP_CLOSE, b"\x03\xed", MASK), 1002),  # 1005 may not be sent
        (mask_frame(ws.OP_CLOSE, b"\x00\x64", MASK), 1002),  # code 100
        (mask_frame(ws.OP_CLOSE, b"\x03\xe8\xff", MASK), 1007),  # reason not UTF-8
        (mask_frame(ws.OP_TEXT, b"\xff", MASK), 1007),
        (mask_frame(ws.OP_TEXT, b"\xed\xa0\x80", MASK), 1007),  # a UTF-16 surrogate
        (mask_frame(ws.OP_TEXT, b"x" * 65537, MASK), 1009),
        (b"\x81\xff\x80" + b"\x00" * 7 + MASK, 1002),  # 64-bit length with its top bit set
    ],
)
def test_violations_fail_with_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    assert caught.value.code == code


def test_an_oversized_message_fails_on_its_header_before_the_payload_arrives() -> None:
    parser = FrameParser(max_message=1000)
    parser.feed(b"\x82\xff" + (1 << 40).to_bytes(8, "big") + MASK)
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert caught.value.code == 1009


def test_fragments_count_together_against_the_bound() -> None:
    parser = FrameParser(max_message=10)
    parser.feed(mask_frame(ws.OP_BINARY, b"x" * 6, MASK, fin=False))
    assert parser.next_event() is None
    parser.feed(mask_frame(ws.OP_CONT, b"x" * 5, MASK))
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert caught.value.code == 1009


def test_invalid_utf8_in_a_fragment_fails_before_the_message_ends() -> None:
    parser = FrameParser()
    parser.feed(mask_frame(ws.OP_TEXT, b"ok \xff", MASK, fin=False))
    with pytest.raises(ProtocolError) as caught:
        parser.next_event()
    assert caught.value.code == 1007


def test_empty_fragments_hold_no_memory() -> None:
    parser = FrameParser()
    parser.feed(mask_frame(ws.OP_TEXT, b"a", MASK, fin=False))
    parser.feed(mask_frame(ws.OP_CONT, b"", MASK, fin=False) * 10000)
    assert parser.next_event() is None
    assert len(parser._fragments) == 1 and parser.buffered == 0
    parser.feed(mask_frame(ws.OP_CONT, b"b", MASK))
    assert parser.events() == [Message(b"ab", True)]


def test_a_character_split_across_fragments_is_fine() -> None:
    euro = "€".encode()
    data = mask_frame(ws.OP_TEXT, euro[:1], MASK, fin=False) + mask_frame(
        ws.OP_CONT, euro[1:], MASK
    )
    assert parse(data) == [Message(euro, True)]


def test_a_client_side_parser_refuses_masked_frames() -> None:
    parser = FrameParser(need_mask=False)
    parser.feed(text_frame(b"hi"))
    assert parser.events() == [Message(b"hi", True)]
    parser.feed(mask_frame(ws.OP_TEXT, b"hi", MASK))
    with pytest.raises(ProtocolError):
        parser.next_event()


# -- properties ----------------------------------------------------------------------------
opcodes = st.sampled_from([ws.OP_TEXT, ws.OP_BINARY])
masks = st.binary(min_size=4, max_size=4)


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
@settings(max_examples=400)
def test_random_bytes_split_anywhere_raise_only_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    parser = FrameParser(max_message=200)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    try:
        for a, b in itertools.pairwise(points):
            parser.feed(data[a:b])
            for event in parser.events():
                assert isinstance(event, Message | Ping | Pong | Close)
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)


@given(
    st.lists(
        st.tuples(st.booleans(), st.text(max_size=200), st.binary(max_size=300), masks),
        max_size=8,
    ),
    st.integers(1, 50),
)
def test_masked_messages_round_trip_whatever_the_chunking(
    messages: list[tuple[bool, str, bytes, bytes]], chunk: int
) -> None:
    expected: list[Message] = []
    stream = b""
    for is_text, text, binary, mask in messages:
        payload = text.encode("utf-8") if is_text else binary
        # split each message into up to three fragments
        third = len(payload) // 3
        parts = [payload[:third], payload[third : 2 * third], payload[2 * third :]]
        opcode = ws.OP_TEXT if is_text else ws.OP_BINARY
        for i, part in enumerate(parts):
            stream += mask_frame(opcode if i == 0 else ws.OP_CONT, part, mask, fin=i == 2)
        expected.append(Message(payload, is_text))
    parser = FrameParser(max_message=1 << 20)
    got: list[ws.Event] = []
    for i in range(0, len(stream), chunk):
        parser.feed(stream[i : i + chunk])
        got += parser.events()
    assert got == expected
    assert parser.buffered == 0


@given(opcodes, st.binary(max_size=70000))
@settings(max_examples=30)
def test_server_frames_decode_with_a_client_side_parser(opcode: int, payload: bytes) -> None:
    if opcode == ws.OP_TEXT:
        payload = payload.decode("utf-8", "replace").encode("utf-8")
    parser = FrameParser(max_message=1 << 20, need_mask=False)
    parser.feed(encode_frame(opcode, payload))
    assert parser.events() == [Message(payload, opcode == ws.OP_TEXT)]


@given(st.sampled_from([1000, 1001, 1008, 1011, 3000, 4999]), st.text(max_size=200))
def test_close_frames_round_trip(code: int, reason: str) -> None:
    parser = FrameParser(need_mask=False)
    parser.feed(close_frame(code, reason))
    (event,) = parser.events()
    assert isinstance(event, Close)
    assert event.code == code
    assert reason.encode("utf-8").startswith(event.reason.encode("utf-8"))
