"""The one exception the binlog decoder raises."""

from __future__ import annotations


class BinlogError(Exception):
    """Corrupt, truncated or unsupported binlog input.

    The decoder's state is undefined after this error: reconnect and call
    `BinlogDecoder.reset()` with the last good position.
    """
