"""`tidings doctor`: pure checks with literal values, then against real MariaDB servers."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.sandbox import PrivateMariaDB, free_port
from tidings.source.doctor import (
    Account,
    BinlogStatus,
    Finding,
    ServerFacts,
    ServerVersion,
    check_auth,
    check_binlog_checksum,
    check_binlog_filters,
    check_binlog_format,
    check_binlog_position,
    check_binlog_row_image,
    check_binlog_row_metadata,
    check_binlog_row_value_options,
    check_grants,
    check_gtid,
    check_log_bin,
    check_max_allowed_packet,
    check_retention,
    check_server_id,
    check_version,
    describe_connect_error,
    diagnose,
    exit_code,
    parse_auth_plugins,
    parse_grants,
    parse_version,
    quote_ident,
    render,
    retention_seconds,
    run_doctor,
    status_statement,
)
from tidings.source.url import MySQLURL

MARIADB = parse_version("10.11.6-MariaDB-log")
MARIADB_104 = parse_version("10.4.32-MariaDB")
MYSQL = parse_version("8.0.36")
MYSQL_84 = parse_version("8.4.0")

#: what a well-configured server of each flavour reports
MARIADB_VARS = {
    "version": "10.11.6-MariaDB-log",
    "version_comment": "MariaDB Server",
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
    "server_id": "1",
    "gtid_binlog_pos": "0-1-42",
    "gtid_strict_mode": "ON",
    "binlog_checksum": "CRC32",
    "expire_logs_days": "7.000000",
    "binlog_expire_logs_seconds": "604800",
    "max_allowed_packet": "16777216",
    "basedir": "/usr/",
}
MYSQL_VARS = {
    "version": "8.0.36",
    "version_comment": "MySQL Community Server - GPL",
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
    "binlog_row_value_options": "",
    "server_id": "1",
    "gtid_mode": "ON",
    "enforce_gtid_consistency": "ON",
    "binlog_checksum": "CRC32",
    "binlog_expire_logs_seconds": "2592000",
    "binlog_expire_logs_auto_purge": "ON",
    "max_allowed_packet": "67108864",
    "basedir": "/usr/",
}
REPL_GRANTS = ("GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `tidings`@`%`",)


MARIADB_USER = "CREATE USER `tidings`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D04'"
MYSQL_USER = (
    "CREATE USER `tidings`@`%` IDENTIFIED WITH 'mysql_native_password' AS '*D821809F681A40A6' "
    "REQUIRE NONE PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK PASSWORD HISTORY DEFAULT"
)


def facts(variables: dict[str, str], **changes: str) -> ServerFacts:
    return ServerFacts(
        variables={**variables, **changes},
        account=Account("tidings", "%"),
        grants=REPL_GRANTS,
        binlog_status=BinlogStatus("binlog.000003", 1234),
        create_user=MARIADB_USER if variables is MARIADB_VARS else MYSQL_USER,
    )


def names(findings: list[Finding], *, failing: bool = True) -> set[str]:
    return {f.name for f in findings if f.ok != failing}


# -- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "comment", "flavor", "numbers"),
    [
        ("10.11.6-MariaDB-log", "", "mariadb", (10, 11, 6)),
        ("10.11.19-MariaDB-0+deb12u1-log", "Debian 12", "mariadb", (10, 11, 19)),
        ("5.5.5-10.6.12-MariaDB", "", "mariadb", (10, 6, 12)),
        ("10.5.8", "MariaDB Server", "mariadb", (10, 5, 8)),
        ("8.0.36-0ubuntu0.22.04.1", "(Ubuntu)", "mysql", (8, 0, 36)),
        ("8.0.35-27", "Percona Server (GPL), Release 27", "mysql", (8, 0, 35)),
        ("8.0.mysql_aurora.3.04.0", "Source distribution", "mysql", (8, 0, None)),
        ("garbage", "", "mysql", (0, 0, None)),
    ],
)
def test_parse_version(
    text: str, comment: str, flavor: str, numbers: tuple[int, int, int | None]
) -> None:
    v = parse_version(text, comment)
    assert (v.flavor, (v.major, v.minor, v.patch)) == (flavor, numbers)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("10.4.32-MariaDB", False),
        ("10.5.0-MariaDB", True),
        ("11.4.2-MariaDB", True),
        ("5.7.44-log", False),
        ("8.0.13", False),
        ("8.0.14", True),
        ("8.4.0", True),
        ("9.1.0", True),
    ],
)
def test_version_minimum(text: str, ok: bool) -> None:
    finding = check_version(parse_version(text))
    assert finding.ok is ok
    assert finding.blocking is not ok
    if not ok:
        assert finding.fix is not None and "upgrade" in finding.fix


def test_old_version_allowed_with_names_from_schema() -> None:
    finding = check_version(MARIADB_104, allow_names_from_schema=True)
    assert (finding.ok, finding.severity) == (False, "warning")
    assert "information_schema" in finding.detail


def test_unknown_patch_level_is_a_warning() -> None:
    finding = check_version(parse_version("8.0.mysql_aurora.3.04.0"))
    assert (finding.ok, finding.severity) == (False, "warning")


# -- configuration ----------------------------------------------------------------------------


def test_log_bin_off_prints_cnf_and_restart() -> None:
    finding = check_log_bin({"log_bin": "OFF"}, MARIADB)
    assert finding.blocking
    assert finding.fix is not None
    assert "[mysqld]\n  log_bin=mysql-bin" in finding.fix
    assert "restart" in finding.fix
    assert finding.cnf == ("log_bin=mysql-bin",)
    assert check_log_bin({"log_bin": "ON"}, MARIADB).ok


def test_log_bin_off_on_mysql_mentions_skip_log_bin() -> None:
    finding = check_log_bin({"log_bin": "OFF"}, MYSQL)
    assert finding.fix is not None and "skip-log-bin" in finding.fix


@pytest.mark.parametrize("value", ["STATEMENT", "MIXED", ""])
def test_binlog_format_must_be_row(value: str) -> None:
    finding = check_binlog_format({"binlog_format": value})
    assert finding.blocking
    assert finding.fix is not None
    assert finding.fix.startswith("SET GLOBAL binlog_format=ROW;")
    assert "my.cnf [mysqld] binlog_format=ROW" in finding.fix
    assert finding.cnf == ("binlog_format=ROW",)
    assert check_binlog_format({"binlog_format": "ROW"}).ok


@pytest.mark.parametrize("value", ["MINIMAL", "NOBLOB", "FULL_NODUP"])
def test_binlog_row_image_must_be_full(value: str) -> None:
    finding = check_binlog_row_image({"binlog_row_image": value})
    assert finding.blocking
    assert finding.fix is not None and "SET GLOBAL binlog_row_image=FULL;" in finding.fix
    assert check_binlog_row_image({"binlog_row_image": "full"}).ok


@pytest.mark.parametrize("value", ["MINIMAL", "NO_LOG"])
def test_binlog_row_metadata_minimal_is_an_error(value: str) -> None:
    finding = check_binlog_row_metadata({"binlog_row_metadata": value})
    assert finding.blocking
    assert "ALTER TABLE" in finding.detail and "information_schema" in finding.detail
    assert finding.fix is not None
    assert "SET GLOBAL binlog_row_metadata=FULL;" in finding.fix
    assert "--allow-names-from-schema" in finding.fix


def test_binlog_row_metadata_minimal_allowed_is_a_warning() -> None:
    finding = check_binlog_row_metadata(
        {"binlog_row_metadata": "MINIMAL"}, allow_names_from_schema=True
    )
    assert (finding.ok, finding.severity, finding.blocking) == (False, "warning", False)
    assert "ALTER TABLE" in finding.detail
    assert check_binlog_row_metadata({"binlog_row_metadata": "FULL"}).ok


def test_binlog_row_metadata_missing_on_old_server() -> None:
    assert check_binlog_row_metadata({}).blocking
    assert not check_binlog_row_metadata({}, allow_names_from_schema=True).blocking


def test_partial_json_is_an_error_on_mysql() -> None:
    assert check_binlog_row_value_options(MARIADB_VARS) is None
    assert check_binlog_row_value_options({"binlog_row_value_options": ""}) == Finding(
        "binlog_row_value_options", True, "error", "'' (JSON logged whole)"
    )
    finding = check_binlog_row_value_options({"binlog_row_value_options": "PARTIAL_JSON"})
    assert finding is not None and finding.blocking
    assert finding.fix is not None and "SET GLOBAL binlog_row_value_options='';" in finding.fix


def test_server_id() -> None:
    zero = check_server_id({"server_id": "0"})
    assert zero.blocking and zero.fix is not None and "SET GLOBAL server_id=1;" in zero.fix
    assert check_server_id({"server_id": "7"}).ok
    assert check_server_id({"server_id": "7"}, replica_server_id=1001).ok
    clash = check_server_id({"server_id": "7"}, replica_server_id=7)
    assert clash.blocking and clash.fix is not None and "e.g. 1007" in clash.fix


def test_gtid_mariadb() -> None:
    strict = check_gtid({"gtid_binlog_pos": "0-1-42", "gtid_strict_mode": "ON"}, MARIADB)
    assert strict.ok and "0-1-42" in strict.detail
    loose = check_gtid({"gtid_binlog_pos": "", "gtid_strict_mode": "OFF"}, MARIADB)
    assert (loose.ok, loose.severity) == (False, "info")
    assert loose.fix is not None and "SET GLOBAL gtid_strict_mode=ON;" in loose.fix


def test_gtid_mysql_off_lists_every_step_in_order() -> None:
    finding = check_gtid({"gtid_mode": "OFF", "enforce_gtid_consistency": "OFF"}, MYSQL)
    assert (finding.ok, finding.severity) == (False, "warning")
    assert finding.fix is not None
    steps = [line for line in finding.fix.splitlines() if line.startswith("SET GLOBAL")]
    assert steps == [
        "SET GLOBAL enforce_gtid_consistency=WARN;  -- run a while, check the error log for "
        "violations",
        "SET GLOBAL enforce_gtid_consistency=ON;",
        "SET GLOBAL gtid_mode=OFF_PERMISSIVE;",
        "SET GLOBAL gtid_mode=ON_PERMISSIVE;",
        "SET GLOBAL gtid_mode=ON;",
    ]
    assert finding.cnf == ("gtid_mode=ON", "enforce_gtid_consistency=ON")


def test_gtid_mysql_half_way_lists_remaining_steps() -> None:
    finding = check_gtid({"gtid_mode": "ON_PERMISSIVE", "enforce_gtid_consistency": "ON"}, MYSQL)
    assert finding.fix is not None
    steps = [line for line in finding.fix.splitlines() if line.startswith("SET GLOBAL")]
    assert steps == ["SET GLOBAL gtid_mode=ON;"]
    assert check_gtid({"gtid_mode": "ON", "enforce_gtid_consistency": "ON"}, MYSQL).ok


@pytest.mark.parametrize(("value", "ok"), [("NONE", True), ("CRC32", True), ("XXH3", False)])
def test_binlog_checksum(value: str, ok: bool) -> None:
    finding = check_binlog_checksum({"binlog_checksum": value})
    assert finding.ok is ok
    assert not finding.blocking


@pytest.mark.parametrize(
    ("variables", "version", "seconds"),
    [
        ({"expire_logs_days": "0.000000", "binlog_expire_logs_seconds": "0"}, MARIADB, None),
        ({"expire_logs_days": "0.500000", "binlog_expire_logs_seconds": "43200"}, MARIADB, 43200),
        ({"expire_logs_days": "2"}, MARIADB_104, 2 * 86400),
        ({"binlog_expire_logs_seconds": "3600"}, MYSQL, 3600),
        ({"binlog_expire_logs_seconds": "0", "expire_logs_days": "3"}, MYSQL, 3 * 86400),
        (
            {"binlog_expire_logs_seconds": "3600", "binlog_expire_logs_auto_purge": "OFF"},
            MYSQL,
            None,
        ),
    ],
)
def test_retention_seconds(
    variables: dict[str, str], version: ServerVersion, seconds: float | None
) -> None:
    assert retention_seconds(variables, version) == seconds


def test_short_retention_warns_with_the_variable_of_the_version() -> None:
    new = check_retention({"binlog_expire_logs_seconds": "3600"}, MARIADB)
    assert (new.ok, new.severity, new.blocking) == (False, "warning", False)
    assert "only resume within retention" in new.detail and "1 hour" in new.detail
    assert new.fix is not None and "SET GLOBAL binlog_expire_logs_seconds=604800;" in new.fix
    old = check_retention({"expire_logs_days": "0.25"}, MARIADB_104)
    assert old.fix is not None and "SET GLOBAL expire_logs_days=7;" in old.fix
    mysql = check_retention({"binlog_expire_logs_seconds": "600"}, MYSQL)
    assert not mysql.ok and "10 minutes" in mysql.detail


def test_long_or_no_retention_is_info() -> None:
    week = check_retention({"binlog_expire_logs_seconds": "604800"}, MYSQL)
    assert (week.ok, week.severity) == (True, "info") and "7 days" in week.detail
    never = check_retention({"binlog_expire_logs_seconds": "0"}, MARIADB)
    assert (never.ok, never.severity) == (True, "info") and "never" in never.detail


def test_rds_retention_points_at_rds_procedure() -> None:
    finding = check_retention({"basedir": "/rdsdbbin/mysql-8.0.36.R2/"}, MYSQL)
    assert not finding.ok and finding.fix is not None
    assert "mysql.rds_set_configuration('binlog retention hours'" in finding.fix


def test_max_allowed_packet_is_info() -> None:
    finding = check_max_allowed_packet({"max_allowed_packet": "67108864"})
    assert (finding.ok, finding.severity) == (True, "info") and "64 MiB" in finding.detail


def test_status_statement_by_version() -> None:
    assert status_statement(MARIADB) == "SHOW MASTER STATUS"
    assert status_statement(MYSQL) == "SHOW MASTER STATUS"
    assert status_statement(MYSQL_84) == "SHOW BINARY LOG STATUS"


def test_binlog_position() -> None:
    ok = check_binlog_position(BinlogStatus("b.000001", 4), None, MARIADB, MARIADB_VARS)
    assert ok.ok and "b.000001:4" in ok.detail and "0-1-42" in ok.detail
    mysql = check_binlog_position(
        BinlogStatus("b.000002", 157, gtid="3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"),
        None,
        MYSQL_84,
        MYSQL_VARS,
    )
    assert mysql.ok and ":1-5" in mysql.detail
    denied = check_binlog_position(
        None, "Access denied; you need the BINLOG MONITOR privilege", MARIADB, MARIADB_VARS
    )
    assert denied.blocking and "SHOW MASTER STATUS failed" in denied.detail
    assert check_binlog_position(None, None, MARIADB, MARIADB_VARS).blocking
    # with log_bin off the missing position is a consequence, not a second problem
    off = check_binlog_position(None, None, MARIADB, {"log_bin": "OFF"})
    assert not off.ok and not off.blocking


def test_binlog_filters() -> None:
    assert check_binlog_filters(None) is None
    clean = check_binlog_filters(BinlogStatus("b.1", 4))
    assert clean is not None and clean.ok
    filtered = check_binlog_filters(BinlogStatus("b.1", 4, do_db="app", ignore_db="tmp"))
    assert filtered is not None and not filtered.ok and not filtered.blocking
    assert "app" in filtered.detail and "tmp" in filtered.detail


# -- grants -------------------------------------------------------------------------------------


def test_parse_grants_of_both_flavours() -> None:
    p = parse_grants(
        [
            # MariaDB, with a password hash and a database wildcard
            "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379'",
            "GRANT SELECT, INSERT ON `my\\_db`.* TO `app`@`%` WITH GRANT OPTION",
            "GRANT ALL PRIVILEGES ON `shop`.* TO `app`@`%`",
            "GRANT SELECT (`User`, `Host`) ON `mysql`.`user` TO `app`@`%`",
            "GRANT EXECUTE ON PROCEDURE `mysql`.`p` TO `app`@`%`",
            "GRANT PROXY ON ``@`%` TO `app`@`%` WITH GRANT OPTION",
            "GRANT `repl_role` TO `app`@`%`",
            "SET DEFAULT ROLE `repl_role` FOR `app`@`%`",
            # MySQL 8: dynamic privileges without spaces, roles with hosts, table grants
            "GRANT BACKUP_ADMIN,BINLOG_ADMIN,REPLICATION_SLAVE_ADMIN ON *.* TO `app`@`%`",
            "GRANT `r1`@`%`,`r2`@`localhost` TO `app`@`%`",
            "GRANT UPDATE ON TABLE `db`.`t` TO `app`@`%`",
            "REVOKE INSERT ON `mysql`.* FROM `app`@`%`",
            # MySQL 5.7 quoting
            "GRANT REPLICATION SLAVE ON *.* TO 'app'@'10.0.%'",
        ]
    )
    assert p.global_ == {
        "USAGE",
        "BACKUP_ADMIN",
        "BINLOG_ADMIN",
        "REPLICATION_SLAVE_ADMIN",
        "REPLICATION SLAVE",
    }
    assert p.databases == {"my\\_db": {"SELECT", "INSERT"}, "shop": {"ALL"}}
    assert p.tables == {("mysql", "user"): {"SELECT"}, ("db", "t"): {"UPDATE"}}
    assert p.roles == ["repl_role", "r1", "r2"]
    assert p.databases_with("SELECT") == ["my\\_db", "shop"]


def test_parse_grants_aliases() -> None:
    p = parse_grants(
        ["GRANT REPLICATION REPLICA, BINLOG MONITOR ON *.* TO `a`@`%`", "grant all on *.* to b"]
    )
    assert {"REPLICATION SLAVE", "REPLICATION CLIENT", "ALL"} <= p.global_
    assert p.has_global("SELECT")  # ALL covers everything


identifiers = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"))


@given(user=identifiers, host=identifiers, db=identifiers, role=identifiers)
def test_parse_grants_survives_any_quoted_name(user: str, host: str, db: str, role: str) -> None:
    to = f"{quote_ident(user)}@{quote_ident(host)}"
    p = parse_grants(
        [
            f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {to} IDENTIFIED BY PASSWORD 'x'",
            f"GRANT SELECT ON {quote_ident(db)}.* TO {to}",
            f"GRANT {quote_ident(role)} TO {to}",
        ]
    )
    assert p.global_ == {"REPLICATION SLAVE", "REPLICATION CLIENT"}
    assert p.databases == {db: {"SELECT"}}
    assert p.roles == [role]


@given(user=identifiers, host=st.text(alphabet="abc.%_-:0123456789", min_size=1))
def test_account_round_trip(user: str, host: str) -> None:
    account = Account.parse(f"{user}@{host}")
    assert account == Account(user, host)
    assert account.sql() == quote_ident(user) + "@" + quote_ident(host)


def test_grants_all_good() -> None:
    for lines in (
        REPL_GRANTS,
        ("GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION",),
        ("GRANT REPLICATION SLAVE, SUPER ON *.* TO `a`@`%`", "GRANT SELECT ON `app`.* TO `a`@`%`"),
    ):
        finding = check_grants(parse_grants(lines), Account("a", "%"), MYSQL, database="app")
        assert finding.ok, (lines, finding)


def test_grants_select_only_prints_the_exact_grant() -> None:
    finding = check_grants(
        parse_grants(["GRANT SELECT ON *.* TO `sel`@`%`"]), Account("sel", "%"), MARIADB
    )
    assert finding.blocking
    assert finding.fix is not None
    assert finding.fix.startswith("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `sel`@`%`;")
    # MySQL and old MariaDB call the monitor right REPLICATION CLIENT
    for version in (MYSQL, MARIADB_104):
        old = check_grants(
            parse_grants(["GRANT SELECT ON *.* TO 'sel'@'%'"]), Account("sel", "%"), version
        )
        assert old.fix is not None
        assert old.fix.startswith("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO ")


def test_grants_missing_select_and_quoting_of_odd_names() -> None:
    account = Account("o'b`x", "10.0.%")
    finding = check_grants(
        parse_grants(["GRANT REPLICATION SLAVE ON *.* TO `o'b``x`@`10.0.%`"]),
        account,
        MARIADB,
        status_readable=True,  # the status query worked: the monitor right is there somehow
    )
    assert finding.fix is not None
    assert finding.fix.startswith("GRANT SELECT ON *.* TO `o'b``x`@`10.0.%`;")


def test_grants_database_level_select() -> None:
    grants = parse_grants(
        ["GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `a`@`%`",
         "GRANT SELECT ON `app\\_%`.* TO `a`@`%`"]
    )  # fmt: skip
    a = Account("a", "%")
    assert check_grants(grants, a, MYSQL).ok
    assert check_grants(grants, a, MYSQL, database="app_eu").ok
    missing = check_grants(grants, a, MYSQL, database="appxeu")  # \_ is a literal underscore
    assert missing.blocking and missing.fix is not None and "SELECT" in missing.fix


def test_grants_roles_are_mentioned_when_rights_are_missing() -> None:
    finding = check_grants(
        parse_grants(["GRANT USAGE ON *.* TO `a`@`%`", "GRANT `repl` TO `a`@`%`"]),
        Account("a", "%"),
        MARIADB,
    )
    assert finding.blocking and "repl" in finding.detail and "DEFAULT ROLE" in finding.detail


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "plugins"),
    [
        ("CREATE USER `root`@`localhost`", ["mysql_native_password"]),
        (MARIADB_USER, ["mysql_native_password"]),
        (MYSQL_USER, ["mysql_native_password"]),
        (
            "CREATE USER `c`@`%` IDENTIFIED VIA unix_socket OR mysql_native_password USING '*D8'",
            ["unix_socket", "mysql_native_password"],
        ),
        (
            "CREATE USER `e`@`%` IDENTIFIED VIA ed25519 USING 'ZIgUREUg5PVgQ6LskhXmO+eZLS0'",
            ["ed25519"],
        ),
        (
            "CREATE USER `m`@`%` IDENTIFIED WITH 'caching_sha2_password' AS '$A$005$\\'x\\'' "
            "REQUIRE NONE PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK",
            ["caching_sha2_password"],
        ),
    ],
)
def test_parse_auth_plugins(statement: str, plugins: list[str]) -> None:
    assert parse_auth_plugins(statement) == plugins


def test_auth_native_is_fine_others_get_an_alter_user() -> None:
    who = Account("tidings", "%")
    assert check_auth(["unix_socket", "mysql_native_password"], who, MARIADB).ok
    ed = check_auth(["ed25519"], who, MARIADB)
    assert ed.blocking and ed.fix == (
        "ALTER USER `tidings`@`%` IDENTIFIED VIA mysql_native_password "
        "USING PASSWORD('<password>');"
    )
    sha = check_auth(["caching_sha2_password"], who, MYSQL)
    assert (sha.ok, sha.severity) == (False, "warning")
    assert sha.fix is not None
    assert sha.fix.startswith(
        "ALTER USER `tidings`@`%` IDENTIFIED WITH mysql_native_password BY '<password>';"
    )
    assert "mysql_native_password=ON" in (
        check_auth(["caching_sha2_password"], who, MYSQL_84).fix or ""
    )
    # MySQL 9 has no native passwords left: warm the cache instead
    mysql9 = check_auth(["caching_sha2_password"], who, parse_version("9.1.0"))
    assert mysql9.fix is not None and "mysql_native" not in mysql9.fix
    unknown = check_auth(None, who, MARIADB)
    assert not unknown.ok and not unknown.blocking


# -- the whole diagnosis and its report -------------------------------------------------------


def test_diagnose_all_good_both_flavours() -> None:
    for variables in (MARIADB_VARS, MYSQL_VARS):
        findings = diagnose(facts(variables))
        assert names(findings) == set(), findings
        assert exit_code(findings) == 0


def test_diagnose_mysql_with_everything_wrong() -> None:
    bad = facts(
        MYSQL_VARS,
        log_bin="OFF",
        binlog_format="MIXED",
        binlog_row_image="MINIMAL",
        binlog_row_metadata="MINIMAL",
        binlog_row_value_options="PARTIAL_JSON",
        server_id="0",
        gtid_mode="OFF",
        enforce_gtid_consistency="OFF",
        binlog_expire_logs_seconds="3600",
    )
    findings = diagnose(bad)
    assert names(findings) == {
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "binlog_row_metadata",
        "binlog_row_value_options",
        "server_id",
        "gtid",
        "binlog retention",
    }
    assert exit_code(findings) == 1
    allowed = diagnose(
        facts(MARIADB_VARS, binlog_row_metadata="MINIMAL"), allow_names_from_schema=True
    )
    assert names(allowed) == {"binlog_row_metadata"} and exit_code(allowed) == 0


def test_render_aligns_and_summarises() -> None:
    findings = diagnose(
        facts(MARIADB_VARS, binlog_format="MIXED", binlog_row_image="MINIMAL", log_bin="OFF")
    )
    out = io.StringIO()
    render(findings, out, title="tidings doctor: test")
    text = out.getvalue()
    rows = [line for line in text.splitlines() if re.match(r"  (ok|FAIL|WARN|NOTE) ", line)]
    assert len(rows) == len(findings)
    # every name and every detail starts in the same column, in finding order
    name_at = len("  FAIL  ")
    detail_at = name_at + max(len(f.name) for f in findings) + 2
    for f, line in zip(findings, rows, strict=True):
        assert line[name_at:].startswith(f.name + " ")
        assert line[detail_at:].startswith(f.detail[:20])
    assert "fix: SET GLOBAL binlog_format=ROW;" in text
    assert "put under [mysqld] in my.cnf (then restart: log_bin needs it)" in text
    block = text.split("in my.cnf (then restart: log_bin needs it):\n")[1].split("\n\n")[0]
    assert block.splitlines() == [
        "  log_bin=mysql-bin",
        "  binlog_format=ROW",
        "  binlog_row_image=FULL",
    ]
    assert text.rstrip().endswith(
        "3 problems must be fixed before tidings can stream from this server."
    )


def test_render_all_good() -> None:
    out = io.StringIO()
    render(diagnose(facts(MYSQL_VARS, binlog_expire_logs_seconds="600")), out)
    assert (
        out.getvalue()
        .rstrip()
        .endswith("All required checks passed (1 warning): tidings can stream from this server.")
    )
    assert "fix: SET GLOBAL binlog_expire_logs_seconds=604800;" in out.getvalue()


def test_render_wraps_long_details_but_not_fixes() -> None:
    out = io.StringIO()
    render([check_binlog_row_metadata({"binlog_row_metadata": "MINIMAL"})], out, line_width=80)
    lines = out.getvalue().splitlines()
    detail = lines[: next(i for i, line in enumerate(lines) if "fix:" in line)]
    assert len(detail) > 1 and all(len(line) <= 80 for line in detail)
    assert "ALTER TABLE" in " ".join(line.strip() for line in detail)
    assert any(len(line) > 80 for line in lines)  # the fix lines are left whole


# -- connection errors --------------------------------------------------------------------------


def test_connect_error_never_shows_the_password() -> None:
    url = MySQLURL.parse("mysql://tidings:hunter2@db.example:3307/app")
    line = describe_connect_error(
        url, 1045, "Access denied for user 'tidings'@'10.1.2.3' (using password: YES) hunter2"
    )
    assert "hunter2" not in line
    assert line.startswith("cannot connect to db.example:3307 as 'tidings': Access denied")
    assert "password" in line.split(" -- ")[1]
    assert "\n" not in line


@pytest.mark.parametrize(
    ("errno", "message", "hint"),
    [
        (
            2003,
            "Can't connect ([Errno 111] Connect call failed ('127.0.0.1', 1))",
            "nothing listens",
        ),
        (2003, "Can't connect ([Errno -2] Name or service not known)", "does not resolve"),
        (1130, "Host '10.1.2.3' is not allowed to connect to this MariaDB server", "CREATE USER"),
        (1049, "Unknown database 'app'", "does not exist"),
        (None, "no answer within 5s", "firewall"),
    ],
)
def test_connect_error_hints(errno: int | None, message: str, hint: str) -> None:
    url = MySQLURL.parse("mysql://tidings@[::1]:3306/app")
    line = describe_connect_error(url, errno, message)
    assert line.startswith("cannot connect to [::1]:3306 as 'tidings': ")
    assert hint in line


# -- against real servers ---------------------------------------------------------------------


async def doctor(
    url: str,
    *,
    allow_names_from_schema: bool = False,
    replica_server_id: int | None = None,
    connect_timeout: float = 10.0,
) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_doctor(
        MySQLURL.parse(url),
        out,
        allow_names_from_schema=allow_names_from_schema,
        replica_server_id=replica_server_id,
        connect_timeout=connect_timeout,
    )
    return code, out.getvalue()


def row(report: str, name: str) -> str:
    """The report lines of check `name`: its row, wrapped detail and fix."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  \S+\s+{name}  ", line))
    end = start + 1
    while end < len(lines) and lines[end].startswith("      "):
        end += 1
    return "\n".join(lines[start:end])


