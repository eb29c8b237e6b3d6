"""One node of a cluster: clients, a hub fed from the stream, and a bid for the lease.

Every node, the leader included, consumes the backplane's stream from the
start (what the stream still holds becomes its history) and applies each
entry's messages to its own hub with the ids they carry (tidings.feed), so
history, resume, gaps and filters are the same on every node. Each entry says
which id the consumer must be at before it: an entry that does not follow
(entries trimmed away while this node lagged, or a new epoch) cannot be
applied; the node stops with an error and is restarted by its supervisor
(systemd), and its clients reconnect elsewhere and resume.

Besides consuming, the node bids for the lease every `cluster_lease / 4`
seconds; the winner runs a `Leader` (tidings.cluster.leader) in this process
and renews the lease every `cluster_lease / 3` seconds. A renewal refused (the
lease was lost, e.g. while this process was paused) or a refused append makes
it step down.

Health: the node counts as cut off from the backplane after `cluster_timeout`
seconds without an answer: /healthz says 503 with the reason, and every client
is disconnected (RESP as redis does on shutdown, SSE with a comment, WebSocket
with 1001 and a reason) so that it reconnects, through the load balancer, to a
node that is not cut off, and resumes with its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from tidings.cluster.backplane import Backplane, BackplaneError, Entry, connect
from tidings.cluster.leader import Leader
from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.feed import FeedConsumer, FeedError, FrameReader, RemoteSource
from tidings.feed.codec import STATUS, decode_json
from tidings.source.changes import Position
from tidings.source.notify import Outbox
from tidings.source.url import MySQLURL

__all__ = ["READ_COUNT", "RECONNECT_REASON", "ClusterSource", "Node"]

log = logging.getLogger("tidings.cluster")

#: stream entries one read takes at most
READ_COUNT = 256

#: what clients are told when their node is cut off from the backplane
RECONNECT_REASON = "this tidings node lost its cluster backplane: reconnect and resume"


class ClusterSource(RemoteSource):
    """The leader's replica, from its last status in the stream. A status counts as
    fresh for `stale_after` seconds: long enough to ride out a leader change."""

    __slots__ = ("stale_after",)

    def __init__(self, stale_after: float) -> None:
        super().__init__()
        self.stale_after = stale_after

    def update(self, status: dict[str, Any]) -> None:
        source = status.get("source")
        if isinstance(source, dict) and "last_event_age" in source:
            source["last_event_time"] = time.monotonic() - float(source.pop("last_event_age"))
        super().update(status)

    @property
    def connected(self) -> bool:
        fresh = time.monotonic() - self.received < self.stale_after
        return self._seen and self.feed_alive and fresh

    @connected.setter
    def connected(self, value: bool) -> None:
        self._seen = value


def _stream_order(stream_id: bytes) -> tuple[int, int]:
    ms, _, seq = stream_id.partition(b"-")
    return int(ms), int(seq or 0)


class Node(Daemon):
    """See the module docstring."""

    def __init__(
        self, settings: Settings, *, settings_source: Callable[[], Settings] | None = None
    ) -> None:
        super().__init__(settings, settings_source=settings_source)
        self.name = settings.cluster_node or f"{socket.gethostname()}:{os.getpid()}"
        self.source = ClusterSource(stale_after=2 * settings.cluster_lease + 2)
        #: who waits for which client PUBLISH to come back through the stream
        self.refs = self.outbox = Outbox(settings.outbox_schema)
        self.consumer = FeedConsumer(self.hub, replied=self.refs.seen)
        self._frames = FrameReader()
        self.backplane: Backplane | None = None
        #: the leader this node runs while it holds the lease
        self.leader: Leader | None = None
        #: the backplane answers (cleared after cluster_timeout seconds without it)
        self.reachable = False
        #: seconds the last entry read was behind, when more were waiting (0: at the end)
        self.lag = 0.0
        self.entries = 0
        self._stream_ready = asyncio.Event()

    # -- the stream --------------------------------------------------------------------------
    async def _consume(self, backplane: Backplane) -> None:
        timeout = self.settings.cluster_timeout
        last = b"0-0"
        end: tuple[int, int] | None = None  # the stream's end when this node started
        down_since: float | None = None
        while True:
            try:
                if end is None:
                    end = _stream_order(await backplane.last_stream_id())
                entries = await backplane.read(last, READ_COUNT)
            except BackplaneError:
                raise
            except Exception as exc:  # redis-py's ConnectionError, TimeoutError, OSError
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.warning("node %s: the backplane does not answer: %s", self.name, exc)
                if self.reachable and now - down_since >= timeout:
                    self._cut_off(exc)
                await asyncio.sleep(min(0.5, timeout / 2))
                continue
            if down_since is not None:
                log.info("node %s: the backplane answers again", self.name)
                down_since = None
            self.reachable = self.source.feed_alive = True
            for entry in entries:
                self._entry(entry)
            if entries:
                last = entries[-1].stream_id
                behind = time.time() - entries[-1].millis / 1000
                self.lag = max(0.0, behind) if len(entries) == READ_COUNT else 0.0
            ready = self.consumer.seeded and _stream_order(last) >= end
            if ready and not self._stream_ready.is_set():
                self._stream_ready.set()

    def _entry(self, entry: Entry) -> None:
        hub = self.hub
        if not self.consumer.seeded:
            # this node's history starts here: ids below are unknown (a resume gets a gap)
            hub.epoch, hub.next_id = entry.epoch, entry.next_id
            self.consumer.seeded = True
        elif entry.epoch != hub.epoch:
            raise BackplaneError(
                f"the cluster stream began epoch {entry.epoch} (this node holds {hub.epoch}): "
                "restart the node; clients resuming get a gap"
            )
        elif entry.next_id != hub.next_id:
            raise BackplaneError(
                f"this node fell behind the cluster stream: it is at id {hub.next_id}, the "
                f"stream goes on at {entry.next_id} (raise --cluster-stream-length); restart "
                "the node, its clients resume elsewhere"
            )
        try:
            for message in self._frames.feed(entry.data):
                if self.consumer.message(message):
                    continue
                if message[0] != STATUS:
                    raise FeedError(f"unexpected message {chr(message[0])!r}")
                status = decode_json(message)
                if not isinstance(status, dict):
                    raise FeedError("bad status message")
                self.source.update(status)
        except (FeedError, ValueError) as exc:
            problem = f"stream entry {entry.stream_id!r} makes no sense: {exc}"
            raise BackplaneError(problem) from None
        self.entries += 1

    def _cut_off(self, exc: Exception) -> None:
        """No backplane for cluster_timeout: unhealthy, and the clients go elsewhere."""
        self.reachable = self.source.feed_alive = False
        log.error("node %s: no backplane for %gs (%s): unhealthy; disconnecting its clients "
                  "so that they resume on another node", self.name,
                  self.settings.cluster_timeout, exc)  # fmt: skip
        if self.leader is not None:
            self.leader.stop()  # its lease runs out: another node takes over
        if self.resp is not None:
            self.resp.close_clients()  # as redis on shutdown: clients reconnect
        if self.http is not None:
            self.http.close_clients(RECONNECT_REASON)
            if self.http.websocket is not None:
                self.http.websocket.close_clients(RECONNECT_REASON)

    # -- the lease ---------------------------------------------------------------------------
    async def _lead(self, backplane: Backplane) -> None:
        """Bid for the lease; while held, run a Leader and renew."""
        ttl = self.settings.cluster_lease
        while not self._stopping.is_set():
            try:
                token = await backplane.acquire(self.name, ttl) if self.reachable else None
            except Exception as exc:
                log.debug("node %s: cannot bid for the lease: %s", self.name, exc)
                token = None
            if token is None:
                await self._pause(ttl / 4)
                continue
            log.info("node %s leads: it reads the binlog now (fencing token %d)", self.name, token)
            await self._run_leader(backplane, token, ttl)
            await self._pause(ttl)  # let another node take it, if this one failed

    async def _run_leader(self, backplane: Backplane, token: int, ttl: float) -> None:
        def stepped_down(reason: str) -> None:
            log.warning("node %s steps down: %s", self.name, reason)

        leader = self.leader = Leader(self.settings, backplane, token, stepped_down)
        running = asyncio.ensure_future(leader.run())
        renewed = time.monotonic()
        try:
            while not running.done():
                await asyncio.wait([running], timeout=ttl / 3)
                if running.done():
                    break
                try:
                    if not await backplane.renew(self.name, token, ttl):
                        stepped_down("the lease was lost (expired, or another node holds it)")
                        leader.stop()
                        break
                    renewed = time.monotonic()
                except Exception as exc:
                    if time.monotonic() - renewed > ttl * 2 / 3:
                        stepped_down(f"cannot renew the lease: {exc}")
                        leader.stop()
                        break
            with contextlib.suppress(asyncio.CancelledError):
                await running  # a fatal source error
        except Exception as exc:
            log.error("node %s: the binlog reader failed: %s", self.name, exc)
        finally:
            leader.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(running), 30)
            self.leader = None
            with contextlib.suppress(Exception):
                if await backplane.release(self.name, token):
                    log.info("node %s released the lease", self.name)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- serving -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._make_services()
        if self.http is not None:
            self.http.source = self.source
            self.http.cluster = self.health
        self._serve_from_mysql(MySQLURL.parse(self.settings.mysql))

    def _origin(self) -> Position | None:
        return self.source.origin

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The cluster part of /healthz."""
        report: dict[str, Any] = {
            "node": self.name,
            "leader": self.leader is not None,
            "backplane": "ok" if self.reachable else "unreachable",
            "lag_seconds": round(self.lag, 3),
        }
        if not self.reachable:
            report["reason"] = "cut off from the cluster backplane"
            return False, report
        limit = self.settings.health_max_lag
        if self.lag > limit:
            behind = f"{self.lag:.1f}s behind the cluster stream (limit {limit:g}s)"
            report["reason"] = f"the node is {behind}"
            return False, report
        return True, report

    async def run(self) -> None:
        s = self.settings
        backplane = self.backplane = Backplane(
            connect(s.cluster, timeout=s.cluster_timeout + 1),
            s.cluster_name,
            maxlen=s.cluster_stream_length,
        )
        log.info("node %s: cluster %r on %s", self.name, s.cluster_name, _redacted(s.cluster))
        consuming = asyncio.ensure_future(self._consume(backplane))
        leading = asyncio.ensure_future(self._lead(backplane))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await self.start()
            caught_up = asyncio.ensure_future(self._stream_ready.wait())
            done, _ = await asyncio.wait(
                [caught_up, consuming, stopping], return_when=asyncio.FIRST_COMPLETED
            )
            caught_up.cancel()
            if self._stream_ready.is_set() and not self._stopping.is_set():
                await self.listen()
                log.info("node %s serving (caught up with the cluster stream at id %d)",
                         self.name, self.hub.next_id)  # fmt: skip
                done, _ = await asyncio.wait(
                    [consuming, stopping], return_when=asyncio.FIRST_COMPLETED
                )
            if consuming in done:
                consuming.result()  # why the stream could not be followed
        finally:
            self._stopping.set()
            stopping.cancel()
            if self.leader is not None:
                self.leader.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(leading, 40)
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consuming
            await self.close()
            await backplane.close()


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at else url
