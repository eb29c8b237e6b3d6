"""Wire protocols: sans-I/O codecs, the shared bounded outbox, and the asyncio servers."""

from tidings.wire.outbox import Flusher, Outbox, OutboxStats
from tidings.wire.resp import ProtocolError, RespParser
from tidings.wire.resp_server import RespService, RespSettings, RespStats, start_resp_server

__all__ = [
    "Flusher",
    "Outbox",
    "OutboxStats",
    "ProtocolError",
    "RespParser",
    "RespService",
    "RespSettings",
    "RespStats",
    "start_resp_server",
]
