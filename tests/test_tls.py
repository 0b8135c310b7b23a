"""TLS with a private CA: contexts from files (errors name the file), client errors that say why a
certificate was refused, the server's rate-limited handshake log, ws:// and wss:// mixed up.

Certificates are made here with cryptography.x509 (no openssl binary)."""
from __future__ import annotations

import datetime
import gc
import ipaddress
import logging
import ssl
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from galaxynode.identity import Identity
from galaxynode.net import connect
from galaxynode.net import tls
from galaxynode.net.tls import TLSError, client_context, server_context
from galaxynode.net.transport import CertificateError, ChannelClosed, open_channel, serve_channels

DAY = datetime.timedelta(days=1)


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


# --- certificates ------------------------------------------------------------------------------

@attrs.frozen
class Issued:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    c, k = directory / f"{stem}.crt", directory / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return Issued(c, k)


def make_ca(directory: Path, cn: str = "galaxynode test CA") -> tuple[Issued, x509.Certificate, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _write(directory, "ca", cert, key), cert, key


def issue(directory: Path, ca: tuple[Issued, x509.Certificate, object] | None, *, stem: str = "server",
          ip: str = "127.0.0.1", expired: bool = False) -> Issued:
    """A server certificate for `ip`, signed by `ca` (None: self-signed); `expired`: ended yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - 3 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
    issuer_name, issuer_key = (ca[1].subject, ca[2]) if ca else (_name(ip), key)
    builder = (x509.CertificateBuilder().subject_name(_name(ip)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[2].public_key()),
                                        critical=False)
    return _write(directory, stem, builder.sign(issuer_key, hashes.SHA256()), key)


@pytest.fixture
def pki(tmp_path):
    """A CA; certificates it signed for 127.0.0.1 (good), for 127.0.0.2 (wrong host) and an expired
    one; a self-signed one."""
    ca = make_ca(tmp_path / "ca")
    return attrs.make_class("Pki", ["ca", "good", "wrong_host", "expired", "self_signed"])(
        ca[0], issue(tmp_path, ca), issue(tmp_path, ca, stem="other", ip="127.0.0.2"),
        issue(tmp_path, ca, stem="old", expired=True), issue(tmp_path, None, stem="self"))


# --- contexts from files -----------------------------------------------------------------------

def test_server_context_loads_a_good_pair(pki):
    assert isinstance(server_context(str(pki.good.cert), str(pki.good.key)), ssl.SSLContext)


def test_server_context_errors_name_the_file_and_the_problem(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ((garbage, pki.good.key), f"{garbage}: no PEM certificate in the certificate file"),
        ((pki.good.cert, garbage), f"{garbage}: no usable PEM private key"),
        ((tmp_path / "missing.pem", pki.good.key), f"{tmp_path / 'missing.pem'}: cannot read the certificate file: "
                                                   "No such file or directory"),
        ((pki.good.cert, pki.expired.key), f"{pki.expired.key}: this key does not belong to the certificate in "
                                           f"{pki.good.cert}"),
    ]
    for (cert, key), message in cases:
        with pytest.raises(TLSError) as e:
            server_context(str(cert), str(key))
        assert str(e.value).startswith(message), str(e.value)
        assert "PEM lib" not in str(e.value)


def test_encrypted_key_is_named(pki, tmp_path):
    key = serialization.load_pem_private_key(pki.good.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(TLSError, match="private key is encrypted"):
        server_context(str(pki.good.cert), str(locked))


def test_expired_server_certificate_loads_with_a_warning(pki, caplog):
    with caplog.at_level(logging.WARNING):
        server_context(str(pki.expired.cert), str(pki.expired.key))
    assert f"TLS certificate {pki.expired.cert} expired on" in caplog.text


def test_client_context_ca_file_errors(tmp_path, pki):
    client_context(str(pki.ca.cert))
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(TLSError, match="empty.pem: no PEM certificate in the CA file"):
        client_context(str(tmp_path / "empty.pem"))
    with pytest.raises(TLSError, match="nope.pem: cannot read the CA file"):
        client_context(str(tmp_path / "nope.pem"))


def test_handshake_log_is_rate_limited(caplog):
    now = [0.0]
    hlog = tls.HandshakeLog(logging.getLogger("t"), per_minute=2, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            hlog.failed("1.2.3.4:5", None)
        now[0] = 61.0
        hlog.failed("1.2.3.4:6", None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["TLS handshake with 1.2.3.4:5 failed: the client closed the connection during the TLS handshake"] * 2 \
        + ["TLS handshake with 1.2.3.4:6 failed: the client closed the connection during the TLS handshake "
           "(3 more failed handshakes not logged)"]
    assert hlog.failures == 6


# --- transport: what each side sees ------------------------------------------------------------

async def _echo(channel):
    try:
        while True:
            await channel.send(await channel.receive())
    except ChannelClosed:
        pass


@asynccontextmanager
async def serving(issued: Issued | None, **kw):
    ctx = server_context(str(issued.cert), str(issued.key)) if issued else None
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_channels, _echo, "127.0.0.1", 0, max_message_size=4096,
                                            ssl_context=ctx, **kw))
        yield bound[0][1]
        nursery.cancel_scope.cancel()


def dial(port: int, scheme: str = "wss", ca: Path | None = None):
    ctx = client_context(str(ca)) if ca else None
    return open_channel(f"{scheme}://127.0.0.1:{port}/", max_message_size=4096, connect_timeout=5, ssl_context=ctx)


async def _refusal(port: int, **kw) -> ChannelClosed:
    with pytest.raises(ChannelClosed) as e:
        async with dial(port, **kw):
            pass
    return e.value


async def test_client_says_why_the_certificate_was_refused(pki, caplog):
    with caplog.at_level(logging.WARNING, logger="galaxynode.net.transport"):
        async with serving(pki.good) as port:
            async with dial(port, ca=pki.ca.cert) as ch:
                await ch.send(b"hi")
                assert await ch.receive() == b"hi"
            e = await _refusal(port)
            assert isinstance(e, CertificateError)
            assert e.reason == "certificate verify failed: unknown CA (use --ca FILE or [tls] ca_file)"
        async with serving(pki.self_signed) as port:
            e = await _refusal(port)
            assert e.reason == "certificate verify failed: self-signed certificate (use --ca FILE or [tls] ca_file)"
        async with serving(pki.wrong_host) as port:
            e = await _refusal(port, ca=pki.ca.cert)
            assert isinstance(e, CertificateError) and e.reason.startswith("certificate verify failed: hostname mismatch")
        async with serving(pki.expired) as port:
            e = await _refusal(port, ca=pki.ca.cert)
            assert isinstance(e, CertificateError) and e.reason == "certificate verify failed: expired"
    failed = [r.getMessage() for r in caplog.records if "TLS handshake with 127.0.0.1:" in r.getMessage()]
    assert len(failed) == 4, failed  # one line per failed handshake, with the reason the client gave
    assert "failed: the client does not trust our certificate (unknown CA)" in failed[0]


async def test_ws_and_wss_mixed_up(pki, caplog):
    with caplog.at_level(logging.WARNING, logger="galaxynode.net.transport"):
        async with serving(pki.good) as port:
            e = await _refusal(port, scheme="ws")
            assert e.reason == "the server speaks TLS here: use wss://"
            assert not isinstance(e, CertificateError)
    assert "plain HTTP on a TLS port (a ws:// client; it must use wss://)" in caplog.text
    async with serving(None) as port:
        e = await _refusal(port, scheme="wss", ca=pki.ca.cert)
        assert e.reason == "the server does not speak TLS here: use ws://"


async def test_gelato_connect_takes_ca_file(pki):
    from galaxynode.net import Server
    server = Server(Identity.generate(), network="t", listen_urls=("wss://127.0.0.1:0",),
                    ssl_context=server_context(str(pki.good.cert), str(pki.good.key)),
                    handler_factory=lambda conn: None)
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(server.run)
        async with connect(url, Identity.generate(), network="t", ca_file=str(pki.ca.cert)) as conn:
            assert conn.peer_key == server.identity.public
        with pytest.raises(CertificateError, match="unknown CA"):
            async with connect(url, Identity.generate(), network="t"):
                pass
        nursery.cancel_scope.cancel()
