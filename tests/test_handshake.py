import os

import msgpack
import pytest

from galaxynode.gelato import messages as m
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from galaxynode.gelato import keys
from galaxynode.gelato.codec import Limits, MacKey, encode_frame, mac, mac_payload, sign_payload
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Handshake, State, derive_sid

T = 1_700_000_000_000


def clock():
    return T


def hs(identity, opener, **kw):
    kw.setdefault("network", "test")
    kw.setdefault("role", "pool")
    kw.setdefault("clock", clock)
    return Handshake(identity, opener=opener, **kw)


def hello(identity, *, network="test", nonce=None, eph=None, echo=None, versions=(2,), ts=T, **frame_kw):
    msg = m.Hello(network=network, role="pool", nonce=nonce or os.urandom(32), eph=eph or keys.ephemeral()[1],
                  versions=versions, echo=echo)
    return encode_frame(identity, msg, ts=ts, **frame_kw)


def fails(side: Handshake, data, code: ErrorCode) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        side.receive(data)
    assert info.value.code is code, info.value
    assert side.state is State.FAILED and side.session is None and not side.established
    return info.value


# --- happy path ----------------------------------------------------------------------------------

def test_happy_path(identity_a, identity_b):
    a = hs(identity_a, True, agent="opener/1", features=("relay",), listen=("ws://127.0.0.1:1",))
    b = hs(identity_b, False, agent="answerer/1", role="node")
    first = a.initiate()
    assert a.state is State.HELLO_SENT
    reply = b.receive(first)
    assert b.state is State.AWAIT_READY
    ready = a.receive(reply)
    assert a.established and a.state is State.ESTABLISHED
    assert b.receive(ready) is None
    assert b.established

    sa, sb = a.session, b.session
    assert sa.sid == sb.sid == derive_sid(a.nonce, b.nonce, identity_a.public, identity_b.public, a.eph, b.eph)
    assert sa.peer_hello.eph == b.eph and sb.peer_hello.eph == a.eph and a.eph != b.eph
    assert (sa.send_key.key, sa.recv_key.key) == (sb.recv_key.key, sb.send_key.key)
    assert sa.send_key.key != sa.recv_key.key
    assert a._eph_secret is None and b._eph_secret is None  # forward secrecy: gone once keys exist
    assert (sa.peer_key, sb.peer_key) == (identity_b.public, identity_a.public)
    assert (sa.opener, sb.opener) == (True, False)
    assert sa.peer_hello.agent == "answerer/1" and sa.peer_hello.role == "node" and sa.peer_hello.echo == a.nonce
    assert sb.peer_hello.features == ("relay",) and sb.peer_hello.listen == ("ws://127.0.0.1:1",)
    assert sb.peer_hello.echo is None

    # both directions, several frames each
    for i in range(3):
        f = sb.decode(sa.encode(m.Ping(data=bytes([i]))))
        assert (f.seq, f.sid, f.msg) == (i, sa.sid, m.Ping(data=bytes([i])))
        g = sa.decode(sb.encode(m.Pong(data=bytes([i]))))
        assert (g.seq, g.msg) == (i, m.Pong(data=bytes([i])))
    assert sa.send_seq == sa.recv_seq == sb.send_seq == sb.recv_seq == 3


def test_sid_depends_on_both_nonces(identity_a, identity_b, session_pair):
    s1, _ = session_pair(identity_a, identity_b)
    s2, _ = session_pair(identity_a, identity_b)
    assert s1.sid != s2.sid


def test_pinned_key_that_matches(identity_a, identity_b):
    a = hs(identity_a, True, pinned_key=identity_b.public)
    b = hs(identity_b, False, pinned_key=identity_a.public)
    b.receive(a.receive(b.receive(a.initiate())))
    assert a.established and b.established


def test_common_version_subset(identity_a, identity_b):
    a = hs(identity_a, True, versions=(2, 3))
    b = hs(identity_b, False, versions=(2,))
    b.receive(a.receive(b.receive(a.initiate())))
    assert b.established


def test_initiate_misuse(identity_a, identity_b):
    with pytest.raises(RuntimeError):
        hs(identity_b, False).initiate()
    a = hs(identity_a, True)
    a.initiate()
    with pytest.raises(RuntimeError):
        a.initiate()


# --- handshake failures --------------------------------------------------------------------------