async def test_well_configured_server_passes(mariadb: PrivateMariaDB) -> None:
    code, report = await doctor(mariadb.url() + "?server_id=4242")
    assert code == 0, report
    assert "All required checks passed" in report
    for name in ("log_bin", "binlog_format", "binlog_row_metadata", "privileges", "server_id"):
        assert row(report, name).startswith("  ok  "), report
    assert "binlog." in row(report, "binlog position")
    assert "tidings connects as 4242" in row(report, "server_id")
    # the id tidings registers with must not be the server's own (1 in the sandbox)
    code, report = await doctor(mariadb.url(), replica_server_id=mariadb.server_id)
    assert code == 1, report
    assert row(report, "server_id").startswith("  FAIL  server_id")


async def test_binlog_off_says_so_and_prints_the_fix(tmp_path: Path) -> None:
    db = PrivateMariaDB(tmp_path / "nolog", log_bin=False)
    db.start()
    try:
        code, report = await doctor(db.url())
    finally:
        db.stop()
    assert code == 1, report
    assert row(report, "log_bin").startswith("  FAIL  log_bin")
    assert "the binary log is OFF" in report
    assert "log_bin=mysql-bin" in report and "restart" in report
    # MariaDB's defaults without --log-bin: MIXED format, no metadata
    assert row(report, "binlog_format").startswith("  FAIL")
    assert "SET GLOBAL binlog_format=ROW;" in report


