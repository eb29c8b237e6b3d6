"""A private, throwaway MariaDB: own datadir, own port, binlog on in ROW format.

Used by `tidings demo`, the test suite and the benchmarks. It never touches a
system MariaDB: everything lives under one directory, and `stop()` (or `kill()`
for fault tests) ends the server it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/libexec")


def _which(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (str(Path(d) / name) for d in _SEARCH if (Path(d) / name).is_file()), None
        )
        if found:
            return found
    raise FileNotFoundError(
        f"none of {', '.join(names)} found: install MariaDB (apt-get install mariadb-server)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrivateMariaDB:
    """A MariaDB server under `base` listening on 127.0.0.1:`port`."""

    base: Path
    port: int = 0
    server_id: int = 1
    binlog_row_metadata: str = "FULL"
    log_bin: bool = True
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        if not self.port:
            self.port = free_port()

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def tmpdir(self) -> Path:
        return self.base / "tmp"

    @property
    def socket_path(self) -> Path:
        return self.base / "mysqld.sock"

    @property
    def log_path(self) -> Path:
        return self.base / "mysqld.err"

    def url(self, user: str = "root", password: str = "", database: str = "") -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"mysql://{auth}127.0.0.1:{self.port}/{database}"

    def install(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        cmd = [
            _which("mariadb-install-db", "mysql_install_db"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",  # its own: parallel installs must not share /tmp tables
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        result = subprocess.run(cmd, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                "mariadb-install-db failed:\n" + result.stderr.decode(errors="replace")[-2000:]
            )

    def command(self) -> list[str]:
        cmd = [
            _which("mariadbd", "mysqld"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.log_path}",
            f"--server-id={self.server_id}",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=48M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--skip-name-resolve",
            "--max-connections=500",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
        ]
        if self.log_bin:
            cmd += [
                f"--log-bin={self.datadir / 'binlog'}",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                f"--binlog-row-metadata={self.binlog_row_metadata}",
            ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        return cmd + self.extra_args

    def start(self, timeout: float = 60.0) -> None:
        self.install()
        self.tmpdir.mkdir(exist_ok=True)
        with open(self.base / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited early; see {self.log_path}:\n{self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(1):  # the server greets first once it accepts clients
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"mariadbd not ready after {timeout}s; see {self.log_path}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server: a crash, for fault tests."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def sql(self, statements: str, database: str = "") -> str:
        """Run SQL through the `mariadb` command-line client; return its tab-separated output."""
        cmd = [
            _which("mariadb", "mysql"),
            "--no-defaults",
            "-uroot",
            "-h127.0.0.1",
            f"-P{self.port}",
            "--batch",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
        ]
        if database:
            cmd.append(database)
        result = subprocess.run(cmd, input=statements.encode(), capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode(errors="replace").strip())
        return result.stdout.decode()

    def __enter__(self) -> PrivateMariaDB:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
