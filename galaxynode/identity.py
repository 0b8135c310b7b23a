"""Ed25519 identities: key files on disk and the textual form of public keys.

Public keys are written as ``ed25519:`` followed by 64 lowercase hex digits.
Private keys are PKCS#8 PEM files created with mode 0600.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
import string
import tempfile
from pathlib import Path

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

log = logging.getLogger(__name__)

PUBKEY_PREFIX = "ed25519:"


class KeyFileError(Exception):
    """A key file that is missing, unreadable, unwritable or not an Ed25519 private key."""


def format_public_key(raw: bytes) -> str:
    return PUBKEY_PREFIX + raw.hex()


STELLAR_ACCOUNT = 6 << 3  # StrKey version byte of an Ed25519 account id ("G...")


def _crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def format_stellar(raw: bytes) -> str:
    """The key as a Stellar account id (StrKey "G..."): an Ed25519 key is a Stellar keypair. Small
    codec here so the core does not need stellar-sdk (tests cross-check it against the SDK)."""
    if len(raw) != 32:
        raise ValueError("a public key is 32 bytes")
    body = bytes([STELLAR_ACCOUNT]) + raw
    return base64.b32encode(body + _crc16_xmodem(body).to_bytes(2, "little")).decode()


def parse_stellar(text: str) -> bytes:
    """Inverse of format_stellar: the raw key of a "G..." account id (checksum checked)."""
    try:
        data = base64.b32decode(text, casefold=False)
    except (ValueError, binascii.Error):
        data = b""
    if (len(text) != 56 or len(data) != 35 or data[0] != STELLAR_ACCOUNT
            or _crc16_xmodem(data[:33]).to_bytes(2, "little") != data[33:]):
        raise ValueError(f"not a Stellar account id: {text!r} (expected G... of 56 characters)")
    return data[1:33]


def parse_public_key(text: str) -> bytes:
    """Inverse of format_public_key; also accepts bare hex (either case) and a Stellar account id
    (G...), nothing else."""
    body = text.strip()
    if body.startswith("G") and len(body) == 56:
        return parse_stellar(body)
    if body.startswith(PUBKEY_PREFIX):
        body = body[len(PUBKEY_PREFIX):]
    if len(body) != 64 or not all(c in string.hexdigits for c in body):
        raise ValueError(f"not a public key: {text!r} (expected {PUBKEY_PREFIX}<64 hex digits> or a G... Stellar account id)")
    return bytes.fromhex(body)


@attrs.frozen(repr=False)
class Identity:
    """A private key plus its cached raw public key."""

    private: Ed25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> "Identity":
        return cls.from_private(Ed25519PrivateKey.generate())

    @classmethod
    def from_private(cls, key: Ed25519PrivateKey) -> "Identity":
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(key, raw)

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls.from_private(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    @property
    def public_text(self) -> str:
        return format_public_key(self.public)

    def __repr__(self) -> str:
        return f"Identity({self.public_text})"

    def to_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """Check an Ed25519 signature. libsodium (PyNaCl) verifies ~1.9x faster than OpenSSL here
    (scripts/bench_verify.py), and verification is what bounds a signed session."""
    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + data, public)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def write_key(identity: Identity, path: str | os.PathLike, *, force: bool = False) -> None:
    """Write the private key with mode 0600; never overwrites unless force (then atomically)."""
    path = Path(path)
    try:
        _write_key(identity.to_pem(), path, force)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot write key file ({e.strerror or e})") from None


def _write_key(pem: bytes, path: Path, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if force:
        # mkstemp: a fresh 0600 file with a unique name, so no stale temp file can lend the key its mode.
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        target = Path(name)
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path}: already exists (use --force to overwrite)") from None
        target = path
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        if target != path:
            os.replace(target, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)  # a half-written key file would make every later start fail
        raise


def warn_if_exposed(path: str | os.PathLike, what: str, st: os.stat_result | None = None) -> None:
    """Warn when a private key file is open to group or others: we do not chmod the operator's
    files, but anyone on the host who can read one can impersonate us."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE((st or os.stat(path)).st_mode)
    except OSError:
        return  # whoever opens it next reports that
    if mode & 0o077:
        log.warning("%s %s has mode %o; it should be 0600 (chmod 600 %s)", what, path, mode, path)


def load_key(path: str | os.PathLike) -> Identity:
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file ({e.strerror})") from None
    warn_if_exposed(path, "key file", st)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: key file is password-protected; galaxynode needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not a PEM private key (corrupt or wrong file?)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return Identity.from_private(key)


def load_or_create_key(path: str | os.PathLike) -> tuple[Identity, bool]:
    """Load the key at path, generating it on first start. Returns (identity, created)."""
    try:
        return load_key(path), False
    except KeyFileError:
        if Path(path).exists():
            raise
    identity = Identity.generate()
    write_key(identity, path)
    return identity, True
