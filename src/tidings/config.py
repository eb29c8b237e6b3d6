"""One `Settings` object, from defaults < TOML file < TIDINGS_* environment < command-line flags.

Every setting is declared once, as a dataclass field with its help text; the
command-line flags and environment names are derived from the field names
(`output_limit` -> `--output-limit`, `TIDINGS_OUTPUT_LIMIT`), so the three
sources cannot drift apart.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from tidings.auth import check_secret
from tidings.hub import history as _history
from tidings.native import PURE_PYTHON_ENV
from tidings.wire import limits as _limits
from tidings.wire.origins import Origins, OriginsError


class ConfigError(ValueError):
    pass


#: listen() takes an int; the kernel caps the backlog at net.core.somaxconn anyway
MAX_BACKLOG: Final = 2**31 - 1


def _opt(
    default: Any, help: str, *, kind: str = "", metavar: str | None = None, secret: bool = False
) -> Any:
    # a secret stays out of repr(), so logging a Settings never shows it
    return field(
        default=default, repr=not secret, metadata={"help": help, "kind": kind, "metavar": metavar}
    )


@dataclass(frozen=True, slots=True)
class Settings:
    mysql: str = _opt(
        "",
        "MySQL/MariaDB to read the binlog from, e.g. mysql://repl:secret@127.0.0.1:3306/ "
        "(empty: no database source, pub/sub only)",
        metavar="URL",
    )
    server_id: int = _opt(
        4271,
        "replica server_id tidings registers with; must differ from every other replica's",
        metavar="N",
    )
    start: str = _opt(
        "end",
        "where to start reading: 'end' (current end of the binlog), a GTID position such as "
        "'0-1-57', or FILE:POS such as 'mysql-bin.000003:4'",
        metavar="POS",
    )
    names_from_schema: bool = _opt(
        False,
        "allow servers without binlog_row_metadata=FULL: take column names from "
        "information_schema (can be wrong while replaying across ALTER TABLE)",
    )
    heartbeat: float = _opt(1.0, "seconds between binlog heartbeats when idle", metavar="S")
    resp: str = _opt(
        "127.0.0.1:6380",
        "HOST:PORT for the Redis pub/sub protocol listener (empty: off)",
        metavar="HOST:PORT",
    )
    allow_publish: bool = _opt(False, "accept PUBLISH from clients (off by default)")
    backlog: int = _opt(
        _limits.DEFAULT_BACKLOG,
        "connections each listener (RESP, HTTP) lets the kernel complete before the daemon "
        "accepts them (listen backlog; the kernel caps it at net.core.somaxconn). A stalled "
        "loop under a reconnect storm overflows a small one, and clients then wait out SYN "
        "retransmission (1, 3, 7 ... 63 s)",
        metavar="N",
    )
    http: str = _opt(
        "127.0.0.1:8080",
        "HOST:PORT for the HTTP listener, e.g. 127.0.0.1:8080: Server-Sent Events (/sse), "
        "WebSocket (/ws), /healthz, /metrics, /channels, POST /publish (empty: off)",
        metavar="HOST:PORT",
    )
    tls_cert: str = _opt(
        "",
        "PEM file with the TLS certificate chain (and the private key, unless --tls-key): "
        "the listeners named by --tls-listeners speak TLS only; re-read on SIGHUP (empty: no TLS)",
        metavar="FILE",
    )
    tls_key: str = _opt(
        "", "PEM file with the private key of --tls-cert (empty: in that file)", metavar="FILE"
    )
    tls_listeners: str = _opt(
        "resp,http",
        "which listeners use TLS when --tls-cert is set: resp, http or resp,http "
        "(e.g. http alone to keep RESP in plain text on a loopback address)",
        metavar="LIST",
    )
    tls_min_version: str = _opt("1.2", "oldest TLS version accepted: 1.2 or 1.3", metavar="V")
    tls_handshake_timeout: float = _opt(
        10.0, "seconds a client may take to complete the TLS handshake", metavar="S"
    )
    origins: str = _opt(
        "*",
        "web pages allowed to use the HTTP listener from a browser: * (any), or comma-separated "
        "origins such as https://app.example,http://localhost:* (port * = any port). Others "
        "get no CORS header and their WebSocket handshakes are refused (403); clients that "
        "send no Origin (curl, services) are not affected",
        metavar="LIST",
    )
    sse_heartbeat: float = _opt(
        15.0, "seconds between comment heartbeats on SSE streams (0: none)", metavar="S"
    )
    health_max_lag: float = _opt(
        10.0,
        "GET /healthz answers 503 while the binlog stream is more than this many seconds behind",
        metavar="S",
    )
    max_clients: int = _opt(
        0,
        "most client connections open at once, all listeners together; more are told "
        "'max number of clients reached' and closed (0: as many as the descriptor limit allows)",
        metavar="N",
    )
    max_clients_per_ip: int = _opt(
        0, "most client connections open at once from one address (0: no limit)", metavar="N"
    )
    idle_timeout: float = _opt(
        0.0,
        "close a RESP connection that has no subscription and sent nothing for this many "
        "seconds, as redis's `timeout` (0: never)",
        metavar="S",
    )
    request_timeout: float = _opt(
        30.0,
        "HTTP: close a connection whose next request has not fully arrived this many seconds "
        "after it connected or got its last answer (408 if the request had begun; 0: never)",
        metavar="S",
    )
    auth_max_failures: int = _opt(
        10,
        "refused tokens from one address after which its attempts are refused unchecked for "
        "a while (1 s, doubling, at most 60 s; 0: never)",
        metavar="N",
    )
    max_subscriptions: int = _opt(
        10_000,
        "channels and patterns one connection (RESP, WebSocket, or SSE stream) may hold at once",
        metavar="N",
    )
    max_bulk: int = _opt(
        64 * 1024, "largest bulk string a client may send (bytes; k/M suffix ok)", kind="size"
    )
    output_limit: int = _opt(
        1 << 20,
        "pending output after which a slow subscriber is disconnected (bytes; k/M suffix ok)",
        kind="size",
    )
    workers: int = _opt(
        1,
        "processes serving clients on the same ports (SO_REUSEPORT); with more than 1 a "
        "separate process reads the binlog, gives the ids and feeds every worker "
        "(docs/topics/workers.md)",
        metavar="N",
    )
    worker_buffer: int = _opt(
        64 << 20,
        "with --workers: event-feed bytes that may wait for one worker (on top of its "
        "start-up copy of history); a worker further behind is restarted and its clients "
        "reconnect (bytes; k/M/G suffix ok)",
        kind="size",
    )
    cluster: str = _opt(
        "",
        "redis://HOST:PORT/DB of the Redis that coordinates a cluster of tidings nodes: one "
        "node at a time reads the binlog and appends the events to a Redis stream, every "
        "node serves them (docs/topics/cluster.md; empty: a single node, no backplane)",
        metavar="URL",
    )
    cluster_name: str = _opt(
        "tidings",
        "with --cluster: prefix of the cluster's Redis keys (clusters on one Redis differ in it)",
        metavar="NAME",
    )
    cluster_node: str = _opt(
        "",
        "with --cluster: this node's name in the lease and the logs (empty: HOSTNAME:PID)",
        metavar="NAME",
    )
    cluster_lease: float = _opt(
        5.0,
        "with --cluster: seconds the binlog reader's lease lasts unrenewed; a node takes over "
        "this long after the reader died",
        metavar="S",
    )
    cluster_timeout: float = _opt(
        3.0,
        "with --cluster: seconds without the backplane after which a node reports unhealthy "
        "and disconnects its clients (they reconnect to another node and resume)",
        metavar="S",
    )
    cluster_stream_length: int = _opt(
        100_000,
        "with --cluster: entries the Redis stream keeps (MAXLEN ~; an entry is what the reader "
        "read in one loop iteration, one event or many); a node further behind restarts",
        metavar="N",
    )
    ddl_events: bool = _opt(
        True,
        "publish schema changes (CREATE/ALTER/DROP/RENAME/TRUNCATE ...) as 'ddl' events on the "
        "channel of each table they name (--no-ddl-events: leave them out)",
    )
    outbox_schema: str = _opt(
        "tidings",
        "schema of the NOTIFY outbox table (as given to `tidings install-sql --schema`)",
        metavar="NAME",
    )
    state_dir: str = _opt(
        "",
        "directory for the checkpoint and mark index, so that event ids survive restarts "
        "(empty: none; every start is then a new epoch beginning at --start)",
        metavar="DIR",
    )
    checkpoint_interval: float = _opt(
        0.2,
        "at most this often (seconds) the checkpoint is written while events flow; it is "
        "also written on shutdown. Shorter: less to replay after a crash",
        metavar="S",
    )
    new_epoch: bool = _opt(
        False,
        "start a new epoch at --start (default: the current end of the binlog) even though "
        "--state-dir has a checkpoint, e.g. after the binlog was purged past it. Resuming "
        "clients get a gap. Use once, not in a config file",
    )
    mark_every: int = _opt(
        10_000,
        "events between two marks in the state directory's index (where a restart can start "
        "re-reading the binlog to refill history)",
        metavar="N",
    )
    reread_concurrency: int = _opt(
        2,
        "with --state-dir, clients resuming from ids older than memory history are served "
        "by re-reading the binlog from the mark index: at most this many re-reads at once "
        "(the others wait), each as replica server_id --server-id + 1 + its slot (0: off, "
        "such clients get a gap)",
        metavar="N",
    )
    history_events: int = _opt(
        _history.DEFAULT_EVENTS,
        "events kept in memory for clients resuming from an id (0: no history); with "
        "--state-dir, about this many are re-read from the binlog at start-up to refill it",
        metavar="N",
    )
    history_bytes: int = _opt(
        _history.DEFAULT_BYTES, "memory for history at most (bytes; k/M/G suffix ok)", kind="size"
    )
    history_channel_events: int = _opt(
        _history.DEFAULT_CHANNEL_EVENTS,
        "events of one channel kept in history at most",
        metavar="N",
    )
    history_channel_bytes: int = _opt(
        _history.DEFAULT_CHANNEL_BYTES,
        "memory for one channel's history at most (bytes; k/M/G suffix ok)",
        kind="size",
    )
    auth_secret: str = _opt(
        "",
        "secret (at least 32 bytes) that signs client tokens (JWT HS256); set, every "
        "subscription needs a token (`tidings token` mints them). Prefer --auth-secret-file "
        "or the environment: a flag shows in the process list",
        metavar="SECRET",
        secret=True,
    )
    auth_secret_file: str = _opt(
        "",
        "file holding the auth secret (surrounding whitespace ignored), instead of --auth-secret",
        metavar="FILE",
    )
    admin_open_on_loopback: bool = _opt(
        True,
        "with an auth secret, /channels, /metrics and POST /publish need no token while the "
        "HTTP listener is bound to loopback addresses only (--no-admin-open-on-loopback: "
        "always ask for an admin token, e.g. behind a reverse proxy on the same host)",
    )
    malloc_trim_interval: float = _opt(
        0.0,
        "seconds between two malloc_trim(0) calls, which hand the free memory glibc keeps "
        "inside its heaps (after a stall, say) back to the kernel (glibc only; 0: never)",
        metavar="S",
    )
    log_level: str = _opt("info", "debug, info, warning or error", metavar="LEVEL")
    log_format: str = _opt(
        "text",
        "'text' (one readable line per entry) or 'json' (one JSON object per line)",
        metavar="FORMAT",
    )

    def __post_init__(self) -> None:
        if self.resp:
            parse_hostport(self.resp)
        if self.http:
            parse_hostport(self.http)
        try:
            Origins.parse(self.origins)
        except OriginsError as exc:
            raise ConfigError(f"origins: {exc}") from None
        if self.sse_heartbeat < 0 or self.health_max_lag <= 0:
            raise ConfigError("sse_heartbeat must be >= 0 and health_max_lag > 0 seconds")
        self._check_tls()
        if not 1 <= self.server_id < 2**32:
            raise ConfigError(f"server_id must be between 1 and 4294967295, not {self.server_id}")
        if self.max_bulk < 1 or self.output_limit < 1024:
            raise ConfigError("max_bulk must be >= 1 and output_limit >= 1024 bytes")
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"workers must be between 1 and 256, not {self.workers}")
        if self.worker_buffer < 1 << 20:
            raise ConfigError("worker_buffer must be at least 1 MiB")
        self._check_cluster()
        if self.auth_max_failures < 0:
            raise ConfigError("auth_max_failures must be >= 0 (0: no throttling)")
        if self.max_subscriptions < 1:
            raise ConfigError("max_subscriptions must be >= 1")
        if min(self.max_clients, self.max_clients_per_ip) < 0:
            raise ConfigError("max_clients and max_clients_per_ip must be >= 0 (0: no limit)")
        if min(self.idle_timeout, self.request_timeout) < 0:
            raise ConfigError("idle_timeout and request_timeout must be >= 0 seconds (0: never)")
        if not 1 <= self.backlog <= MAX_BACKLOG:
            raise ConfigError(f"backlog must be between 1 and {MAX_BACKLOG}, not {self.backlog}")
        if self.malloc_trim_interval < 0:
            raise ConfigError("malloc_trim_interval must be >= 0 seconds (0: never)")
        if self.heartbeat <= 0:
            raise ConfigError("heartbeat must be > 0 seconds")
        if not _SCHEMA_NAME.match(self.outbox_schema):  # as tidings.source.notify checks it
            raise ConfigError(
                f"outbox_schema {self.outbox_schema!r}: use 1 to 64 letters, digits, '_' or '$'"
            )
        if self.checkpoint_interval < 0:
            raise ConfigError("checkpoint_interval must be >= 0 seconds")
        if self.reread_concurrency < 0:
            raise ConfigError("reread_concurrency must be >= 0")
        if self.mark_every < 1:
            raise ConfigError("mark_every must be >= 1")
        for name in ("history_events", "history_bytes", "history_channel_events",
                     "history_channel_bytes"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.auth_secret and self.auth_secret_file:
            raise ConfigError("set auth_secret or auth_secret_file, not both")
        if self.auth_secret:
            _check_secret("auth_secret", self.auth_secret.encode())
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level must be debug, info, warning or error: {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json: {self.log_format!r}")

    def _check_cluster(self) -> None:
        if not self.cluster:
            return
        if not self.cluster.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("cluster must be a redis://, rediss:// or unix:// URL")
        if not self.mysql:
            raise ConfigError("cluster needs mysql: the nodes share one binlog stream")
        if self.workers > 1:
            raise ConfigError("cluster and workers > 1 do not go together yet: run more nodes")
        if self.cluster_lease < 1 or self.cluster_timeout <= 0:
            raise ConfigError("cluster_lease must be >= 1 second and cluster_timeout > 0")
        if self.cluster_stream_length < 1000:
            raise ConfigError("cluster_stream_length must be at least 1000 entries")
        if not self.cluster_name or any(c.isspace() for c in self.cluster_name):
            raise ConfigError(f"cluster_name must be a word: {self.cluster_name!r}")

    def _check_tls(self) -> None:
        if self.tls_key and not self.tls_cert:
            raise ConfigError("tls_key is set but tls_cert is not: give both, or the cert alone")
        if not self._tls_listeners() or not self._tls_listeners() <= {"resp", "http"}:
            raise ConfigError(
                f"tls_listeners must be resp, http or resp,http, not {self.tls_listeners!r}"
            )
        if self.tls_min_version not in ("1.2", "1.3"):
            raise ConfigError(f"tls_min_version must be 1.2 or 1.3, not {self.tls_min_version!r}")
        if self.tls_handshake_timeout <= 0:
            raise ConfigError("tls_handshake_timeout must be > 0 seconds")

    def tls_for(self, listener: str) -> bool:
        """Whether the listener `listener` ("resp" or "http") is on and speaks TLS."""
        on = bool(self.tls_cert and getattr(self, listener))
        return on and listener in self._tls_listeners()

    def _tls_listeners(self) -> set[str]:
        return {name.strip() for name in self.tls_listeners.split(",") if name.strip()}


def _check_secret(name: str, secret: bytes) -> None:
    try:
        check_secret(secret)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def auth_secret(settings: Settings) -> bytes | None:
    """The secret that signs tokens (reading `auth_secret_file`), or None: no auth."""
    if settings.auth_secret:
        return settings.auth_secret.encode()
    if not settings.auth_secret_file:
        return None
    path = Path(settings.auth_secret_file)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read auth_secret_file {path}: {exc.strerror}") from None
    _check_secret(f"auth_secret_file {path}", secret)
    return secret


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> int:
    """Seconds from `90`, `30s`, `15m`, `1h` or `7d`."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"expected a duration such as 30s, 15m, 1h or 7d, got {text!r}")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2].lower()]
    return int(match[1]) * scale


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"expected a size such as 65536, 64k or 1MiB, got {text!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match[2].lower()]
    return int(match[1]) * scale


