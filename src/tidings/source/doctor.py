"""`tidings doctor`: can this MySQL/MariaDB server feed tidings? If not, the exact fix.

Theory of operation. `gather()` runs a few read-only queries (global variables,
the account's grants, the binlog status) and returns `ServerFacts`: plain
strings, no connection. `diagnose()` is a pure function from those facts to one
`Finding` per check, each carrying the statement or my.cnf lines that fix it,
and `render()` prints them as an aligned report. Only `gather()` and
`run_doctor()` touch the network, so every check is unit-tested with literal
variable values and grant strings for both flavours.

A finding's `severity` is the weight of the check (`error` = tidings cannot run
correctly without it); `ok` says whether it passed. `tidings doctor` exits 1 when
any `error` finding fails, 2 when it cannot connect at all, 0 otherwise.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import asyncmy
from asyncmy.connection import Connection
from asyncmy.errors import MySQLError

from tidings.source.url import MySQLURL

Severity = Literal["error", "warning", "info"]
Flavor = Literal["mariadb", "mysql"]

#: global variables the checks read; absent ones (other flavour, old version) are simply missing
VARIABLES = (
    "version",
    "version_comment",
    "basedir",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_row_value_options",
    "server_id",
    "gtid_mode",
    "enforce_gtid_consistency",
    "gtid_binlog_pos",
    "gtid_strict_mode",
    "binlog_checksum",
    "expire_logs_days",
    "binlog_expire_logs_seconds",
    "binlog_expire_logs_auto_purge",
    "max_allowed_packet",
)

DAY = 86400
#: retention we suggest when it is too short: a week of downtime is recoverable
SUGGESTED_RETENTION = 7 * DAY


# -- findings -----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Finding:
    """The outcome of one check."""

    name: str
    ok: bool
    severity: Severity
    detail: str
    #: what to run or change, verbatim (may span lines); None when nothing to do
    fix: str | None = None
    #: `[mysqld]` lines of my.cnf that make the fix survive a restart
    cnf: tuple[str, ...] = ()

    @property
    def blocking(self) -> bool:
        """True when tidings cannot work until this is fixed."""
        return not self.ok and self.severity == "error"


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.blocking for f in findings) else 0


# -- server version -----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ServerVersion:
    flavor: Flavor
    major: int
    minor: int
    #: None when the version string has no numeric patch level (e.g. Aurora's "8.0.mysql_aurora…")
    patch: int | None
    text: str

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return (self.major, self.minor, self.patch or 0) >= (major, minor, patch)

    @property
    def product(self) -> str:
        return "MariaDB" if self.flavor == "mariadb" else "MySQL"

    @property
    def name(self) -> str:
        patch = "" if self.patch is None else f".{self.patch}"
        return f"{self.product} {self.major}.{self.minor}{patch}"


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(version: str, comment: str = "") -> ServerVersion:
    """Parse `@@version` ("10.11.6-MariaDB-log", "8.0.36-0ubuntu0.22.04.1", "8.4.0")."""
    flavor: Flavor = "mariadb" if "mariadb" in f"{version} {comment}".lower() else "mysql"
    text = version
    # old MariaDB clients see "5.5.5-10.x.y-MariaDB": a prefix that fooled MySQL-only replicas
    if flavor == "mariadb" and version.startswith("5.5.5-"):
        text = version[len("5.5.5-") :]
    m = _VERSION.match(text)
    if m is None:
        return ServerVersion(flavor, 0, 0, None, version)
    patch = int(m.group(3)) if m.group(3) is not None else None
    return ServerVersion(flavor, int(m.group(1)), int(m.group(2)), patch, version)


#: first versions that write column names into the binlog (binlog_row_metadata=FULL)
MINIMUM: dict[Flavor, tuple[int, int, int]] = {"mariadb": (10, 5, 0), "mysql": (8, 0, 14)}


def check_version(v: ServerVersion, *, allow_names_from_schema: bool = False) -> Finding:
    need = MINIMUM[v.flavor]
    need_text = ".".join(map(str, need[:2] if v.flavor == "mariadb" else need))
    required = f"{v.product} >= {need_text} writes binlog_row_metadata=FULL"
    if v.patch is None and (v.major, v.minor) == need[:2] and need[2]:
        return Finding("server", False, "warning", f"{v.text}: patch level unknown ({required})")
    if v.at_least(*need):
        return Finding("server", True, "error", f"{v.name} ({required})")
    return Finding(
        "server",
        False,
        "warning" if allow_names_from_schema else "error",
        f"{v.name} is too old: {required}"
        + ("; names will come from information_schema" if allow_names_from_schema else ""),
        f"upgrade the server to {v.product} {need_text} or later"
        + ("" if allow_names_from_schema else ", or pass --allow-names-from-schema (see below)"),
    )


# -- configuration checks -----------------------------------------------------------------


def _set_global(name: str, value: str, *, note: str = "") -> tuple[str, tuple[str, ...]]:
    """A `SET GLOBAL` fix and the my.cnf line that persists it."""
    fix = f"SET GLOBAL {name}={value};{note}\nand persist it: my.cnf [mysqld] {name}={value}"
    return fix, (f"{name}={value}",)


def check_log_bin(variables: Mapping[str, str], v: ServerVersion) -> Finding:
    value = variables.get("log_bin", "OFF").upper()
    if value in ("ON", "1"):
        return Finding("log_bin", True, "error", "the binary log is ON")
    lines = ["[mysqld]", "log_bin=mysql-bin"]
    if v.flavor == "mysql":
        # MySQL 8 logs by default: off means someone passed --skip-log-bin / --disable-log-bin
        lines.append("# and delete any skip-log-bin / disable-log-bin line")
    fix = (
        "add to my.cnf, then restart the server (log_bin cannot be changed at runtime):\n"
        + "\n".join(f"  {line}" for line in lines)
    )
    return Finding(
        "log_bin",
        False,
        "error",
        "the binary log is OFF: tidings reads every change from it",
        fix,
        ("log_bin=mysql-bin",),
    )


def check_binlog_format(variables: Mapping[str, str]) -> Finding:
    value = variables.get("binlog_format", "").upper()
    if value == "ROW":
        return Finding("binlog_format", True, "error", "ROW")
    fix, cnf = _set_global(
        "binlog_format", "ROW", note="  -- open sessions keep their format until they reconnect"
    )
    return Finding(
        "binlog_format",
        False,
        "error",
        f"{value or 'unknown'}: tidings needs ROW events (statements carry no row values)",
        fix,
        cnf,
    )


def check_binlog_row_image(variables: Mapping[str, str]) -> Finding:
    value = variables.get("binlog_row_image", "").upper()
    if value == "FULL":
        return Finding("binlog_row_image", True, "error", "FULL")
    fix, cnf = _set_global("binlog_row_image", "FULL")
    return Finding(
        "binlog_row_image",
        False,
        "error",
        f"{value or 'unknown'}: updates and deletes would carry only some columns",
        fix,
        cnf,
    )


def check_binlog_row_metadata(
    variables: Mapping[str, str], *, allow_names_from_schema: bool = False
) -> Finding:
    value = variables.get("binlog_row_metadata", "").upper()
    if value == "FULL":
        return Finding("binlog_row_metadata", True, "error", "FULL: column names are in the binlog")
    shown = value or "not supported by this server"
    trade_off = (
        "without it column names must be read from information_schema, which is wrong "
        "while replaying events written before an ALTER TABLE (renamed, added or dropped "
        "columns put values under the wrong names)"
    )
    if not value:
        return Finding(
            "binlog_row_metadata",
            False,
            "warning" if allow_names_from_schema else "error",
            f"{shown}: {trade_off}",
            None
            if allow_names_from_schema
            else "upgrade the server (see `server`), "
            "or accept the risk with --allow-names-from-schema",
        )
    fix, cnf = _set_global("binlog_row_metadata", "FULL")
    if allow_names_from_schema:
        return Finding(
            "binlog_row_metadata",
            False,
            "warning",
            f"{shown}: allowed by --allow-names-from-schema; {trade_off}",
            fix,
            cnf,
        )
    return Finding(
        "binlog_row_metadata",
        False,
        "error",
        f"{shown}: {trade_off}",
        fix + "\n(or accept the risk with --allow-names-from-schema)",
        cnf,
    )


def check_binlog_row_value_options(variables: Mapping[str, str]) -> Finding | None:
    """MySQL 8 only: PARTIAL_JSON logs JSON diffs, not documents; None when not applicable."""
    value = variables.get("binlog_row_value_options")
    if value is None:
        return None
    if "PARTIAL_JSON" not in value.upper():
        return Finding("binlog_row_value_options", True, "error", "'' (JSON logged whole)")
    return Finding(
        "binlog_row_value_options",
        False,
        "error",
        "PARTIAL_JSON: JSON updates are logged as diffs, so rows would lack the new document",
        "SET GLOBAL binlog_row_value_options='';\n"
        "and persist it: my.cnf [mysqld] binlog_row_value_options=''",
        ("binlog_row_value_options=''",),
    )


def check_server_id(variables: Mapping[str, str], replica_server_id: int | None = None) -> Finding:
    raw = variables.get("server_id", "0")
    server_id = int(raw) if raw.isdigit() else 0
    if server_id == 0:
        fix, cnf = _set_global("server_id", "1")
        return Finding(
            "server_id",
            False,
            "error",
            "0: a server with server_id 0 refuses replicas, and tidings is one",
            fix,
            cnf,
        )
    if replica_server_id is not None and replica_server_id == server_id:
        return Finding(
            "server_id",
            False,
            "error",
            f"{server_id}, the same as the server_id tidings registers with: "
            "the server would take tidings for itself",
            f"give tidings another id (--server-id / server_id), e.g. {server_id + 1000}",
        )
    mine = f" (tidings connects as {replica_server_id})" if replica_server_id is not None else ""
    return Finding("server_id", True, "error", f"{server_id}{mine}")


def check_gtid(variables: Mapping[str, str], v: ServerVersion) -> Finding:
    if v.flavor == "mariadb":
        pos = variables.get("gtid_binlog_pos", "")
        where = f"position {pos}" if pos else "none written yet"
        if variables.get("gtid_strict_mode", "OFF").upper() in ("ON", "1"):
            return Finding("gtid", True, "info", f"MariaDB GTIDs, {where}; gtid_strict_mode=ON")
        fix, cnf = _set_global("gtid_strict_mode", "ON")
        return Finding(
            "gtid",
            False,
            "info",
            f"MariaDB GTIDs, {where}; gtid_strict_mode=OFF (optional: ON rejects "
            "out-of-order GTIDs, which could make a resume skip or repeat transactions)",
            fix,
            cnf,
        )
    mode = variables.get("gtid_mode", "OFF").upper()
    enforce = variables.get("enforce_gtid_consistency", "OFF").upper()
    if mode == "ON":
        return Finding("gtid", True, "warning", "gtid_mode=ON")
    # MySQL only moves gtid_mode one step at a time; list the steps still to take
    steps: list[str] = []
    if enforce != "ON":
        if enforce == "OFF":
            steps.append(
                "SET GLOBAL enforce_gtid_consistency=WARN;  -- run a while, "
                "check the error log for violations"
            )
        steps.append("SET GLOBAL enforce_gtid_consistency=ON;")
    order = ["OFF", "OFF_PERMISSIVE", "ON_PERMISSIVE"]
    start = order.index(mode) + 1 if mode in order else 1
    for nxt in order[start:]:
        steps.append(f"SET GLOBAL gtid_mode={nxt};")
    steps.append("-- wait until SHOW STATUS LIKE 'Ongoing_anonymous_transaction_count' is 0")
    steps.append("SET GLOBAL gtid_mode=ON;")
    steps.append("and persist: my.cnf [mysqld] gtid_mode=ON, enforce_gtid_consistency=ON")
    return Finding(
        "gtid",
        False,
        "warning",
        f"gtid_mode={mode}: tidings resumes by file:position, "
        "which means nothing on another server after a failover",
        "\n".join(steps),
        ("gtid_mode=ON", "enforce_gtid_consistency=ON"),
    )


def check_binlog_checksum(variables: Mapping[str, str]) -> Finding:
    value = variables.get("binlog_checksum", "").upper()
    if value in ("NONE", "CRC32"):
        return Finding("binlog_checksum", True, "info", f"{value} (both are supported)")
    fix, cnf = _set_global("binlog_checksum", "CRC32")
    return Finding(
        "binlog_checksum",
        False,
        "warning",
        f"{value or 'unknown'}: tidings understands NONE and CRC32",
        fix,
        cnf,
    )


def retention_seconds(variables: Mapping[str, str], v: ServerVersion) -> float | None:
    """How long the server keeps binlogs, in seconds; None when it never purges them itself."""
    if variables.get("binlog_expire_logs_auto_purge", "ON").upper() == "OFF":
        return None  # MySQL 8.0.29+: expiry settings are ignored
    seconds = _number(variables.get("binlog_expire_logs_seconds"))
    if seconds > 0:
        return seconds
    days = _number(variables.get("expire_logs_days"))
    return days * DAY if days > 0 else None


def check_retention(variables: Mapping[str, str], v: ServerVersion) -> Finding:
    if variables.get("basedir", "").startswith("/rdsdbbin"):
        # RDS and Aurora purge binlogs on their own schedule, ignoring the variables
        return Finding(
            "binlog retention",
            False,
            "warning",
            "Amazon RDS/Aurora purges binlogs on its own schedule (by default within minutes); "
            "tidings can only resume within retention",
            "CALL mysql.rds_set_configuration('binlog retention hours', 168);\n"
            "(check with CALL mysql.rds_show_configuration;)",
        )
    seconds = retention_seconds(variables, v)
    if seconds is None:
        return Finding(
            "binlog retention",
            True,
            "info",
            "never expire: binlogs pile up until PURGE BINARY LOGS",
        )
    if seconds >= DAY:
        return Finding(
            "binlog retention",
            True,
            "info",
            f"{_duration(seconds)}: tidings can resume after an outage of up to that long",
        )
    if v.flavor == "mariadb" and not v.at_least(10, 6):
        name, value = "expire_logs_days", str(SUGGESTED_RETENTION // DAY)
    else:
        name, value = "binlog_expire_logs_seconds", str(SUGGESTED_RETENTION)
    fix, cnf = _set_global(name, value)
    return Finding(
        "binlog retention",
        False,
        "warning",
        f"{_duration(seconds)}: tidings can only resume within retention; "
        "a longer outage loses changes",
        fix,
        cnf,
    )


def check_max_allowed_packet(variables: Mapping[str, str]) -> Finding:
    size = int(_number(variables.get("max_allowed_packet")))
    return Finding(
        "max_allowed_packet",
        True,
        "info",
        f"{_bytes(size)}: the largest row a client can write, so the largest binlog event",
    )


# -- grants -------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Account:
    """The account the server authenticated us as (`CURRENT_USER()`)."""

    user: str
    host: str

    @classmethod
    def parse(cls, current_user: str) -> Account:
        # user names may contain '@', host names may not: split on the last one
        user, _, host = current_user.rpartition("@")
        return cls(user, host)

    def sql(self) -> str:
        return f"{quote_ident(self.user)}@{quote_ident(self.host)}"


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(slots=True)
class Privileges:
    """What a set of SHOW GRANTS lines allows, by level. Names are upper case."""

    global_: set[str] = field(default_factory=set)
    #: database (as written in the grant, LIKE wildcards and all) -> privileges
    databases: dict[str, set[str]] = field(default_factory=dict)
    #: (database, table) -> privileges, including column-level grants
    tables: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)

    def has_global(self, *names: str) -> bool:
        return "ALL" in self.global_ or any(n in self.global_ for n in names)

    def databases_with(self, name: str) -> list[str]:
        return [db for db, privs in self.databases.items() if name in privs or "ALL" in privs]

    def tables_with(self, name: str) -> list[tuple[str, str]]:
        return [t for t, privs in self.tables.items() if name in privs or "ALL" in privs]


_TOKEN = re.compile(
    r"""
      `(?:[^`]|``)*`                # identifier; `` is a literal backtick
    | '(?:[^'\\]|\\.|'')*'          # string
    | "(?:[^"\\]|\\.|"")*"
    | [A-Za-z0-9_$]+
    | \S
    """,
    re.X,
)
_ALIASES = {
    "ALL PRIVILEGES": "ALL",
    "REPLICATION REPLICA": "REPLICATION SLAVE",
    # MariaDB 10.5 renamed REPLICATION CLIENT; both spellings grant the same right
    "BINLOG MONITOR": "REPLICATION CLIENT",
}
_ROUTINES = {"FUNCTION", "PROCEDURE", "PACKAGE"}


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "`'\"":
        q = token[0]
        body = token[1:-1].replace(q + q, q)
        return body if q == "`" else re.sub(r"\\(.)", r"\1", body)
    return token


