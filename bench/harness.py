"""Servers and measurements shared by the scale benchmarks (fanout, latency, idle).

Each server runs as its own process on its own loopback port and is stopped by
the benchmark that started it: a tidings daemon (`tidings serve`), a private
redis-server and a private PostgreSQL cluster. CPU seconds and RSS are read
from /proc so a table can show who was the bottleneck.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
TIDINGS = VENV_BIN / "tidings"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (load generators hold thousands of sockets)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- /proc --------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process `pid`, all its threads, to the nanosecond.

    /proc/<pid>/task/*/schedstat rather than /proc/<pid>/stat: the latter counts in
    10 ms ticks, which rounds a server's many short-lived bursts (one PostgreSQL backend
    per listener, each a few ms) to nothing.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between listdir and open
    if total == 0:  # no schedstat on this kernel: fall back to ticks
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # after the ")": state is field 3, so utime (14) and stime (15) are at 11 and 12
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total / 1e9


def run_delay(pid: int) -> float:
    """Seconds the threads of `pid` were runnable but waited for a CPU (schedstat field 2):
    on a shared machine, what separates "had no work" from "had no core"."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc; for servers that fork a process per client)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and each of its children, by pid (compare two snapshots)."""
    result = {}
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            result[p] = cpu_seconds(p)
    return result


def tree_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(p, 0.0) for p, t in after.items())


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def machine() -> str:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({model}), {mem / 2**30:.0f} GiB, Linux {platform.release()}, "
        f"CPython {platform.python_version()}, {datetime.date.today().isoformat()}; {revision()}"
    )


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def machine_stalls(seconds: float = 5.0) -> str:
    """How long this machine leaves a runnable process off the CPU: a clock-reading loop
    while one other process keeps the second core busy; the largest gaps it saw.

    On a shared virtual machine these are tens of milliseconds, which bounds what any p99
    measured here can show; the latency table prints it beside its figures.
    """
    import multiprocessing

    other = multiprocessing.get_context("fork").Process(target=_spin, args=(seconds + 0.5,))
    other.start()
    gaps = []
    end = time.monotonic() + seconds
    last = time.monotonic()
    while last < end:
        now = time.monotonic()
        if now - last > 0.001:
            gaps.append(now - last)
        last = now
    other.join()
    gaps.sort()
    if not gaps:
        return "no gap over 1 ms"
    worst = ", ".join(f"{g * 1e3:.0f}" for g in gaps[-3:])
    return f"{len(gaps)} gaps over 1 ms in {seconds:g} s of spinning, largest {worst} ms"


def revision() -> str:
    """The commit the daemon ran from, and whether src/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"tidings at {head}" + (" + uncommitted changes in src/" if dirty else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(r[i], (int, float)) for r in rows) if rows else False
        for i in range(len(headers))
    ]
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    out += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(out)


def percentile(sorted_values: Sequence[int] | Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def resp_command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def wait_resp(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once a RESP server on `port` answers PING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(resp_command(b"PING"))
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no RESP server on port {port} after {timeout}s")


class Server:
    """A server process we started; `pid` is what /proc is read for."""

    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Tidings(Server):
    """`tidings serve` on its own port: pub/sub only, or reading a MariaDB's binlog."""

    name = "tidings"

    def __init__(
        self,
        logdir: Path,
        *,
        mysql: str | None = None,
        server_id: int = 4242,
        output_limit: int = 16 << 20,
        workers: int = 1,
        http_port: int | None = None,
        http: bool = False,
        extra: Sequence[str] = (),
        pure_python: bool = False,
    ) -> None:
        super().__init__()
        #: the HTTP listener (WebSocket, /metrics): `http_port`, or a free one with `http`
        self.http_port = http_port or (free_port() if http else 0)
        listen = f"127.0.0.1:{self.http_port}" if self.http_port else ""
        cmd = [str(TIDINGS), "serve", "--resp", f"127.0.0.1:{self.port}", "--http", listen]
        cmd += ["--allow-publish"]
        cmd += ["--output-limit", str(output_limit)]
        if mysql:
            cmd += ["--mysql", mysql, "--server-id", str(server_id)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        cmd += extra
        self.command = cmd
        self.workers = workers
        self.logfile = logdir / f"tidings-{self.port}.log"
        #: TIDINGS_PURE_PYTHON=1: the pure-Python flush loop instead of the compiled one
        env = {**os.environ, "TIDINGS_PURE_PYTHON": "1" if pure_python else ""}
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_resp(self.port, proc=self.proc)
        if workers > 1:  # every worker listening, or the first would take every client
            deadline = time.monotonic() + 30
            while self.log_text().count(") serving") < workers:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"not all workers started:\n{self.log_text()[-2000:]}")
                time.sleep(0.05)

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace")

    def flush_loop(self) -> str:
        """Which flush loop the daemon runs, from its start-up log line."""
        for line in self.log_text().splitlines():
            if "flush loop: " in line:
                return line.split("flush loop: ", 1)[1]
        return "?"

    def metric(self, name: str) -> float:
        """The sum of a /metrics family's samples (all labels), e.g.
        `tidings_slow_consumers_cut_total`; needs the HTTP listener."""
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def cpu(self) -> float:
        """The daemon's CPU: with workers, the supervisor's (the binlog reader) and theirs."""
        return sum(tree_cpu(self.pid).values())

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in [self.pid, *children(self.pid)])

    def waited(self) -> float:
        """Seconds its processes were runnable but had no CPU (see `run_delay`)."""
        return sum(run_delay(pid) for pid in [self.pid, *children(self.pid)])

    def metrics(self) -> dict[str, float]:
        """/metrics (needs the HTTP listener) as {'name{labels}': value}."""
        import urllib.request

        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


