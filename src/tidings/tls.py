"""TLS for the client listeners: one certificate and key, reloadable without dropping clients.

`ServerTls` reads the PEM files, checks them, and makes the `ssl.SSLContext` each
listener serves with (`context()`). `reload()` (the daemon calls it on SIGHUP)
reads the files again and loads the new pair into those same context objects:
OpenSSL copies the certificate and key into each connection when it is accepted,
so connections already open keep theirs and every handshake from then on gets
the new pair; nothing is closed.

A reload must not leave a listener half-loaded (a new certificate with the old
key serves nothing), so the files are read once, the bytes are first loaded into
a scratch context, and only when that works are the same bytes loaded into the
live ones. Any problem (unreadable file, no PEM block, key not matching the
certificate) is a `TlsError` naming the file: at start-up the daemon refuses to
start with it, on reload it is logged and the previous pair stays in service.
"""

from __future__ import annotations

import _ssl
import contextlib
import datetime
import logging
import os
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.config import ConfigError

__all__ = ["MIN_VERSIONS", "CertInfo", "ServerTls", "TlsError"]

log = logging.getLogger("tidings.tls")

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_CERT_BLOCK = re.compile(rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----")
_KEY_BLOCK = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


class TlsError(ConfigError):
    """A certificate or key tidings cannot serve with; the message names the file."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the logs and /metrics say about the certificate being served."""

    subject: str
    #: DNS names and addresses the certificate is for (subjectAltName)
    names: tuple[str, ...]
    #: the end of its validity, seconds since the epoch
    not_after: float

    def describe(self) -> str:
        expiry = datetime.datetime.fromtimestamp(self.not_after, datetime.UTC)
        days = (self.not_after - datetime.datetime.now(datetime.UTC).timestamp()) / 86400
        names = ", ".join(self.names) or "no subjectAltName"
        return (
            f"subject {self.subject or '(empty)'}, for {names}, "
            f"valid until {expiry:%Y-%m-%d %H:%M:%S} UTC ({days:.0f} days)"
        )


@dataclass(frozen=True, slots=True)
class _Pair:
    """The bytes of one certificate chain and its key, as read at one moment."""

    cert: bytes
    key: bytes
    cert_file: str
    key_file: str


class ServerTls:
    """The certificate and key of the listeners, and the contexts that serve them."""

    def __init__(self, cert_file: str, key_file: str = "", *, min_version: str = "1.2") -> None:
        self.cert_file = cert_file
        #: empty: the key is in the certificate file
        self.key_file = key_file
        self.min_version = MIN_VERSIONS[min_version]
        self._contexts: list[ssl.SSLContext] = []
        self._pair = self._read()
        self.info = self._check(self._pair)

    def context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A server context with the current pair, reloaded with it; `alpn` for HTTP."""
        context = self._new_context()
        _load(context, self._pair)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        self._contexts.append(context)
        return context

    def reload(self) -> bool:
        """Read the files again and serve the new pair from the next handshake on.

        On any problem the error is logged and the previous pair stays in service.
        """
        try:
            pair = self._read()
            info = self._check(pair)
        except TlsError as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        for context in self._contexts:
            _load(context, pair)  # the bytes just checked (see _as_files): loads as it did
        self._pair, self.info = pair, info
        log.info("TLS certificate reloaded from %s: %s", self.cert_file, info.describe())
        self.warn_if_expired()
        return True

    def warn_if_expired(self) -> None:
        now = datetime.datetime.now(datetime.UTC).timestamp()
        if self.info.not_after < now:
            log.warning("the TLS certificate in %s has expired: clients will refuse it (%s)",
                        self.cert_file, self.info.describe())  # fmt: skip

    # -- reading and checking ----------------------------------------------------------------
    def _new_context(self) -> ssl.SSLContext:
        # PROTOCOL_TLS_SERVER's defaults are sane (no compression, strong ciphers, server
        # cipher preference); client certificates are not asked for
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        context.options |= ssl.OP_NO_RENEGOTIATION  # client renegotiation: a CPU sink
        return context

    def _read(self) -> _Pair:
        cert = _read_file(self.cert_file, "certificate")
        key = _read_file(self.key_file, "private key") if self.key_file else cert
        if not _CERT_BLOCK.search(cert):
            raise TlsError(f"no PEM certificate (-----BEGIN CERTIFICATE-----) in {self.cert_file}")
        key_file = self.key_file or self.cert_file
        if _ENCRYPTED.search(key):
            raise TlsError(f"the private key in {key_file} is encrypted: tidings needs it "
                           "unencrypted (readable only by the user tidings runs as)")  # fmt: skip
        if not _KEY_BLOCK.search(key):
            hint = "" if self.key_file else " (give the key file with --tls-key)"
            raise TlsError(f"no PEM private key (-----BEGIN PRIVATE KEY-----) in {key_file}{hint}")
        return _Pair(cert, key, self.cert_file, key_file)

    def _check(self, pair: _Pair) -> CertInfo:
        """Load `pair` into a scratch context: raises TlsError if it would not serve."""
        key_file = self.key_file or self.cert_file
        try:
            _load(self._new_context(), pair)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TlsError(f"the private key in {key_file} does not match the "
                               f"certificate in {self.cert_file}") from None  # fmt: skip
            raise TlsError(
                f"cannot use the TLS certificate {self.cert_file} with the key {key_file}: "
                f"{exc.reason or exc}"
            ) from None
        return _describe(pair)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} file {path}: {exc.strerror}") from None


@contextlib.contextmanager
def _as_files(pair: _Pair) -> Iterator[tuple[str, str]]:
    """Paths holding exactly `pair`'s bytes (OpenSSL loads from paths only).

    Anonymous memory files where Linux has them, so that a file replaced between
    the check and the live load cannot mix an old certificate with a new key (and
    the key is not copied to disk); elsewhere the files themselves.
    """
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        yield pair.cert_file, pair.key_file
        return
    fds = [os.memfd_create("tidings-tls", os.MFD_CLOEXEC) for _ in range(2)]
    try:
        for fd, data in zip(fds, (pair.cert, pair.key), strict=True):
            os.write(fd, data)
        yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
    finally:
        for fd in fds:
            os.close(fd)


def _load(context: ssl.SSLContext, pair: _Pair) -> None:
    with _as_files(pair) as (cert, key):
        # an empty password: an encrypted key fails instead of prompting on the terminal
        context.load_cert_chain(cert, key, password=b"")


def _describe(pair: _Pair) -> CertInfo:
    # CPython's decoder of getpeercert(), for a file: the standard library has no other
    with _as_files(pair) as (cert, _):
        decoded: dict[str, Any] = _ssl._test_decode_cert(cert)  # type: ignore[attr-defined]
    subject = ", ".join(
        f"{_SHORT_NAMES.get(name, name)}={value}"
        for rdn in decoded["subject"]
        for name, value in rdn
    )
    names = tuple(value for _, value in decoded.get("subjectAltName", ()))
    return CertInfo(subject, names, ssl.cert_time_to_seconds(decoded["notAfter"]))