def test_opener_must_initiate_first(identity_a, identity_b):
    a = hs(identity_a, True)
    fails(a, hello(identity_b), ErrorCode.UNEXPECTED_MESSAGE)


def test_answerer_hello_with_wrong_echo(identity_a, identity_b):
    a = hs(identity_a, True)
    a.initiate()
    e = fails(a, hello(identity_b, echo=b"\x00" * 32, frame_id=b"\x01" * 16), ErrorCode.BAD_NONCE)
    assert e.ref == b"\x01" * 16 and e.fatal


def test_answerer_hello_without_echo(identity_a, identity_b):
    a = hs(identity_a, True)
    a.initiate()
    fails(a, hello(identity_b), ErrorCode.BAD_NONCE)


def test_opening_hello_with_echo(identity_a, identity_b):
    fails(hs(identity_b, False), hello(identity_a, echo=b"\x00" * 32), ErrorCode.BAD_NONCE)


def test_peer_reuses_our_nonce(identity_a, identity_b):
    a = hs(identity_a, True)
    a.initiate()
    fails(a, hello(identity_b, nonce=a.nonce, echo=a.nonce), ErrorCode.BAD_NONCE)


def test_wrong_ready_echo(identity_a, identity_b):
    b = hs(identity_b, False)
    b.receive(hello(identity_a))
    wrong = encode_frame(identity_a, m.Ready(echo=b"\x00" * 32), ts=T)
    fails(b, wrong, ErrorCode.BAD_NONCE)


@pytest.mark.parametrize("opener_side", [True, False])
def test_network_mismatch(identity_a, identity_b, opener_side):
    a = hs(identity_a, True, network="alpha")
    b = hs(identity_b, False, network="beta")
    if opener_side:  # the answerer already rejects; make it look like a beta answerer replied anyway
        a.initiate()
        e = fails(a, hello(identity_b, network="beta", echo=a.nonce), ErrorCode.NETWORK_MISMATCH)
    else:
        e = fails(b, a.initiate(), ErrorCode.NETWORK_MISMATCH)
    assert "alpha" in e.message and "beta" in e.message


def test_self_connection(identity_a):
    a = hs(identity_a, True)
    b = hs(identity_a, False)
    fails(b, a.initiate(), ErrorCode.SELF_CONNECTION)


def test_self_connection_seen_by_opener(identity_a):
    a = hs(identity_a, True)
    a.initiate()
    fails(a, hello(identity_a, echo=a.nonce), ErrorCode.SELF_CONNECTION)


def test_pinned_key_mismatch(identity_a, identity_b, identity_c):
    a = hs(identity_a, True, pinned_key=identity_c.public)
    b = hs(identity_b, False)
    fails(a, b.receive(a.initiate()), ErrorCode.PINNED_KEY_MISMATCH)


def test_pinned_key_mismatch_on_answerer(identity_a, identity_b, identity_c):
    a = hs(identity_a, True)
    b = hs(identity_b, False, pinned_key=identity_c.public)
    fails(b, a.initiate(), ErrorCode.PINNED_KEY_MISMATCH)


@pytest.mark.parametrize("opener_versions,answerer_versions", [((1,), (2,)), ((3,), (2,))])
def test_no_common_version_is_unsupported_version(identity_a, identity_b, opener_versions, answerer_versions):
    a = hs(identity_a, True, versions=opener_versions)
    b = hs(identity_b, False, versions=answerer_versions)
    e = fails(b, a.initiate(), ErrorCode.UNSUPPORTED_VERSION)
    assert f"we speak {list(answerer_versions)}" in e.message and e.fatal


def test_no_common_version_seen_by_opener(identity_a, identity_b):
    a = hs(identity_a, True)
    a.initiate()
    e = fails(a, hello(identity_b, echo=a.nonce, versions=(1,)), ErrorCode.UNSUPPORTED_VERSION)
    assert "peer offers [1], we speak [2]" in e.message


def test_a_v1_frame_is_unsupported_version(identity_a, identity_b):
    """A v1 peer's HELLO ([1, payload, signature]) is refused before anything else is judged."""
    v1 = msgpack.packb([1, msgpack.packb({"type": "HELLO"}), b"\0" * 64])
    e = fails(hs(identity_b, False), v1, ErrorCode.UNSUPPORTED_VERSION)
    assert "frame version 1 not supported; we speak [2]" in e.message