def _is_word(token: str, word: str) -> bool:
    return token.upper() == word  # quoted tokens start with a quote, so never match


def _split_commas(tokens: Sequence[str]) -> list[list[str]]:
    items: list[list[str]] = [[]]
    depth = 0
    for tok in tokens:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        if tok == "," and depth == 0:
            items.append([])
        else:
            items[-1].append(tok)
    return [item for item in items if item]


def parse_grant(line: str, into: Privileges) -> None:
    """Add one SHOW GRANTS line to `into`; lines that grant nothing here are ignored."""
    tokens = _TOKEN.findall(line)
    if not tokens or not _is_word(tokens[0], "GRANT"):
        return  # REVOKE (partial revokes), SET DEFAULT ROLE, ...
    on = to = None
    depth = 0
    for i, tok in enumerate(tokens):
        depth += (tok == "(") - (tok == ")")
        if depth == 0 and on is None and _is_word(tok, "ON"):
            on = i
        elif depth == 0 and _is_word(tok, "TO"):
            to = i
            break
    if to is None:
        return
    if on is None:
        # GRANT `role`[@`host`], ... TO user: a role grant
        for item in _split_commas(tokens[1:to]):
            into.roles.append(_unquote(item[0]))
        return
    privileges: set[str] = set()
    column_level = False
    for item in _split_commas(tokens[1:on]):
        words: list[str] = []
        depth = 0
        for tok in item:  # "SELECT (`a`, `b`)": the column list is not part of the name
            depth += (tok == "(") - (tok == ")")
            if depth == 0 and tok != ")":
                words.append(tok.upper())
            else:
                column_level = True
        name = " ".join(words)
        privileges.add(_ALIASES.get(name, name))
    if "PROXY" in privileges:
        return
    target = list(tokens[on + 1 : to])
    if target and target[0].upper() in _ROUTINES:
        return  # EXECUTE on a stored routine: nothing tidings needs
    if target and target[0].upper() == "TABLE":
        target.pop(0)
    if target == ["*", ".", "*"] and not column_level:
        into.global_ |= privileges
    elif len(target) == 3 and target[1] == "." and target[2] == "*":
        into.databases.setdefault(_unquote(target[0]), set()).update(privileges)
    elif len(target) == 3 and target[1] == ".":
        key = (_unquote(target[0]), _unquote(target[2]))
        into.tables.setdefault(key, set()).update(privileges)
    elif target == ["*"]:
        into.databases.setdefault("", set()).update(privileges)  # "the default database"
    elif len(target) == 1:
        into.tables.setdefault(("", _unquote(target[0])), set()).update(privileges)


