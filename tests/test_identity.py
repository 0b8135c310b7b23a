import logging
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from galaxynode.identity import (Identity, KeyFileError, format_public_key, load_key, load_or_create_key,
                                 parse_public_key, verify, write_key)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def pem_of(key, password=None):
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


# --- key files ---------------------------------------------------------------------------------

def test_write_key_mode_0600_and_round_trip(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "sub" / "dir" / "pool.key"
    write_key(ident, path)
    assert mode(path) == 0o600
    assert load_key(path).public == ident.public


def test_write_key_0600_despite_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        write_key(Identity.generate(), tmp_path / "a.key")
        write_key(Identity.generate(), tmp_path / "a.key", force=True)
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.key") == 0o600


def test_write_key_refuses_overwrite(tmp_path):
    path = tmp_path / "k.key"
    write_key(Identity.generate(), path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        write_key(Identity.generate(), path)
    assert path.read_bytes() == before


def test_force_replaces_atomically(tmp_path):
    path = tmp_path / "k.key"
    old, new = Identity.generate(), Identity.generate()
    write_key(old, path)
    os.link(path, tmp_path / "old-inode")  # a reader holding the old file keeps the old key intact
    write_key(new, path, force=True)
    assert load_key(path).public == new.public
    assert load_key(tmp_path / "old-inode").public == old.public
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "old-inode"]  # no temp file left


def test_force_ignores_stale_world_readable_temp_file(tmp_path):
    path = tmp_path / "k.key"
    stale = tmp_path / "k.key.tmp"
    stale.write_bytes(b"junk")
    stale.chmod(0o644)
    write_key(Identity.generate(), path, force=True)
    assert mode(path) == 0o600


def test_force_creates_missing_file(tmp_path):
    ident = Identity.generate()
    write_key(ident, tmp_path / "k.key", force=True)
    assert load_key(tmp_path / "k.key").public == ident.public


def test_write_key_unwritable_location_is_key_file_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KeyFileError, match="cannot write key file"):
        write_key(Identity.generate(), blocker / "k.key")


def test_loading_world_readable_key_warns(tmp_path, caplog):
    path = tmp_path / "k.key"
    write_key(Identity.generate(), path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="galaxynode.identity"):
        load_key(path)
    assert any("644" in r.getMessage() and "0600" in r.getMessage() for r in caplog.records)


def test_loading_0600_key_is_silent(tmp_path, caplog):
    path = tmp_path / "k.key"
    write_key(Identity.generate(), path)
    with caplog.at_level(logging.WARNING, logger="galaxynode.identity"):
        load_key(path)
    assert not caplog.records


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        load_key(tmp_path / "nope.key")


def test_directory_as_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key(tmp_path)


@pytest.mark.parametrize("content", [
    b"",
    b"garbage\n",
    b"\x00\xff" * 100,
    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
])
def test_corrupt_key_file(tmp_path, content):
    path = tmp_path / "k.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key") as info:
        load_key(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_truncated_key_file(tmp_path):
    path = tmp_path / "k.key"
    path.write_bytes(Identity.generate().to_pem()[:50])
    with pytest.raises(KeyFileError):
        load_key(path)


@pytest.mark.parametrize("make", [
    x25519.X25519PrivateKey.generate,
    ed448.Ed448PrivateKey.generate,
    lambda: ec.generate_private_key(ec.SECP256R1()),
], ids=["x25519", "ed448", "p256"])
def test_non_ed25519_key_file(tmp_path, make):
    path = tmp_path / "k.key"
    path.write_bytes(pem_of(make()))
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        load_key(path)


def test_encrypted_key_file(tmp_path):
    path = tmp_path / "k.key"
    path.write_bytes(pem_of(Ed25519PrivateKey.generate(), b"secret"))
    with pytest.raises(KeyFileError, match="password-protected"):
        load_key(path)


def test_load_or_create_creates_once_then_loads(tmp_path):
    path = tmp_path / "data" / "pool.key"
    first, created = load_or_create_key(path)
    assert created and mode(path) == 0o600
    second, created_again = load_or_create_key(path)
    assert not created_again
    assert second.public == first.public


def test_load_or_create_does_not_replace_a_corrupt_key(tmp_path):
    path = tmp_path / "pool.key"
    path.write_bytes(b"corrupt")
    with pytest.raises(KeyFileError):
        load_or_create_key(path)
    assert path.read_bytes() == b"corrupt"


# --- public keys and signatures ----------------------------------------------------------------

def test_format_and_parse_public_key(identity_a):
    text = format_public_key(identity_a.public)
    assert text == identity_a.public_text == "ed25519:" + identity_a.public.hex()
    assert parse_public_key(text) == identity_a.public
    assert parse_public_key(identity_a.public.hex()) == identity_a.public  # bare hex
    assert parse_public_key(f"  {text.upper().replace('ED25519', 'ed25519')}\n") == identity_a.public
    assert repr(identity_a) == f"Identity({text})"


@pytest.mark.parametrize("text", [
    "",
    "ed25519:",
    "ed25519:" + "ab" * 31,             # 31 bytes
    "ed25519:" + "ab" * 33,             # 33 bytes
    "ed25519:" + "ab" * 31 + "a",       # odd length
    "ed25519:" + "zz" * 32,             # not hex
    "ed25519:" + "ab " * 31 + "ab",     # inner whitespace
    "ed448:" + "ab" * 32,               # wrong algorithm
    "ed25519: " + "ab" * 32,
    "ED25519:" + "ab" * 32,
    "+" + "a" * 63,
])
def test_parse_public_key_rejects_bad_text(text):
    with pytest.raises(ValueError, match="not a public key"):
        parse_public_key(text)


def test_sign_and_verify(identity_a, identity_b):
    sig = identity_a.sign(b"data")
    assert verify(identity_a.public, sig, b"data")
    assert not verify(identity_a.public, sig, b"datA")
    assert not verify(identity_b.public, sig, b"data")
    assert not verify(b"\x01" * 31, sig, b"data")  # malformed key: False, not an exception


def test_from_seed_is_deterministic():
    assert Identity.from_seed(b"\x07" * 32).public == Identity.from_seed(b"\x07" * 32).public
