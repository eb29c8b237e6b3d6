"""Row filters in the hub: filtered channel names, one evaluation per filter, enter/leave."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.event import Event
from tidings.hub import Hub
from tidings.hub.filters import FilterError, RowFilter, parse_channel

BIG = 1 << 30


class Recorder:
    def __init__(self) -> None:
        self.got: list[Event] = []

    def deliver(self, event: Event, pattern: str | None) -> None:
        assert pattern is None
        self.got.append(event)

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(e.body) for e in self.got]


def row(hub: Hub, kind: str, data: dict[str, Any], old: dict[str, Any] | None = None) -> Event:
    fields: dict[str, Any] = {"type": kind, "database": "shop", "table": "orders", "data": data}
    if old is not None:
        fields["old"] = old
    return hub.publish_record("shop.orders", fields)


def test_a_filtered_subscription_gets_matching_rows_on_its_own_name() -> None:
    hub = Hub()
    sub, plain = Recorder(), Recorder()
    name = "shop.orders?customer_id=eq.42"
    hub.subscribe(sub, name)
    hub.subscribe(plain, "shop.orders")
    hit = row(hub, "insert", {"id": 1, "customer_id": 42})
    row(hub, "insert", {"id": 2, "customer_id": 7})
    assert [e.channel for e in sub.got] == [name]
    assert sub.got[0].body == hit.body and sub.got[0].id == hit.id
    assert len(plain.got) == 2
    assert hub.subscriber_count(name) == 1 and hub.channels() == {"shop.orders": 1, name: 1}


def test_updates_entering_and_leaving_say_so() -> None:
    hub = Hub()
    sub = Recorder()
    hub.subscribe(sub, "shop.orders?status=eq.paid")
    row(hub, "update", {"id": 1, "status": "paid"}, {"status": "new"})  # enter
    row(hub, "update", {"id": 1, "status": "paid", "n": 2}, {"n": 1})  # stays: match
    row(hub, "update", {"id": 1, "status": "sent"}, {"status": "paid"})  # leave
    row(hub, "update", {"id": 1, "status": "gone"}, {"status": "sent"})  # outside: nothing
    row(hub, "delete", {"id": 1, "status": "paid"})  # a delete matches on the old row
    got = sub.bodies()
    assert [b.get("match") for b in got] == ["enter", None, "leave", None]
    assert [b["type"] for b in got] == ["update", "update", "update", "delete"]
    assert sub.got[0].body.endswith(b',"match":"enter"}')
    assert got[0]["data"] == {"id": 1, "status": "paid"}


def test_each_distinct_filter_is_evaluated_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = RowFilter.classify

    def counting(self: RowFilter, record: Any) -> Any:
        calls.append(self.text)
        return original(self, record)

    monkeypatch.setattr(RowFilter, "classify", counting)
    hub = Hub()
    a = "shop.orders?customer_id=eq.42&status=eq.paid"
    b = "shop.orders?status=eq.paid&customer_id=eq.42"  # the same filter, spelled otherwise
    c = "shop.orders?status=eq.new"
    subs = {name: [Recorder() for _ in range(3)] for name in (a, b, c)}
    for name, recorders in subs.items():
        for r in recorders:
            hub.subscribe(r, name)
    receivers = hub.publish("x", b"")  # another channel: no evaluation
    assert receivers == 0 and calls == []
    event = row(hub, "insert", {"id": 1, "customer_id": 42, "status": "paid"})
    texts = {parse_channel(a)[1].text, parse_channel(c)[1].text}  # type: ignore[union-attr]
    assert sorted(calls) == sorted(texts)  # two distinct filters, once each, for 9 subscribers
    # one derived event per name, shared by all its subscribers (encoded once)
    derived_a = {id(r.got[0]) for r in subs[a]}
    assert len(derived_a) == 1
    assert subs[a][0].got[0] is not subs[b][0].got[0]  # b's messages carry b's name
    assert subs[b][0].got[0].channel == b and subs[b][0].got[0].body == event.body
    assert all(r.got == [] for r in subs[c])


def test_malformed_filters_are_refused() -> None:
    hub = Hub()
    with pytest.raises(FilterError):
        hub.subscribe(Recorder(), "shop.orders?customer_id")
    with pytest.raises(FilterError):
        hub.subscribe(Recorder(), "?a=eq.1")
    assert hub.channels() == {}


def test_unsubscribe_forgets_filtered_channels() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    name = "t?x=eq.1"
    hub.subscribe(a, name)
    hub.subscribe(b, name)
    hub.unsubscribe(a, name)
    assert hub.subscriber_count(name) == 1
    hub.unsubscribe(b, name)
    hub.unsubscribe(b, name)  # twice: a no-op
    assert hub.channels() == {} and hub._filtered == {}
    hub.publish_record("t", {"type": "insert", "data": {"x": 1}})
    assert a.got == b.got == []


def test_a_subscriber_leaving_during_filtered_delivery() -> None:
    hub = Hub()
    name = "t?x=eq.1"

    class Leaver(Recorder):
        def deliver(self, event: Event, pattern: str | None) -> None:
            super().deliver(event, pattern)
            hub.unsubscribe(self, name)

    leaver, stayer = Leaver(), Recorder()
    hub.subscribe(leaver, name)
    hub.subscribe(stayer, name)
    assert hub.publish_record("t", {"type": "insert", "data": {"x": 1}}).id == 1
    hub.publish_record("t", {"type": "insert", "data": {"x": 1}})
    assert len(leaver.got) == 1 and len(stayer.got) == 2


def test_raw_publish_on_a_filtered_base_reaches_no_filtered_subscriber() -> None:
    hub = Hub()
    sub = Recorder()
    hub.subscribe(sub, "t?x=eq.1")
    assert hub.publish("t", b"not json") == 0
    assert hub.publish("t", b'{"type":"notify","payload":1}') == 0
    sub2 = Recorder()
    hub.resume(sub2, 0, channels=["t?x=eq.1"]).pump(BIG)
    assert sub.got == sub2.got == []


def test_resume_applies_the_filter_to_history() -> None:
    hub = Hub()
    name = "shop.orders?status=eq.paid"
    row(hub, "insert", {"id": 1, "status": "new"})
    row(hub, "update", {"id": 1, "status": "paid"}, {"status": "new"})
    row(hub, "insert", {"id": 2, "status": "paid"})
    row(hub, "update", {"id": 2, "status": "sent"}, {"status": "paid"})
    sub = Recorder()
    replay = hub.resume(sub, 1, channels=[name, "shop.orders"])
    assert replay.pump(BIG)
    filtered = [(e.id, orjson.loads(e.body).get("match")) for e in sub.got if e.channel == name]
    assert filtered == [(2, "enter"), (3, None), (4, "leave")]
    assert [e.id for e in sub.got if e.channel == "shop.orders"] == [2, 3, 4]
    row(hub, "insert", {"id": 3, "status": "paid"})  # live now, through the same filter
    assert [e.channel for e in sub.got[-2:]] == ["shop.orders", name]


# -- property: a filtered view stays equal to the model table filtered in plain Python -------
ops = st.lists(
    st.tuples(st.sampled_from(["upsert", "delete"]), st.integers(1, 6), st.integers(0, 4)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, wanted=st.integers(0, 4), op=st.sampled_from(["eq", "gt", "lte", "neq"]))
def test_filtered_view_matches_the_model(
    ops: list[tuple[str, int, int]], wanted: int, op: str
) -> None:
    plain = {
        "eq": lambda v: v == wanted,
        "gt": lambda v: v > wanted,
        "lte": lambda v: v <= wanted,
        "neq": lambda v: v != wanted,
    }[op]
    hub = Hub()
    name = f"db.t?v={op}.{wanted}"
    live = Recorder()
    hub.subscribe(live, name)
    table: dict[int, int] = {}
    for kind, key, value in ops:
        if kind == "upsert" and key in table:
            old = table[key]
            table[key] = value
            changed = {"v": old} if old != value else {}
            fields = {"type": "update", "data": {"k": key, "v": value}, "old": changed}
        elif kind == "upsert":
            table[key] = value
            fields = {"type": "insert", "data": {"k": key, "v": value}}
        elif key in table:
            fields = {"type": "delete", "data": {"k": key, "v": table.pop(key)}}
        else:
            continue
        hub.publish_record("db.t", fields)
    replayed = Recorder()
    assert hub.resume(replayed, 0, channels=[name]).pump(BIG)
    for sub in (live, replayed):
        view: dict[int, int] = {}
        for body in sub.bodies():
            k, v = body["data"]["k"], body["data"]["v"]
            if body["type"] == "delete" or body.get("match") == "leave":
                assert k in view, "a row left that was never in"
                del view[k]
            else:
                assert (k in view) == (body["type"] == "update" and "match" not in body)
                view[k] = v
        assert view == {k: v for k, v in table.items() if plain(v)}
