"""RESP requests (tidings.wire.resp.RespParser): a client's bytes, cut into reads.

Small limits so the fuzzer reaches every bound; the parser must never hold much
more than `max_query + max_inline` bytes plus one read.
"""

from __future__ import annotations

from fuzz._pieces import reads
from tidings.wire.resp import ProtocolError, RespParser

ERRORS = (ProtocolError,)

LIMITS = {"max_bulk": 512, "max_args": 64, "max_inline": 256, "max_query": 4096}


def fuzz_one(data: bytes) -> None:
    parser = RespParser(**LIMITS)
    for chunk in reads(data):
        parser.feed(chunk)
        while (command := parser.next_command()) is not None:
            assert command and all(type(arg) is bytes for arg in command)
        held = len(parser._buf) - parser._pos
        assert held <= LIMITS["max_query"] + LIMITS["max_inline"] + len(chunk), held
