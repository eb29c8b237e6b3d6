"""`tidings tail`: a small RESP subscriber that pretty-prints events as they arrive."""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import TextIO

import orjson

Reply = bytes | int | None | list["Reply"]


class ReplyError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one RESP2/RESP3 reply (enough of RESP for pub/sub traffic)."""
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"("):
        return bytes(rest)
    if kind == b"-":
        raise ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"_":
        return None
    if kind in (b"$", b"="):
        size = int(rest)
        if size < 0:
            return None
        data = await reader.readexactly(size + 2)
        return data[:-2]
    if kind in (b"*", b">", b"~"):
        count = int(rest)
        return None if count < 0 else [await read_reply(reader) for _ in range(count)]
    if kind == b"%":
        return [await read_reply(reader) for _ in range(2 * int(rest))]
    raise ReplyError(f"unexpected reply type {line!r}")


def encode_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def format_event(channel: bytes, payload: bytes, *, pretty: bool) -> str:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return f"{channel.decode(errors='replace')}: {payload.decode(errors='replace')}"
    if not isinstance(event, dict):
        return f"{channel.decode(errors='replace')}: {payload.decode(errors='replace')}"
    if pretty:
        return orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
    head = (
        f"#{event.get('id', '?')} {event.get('channel', channel.decode())} {event.get('type', '')}"
    )
    body = {"data": event["data"]} if "data" in event else event
    if "old" in event:
        body = {**body, "old": event["old"]}
    return f"{head} {orjson.dumps(body).decode()}"


def client_context(cacert: str | None) -> ssl.SSLContext:
    """TLS towards a daemon with --tls-cert: trusting the CAs in `cacert`, else the system's."""
    try:
        return ssl.create_default_context(cafile=cacert)
    except OSError as exc:  # ssl.SSLError too: not PEM
        message = f"cannot load the CA certificates in {cacert}: {exc.strerror or exc}"
        raise ValueError(message) from None


async def tail(
    host: str,
    port: int,
    channels: list[str],
    *,
    out: TextIO = sys.stdout,
    pretty: bool = False,
    count: int = 0,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Subscribe (globs use PSUBSCRIBE) and print events; stop after `count` if non-zero.

    With `token`, AUTH first; a refusal (of the token or a channel) raises ReplyError.
    """
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        if token is not None:
            writer.write(encode_command("AUTH", token))
            await read_reply(reader)
        exact = [c for c in channels if not any(ch in c for ch in "*?[")]
        globs = [c for c in channels if c not in exact]
        if exact:
            writer.write(encode_command("SUBSCRIBE", *exact))
        if globs:
            writer.write(encode_command("PSUBSCRIBE", *globs))
        await writer.drain()
        seen = 0
        while True:
            reply = await read_reply(reader)
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                channel, payload = reply[1], reply[2]
            elif kind == b"pmessage" and len(reply) == 4:
                channel, payload = reply[2], reply[3]
            else:
                continue
            assert isinstance(channel, bytes) and isinstance(payload, bytes)
            print(format_event(channel, payload, pretty=pretty), file=out, flush=True)
            seen += 1
            if count and seen >= count:
                return 0
    finally:
        writer.close()
