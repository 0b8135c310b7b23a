"""Property: whatever bytes arrive, the decoder and an established session raise ProtocolError
or return a frame; never any other exception."""
import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import decode_frame, encode_frame, encode_session_frame, mac_payload, sign_payload
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Handshake, Session
from galaxynode.identity import Identity

A = Identity.from_seed(b"\x11" * 32)  # the peer; fixed so that failing examples replay
B = Identity.from_seed(b"\x22" * 32)  # us
T = 1_700_000_000_000
DROP = object()

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(FAST, max_examples=20_000)


def _established() -> tuple[Session, Session]:
    """Both sides of a real handshake in which A opened; fixed nonces and ephemeral keys keep the
    sid and the session keys stable."""
    a = Handshake(A, opener=True, network="test", role="pool", clock=lambda: T, nonce=b"\x01" * 32,
                  eph_secret=b"\x03" * 32)
    b = Handshake(B, opener=False, network="test", role="pool", clock=lambda: T, nonce=b"\x02" * 32,
                  eph_secret=b"\x04" * 32)
    b.receive(a.receive(b.receive(a.initiate())))
    return a.session, b.session


SENDER, ESTABLISHED = _established()
SID = ESTABLISHED.sid
PEER_HELLO = ESTABLISHED.peer_hello
KEY = SENDER.send_key  # A's MAC key: frames made with it get past B's MAC check


def fresh_session() -> Session:
    return attrs.evolve(ESTABLISHED, send_seq=0, recv_seq=0)


def check(data) -> None:
    """Decode three ways; anything but a ProtocolError (or success) propagates and fails the test."""
    for decode in (lambda d: decode_frame(d),
                   lambda d: decode_frame(d, expected_key=A.public, now=T),
                   lambda d: fresh_session().decode(d)):
        try:
            frame = decode(data)
        except ProtocolError as e:
            assert isinstance(e.code, ErrorCode) and isinstance(e.message, str)
            assert e.ref is None or (type(e.ref) is bytes and len(e.ref) == 16)
            continue
        # a frame that decodes re-encodes to one that decodes to the same body
        again = decode_frame(encode_frame(A, frame.msg))
        assert type(again.msg) is type(frame.msg)
        assert msgpack.packb(again.msg.to_body()) == msgpack.packb(frame.msg.to_body())


# --- strategies ----------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
           | st.text(max_size=20) | st.binary(max_size=40))
odd_keys = st.integers(-5, 5) | st.binary(max_size=3) | st.none() | st.booleans() | st.floats(allow_nan=False)
values = st.recursive(
    scalars,
    lambda kids: (st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
                  | st.dictionaries(odd_keys, kids, max_size=2)),
    max_leaves=25)


