import os

import msgpack
import pytest

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Limits, encode_frame, sign_payload
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


def hello(identity, *, network="test", nonce=None, echo=None, versions=(1,), ts=T, **frame_kw):
    msg = m.Hello(network=network, role="pool", nonce=nonce or os.urandom(32), versions=versions, echo=echo)
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
    assert sa.sid == sb.sid == derive_sid(a.nonce, b.nonce, identity_a.public, identity_b.public)
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
    a = hs(identity_a, True, versions=(1, 2, 3))
    b = hs(identity_b, False, versions=(1,))
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


@pytest.mark.parametrize("opener_versions,answerer_versions", [((2,), (1,)), ((1,), (2, 3))])
def test_no_common_version(identity_a, identity_b, opener_versions, answerer_versions):
    a = hs(identity_a, True, versions=opener_versions)
    b = hs(identity_b, False, versions=answerer_versions)
    fails(b, a.initiate(), ErrorCode.NO_COMMON_VERSION)


def test_no_common_version_seen_by_opener(identity_a, identity_b):
    a = hs(identity_a, True, versions=(1,))
    a.initiate()
    fails(a, hello(identity_b, echo=a.nonce, versions=(7,)), ErrorCode.NO_COMMON_VERSION)


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


def test_hello_with_sid(identity_a, identity_b):
    fails(hs(identity_b, False), hello(identity_a, sid=b"\x00" * 32, seq=0), ErrorCode.UNEXPECTED_MESSAGE)


def test_ready_with_sid(identity_a, identity_b):
    b = hs(identity_b, False)
    b.receive(hello(identity_a))
    ready = encode_frame(identity_a, m.Ready(echo=b.nonce), ts=T, sid=b"\x00" * 32, seq=0)
    fails(b, ready, ErrorCode.UNEXPECTED_MESSAGE)


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

def session_frame(identity, sid, seq, *, ftype="PING", body=None, fid=b"\x07" * 16, ts=T):
    raw = msgpack.packb({"type": ftype, "id": fid, "ts": ts, "from": identity.public, "sid": sid, "seq": seq,
                         "body": {} if body is None else body})
    return sign_payload(identity, raw)


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


def test_wrong_sid_from_another_session_between_the_same_keys(identity_a, identity_b, session_pair):
    sa1, sb1 = session_pair(identity_a, identity_b)
    sa2, _ = session_pair(identity_a, identity_b)
    e = decode_fails(sb1, sa2.encode(m.Ping()), ErrorCode.WRONG_SID)
    assert e.fatal and e.ref is not None
    assert sb1.decode(sa1.encode(m.Ping())).seq == 0


def test_frame_without_sid_after_handshake(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    decode_fails(sb, encode_frame(identity_a, m.Ping()), ErrorCode.WRONG_SID)


def test_frame_from_a_third_key(identity_a, identity_b, identity_c, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    e = decode_fails(sb, session_frame(identity_c, sb.sid, 0), ErrorCode.BAD_SIGNATURE)
    assert e.fatal


def test_frame_signed_by_peer_with_a_lying_from(identity_a, identity_b, identity_c, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    raw = msgpack.packb({"type": "PING", "id": b"\x00" * 16, "ts": T, "from": identity_c.public,
                         "sid": sb.sid, "seq": 0, "body": {}})
    decode_fails(sb, sign_payload(identity_a, raw), ErrorCode.WRONG_SENDER)


def test_stale_frame_in_session(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    decode_fails(sb, sa.encode(m.Ping(), ts=T - 200_000), ErrorCode.STALE_TIMESTAMP, now=T)
    # without a clock the session does not judge time
    assert sb.decode(session_frame(identity_a, sb.sid, 0, ts=0)).seq == 0


@pytest.mark.parametrize("ftype,body,code", [
    ("ACK", {"re": b"short"}, ErrorCode.INVALID_BODY),
    ("JOIN", {"ttl": -5}, ErrorCode.INVALID_BODY),
    ("FROBNICATE", {}, ErrorCode.UNKNOWN_TYPE),
])
def test_bad_body_is_not_fatal_and_consumes_the_seq(identity_a, identity_b, session_pair, ftype, body, code):
    sa, sb = session_pair(identity_a, identity_b)
    with pytest.raises(ProtocolError) as info:
        sb.decode(session_frame(identity_a, sb.sid, 0, ftype=ftype, body=body, fid=b"\x09" * 16))
    assert info.value.code is code and not info.value.fatal
    assert info.value.ref == b"\x09" * 16
    assert sb.recv_seq == 1
    assert sb.decode(session_frame(identity_a, sb.sid, 1)).msg == m.Ping()
    # and the seq of the bad frame cannot be replayed afterwards
    decode_fails(sb, session_frame(identity_a, sb.sid, 0), ErrorCode.BAD_SEQUENCE)


def test_envelope_errors_in_session_are_fatal(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b)
    good = sa.encode(m.Ping())
    for data, code in [(b"\xc1", ErrorCode.MALFORMED_FRAME), ("text", ErrorCode.TEXT_FRAME),
                       (good[:-1] + bytes([good[-1] ^ 1]), ErrorCode.BAD_SIGNATURE)]:
        assert decode_fails(sb, data, code).fatal
    assert sb.decode(good).seq == 0


def test_encode_failure_does_not_consume_seq(identity_a, identity_b, session_pair):
    sa, sb = session_pair(identity_a, identity_b, limits=Limits(max_frame_size=400))
    with pytest.raises(ProtocolError) as info:
        sa.encode(m.Goodbye(reason="x" * 256))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert sa.send_seq == 0
    assert sb.decode(sa.encode(m.Goodbye(reason="bye"))).seq == 0


def test_session_fatal_codes():
    fatal = [ErrorCode.BAD_SEQUENCE, ErrorCode.WRONG_SID, ErrorCode.BAD_SIGNATURE, ErrorCode.WRONG_SENDER,
             ErrorCode.BAD_NONCE, ErrorCode.NETWORK_MISMATCH, ErrorCode.SELF_CONNECTION,
             ErrorCode.PINNED_KEY_MISMATCH, ErrorCode.NO_COMMON_VERSION, ErrorCode.UNEXPECTED_MESSAGE,
             ErrorCode.STALE_TIMESTAMP, ErrorCode.HANDSHAKE_TIMEOUT]
    assert all(c.fatal for c in fatal)
    assert not ErrorCode.INVALID_BODY.fatal and not ErrorCode.UNKNOWN_TYPE.fatal


def test_opener_sees_the_answerers_refusal_of_ready(identity_a, identity_b):
    """Handshake §4.5: an answerer that refuses READY sends a sessionless ERROR; the opener, already
    established, must read it as the refusal, not as wrong_sid."""
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
    # only as the first frame: later, a frame without sid is wrong_sid as before
    o.session.recv_seq = 1
    with pytest.raises(ProtocolError) as e:
        o.session.decode(refusal)
    assert e.value.code == ErrorCode.WRONG_SID