def parse_grants(lines: Iterable[str]) -> Privileges:
    privileges = Privileges()
    for line in lines:
        parse_grant(line, privileges)
    return privileges


def _like(pattern: str, name: str) -> bool:
    """Does a database grant (LIKE syntax: %, _ and backslash escapes) cover `name`?"""
    regex = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(regex), name, re.S) is not None


def check_grants(
    privileges: Privileges,
    account: Account,
    v: ServerVersion,
    *,
    database: str = "",
    status_readable: bool = False,
) -> Finding:
    """Needed: REPLICATION SLAVE to stream, REPLICATION CLIENT (MariaDB 10.5+: BINLOG MONITOR)
    to read the current position, SELECT to look up schemas.

    `status_readable` says the binlog status query worked: proof of the second right even
    when it comes from somewhere SHOW GRANTS did not show.
    """
    mariadb_105 = v.flavor == "mariadb" and v.at_least(10, 5)
    monitor = "BINLOG MONITOR" if mariadb_105 else "REPLICATION CLIENT"
    missing: list[str] = []
    problems: list[str] = []
    if not privileges.has_global("REPLICATION SLAVE"):
        missing.append("REPLICATION SLAVE")
        problems.append("REPLICATION SLAVE (to stream the binlog)")
    if not (status_readable or privileges.has_global("REPLICATION CLIENT", "SUPER")):
        missing.append(monitor)
        problems.append(f"{monitor} (to read the current binlog position)")
    select_note = ""
    if not privileges.has_global("SELECT"):
        dbs = privileges.databases_with("SELECT")
        tables = privileges.tables_with("SELECT")
        covered = bool(dbs) and (not database or any(_like(db, database) for db in dbs))
        if covered:
            select_note = "; SELECT on " + ", ".join(f"{quote_ident(db)}.*" for db in dbs)
            select_note += " only (schemas of other databases cannot be looked up)"
        else:
            missing.append("SELECT")
            partial = f", it has SELECT on {len(tables)} table(s) only" if tables else ""
            problems.append(f"SELECT (to look up table schemas{partial})")
    if not missing:
        return Finding(
            "privileges",
            True,
            "error",
            f"{account.sql()} has REPLICATION SLAVE, {monitor} and SELECT{select_note}",
        )
    detail = f"{account.sql()} lacks " + ", ".join(problems)
    if privileges.roles:
        detail += (
            "; it has roles (" + ", ".join(privileges.roles) + "): only default roles count, "
            "see SET DEFAULT ROLE"
        )
    fix = f"GRANT {', '.join(missing)} ON *.* TO {account.sql()};  -- run as an administrator"
    return Finding("privileges", False, "error", detail, fix)


