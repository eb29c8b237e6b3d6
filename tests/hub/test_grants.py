"""Channel grants (tidings.hub.grants): what each entry allows, and properties showing an
allowed subscription never receives what the grant does not cover."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.hub.filters import FilterError, parse_channel
from tidings.hub.grants import ChannelRules, PublishRules
from tidings.hub.patterns import GlobPattern


def test_an_unfiltered_entry_allows_its_channels_with_or_without_filters() -> None:
    rules = ChannelRules(["shop.orders", "crm.*"])
    assert rules.allows_channel("shop.orders")
    assert rules.allows_channel("shop.orders?customer_id=eq.42")
    assert rules.allows_channel("crm.people?country=in.(NZ,AU)")
    assert rules.allows_channel("crm.")
    assert not rules.allows_channel("shop.customers")
    assert not rules.allows_channel("shop.orders2")
    assert not rules.allows_channel("crm")
    assert not rules.allows_channel("shop.orders?malformed")  # refused, not an exception


def test_a_filtered_entry_allows_that_filter_and_narrower_ones_only() -> None:
    rules = ChannelRules(["shop.orders?customer_id=eq.42&status=eq.paid"])
    # the same filter, however it is spelled (canonical form)
    assert rules.allows_channel("shop.orders?customer_id=eq.42&status=eq.paid")
    assert rules.allows_channel("shop.orders?status=eq.paid&customer_id=eq.42")
    assert rules.allows_channel("shop.orders?customer_id=eq.42.0&status=eq.paid")
    # the same AND more conditions: a subset of its rows
    assert rules.allows_channel("shop.orders?customer_id=eq.42&status=eq.paid&total=gt.10")
    # anything wider or elsewhere
    assert not rules.allows_channel("shop.orders")
    assert not rules.allows_channel("shop.orders?customer_id=eq.42")
    assert not rules.allows_channel("shop.orders?customer_id=eq.43&status=eq.paid")
    assert not rules.allows_channel("shop.orders?customer_id=gte.42&status=eq.paid")
    assert not rules.allows_channel("shop.customers?customer_id=eq.42&status=eq.paid")


def test_a_filtered_entry_with_a_glob_base() -> None:
    rules = ChannelRules(["tenant5_*?tenant_id=eq.5"])
    assert rules.allows_channel("tenant5_shop.orders?tenant_id=eq.5")
    assert not rules.allows_channel("tenant5_shop.orders")
    assert not rules.allows_pattern("tenant5_*")  # a pattern gets rows unfiltered


@pytest.mark.parametrize(
    ("entries", "pattern", "allowed"),
    [
        (["shop.*"], "shop.*", True),  # the entry's own glob
        (["shop.*"], "shop.ord*", True),  # starts with the entry's literal prefix
        (["shop.*"], "shop.[ab]*", True),
        (["shop.*"], "shop.?", True),
        (["shop.*"], "shop*", False),  # would match "shopping.x"
        (["shop.*"], "sho[p].*", False),  # the prefix must be literal in the pattern too
        (["shop.*"], "shop\\.*", False),  # an escape in the prefix: not provably the same
        (["shop.*"], "*", False),
        (["*"], "anything*", True),
        (["*"], "*", True),
        (["shop.orders"], "shop.orders", True),  # no glob character: one channel
        (["shop.orders"], "shop.order?", False),
        (["shop.[ab]*"], "shop.[ab]*", True),  # equal globs match the same channels
        (["shop.[ab]*"], "shop.a*", False),  # could be shown, but is not: conservative
        (["a[*"], "a[b", False),  # "a[*" is a, then a class holding "*": it matches "a*" only
        (["\\*"], "\\a*", False),  # "\\*" is the channel "*"
        (["shop.orders?id=eq.1"], "shop.orders", False),  # filtered entries: no patterns
        (["shop.orders?id=eq.1"], "shop.*", False),
    ],
)
def test_patterns_only_when_provably_covered(
    entries: list[str], pattern: str, allowed: bool
) -> None:
    assert ChannelRules(entries).allows_pattern(pattern) is allowed


def test_a_bad_entry_is_refused_when_compiled() -> None:
    with pytest.raises(FilterError):
        ChannelRules(["shop.orders?customer_id=42"])
    with pytest.raises(FilterError):
        ChannelRules(["?id=eq.1"])


def test_publish_rules_are_globs_over_whole_names() -> None:
    rules = PublishRules(["chat.*", "jobs"])
    assert rules.allows("chat.room1") and rules.allows("jobs")
    assert not rules.allows("jobs2") and not rules.allows("shop.orders")
    assert not PublishRules(()).allows("x")


# -- properties: an allowed subscription receives only what the grant covers ----------------------
_chars = "ab."
_glob_chars = "ab.*?[]\\^-"
# globs without "?" (it starts a filter in an entry); every other one a `PREFIX*`
_entries = (
    st.text(_glob_chars, max_size=4)
    .map(lambda e: e + "*" if len(e) % 2 else e)
    .filter(lambda e: bool(e) and "?" not in e)
)


@settings(max_examples=400)
@given(
    entries=st.lists(_entries, min_size=1, max_size=3),
    pattern=st.text(_glob_chars, min_size=1, max_size=6),
    channels=st.lists(st.text(_chars, max_size=7), min_size=1, max_size=30),
)
def test_an_allowed_pattern_matches_only_granted_channels(
    entries: list[str], pattern: str, channels: list[str]
) -> None:
    rules = ChannelRules(entries)
    if not rules.allows_pattern(pattern):
        return
    glob = GlobPattern(pattern)
    granted = [GlobPattern(e) for e in entries]
    for channel in channels:
        if glob.matches(channel):
            assert any(g.matches(channel) for g in granted), (pattern, channel)


_conditions = ["n=eq.1", "n=gt.1", "n=lt.3", "s=eq.a", "s=neq.a", "s=is.null", "n=in.(1,2)"]
_rows = st.fixed_dictionaries(
    {}, optional={"n": st.none() | st.integers(0, 4), "s": st.none() | st.sampled_from("ab")}
)


def _filter(conditions: list[str]) -> str:
    return "shop.orders?" + "&".join(conditions)


@settings(max_examples=400)
@given(
    granted=st.lists(st.sampled_from(_conditions), min_size=1, max_size=3),
    wanted=st.lists(st.sampled_from(_conditions), min_size=1, max_size=4),
    kind=st.sampled_from(["insert", "update", "delete"]),
    data=_rows,
    old=_rows,
)
def test_an_allowed_filtered_channel_gets_only_events_the_granted_filter_gives(
    granted: list[str], wanted: list[str], kind: str, data: dict[str, Any], old: dict[str, Any]
) -> None:
    name = _filter(wanted)
    if not ChannelRules([_filter(granted)]).allows_channel(name):
        return
    record: dict[str, Any] = {"type": kind, "data": data}
    if kind == "update":
        record["old"] = old
    grant_filter = parse_channel(_filter(granted))[1]
    want_filter = parse_channel(name)[1]
    assert grant_filter is not None and want_filter is not None
    if want_filter.classify(record) is not None:
        assert grant_filter.classify(record) is not None
