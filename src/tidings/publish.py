"""From committed transactions to hub events: the event JSON users receive."""

from __future__ import annotations

import asyncio
from typing import Any

from tidings.hub import Hub
from tidings.source.changes import Transaction


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


#: rows published before the loop gets a turn (to flush outboxes) within a big transaction
YIELD_EVERY = 256


async def publish_transaction(hub: Hub, txn: Transaction, *, live: bool = True) -> None:
    """Publish every row change of a committed transaction, in order, then mark its end.

    Between chunks of a large transaction the loop gets a turn, so outboxes drain
    to the kernel instead of piling up past their limit; the source is the only
    publisher of database channels, so the transaction stays contiguous for
    every subscriber. With `live=False` (re-reading old binlog at start-up to
    refill history) the events take their ids but reach no subscriber.
    `hub.mark()` comes after the last event: the hub (and the checkpoint) may
    only pair `txn.position` with the id that follows all of its events.
    """
    for index, change in enumerate(txn.changes):
        if index and not index % YIELD_EVERY:
            await asyncio.sleep(0)
        hub.publish_record(
            f"{change.database}.{change.table}", change_record(txn, index), live=live
        )
    hub.mark(txn.position)
