"""TLS on the RESP and HTTP listeners, with real clients and certificates made here (trustme):
redis-py, redis-cli and curl with their CA option, `websockets` over wss://, a plain-text
client on a TLS port, a client that never finishes its handshake, and certificate reloads
(in-process and through `tidings serve` with a real SIGHUP) that keep clients connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import os
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import trustme
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from tests.system.daemons import receive, start_daemon, stop_daemon, wait_for
from tests.system.test_cli import TIDINGS, Lines
from tidings.config import Settings
from tidings.daemon import Daemon
from tidings.sandbox import PrivateMariaDB, free_port

_dbs = itertools.count(1)
TIMEOUT = 20


@pytest.fixture
def schema(mariadb: PrivateMariaDB) -> str:
    name = f"tls{next(_dbs)}"
    mariadb.sql(f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v TEXT)")
    return name


@dataclass
class Pki:
    """Two unrelated CAs, and the certificate and key files the daemon is given."""

    dir: Path
    a: trustme.CA
    b: trustme.CA

    @property
    def cert_file(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.dir / "server.key"

    def settings(self) -> dict[str, Any]:
        return {"tls_cert": str(self.cert_file), "tls_key": str(self.key_file)}

    def install(self, ca: trustme.CA, days: int = 365) -> trustme.LeafCert:
        """Write a new certificate of `ca` for 127.0.0.1 into the daemon's files."""
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        leaf = ca.issue_cert("localhost", "127.0.0.1", not_after=expiry)
        leaf.cert_chain_pems[0].write_to_path(str(self.cert_file))
        leaf.private_key_pem.write_to_path(str(self.key_file))
        return leaf

    def ca_file(self, ca: trustme.CA) -> str:
        path = self.dir / ("ca-a.pem" if ca is self.a else "ca-b.pem")
        ca.cert_pem.write_to_path(str(path))
        return str(path)

    def trusting(self, ca: trustme.CA) -> ssl.SSLContext:
        """A client context that trusts `ca` only (and checks the name, 127.0.0.1)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path, trustme.CA(), trustme.CA())
    pki.install(pki.a)
    return pki


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def served_certificate(
    address: tuple[str, int], context: ssl.SSLContext, alpn: list[str] | None = None
) -> tuple[bytes, str | None]:
    """The certificate a new TLS connection is shown (DER), and the ALPN protocol chosen."""
    if alpn:
        context.set_alpn_protocols(alpn)
    _, writer = await asyncio.wait_for(asyncio.open_connection(*address, ssl=context), TIMEOUT)
    tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
    cert, protocol = tls.getpeercert(binary_form=True), tls.selected_alpn_protocol()
    writer.close()
    assert cert is not None
    return cert, protocol


def not_after(cert_file: Path) -> float:
    leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return leaf.not_valid_after_utc.timestamp()


async def expiry_on_metrics(daemon: Daemon, context: ssl.SSLContext) -> float:
    """The certificate expiry /metrics reports, read over HTTPS."""
    assert daemon.http_address is not None
    reader, writer = await asyncio.open_connection(*daemon.http_address, ssl=context)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    text = response.partition(b"\r\n\r\n")[2].decode()
    for family in text_string_to_metric_families(text):
        if family.name == "tidings_tls_certificate_expiry_timestamp_seconds":
            (sample,) = family.samples
            return float(sample.value)
    raise AssertionError(f"no certificate expiry in /metrics:\n{text}")


async def tls_subscriber(daemon: Daemon, ca_file: str, channel: str) -> aioredis.client.PubSub:
    """A redis-py PubSub over TLS, subscribed to `channel`."""
    assert daemon.resp_address is not None
    host, port = daemon.resp_address
    client = aioredis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=ca_file)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    confirmation = await pubsub.get_message(timeout=TIMEOUT)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


async def wss_subscriber(daemon: Daemon, context: ssl.SSLContext, channel: str) -> ClientConnection:
    assert daemon.http_address is not None
    host, port = daemon.http_address
    url = f"wss://{host}:{port}/ws"
    client = await connect(url, ssl=context)
    await client.send(orjson.dumps({"op": "subscribe", "channel": channel}).decode())
    reply = orjson.loads(await asyncio.wait_for(client.recv(), TIMEOUT))
    assert reply == {"op": "subscribed", "channel": channel}
    return client


async def ws_event(client: ClientConnection) -> Any:
    return orjson.loads(await asyncio.wait_for(client.recv(), TIMEOUT))


async def test_redis_py_subscribes_over_tls_and_plain_text_clients_are_turned_away(
    mariadb: PrivateMariaDB,
    replica_server_id: int,
    schema: str,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, **pki.settings())
    try:
        assert daemon.resp_address is not None
        channel = f"{schema}.t"
        pubsub = await tls_subscriber(daemon, pki.ca_file(pki.a), channel)

        # a plain-text Redis client gets a closed connection, not an answer
        host, port = daemon.resp_address
        plain = aioredis.Redis(host=host, port=port, socket_timeout=TIMEOUT)
        with pytest.raises(redis.exceptions.ConnectionError):
            await plain.ping()
        await plain.aclose()
        reader, writer = await asyncio.open_connection(*daemon.resp_address)
        writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nx.yz\r\n")
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
        assert b"subscribe" not in answer
        writer.close()

        # ... and the TLS subscriber never noticed
        mariadb.sql(f"INSERT INTO {channel} VALUES (1, 'over tls')")
        (event,) = await receive(pubsub, 1)
        assert event["type"] == "insert" and event["data"] == {"n": 1, "v": "over tls"}
        assert daemon.resp is not None and daemon.resp.connections_open == 1
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await wait_for(lambda: daemon.resp is not None and not daemon.resp.connections_open)
        # a TLS client's goodbye is quiet too (asyncio warns if the protocol asks for half-open)
        assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    finally:
        await stop_daemon(daemon)


async def test_websocket_over_wss_and_sse_over_https_with_curl(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str, pki: Pki
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", **pki.settings())
    curl: asyncio.subprocess.Process | None = None
    try:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        channel = f"{schema}.t"
        _, alpn = await served_certificate(daemon.http_address, pki.trusting(pki.a),
                                           ["h2", "http/1.1"])  # fmt: skip
        assert alpn == "http/1.1"  # a browser offering HTTP/2 is told HTTP/1.1

        ws = await wss_subscriber(daemon, pki.trusting(pki.a), channel)
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sSN", "--cacert", pki.ca_file(pki.a),
            f"https://{host}:{port}/sse?channel={channel}",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await wait_for(lambda: daemon.hub.subscriber_count(channel) == 2, what="both subscribed")
        mariadb.sql(f"INSERT INTO {channel} VALUES (1, 'secure')")

        event = await ws_event(ws)
        assert event["type"] == "insert" and event["data"] == {"n": 1, "v": "secure"}
        assert curl.stdout is not None
        while not (line := await asyncio.wait_for(curl.stdout.readline(), TIMEOUT)).startswith(
            b"data: "
        ):
            assert line, "curl's stream ended"
        assert json.loads(line[len(b"data: ") :]) == event  # the same event, byte for byte JSON

        health = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--cacert", pki.ca_file(pki.a), f"https://{host}:{port}/healthz",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        body, _ = await asyncio.wait_for(health.communicate(), TIMEOUT)
        assert health.returncode == 0 and json.loads(body)["status"] == "ok"
        await ws.close()
    finally:
        if curl is not None and curl.returncode is None:
            curl.kill()
            await curl.wait()
        await stop_daemon(daemon)


async def test_tls_on_http_only_keeps_resp_in_plain_text(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str, pki: Pki
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0",
                                tls_listeners="http", **pki.settings())  # fmt: skip
    try:
        assert daemon.resp_address is not None and daemon.http_address is not None
        host, port = daemon.resp_address
        plain = aioredis.Redis(host=host, port=port)
        assert await plain.ping()  # plain RESP answers
        await plain.aclose()
        cert, _ = await served_certificate(daemon.http_address, pki.trusting(pki.a))
        assert cert == ssl.PEM_cert_to_DER_cert(pki.cert_file.read_text())
    finally:
        await stop_daemon(daemon)


@contextlib.asynccontextmanager
async def sourceless_daemon(**settings: Any) -> AsyncIterator[Daemon]:
    """A daemon with no database (pub/sub only), listening on free ports."""
    daemon = Daemon(Settings(mysql="", resp="127.0.0.1:0", http="127.0.0.1:0", **settings))
    task = asyncio.ensure_future(daemon.run())
    try:
        await wait_for(lambda: daemon.http_address is not None or task.done(), what="listening")
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, TIMEOUT)


async def test_a_client_that_never_finishes_the_handshake_is_closed_after_the_timeout(
    pki: Pki,
) -> None:
    async with sourceless_daemon(tls_handshake_timeout=0.5, **pki.settings()) as daemon:
        assert daemon.resp_address is not None and daemon.http_address is not None
        loop = asyncio.get_running_loop()

        async def stall(address: tuple[str, int], first_bytes: bytes) -> float:
            """Seconds until the server hangs up on a client that stops mid-handshake."""
            start = loop.time()
            reader, writer = await asyncio.open_connection(*address)
            writer.write(first_bytes)
            with contextlib.suppress(ConnectionResetError):
                await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
            writer.close()
            return loop.time() - start

        # silent, or the first bytes of a ClientHello record and then nothing
        stalls = [stall(address, first) for address in (daemon.resp_address, daemon.http_address)
                  for first in (b"", b"\x16\x03\x01\x02\x00\x01")]  # fmt: skip
        times = await asyncio.gather(*stalls)
        assert all(0.4 < t < 5 for t in times), times  # the setting, not asyncio's 60 s
        assert daemon.resp is not None and daemon.resp.connections_open == 0
        cert, _ = await served_certificate(daemon.resp_address, pki.trusting(pki.a))
        assert cert == ssl.PEM_cert_to_DER_cert(pki.cert_file.read_text())


async def test_a_tls_subscriber_that_stops_reading_is_cut_at_the_output_limit(pki: Pki) -> None:
    """The output bound holds through the TLS transport: a stalled reader is cut, others go on."""
    limit = 256 * 1024
    settings = {"allow_publish": True, "output_limit": limit, **pki.settings()}
    async with sourceless_daemon(**settings) as daemon:
        assert daemon.resp_address is not None and daemon.resp is not None
        host, port = daemon.resp_address
        ca_file = pki.ca_file(pki.a)
        # the stalled one: subscribes, then never reads (its kernel buffers fill, then ours)
        reader, writer = await asyncio.open_connection(host, port, ssl=pki.trusting(pki.a))
        writer.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nbulk\r\n")
        await asyncio.wait_for(reader.readuntil(b":1\r\n"), TIMEOUT)
        healthy = await tls_subscriber(daemon, ca_file, "bulk")
        publisher = aioredis.Redis(host=host, port=port, ssl=True, ssl_ca_certs=ca_file)
        payload = b"x" * 16384
        received = 0
        for _ in range(2000):  # up to 32 MiB, far more than kernel buffers and the limit
            await publisher.publish("bulk", payload)
            while (message := await healthy.get_message(timeout=0)) is not None:
                received += message["type"] == "message"
            if daemon.resp.slow_consumers_cut:
                break
        assert daemon.resp.slow_consumers_cut == 1
        resp = daemon.resp
        # closed, then aborted once the linger (outbox.LINGER, 5 s) passes without it reading
        await wait_for(lambda: resp.connections_open == 2, 15, "the stalled reader gone")
        await publisher.publish("bulk", b"after the cut")
        while (message := await healthy.get_message(timeout=TIMEOUT)) is not None:
            if message["data"] == b"after the cut":
                break
            received += 1
        assert message is not None and received > 0
        writer.transport.abort()
        await publisher.aclose()
        await healthy.aclose()  # type: ignore[no-untyped-call]


async def test_reload_serves_the_new_certificate_and_keeps_connected_clients(
    mariadb: PrivateMariaDB, replica_server_id: int, schema: str, pki: Pki
) -> None:
    daemon = await start_daemon(mariadb, replica_server_id, http="127.0.0.1:0", **pki.settings())
    try:
        assert daemon.resp_address is not None and daemon.http_address is not None
        channel = f"{schema}.t"
        resp_before = await tls_subscriber(daemon, pki.ca_file(pki.a), channel)
        ws_before = await wss_subscriber(daemon, pki.trusting(pki.a), channel)

        assert await expiry_on_metrics(daemon, pki.trusting(pki.a)) == not_after(pki.cert_file)
        leaf_b = pki.install(pki.b, days=90)  # another CA: a client trusting only A must fail
        daemon.reload()
        assert await expiry_on_metrics(daemon, pki.trusting(pki.b)) == not_after(pki.cert_file)

        for address in (daemon.resp_address, daemon.http_address):
            cert, _ = await served_certificate(address, pki.trusting(pki.b))
            assert cert == der(leaf_b)
            with pytest.raises(ssl.SSLCertVerificationError):
                await served_certificate(address, pki.trusting(pki.a))
        ws_after = await wss_subscriber(daemon, pki.trusting(pki.b), channel)

        mariadb.sql(f"INSERT INTO {channel} VALUES (1, 'after the reload')")
        (event,) = await receive(resp_before, 1)
        assert event["data"] == {"n": 1, "v": "after the reload"}
        assert await ws_event(ws_before) == event
        assert await ws_event(ws_after) == event
        for ws in (ws_before, ws_after):
            await ws.close()
        await resp_before.aclose()  # type: ignore[no-untyped-call]
    finally:
        await stop_daemon(daemon)


async def test_reload_with_bad_files_keeps_the_old_certificate(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with sourceless_daemon(**pki.settings()) as daemon:
        assert daemon.resp_address is not None and daemon.tls is not None
        serving = ssl.PEM_cert_to_DER_cert(pki.cert_file.read_text())
        good_key = pki.key_file.read_bytes()
        other_key = pki.b.issue_cert("localhost").private_key_pem.bytes()

        def mismatched_key() -> None:
            pki.key_file.write_bytes(other_key)

        def missing_cert() -> None:
            pki.key_file.write_bytes(good_key)
            pki.cert_file.rename(pki.dir / "moved.crt")

        cases = [
            (mismatched_key, f"the private key in {pki.key_file} does not match the "
                             f"certificate in {pki.cert_file}"),
            (missing_cert, f"cannot read the TLS certificate file {pki.cert_file}: "
                           "No such file or directory"),
        ]  # fmt: skip
        for breakage, message in cases:
            breakage()
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="tidings.tls"):
                daemon.reload()
            assert [r.getMessage() for r in caplog.records] == [
                f"TLS reload failed, still serving the previous certificate: {message}"
            ]
            for address in (daemon.resp_address, daemon.http_address):
                assert address is not None
                cert, _ = await served_certificate(address, pki.trusting(pki.a))
                assert cert == serving


# -- through the command line: `tidings serve`, redis-cli --tls, kill -HUP --------------------
def test_serve_refuses_to_start_with_a_bad_certificate(pki: Pki) -> None:
    missing = pki.dir / "missing.pem"
    mismatched = pki.dir / "other.key"
    pki.b.issue_cert("localhost").private_key_pem.write_to_path(str(mismatched))
    cases = [
        (["--tls-cert", str(missing)],
         f"cannot read the TLS certificate file {missing}: No such file or directory"),
        (["--tls-cert", str(pki.cert_file)],
         f"no PEM private key (-----BEGIN PRIVATE KEY-----) in {pki.cert_file} "
         "(give the key file with --tls-key)"),
        (["--tls-cert", str(pki.cert_file), "--tls-key", str(mismatched)],
         f"the private key in {mismatched} does not match the certificate in {pki.cert_file}"),
    ]  # fmt: skip
    for flags, message in cases:
        result = subprocess.run(
            [*TIDINGS, "serve", "--resp", "127.0.0.1:0", *flags],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == f"tidings: {message}"


def test_serve_with_redis_cli_tls_and_a_reload_on_sighup(
    mariadb: PrivateMariaDB, replica_server_id: int, pki: Pki
) -> None:
    mariadb.sql("CREATE DATABASE IF NOT EXISTS clitls; "
                "CREATE TABLE clitls.t (n INT PRIMARY KEY, v TEXT)")  # fmt: skip
    resp, http = free_port(), free_port()
    env = {**os.environ, "TIDINGS_SERVER_ID": str(replica_server_id), "TIDINGS_LOG_LEVEL": "info"}
    serve = subprocess.Popen(
        [*TIDINGS, "serve", "--mysql", mariadb.url(), "--resp", f"127.0.0.1:{resp}",
         "--http", f"127.0.0.1:{http}", "--tls-cert", str(pki.cert_file),
         "--tls-key", str(pki.key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    cli: subprocess.Popen[str] | None = None
    try:
        log = Lines(serve)

        def logged(text: str) -> str:
            while text not in (line := log.next()):
                pass
            return line

        logged("starting at the current end of the binlog")
        cli = subprocess.Popen(
            ["redis-cli", "--tls", "--cacert", pki.ca_file(pki.a), "-h", "127.0.0.1",
             "-p", str(resp), "SUBSCRIBE", "clitls.t"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out = Lines(cli)
        assert [out.next() for _ in range(3)] == ["subscribe", "clitls.t", "1"]
        address = ["--resp", f"127.0.0.1:{resp}"]
        untrusted = subprocess.run([*TIDINGS, "tail", *address, "--tls", "clitls.t"],
                                   capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        tail = subprocess.Popen(
            [*TIDINGS, "tail", *address, "--cacert", pki.ca_file(pki.a), "--count", "1",
             "clitls.*"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        numpat = ["redis-cli", "--tls", "--cacert", pki.ca_file(pki.a), "-p", str(resp),
                  "PUBSUB", "NUMPAT"]  # fmt: skip
        for _ in range(200):
            if subprocess.run(numpat, capture_output=True, text=True).stdout.strip() == "1":
                break
        else:
            raise AssertionError("tidings tail never subscribed")
        mariadb.sql("INSERT INTO clitls.t VALUES (1, 'before')")
        assert [out.next() for _ in range(2)] == ["message", "clitls.t"]
        event = json.loads(out.next())
        assert event["data"] == {"n": 1, "v": "before"}
        tailed, _ = tail.communicate(timeout=TIMEOUT)
        assert tail.returncode == 0
        assert tailed.startswith(f"#{event['id']} clitls.t insert ")

        leaf_b = pki.install(pki.b)
        serve.send_signal(signal.SIGHUP)
        assert "TLS certificate reloaded from" in logged("TLS certificate reloaded")
        for port in (resp, http):
            cert, _ = asyncio.run(served_certificate(("127.0.0.1", port), pki.trusting(pki.b)))
            assert cert == der(leaf_b)
        health = subprocess.run(
            ["curl", "-sS", "--cacert", pki.ca_file(pki.b), f"https://127.0.0.1:{http}/healthz"],
            capture_output=True, text=True, timeout=TIMEOUT, check=True,
        )  # fmt: skip
        assert json.loads(health.stdout)["status"] == "ok"

        # redis-cli, connected with the old certificate, still receives
        mariadb.sql("INSERT INTO clitls.t VALUES (2, 'after')")
        assert [out.next() for _ in range(2)] == ["message", "clitls.t"]
        assert json.loads(out.next())["data"] == {"n": 2, "v": "after"}

        # a bad pair on SIGHUP: logged, the daemon serves on with B
        pki.key_file.write_text("not a key\n")
        serve.send_signal(signal.SIGHUP)
        assert f"no PEM private key (-----BEGIN PRIVATE KEY-----) in {pki.key_file}" in logged(
            "TLS reload failed"
        )
        cert, _ = asyncio.run(served_certificate(("127.0.0.1", resp), pki.trusting(pki.b)))
        assert cert == der(leaf_b) and serve.poll() is None

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=TIMEOUT) == 0
    finally:
        for proc in (cli, serve):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