class Redis(Server):
    """A private redis-server: no persistence, same output limit for pub/sub clients as tidings."""

    name = "redis-server"

    def __init__(self, workdir: Path, *, output_limit: int = 16 << 20) -> None:
        super().__init__()
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = workdir / f"redis-{self.port}.log"
        self.command = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(self.logfile),
            "--maxclients",
            "20000",  # redis lowers it to what RLIMIT_NOFILE allows, and logs so
            "--tcp-backlog",
            "511",
            "--client-output-buffer-limit",
            f"pubsub {output_limit} 0 0",
        ]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        wait_resp(self.port, proc=self.proc)

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace")

    def version(self) -> str:
        out = subprocess.run(
            [self.command[0], "--version"], capture_output=True, text=True, check=False
        ).stdout
        return out.split()[2].removeprefix("v=") if out else "?"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise FileNotFoundError("PostgreSQL not found under /usr/lib/postgresql (apt install)")
    return found[-1].parent


class Postgres(Server):
    """A private PostgreSQL cluster (initdb into `base`), trust auth on 127.0.0.1:port.

    PostgreSQL refuses to run as root, so when we are root the cluster belongs to the
    `postgres` system user. Commits do not wait for the disk (synchronous_commit=off,
    fsync=off), like the private MariaDB (innodb_flush_log_at_trx_commit=2, sync_binlog=0).
    """

    name = "postgres"

    def __init__(self, *, max_connections: int = 1100) -> None:
        super().__init__()
        self.bin = _pg_bin()
        # a directory of its own: the postgres user cannot enter a root-only parent
        self.base = base = Path(tempfile.mkdtemp(prefix="tidings-bench-pg-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        data = base / "data"
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        )
        # the load generator connects from several 127.0.0.x source addresses
        with open(data / "pg_hba.conf", "a") as f:
            f.write("host all all 127.0.0.0/8 trust\n")
        opts = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base}"
            f" -c max_connections={max_connections} -c shared_buffers=128MB -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "pg.log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        with open(data / "postmaster.pid") as f:
            self._pid = int(f.readline())
        self.data = data

    def _run(self, cmd: list[str]) -> None:
        result = subprocess.run(cmd, capture_output=True, user=self.user, check=False, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {result.stderr.decode(errors='replace')[-2000:]}")

    @property
    def pid(self) -> int:
        return self._pid

    def cpu(self) -> float:
        # one backend process per client: the postmaster's whole family counts
        return sum(tree_cpu(self._pid).values())

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.split()[2] if out.stdout else "?"

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each named process used inside the block (filled in on exit)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result: dict[str, float] = {}
    yield result
    for name, pid in pids.items():
        result[name] = cpu_seconds(pid) - before[name]
