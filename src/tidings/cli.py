"""The `tidings` command: serve | tail | token | doctor | install-sql | demo."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Sequence

from tidings import __version__
from tidings.config import (
    ConfigError,
    Settings,
    add_arguments,
    auth_secret,
    from_arguments,
    load,
    parse_duration,
    parse_hostport,
)
from tidings.logs import setup_logging

DESCRIPTION = """\
tidings pushes every committed MySQL/MariaDB row change to subscribers the
moment it commits. It reads the binary log as a replica and serves the Redis
pub/sub protocol, so redis-cli and any Redis client library can SUBSCRIBE.

Channels are DATABASE.TABLE (e.g. shop.orders); glob patterns such as shop.*
work with PSUBSCRIBE. Each message is one JSON object:
  {"id":17,"channel":"shop.orders","type":"insert","database":"shop",
   "table":"orders","ts":1764190000,"gtid":"0-1-57","xid":940752,
   "data":{"id":1,"customer_id":42,"total":"9.90"}}
"""

EPILOG = """\
examples:
  tidings doctor --mysql mysql://repl:secret@127.0.0.1:3306/
  tidings serve  --mysql mysql://repl:secret@127.0.0.1:3306/ --resp 127.0.0.1:6380
  tidings serve  --mysql mysql://repl:secret@127.0.0.1:3306/ --state-dir /var/lib/tidings
  redis-cli -p 6380 SUBSCRIBE shop.orders
  tidings tail shop.orders 'shop.*'
  tidings token --channels 'shop.orders?customer_id=eq.42' --ttl 1h
  tidings demo
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Read the binlog of --mysql and serve subscribers. Settings come from flags, "
        "then TIDINGS_* environment variables, then the --config TOML file, then defaults.",
    )
    add_arguments(serve)

    tail = sub.add_parser(
        "tail",
        help="subscribe and print events",
        description="Subscribe to channels (globs such as 'shop.*' allowed) and print each event "
        "on one line as it arrives.",
    )
    tail.add_argument("channels", nargs="+", metavar="CHANNEL")
    tail.add_argument(
        "--resp",
        default="127.0.0.1:6380",
        metavar="HOST:PORT",
        help="the daemon's RESP listener (default 127.0.0.1:6380)",
    )
    tail.add_argument(
        "--tls", action="store_true", help="connect with TLS (to a daemon with --tls-cert)"
    )
    tail.add_argument(
        "--cacert",
        metavar="FILE",
        help="with TLS, trust the CA certificates in FILE instead of the system's (implies --tls)",
    )
    tail.add_argument("--pretty", action="store_true", help="print each event as indented JSON")
    tail.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N events (default: run until interrupted)",
    )
    tail.add_argument(
        "--token", metavar="TOKEN", help="AUTH with this token first (a daemon with a secret)"
    )

    status = sub.add_parser(
        "status",
        help="show what a running daemon is doing (health, binlog, connections, channels)",
        description="Ask a running daemon's HTTP listener (GET /healthz and GET /stats) and "
        "print its health, binlog position and lag, connections by protocol, subscriptions, "
        "event counts and busiest channels. Exit status: 0 healthy, 1 unhealthy, 2 not "
        "reachable or refused.",
    )
    status.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="the daemon's HTTP listener (default 127.0.0.1:8080)",
    )
    status.add_argument(
        "--token",
        metavar="TOKEN",
        help="an admin token, for a daemon with an auth secret not listening on loopback",
    )
    status.add_argument("--tls", action="store_true", help="HTTPS (a daemon with --tls-cert)")
    status.add_argument(
        "--cacert", metavar="FILE", help="with HTTPS, trust this CA (implies --tls)"
    )
    status.add_argument("--json", action="store_true", help="print /stats and health as JSON")

    token = sub.add_parser(
        "token",
        help="mint a signed token that lets a client subscribe (JWT HS256)",
        description="Print a token signed with the daemon's auth secret, alone on stdout. The "
        "secret is found as `serve` finds it: --auth-secret / --auth-secret-file, then "
        "TIDINGS_AUTH_SECRET / TIDINGS_AUTH_SECRET_FILE, then the --config file. See "
        "docs/reference/auth.md for what each entry allows.",
    )
    token.add_argument(
        "--channels",
        "--channel",
        action="append",
        default=[],
        metavar="ENTRY",
        help="channel entry the token may receive, repeatable: a channel or Redis glob "
        "(shop.orders, 'shop.*'), optionally with a row filter "
        "('shop.orders?customer_id=eq.42')",
    )
    token.add_argument(
        "--ttl", default="1h", help="how long the token is valid: 30s, 15m, 1h, 7d (default 1h)"
    )
    token.add_argument("--subject", metavar="SUB", help="who the token is for (the 'sub' claim)")
    token.add_argument(
        "--admin",
        action="store_true",
        help="also allow /channels, /metrics, POST /publish, RESP PUBSUB and publishing anywhere",
    )
    token.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="GLOB",
        help="channels (Redis glob) the token may PUBLISH to, repeatable",
    )
    token.add_argument("--config", metavar="FILE", help="TOML settings file (as for serve)")
    token.add_argument("--auth-secret", metavar="SECRET", help="the secret (as for serve)")
    token.add_argument("--auth-secret-file", metavar="FILE", help="file holding the secret")

    doctor = sub.add_parser(
        "doctor",
        help="check a MySQL/MariaDB server's settings and grants",
        description="Check everything tidings needs from the server (binlog on, ROW format, FULL "
        "row image and metadata, server_id, GTIDs, grants, retention) and print the exact SQL or "
        "config line that fixes each problem. Exit 0 when ready, 1 when something must be fixed, "
        "2 when the server cannot be reached.",
    )
    doctor.add_argument(
        "--mysql", required=True, metavar="URL", help="e.g. mysql://repl:secret@127.0.0.1:3306/"
    )
    doctor.add_argument(
        "--allow-names-from-schema",
        action="store_true",
        help="accept binlog_row_metadata=MINIMAL (see `serve --names-from-schema`)",
    )
    doctor.add_argument(
        "--server-id",
        type=int,
        default=Settings().server_id,
        metavar="N",
        help="the server_id tidings will register with (checked for clashes)",
    )

    install_sql = sub.add_parser(
        "install-sql",
        help="create the NOTIFY outbox table and procedure (transactional NOTIFY)",
        description="Create (idempotently) a schema with an InnoDB outbox table and a procedure, "
        "so applications and triggers can CALL tidings.notify('channel', 'payload') inside their "
        "transactions; subscribers of `channel` receive it once the transaction commits.",
    )
    install_sql.add_argument(
        "--mysql", required=True, metavar="URL", help="e.g. mysql://admin:secret@127.0.0.1:3306/"
    )
    install_sql.add_argument(
        "--schema", default="tidings", help="schema to create it in (default: tidings)"
    )
    install_sql.add_argument(
        "--print",
        action="store_true",
        help="print the SQL (a script for the mysql client) instead of running it",
    )

    demo = sub.add_parser(
        "demo",
        help="run a self-contained demo (private MariaDB, writer, live subscriber)",
        description="Start a private MariaDB in a temporary directory, run tidings against it, "
        "write sample orders and print what a subscriber receives. Needs mariadbd installed.",
    )
    demo.add_argument(
        "--seconds", type=float, default=15.0, help="how long the writer runs (default 15)"
    )
    return parser