# -- authentication -------------------------------------------------------------------------

#: what tidings' own replication client (`tidings.source.mysqlwire`) can log in with
SUPPORTED_AUTH = ("mysql_native_password", "caching_sha2_password")


def parse_auth_plugins(create_user: str) -> list[str]:
    """The authentication plugins of a SHOW CREATE USER statement, in the order tried.

    MySQL: `IDENTIFIED WITH 'plugin' AS '...'`; MariaDB: `IDENTIFIED VIA a USING '...' OR b`,
    `IDENTIFIED BY PASSWORD '*...'` (native) or nothing at all (native, empty password).
    """
    tokens = _TOKEN.findall(create_user)
    plugins: list[str] = []
    for i, tok in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        if _is_word(tok, "IDENTIFIED"):
            if _is_word(nxt, "BY"):
                plugins.append("mysql_native_password")
            elif (_is_word(nxt, "WITH") or _is_word(nxt, "VIA")) and i + 2 < len(tokens):
                plugins.append(_unquote(tokens[i + 2]).lower())
        elif _is_word(tok, "OR") and plugins:
            plugins.append(_unquote(nxt).lower())
    return plugins or ["mysql_native_password"]


def check_auth(plugins: Sequence[str] | None, account: Account, v: ServerVersion) -> Finding:
    if plugins is None:
        return Finding("authentication", False, "info", "SHOW CREATE USER failed: plugin unknown")
    shown = " or ".join(plugins)
    who = f"ALTER USER {account.sql()} IDENTIFIED"
    if v.flavor == "mariadb":
        alter = f"{who} VIA mysql_native_password USING PASSWORD('<password>');"
    elif v.at_least(9, 0):  # MySQL 9 removed mysql_native_password
        alter = f"{who} WITH caching_sha2_password BY '<password>';"
    else:
        alter = f"{who} WITH mysql_native_password BY '<password>';"
        if v.at_least(8, 4):
            alter += "\n(MySQL 8.4 first needs mysql_native_password=ON in my.cnf and a restart)"
    if "mysql_native_password" in plugins:
        return Finding("authentication", True, "error", shown)
    warm_cache = (
        "after each server restart, log in once with the mysql client (TLS or RSA) "
        "before starting tidings"
    )
    if "caching_sha2_password" in plugins:
        fix = warm_cache if v.at_least(9, 0) else f"{alter}\nor: {warm_cache}"
        return Finding(
            "authentication",
            False,
            "warning",
            f"{shown}: tidings does its fast path only, which works once the server has cached "
            "the password, i.e. after any client has logged in with TLS or RSA since the "
            "last restart",
            fix,
        )
    return Finding(
        "authentication",
        False,
        "error",
        f"{shown}: tidings logs in with {' or '.join(SUPPORTED_AUTH)} only",
        alter,
    )