async def test_minimal_metadata_fails_unless_allowed(tmp_path: Path) -> None:
    db = PrivateMariaDB(tmp_path / "minimal", binlog_row_metadata="MINIMAL")
    db.start()
    try:
        code, report = await doctor(db.url())
        allowed_code, allowed = await doctor(db.url(), allow_names_from_schema=True)
    finally:
        db.stop()
    assert code == 1, report
    assert row(report, "binlog_row_metadata").startswith("  FAIL  binlog_row_metadata  MINIMAL")
    assert "SET GLOBAL binlog_row_metadata=FULL;" in report
    assert allowed_code == 0, allowed
    assert row(allowed, "binlog_row_metadata").startswith("  WARN")
    assert "ALTER TABLE" in allowed


async def test_select_only_user_gets_the_exact_grant(mariadb: PrivateMariaDB) -> None:
    # quotes in the name make sure the printed statement quotes what it must
    user = f"doc'tor`{uuid.uuid4().hex[:8]}"
    ident = quote_ident(user)
    mariadb.sql(
        f"CREATE USER {ident}@'%' IDENTIFIED BY 's3cret!'; GRANT SELECT ON *.* TO {ident}@'%';"
    )
    try:
        url = mariadb.url(quote(user, safe=""), quote("s3cret!", safe=""))
        code, report = await doctor(url)
        assert code == 1, report
        assert "s3cret" not in report
        grant = f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {ident}@`%`;"
        assert grant in report
        assert row(report, "privileges").startswith("  FAIL")
        # the printed statement is the fix: run it as root and the doctor is satisfied
        mariadb.sql(grant)
        code, report = await doctor(url)
        assert code == 0, report
        assert row(report, "privileges").startswith("  ok  ")
    finally:
        mariadb.sql(f"DROP USER {ident}@'%';")


