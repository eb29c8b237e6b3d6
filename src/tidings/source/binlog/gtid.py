"""GTID state as `Position.gtid` carries it: MariaDB's per-domain list, MySQL's GTID set."""

from __future__ import annotations

from tidings.source.binlog.errors import BinlogError


class MariaDBGtidState:
    """`@@gtid_binlog_pos` style: the last GTID of each replication domain."""

    __slots__ = ("domains",)

    def __init__(self, text: str | None = None) -> None:
        self.domains: dict[int, tuple[int, int]] = {}  # domain -> (server_id, seq)
        for part in (text or "").replace(" ", "").split(","):
            if not part:
                continue
            try:
                domain, server, seq = (int(x) for x in part.split("-"))
            except ValueError:
                raise BinlogError(f"bad MariaDB GTID {part!r}") from None
            self.domains[domain] = (server, seq)

    def update(self, domain: int, server_id: int, seq: int) -> None:
        self.domains[domain] = (server_id, seq)

    def merge_missing(self, domain: int, server_id: int, seq: int) -> None:
        """Take a domain's state from a GTID_LIST unless the stream already gave it."""
        self.domains.setdefault(domain, (server_id, seq))

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))


class MySQLGtidSet:
    """An executed GTID set: uuid -> sorted, disjoint, inclusive intervals."""

    __slots__ = ("sets",)

    def __init__(self, text: str | None = None) -> None:
        self.sets: dict[str, list[list[int]]] = {}
        for part in (text or "").replace("\n", "").replace(" ", "").split(","):
            if not part:
                continue
            sid, *ranges = part.split(":")
            for rng in ranges:
                try:
                    lo, _, hi = rng.partition("-")
                    self.add_range(sid.lower(), int(lo), int(hi or lo))
                except ValueError:
                    raise BinlogError(f"bad MySQL GTID set {part!r}") from None

    def add(self, sid: str, gno: int) -> None:
        ivs = self.sets.get(sid)
        if ivs and ivs[-1][1] + 1 == gno:  # the usual case: the next number
            ivs[-1][1] = gno
            return
        self.add_range(sid, gno, gno)

    def add_range(self, sid: str, lo: int, hi: int) -> None:
        if hi < lo:
            return
        ivs = self.sets.setdefault(sid, [])
        ivs.append([lo, hi])
        ivs.sort()
        merged = [ivs[0]]
        for a, b in ivs[1:]:
            if a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.sets[sid] = merged

    def __str__(self) -> str:
        parts = []
        for sid, ivs in sorted(self.sets.items()):
            spans = ":".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ivs)
            parts.append(f"{sid}:{spans}")
        return ",".join(parts)
