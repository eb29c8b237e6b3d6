"""The cluster's Redis keys and the few commands tidings sends them.

Keys, under the prefix `{cluster_name}:` (default `tidings:`):

    leader   STRING  the leading node's id, with a TTL: the lease (SET NX PX)
    fence    STRING  INCR'd on every acquisition: the leader's fencing token
    stream   STREAM  the event feed, one entry per batch (MAXLEN ~ cluster_stream_length)
    state    HASH    `next`: the id after the last event in the stream;
                     `checkpoint`: JSON {epoch, next_id, position} of the last
                     transaction boundary in the stream (where a new leader reads from)

Every write of a leader goes through a Lua script that first checks that the
fence still holds its token: once another node has taken the lease (and
INCR'd the fence), the old leader's writes are refused as a whole, however
long it was paused. The lease is taken and the token drawn in one script too,
so a node paused between the two cannot end up with a newer token than its
successor's.

A stream entry has three fields: `e` the epoch, `n` the id the consumer must
be at before this entry (so a consumer can tell that entries were trimmed
away under it), `d` feed messages (tidings.feed.codec), framed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, cast

from tidings.source.changes import Position
from tidings.state.checkpoint import position_from_dict, position_to_dict

__all__ = ["BLOCK_MS", "Backplane", "BackplaneError", "Checkpoint", "Entry", "connect"]

#: how long one XREAD waits for entries (ms): also the consumer's longest silence
BLOCK_MS: Final = 1000

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: fence, stream, state; ARGV: token, maxlen, epoch, n, data, next, checkpoint ('' = same)
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
                      'e', ARGV[3], 'n', ARGV[4], 'd', ARGV[5])
redis.call('HSET', KEYS[3], 'next', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], 'checkpoint', ARGV[7])
end
return id
"""


class BackplaneError(RuntimeError):
    """The backplane's contents make no sense (not a connection problem)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A transaction boundary in the stream: read the binlog from `position` with `next_id`."""

    epoch: int
    next_id: int
    position: Position

    def to_json(self) -> str:
        value = {"epoch": self.epoch, "next_id": self.next_id}
        return json.dumps({**value, "position": position_to_dict(self.position)})

    @classmethod
    def from_json(cls, text: bytes) -> Checkpoint:
        try:
            value = json.loads(text)
            position = position_from_dict(value["position"])
            return cls(int(value["epoch"]), int(value["next_id"]), position)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackplaneError(f"the cluster checkpoint does not parse: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its stream id, the epoch, the id before it, its messages."""

    stream_id: bytes
    epoch: int
    next_id: int
    data: bytes

    @property
    def millis(self) -> int:
        """When Redis appended it (ms since the Unix epoch, Redis's clock)."""
        return int(self.stream_id.partition(b"-")[0])


def connect(url: str, *, timeout: float) -> Any:
    """A redis-py asyncio client for `url` that fails fast instead of retrying: the
    caller decides what a lost backplane means."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:  # pragma: no cover - the `cluster` extra is missing
        raise RuntimeError(
            "--cluster needs the redis package: pip install 'tidings[cluster]'"
        ) from None
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )


class Backplane:
    """The cluster's keys on one Redis (`client`: a redis.asyncio.Redis)."""

    def __init__(self, client: Any, name: str, *, maxlen: int) -> None:
        self.client = client
        self.maxlen = maxlen
        prefix = f"{name}:"
        self.leader_key = prefix + "leader"
        self.fence_key = prefix + "fence"
        self.stream_key = prefix + "stream"
        self.state_key = prefix + "state"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._append = client.register_script(_APPEND)

    async def close(self) -> None:
        await self.client.aclose()

    # -- the lease --------------------------------------------------------------------------
    async def acquire(self, node: str, ttl: float) -> int | None:
        """Take the lease if nobody holds it: the fencing token, else None."""
        token = await self._acquire(keys=[self.leader_key, self.fence_key], args=[node, _ms(ttl)])
        return int(token) or None

    async def renew(self, node: str, token: int, ttl: float) -> bool:
        """Extend the lease; False when it is no longer ours (expired, or taken)."""
        keys = [self.leader_key, self.fence_key]
        return bool(await self._renew(keys=keys, args=[node, token, _ms(ttl)]))

    async def release(self, node: str, token: int) -> bool:
        keys = [self.leader_key, self.fence_key]
        return bool(await self._release(keys=keys, args=[node, token]))

    async def leader(self) -> str | None:
        value = await self.client.get(self.leader_key)
        return None if value is None else bytes(value).decode(errors="replace")

    # -- the stream ------------------------------------------------------------------------
    async def append(
        self, token: int, epoch: int, next_id: int, data: bytes, after: int, cp: Checkpoint | None
    ) -> bytes | None:
        """Append one entry if `token` still holds the fence (its stream id), else None.
        `after`: the id after this entry's last event; `cp`: its last transaction boundary."""
        keys = [self.fence_key, self.stream_key, self.state_key]
        args = [token, self.maxlen, epoch, next_id, data, after, "" if cp is None else cp.to_json()]
        result = await self._append(keys=keys, args=args)
        return None if result == 0 else bytes(result)

    async def state(self) -> tuple[Checkpoint | None, int | None]:
        """The last checkpoint and the id after the stream's last event (None: no stream)."""
        values = cast(dict[bytes, bytes], await self.client.hgetall(self.state_key))
        checkpoint = values.get(b"checkpoint")
        following = values.get(b"next")
        return (
            None if checkpoint is None else Checkpoint.from_json(checkpoint),
            None if following is None else int(following),
        )

    async def last_stream_id(self) -> bytes:
        """The stream id of the newest entry (b"0-0": none)."""
        found = await self.client.xrevrange(self.stream_key, count=1)
        return bytes(found[0][0]) if found else b"0-0"

    async def read(self, after: bytes, count: int, block_ms: int = BLOCK_MS) -> list[Entry]:
        """Entries after stream id `after`, waiting up to `block_ms` for the first."""
        reply = await self.client.xread({self.stream_key: after}, count=count, block=block_ms)
        entries: list[Entry] = []
        for _, items in reply or ():
            for stream_id, fields in items:
                try:
                    entries.append(
                        Entry(bytes(stream_id), int(fields[b"e"]), int(fields[b"n"]), fields[b"d"])
                    )
                except (KeyError, ValueError) as exc:
                    problem = f"stream entry {stream_id!r} is not ours: {exc!r}"
                    raise BackplaneError(problem) from None
        return entries


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