async def test_privileges_through_a_default_role(mariadb: PrivateMariaDB) -> None:
    tag = uuid.uuid4().hex[:8]
    user, outer, inner = f"roled_{tag}", f"tidings_{tag}", f"reader_{tag}"
    mariadb.sql(
        f"CREATE ROLE {inner}; GRANT SELECT ON *.* TO {inner};"
        f"CREATE ROLE {outer}; GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {outer};"
        f"GRANT {inner} TO {outer};"
        f"CREATE USER {user}@'%'; GRANT {outer} TO {user}@'%';"
    )
    try:
        code, report = await doctor(mariadb.url(user))
        assert code == 1, report  # the role is granted but not active at login
        assert outer in row(report, "privileges")
        mariadb.sql(f"SET DEFAULT ROLE {outer} FOR {user}@'%';")
        code, report = await doctor(mariadb.url(user))
        assert code == 0, report
    finally:
        mariadb.sql(f"DROP USER {user}@'%'; DROP ROLE {outer}; DROP ROLE {inner};")


async def test_wrong_password_exit_2_without_printing_it(mariadb: PrivateMariaDB) -> None:
    code, report = await doctor(mariadb.url("root", "not-the-password"))
    assert code == 2
    assert "not-the-password" not in report
    assert report.count("\n") == 1
    assert f"127.0.0.1:{mariadb.port}" in report and "Access denied" in report


