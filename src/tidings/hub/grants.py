"""What a token's `channels` and `publish` claims allow. Pure: names in, yes or no out.

Checked once, when a client subscribes: nothing is checked per delivered event, so a
subscription must never be allowed unless *every* event it can ever receive is one
the grant covers. When that cannot be shown cheaply, the answer is no.

A `channels` entry is a Redis glob (tidings.hub.patterns), optionally followed by a
row filter after the first `?` (tidings.hub.filters), exactly as channel names carry
filters; so the glob part cannot use `?`.

* A channel name `base[?filter]` (SUBSCRIBE, TIDINGS.SUBSCRIBE, TIDINGS.SNAPSHOT, SSE
  `channel=`, WebSocket `subscribe`) is allowed by
  - an entry without a filter whose glob matches `base`, whatever the name's filter
    (a filter only narrows what a channel gives);
  - an entry with a filter whose glob matches `base`, when the name has a filter
    containing every condition of the entry's (compared in their canonical form). A
    filtered subscription receives an event only if the row matched its filter before
    or after the change; its filter being the entry's AND more, the entry's filter
    matched too, so the event is one the entry's own channel would deliver.
* A glob pattern (PSUBSCRIBE, TIDINGS.PSUBSCRIBE, SSE `pattern=`) receives every
  channel it matches, unfiltered, so only entries without a filter can allow it, and
  only when one of them provably matches everything the pattern does:
  - the pattern has no glob character: it is a channel name, allowed as above;
  - the pattern is the entry's glob, character for character;
  - the entry is `PREFIX*` with a literal PREFIX, and the pattern starts with PREFIX
    (its first characters are then literal too: every match starts with PREFIX).
* A `publish` entry is a Redis glob matched against the whole channel name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

from tidings.hub.filters import FilterError, parse_channel
from tidings.hub.patterns import GlobPattern

__all__ = ["ChannelRules", "PublishRules", "has_glob"]

#: characters with a meaning in a Redis glob (`]` only means something after `[`)
_GLOB_CHARS: Final = frozenset("*?[\\")


def has_glob(text: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(text)


class _Rule(NamedTuple):
    #: the glob part as written
    glob: str
    match: GlobPattern
    #: canonical texts of the filter's conditions; None: no filter
    conditions: frozenset[str] | None
    #: for a `PREFIX*` entry with a literal PREFIX: PREFIX; else None
    prefix: str | None


def _conditions(name: str) -> tuple[str, frozenset[str] | None]:
    """(base, canonical condition texts or None); raises FilterError."""
    base, row_filter = parse_channel(name)
    if row_filter is None:
        return base, None
    return base, frozenset(c.text for c in row_filter.conditions)


class ChannelRules:
    """The compiled `channels` claim; see the module docstring for the rules."""

    __slots__ = ("_rules", "entries")

    def __init__(self, entries: Iterable[str]) -> None:
        """Raises FilterError for an entry whose filter is malformed."""
        self.entries = tuple(entries)
        rules = []
        for entry in self.entries:
            glob, conditions = _conditions(entry)
            head = glob[:-1]
            prefix = head if glob.endswith("*") and not has_glob(head) else None
            rules.append(_Rule(glob, GlobPattern(glob), conditions, prefix))
        self._rules = tuple(rules)

    def allows_channel(self, name: str) -> bool:
        try:
            base, wanted = _conditions(name)
        except FilterError:
            return False
        for rule in self._rules:
            if not rule.match.matches(base):
                continue
            if rule.conditions is None or (wanted is not None and rule.conditions <= wanted):
                return True
        return False

    def allows_pattern(self, pattern: str) -> bool:
        if not has_glob(pattern):
            return self.allows_channel(pattern)
        for rule in self._rules:
            if rule.conditions is not None:
                continue
            if rule.glob == pattern:
                return True
            if rule.prefix is not None and pattern.startswith(rule.prefix):
                return True
        return False

    def __repr__(self) -> str:
        return f"ChannelRules({list(self.entries)!r})"


class PublishRules:
    """The compiled `publish` claim: Redis globs over whole channel names."""

    __slots__ = ("_globs", "entries")

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self._globs = tuple(GlobPattern(entry) for entry in self.entries)

    def allows(self, channel: str) -> bool:
        return any(glob.matches(channel) for glob in self._globs)

    def __repr__(self) -> str:
        return f"PublishRules({list(self.entries)!r})"