def test_peer_reuses_our_ephemeral_key(identity_a, identity_b):
    a = hs(identity_a, True)
    a.initiate()
    fails(a, hello(identity_b, echo=a.nonce, eph=a.eph), ErrorCode.BAD_KEY)


@pytest.mark.parametrize("eph", [b"\0" * 32, b"\x01" + b"\0" * 31])  # low-order points: an all-zero secret
def test_low_order_ephemeral_key_is_bad_key(identity_a, identity_b, eph):
    a = hs(identity_a, True)
    a.initiate()
    fails(a, hello(identity_b, echo=a.nonce, eph=eph), ErrorCode.BAD_KEY)


def test_key_schedule_matches_rfc_implementations(identity_a, identity_b):
    """X25519 (OpenSSL's, not libsodium's) and HKDF-SHA256 (cryptography's) give the session keys."""
    sa_, sb_ = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    raw = [k.private_bytes_raw() for k in (sa_, sb_)]
    a = hs(identity_a, True, eph_secret=raw[0])
    b = hs(identity_b, False, eph_secret=raw[1])
    assert a.eph == sa_.public_key().public_bytes_raw()
    b.receive(a.receive(b.receive(a.initiate())))
    shared = sa_.exchange(X25519PublicKey.from_public_bytes(b.eph))
    sid = derive_sid(a.nonce, b.nonce, identity_a.public, identity_b.public, a.eph, b.eph)

    def hkdf(info):
        return HKDF(hashes.SHA256(), 32, sid, info).derive(shared)
    assert a.session.send_key.key == hkdf(b"gelato/v2 opener->answerer") == b.session.recv_key.key
    assert a.session.recv_key.key == hkdf(b"gelato/v2 answerer->opener") == b.session.send_key.key
    data = a.session.encode(m.Ping())
    payload = msgpack.unpackb(data)[1]
    assert msgpack.unpackb(data)[2] == mac(a.session.send_key.key, payload) == MacKey(hkdf(b"gelato/v2 opener->answerer")).tag(payload)


def test_fixed_ephemeral_secret_reproduces_the_handshake(identity_a, identity_b):
    """Vectors: with fixed nonces, ephemeral secrets and clock, every handshake byte repeats."""
    def run():
        a = hs(identity_a, True, nonce=b"\x01" * 32, eph_secret=b"\x03" * 32)
        b = hs(identity_b, False, nonce=b"\x02" * 32, eph_secret=b"\x04" * 32)
        first = a.initiate()
        return a, b, first
    a1, b1, f1 = run()
    a2, b2, f2 = run()
    assert (a1.eph, b1.eph) == (a2.eph, b2.eph)
    assert msgpack.unpackb(msgpack.unpackb(f1)[1])["body"] == msgpack.unpackb(msgpack.unpackb(f2)[1])["body"]


def test_unexpected_message_type_at_answerer(identity_a, identity_b):
    e = fails(hs(identity_b, False), encode_frame(identity_a, m.Ping(), ts=T, frame_id=b"\x02" * 16),
              ErrorCode.UNEXPECTED_MESSAGE)
    assert e.ref == b"\x02" * 16


def test_ready_instead_of_hello_at_opener(identity_a, identity_b):
    a = hs(identity_a, True)
    a.initiate()
    fails(a, encode_frame(identity_b, m.Ready(echo=a.nonce), ts=T), ErrorCode.UNEXPECTED_MESSAGE)


def test_second_hello_instead_of_ready(identity_a, identity_b):
    b = hs(identity_b, False)
    b.receive(hello(identity_a))
    fails(b, hello(identity_a), ErrorCode.UNEXPECTED_MESSAGE)


def test_unknown_type_during_handshake(identity_a, identity_b):
    raw = msgpack.packb({"type": "NOPE", "id": b"\x00" * 16, "ts": T, "from": identity_a.public, "body": {}})
    fails(hs(identity_b, False), sign_payload(identity_a, raw), ErrorCode.UNEXPECTED_MESSAGE)