# -- binlog position ----------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class BinlogStatus:
    """One row of SHOW MASTER STATUS / SHOW BINARY LOG STATUS."""

    file: str
    position: int
    do_db: str = ""
    ignore_db: str = ""
    #: MySQL's Executed_Gtid_Set column ("" on MariaDB, which has @@gtid_binlog_pos)
    gtid: str = ""


def status_statement(v: ServerVersion) -> str:
    # MySQL 8.2 renamed it; 8.4 removed the old spelling
    if v.flavor == "mysql" and v.at_least(8, 2):
        return "SHOW BINARY LOG STATUS"
    return "SHOW MASTER STATUS"


def check_binlog_position(
    status: BinlogStatus | None,
    error: str | None,
    v: ServerVersion,
    variables: Mapping[str, str],
) -> Finding:
    stmt = status_statement(v)
    if error is not None:
        denied = "denied" in error.lower()
        return Finding(
            "binlog position",
            False,
            "error",
            f"{stmt} failed: {error}",
            "grant the privilege named under `privileges`" if denied else None,
        )
    if status is None:
        if variables.get("log_bin", "OFF").upper() not in ("ON", "1"):
            # a consequence of log_bin, which already fails: do not count it twice
            return Finding("binlog position", False, "info", "none while log_bin is OFF")
        return Finding("binlog position", False, "error", f"{stmt} returned no row")
    gtid = status.gtid or (variables.get("gtid_binlog_pos", "") if v.flavor == "mariadb" else "")
    where = f"{status.file}:{status.position}" + (f", GTID {gtid}" if gtid else "")
    return Finding("binlog position", True, "error", f"readable: {where}")


