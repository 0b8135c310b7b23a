"""Gelato over wss:// with a configured certificate (self-signed here, trusted by the client)."""
from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from galaxynode.gelato import messages as m
from galaxynode.identity import Identity
from galaxynode.net import ChannelClosed, Server, connect


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "galaxynode test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return str(d / "cert.pem"), str(d / "key.pem")


async def ack(conn, frame):
    return m.Ack(re=frame.id)


async def test_session_over_wss(cert_files, identity_a, identity_b):
    cert, key = cert_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = Server(identity_a, network="t", listen_urls=("wss://127.0.0.1:0",), ssl_context=server_ctx,
                    handler_factory=lambda conn: ack)
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(server.run)
        assert url.startswith("wss://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=cert)
        async with connect(url, identity_b, network="t", ssl_context=trusting) as conn:
            assert conn.peer_key == identity_a.public
            assert (await conn.request(m.Status(), timeout=5)).type == "ACK"
        # A client that does not trust the certificate cannot connect, and says so with a typed error.
        with pytest.raises(ChannelClosed):
            async with connect(url, Identity.generate(), network="t", connect_timeout=5):
                pass
        nursery.cancel_scope.cancel()
