"""ServerTls on its own: which files it accepts, what it says about the others, and what it
logs about the certificate (the listeners and reloads with real clients: tests/system)."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tidings.tls import ServerTls, TlsError

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_key_in_the_certificate_file_and_what_is_logged_about_it(
    ca: trustme.CA, tmp_path: Path
) -> None:
    leaf = ca.issue_cert("tidings.example", "10.0.0.7", common_name="tidings.example",
                         not_after=NOW + datetime.timedelta(days=30, hours=1))  # fmt: skip
    both = tmp_path / "both.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(both))
    tls = ServerTls(str(both))
    described = tls.info.describe()
    assert described.startswith("subject O=trustme v")
    assert ", CN=tidings.example, for tidings.example, 10.0.0.7, valid until " in described
    assert described.endswith(" UTC (30 days)")
    assert tls.context(alpn=["http/1.1"]) is not tls.context()  # one per listener


def test_an_expired_certificate_is_served_with_a_warning(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leaf = ca.issue_cert("localhost", not_before=NOW - datetime.timedelta(days=9),
                         not_after=NOW - datetime.timedelta(days=2))  # fmt: skip
    cert = tmp_path / "old.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    tls = ServerTls(str(cert))
    with caplog.at_level(logging.WARNING, logger="tidings.tls"):
        tls.warn_if_expired()
    (record,) = caplog.records
    assert record.getMessage().startswith(f"the TLS certificate in {cert} has expired")


def test_unusable_files_are_named_in_the_error(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = ca.issue_cert("localhost")
    cert, key, junk = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "junk.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    junk.write_text("hello\n")
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    broken = tmp_path / "broken.pem"  # the right header, a damaged body
    broken.write_text(leaf.cert_chain_pems[0].bytes().decode().replace("M", "*", 3))
    cases = [
        ((str(junk), str(key)), f"no PEM certificate (-----BEGIN CERTIFICATE-----) in {junk}"),
        ((str(key), str(key)), f"no PEM certificate (-----BEGIN CERTIFICATE-----) in {key}"),
        ((str(cert), str(junk)), f"no PEM private key (-----BEGIN PRIVATE KEY-----) in {junk}"),
        ((str(cert), str(encrypted)), f"the private key in {encrypted} is encrypted: tidings "
                                      "needs it unencrypted"),
        ((str(tmp_path), str(key)), f"cannot read the TLS certificate file {tmp_path}: "
                                    "Is a directory"),
        ((str(broken), str(key)), f"cannot use the TLS certificate {broken} with the key {key}"),
    ]  # fmt: skip
    for (cert_file, key_file), message in cases:
        with pytest.raises(TlsError) as error:
            ServerTls(cert_file, key_file)
        assert str(error.value).startswith(message), (str(error.value), message)
    ServerTls(str(cert), str(key))  # the pair itself is fine


def test_minimum_version(ca: trustme.CA, tmp_path: Path) -> None:
    cert = tmp_path / "both.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(cert))
    assert ServerTls(str(cert)).context().minimum_version == ssl.TLSVersion.TLSv1_2
    tls13 = ServerTls(str(cert), min_version="1.3").context()
    assert tls13.minimum_version == ssl.TLSVersion.TLSv1_3
