"""NOTIFY outbox: the SQL it installs, how outbox rows become events, purge arithmetic."""

from __future__ import annotations

import asyncio
import base64
import itertools
from typing import Any

import orjson
import pytest

from tidings.event import Event
from tidings.hub import Hub
from tidings.publish import ddl_records, publish_transaction
from tidings.sandbox import PrivateMariaDB
from tidings.source.changes import Position, RowChange, Transaction
from tidings.source.notify import (
    FENCE,
    NOTIFY,
    PAYLOAD_LIMIT,
    PUBLISH,
    InstallError,
    Outbox,
    check_channel,
    check_schema_name,
    decode_row,
    delete_statement,
    install,
    install_statements,
    payload_value,
)
from tidings.source.url import MySQLURL

_schemas = itertools.count(1)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.records: list[dict[str, Any] | None] = []

    def deliver(self, event: Event, pattern: str | None) -> None:
        self.events.append(event)
        self.records.append(event.record)  # for filters; history drops it later


def outbox_insert(
    channel: str, payload: bytes, kind: int = NOTIFY, ref: int | None = None, row_id: int = 1
) -> RowChange:
    """An outbox insert as the binlog decoder hands it over (BLOB as base64)."""
    data = {
        "id": row_id,
        "channel": channel,
        "payload": base64.b64encode(payload).decode(),
        "kind": kind,
        "ref": ref,
        "created": "2025-01-01T00:00:00.000000Z",
    }
    return RowChange("insert", "tidings", "outbox", data)


def txn(*changes: RowChange, ddl: list[tuple[str, str]] | None = None) -> Transaction:
    return Transaction(
        list(changes), 1_700_000_000, "0-1-5", 77, Position("b.000001", 400), ddl or []
    )


def hub_with(*channels: str) -> tuple[Hub, Recorder]:
    hub = Hub()
    rec = Recorder()
    for channel in channels:
        hub.subscribe(rec, channel)
    return hub, rec


def body(event: Event) -> Any:
    return orjson.loads(event.body)


# -- names and SQL -------------------------------------------------------------------------


def test_schema_and_channel_names_are_checked() -> None:
    assert check_schema_name("tidings_2") == "tidings_2"
    for bad in ("", "a b", "x`y", "a" * 65, "db.t"):
        with pytest.raises(ValueError, match="schema name"):
            check_schema_name(bad)
    assert check_channel("c" * 255)
    for bad in ("", "c" * 256):
        with pytest.raises(ValueError, match="1 to 255"):
            check_channel(bad)


def test_install_statements_name_the_schema_everywhere() -> None:
    tables, drop, create = install_statements("events")
    assert tables[0] == "CREATE DATABASE IF NOT EXISTS `events` CHARACTER SET utf8mb4"
    assert "CREATE TABLE IF NOT EXISTS `events`.`outbox`" in tables[1]
    assert "ENGINE=InnoDB" in tables[1]
    assert drop == "DROP PROCEDURE IF EXISTS `events`.`notify`"
    assert "INSERT INTO `events`.`outbox`" in create
    assert f"> {PAYLOAD_LIMIT} THEN" in create
    assert "tidings" not in drop + create.replace("tidings.notify:", "").replace(
        "tidings notify v1", ""
    )


# -- rows --------------------------------------------------------------------------------


def test_decode_row_takes_the_blob_back_from_base64() -> None:
    row = decode_row(outbox_insert("c", b"\x00\xffraw", PUBLISH, 42).data)
    assert (row.kind, row.channel, row.payload, row.ref) == (PUBLISH, "c", b"\x00\xffraw", 42)
    # MINIMAL row images may leave out what the statement did not set
    row = decode_row({"id": 3, "channel": "c", "payload": base64.b64encode(b"x").decode()})
    assert (row.kind, row.payload, row.ref) == (NOTIFY, b"x", None)


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b'{"a":[1,2]}', {"a": [1, 2]}),
        (b" 42 ", 42),
        (b'"quoted"', "quoted"),
        (b"null", None),
        (b"plain text", "plain text"),
        (b"", ""),
        (b"{broken", "{broken"),
        ("héllo 🌍".encode(), "héllo 🌍"),
    ],
)
def test_payload_is_json_when_it_parses_else_text(payload: bytes, value: Any) -> None:
    assert payload_value(payload) == value


def test_delete_statement_looks_up_each_id_by_key() -> None:
    assert delete_statement("`t`.`outbox`", [5, 1, 5]) == (
        "DELETE o FROM (SELECT 0 AS id UNION ALL SELECT 1 UNION ALL SELECT 5) AS d "
        "STRAIGHT_JOIN `t`.`outbox` AS o ON o.`id` = d.id"
    )


