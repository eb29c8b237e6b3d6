"""Wires the binlog source to the hub and the hub to the listeners; signals and drain.

The whole daemon is one event loop. Each client connection is an asyncio
Protocol whose methods the loop calls when its socket is ready (the 2007
post's "structure with function pointers" behind epoll's user-data pointer);
the binlog connection is one more such descriptor. Nothing here scans
connections or waits on a client.

With `--state-dir` the daemon's ids survive restarts (docs/topics/delivery.md):
at start-up `tidings.state` decides the epoch, the first id and where to read
(resume at the checkpoint, or re-read from an older mark to refill history
with `live=False`); the pump hands each published transaction's end to the
checkpoint writer; clients are let in once the refill has caught up; on stop
the transaction in hand is finished and the final checkpoint written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time
from collections.abc import Callable
from ssl import SSLContext
from typing import Any

from tidings import memory, reload
from tidings.config import ConfigError, Settings, auth_secret, parse_hostport
from tidings.hub import Hub
from tidings.publish import publish_transaction
from tidings.source.changes import Position
from tidings.source.connection import MySQLConnection
from tidings.source.notify import Outbox, OutboxPublisher, OutboxPurger
from tidings.source.replica import Replica, ReplicaError, classify
from tidings.source.schema import SchemaLookup
from tidings.source.url import MySQLURL
from tidings.state import (
    CheckpointWriter,
    Mark,
    MarkIndex,
    ServerFacts,
    StartPlan,
    StateDir,
    StateError,
    plan_start,
    read_server_facts,
)
from tidings.state.reread import Rereader
from tidings.systemd import Notifier
from tidings.tls import ServerTls
from tidings.wire.access import Authority, Throttle
from tidings.wire.http_server import HttpService, HttpSettings
from tidings.wire.limits import Admission, Limits, somaxconn
from tidings.wire.origins import Origins
from tidings.wire.outbox import FLUSH_LOOP
from tidings.wire.resp_server import RespService, RespSettings
from tidings.wire.snapshot_stream import SnapshotService
from tidings.wire.ws_session import WsService, WsSettings

log = logging.getLogger("tidings.daemon")


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Daemon:
    def __init__(
        self,
        settings: Settings,
        hub: Hub | None = None,
        *,
        settings_source: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        if hub is None:
            hub = Hub(
                history_events=settings.history_events,
                history_bytes=settings.history_bytes,
                history_channel_events=settings.history_channel_events,
                history_channel_bytes=settings.history_channel_bytes,
            )
        self.hub = hub
        #: signs client tokens (read from auth_secret_file now: a bad one stops the start)
        self.auth_secret = auth_secret(settings)
        #: the listeners' shared token checker (with a secret)
        self.authority: Authority | None = None
        #: builds the settings anew for reload() (SIGHUP); None: only TLS is re-read
        self._settings_source = settings_source
        #: client connections the descriptor limit leaves room for (set by listen())
        self.room = 0
        self.replica: Replica | None = None
        self.resp: RespService | None = None
        self.resp_address: tuple[str, int] | None = None
        self.http: HttpService | None = None
        self.http_address: tuple[str, int] | None = None
        #: with --tls-cert: the certificate the listeners serve, reloaded by reload()
        self.tls: ServerTls | None = None
        #: with --state-dir: the directory, its checkpoint writer and mark index
        self.state: StateDir | None = None
        self.checkpoints: CheckpointWriter | None = None
        #: malloc_trim(0) now and then (tidings.memory; malloc_trim_interval)
        self._trimmer = memory.Trimmer(settings.malloc_trim_interval)
        self.marks: MarkIndex | None = None
        #: with --state-dir: serves resumes older than memory history from the binlog
        self.rereader: Rereader | None = None
        #: how this run started (with --state-dir)
        self.plan: StartPlan | None = None
        #: events with smaller ids are history refills at start-up, not delivered live
        self.live_from = 0
        #: the binlog end at start-up, when resuming a checkpoint: clients wait until it is read
        self.catch_up_to: Position | None = None
        #: set once the start-up re-reading (if any) has caught up with the checkpoint
        self.live = asyncio.Event()
        #: set once the client listeners are open (systemd's READY)
        self.listening = asyncio.Event()
        self._last_mark = 0
        self._stopping = asyncio.Event()
        self._schema: SchemaLookup | None = None
        #: the NOTIFY outbox the publish mapping recognises, and the purger of its rows
        self.outbox: Outbox | None = None
        self.purger: OutboxPurger | None = None
        self.publisher: OutboxPublisher | None = None
        self._purger_task: asyncio.Future[None] | None = None
        self._pump_task: asyncio.Future[None] | None = None
        # set while the pump is between transactions (not in the middle of publishing one)
        self._between = asyncio.Event()
        self._between.set()
        #: listen with SO_REUSEPORT: worker processes share the ports (tidings.workers)
        self.reuse_port = False
        #: connection limits shared by the RESP and HTTP listeners
        self.admission = Admission(
            Limits(
                max_clients=settings.max_clients,
                max_clients_per_ip=settings.max_clients_per_ip,
                idle_timeout=settings.idle_timeout,
                request_timeout=settings.request_timeout,
            )
        )

    def _make_services(self) -> None:
        """The client-facing services the settings ask for (listening comes later)."""
        s = self.settings
        if s.tls_for("resp") or s.tls_for("http"):
            # before anything else: a certificate that cannot serve stops the start at once
            self.tls = ServerTls(s.tls_cert, s.tls_key, min_version=s.tls_min_version)
            log.info("TLS certificate %s: %s", s.tls_cert, self.tls.info.describe())
            self.tls.warn_if_expired()
        if s.resp:
            self.resp = RespService(
                self.hub,
                RespSettings(
                    allow_publish=s.allow_publish,
                    max_bulk=s.max_bulk,
                    output_limit=s.output_limit,
                    auth_secret=self.auth_secret,
                    max_subscriptions=s.max_subscriptions,
                ),
                admission=self.admission,
            )
        if s.http:
            self.http = HttpService(
                self.hub,
                HttpSettings(
                    allow_publish=s.allow_publish,
                    output_limit=s.output_limit,
                    sse_heartbeat=s.sse_heartbeat,
                    health_max_lag=s.health_max_lag,
                    max_publish=s.max_bulk,
                    auth_secret=self.auth_secret,
                    admin_open_on_loopback=s.admin_open_on_loopback,
                    origins=Origins.parse(s.origins),
                    max_subscriptions=s.max_subscriptions,
                ),
                has_source=bool(s.mysql),
                resp=self.resp,
                admission=self.admission,
            )
            # /ws sessions: one service, so /metrics counts them and stop() closes them
            self.http.websocket = WsService(
                self.hub, WsSettings.from_settings(s, auth_secret=self.auth_secret)
            )
            if (tls := self.tls) is not None:  # on /metrics, whichever listeners use it
                self.http.tls_expiry = lambda: tls.info.not_after
        if self.auth_secret is not None:
            log.info("auth secret set: every subscription needs a token (tidings token)")
            # one Authority for every listener: a guesser's failures count across protocols
            self.authority = authority = Authority(
                self.auth_secret, throttle=Throttle(s.auth_max_failures)
            )
            if self.resp is not None:
                self.resp.auth = authority
            if self.http is not None:
                self.http.auth = authority
                if self.http.websocket is not None:
                    self.http.websocket.auth = authority

    def _serve_from_mysql(self, url: MySQLURL) -> None:
        """Client PUBLISH through the outbox table, snapshots from the database."""
        assert self.outbox is not None
        if (self.resp is not None or self.http is not None) and self.settings.allow_publish:
            # PUBLISH goes through the outbox table so its id comes from the binlog
            self.publisher = OutboxPublisher(url, self.outbox)
            if self.resp is not None:
                self.resp.publisher = self.publisher.publish
            if self.http is not None:
                self.http.publisher = self.publisher.publish
        if self.resp is not None:
            # TIDINGS.SNAPSHOT: each snapshot on its own connection (tidings.wire.snapshot_stream)
            self.resp.snapshots = SnapshotService.for_mysql(self.hub, url, origin=self._origin)

    async def start(self) -> None:
        """Decide the ids and where to read; the listeners open in `listen()`."""
        s = self.settings
        self._make_services()
        if not s.mysql:
            self._new_epoch_in_memory()
            if s.state_dir:
                log.warning("--state-dir is unused without --mysql: ids live in memory only")
            log.warning("no --mysql given: serving pub/sub only, no database events")
            self.live.set()
            return
        url = MySQLURL.parse(s.mysql)
        self.outbox = Outbox(s.outbox_schema)
        self.purger = OutboxPurger(url, self.outbox)
        self._serve_from_mysql(url)
        start = await self._plan(url)
        if self._stopping.is_set():  # stopped while waiting for the server
            return
        if self.hub.next_id >= self.live_from:
            self.live.set()
        self._schema = SchemaLookup(url)
        if self.marks is not None and s.reread_concurrency:
            self.rereader = Rereader.for_mysql(
                self.hub,
                self.marks,
                url,
                server_id=s.server_id,
                table_info=self._schema.table_info,
                concurrency=s.reread_concurrency,
                ddl=s.ddl_events,
                outbox_schema=s.outbox_schema,
                heartbeat=s.heartbeat,
                names_from_binlog=not s.names_from_schema,
            )
            self.hub.reread = self.rereader
        self.replica = Replica(
            url,
            server_id=s.server_id,
            start=start,
            table_info=self._schema.table_info,
            heartbeat=s.heartbeat,
            names_from_binlog=not s.names_from_schema,
        )
        if self.http is not None:
            self.http.source = self.replica  # for /healthz and /metrics
        log.info("reading the binlog of %s as replica server_id=%d", url.redacted(), s.server_id)

    async def listen(self) -> None:
        """Open the client listeners (once the ids are settled: see `run`); start purging."""
        s = self.settings
        self._trimmer.start()
        if self.purger is not None and self._purger_task is None:
            self._purger_task = asyncio.ensure_future(self.purger.run())
        if self.resp is None and self.http is None:
            self.listening.set()
            return
        capacity = raise_fd_limit()
        cap = somaxconn()
        if cap is not None and cap < s.backlog:
            log.info("listen backlog %d is capped by the kernel at net.core.somaxconn = %d",
                     s.backlog, cap)  # fmt: skip
        tls = self.tls
        if self.resp is not None:
            context = tls.context() if tls and s.tls_for("resp") else None
            self.resp_address = await self._listen(self.resp, s.resp, context)
            log.info("RESP (Redis pub/sub protocol%s) on %s:%d", ", TLS" if context else "",
                     *self.resp_address)  # fmt: skip
        if self.http is not None:
            context = tls.context(alpn=["http/1.1"]) if tls and s.tls_for("http") else None
            self.http_address = await self._listen(self.http, s.http, context)
            log.info("HTTP (SSE, WebSocket, API) on %s://%s:%d/", "https" if context else "http",
                     *self.http_address)  # fmt: skip
            if self.http.auth is not None:
                log.info(
                    "admin routes (/channels, /metrics, POST /publish) %s",
                    "open: the listener is loopback-only"
                    if self.http.admin_open
                    else "need an admin token",
                )
        self.room = room = capacity - 50  # the daemon's own: MySQL, state files, listeners
        if not s.max_clients:
            self.admission.max_clients = room
        elif s.max_clients > room:
            log.warning("max_clients %d is above what the descriptor limit allows (%d)",
                        s.max_clients, room)  # fmt: skip
        log.info(
            "descriptor limit %d: room for about %d client connections; max_clients %d",
            capacity, room, self.admission.max_clients,
        )  # fmt: skip
        log.info("flush loop: %s", FLUSH_LOOP)
        self.listening.set()

    async def _listen(
        self, service: RespService | HttpService, address: str, context: SSLContext | None
    ) -> tuple[str, int]:
        """Open one listener with the settings every listener shares; its bound address."""
        s = self.settings
        host, port = parse_hostport(address)
        server = await service.start(
            host,
            port,
            backlog=s.backlog,
            ssl=context,
            ssl_handshake_timeout=s.tls_handshake_timeout,
            reuse_port=self.reuse_port,
        )
        bound: tuple[str, int] = server.sockets[0].getsockname()[:2]
        return bound

    def event_options(self) -> dict[str, Any]:
        """The settings that decide which events the binlog gives (kept in the checkpoint)."""
        return {
            "ddl_events": self.settings.ddl_events,
            "outbox": f"{self.settings.outbox_schema}.outbox",
        }

    async def _plan(self, url: MySQLURL) -> Position | None:
        """Settle the epoch and the first id; where to read from (None: the binlog end).
        The cluster's leader plans from the backplane (tidings.cluster.leader)."""
        if self.settings.state_dir:
            return await self._open_state(url)  # None only when stopped while waiting
        self._new_epoch_in_memory()
        return Position.parse(self.settings.start)

    def _new_epoch_in_memory(self) -> None:
        """No state: every start is a new epoch, ids from the clock (see delivery.md)."""
        self.hub.epoch = self.hub.next_id = time.time_ns() // 1000

    async def _open_state(self, url: MySQLURL) -> Position | None:
        """Load the checkpoint, check it against the server, decide where to read from."""
        s = self.settings
        state = self.state = StateDir(s.state_dir)
        state.open()
        checkpoint = state.checkpoints.load()
        facts = await self._server_facts(url)
        if facts is None:
            return None
        index = state.marks(checkpoint.epoch if checkpoint else 0)
        marks = index.load() if checkpoint else []
        plan = self.plan = plan_start(
            checkpoint,
            facts,
            marks,
            state_dir=state.path,
            new_epoch=s.new_epoch,
            start=Position.parse(s.start),
            history=s.history_events,
            now_us=time.time_ns() // 1000,
            events=self.event_options(),
        )
        writer = self.checkpoints = CheckpointWriter(
            state.checkpoints,
            epoch=plan.epoch,
            server=facts.identity,
            interval=s.checkpoint_interval,
            last_written=None if plan.new_epoch else checkpoint,
            events=self.event_options(),
        )
        if self.http is not None:
            self.http.checkpoints = writer  # /metrics, /stats and `tidings status` show it
        if plan.new_epoch:
            if checkpoint is not None:
                log.warning("starting a new epoch: ids of epoch %d lose their meaning, "
                            "resuming clients get a gap", checkpoint.epoch)  # fmt: skip
            index = state.marks(plan.epoch)
            index.replace([Mark(plan.epoch, plan.read_from)] if plan.read_from.file else [])
            # on disk before any event takes an id: a crash now must not start yet another
            # epoch whose ids would repeat nothing of this one
            writer.advance(plan.epoch, plan.read_from)
            await writer.write_now()
        elif facts.files is not None:
            dropped = index.prune(facts.files)
            if dropped:
                log.info("dropped %d marks in purged binlog files", dropped)
        self.marks = index
        self._last_mark = index.marks[-1].id if index.marks else plan.first_id
        self.hub.epoch = plan.epoch
        self.hub.next_id = plan.first_id
        self.live_from = plan.live_from
        if not plan.new_epoch:
            # clients may hold ids past the checkpoint (delivered before a crash): let them in
            # once the stream has been re-derived up to where the server was at start-up
            self.catch_up_to = facts.end
        log.info("%s", plan.summary)
        return plan.read_from

    async def _server_facts(self, url: MySQLURL) -> ServerFacts | None:
        """Who the server is and which binlogs it has; waits for it to come up."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                conn = await MySQLConnection.connect(url, timeout=10.0)
                try:
                    return await read_server_facts(conn)
                finally:
                    conn.close()
            except Exception as exc:
                message = classify(exc, url, self.settings.server_id, "start-up")
                if message is not None:
                    raise ReplicaError(message) from exc
                log.warning("cannot read the state of %s: %s; retrying", url.redacted(), exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, 10.0)
        return None

    async def run(self) -> None:
        """Serve until stop() or a fatal source error."""
        tasks: list[asyncio.Future[Any]] = []
        try:
            await self.start()
            if self.live.is_set():
                await self.listen()
            tasks.append(asyncio.ensure_future(self._stopping.wait()))
            if self.replica is not None:
                self._pump_task = asyncio.ensure_future(self._pump(self.replica))
                tasks.append(self._pump_task)
            if self.checkpoints is not None:
                self.checkpoints.start()
            if not self.live.is_set():
                # Refilling history at start-up: clients are let in once it is done, so a
                # resume never sees the stream behind ids it already had (they retry a
                # refused connection as they do while the daemon is down)
                tasks.append(asyncio.ensure_future(self._caught_up()))
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                tasks.pop().cancel()
                for task in done:
                    task.result()  # a fatal source error
                if not self.live.is_set():
                    return  # stopped
                await self.listen()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise a fatal source error
        finally:
            if tasks:
                tasks[0].cancel()
            await self.close()

    async def _pump(self, replica: Replica) -> None:
        hub = self.hub
        writer = self.checkpoints
        index = self.marks
        mark_every = self.settings.mark_every
        between = self._between
        outbox, ddl = self.outbox, self.settings.ddl_events
        async for txn in replica.transactions():
            if self._stopping.is_set():
                break  # the final checkpoint is taken at the last whole transaction
            between.clear()
            try:
                if hub.next_id < self.live_from:
                    await publish_transaction(hub, txn, live=False, outbox=outbox, ddl=ddl)
                    self._check_refill(txn.position)
                    continue  # checkpoint and marks of this stretch are on disk already
                await publish_transaction(hub, txn, outbox=outbox, ddl=ddl)
                # every event of txn has its id now: the pair may be recorded
                if writer is not None:
                    writer.advance(hub.next_id, txn.position)
                if index is not None and hub.next_id - self._last_mark >= mark_every:
                    self._last_mark = hub.next_id
                    try:
                        mark = Mark(hub.next_id, txn.position)
                        index.append(mark)
                    except OSError as exc:  # a full disk costs warm-up reach, not delivery
                        log.warning("cannot add to the mark index %s: %s", index.path, exc)
                    else:
                        self._indexed(mark)
            finally:
                between.set()

    def _indexed(self, mark: Mark) -> None:
        """A mark was added to the index (the workers' reader passes it on)."""

    async def _caught_up(self) -> None:
        """Wait for the refill, then for the stream to reach the start-up end of the binlog.

        A checkpoint can be older than ids clients hold (they were delivered just before a
        crash); a resume with such an id must find them re-derived, not "ahead of the
        stream". The end is reached when a transaction at or past it is published, or when
        the source, connected, has nothing to send for two heartbeats (the end was not a
        transaction boundary, e.g. a trailing binlog checkpoint event).
        """
        await self.live.wait()
        end = self.catch_up_to
        replica = self.replica
        if end is None or replica is None:
            return
        quiet = 2 * self.settings.heartbeat
        while True:
            seen = replica.transactions_total
            try:
                await asyncio.wait_for(self.hub.wait_position(end), quiet)
                break
            except TimeoutError:
                if replica.connected and replica.transactions_total == seen:
                    break  # connected and nothing more to read: this is the end
            except ValueError:  # positions without a common coordinate: cannot tell
                break
        log.info("caught up with the binlog end seen at start-up (%s)", end)

    def _origin(self) -> Position | None:
        """Where the binlog stream began, while no transaction has been read from it (so
        `hub.next_id` is the id there): lets a snapshot pair with a daemon that is idle."""
        replica = self.replica
        if replica is None or not replica.connected or replica.transactions_total:
            return None
        return replica.position

    def _check_refill(self, position: Position) -> None:
        """After a refill transaction: live from the checkpoint on; ids must line up with it."""
        next_id = self.hub.next_id
        if next_id < self.live_from:
            return
        if next_id > self.live_from:
            raise StateError(
                f"re-reading the binlog at start-up gave ids that do not line up with the "
                f"checkpoint in {self.settings.state_dir}: id {self.live_from} fell inside the "
                f"transaction ending at {position}. The binlog, or the events tidings makes of "
                "it (a new version?), changed since the checkpoint was written, so ids no "
                "longer mean what they did. Restart with --new-epoch (resuming clients get a "
                "gap and reload their state)"
            )
        log.info("history refilled up to id %d; live from here", next_id - 1)
        self.live.set()

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        """Re-read what can change without a restart (SIGHUP): the settings that can
        (tidings.reload) and the TLS certificate and key.

        Clients stay connected; a problem is logged and the running setup kept.
        """
        if self._settings_source is not None:
            try:
                new = self._settings_source()
                self.settings = reload.apply(
                    self.settings,
                    new,
                    admission=self.admission,
                    authority=self.authority,
                    services=(self.resp, self.http, self.http.websocket if self.http else None),
                    room=self.room,
                )
            except (ConfigError, ValueError) as exc:
                log.error("reload: %s; the running settings stay", exc)
        if self.tls is not None:
            if self.settings.tls_cert:  # the paths may have changed too (not TLS on or off)
                self.tls.cert_file, self.tls.key_file = (
                    self.settings.tls_cert,
                    self.settings.tls_key,
                )
            self.tls.reload()

    async def close(self) -> None:
        """Stop reading the binlog, write the last checkpoint, close every client.

        The pump finishes the transaction it is publishing (the replica's stream
        ends once closed), so the final checkpoint is the last transaction's end.
        New connections are refused from the start; connected clients get what was
        published, then a reason (see SHUTDOWN_REASON), within a deadline.
        """
        self._trimmer.stop()
        for service in (self.resp, self.http):
            if service is not None:
                service.stop_listening()
        if self.publisher is not None:
            await self.publisher.close()  # pending PUBLISHes get an error reply
        if self.purger is not None:
            await self.purger.close()  # first: its fences need the pump
        purging, self._purger_task = self._purger_task, None
        if purging is not None:
            purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await purging
                except Exception:
                    log.exception("the outbox purger failed while stopping")
        if self.rereader is not None:
            self.hub.reread = None
            await self.rereader.close()
        if self.replica is not None:
            await self.replica.close()
        pump, self._pump_task = self._pump_task, None
        if pump is not None and not pump.done():
            # let the transaction being published complete, then stop waiting for the
            # next one (cancelling there drops nothing: no event of it has an id yet)
            try:
                await asyncio.wait_for(self._between.wait(), 10.0)
            except TimeoutError:
                log.warning("the last transaction did not finish publishing within 10s")
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await pump
                except Exception:
                    log.exception("the binlog pump failed while stopping")
        if self.checkpoints is not None:
            writer, self.checkpoints = self.checkpoints, None
            if await writer.close() and writer.last_written is not None:
                cp = writer.last_written
                log.info("checkpoint: epoch %d, next id %d at %s", cp.epoch, cp.next_id,
                         cp.position)  # fmt: skip
        if self.marks is not None:
            self.marks.close()
        if self.state is not None:
            self.state.close()
        if self._schema is not None:
            await self._schema.close()
        if self.http is not None:
            await self.http.close(reason=SHUTDOWN_REASON)
        if self.resp is not None:
            await self.resp.close()  # no reason on RESP: see RespService.close_clients
            if self.resp.snapshots is not None:
                await self.resp.snapshots.close()


#: what clients are told when the daemon stops (SSE comment, WebSocket close 1001; RESP
#: clients get a closed connection, as from redis, which they reconnect after)
SHUTDOWN_REASON = "tidings is shutting down: reconnect and resume from your last event id"


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve(settings: Settings, settings_source: Callable[[], Settings] | None = None) -> None:
    """Run a daemon until SIGTERM/SIGINT; SIGHUP reloads (`settings_source` builds the
    settings anew: the same command line and environment, the config file re-read).
    With `workers` > 1 the supervisor runs instead (tidings.workers); with `cluster`, a
    cluster node (tidings.cluster)."""
    if settings.workers > 1:
        from tidings.workers.supervisor import supervise

        await supervise(settings, settings_source)
        return
    if settings.cluster:
        from tidings.cluster import Node

        daemon: Daemon = Node(settings, settings_source=settings_source)
    else:
        daemon = Daemon(settings, settings_source=settings_source)
    systemd = Notifier()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        systemd.stopping()
        daemon.stop()

    def ready(_: object) -> None:
        listeners = [
            f"{name} {address[0]}:{address[1]}"
            for name, address in (("RESP", daemon.resp_address), ("HTTP", daemon.http_address))
            if address is not None
        ]
        systemd.ready("serving " + ", ".join(listeners))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    listening = asyncio.ensure_future(daemon.listening.wait())
    listening.add_done_callback(ready)
    try:
        await daemon.run()
    finally:
        listening.cancel()
        systemd.close()
