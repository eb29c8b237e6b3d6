"""`tidings status`: what a running daemon is doing, from its HTTP listener.

Reads `GET /healthz` (the verdict) and `GET /stats` (the figures the dashboard
shows) and prints them as a few lines, or as JSON. Exit status: 0 healthy, 1
unhealthy (the reason is printed), 2 not reachable or refused.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

__all__ = ["StatusError", "fetch", "render"]


class StatusError(Exception):
    """The daemon could not be asked (down, wrong port, refused token)."""


@dataclass(slots=True)
class Answer:
    status: int
    body: Any


def _get(host: str, port: int, path: str, token: str | None, tls: ssl.SSLContext | None) -> Answer:
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise StatusError(f"cannot reach tidings at {host}:{port}: {exc}") from exc
    finally:
        conn.close()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise StatusError(f"{host}:{port}{path} did not answer JSON: is it tidings?") from None
    return Answer(response.status, body)


def fetch(
    host: str, port: int, *, token: str | None = None, tls: ssl.SSLContext | None = None
) -> tuple[Answer, dict[str, Any]]:
    """The daemon's health answer and its /stats."""
    health = _get(host, port, "/healthz", token, tls)
    stats = _get(host, port, "/stats", token, tls)
    if stats.status != 200:
        reason = stats.body.get("error") if isinstance(stats.body, dict) else stats.body
        raise StatusError(f"GET /stats answered {stats.status}: {reason}")
    return health, stats.body


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours)
    parts += [f"{minutes}m"] * bool(minutes) + [f"{secs}s"]
    return " ".join(parts[:2])


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(where: str, health: Answer, stats: dict[str, Any], out: TextIO) -> None:
    verdict = "healthy" if health.status == 200 else "UNHEALTHY"
    reason = health.body.get("reason") if isinstance(health.body, dict) else None
    line = f"tidings at {where}: {verdict}, up {_duration(stats['uptime_seconds'])}"
    print(line + (f" ({reason})" if reason and health.status != 200 else ""), file=out)
    binlog = stats.get("binlog")
    if binlog is None:
        print("binlog        none (pub/sub only)", file=out)
    else:
        state = "connected" if binlog["connected"] else "DISCONNECTED"
        at = f"{binlog['file']}:{binlog['pos']}" if binlog["file"] else "?"
        gtid = f" (GTID {binlog['gtid']})" if binlog["gtid"] else ""
        lag = binlog["lag_seconds"]
        lag_text = "?" if lag is None else f"{lag:g} s"
        print(f"binlog        {state}, at {at}{gtid}, lag {lag_text}, "
              f"{binlog['transactions']:,} transactions, {binlog['reconnects']} reconnects",
              file=out)  # fmt: skip
        if binlog.get("last_error") and not binlog["connected"]:
            print(f"              last error: {binlog['last_error']}", file=out)
    conns = ", ".join(f"{name} {n:,}" for name, n in stats["connections"].items())
    print(f"connections   {conns}", file=out)
    print(f"subscriptions {stats['subscriptions']:,} on {stats['channels']:,} channels, "
          f"{stats['patterns']:,} patterns", file=out)  # fmt: skip
    out_bytes = sum(stats["bytes_out"].values())
    cut = sum(stats["slow_consumers_cut"].values())
    print(f"events        {stats['events']:,} published (last id {stats['last_id']}), "
          f"{stats['deliveries']:,} delivered, {_bytes(out_bytes)} out, "
          f"{cut:,} slow consumers cut", file=out)  # fmt: skip
    busiest = ", ".join(
        f"{c['channel']} ({c['events']:,} events, {c['subscribers']:,} subscribers)"
        for c in stats["busiest"][:5]
    )
    print(f"busiest       {busiest or '-'}", file=out)
    checkpoint = stats.get("checkpoint")
    if checkpoint:
        print(f"checkpoint    {_checkpoint(checkpoint)}", file=out)


def _checkpoint(cp: dict[str, Any]) -> str:
    age = cp["age_seconds"]
    on_disk = "none on disk yet" if age is None else f"the one on disk is {_duration(age)} old"
    if cp["failing"]:
        return (
            f"FAILING for {_duration(cp['failing_seconds'] or 0)}: {cp['last_error']}; "
            f"{cp['failures']:,} failed attempts, retried; {on_disk} (a restart replays "
            "from it). Delivery goes on"
        )
    failures = f", {cp['failures']:,} failed attempts before" if cp["failures"] else ""
    return f"written {cp['written']:,} times{failures}; {on_disk}"
