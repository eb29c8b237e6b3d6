"""`tidings serve --workers N`: the reader in this process, N worker processes beside it.

The supervisor runs the reader (tidings.workers.reader) in its own event loop
and keeps N workers (tidings.workers.worker) running, each a fresh Python
process with its end of a unix socket pair and in a session of its own (a
terminal's Ctrl-C reaches the supervisor, which stops the workers in order):

- a worker that exits or is killed is started again, after 0.1 s doubling to
  10 s while it keeps dying within 10 s of starting (each logged with its exit
  status); a worker that cannot open its listeners (the port is taken) stops
  everything, as the single process would exit;
- SIGTERM/SIGINT: the workers get SIGTERM and drain their clients (killed
  after `STOP_TIMEOUT`), then the reader finishes its transaction and writes
  the final checkpoint; exit 0;
- SIGHUP: the settings are read anew and sent to every worker, which applies
  what can change live as the single process does (tidings.reload);
- a fatal reader error (replication refused, state directory problems) stops
  the workers and exits 1 with the reason, as the single process does.

A listener port of 0 is resolved once here and held (bound with SO_REUSEPORT,
never listening, so it takes no connection) so every worker listens on the
same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from tidings.config import ConfigError, Settings, auth_secret, parse_hostport
from tidings.feed.codec import CONFIG, RELOAD, frame_json
from tidings.logs import setup_logging
from tidings.reload import LIVE
from tidings.systemd import Notifier
from tidings.workers.link import WorkerLink
from tidings.workers.reader import Reader
from tidings.workers.worker import EXIT_CANNOT_LISTEN

__all__ = ["STOP_TIMEOUT", "Supervisor", "WorkerError", "supervise"]

log = logging.getLogger("tidings.workers")

#: seconds the workers get to drain their clients on SIGTERM before they are killed
STOP_TIMEOUT = 20.0
#: restart delay: first, cap; reset once a worker has run this long
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 0.1, 10.0, 10.0


#: the workers' environment: ours, less systemd's notify variables (only we talk to it)
WORKER_ENV = {
    name: value
    for name, value in os.environ.items()
    if name not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
}


class WorkerError(Exception):
    """A worker cannot serve at all (e.g. its port is taken): tidings stops."""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """See the module docstring."""

    def __init__(
        self, settings: Settings, settings_source: Callable[[], Settings] | None = None
    ) -> None:
        self.settings = settings
        #: builds the settings anew on SIGHUP (the same command line, the config file re-read)
        self.settings_source = settings_source
        #: what workers are started with (listener ports of 0 resolved); reloads update it
        self.worker_settings = settings
        self.reader = Reader(settings)
        self._stopping = asyncio.Event()
        #: running worker processes by number (1..N), and their links
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.links: dict[int, WorkerLink] = {}
        #: restarts so far, by worker number
        self.restarts: dict[int, int] = {}
        #: workers whose listeners opened (at start-up); then `ready` is called once
        self._opened: set[int] = set()
        self.ready: Callable[[], None] | None = None
        self._held: list[socket.socket] = []

    def stop(self) -> None:
        self._stopping.set()

    def reload(self) -> None:
        """SIGHUP: read the settings anew and send them to every worker, which applies what
        can change live as the single process does (tidings.reload) and logs the rest as
        needing a restart. Workers started later get the settings in force, so they match
        the others. The reader has no listeners: it takes the logging settings."""
        old = self.worker_settings
        try:
            new = self.settings_source() if self.settings_source is not None else self.settings
            # the listener addresses need a restart: keep the ports resolved at start-up
            if new.resp == self.settings.resp:
                new = dataclasses.replace(new, resp=old.resp)
            if new.http == self.settings.http:
                new = dataclasses.replace(new, http=old.http)
            live = {name: getattr(new, name) for name in LIVE}
            if bool(new.tls_cert) != bool(old.tls_cert):
                del live["tls_cert"], live["tls_key"]
            if (auth_secret(new) is None) != (auth_secret(old) is None):
                del live["auth_secret"], live["auth_secret_file"]
        except (ConfigError, ValueError) as exc:
            log.error("reload: %s; the running settings stay", exc)
            return
        if (new.log_level, new.log_format) != (old.log_level, old.log_format):
            setup_logging(new.log_level, new.log_format)
        self.worker_settings = dataclasses.replace(old, **live)
        message = frame_json(RELOAD, dataclasses.asdict(new))
        for link in self.links.values():
            if not link.transport.is_closing():
                link.transport.write(message)
        log.info("reload: the settings read anew went to %d workers", len(self.links))

    def _listening(self, index: int) -> None:
        if self.ready is not None and index not in self._opened:
            self._opened.add(index)
            if len(self._opened) == self.settings.workers:
                self.ready()

    async def run(self) -> None:
        self.worker_settings = self._resolve_ports(self.settings)
        reader_task = asyncio.ensure_future(self.reader.run())
        keepers = [
            asyncio.ensure_future(self._keep(k)) for k in range(1, self.settings.workers + 1)
        ]
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                [reader_task, stopping, *keepers], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._stopping.set()
            if self.processes:
                log.info("stopping: the workers drain their clients")
            await self._stop_workers()
            log.info("workers stopped; stopping the binlog reader")
            for keeper in keepers:
                keeper.cancel()
            self.reader.stop()
            try:
                await reader_task  # the final checkpoint; re-raises a fatal error
            finally:
                for sock in self._held:
                    sock.close()
        for keeper in keepers:
            if keeper.done() and not keeper.cancelled():
                exc = keeper.exception()
                if exc is not None:
                    raise exc

    def _resolve_ports(self, settings: Settings) -> Settings:
        """Listener ports of 0 become one port for all (held open here; see the docstring)."""
        changes: dict[str, str] = {}
        for name in ("resp", "http"):
            value = getattr(settings, name)
            if not value:
                continue
            host, port = parse_hostport(value)
            if port:
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, 0))
            self._held.append(sock)
            port = sock.getsockname()[1]
            changes[name] = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if "resp" in changes:
            settings = dataclasses.replace(settings, resp=changes["resp"])
        if "http" in changes:
            settings = dataclasses.replace(settings, http=changes["http"])
        return settings

    async def _keep(self, index: int) -> None:
        """Keep worker `index` running until the supervisor stops."""
        delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_worker(index, self.worker_settings)
            if self._stopping.is_set():
                return
            if code == EXIT_CANNOT_LISTEN:
                raise WorkerError(f"worker {index} cannot listen (see its log line above)")
            if time.monotonic() - started >= BACKOFF_RESET:
                delay = BACKOFF_FIRST
            self.restarts[index] = self.restarts.get(index, 0) + 1
            log.warning("worker %d %s; starting it again in %.1fs",
                        index, describe_exit(code), delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _run_worker(self, index: int, settings: Settings) -> int:
        """Start worker `index`, feed it, wait for it to exit; its exit status."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tidings.workers.worker",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=WORKER_ENV,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.processes[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)
        loop = asyncio.get_running_loop()
        feed = self.reader.feed
        _, link = await loop.create_unix_connection(
            lambda: WorkerLink(feed, index, self._listening), sock=ours
        )
        config = {"index": index, "settings": dataclasses.asdict(settings)}
        link.transport.write(frame_json(CONFIG, config))
        feed.attach(link)
        self.links[index] = link
        try:
            return await proc.wait()
        finally:
            del self.processes[index], self.links[index]
            link.transport.close()

    async def _stop_workers(self) -> None:
        """SIGTERM every worker, wait for them to drain, kill what is left."""
        procs = list(self.processes.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if not procs:
            return
        _, late = await asyncio.wait(
            [asyncio.ensure_future(proc.wait()) for proc in procs], timeout=STOP_TIMEOUT
        )
        if late:
            log.warning("%d workers did not stop within %gs: killing them", len(late), STOP_TIMEOUT)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.wait(late)


async def supervise(
    settings: Settings, settings_source: Callable[[], Settings] | None = None
) -> None:
    """Run the reader and the workers until SIGTERM/SIGINT; SIGHUP reloads (see
    `Supervisor.reload`). Under systemd (`Type=notify`) READY comes once every worker
    has opened its listeners."""
    supervisor = Supervisor(settings, settings_source)
    systemd = Notifier()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        systemd.stopping()
        supervisor.stop()

    def ready() -> None:
        s = supervisor.worker_settings
        listeners = [f"{name} {value}" for name, value in (("RESP", s.resp), ("HTTP", s.http))
                     if value]  # fmt: skip
        systemd.ready(f"serving with {s.workers} workers: " + ", ".join(listeners))

    supervisor.ready = ready
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload)
    log.info("serving with %d worker processes", settings.workers)
    try:
        await supervisor.run()
    finally:
        systemd.close()