def test_session_frame_during_the_handshake(identity_a, identity_b):
    """A MAC'd frame (16-byte auth) before the session exists: there is no key to check it with."""
    raw = msgpack.packb({"type": "HELLO", "id": b"\x00" * 16, "seq": 0, "body": {}})
    fails(hs(identity_b, False), mac_payload(MacKey(b"\x00" * 32), raw), ErrorCode.UNEXPECTED_MESSAGE)
    b = hs(identity_b, False)
    b.receive(hello(identity_a))
    fails(b, mac_payload(MacKey(b"\x00" * 32), raw), ErrorCode.UNEXPECTED_MESSAGE)


def test_ready_signed_by_a_third_key(identity_a, identity_b, identity_c):
    b = hs(identity_b, False)
    b.receive(hello(identity_a))
    # c knows b's nonce (it is on the wire) but cannot sign as a
    fails(b, encode_frame(identity_c, m.Ready(echo=b.nonce), ts=T), ErrorCode.BAD_SIGNATURE)


def test_ready_from_a_third_key_claiming_to_be_the_opener(identity_a, identity_b, identity_c):
    b = hs(identity_b, False)
    b.receive(hello(identity_a))
    raw = msgpack.packb({"type": "READY", "id": b"\x00" * 16, "ts": T, "from": identity_a.public,
                         "body": {"echo": b.nonce}})
    fails(b, sign_payload(identity_c, raw), ErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize("skew", [-121_000, 121_000])
def test_stale_timestamp(identity_a, identity_b, skew):
    a = hs(identity_a, True, clock=lambda: T + skew)
    b = hs(identity_b, False)
    fails(b, a.initiate(), ErrorCode.STALE_TIMESTAMP)


def test_stale_answerer_hello(identity_a, identity_b):
    now = [T]
    a = hs(identity_a, True, clock=lambda: now[0])
    b = hs(identity_b, False)
    reply = b.receive(a.initiate())
    now[0] = T + 10 * 60_000  # the answer arrives ten minutes later by the opener's clock
    fails(a, reply, ErrorCode.STALE_TIMESTAMP)


def test_stale_ready(identity_a, identity_b):
    now = [T]
    a = hs(identity_a, True)
    b = hs(identity_b, False, clock=lambda: now[0])
    ready = a.receive(b.receive(a.initiate()))
    now[0] = T - 10 * 60_000
    fails(b, ready, ErrorCode.STALE_TIMESTAMP)


def test_skew_within_window_is_fine(identity_a, identity_b):
    a = hs(identity_a, True, clock=lambda: T + 119_000)
    b = hs(identity_b, False)
    b.receive(a.receive(b.receive(a.initiate())))
    assert b.established


def test_invalid_hello_body_fails_the_handshake(identity_a, identity_b):
    raw = msgpack.packb({"type": "HELLO", "id": b"\x00" * 16, "ts": T, "from": identity_a.public,
                         "body": {"network": "test", "role": "pool", "versions": [1]}})  # no nonce
    e = fails(hs(identity_b, False), sign_payload(identity_a, raw), ErrorCode.INVALID_BODY)
    assert "nonce" in e.message


@pytest.mark.parametrize("data", [b"", b"\xc1", "text", b"\x93\x01"])
def test_garbage_fails_the_handshake(identity_b, data):
    b = hs(identity_b, False)
    with pytest.raises(ProtocolError) as info:
        b.receive(data)
    assert info.value.fatal
    assert b.state is State.FAILED


def test_no_frames_after_failure_or_establishment(identity_a, identity_b):
    b = hs(identity_b, False)
    fails(b, b"\xc1", ErrorCode.MALFORMED_FRAME)
    with pytest.raises(ProtocolError) as info:
        b.receive(hello(identity_a))
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE

    a, b = hs(identity_a, True), hs(identity_b, False)
    b.receive(a.receive(b.receive(a.initiate())))
    with pytest.raises(ProtocolError) as info:
        a.receive(hello(identity_b))
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE


# --- established session -------------------------------------------------------------------------

def session_frame(sender, seq, *, ftype="PING", body=None, fid=b"\x07" * 16, **extra):
    """A session frame MAC'd with `sender` (a Session) 's send key, whatever its seq."""
    raw = msgpack.packb({"type": ftype, "id": fid, "seq": seq, "body": {} if body is None else body, **extra})
    return mac_payload(sender.send_key, raw)


def decode_fails(session, data, code, **kw) -> ProtocolError:
    before = session.recv_seq
    with pytest.raises(ProtocolError) as info:
        session.decode(data, **kw)
    assert info.value.code is code, info.value
    assert session.recv_seq == before  # envelope and sequence errors consume nothing
    return info.value


def test_replayed_seq(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    first = sa.encode(m.Ping())
    sb.decode(first)
    e = decode_fails(sb, first, ErrorCode.BAD_SEQUENCE)
    assert "replayed" in e.message and e.fatal
    assert e.ref is not None and len(e.ref) == 16


def test_skipped_seq(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    sa.encode(m.Ping())  # lost
    e = decode_fails(sb, sa.encode(m.Ping()), ErrorCode.BAD_SEQUENCE)
    assert "skipped" in e.message and e.fatal


def test_frame_of_another_session_between_the_same_keys_fails_the_mac(identity_a, identity_b, session_pair):
    sa1, sb1 = session_pair(identity_a, identity_b)
    sa2, _ = session_pair(identity_a, identity_b)
    assert sa1.sid != sa2.sid and sa1.send_key.key != sa2.send_key.key
    e = decode_fails(sb1, sa2.encode(m.Ping()), ErrorCode.BAD_MAC)
    assert e.fatal
    assert sb1.decode(sa1.encode(m.Ping())).seq == 0


def test_reflected_frame_fails_the_mac(identity_a, identity_b, session_pair):
    """Our own frame sent back to us is MAC'd under our send key, not the peer's: bad_mac."""
    sa, sb = session_pair(identity_a, identity_b)
    decode_fails(sa, sa.encode(m.Ping()), ErrorCode.BAD_MAC)


def test_mac_under_the_other_directions_key(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    decode_fails(sb, session_frame(sb, 0), ErrorCode.BAD_MAC)  # sb's own send key = the b->a direction
    assert sb.decode(session_frame(sa, 0)).seq == 0


def test_bad_mac_is_checked_before_the_payload_is_read(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    garbage = msgpack.packb([2, b"\xc1" * 40, b"\x00" * 16])  # unparseable payload, wrong MAC
    decode_fails(sb, garbage, ErrorCode.BAD_MAC)


def test_signed_frame_inside_a_session_is_unexpected(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    sb.decode(sa.encode(m.Ping()))
    e = decode_fails(sb, encode_frame(identity_a, m.Ping(), frame_id=b"\x05" * 16), ErrorCode.UNEXPECTED_MESSAGE)
    assert e.ref == b"\x05" * 16 and e.fatal


def test_signed_frame_from_a_third_key_inside_a_session(identity_a, identity_b, identity_c, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    decode_fails(sb, encode_frame(identity_c, m.Ping()), ErrorCode.BAD_SIGNATURE)


@pytest.mark.parametrize("signed", [True, False])
def test_hello_or_ready_inside_a_live_session_is_unexpected_message(identity_a, identity_b, session_pair, signed):
    """Issue 14 item 7: one error for a HELLO or READY inside a session, whichever way it is framed."""
    sa, sb = session_pair(identity_a, identity_b)
    for i, msg in enumerate([m.Ready(echo=b"\x00" * 32), m.Hello(network="test", role="pool", nonce=b"\x01" * 32,
                                                                    eph=keys.ephemeral()[1], versions=(2,))]):
        data = encode_frame(identity_a, msg) if signed else session_frame(sa, 0, ftype=msg.TYPE, body=msg.to_body())
        e = decode_fails(sb, data, ErrorCode.UNEXPECTED_MESSAGE)
        assert e.fatal and e.ref is not None


def test_session_frames_carry_no_from_ts_or_sid(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    data = sa.encode(m.Heartbeat(ttl=30))
    version, payload, tag = msgpack.unpackb(data)
    assert (version, len(tag)) == (2, 16)
    assert set(msgpack.unpackb(payload)) == {"type", "id", "seq", "body"}
    assert len(data) < 80
    frame = sb.decode(data)
    assert (frame.sender, frame.sid, frame.ts) == (identity_a.public, sb.sid, None)


def test_unknown_header_keys_in_a_session_frame_are_ignored(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    assert sb.decode(session_frame(sa, 0, ts=5, future=[1])).msg == m.Ping()


@pytest.mark.parametrize("auth_len", [0, 15, 17, 32, 63, 65])
def test_auth_of_another_length_is_malformed(identity_a, identity_b, session_pair, auth_len):
    sa, sb = session_pair(identity_a, identity_b)
    payload = msgpack.unpackb(sa.encode(m.Ping()))[1]
    decode_fails(sb, msgpack.packb([2, payload, b"\x00" * auth_len]), ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize("ftype,body,code", [
    ("ACK", {"re": b"short"}, ErrorCode.INVALID_BODY),
    ("JOIN", {"ttl": -5}, ErrorCode.INVALID_BODY),
    ("FROBNICATE", {}, ErrorCode.UNKNOWN_TYPE),
])
def test_bad_body_is_not_fatal_and_consumes_the_seq(identity_a, identity_b, session_pair, ftype, body, code):
    sa, sb = session_pair(identity_a, identity_b)
    with pytest.raises(ProtocolError) as info:
        sb.decode(session_frame(sa, 0, ftype=ftype, body=body, fid=b"\x09" * 16))
    assert info.value.code is code and not info.value.fatal
    assert info.value.ref == b"\x09" * 16
    assert sb.recv_seq == 1
    assert sb.decode(session_frame(sa, 1)).msg == m.Ping()
    # and the seq of the bad frame cannot be replayed afterwards
    decode_fails(sb, session_frame(sa, 0), ErrorCode.BAD_SEQUENCE)


def test_envelope_errors_in_session_are_fatal(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    good = sa.encode(m.Ping())
    for data, code in [(b"\xc1", ErrorCode.MALFORMED_FRAME), ("text", ErrorCode.TEXT_FRAME),
                       (good[:-1] + bytes([good[-1] ^ 1]), ErrorCode.BAD_MAC),
                       (msgpack.packb([1, msgpack.unpackb(good)[1], b"\x00" * 64]), ErrorCode.UNSUPPORTED_VERSION)]:
        assert decode_fails(sb, data, code).fatal
    assert sb.decode(good).seq == 0


def test_encode_failure_does_not_consume_seq(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b, limits=Limits(max_frame_size=400))
    with pytest.raises(ProtocolError) as info:
        sa.encode(m.Error(code=1000, name="malformed_frame", message="x" * 512))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert sa.send_seq == 0
    assert sb.decode(sa.encode(m.Goodbye(reason="bye"))).seq == 0


def test_session_fatal_codes():
    fatal = [ErrorCode.BAD_SEQUENCE, ErrorCode.BAD_MAC, ErrorCode.BAD_SIGNATURE, ErrorCode.WRONG_SENDER,
             ErrorCode.BAD_NONCE, ErrorCode.NETWORK_MISMATCH, ErrorCode.SELF_CONNECTION,
             ErrorCode.PINNED_KEY_MISMATCH, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNEXPECTED_MESSAGE,
             ErrorCode.STALE_TIMESTAMP, ErrorCode.HANDSHAKE_TIMEOUT]
    assert all(c.fatal for c in fatal)
    assert not ErrorCode.INVALID_BODY.fatal and not ErrorCode.UNKNOWN_TYPE.fatal


def test_opener_sees_the_answerers_refusal_of_ready(identity_a, identity_b):
    """Handshake §4.5: an answerer that refuses READY sends a sessionless ERROR; the opener, already
    established, must read it as the refusal, not as unexpected_message."""
    from galaxynode.gelato.codec import encode_frame
    from galaxynode.gelato.errors import ErrorCode, ProtocolError
    from galaxynode.gelato.handshake import Handshake
    from galaxynode.gelato import messages as m
    o = Handshake(identity_a, opener=True, network="n", role="node")
    r = Handshake(identity_b, opener=False, network="n", role="pool")
    o.receive(r.receive(o.initiate()))
    assert o.established
    refusal = encode_frame(identity_b, m.Error.from_exc(ProtocolError(ErrorCode.STALE_TIMESTAMP, "clock")))
    frame = o.session.decode(refusal)
    assert frame.type == "ERROR" and frame.msg.code == ErrorCode.STALE_TIMESTAMP
    # only as the first frame: later, a signed frame inside the session is unexpected_message
    o.session.recv_seq = 1
    with pytest.raises(ProtocolError) as e:
        o.session.decode(refusal)
    assert e.value.code == ErrorCode.UNEXPECTED_MESSAGE