# -- from outbox rows to events ------------------------------------------------------------


async def test_notify_rows_become_notify_events_on_their_channel() -> None:
    hub, rec = hub_with("orders", "tidings.outbox")
    await publish_transaction(hub, txn(outbox_insert("orders", b'{"id":7}')))
    (event,) = rec.events
    assert event.channel == "orders"
    assert body(event) == {
        "id": event.id,
        "channel": "orders",
        "type": "notify",
        "payload": {"id": 7},
        "ts": 1_700_000_000,
        "gtid": "0-1-5",
        "xid": 77,
    }
    assert rec.records == [body(event)]


async def test_outbox_deletes_fences_and_empty_channels_take_no_id() -> None:
    hub, rec = hub_with("tidings.outbox", "")
    first = hub.next_id
    purge = RowChange("delete", "tidings", "outbox", {"id": 1})
    update = RowChange("update", "tidings", "outbox", {"id": 1}, {"kind": 0})
    await publish_transaction(
        hub, txn(purge, update, outbox_insert("", b"x"), outbox_insert("c", b"", FENCE, 5))
    )
    assert rec.events == []
    assert hub.next_id == first


async def test_rows_and_notifies_keep_binlog_order_with_consecutive_ids() -> None:
    hub, rec = hub_with("shop.orders", "orders")
    row = RowChange("insert", "shop", "orders", {"id": 1})
    await publish_transaction(
        hub,
        txn(row, outbox_insert("orders", b"first"), row, outbox_insert("orders", b"second")),
    )
    assert [(e.channel, body(e).get("payload")) for e in rec.events] == [
        ("shop.orders", None),
        ("orders", "first"),
        ("shop.orders", None),
        ("orders", "second"),
    ]
    ids = [e.id for e in rec.events]
    assert ids == list(range(ids[0], ids[0] + 4))


async def test_publish_rows_deliver_raw_bytes_and_resolve_their_waiter() -> None:
    outbox = Outbox()
    hub, rec = hub_with("raw")
    hub.psubscribe(rec, "r*")
    ref, future = outbox.expect()
    fence_ref, fence = outbox.expect()
    await publish_transaction(
        hub,
        txn(outbox_insert("raw", b"\x00\xff not json", PUBLISH, ref)),
        outbox=outbox,
    )
    assert [e.body for e in rec.events] == [b"\x00\xff not json"] * 2  # channel + pattern
    assert future.result() == 2
    assert not fence.done()
    await publish_transaction(hub, txn(outbox_insert("", b"", FENCE, fence_ref)), outbox=outbox)
    assert fence.result() == 0
    assert outbox.inserts_seen == 2 and outbox.wakeup.is_set()
    assert not outbox.waiting(ref) and not outbox.waiting(fence_ref)


async def test_rows_of_another_outbox_schema_are_plain_rows() -> None:
    hub, rec = hub_with("tidings.outbox", "c")
    await publish_transaction(hub, txn(outbox_insert("c", b"1")), outbox=Outbox("events"))
    assert [e.channel for e in rec.events] == ["tidings.outbox"]
    assert body(rec.events[0])["type"] == "insert"


async def test_live_false_takes_ids_but_reaches_nobody() -> None:
    outbox = Outbox()
    hub, rec = hub_with("c")
    ref, future = outbox.expect()
    before = hub.next_id
    await publish_transaction(
        hub,
        txn(outbox_insert("c", b"1"), outbox_insert("c", b"2", PUBLISH, ref)),
        live=False,
        outbox=outbox,
    )
    assert rec.events == []
    assert hub.next_id == before + 2
    assert future.result() == 0


async def test_waiters_are_forgotten_and_failed() -> None:
    outbox = Outbox()
    ref, future = outbox.expect()
    outbox.forget(ref)
    outbox.seen(ref, 3)
    assert not future.done()
    ref, future = outbox.expect()
    outbox.fail(ref, RuntimeError("down"))
    with pytest.raises(RuntimeError, match="down"):
        await future
    a, _ = outbox.expect()
    b, _ = outbox.expect()
    assert b == a + 1


# -- DDL events ----------------------------------------------------------------------------