def usually(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` about seven times in eight (one_of alone would pick each side equally often)."""
    return st.integers(0, 7).flatmap(lambda n: bad if n == 7 else good)


def for_spec(spec: m.Spec) -> st.SearchStrategy:
    """Mostly well-typed values for one schema field, sometimes anything at all."""
    k = spec.kind
    lo = spec.min_len or 0
    hi = max(lo, min(spec.max_len if spec.max_len is not None else 40, 40)) + 1  # may overstep by one
    if k == "str":
        good = st.sampled_from(spec.choices) if spec.choices else st.text(min_size=lo, max_size=hi)
    elif k == "bin":
        good = st.binary(min_size=lo, max_size=hi)
    elif k == "uint":
        good = st.integers(-1, (spec.max if spec.max is not None else 2**64 - 2) + 1)
    elif k == "bool":
        good = st.booleans()
    elif k == "list":
        good = st.lists(for_spec(spec.item), min_size=spec.min_len or 0, max_size=4)
    elif k == "strmap":
        good = st.dictionaries(st.text(max_size=8), st.text(max_size=8) | scalars, max_size=4)
    elif k == "struct":
        good = body_for(spec.struct)
    elif k == "anymap":
        good = st.dictionaries(st.text(max_size=8), values, max_size=4)
    else:
        good = values
    return usually(good, values)


def body_for(cls: type) -> st.SearchStrategy:
    required, optional = {}, {}
    for a in attrs.fields(cls):
        (required if a.default is attrs.NOTHING else optional)[a.name] = for_spec(a.metadata["gelato"])
    return st.fixed_dictionaries(required, optional=optional)


TYPES = sorted(m.MESSAGES)
BODIES = {name: body_for(cls) for name, cls in m.MESSAGES.items()}


def header(good, near: st.SearchStrategy) -> st.SearchStrategy:
    return usually(st.just(good), near | st.just(DROP) | values)


@st.composite
def payloads(draw) -> bytes:
    """A payload map whose every header field is usually right, and a body usually shaped for its type."""
    if draw(st.integers(0, 9)) == 0:
        return msgpack.packb(draw(values), use_bin_type=True)
    ftype = draw(st.sampled_from(TYPES))
    p = {
        "type": draw(header(ftype, st.text(max_size=12))),
        "id": draw(header(b"\x07" * 16, st.binary(min_size=15, max_size=17))),
        "ts": draw(header(T, st.integers(T - 200_000, T + 200_000))),
        "from": draw(header(A.public, st.just(B.public))),
        "sid": draw(header(SID, st.binary(min_size=32, max_size=32))),
        "seq": draw(header(0, st.integers(0, 3))),
        "body": draw(usually(BODIES[ftype], values)),
    }
    p = {k: v for k, v in p.items() if v is not DROP}
    extra = draw(usually(st.just({}), st.dictionaries(st.text(max_size=6) | odd_keys, values, max_size=2)))
    for k, v in extra.items():
        p.setdefault(k, v)
    return msgpack.packb(p, use_bin_type=True)


signed_payloads = payloads().map(lambda raw: sign_payload(A, raw)) | payloads().map(lambda raw: mac_payload(KEY, raw))

_MSGS = (m.Ping(data=b"x"), PEER_HELLO, m.Join(ttl=60, capabilities=("gpu",), meta={"a": "b"}),
         m.QueryResult(re=b"\x03" * 16, nodes=(m.NodeRecord(key=B.public, expires=T),)),
         m.Event(topic="t", event_id=b"\x04" * 16, origin=A.public, ts=T, data={"x": [1, {"y": b""}]}))
BASE_FRAMES = ([encode_session_frame(KEY, msg, seq=0) for msg in _MSGS]
               + [encode_frame(A, msg, ts=T) for msg in _MSGS])


@st.composite
def mutated_frames(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "overwrite"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "splice":
            other = draw(st.sampled_from(BASE_FRAMES))
            data[pos:] = other[draw(st.integers(0, len(other) - 1)):]
        elif op == "overwrite" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xc0, 0xc1, 0xc4, 0xd4, 0xdc, 0xdf, 0xff, 0x90, 0x80]))
    return bytes(data)


@st.composite
def resigned_mutations(draw) -> bytes:
    """Mutate the payload, then sign or MAC it again, so that the mutation gets past the signature."""
    _, base, auth = msgpack.unpackb(draw(st.sampled_from(BASE_FRAMES)))
    data = bytearray(base)
    pos = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        data[pos] ^= 1 << draw(st.integers(0, 7))
    else:
        data[pos:pos + draw(st.integers(0, 4))] = draw(st.binary(max_size=4))
    return sign_payload(A, bytes(data)) if len(auth) == 64 else mac_payload(KEY, bytes(data))


any_input = (st.binary(max_size=300) | mutated_frames() | resigned_mutations() | signed_payloads
             | st.text(max_size=20))


# --- properties ----------------------------------------------------------------------------------

def test_base_frames_are_valid():
    for data in BASE_FRAMES:
        check(data)
    for data in BASE_FRAMES[len(_MSGS):]:
        assert decode_frame(data).msg is not None
    assert fresh_session().decode(BASE_FRAMES[0]).seq == 0


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(data):
    check(data)


@FAST
@given(mutated_frames())
def test_mutated_frames(data):
    check(data)


@FAST
@given(resigned_mutations())
def test_resigned_mutations(data):
    check(data)


@FAST
@given(signed_payloads)
def test_random_payloads(data):
    check(data)


@pytest.mark.slow
@SLOW
@given(any_input)
def test_everything_slow(data):
    check(data)
