"""What TLS costs an idle subscriber: the daemon's RSS with N idle RESP subscribers, plain
text beside TLS (certificates made by trustme, a dev dependency).

For each mode a fresh `tidings serve` (pub/sub only, uvloop as in production) gets N
connections from this process, each SUBSCRIBEd to a channel of its own and then silent,
and a PING round trip over each first, so every connection has read and written.
The RSS is read before and after; the difference over N is the cost per connection.

    .venv/bin/python bench/tls_idle.py [--count 1000]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import trustme
from harness import TIDINGS, free_port, log, machine, raise_nofile, resp_command, rss_bytes, table


def _connect(port: int, context: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def _ask(sock: socket.socket, command: bytes, ending: bytes) -> None:
    sock.sendall(command)
    got = b""
    while not got.endswith(ending):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        got += chunk


def measure(count: int, tls: tuple[Path, ssl.SSLContext] | None, logdir: Path) -> tuple[int, int]:
    """RSS of the daemon before and after `count` idle subscribers."""
    port = free_port()
    cmd = [str(TIDINGS), "serve", "--resp", f"127.0.0.1:{port}"]
    if tls is not None:
        cmd += ["--tls-cert", str(tls[0])]
    context = tls[1] if tls else None
    with open(logdir / f"tidings-{port}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                probe = _connect(port, context)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        _ask(probe, resp_command(b"PING"), b"+PONG\r\n")
        time.sleep(0.5)
        before = rss_bytes(proc.pid)
        for n in range(count):
            sock = _connect(port, context)
            _ask(sock, resp_command(b"PING"), b"+PONG\r\n")
            _ask(sock, resp_command(b"SUBSCRIBE", b"idle.%d" % n), b":1\r\n")
            held.append(sock)
        time.sleep(1.0)
        return before, rss_bytes(proc.pid)
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    raise_nofile()
    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pem = Path(tmp) / "server.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        for name, tls in (("plain", None), ("TLS", (pem, client))):
            before, after = measure(args.count, tls, Path(tmp))
            per = (after - before) / args.count
            log(f"{name}: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, {per:,.0f} B/conn")
            rows.append((name, args.count, before / 2**20, after / 2**20, round(per)))
    print(machine())
    print(table(["mode", "idle subscribers", "RSS before MiB", "RSS after MiB",
                 "bytes per connection"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