async def test_nobody_listening_exit_2() -> None:
    port = free_port()
    code, report = await doctor(f"mysql://tidings:pw@127.0.0.1:{port}/")
    assert code == 2
    assert report.count("\n") == 1
    assert report.startswith(f"cannot connect to 127.0.0.1:{port} as 'tidings': ")
    assert "nothing listens" in report and "is the server running?" in report
    assert ":pw" not in report


async def test_peers_that_are_not_mysql_exit_2() -> None:
    """A port that never greets times out; one that talks HTTP is named as not MySQL."""
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    talker = await asyncio.start_server(http, "127.0.0.1", 0)
    try:
        for server, hint in ((quiet, "no MySQL greeting within 0.3s"), (talker, "is this a MySQL")):
            port = server.sockets[0].getsockname()[1]
            code, report = await doctor(f"mysql://u:pw@127.0.0.1:{port}/", connect_timeout=0.3)
            assert code == 2, report
            assert report.count("\n") == 1 and hint in report
            assert report.startswith(f"cannot connect to 127.0.0.1:{port} as 'u': ")
    finally:
        done.set()
        for server in (quiet, talker):
            server.close()
            await server.wait_closed()


async def test_socket_or_native_account_passes_authentication(mariadb: PrivateMariaDB) -> None:
    user = f"either_{uuid.uuid4().hex[:8]}"
    mariadb.sql(
        f"CREATE USER {user}@'%' IDENTIFIED VIA unix_socket OR mysql_native_password "
        f"USING PASSWORD('pw');"
        f"GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO {user}@'%';"
    )
    try:
        code, report = await doctor(mariadb.url(user, "pw"))
    finally:
        mariadb.sql(f"DROP USER {user}@'%';")
    assert code == 0, report
    assert row(report, "authentication") == (
        "  ok    authentication       unix_socket or mysql_native_password"
    )