def check_binlog_filters(status: BinlogStatus | None) -> Finding | None:
    if status is None:
        return None
    if not status.do_db and not status.ignore_db:
        return Finding("binlog filters", True, "warning", "none: every database is logged")
    parts = []
    if status.do_db:
        parts.append(f"only {status.do_db} logged (binlog_do_db)")
    if status.ignore_db:
        parts.append(f"{status.ignore_db} not logged (binlog_ignore_db)")
    return Finding(
        "binlog filters",
        False,
        "warning",
        "; ".join(parts) + ": changes elsewhere never reach the binlog, nor tidings",
        "remove binlog_do_db / binlog_ignore_db from my.cnf and restart, if you want those changes",
    )


# -- all together ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ServerFacts:
    """Everything the checks look at, as read from the server."""

    #: global variables by lower-case name
    variables: Mapping[str, str]
    account: Account
    #: SHOW GRANTS lines (the account's, and those of its active roles)
    grants: tuple[str, ...]
    binlog_status: BinlogStatus | None = None
    #: the server's message when the binlog status query failed
    binlog_status_error: str | None = None
    #: SHOW CREATE USER of the account, when readable
    create_user: str | None = None

    @property
    def version(self) -> ServerVersion:
        return parse_version(
            self.variables.get("version", ""), self.variables.get("version_comment", "")
        )


def diagnose(
    facts: ServerFacts,
    *,
    allow_names_from_schema: bool = False,
    replica_server_id: int | None = None,
    database: str = "",
) -> list[Finding]:
    """Every check, in the order the report prints them."""
    v = facts.version
    var = facts.variables
    findings: list[Finding | None] = [
        check_version(v, allow_names_from_schema=allow_names_from_schema),
        check_log_bin(var, v),
        check_binlog_format(var),
        check_binlog_row_image(var),
        check_binlog_row_metadata(var, allow_names_from_schema=allow_names_from_schema),
        check_binlog_row_value_options(var),
        check_server_id(var, replica_server_id),
        check_grants(
            parse_grants(facts.grants),
            facts.account,
            v,
            database=database,
            status_readable=facts.binlog_status is not None,
        ),
        check_auth(
            None if facts.create_user is None else parse_auth_plugins(facts.create_user),
            facts.account,
            v,
        ),
        check_binlog_position(facts.binlog_status, facts.binlog_status_error, v, var),
        check_binlog_filters(facts.binlog_status),
        check_gtid(var, v),
        check_binlog_checksum(var),
        check_retention(var, v),
        check_max_allowed_packet(var),
    ]
    return [f for f in findings if f is not None]


# -- report -------------------------------------------------------------------------------