def _status(args: argparse.Namespace) -> int:
    import orjson

    from tidings.status import StatusError, fetch, render
    from tidings.tail import client_context

    host, port = parse_hostport(args.http)
    tls = client_context(args.cacert) if args.tls or args.cacert else None
    try:
        health, stats = fetch(host, port, token=args.token, tls=tls)
    except StatusError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps({"healthy": health.status == 200, "health": health.body,
                            "stats": stats}).decode())  # fmt: skip
    else:
        scheme = "https" if tls else "http"
        render(f"{scheme}://{host}:{port}", health, stats, sys.stdout)
    return 0 if health.status == 200 else 1


def _token(args: argparse.Namespace) -> int:
    from tidings.auth import mint

    settings = load(
        args.config,
        overrides={"auth_secret": args.auth_secret, "auth_secret_file": args.auth_secret_file},
    )
    secret = auth_secret(settings)
    if secret is None:
        raise ConfigError(
            "no auth secret: pass --auth-secret-file (or --auth-secret), set "
            "TIDINGS_AUTH_SECRET_FILE or TIDINGS_AUTH_SECRET, or put auth_secret_file in the "
            "--config file, as for `tidings serve`"
        )
    if not (args.channels or args.admin or args.publish):
        raise ConfigError("the token would allow nothing: give --channels (or --admin, --publish)")
    ttl = parse_duration(args.ttl)
    if ttl <= 0:
        raise ConfigError("--ttl must be more than 0 seconds")
    print(mint(secret, args.channels, ttl, args.subject, args.admin, args.publish))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tidings.daemon import install_uvloop

    try:
        if args.command == "serve":
            settings = from_arguments(args)
            setup_logging(settings.log_level, settings.log_format)
            from tidings.daemon import serve
            from tidings.source.replica import ReplicaError
            from tidings.state import StateError
            from tidings.workers.supervisor import WorkerError

            install_uvloop()
            try:
                asyncio.run(serve(settings, lambda: from_arguments(args)))
            except ReplicaError as exc:
                print(f"tidings: replication stopped: {exc}", file=sys.stderr)
                return 1
            except (StateError, WorkerError) as exc:
                print(f"tidings: {exc}", file=sys.stderr)
                return 1
            return 0
        if args.command == "tail":
            from tidings.tail import ReplyError, client_context, tail

            host, port = parse_hostport(args.resp)
            tls = client_context(args.cacert) if args.tls or args.cacert else None
            install_uvloop()
            try:
                return asyncio.run(
                    tail(
                        host,
                        port,
                        args.channels,
                        pretty=args.pretty,
                        count=args.count,
                        token=args.token,
                        tls=tls,
                    )
                )
            except ReplyError as exc:
                print(f"tidings: the daemon said: {exc}", file=sys.stderr)
                return 1
        if args.command == "token":
            return _token(args)
        if args.command == "status":
            return _status(args)
        if args.command == "doctor":
            from tidings.source.doctor import run_doctor
            from tidings.source.url import MySQLURL

            url = MySQLURL.parse(args.mysql)
            return asyncio.run(
                run_doctor(
                    url,
                    sys.stdout,
                    allow_names_from_schema=args.allow_names_from_schema,
                    replica_server_id=args.server_id,
                )
            )
        if args.command == "install-sql":
            from tidings.source.notify import install_main

            return asyncio.run(
                install_main(args.mysql, args.schema, sys.stdout, print_only=args.print)
            )
        if args.command == "demo":
            setup_logging("warning")
            from tidings.demo import demo_main

            return demo_main(args.seconds)
    except ssl.SSLError as exc:  # before ValueError: an untrusted certificate is both
        print(f"tidings: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError) as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ConnectionError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
