"""What a MySQL/MariaDB server sends (tidings.source.mysqlwire): packets, the greeting
and authentication exchange, then query results.

The first byte holds flags (1: start with a handshake, 2: CLIENT_DEPRECATE_EOF
results); the rest is the server's byte stream.
"""

from __future__ import annotations

from tidings.source.mysqlwire import Handshake, MySQLError, PacketSplitter, ResultReader

ERRORS = (MySQLError,)


def fuzz_one(data: bytes) -> None:
    flags = data[0] if data else 0
    splitter = PacketSplitter()
    payloads = iter(splitter.feed(data[1:]))
    assert splitter.buffered <= len(data)
    if flags & 1:
        handshake = Handshake("repl", "secret", "db")
        first = next(payloads, None)
        if first is None:
            return
        handshake.start(first)
        for payload in payloads:
            handshake.receive(payload)
            if handshake.done:
                break
    reader = ResultReader(deprecate_eof=bool(flags & 2))
    for payload in payloads:
        if reader.feed(payload):
            assert all(len(row) == len(reader.columns) for row in reader.rows)
            reader = ResultReader(deprecate_eof=bool(flags & 2))
