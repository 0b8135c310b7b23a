import hashlib

import msgpack
import pytest

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import (DEFAULT_LIMITS, MAC_LEN, SIGN_PREFIX, Limits, MacKey, decode_envelope,
                                     decode_frame, decode_session_envelope, encode_frame, encode_session_frame,
                                     mac, mac_payload, parse_message, sign_payload)
from galaxynode.gelato.errors import FATAL_CODES, ErrorCode, ProtocolError
from galaxynode.identity import Identity

FID = bytes(range(16))
TS = 1_700_000_000_000
DROP = object()

K1, K2 = b"\x01" * 32, b"\x02" * 32
REF = b"\x03" * 16
DESC = m.SignedDescriptor(record=b"\x93\x01\x02\x03", sig=b"\x04" * 64)
NODE = m.NodeRecord(key=K1, capabilities=("gpu", "cpu"), meta={"zone": "eu"}, expires=TS + 30_000)

SAMPLES = {
    "HELLO": m.Hello(network="main", role="pool", nonce=K1, eph=K2, versions=(2, 3), features=("relay",),
                     agent="galaxynode/0.1", listen=("ws://127.0.0.1:7000",), echo=K2),
    "READY": m.Ready(echo=K2),
    "PING": m.Ping(data=b"abc"),
    "PONG": m.Pong(),
    "ERROR": m.Error(code=3005, name="bad_sequence", message="replayed", re=REF),
    "GOODBYE": m.Goodbye(reason="shutting down"),
    "ACK": m.Ack(re=REF),
    "JOIN": m.Join(ttl=60, capabilities=("gpu",), meta={"region": "eu-west", "v": ""}),
    "HEARTBEAT": m.Heartbeat(ttl=45),
    "LEASE": m.Lease(re=REF, ttl=60, expires=TS + 60_000, interval=20_000),
    "LEAVE": m.Leave(),
    "QUERY": m.Query(capabilities=("gpu",), meta={"zone": "eu"}, key=K1, limit=10, cursor=b"\x00\x01",
                     scope="peers", hops=3),
    "QUERY_RESULT": m.QueryResult(re=REF, nodes=(NODE, m.NodeRecord(key=K2, expires=0, pool=K1)),
                                  cursor=b"c", partial=True),
    "SUBSCRIBE": m.Subscribe(topics=("node.joined", "node.left"), peers=True),
    "UNSUBSCRIBE": m.Unsubscribe(topics=("node.left",)),
    "EVENT": m.Event(topic="node.joined", event_id=REF, origin=K1, ts=TS,
                     data={"key": K2, "caps": ["gpu"], "n": 3, "nested": {"ok": True, "f": 1.5, "none": None}},
                     hops=1),
    "ANNOUNCE": m.Announce(descriptor=DESC),
    "LOOKUP": m.Lookup(network="main", capability="gpu", name="pool-1", limit=5, cursor=b"x"),
    "LOOKUP_RESULT": m.LookupResult(re=REF, descriptors=(DESC, DESC), cursor=None),
    "DESCRIPTORS": m.Descriptors(descriptors=(DESC,)),
    "STATUS": m.Status(),
    "STATUS_RESULT": m.StatusResult(re=REF, key=K1, name="pool-1", network="main", role="pool",
                                    version="0.1.0", uptime=12, nodes=3, peers=1),
    "ADMIN": m.Admin(action="ban", key=K2, duration=3600),
    "ADMIN_RESULT": m.AdminResult(re=REF, items=({"key": K1, "since": 5}, {})),
}


def payload(sender: Identity | bytes, extra: dict | None = None, **fields) -> bytes:
    """A PING payload with header fields overridden (DROP removes one); packed as given.
    `extra` holds entries whose keys are not valid Python keywords."""
    p = {"type": "PING", "id": FID, "ts": TS, "from": getattr(sender, "public", sender), "body": {}}
    p.update(extra or {}, **fields)
    return msgpack.packb({k: v for k, v in p.items() if v is not DROP}, use_bin_type=True)


def frame(ident: Identity, extra: dict | None = None, **fields) -> bytes:
    return sign_payload(ident, payload(ident, extra, **fields))


