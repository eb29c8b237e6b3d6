"""Settings: defaults < TOML file < TIDINGS_* environment < flags, with clear errors."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from tidings.config import (
    ConfigError,
    Settings,
    add_arguments,
    auth_secret,
    from_arguments,
    load,
    parse_duration,
    parse_size,
)
from tidings.source.changes import Position


def parse(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(argv), env or {})


def test_defaults() -> None:
    s = load(env={})
    assert s == Settings()
    assert s.resp == "127.0.0.1:6380" and not s.allow_publish and s.output_limit == 1 << 20


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    conf = tmp_path / "tidings.toml"
    conf.write_text('resp = "127.0.0.1:7000"\nserver-id = 55\nmax_bulk = "1k"\nheartbeat = 2.5\n')
    s = parse(["--config", str(conf)], {})
    assert (s.resp, s.server_id, s.max_bulk, s.heartbeat) == ("127.0.0.1:7000", 55, 1024, 2.5)
    s = parse(["--config", str(conf)], {"TIDINGS_SERVER_ID": "66", "TIDINGS_ALLOW_PUBLISH": "yes"})
    assert (s.server_id, s.allow_publish) == (66, True)
    s = parse(
        ["--config", str(conf), "--server-id", "77", "--no-allow-publish", "--output-limit", "2M"],
        {"TIDINGS_SERVER_ID": "66", "TIDINGS_ALLOW_PUBLISH": "yes"},
    )
    assert (s.server_id, s.allow_publish, s.output_limit) == (77, False, 2 << 20)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"TIDINGS_SERVER_ID": "abc"}, "server_id"),
        ({"TIDINGS_NO_SUCH": "1"}, "unknown environment variable TIDINGS_NO_SUCH"),
        ({"TIDINGS_RESP": "nonsense"}, "HOST:PORT"),
        ({"TIDINGS_SERVER_ID": "0"}, "server_id must be between"),
        ({"TIDINGS_ALLOW_PUBLISH": "maybe"}, "true or false"),
        ({"TIDINGS_OUTPUT_LIMIT": "lots"}, "expected a size"),
        ({"TIDINGS_RESP": "127.0.0.1:\u00b2"}, "HOST:PORT"),  # a digit, but not 0-9
        ({"TIDINGS_TLS_KEY": "k.pem"}, "tls_key is set but tls_cert is not"),
        ({"TIDINGS_TLS_LISTENERS": "resp,https"}, "tls_listeners must be resp, http"),
        ({"TIDINGS_TLS_LISTENERS": ""}, "tls_listeners must be resp, http"),
        ({"TIDINGS_TLS_MIN_VERSION": "1.1"}, "tls_min_version must be 1.2 or 1.3"),
        ({"TIDINGS_TLS_HANDSHAKE_TIMEOUT": "0"}, "tls_handshake_timeout must be > 0"),
    ],
)
def test_bad_values_name_the_setting(source: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(env=source)


def test_the_pure_python_switch_is_not_a_setting() -> None:
    """TIDINGS_PURE_PYTHON shares the prefix but is read by tidings.wire.outbox."""
    assert load(env={"TIDINGS_PURE_PYTHON": "1"}) == load(env={})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("resp = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load(unknown, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # found by fuzz/config.py: a file that is not UTF-8 raised UnicodeDecodeError
        (b'state_dir = "/var/lib/\xc6"\n', "is not UTF-8"),
        (b"mark_every = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests too deeply"),
        (b"server_id = [1, 2]\n", "setting 'server_id': expected a string or a number"),
        (b"state_dir = { a = 1 }\n", "setting 'state_dir': expected a string or a number"),
        (b"start = 1979-05-27\n", "setting 'start': expected a string or a number"),
        (b"heartbeat = nan\n", "setting 'heartbeat': expected a finite number"),
        (b"sse_heartbeat = inf\n", "setting 'sse_heartbeat': expected a finite number"),
        (b"mark_every = inf\n", "setting 'mark_every'"),
    ],
)
def test_bad_file_contents_are_config_errors(tmp_path: Path, text: bytes, message: str) -> None:
    conf = tmp_path / "tidings.toml"
    conf.write_bytes(text)
    with pytest.raises(ConfigError, match=message):
        load(conf, env={})


def test_which_listeners_speak_tls() -> None:
    both = Settings(tls_cert="c.pem", http="127.0.0.1:8080")
    assert both.tls_for("resp") and both.tls_for("http")
    http_only = Settings(tls_cert="c.pem", http="127.0.0.1:8080", tls_listeners=" http ")
    assert not http_only.tls_for("resp") and http_only.tls_for("http")
    assert not Settings(tls_cert="c.pem", http="").tls_for("http")  # the HTTP listener is off
    assert not Settings(http="127.0.0.1:8080").tls_for("resp")  # no certificate: no TLS


def test_sizes() -> None:
    assert [parse_size(t) for t in ("10", "64k", "64KiB", "1M", "1mb", "2G")] == [
        10, 65536, 65536, 1 << 20, 1 << 20, 2 << 30,
    ]  # fmt: skip


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "15m", "1h", "7d", " 2H ")] == [
        90, 30, 900, 3600, 7 * 86400, 7200,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="expected a duration such as 30s"):
        parse_duration("1w")


SECRET = "k" * 32


def test_auth_secret_from_each_source_never_shown(tmp_path: Path) -> None:
    assert auth_secret(load(env={})) is None
    s = load(env={"TIDINGS_AUTH_SECRET": SECRET})
    assert auth_secret(s) == SECRET.encode()
    assert SECRET not in repr(s) and SECRET not in str(s)
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"  {SECRET}x\n")
    s = parse(["--auth-secret-file", str(secret_file)])
    assert auth_secret(s) == f"{SECRET}x".encode()
    conf = tmp_path / "tidings.toml"
    conf.write_text(f'auth_secret = "{SECRET}"\n')
    assert auth_secret(parse(["--config", str(conf)])) == SECRET.encode()
    # a higher source naming the other spelling wins over the file's
    s = parse(["--config", str(conf)], {"TIDINGS_AUTH_SECRET_FILE": str(secret_file)})
    assert (s.auth_secret, auth_secret(s)) == ("", f"{SECRET}x".encode())
    s = parse(["--auth-secret", SECRET + "y"], {"TIDINGS_AUTH_SECRET_FILE": str(secret_file)})
    assert auth_secret(s) == f"{SECRET}y".encode()


def test_bad_auth_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_secret: the auth secret is 31 bytes; use at"):
        load(env={"TIDINGS_AUTH_SECRET": SECRET[:-1]})
    with pytest.raises(ConfigError, match="not both"):
        load(env={"TIDINGS_AUTH_SECRET": SECRET, "TIDINGS_AUTH_SECRET_FILE": "/x"})
    with pytest.raises(ConfigError, match="cannot read auth_secret_file /nonexistent/s"):
        auth_secret(load(env={"TIDINGS_AUTH_SECRET_FILE": "/nonexistent/s"}))
    short = tmp_path / "short"
    short.write_text("tiny\n")
    with pytest.raises(ConfigError, match="is 4 bytes; use at least 32"):
        auth_secret(load(env={"TIDINGS_AUTH_SECRET_FILE": str(short)}))


def test_start_positions() -> None:
    assert Position.parse("end") is None
    assert Position.parse("mysql-bin.000003:4") == Position("mysql-bin.000003", 4)
    assert Position.parse("0-1-57") == Position("", 4, gtid="0-1-57")
    assert Position.parse("0-1-57,1-2-3") == Position("", 4, gtid="0-1-57,1-2-3")
    uuid_set = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"
    assert Position.parse(uuid_set) == Position("", 4, gtid=uuid_set)
    one = "3E11FA47-71CA-11E1-9E33-C80AA9429562:5"
    assert Position.parse(one) == Position("", 4, gtid=one)


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "reference" / "settings.md").read_text()
    missing = [f.name for f in fields(Settings) if f"| `{f.name}` |" not in doc]
    assert not missing, f"docs/reference/settings.md lacks {missing}"