def _label(f: Finding) -> str:
    if f.ok:
        return "ok"
    return {"error": "FAIL", "warning": "WARN", "info": "NOTE"}[f.severity]


def render(
    findings: Sequence[Finding], out: TextIO, *, title: str = "", line_width: int = 100
) -> None:
    """Print the findings as an aligned report with a summary line.

    Details wrap at `line_width`; fixes never do, so they can be copied as they are.
    """
    if title:
        out.write(title + "\n\n")
    width = max((len(f.name) for f in findings), default=0)
    indent = " " * (2 + 4 + 2 + width + 2)
    for f in findings:
        detail = textwrap.wrap(f.detail, max(40, line_width - len(indent))) or [""]
        out.write(f"  {_label(f):<4}  {f.name:<{width}}  {detail[0]}\n")
        out.writelines(f"{indent}{line}\n" for line in detail[1:])
        if f.fix and not f.ok:
            lines = f.fix.splitlines()
            out.write(f"{indent}fix: {lines[0]}\n")
            for line in lines[1:]:
                out.write(f"{indent}     {line}\n")
    # several settings to persist: one block to paste beats hunting through the list
    cnf = [line for f in findings if not f.ok and f.severity != "info" for line in f.cnf]
    if len(cnf) > 1:
        restart = (
            " (then restart: log_bin needs it)"
            if any(f.name == "log_bin" and not f.ok for f in findings)
            else ""
        )
        out.write(f"\nTo persist these fixes, put under [mysqld] in my.cnf{restart}:\n")
        out.writelines(f"  {line}\n" for line in dict.fromkeys(cnf))
    blocking = sum(f.blocking for f in findings)
    warnings = sum(not f.ok and f.severity == "warning" for f in findings)
    more = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
    if blocking:
        out.write(
            f"\n{blocking} problem{'s' * (blocking != 1)} must be fixed before tidings can "
            f"stream from this server{more}.\n"
        )
    else:
        out.write(f"\nAll required checks passed{more}: tidings can stream from this server.\n")


# -- connection ---------------------------------------------------------------------------


def _host_port(url: MySQLURL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}"


def describe_connect_error(url: MySQLURL, errno: int | None, message: str) -> str:
    """One line: where, the server's words, and the likely fix. Never the password."""
    if url.password:
        message = message.replace(url.password, "***")
    hint = ""
    low = message.lower()
    if errno == 1045:
        hint = (
            f"wrong password for {url.user!r}, no such account for this client host (the "
            "server names the account it tried), or the account requires TLS, which tidings "
            "does not speak"
        )
    elif errno == 1130:
        hint = (
            f"the server has no account {url.user!r} for this client host: "
            f"CREATE USER {quote_ident(url.user)}@`<your host or %>` ... and grant it"
        )
    elif errno == 1044:
        hint = f"the user may not use database {url.database!r}: drop it from the URL or grant it"
    elif errno == 1049:
        hint = f"database {url.database!r} does not exist: drop it from the URL or create it"
    elif errno == 1040:
        hint = "the server is at max_connections: retry later or raise max_connections"
    elif errno == 3159 or "secure transport" in low:
        hint = "the server requires TLS (require_secure_transport)"
    elif errno in (2059, 1251) or "plugin" in low or "auth method" in low:
        hint = (
            "the account uses an authentication plugin tidings does not support: give it "
            "mysql_native_password (ALTER USER ... IDENTIFIED VIA/WITH mysql_native_password)"
        )
    elif "greeting" in low:
        hint = "the port accepts connections but says nothing: wrong port, or a proxy in between"
    elif "packet sequence" in low or "malformed packet" in low:
        hint = "the server does not speak the MySQL protocol: is this a MySQL port?"
    elif errno == 2003 or errno is None:
        if (
            "name or service not known" in low
            or "nodename nor servname" in low
            or ("name resolution" in low)
        ):
            hint = f"host name {url.host!r} does not resolve: check the URL"
        elif "refused" in low or "errno 111]" in low or "connect call failed" in low:
            hint = (
                f"nothing listens on {_host_port(url)}: is the server running? "
                "check the port and bind-address"
            )
        else:
            hint = "server down, wrong host or port, or a firewall in between"
    elif errno in (2013, 2006):
        hint = "the connection was closed during the handshake: is this a MySQL port?"
    line = f"cannot connect to {_host_port(url)} as {url.user!r}: {message}"
    return f"{line} -- {hint}" if hint else line


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


