"""The v2 key schedule: ephemeral X25519 per connection, HKDF-SHA256 into one MAC key per direction.

Each side puts a fresh X25519 public key (`eph`) in its Ed25519-signed HELLO, so the shared secret
is authenticated by both identities without signing anything per frame. The session id binds both
nonces, both identity keys and both ephemeral keys, and salts the HKDF; the direction labels keep
the two keys apart, so a frame reflected back to its sender fails the MAC. Ephemeral secrets live
only until the keys are derived (forward secrecy of the session keys).
"""
from __future__ import annotations

import hashlib
import hmac
import os

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

from galaxynode.gelato.errors import ErrorCode, ProtocolError

EPH_LEN = 32
INFO_OPENER_TO_ANSWERER = b"gelato/v2 opener->answerer"
INFO_ANSWERER_TO_OPENER = b"gelato/v2 answerer->opener"


def ephemeral(secret: bytes | None = None) -> tuple[bytes, bytes]:
    """(secret, public) X25519 pair; a fixed secret only for test vectors. libsodium clamps."""
    secret = secret if secret is not None else os.urandom(EPH_LEN)
    return secret, crypto_scalarmult_base(secret)


def shared_secret(secret: bytes, peer_public: bytes) -> bytes:
    """X25519. A low-order peer key gives all zeros (libsodium refuses it): bad_key, since such a
    secret would be known to anyone."""
    try:
        shared = crypto_scalarmult(secret, peer_public)
    except (CryptoError, RuntimeError, ValueError, TypeError):
        raise ProtocolError(ErrorCode.BAD_KEY, "ephemeral key gives no usable X25519 secret") from None
    if not any(shared):
        raise ProtocolError(ErrorCode.BAD_KEY, "ephemeral key gives no usable X25519 secret")
    return shared


def derive_sid(opener_nonce: bytes, answerer_nonce: bytes, opener_key: bytes, answerer_key: bytes,
               opener_eph: bytes, answerer_eph: bytes) -> bytes:
    return hashlib.sha256(opener_nonce + answerer_nonce + opener_key + answerer_key
                          + opener_eph + answerer_eph).digest()


def derive_keys(shared: bytes, sid: bytes) -> tuple[bytes, bytes]:
    """(opener->answerer, answerer->opener) MAC keys: HKDF-SHA256 (RFC 5869) with ikm = the X25519
    secret, salt = sid, info = the direction label, L = 32, so Expand is a single HMAC block."""
    prk = hmac.digest(sid, shared, "sha256")
    return (hmac.digest(prk, INFO_OPENER_TO_ANSWERER + b"\x01", "sha256"),
            hmac.digest(prk, INFO_ANSWERER_TO_OPENER + b"\x01", "sha256"))
