"""A subscriber load process for fan-out tests: many RESP connections, each checking order.

Usage: python fanout_client.py HOST PORT CHANNEL CONNECTIONS EXPECTED
Prints READY once every connection's SUBSCRIBE is confirmed, then one JSON line with the
per-connection results once each has received EXPECTED messages (or the deadline passed).
Messages must carry a top-level "id" and a row field "v" counting 0, 1, 2, ...
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

TOP_ID = re.compile(rb'\{"id":(\d+),')
ROW_V = re.compile(rb'"v":(\d+)\}')


async def one(
    host: str, port: int, channel: str, expected: int, ready: asyncio.Queue[None], deadline: float
) -> dict[str, object]:
    reader, writer = await asyncio.open_connection(host, port)
    name = channel.encode()
    writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
    confirmation = await reader.readuntil(b":1\r\n")
    assert b"subscribe" in confirmation
    ready.put_nowait(None)
    buffer = b""
    count, last_id, next_v, errors = 0, 0, 0, []
    loop = asyncio.get_running_loop()
    while count < expected:
        timeout = deadline - loop.time()
        if timeout <= 0:
            errors.append("deadline")
            break
        try:
            chunk = await asyncio.wait_for(reader.read(1 << 16), timeout)
        except TimeoutError:
            errors.append("deadline")
            break
        if not chunk:
            errors.append("closed by server")
            break
        buffer += chunk
        end = buffer.rfind(b"}\r\n")
        if end < 0:
            continue
        complete, buffer = buffer[: end + 3], buffer[end + 3 :]
        ids = [int(x) for x in TOP_ID.findall(complete)]
        vs = [int(x) for x in ROW_V.findall(complete)]
        if len(ids) != len(vs):
            errors.append("unparsable frame")
            break
        for event_id, v in zip(ids, vs, strict=True):
            if event_id <= last_id or v != next_v:
                errors.append(f"order: id {event_id} after {last_id}, v {v} expected {next_v}")
                break
            last_id, next_v = event_id, v + 1
        count += len(ids)
        if errors:
            break
    writer.close()
    return {"count": count, "errors": errors[:3]}


async def main() -> None:
    host, port, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    connections, expected = int(sys.argv[4]), int(sys.argv[5])
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 240.0
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[None] = asyncio.Queue()
    tasks = [
        asyncio.ensure_future(one(host, port, channel, expected, ready, loop.time() + timeout))
        for _ in range(connections)
    ]
    for _ in range(connections):
        await ready.get()
    print("READY", flush=True)
    results = await asyncio.gather(*tasks)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
