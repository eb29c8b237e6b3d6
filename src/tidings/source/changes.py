"""What the source hands to the daemon: committed transactions of row changes.

These types are the contract between the binlog side (`tidings.source`) and the
rest of the daemon. They carry plain Python values that are already valid JSON
material (int, str, None, bool, float, dict, list): the decoder formats DECIMAL,
dates and times as strings and binary as base64, so the hub only serialises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")

RowType = Literal["insert", "update", "delete"]


@dataclass(slots=True, frozen=True)
class Position:
    """A point in the binlog between two transactions: where to resume.

    `gtid` is the GTID state to resume after: for MariaDB the `domain-server-seq`
    list (comma separated, one per domain) as `@@gtid_binlog_pos` prints it; for
    MySQL an executed GTID set. `file`/`pos` is the classic coordinate and always
    set; resuming prefers `gtid` when it is present.
    """

    file: str
    pos: int
    gtid: str | None = None

    @classmethod
    def parse(cls, text: str) -> Position | None:
        """'end' (or '') -> None; 'FILE:POS' -> a file coordinate; anything else a GTID state.

        A MySQL GTID such as 'uuid:5' is told from FILE:POS by its UUID.
        """
        text = text.strip()
        if text in ("", "end"):
            return None
        file, sep, pos = text.rpartition(":")
        if sep and file and pos.isdigit() and not _UUID.match(file):
            return cls(file=file, pos=int(pos))
        return cls(file="", pos=4, gtid=text)

    def __str__(self) -> str:
        coord = f"{self.file}:{self.pos}"
        return f"{coord} gtid={self.gtid}" if self.gtid else coord


@dataclass(slots=True)
class RowChange:
    type: RowType
    database: str
    table: str
    #: the row after the change (insert/update) or the full deleted row (delete)
    data: dict[str, Any]
    #: updates only: previous values of the columns that changed
    old: dict[str, Any] | None = None


@dataclass(slots=True)
class Transaction:
    """One committed transaction, complete, in commit order."""

    changes: list[RowChange]
    #: commit time from the binlog event header, seconds since the epoch
    ts: int
    #: the transaction's own GTID (MariaDB `d-s-n`, MySQL `uuid:n`), if GTIDs are on
    gtid: str | None
    #: InnoDB XID of the commit, when the transaction ended with one
    xid: int | None
    #: where to resume so that this transaction is not seen again
    position: Position
    #: DDL statements carried by this transaction (ALTER/CREATE/...), verbatim
    ddl: list[tuple[str, str]] = field(default_factory=list)
