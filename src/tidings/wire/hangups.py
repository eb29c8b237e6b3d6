"""Clients that vanish without a goodbye: counted, not logged one line each.

A reset (ECONNRESET), a broken pipe (EPIPE), an aborted connection or a TCP timeout
is what a client that crashed, lost its network or closed with SO_LINGER 0 leaves
behind: ordinary for a server with thousands of clients, and 380 of them a second in
the soak wrote 35 MB of log in 20 minutes. Each is logged at debug; at info, one line
at most once a minute (`INTERVAL`) says how many there were. Everything else that
ends a connection (a protocol error, a refused token, a slow consumer cut off) stays
an info line or a warning of its own, where the protocol handles it.
"""

from __future__ import annotations

import logging

__all__ = ["INTERVAL", "ORDINARY", "Hangups", "ordinary"]

#: seconds between two summary lines (at most)
INTERVAL = 60.0
#: how a connection ends when its peer just went away
ORDINARY = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


def ordinary(exc: BaseException | None) -> bool:
    """Whether `exc` (from connection_lost) is a client that simply went away."""
    return isinstance(exc, ORDINARY)


class Hangups:
    """Counts one listener's ordinary disconnects and reports them (module docstring)."""

    __slots__ = ("_logger", "_pending", "_since", "interval", "total", "what")

    def __init__(self, logger: logging.Logger, what: str, interval: float = INTERVAL) -> None:
        self._logger = logger
        #: the listener, as the summary names it ("RESP", "HTTP", "WebSocket")
        self.what = what
        self.interval = interval
        #: ordinary disconnects ever counted
        self.total = 0
        self._pending = 0  # counted since the last summary
        self._since = 0.0  # when the first of those came

    def count(self, who: str, exc: BaseException, now: float) -> None:
        """One connection (`who`, for the debug line) ended by `exc` at `now` (monotonic)."""
        self._logger.debug("%s: connection lost: %r", who, exc)
        self.total += 1
        if not self._pending:
            self._since = now
        self._pending += 1
        self.tick(now)

    def tick(self, now: float) -> None:
        """Log the summary if one is due (the services' once-a-second sweep calls this, so
        the last ones of a burst are reported too)."""
        if self._pending and now - self._since >= self.interval:
            self._logger.info(
                "%s: %d client connection(s) ended by the peer without a goodbye (reset, "
                "broken pipe) in the last %.0f s; each is logged at debug",
                self.what,
                self._pending,
                now - self._since,
            )
            self._pending = 0
