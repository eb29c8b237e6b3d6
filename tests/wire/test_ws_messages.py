"""WebSocket client messages, validated without a connection (tidings.wire.ws_messages)."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.wire.ws_messages import Command, MessageError, parse_message


@pytest.mark.parametrize(
    ("data", "command"),
    [
        (b'{"op":"ping"}', Command("ping")),
        (b'{"op":"subscribe","channel":"a.b"}', Command("subscribe", "a.b")),
        (b'{"op":"subscribe","channel":"a.b","since":0}', Command("subscribe", "a.b", 0)),
        (b'{"op":"subscribe","channel":"a.b?x=eq.1","since":null}',
         Command("subscribe", "a.b?x=eq.1")),
        # unsubscribing checks no filter: whatever name was subscribed can be left
        (b'{"op":"unsubscribe","channel":"a.b?bad"}', Command("unsubscribe", "a.b?bad")),
        (b' {"channel":"a.b","op":"unsubscribe","extra":[1]} ', Command("unsubscribe", "a.b")),
        # the token is the session's to check (the answer depends on the server's secret)
        (b'{"op":"auth","token":"abc.def.ghi"}', Command("auth", token="abc.def.ghi")),
        (b'{"op":"auth","token":[1]}', Command("auth", token=[1])),
        (b'{"op":"auth"}', Command("auth")),
    ],
)  # fmt: skip
def test_valid_messages(data: bytes, command: Command) -> None:
    assert parse_message(data, True) == command


@pytest.mark.parametrize(
    ("data", "text", "reply"),
    [
        (b'{"op":"ping"}', False, {"message": "binary messages are not understood: "
                                              "send JSON in text messages"}),
        (b"[1, 2]", True, {"message": 'expected a JSON object such as '
                                      '{"op":"subscribe","channel":"db.table"}'}),
        (b'{"op":"dance"}', True, {"message": "unknown op 'dance': use subscribe, unsubscribe, "
                                              "ping or auth"}),
        (b'{"op":["ping"]}', True, {"message": "unknown op ['ping']: use subscribe, "
                                               "unsubscribe, ping or auth"}),
        (b'{"op":"subscribe"}', True, {"message": '"channel" must be a non-empty string such '
                                                  'as "shop.orders"'}),
        (b'{"op":"unsubscribe","channel":""}', True, {"message": '"channel" must be a '
                                                                 'non-empty string such as '
                                                                 '"shop.orders"'}),
        (b'{"op":"subscribe","channel":"t.x","since":"12"}', True,
         {"message": '"since" must be an integer event id'}),
        (b'{"op":"subscribe","channel":"t.x","since":true}', True,
         {"message": '"since" must be an integer event id'}),
        (b'{"op":"subscribe","channel":"t.x","since":1.5}', True,
         {"message": '"since" must be an integer event id'}),
        (b'{"op":"subscribe","channel":"t.x?k=zz.1"}', True,
         {"message": "bad filter condition 'k=zz.1': unknown operator 'zz' (expected eq, neq, "
                     "lt, lte, gt, gte, in, is, or not.<op>)", "channel": "t.x?k=zz.1"}),
    ],
)  # fmt: skip
def test_bad_messages_get_an_error_reply(data: bytes, text: bool, reply: dict[str, Any]) -> None:
    with pytest.raises(MessageError) as info:
        parse_message(data, text)
    assert info.value.reply == {"op": "error", **reply}


def test_invalid_json_says_where() -> None:
    with pytest.raises(MessageError) as info:
        parse_message(b"{not json", True)
    message = info.value.reply["message"]
    assert message.startswith("invalid JSON: ") and "column 2" in message
