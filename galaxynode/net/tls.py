"""TLS for Gelato over wss://: contexts built from files, and failures in words an operator can act on.

Python's ssl says `[SSL] PEM lib (_ssl.c:3905)` for an unusable key file and a bare verify code for a
refused certificate. Here a file that cannot be used raises TLSError naming the file and what is wrong
with it (checked with `cryptography` before OpenSSL sees it), and a failed handshake becomes one
sentence: why the certificate was refused and what the operator can do about it (`describe`).

A client trusts the system's CAs and, with `ca_file` (`--ca FILE`, `[tls] ca_file`), the CAs in that
file as well: a pool may peer with pools under a public CA and under a private one at once.
"""
from __future__ import annotations

import datetime
import logging
import ssl
import time
from typing import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

CA_HINT = "use --ca FILE or [tls] ca_file"


class TLSError(Exception):
    """A certificate, key or CA file that cannot be used. str(): "<path>: <what is wrong>"."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(path, f"cannot read the {what}: {e.strerror}") from None


def _certificates(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSError(path, f"no PEM certificate in the {what} (expected -----BEGIN CERTIFICATE-----)")
    return certs


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def server_context(cert_path: str, key_path: str | None = None) -> ssl.SSLContext:
    """The listening side's context: `cert_path` holds the certificate (and its chain, leaf first, as
    certbot's fullchain.pem), `key_path` its private key, unencrypted (None: in cert_path too).
    Raises TLSError naming the file at fault. An expired certificate loads (a renewal may be on its
    way) but is logged: clients will refuse it."""
    key_path = key_path or cert_path
    leaf = _certificates(cert_path, "certificate file")[0]
    data = _read(key_path, "key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSError(key_path, "the private key is encrypted; galaxynode needs it unencrypted "
                                 "(readable only by the daemon)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError(key_path, "no usable PEM private key (expected -----BEGIN PRIVATE KEY-----)") from None
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise TLSError(key_path, f"this key does not belong to the certificate in {cert_path}")
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc < now:
        log.warning("TLS certificate %s expired on %s: clients will refuse it", cert_path,
                    leaf.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:  # what the checks above did not foresee
        raise TLSError(cert_path, f"OpenSSL cannot load it with {key_path}: {e.reason or e}") from None
    return ctx


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The dialling side's context: the system's CAs, plus those in `ca_file` (PEM, one or more
    certificates) when given. Hostnames are checked. Raises TLSError for an unusable ca_file."""
    ctx = ssl.create_default_context()
    if ca_file:
        _certificates(ca_file, "CA file")
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as e:
            raise TLSError(ca_file, f"OpenSSL cannot load the CA file: {e.reason or e}") from None
    return ctx


# X509_V_ERR_* codes (openssl/x509_vfy.h) -> why, and whether trusting a CA would cure it.
_VERIFY = {
    2: ("unknown CA (the issuer's certificate is not trusted here)", True),
    9: ("not yet valid", False),
    10: ("expired", False),
    18: ("self-signed certificate", True),
    19: ("self-signed certificate in the chain (unknown CA)", True),
    20: ("unknown CA", True),
    21: ("unknown CA (cannot verify the first certificate)", True),
    23: ("revoked", False),
    62: ("hostname mismatch", False),
    64: ("hostname mismatch (the certificate is not for this IP address)", False),
}

# OpenSSL reasons that mean the other side does not speak TLS on this port.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                      "UNKNOWN_PROTOCOL", "HTTP_REQUEST"})

# Server side: alerts a client sends when it refuses our certificate, and other common reasons.
_SERVER = {
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client refused our certificate (expired)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client refused our certificate (hostname mismatch or unknown CA)",
    "HTTP_REQUEST": "plain HTTP on a TLS port (a ws:// client; it must use wss://)",
    "UNEXPECTED_EOF_WHILE_READING": "the client closed the connection during the TLS handshake",
    "NO_SHARED_CIPHER": "no cipher in common",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common",
    "VERSION_TOO_LOW": "the client offers only TLS versions we do not accept",
}


def is_certificate_error(exc: BaseException) -> bool:
    """The peer's certificate was refused: retrying will not help until someone changes a file."""
    return isinstance(exc, ssl.SSLCertVerificationError)


def describe(exc: BaseException | None) -> str:
    """A failed client handshake in one sentence, e.g. "certificate verify failed: self-signed
    certificate (use --ca FILE or [tls] ca_file)" or "the server does not speak TLS here: use ws://"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why, hint = _VERIFY.get(exc.verify_code, (exc.verify_message or "refused", False))
        return f"certificate verify failed: {why}" + (f" ({CA_HINT})" if hint else "")
    if isinstance(exc, ssl.SSLError):
        if exc.reason in _NOT_TLS:
            return "the server does not speak TLS here: use ws://"
        return f"TLS handshake failed: {_reason_text(exc)}"
    if exc is None or isinstance(exc, (EOFError, ConnectionError)) or not str(exc):
        return "the server closed the connection during the TLS handshake"
    return f"TLS handshake failed: {exc}"


def describe_server(exc: BaseException | None) -> str:
    """Why a client's handshake with our listener failed, for the server's log line."""
    if isinstance(exc, ssl.SSLError):
        return _SERVER.get(exc.reason or "", _reason_text(exc))
    if exc is None or not str(exc):
        return "the client closed the connection during the TLS handshake"
    return str(exc)


def _reason_text(exc: ssl.SSLError) -> str:
    return (exc.reason or str(exc)).replace("_", " ").lower()


class HandshakeLog:
    """One warning per failed TLS handshake on our listener (peer address and reason), at most
    `per_minute` lines a minute: a scanner or a misconfigured fleet must not flood the journal.
    What is held back is counted and reported on the next line that is let through."""

    def __init__(self, logger: logging.Logger, *, per_minute: int = 10,
                 clock: Callable[[], float] = time.monotonic):
        self.log = logger
        self.per_minute = per_minute
        self.clock = clock
        self.failures = 0  # failed handshakes in all (logged or not)
        self.suppressed = 0  # not logged since the last line
        self._window = -60.0
        self._lines = 0

    def failed(self, address: str, cause: BaseException | None, *, timed_out: bool = False) -> None:
        self.failures += 1
        now = self.clock()
        if now - self._window >= 60:
            self._window, self._lines = now, 0
        if self._lines >= self.per_minute:
            self.suppressed += 1
            return
        self._lines += 1
        reason = "no TLS handshake within handshake_timeout" if timed_out else describe_server(cause)
        more = f" ({self.suppressed} more failed handshakes not logged)" if self.suppressed else ""
        self.suppressed = 0
        self.log.warning("TLS handshake with %s failed: %s%s", address, reason, more)