async def _query(conn: Connection, sql: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """Column names and rows of `sql`, every value as text."""
    async with conn.cursor() as cur:
        await cur.execute(sql)
        rows = await cur.fetchall()
        names = [d[0] for d in cur.description or ()]
    return names, [tuple(_text(v) for v in row) for row in rows]


def _error_text(exc: BaseException) -> tuple[int | None, str]:
    args: tuple[object, ...] = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None, str(exc) or type(exc).__name__


async def gather(conn: Connection) -> ServerFacts:
    """Read the variables, grants and binlog status over an open asyncmy connection."""
    names = ", ".join(f"'{name}'" for name in VARIABLES)
    _, rows = await _query(conn, f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})")
    variables = {name.lower(): value for name, value in rows}
    v = parse_version(variables.get("version", ""), variables.get("version_comment", ""))
    _, rows = await _query(conn, "SELECT CURRENT_USER()")
    account = Account.parse(rows[0][0])
    grants = await _grants(conn, v)
    status: BinlogStatus | None = None
    error: str | None = None
    try:
        cols, rows = await _query(conn, status_statement(v))
    except MySQLError as exc:
        error = _error_text(exc)[1]
    else:
        if rows:
            row = dict(zip(cols, rows[0], strict=False))
            status = BinlogStatus(
                file=row.get("File", ""),
                position=int(row.get("Position") or 0),
                do_db=row.get("Binlog_Do_DB", ""),
                ignore_db=row.get("Binlog_Ignore_DB", ""),
                gtid=row.get("Executed_Gtid_Set", "").replace("\n", ""),
            )
    create_user: str | None = None
    try:  # allowed for one's own account without any privilege
        _, rows = await _query(conn, "SHOW CREATE USER CURRENT_USER()")
        create_user = rows[0][0] if rows else None
    except MySQLError:
        pass  # MySQL < 5.7.6 / MariaDB < 10.2
    return ServerFacts(variables, account, grants, status, error, create_user)


async def _grants(conn: Connection, v: ServerVersion) -> tuple[str, ...]:
    if v.flavor == "mariadb":
        # plain SHOW GRANTS adds the grants of the active (default) role, recursively
        _, rows = await _query(conn, "SHOW GRANTS")
        return tuple(row[0] for row in rows)
    _, rows = await _query(conn, "SHOW GRANTS FOR CURRENT_USER()")
    lines = tuple(row[0] for row in rows)
    try:
        _, roles = await _query(conn, "SELECT CURRENT_ROLE()")
    except MySQLError:
        return lines  # MySQL 5.7: no roles
    active = roles[0][0] if roles else ""
    if active and active.upper() != "NONE":
        try:
            # MySQL lists a role's privileges only when asked to expand it
            _, rows = await _query(conn, f"SHOW GRANTS FOR CURRENT_USER() USING {active}")
            lines = tuple(row[0] for row in rows)
        except MySQLError:
            pass
    return lines


async def run_doctor(
    url: MySQLURL,
    out: TextIO,
    *,
    allow_names_from_schema: bool = False,
    replica_server_id: int | None = None,
    connect_timeout: float = 10.0,
) -> int:
    """Check the server at `url` and print the report to `out`.

    `replica_server_id` is the id tidings will register with (default: the URL's
    `?server_id=`, else unchecked). Returns 0 when every required check passes, 1 when
    something must be fixed and 2 when the server cannot be reached or refuses the login.
    """
    try:
        # asyncmy's own timeout covers the TCP connect, not a peer that never greets
        conn = await asyncio.wait_for(
            asyncmy.connect(
                host=url.host,
                port=url.port,
                user=url.user,
                password=url.password,
                db=url.database or None,
                connect_timeout=connect_timeout,
            ),
            connect_timeout,
        )
    except TimeoutError:
        message = f"no MySQL greeting within {connect_timeout:g}s"
        out.write(describe_connect_error(url, None, message) + "\n")
        return 2
    except MySQLError as exc:
        errno, message = _error_text(exc)
        out.write(describe_connect_error(url, errno, message) + "\n")
        return 2
    except Exception as exc:  # OSError, or the driver choking on a non-MySQL peer
        message = str(exc) or type(exc).__name__
        out.write(describe_connect_error(url, None, message) + "\n")
        return 2
    try:
        facts = await gather(conn)
    except (MySQLError, OSError) as exc:
        out.write(f"lost the connection to {_host_port(url)} while checking it: {exc}\n")
        return 2
    finally:
        try:
            await conn.ensure_closed()
        except Exception:  # already gone: nothing left to close
            conn.close()
    if replica_server_id is None:
        raw_id = url.option("server_id")
        replica_server_id = int(raw_id) if raw_id and raw_id.isdigit() else None
    findings = diagnose(
        facts,
        allow_names_from_schema=allow_names_from_schema,
        replica_server_id=replica_server_id,
        database=url.database,
    )
    title = f"tidings doctor: {url.redacted()}  ({facts.version.text}, as {facts.account.sql()})"
    render(findings, out, title=title)
    return exit_code(findings)


def _number(raw: str | None) -> float:
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


def _duration(seconds: float) -> str:
    for unit, size in (("day", DAY), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds / size
            text = f"{n:.0f}" if n == int(n) else f"{n:.1f}"
            return f"{text} {unit}{'s' * (text != '1')}"
    return f"{seconds:.0f} seconds"


def _bytes(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            n = size / scale
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
    return f"{size} bytes"
