"""From committed transactions to hub events: the event JSON users receive.

Each row change becomes one event on `database.table`, except the rows of the
NOTIFY outbox table (`tidings.source.notify`): an insert there becomes a
`notify` event on the channel it names (or, for a client PUBLISH, the raw
payload), and the table's own changes are not published. Telling them apart
costs one string comparison per change. DDL statements become `ddl` events on
the channel of each table they name (`tidings.source.ddl`), before the rows of
their transaction.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tidings.hub import Hub
from tidings.source import ddl as ddl_targets
from tidings.source.changes import RowChange, Transaction
from tidings.source.notify import FENCE, NOTIFY, PUBLISH, Outbox, decode_row, payload_value


def change_record(txn: Transaction, index: int) -> dict[str, Any]:
    """The event JSON fields (after id and channel) for one row change of `txn`."""
    change = txn.changes[index]
    record: dict[str, Any] = {
        "type": change.type,
        "database": change.database,
        "table": change.table,
        "ts": txn.ts,
        "gtid": txn.gtid,
        "xid": txn.xid,
        "data": change.data,
    }
    if change.old is not None:
        record["old"] = change.old
    return record


def ddl_records(txn: Transaction, outbox: Outbox) -> list[tuple[str, dict[str, Any]]]:
    """(channel, event fields) for each table (or database) the DDL of `txn` names."""
    records: list[tuple[str, dict[str, Any]]] = []
    for database, sql in txn.ddl:
        for db, table in ddl_targets.targets(sql, database):
            if db == outbox.schema and table == outbox.table:
                continue  # the outbox's own channel is never published
            fields = {
                "type": "ddl",
                "database": db,
                "table": table,
                "sql": sql,
                "ts": txn.ts,
                "gtid": txn.gtid,
            }
            records.append((db if table is None else f"{db}.{table}", fields))
    return records


def publish_outbox_row(
    hub: Hub, txn: Transaction, change: RowChange, outbox: Outbox, live: bool
) -> None:
    """An outbox insert: a NOTIFY event, a client PUBLISH, or a purge fence (no event)."""
    if change.type != "insert":
        return  # purges (and any update) of the outbox are nobody's news
    row = decode_row(change.data)
    receivers = 0
    if row.kind == NOTIFY and row.channel:
        fields = {
            "type": "notify",
            "payload": payload_value(row.payload),
            "ts": txn.ts,
            "gtid": txn.gtid,
            "xid": txn.xid,
        }
        hub.publish_record(row.channel, fields, live=live)
    elif row.kind == PUBLISH and row.channel:
        receivers = hub.publish(row.channel, row.payload, live=live, ref=row.ref)
    elif row.kind != FENCE:
        return  # an unknown kind (a newer tidings?) takes no id
    outbox.seen(row.ref, receivers)


#: the outbox publish_transaction() knows when not given one: schema `tidings`
DEFAULT_OUTBOX = Outbox()

#: rows published before the loop gets a turn (to flush outboxes) within a big transaction
YIELD_EVERY = 256


async def publish_transaction(
    hub: Hub,
    txn: Transaction,
    *,
    live: bool = True,
    outbox: Outbox | None = None,
    ddl: bool = False,
) -> None:
    """Publish every row change of a committed transaction, in order, then mark its end.

    Between chunks of a large transaction the loop gets a turn, so outboxes drain
    to the kernel instead of piling up past their limit; the source is the only
    publisher of database channels, so the transaction stays contiguous for
    every subscriber. With `live=False` (re-reading old binlog at start-up to
    refill history) the events take their ids but reach no subscriber.
    `hub.mark()` comes after the last event: the hub (and the checkpoint) may
    only pair `txn.position` with the id that follows all of its events.
    `outbox` says where the NOTIFY outbox is (default: `tidings.outbox`); with
    `ddl`, DDL statements are published too. Both change which events exist, so
    they must stay the same across restarts for ids to be re-derived.
    """
    if outbox is None:
        outbox = DEFAULT_OUTBOX
    if ddl and txn.ddl:
        for channel, fields in ddl_records(txn, outbox):
            hub.publish_record(channel, fields, live=live)
    schema = outbox.schema
    for index, change in enumerate(txn.changes):
        if index and not index % YIELD_EVERY:
            await asyncio.sleep(0)
        if change.database == schema and change.table == outbox.table:
            publish_outbox_row(hub, txn, change, outbox, live)
            continue
        hub.publish_record(
            f"{change.database}.{change.table}", change_record(txn, index), live=live
        )
    hub.mark(txn.position)