def _coerce(name: str, kind: str, default: Any, value: Any) -> Any:
    """Turn a TOML/env/flag value into the field's type, with an error naming the setting."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if kind == "size":
            return value if isinstance(value, int) else parse_size(str(value))
        if isinstance(default, int):
            return int(_scalar(value))
        if isinstance(default, float):
            number = float(_scalar(value))
            if not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {value!r}")
            return number
        return str(_scalar(value))
    except (ValueError, OverflowError, ConfigError) as exc:
        raise ConfigError(f"setting {name!r}: {exc}") from None


def _scalar(value: Any) -> Any:
    """A TOML value that can be a setting: a string, number or boolean, not a table, array
    or date."""
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a string or a number, got {value!r}")
    return value


#: settings that say the same thing two ways: a source setting one drops the other from
#: lower sources (TIDINGS_AUTH_SECRET_FILE overrides a file's auth_secret)
_ALTERNATIVES: Final = {"auth_secret": "auth_secret_file", "auth_secret_file": "auth_secret"}


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(Settings) if f.default is not MISSING}


#: variables with the settings' prefix that are not settings (read where they apply)
NOT_SETTINGS = frozenset(
    {
        PURE_PYTHON_ENV,  # tidings.native: pure Python, not the C parts
    }
)


def load(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings: defaults, then the TOML file, then TIDINGS_* variables, then `overrides`."""
    known = {f.name: f for f in fields(Settings)}
    layers: list[dict[str, Any]] = []
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except RecursionError:  # tomllib recurses into nested arrays and tables
            raise ConfigError(f"config file {path} nests too deeply") from None
        layer: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting {key!r} in {path}")
            layer[name] = value
        layers.append(layer)
    layer = {}
    for key, value in (os.environ if env is None else env).items():
        if key.startswith("TIDINGS_") and key not in NOT_SETTINGS:
            name = key[len("TIDINGS_") :].lower()
            if name not in known:
                raise ConfigError(f"unknown environment variable {key}")
            layer[name] = value
    layers.append(layer)
    layers.append({k: v for k, v in (overrides or {}).items() if v is not None})
    values: dict[str, Any] = {}
    for layer in layers:
        for name, other in _ALTERNATIVES.items():
            if name in layer and other not in layer:
                values.pop(other, None)  # a higher source names the other spelling: it wins
        values.update(layer)
    defaults = _defaults()
    typed = {
        name: _coerce(name, known[name].metadata.get("kind", ""), defaults[name], value)
        for name, value in values.items()
    }
    return replace(Settings(), **typed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; each defaults to None so unset flags do not override."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings (keys as below)")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env_name = "TIDINGS_" + f.name.upper()
        help_text = f"{f.metadata['help']} [env {env_name}; default: {f.default!r}]"
        if isinstance(f.default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                default=None,
                metavar=f.metadata.get("metavar")
                or ("BYTES" if f.metadata.get("kind") == "size" else f.name.upper()),
                help=help_text,
            )


def from_arguments(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return load(getattr(args, "config", None), env, overrides)


def setting_names() -> Sequence[str]:
    return [f.name for f in fields(Settings)]