async def test_ddl_events_come_first_one_per_table_and_only_when_asked() -> None:
    hub, rec = hub_with("shop.a", "shop.b", "shop", "shop.orders")
    t = txn(
        RowChange("insert", "shop", "orders", {"id": 1}),
        ddl=[("shop", "RENAME TABLE a TO b"), ("", "CREATE DATABASE shop")],
    )
    await publish_transaction(hub, t)
    assert [e.channel for e in rec.events] == ["shop.orders"]
    rec.events.clear()
    await publish_transaction(hub, t, ddl=True)
    assert [e.channel for e in rec.events] == ["shop.a", "shop.b", "shop", "shop.orders"]
    assert body(rec.events[0]) == {
        "id": rec.events[0].id,
        "channel": "shop.a",
        "type": "ddl",
        "database": "shop",
        "table": "a",
        "sql": "RENAME TABLE a TO b",
        "ts": 1_700_000_000,
        "gtid": "0-1-5",
    }
    assert body(rec.events[2])["table"] is None


def test_ddl_of_the_outbox_table_is_not_published() -> None:
    t = txn(ddl=[("", "CREATE TABLE IF NOT EXISTS `tidings`.`outbox` (id INT)")])
    assert ddl_records(t, Outbox()) == []
    assert [c for c, _ in ddl_records(t, Outbox("other"))] == ["tidings.outbox"]


# -- install-sql on a real server --------------------------------------------------------


@pytest.fixture
def schema() -> str:
    return f"notify{next(_schemas)}"


async def test_install_is_idempotent_and_keeps_grants(mariadb: PrivateMariaDB, schema: str) -> None:
    url = MySQLURL.parse(mariadb.url())
    done = await install(url, schema)
    assert f"procedure `{schema}`.`notify`: created" in done
    mariadb.sql(f"CREATE USER IF NOT EXISTS 'app_{schema}'@'%'")
    mariadb.sql(f"GRANT EXECUTE ON PROCEDURE {schema}.notify TO 'app_{schema}'@'%'")
    done = await install(url, schema)
    assert f"procedure `{schema}`.`notify`: already installed, kept" in done
    grants = mariadb.sql(f"SHOW GRANTS FOR 'app_{schema}'@'%'")
    assert f"PROCEDURE `{schema}`.`notify`" in grants
    # an older procedure is replaced
    mariadb.sql(f"ALTER PROCEDURE {schema}.notify COMMENT 'tidings notify v0: old'")
    done = await install(url, schema)
    assert f"procedure `{schema}`.`notify`: replaced (give EXECUTE on it again)" in done


async def test_install_refuses_a_foreign_outbox_table(mariadb: PrivateMariaDB, schema: str) -> None:
    mariadb.sql(f"CREATE DATABASE {schema}; CREATE TABLE {schema}.outbox (id INT PRIMARY KEY)")
    with pytest.raises(InstallError, match="not tidings' outbox table"):
        await install(MySQLURL.parse(mariadb.url()), schema)


async def test_notify_checks_its_arguments_at_call_time(
    mariadb: PrivateMariaDB, schema: str
) -> None:
    await install(MySQLURL.parse(mariadb.url()), schema)

    def call(args: str) -> str:
        return mariadb.sql(f"CALL {schema}.notify({args})")

    with pytest.raises(RuntimeError, match="payload is 65537 bytes, over the limit of 65536"):
        await asyncio.to_thread(call, "'c', REPEAT('x', 65537)")
    with pytest.raises(RuntimeError, match="payload is 65538 bytes"):  # bytes, not characters
        await asyncio.to_thread(call, "'c', REPEAT('é', 32769)")
    for channel, shown in (("''", "0"), ("NULL", "NULL"), ("REPEAT('c', 256)", "256")):
        with pytest.raises(RuntimeError, match=f"channel must be 1 to 255 characters, not {shown}"):
            await asyncio.to_thread(call, f"{channel}, 'x'")
    # at the limits, and with a NULL payload (stored empty, like pg_notify's)
    await asyncio.to_thread(call, f"REPEAT('c', 255), REPEAT('x', {PAYLOAD_LIMIT})")
    await asyncio.to_thread(call, "'c', NULL")
    rows = mariadb.sql(
        f"SELECT CHAR_LENGTH(channel), LENGTH(payload), kind, ref IS NULL FROM {schema}.outbox"
    )
    assert rows.split("\n")[:2] == ["255\t65536\t0\t1", "1\t0\t0\t1"]
    # a direct insert is held to the same limit by the table's CHECK constraint
    with pytest.raises(RuntimeError, match="notify_payload_limit"):
        mariadb.sql(
            f"INSERT INTO {schema}.outbox (channel, payload) VALUES ('c', REPEAT('x', 70000))"
        )