def outer(*items) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def rejects(code: ErrorCode, data, ref=None, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(data, **kw)
    assert info.value.code is code, info.value
    assert info.value.ref == ref, info.value
    return info.value


# --- round trips ---------------------------------------------------------------------------------

def test_samples_cover_every_message_type():
    assert set(SAMPLES) == set(m.MESSAGES)
    assert all(type(msg).TYPE == name for name, msg in SAMPLES.items())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(identity_a, name):
    msg = SAMPLES[name]
    data = encode_frame(identity_a, msg, frame_id=FID, ts=TS)
    f = decode_frame(data, expected_key=identity_a.public, now=TS)
    assert (f.type, f.id, f.ts, f.sender, f.sid, f.seq, f.size) == (name, FID, TS, identity_a.public, None, None,
                                                                    len(data))
    assert f.msg == msg


MK = MacKey(b"\x6b" * 32)


def session_payload(**fields) -> bytes:
    p = {"type": "PING", "id": FID, "seq": 7, "body": {}}
    p.update(fields)
    return msgpack.packb({k: v for k, v in p.items() if v is not DROP}, use_bin_type=True)


def session_rejects(code: ErrorCode, data, ref=None, key=MK, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_message(decode_session_envelope(data, key, **kw))
    assert info.value.code is code, info.value
    assert info.value.ref == ref, info.value
    return info.value


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_as_session_frame(name):
    data = encode_session_frame(MK, SAMPLES[name], seq=7, frame_id=FID)
    f = parse_message(decode_session_envelope(data, MK))
    assert (f.type, f.id, f.ts, f.seq, f.size, f.msg) == (name, FID, None, 7, len(data), SAMPLES[name])


def test_session_frame_layout(identity_a):
    """[2, payload, mac]: the MAC is keyed BLAKE2b-128 of exactly the payload bytes; the header is
    type, id, seq and body (no from, ts or sid: the key stands for them)."""
    data = encode_session_frame(MK, m.Heartbeat(ttl=30), seq=5, frame_id=FID)
    version, payload, tag = msgpack.unpackb(data)
    assert version == 2 and len(tag) == MAC_LEN == 16
    assert tag == mac(MK.key, payload) == MK.tag(payload)
    assert msgpack.unpackb(payload) == {"type": "HEARTBEAT", "id": FID, "seq": 5, "body": {"ttl": 30}}
    assert data == msgpack.packb([2, payload, tag], use_bin_type=True)  # the hand-built outer array is msgpack's
    signed = encode_frame(identity_a, m.Heartbeat(ttl=30), frame_id=FID, ts=TS)  # v1's header and auth
    assert len(data) < len(signed) - 80, (len(data), len(signed))


def test_large_payloads_get_the_longer_bin_headers():
    for n in (300, 70_000):
        data = encode_session_frame(MK, m.Event(topic="t", event_id=REF, origin=K1, ts=1, data={"b": b"x" * n}),
                                    seq=0)
        assert data == msgpack.packb(msgpack.unpackb(data), use_bin_type=True)
        assert parse_message(decode_session_envelope(data, MK)).msg.data["b"] == b"x" * n


def test_bad_mac():
    good = mac_payload(MK, session_payload())
    version, p, tag = msgpack.unpackb(good)
    session_rejects(ErrorCode.BAD_MAC, outer(2, p, bytes([tag[0] ^ 1]) + tag[1:]))
    session_rejects(ErrorCode.BAD_MAC, outer(2, session_payload(seq=8), tag))  # tampered payload
    session_rejects(ErrorCode.BAD_MAC, good, key=MacKey(b"\x6c" * 32))         # another key
    # digest_size is a BLAKE2b parameter, not a truncation: a 32-byte digest cut short is another value
    session_rejects(ErrorCode.BAD_MAC, outer(2, p, hashlib.blake2b(p, key=MK.key, digest_size=32).digest()[:16]))
    assert decode_session_envelope(good, MK).seq == 7


def test_mac_is_checked_before_the_payload_is_read():
    session_rejects(ErrorCode.BAD_MAC, outer(2, b"\xc1\xc1", b"\x00" * 16))
    session_rejects(ErrorCode.MALFORMED_FRAME, mac_payload(MK, b"\xc1\xc1"))


@pytest.mark.parametrize("raw", [msgpack.packb([1, 2]), b"", msgpack.packb({"type": "PING"}) + b"\x00",
                                 msgpack.packb({"x": msgpack.ExtType(3, b"abc")})])
def test_malformed_session_payload(raw):
    session_rejects(ErrorCode.MALFORMED_FRAME, mac_payload(MK, raw))


@pytest.mark.parametrize("fields", [
    {"type": DROP}, {"type": ""}, {"seq": DROP}, {"seq": -1}, {"seq": "0"}, {"seq": 1.0}, {"seq": False},
    {"seq": None}, {"body": DROP}, {"body": []}, {"body": {1: 2}},
])
def test_bad_session_header_carries_ref(fields):
    session_rejects(ErrorCode.MALFORMED_FRAME, mac_payload(MK, session_payload(**fields)), ref=FID)


def test_session_header_ignores_other_keys():
    f = decode_session_envelope(mac_payload(MK, session_payload(ts=5, sid=b"x", **{"from": K1})), MK)
    assert (f.seq, f.ts) == (7, None)


def test_session_frame_limits():
    data = mac_payload(MK, session_payload(body={"s": "x" * 11}))
    session_rejects(ErrorCode.LIMIT_EXCEEDED, data, limits=Limits(max_str_len=10))
    session_rejects(ErrorCode.FRAME_TOO_LARGE, data, limits=Limits(max_frame_size=len(data) - 1))


def test_each_decoder_refuses_the_other_kind(identity_a):
    e = rejects(ErrorCode.UNEXPECTED_MESSAGE, mac_payload(MK, session_payload()))
    assert "outside a session" in e.message
    session_rejects(ErrorCode.UNEXPECTED_MESSAGE, frame(identity_a))


def test_defaults_and_nil_optionals_round_trip(identity_a):
    for msg in (m.Ping(), m.Join(), m.Query(), m.Hello(network="n", role="node", nonce=K1, eph=K2, versions=(2,))):
        assert decode_frame(encode_frame(identity_a, msg)).msg == msg
    # an explicit nil for an optional field reads as absent
    assert decode_frame(frame(identity_a, body={"data": None})).msg == m.Ping()


def test_unknown_body_keys_are_ignored(identity_a):
    f = decode_frame(frame(identity_a, type="ACK", body={"re": REF, "future": {"x": [1, 2]}}))
    assert f.msg == m.Ack(re=REF)


def test_accepts_any_bytes_like(identity_a):
    data = frame(identity_a)
    assert decode_frame(bytearray(data)).msg == m.Ping()
    assert decode_frame(memoryview(data)).msg == m.Ping()


def test_error_message_from_exception():
    exc = ProtocolError(ErrorCode.BAD_SEQUENCE, "x" * 1000, REF)
    err = m.Error.from_exc(exc)
    assert (err.code, err.name, len(err.message), err.re) == (3005, "bad_sequence", 512, REF)
    assert m.Error.from_body(err.to_body()) == err


def test_protocol_error_text_and_fatal():
    e = ProtocolError(ErrorCode.INVALID_BODY)
    assert str(e) == e.message == "invalid_body" and e.ref is None and not e.fatal
    e = ProtocolError(ErrorCode.BAD_SIGNATURE, "nope")
    assert str(e) == "bad_signature (2000): nope" and e.fatal


def test_overloaded_carries_retry_after_and_lease_interval_is_bounded():
    err = m.Error.from_exc(ProtocolError(ErrorCode.OVERLOADED, "busy", REF, retry_after=45_000))
    assert (err.code, err.name, err.retry_after) == (5004, "overloaded", 45_000)
    assert m.Error.from_body(err.to_body()) == err
    assert "retry_after" not in m.Error.from_exc(ProtocolError(ErrorCode.UNAVAILABLE)).to_body()
    lease = {"re": REF, "ttl": 30, "expires": TS, "interval": 10_000}
    assert m.Lease.from_body(lease).interval == 10_000
    for bad in (0, m.MAX_INTERVAL_MS + 1, None):  # 1..MAX_TTL_S*1000/3, required
        with pytest.raises(ProtocolError) as e:
            m.Lease.from_body({**lease, "interval": bad} if bad is not None else {k: v for k, v in lease.items()
                                                                                  if k != "interval"})
        assert e.value.code is ErrorCode.INVALID_BODY


def test_error_code_groups_and_fatal_flags():
    for code in ErrorCode:
        assert code.group  # every code belongs to a known group
    assert ErrorCode.MALFORMED_FRAME.group == "framing" and ErrorCode.NOT_FOUND.group == "registry"
    non_fatal = {ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID_BODY, ErrorCode.NOT_SUPPORTED, ErrorCode.FORBIDDEN,
                 ErrorCode.NOT_ADMITTED, ErrorCode.NOT_JOINED, ErrorCode.BAD_TTL, ErrorCode.BAD_CURSOR,
                 ErrorCode.BAD_DESCRIPTOR, ErrorCode.STALE_DESCRIPTOR, ErrorCode.NOT_FOUND, ErrorCode.INTERNAL,
                 ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED}
    assert {c for c in ErrorCode if not c.fatal} == non_fatal
    assert FATAL_CODES == set(ErrorCode) - non_fatal


# --- framing -------------------------------------------------------------------------------------

def test_text_frame(identity_a):
    rejects(ErrorCode.TEXT_FRAME, frame(identity_a).decode("latin-1"))


@pytest.mark.parametrize("data", [None, 5, [1, b"", b""]])
def test_not_bytes(data):
    rejects(ErrorCode.MALFORMED_FRAME, data)


def test_frame_too_large(identity_a):
    data = frame(identity_a, body={"pad": b"x" * 200})
    limits = Limits(max_frame_size=len(data) - 1)
    rejects(ErrorCode.FRAME_TOO_LARGE, data, limits=limits)
    rejects(ErrorCode.FRAME_TOO_LARGE, b"\x00" * (len(data)), limits=limits)  # size is checked first
    assert decode_frame(data, Limits(max_frame_size=len(data))).msg == m.Ping()


def test_encoder_refuses_oversized_frame(identity_a):
    with pytest.raises(ProtocolError) as info:
        encode_frame(identity_a, m.Goodbye(reason="x" * 200), limits=Limits(max_frame_size=100))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        sign_payload(identity_a, payload(identity_a), Limits(max_frame_size=50))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


SIG = b"\x00" * 64


MALFORMED_OUTER = {
    "empty": b"",
    "reserved-byte": b"\xc1",
    "truncated-array": b"\x93\x01",
    "empty-map": msgpack.packb({}),
    "map": msgpack.packb({"a": 1}),
    "scalar": msgpack.packb(1),
    "str": msgpack.packb("frame"),
    "bin": msgpack.packb(b"frame"),
    "len0": outer(),
    "len2": outer(2, b"p"),
    "len4": outer(2, b"p", SIG, b""),
    "len5": outer(2, b"p", SIG, b"", b""),
    "version-str": outer("1", b"p", SIG),
    "version-bool": outer(True, b"p", SIG),
    "version-float": outer(1.0, b"p", SIG),
    "version-nil": outer(None, b"p", SIG),
    "payload-str": outer(2, "payload", SIG),
    "payload-empty-str": outer(2, "", SIG),
    "payload-int": outer(2, 5, SIG),
    "payload-array": outer(2, [b"p"], SIG),
    "sig-63": outer(2, b"p", b"\x00" * 63),
    "sig-65": outer(2, b"p", b"\x00" * 65),
    "auth-0": outer(2, b"p", b""),
    "auth-15": outer(2, b"p", b"\x00" * 15),
    "auth-17": outer(2, b"p", b"\x00" * 17),
    "auth-32": outer(2, b"p", b"\x00" * 32),
    "sig-str": outer(2, b"p", "s" * 64),
    "mac-str": outer(2, b"p", "s" * 16),
    "sig-nil": outer(2, b"p", None),
    "ext": outer(2, b"p", msgpack.ExtType(1, b"x")),
    "empty-ext": outer(2, msgpack.ExtType(1, b""), SIG),
    "trailing": outer(2, b"p", SIG) + b"\x00",
    "truncated": outer(2, b"p", SIG)[:-1],
}


@pytest.mark.parametrize("data", MALFORMED_OUTER.values(), ids=MALFORMED_OUTER.keys())
def test_malformed_outer(data):
    rejects(ErrorCode.MALFORMED_FRAME, data)


@pytest.mark.parametrize("version", [0, 1, 3, 255, 2**40, -1])
def test_unsupported_version(identity_a, version):
    p = payload(identity_a)
    data = outer(version, p, identity_a.sign(SIGN_PREFIX + p))
    e = rejects(ErrorCode.UNSUPPORTED_VERSION, data)
    assert f"frame version {version} not supported; we speak [2]" in e.message
    session_rejects(ErrorCode.UNSUPPORTED_VERSION, outer(version, p, b"\x00" * 16))


def test_a_v1_frame_is_unsupported_version_whatever_else_it_holds(identity_a):
    """A v1 peer's frame (its auth a 64-byte signature under the v1 prefix) is refused for its version."""
    p = payload(identity_a)
    rejects(ErrorCode.UNSUPPORTED_VERSION, outer(1, p, identity_a.sign(b"gelato/v1\0" + p)))
    rejects(ErrorCode.UNSUPPORTED_VERSION, outer(1, b"\xc1", b""))


def test_trailing_bytes_after_valid_frame(identity_a):
    rejects(ErrorCode.MALFORMED_FRAME, frame(identity_a) + b"\xc0")


MALFORMED_PAYLOAD = {
    "array": msgpack.packb([1, 2]),
    "str": msgpack.packb("PING"),
    "nil": msgpack.packb(None),
    "empty": b"",
    "reserved-byte": b"\xc1",
    "truncated-map": b"\x85\xa4type",
    "trailing": msgpack.packb({"type": "PING"}) + b"\x00",
    "ext": msgpack.packb({"x": msgpack.ExtType(3, b"abc")}),
    "empty-ext": msgpack.packb({"x": msgpack.ExtType(3, b"")}),
    "timestamp-ext": msgpack.packb({"x": msgpack.Timestamp(1, 0)}),
    "empty-timestamp-ext": b"\x81\xa1x\xc7\x00\xff",
    "array-key": b"\x81\x91\x01\x01",  # unhashable once unpacked
}


@pytest.mark.parametrize("raw", MALFORMED_PAYLOAD.values(), ids=MALFORMED_PAYLOAD.keys())
def test_malformed_payload(identity_a, raw):
    rejects(ErrorCode.MALFORMED_FRAME, sign_payload(identity_a, raw))
    # with a session key the signature is checked first, then the same rejection
    rejects(ErrorCode.MALFORMED_FRAME, sign_payload(identity_a, raw), expected_key=identity_a.public)


@pytest.mark.parametrize("fields", [
    {"id": DROP}, {"id": b"\x00" * 15}, {"id": b"\x00" * 17}, {"id": "0" * 16}, {"id": None},
])
def test_bad_id_has_no_ref(identity_a, fields):
    rejects(ErrorCode.MALFORMED_FRAME, frame(identity_a, fields), ref=None)


@pytest.mark.parametrize("fields", [
    {"type": DROP}, {"type": ""}, {"type": 5}, {"type": b"PING"},
    {"ts": DROP}, {"ts": -1}, {"ts": "1"}, {"ts": 1.5}, {"ts": True}, {"ts": None},
    {"body": DROP}, {"body": None}, {"body": []}, {"body": b""},
    {1: "int key"}, {b"bin": "bin key"}, {None: 1},                 # non-string keys at the top level
    {"body": {1: 2}}, {"body": {"a": [{"b": {b"k": 1}}]}},          # ... and anywhere in the body
])
def test_bad_header_or_shape_carries_ref(identity_a, fields):
    rejects(ErrorCode.MALFORMED_FRAME, frame(identity_a, fields), ref=FID)


def test_signed_frames_ignore_session_header_keys(identity_a):
    """sid and seq mean nothing in a signed frame (v2 session frames do not carry sid at all)."""
    f = decode_frame(frame(identity_a, sid=b"junk", seq=-1))
    assert f.sid is None and f.seq is None


# --- limits --------------------------------------------------------------------------------------

def nested(depth: int):
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


def test_nesting_limit(identity_a):
    # the body is depth 1, so max_depth leaves room for max_depth - 1 containers inside it
    depth = DEFAULT_LIMITS.max_depth - 1
    assert decode_frame(frame(identity_a, body={"x": nested(depth)})).msg == m.Ping()
    rejects(ErrorCode.LIMIT_EXCEEDED, frame(identity_a, body={"x": nested(depth + 1)}), ref=FID)
    rejects(ErrorCode.LIMIT_EXCEEDED, frame(identity_a, body={"x": {"y": nested(depth)}}), ref=FID)
    rejects(ErrorCode.LIMIT_EXCEEDED, frame(identity_a, body={"x": nested(3)}), ref=FID, limits=Limits(max_depth=3))


def test_nesting_beyond_msgpack_stack(identity_a):
    # msgpack's own recursion guard (StackError) is a limit too, not a malformed frame
    raw = b"\x81\xa4body" + b"\x91" * 5000 + b"\x01"
    rejects(ErrorCode.LIMIT_EXCEEDED, sign_payload(identity_a, raw), ref=None)


@pytest.mark.parametrize("limits,body", [
    (Limits(max_str_len=10), {"s": "x" * 11}),
    (Limits(max_str_len=10), {"k" * 11: 1}),                   # keys count as strings
    (Limits(max_bin_len=8), {"b": b"x" * 9}),
    (Limits(max_array_len=3), {"a": [1, 2, 3, 4]}),
    (Limits(max_map_len=6), {"m": {str(i): i for i in range(7)}}),
])
def test_msgpack_limits(identity_a, limits, body):
    rejects(ErrorCode.LIMIT_EXCEEDED, frame(identity_a, body=body), limits=limits)


def test_limits_at_the_boundary_pass(identity_a):
    limits = Limits(max_str_len=10, max_array_len=4)
    assert decode_frame(frame(identity_a, body={"s": "x" * 10, "a": [1, 2, 3, 4]}), limits).msg == m.Ping()


# --- authentication ------------------------------------------------------------------------------

@pytest.mark.parametrize("sender", [DROP, b"\x01" * 31, b"\x01" * 33, "k" * 32, None, 5])
def test_bad_key(identity_a, sender):
    rejects(ErrorCode.BAD_KEY, sign_payload(identity_a, payload(identity_a, **{"from": sender})))


def test_bad_key_with_session_key(identity_a):
    data = sign_payload(identity_a, payload(identity_a, **{"from": DROP}))
    rejects(ErrorCode.BAD_KEY, data, expected_key=identity_a.public)


def test_tampered_payload(identity_a):
    good = payload(identity_a)
    sig = identity_a.sign(SIGN_PREFIX + good)
    bad = payload(identity_a, ts=TS + 1)
    assert len(bad) == len(good)
    rejects(ErrorCode.BAD_SIGNATURE, outer(2, bad, sig))
    rejects(ErrorCode.BAD_SIGNATURE, outer(2, bad, sig), expected_key=identity_a.public)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    rejects(ErrorCode.BAD_SIGNATURE, outer(2, good, flipped))


def test_signature_needs_domain_prefix(identity_a):
    p = payload(identity_a)
    assert SIGN_PREFIX == b"gelato/v2\0"
    rejects(ErrorCode.BAD_SIGNATURE, outer(2, p, identity_a.sign(p)))
    rejects(ErrorCode.BAD_SIGNATURE, outer(2, p, identity_a.sign(b"gelato/v1\0" + p)))


def test_signed_by_another_key(identity_a, identity_b):
    # B signs a frame claiming to be from A
    data = sign_payload(identity_b, payload(identity_a))
    rejects(ErrorCode.BAD_SIGNATURE, data)
    rejects(ErrorCode.BAD_SIGNATURE, data, expected_key=identity_a.public)
    # a frame that is genuinely B's, arriving on A's session
    rejects(ErrorCode.BAD_SIGNATURE, frame(identity_b), expected_key=identity_a.public)


def test_wrong_sender(identity_a, identity_b):
    # A signs, the session key is A, but 'from' names B: the signature is A's, the header lies
    data = sign_payload(identity_a, payload(identity_b))
    rejects(ErrorCode.WRONG_SENDER, data, expected_key=identity_a.public)
    rejects(ErrorCode.BAD_SIGNATURE, data)  # without a session key 'from' decides, and B did not sign


def test_bad_signature_is_checked_before_the_payload_with_a_session_key(identity_a, identity_b):
    junk = b"\xc1\xc1\xc1"
    rejects(ErrorCode.MALFORMED_FRAME, sign_payload(identity_a, junk))
    rejects(ErrorCode.BAD_SIGNATURE, sign_payload(identity_b, junk), expected_key=identity_a.public)


def test_stale_timestamp(identity_a):
    w = DEFAULT_LIMITS.ts_window_ms
    for ts in (TS - w, TS + w):
        assert decode_frame(frame(identity_a, ts=ts), now=TS).ts == ts
    for ts in (TS - w - 1, TS + w + 1, 0):
        rejects(ErrorCode.STALE_TIMESTAMP, frame(identity_a, ts=ts), ref=FID, now=TS)
    assert decode_frame(frame(identity_a, ts=0)).ts == 0  # no clock, no check
    rejects(ErrorCode.STALE_TIMESTAMP, frame(identity_a, ts=TS + 11), ref=FID, now=TS,
            limits=Limits(ts_window_ms=10))


# --- bodies --------------------------------------------------------------------------------------

def test_unknown_type(identity_a):
    e = rejects(ErrorCode.UNKNOWN_TYPE, frame(identity_a, type="NOPE"), ref=FID)
    assert "NOPE" in e.message and not e.fatal
    rejects(ErrorCode.UNKNOWN_TYPE, frame(identity_a, type="ping"), ref=FID)


@pytest.mark.parametrize("ftype,body,where", [
    ("ACK", {}, "ACK.re: required field missing"),
    ("ACK", {"re": None}, "ACK.re: expected bin"),
    ("ACK", {"re": "x" * 16}, "ACK.re: expected bin"),
    ("ACK", {"re": b"x" * 15}, "ACK.re: length 15"),
    ("JOIN", {"ttl": m.MAX_TTL_S + 1}, "JOIN.ttl"),
    ("JOIN", {"ttl": -1}, "JOIN.ttl"),
    ("JOIN", {"ttl": True}, "JOIN.ttl"),
    ("JOIN", {"ttl": 1.0}, "JOIN.ttl"),
    ("JOIN", {"capabilities": "gpu"}, "JOIN.capabilities: expected array"),
    ("JOIN", {"capabilities": ["x"] * (m.MAX_CAPABILITIES + 1)}, "JOIN.capabilities: 33 items"),
    ("JOIN", {"capabilities": [""]}, "JOIN.capabilities[0]"),
    ("JOIN", {"capabilities": ["ok", 5]}, "JOIN.capabilities[1]: expected str"),
    ("JOIN", {"meta": {"k": 1}}, "JOIN.meta.k"),
    ("JOIN", {"meta": {"": "v"}}, "JOIN.meta: key"),
    ("JOIN", {"meta": {"k": "v" * (m.MAX_META_VALUE + 1)}}, "JOIN.meta.k"),
    ("JOIN", {"meta": {str(i): "" for i in range(m.MAX_META_ENTRIES + 1)}}, "JOIN.meta: more than"),
    ("JOIN", {"meta": []}, "JOIN.meta: expected map"),
    ("SUBSCRIBE", {"topics": []}, "SUBSCRIBE.topics: 0 items"),
    ("SUBSCRIBE", {"topics": ["t"] * (m.MAX_TOPICS + 1)}, "SUBSCRIBE.topics"),
    ("SUBSCRIBE", {"topics": ["t"], "peers": 1}, "SUBSCRIBE.peers: expected bool"),
    ("HELLO", {"network": "n", "role": "king", "nonce": K1, "eph": K2, "versions": [2]}, "HELLO.role: must be one of"),
    ("HELLO", {"network": "n", "role": "pool", "nonce": K1, "eph": K2, "versions": [256]}, "HELLO.versions[0]"),
    ("HELLO", {"network": "", "role": "pool", "nonce": K1, "eph": K2, "versions": [2]}, "HELLO.network"),
    ("HELLO", {"network": "n", "role": "pool", "nonce": K1, "versions": [2]}, "HELLO.eph: required"),
    ("HELLO", {"network": "n", "role": "pool", "nonce": K1, "eph": K2[:31], "versions": [2]}, "HELLO.eph: length 31"),
    ("QUERY_RESULT", {"re": REF, "nodes": [{"key": K1}]}, "QUERY_RESULT.nodes[0].expires: required"),
    ("QUERY_RESULT", {"re": REF, "nodes": [5]}, "QUERY_RESULT.nodes[0]: expected map"),
    ("ANNOUNCE", {"descriptor": {"record": b"r", "sig": b"s"}}, "ANNOUNCE.descriptor.sig"),
    ("EVENT", {"topic": "t", "event_id": REF, "origin": K1, "ts": 1, "data": [1]}, "EVENT.data: expected map"),
    ("ADMIN", {"action": "nuke"}, "ADMIN.action"),
    ("ADMIN_RESULT", {"re": REF, "items": [[]]}, "ADMIN_RESULT.items[0]: expected map"),
])
def test_invalid_body(identity_a, ftype, body, where):
    e = rejects(ErrorCode.INVALID_BODY, frame(identity_a, type=ftype, body=body), ref=FID)
    assert where in e.message
    assert not e.fatal


def test_envelope_alone_does_not_judge_the_body(identity_a):
    f = decode_envelope(frame(identity_a, type="NOPE", body={"x": 1}))
    assert (f.type, f.body, f.msg) == ("NOPE", {"x": 1}, None)
