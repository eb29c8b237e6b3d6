"""Which web pages may use the daemon from a browser: CORS and the WebSocket Origin check.

Theory of operation. A browser names the page that makes a cross-origin request
in the `Origin` header (`https://shop.example`, `http://localhost:5173`, or
`null` for opaque origins such as `file:` pages). `Origins` is the allow-list
from the `origins` setting: `*` (any page), or a comma-separated list of exact
origins, where a port of `*` (`http://localhost:*`) stands for any port.

HTTP answers carry `Access-Control-Allow-Origin` only for an allowed origin; the
browser then withholds the answer from any other page (the request itself is
served: CORS is enforced by the browser). WebSocket has no such protection, so
a handshake from an origin not on the list is refused by the server
(tidings.wire.ws_session). A request without `Origin` does not come from a
page's script (curl, redis-cli, services) and is never refused for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["ANY", "Origins", "OriginsError"]

# scheme://host[:port], as browsers serialise an origin (lower case, no path)
_ORIGIN: Final = re.compile(r"^[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:(\d{1,5}|\*))?$")
#: headers a page may send cross-origin (a preflight lists them)
ALLOW_HEADERS: Final = "Authorization, Content-Type, Last-Event-ID"
#: how long (s) a browser may cache a preflight answer
MAX_AGE: Final = "600"


class OriginsError(ValueError):
    pass


@dataclass(slots=True, frozen=True)
class Origins:
    """The allow-list; see the module docstring."""

    #: any origin
    any: bool = True
    #: exact origins allowed
    exact: frozenset[str] = frozenset()
    #: `scheme://host:` prefixes allowed with any port
    any_port: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Origins:
        """`*`, or comma-separated origins (`http://localhost:*` for any port); raises
        OriginsError naming what is not an origin."""
        items = [item.strip().rstrip("/").lower() for item in text.split(",")]
        items = [item for item in items if item]
        if "*" in items:
            return cls()
        exact: set[str] = set()
        any_port: set[str] = set()
        for item in items:
            if item != "null" and not _ORIGIN.match(item):
                raise OriginsError(
                    f"{item!r} is not an origin: write scheme://host[:port] such as "
                    "https://app.example or http://localhost:*, or * for any"
                )
            if item.endswith(":*"):
                any_port.add(item[:-1])
            else:
                exact.add(item)
        return cls(False, frozenset(exact), frozenset(any_port))

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        origin = origin.lower()
        if origin in self.exact:
            return True
        scheme_host, sep, port = origin.rpartition(":")
        return bool(sep) and port.isdigit() and scheme_host + ":" in self.any_port

    def cors_headers(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        """The headers that let the page at `origin` read an answer (none: it may not)."""
        if self.any:
            return _ANY_ORIGIN
        if origin is not None and self.allows(origin):
            return (("Access-Control-Allow-Origin", origin), _VARY)
        return (_VARY,)  # a cache must not serve this answer to another origin

    @staticmethod
    def preflight_headers(methods: str) -> tuple[tuple[str, str], ...]:
        """What an answer to an allowed origin's preflight adds to `cors_headers`."""
        return (
            ("Access-Control-Allow-Methods", methods),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", MAX_AGE),
        )


_ANY_ORIGIN: Final = (("Access-Control-Allow-Origin", "*"),)
_VARY: Final = ("Vary", "Origin")

#: the default: any page may read
ANY: Final = Origins()
