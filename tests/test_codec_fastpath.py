"""The decoder's fast paths against the reference code they shortcut.

messages._fast_from_body must accept exactly what _from_body accepts (on bodies as msgpack
decodes them) and build the same message; parse_proven may only vouch for bodies that pass the
codec's shape check. And the decoder as a whole, fast paths on, must reject exactly what the
reference path rejects (same code, ref and message) and decode everything else to the same frame.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable
from unittest import mock

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galaxynode.descriptor import Descriptor
from galaxynode.gelato import codec
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import (Limits, MacKey, _no_duplicates, decode_envelope, decode_frame,
                                     encode_frame, encode_session_frame, mac_payload, sign_payload)
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Session
from galaxynode.identity import Identity

A = Identity.from_seed(b"\x33" * 32)  # the sender
B = Identity.from_seed(b"\x44" * 32)  # the receiver
T = 1_700_000_000_000
FID = bytes(range(16))
SID = b"\x5a" * 32
K = b"\x01" * 32
MK = MacKey(b"\x6b" * 32)  # A's send key = B's receive key
PROP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CLASSES = sorted({*m.MESSAGES.values(), *m.STRUCTS.values(), Descriptor}, key=lambda c: c.__name__)
TYPES = sorted(m.MESSAGES)


def reference_check_shape(value: Any, depth: int, max_depth: int) -> None:
    """codec._check_shape as it was before the fast paths (isinstance tests)."""
    if depth > max_depth:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"nesting deeper than {max_depth}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(ErrorCode.MALFORMED_FRAME, "map keys must be strings")
            if isinstance(v, (dict, list)):
                reference_check_shape(v, depth + 1, max_depth)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                reference_check_shape(v, depth + 1, max_depth)


def _decline(cls: type, body: dict) -> Any:
    raise m._Slow


@contextlib.contextmanager
def reference_only():
    """The decoder with its fast paths off: the outer array read by msgpack, every body walked,
    then parsed by _from_body."""
    with mock.patch.object(m, "_fast_from_body", _decline), \
            mock.patch.object(codec, "parse_proven", lambda *a: None), \
            mock.patch.object(codec, "_check_shape", reference_check_shape), \
            mock.patch.object(codec, "_split_fast", lambda *a: None):
        yield


def wire(value: Any) -> Any:
    """The value as the decoder sees it after msgpack."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False,
                           object_pairs_hook=_no_duplicates)


def outcome(decode: Callable[[], Any]) -> tuple:
    try:
        f = decode()
    except ProtocolError as e:
        return ("error", e.code, e.ref, e.message)
    return ("frame", f.type, f.id, f.ts, f.sender, f.sid, f.seq, f.body, f.size, type(f.msg), f.msg)


def parse_reference(cls: type, body: Any) -> Any:
    try:
        return m._from_body(cls, body, cls.TYPE or cls.__name__)
    except ProtocolError as e:
        return e


def parse_fast(cls: type, body: Any) -> Any:
    try:
        return m._fast_from_body(cls, body)
    except m._Slow:
        return None


# --- strategies ----------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
           | st.text(max_size=12) | st.binary(max_size=40))
odd_keys = st.integers(-3, 3) | st.binary(max_size=3) | st.none() | st.booleans()
anything = st.recursive(
    scalars,
    lambda kids: (st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
                  | st.dictionaries(odd_keys, kids, max_size=2)),
    max_leaves=20)


def one_in(draw, n: int) -> bool:
    """True about once in n draws (hypothesis favours 0, so the rare branch is the top value)."""
    return draw(st.integers(1, n)) == n


def usually(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(1, 8).flatmap(lambda n: bad if n == 8 else good)


def sizes(lo: int, hi: int | None, cap: int) -> st.SearchStrategy[int]:
    """A valid size: a bound itself, or any size in between (kept small)."""
    top = lo + 6 if hi is None else min(hi, lo + 6)
    return st.sampled_from(sorted({n for n in (lo, hi) if n is not None and n <= cap})) | st.integers(lo, top)


def out_of_bounds(lo: int, hi: int | None, cap: int) -> list[int]:
    return [n for n in (lo - 1, None if hi is None else hi + 1) if n is not None and 0 <= n <= cap]


def text(n: int) -> st.SearchStrategy[str]:
    return st.text(min_size=n, max_size=n)


def binary(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def valid(spec: m.Spec) -> st.SearchStrategy:
    """Values the schema accepts, bounds included."""
    k, lo, hi = spec.kind, spec.min_len or 0, spec.max_len
    if k == "str":
        return st.sampled_from(spec.choices) if spec.choices else sizes(lo, hi, 600).flatmap(text)
    if k == "bin":
        return sizes(lo, hi, 600).flatmap(binary)
    if k == "uint":
        top = spec.max if spec.max is not None else 2**64 - 1
        return st.sampled_from([0, top]) | st.integers(0, top)
    if k == "bool":
        return st.booleans()
    if k == "list":
        return sizes(lo, hi, 40).flatmap(lambda n: st.lists(valid(spec.item), min_size=n, max_size=n))
    if k == "strmap":
        key, value = sizes(1, m.MAX_NAME, 600).flatmap(text), sizes(0, m.MAX_META_VALUE, 600).flatmap(text)
        return (st.integers(0, 4) | st.just(hi)).flatmap(
            lambda n: st.dictionaries(key, value, min_size=n, max_size=n))
    if k == "struct":
        return bodies(spec.struct)
    if k == "anymap":
        return st.dictionaries(st.text(max_size=6) | odd_keys, anything, max_size=4)
    return anything


@st.composite
def invalid(draw, spec: m.Spec) -> Any:
    """A value the schema (most likely) rejects: just past a bound, of a near type, or junk."""
    k, lo, hi = spec.kind, spec.min_len or 0, spec.max_len
    if one_in(draw, 4):
        return draw(anything)
    if k in ("str", "bin"):
        make = text if k == "str" else binary
        wrong = binary if k == "str" else text
        if spec.choices and draw(st.booleans()):
            return draw(st.text(max_size=8).filter(lambda v: v not in spec.choices))
        bad = out_of_bounds(lo, hi, 600)
        if bad and draw(st.booleans()):
            return draw(st.sampled_from(bad).flatmap(make))
        return draw(sizes(lo, hi, 600).flatmap(wrong))
    if k == "uint":
        top = spec.max if spec.max is not None else 2**64 - 1
        return draw(st.sampled_from([v for v in (-1, top + 1) if v < 2**64] + [True, 1.0]))
    if k == "bool":
        return draw(st.sampled_from([0, 1, None]))
    if k == "list":
        bad = out_of_bounds(lo, hi, 41)
        if bad and draw(st.booleans()):
            return draw(st.sampled_from(bad).flatmap(lambda n: st.lists(valid(spec.item), min_size=n, max_size=n)))
        items = draw(st.lists(valid(spec.item), max_size=3))
        items.insert(draw(st.integers(0, len(items))), draw(invalid(spec.item)))
        return items
    if k == "strmap":
        good = draw(valid(spec))
        which = draw(st.sampled_from(["count", "key", "value"]))
        if which == "count":
            return {f"k{i}": "v" for i in range(hi + 1)}
        if which == "key":
            good[draw(st.sampled_from(["", "k" * (m.MAX_NAME + 1), 5, b"k"]))] = "v"
        else:
            good[draw(text(1))] = draw(st.sampled_from(["v" * (m.MAX_META_VALUE + 1), 5, None, b"v"]))
        return good
    if k == "struct":
        return draw(bodies(spec.struct, broken=True))
    return draw(anything)  # anymap, any: only a non-map can be wrong, and only for anymap


@st.composite
def bodies(draw, cls: type, broken: bool = False) -> dict:
    """Fields usually valid; sometimes one invalid (always, if broken), absent or nil; sometimes
    keys the schema does not know (with any shape)."""
    fields = attrs.fields(cls)
    bad = draw(st.sampled_from([a.name for a in fields])) if fields and (broken or one_in(draw, 3)) else None
    body: dict = {}
    for a in fields:
        spec = a.metadata["gelato"]
        if a.name == bad:
            roll = draw(st.integers(1, 6))
            if roll == 6:
                continue  # absent (wrong only if required)
            body[a.name] = None if roll == 5 else draw(invalid(spec))
        elif a.default is attrs.NOTHING or draw(st.booleans()):
            body[a.name] = draw(valid(spec))
    if one_in(draw, 5):
        body.update(draw(st.dictionaries(st.text(max_size=6) | odd_keys, anything, min_size=1, max_size=2)))
    return body


classes_and_bodies = st.sampled_from(CLASSES).flatmap(lambda c: st.tuples(st.just(c), bodies(c)))
types_and_bodies = st.sampled_from(TYPES).flatmap(lambda t: st.tuples(st.just(t), bodies(m.MESSAGES[t])))


class Raw(bytes):
    """Pre-encoded msgpack, spliced into a hand-packed map as is."""


def pack_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A map packed entry by entry, so that it may hold the same key twice."""
    out = bytearray(msgpack.Packer().pack_map_header(len(pairs)))
    for k, v in pairs:
        for item in (k, v):
            out += item if isinstance(item, Raw) else msgpack.packb(item, use_bin_type=True)
    return bytes(out)


def with_duplicate(draw, pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    if pairs and one_in(draw, 8):
        k, _ = draw(st.sampled_from(pairs))
        pairs = [*pairs]
        pairs.insert(draw(st.integers(0, len(pairs))), (k, draw(scalars)))
    return pairs


@st.composite
def payloads(draw, session: bool = False) -> bytes:
    """A payload whose header is usually right and whose body usually fits its type; now and then a
    key appears twice (in the header, the body, or a map inside the body). A session frame's header
    is type, id, seq; a signed frame's type, id, ts, from."""
    ftype, body = draw(types_and_bodies)
    if one_in(draw, 10):
        ftype = draw(st.sampled_from(["NOPE", "ping", ""]))
    body_pairs = []
    for k, v in body.items():
        if isinstance(v, dict) and v and one_in(draw, 3):
            v = Raw(pack_map(with_duplicate(draw, [*v.items()])))
        body_pairs.append((k, v))
    if session:
        pairs = [("type", ftype), ("id", FID), ("seq", draw(st.integers(0, 1)))]
    else:
        pairs = [("type", ftype), ("id", FID), ("ts", draw(st.sampled_from([T, T + 1, T - 200_000]))),
                 ("from", A.public)]
    pairs.append(("body", Raw(pack_map(with_duplicate(draw, body_pairs)))))
    if one_in(draw, 10):
        pairs.append(draw(st.tuples(st.text(max_size=4) | odd_keys, anything)))
    if one_in(draw, 10):
        pairs.remove(draw(st.sampled_from(pairs)))
    return pack_map(with_duplicate(draw, pairs))


frames = payloads().map(lambda p: sign_payload(A, p))
session_frames = payloads(session=True).map(lambda p: mac_payload(MK, p)) | frames
limits = st.sampled_from([Limits(), Limits(max_depth=0), Limits(max_depth=1), Limits(max_depth=2),
                          Limits(max_depth=3), Limits(max_map_len=8, max_array_len=8, max_str_len=64)])


# --- properties ----------------------------------------------------------------------------------

@PROP
@given(classes_and_bodies)
def test_fast_parser_accepts_exactly_what_the_reference_accepts(case):
    cls, body = case
    body = wire(body)
    ref, fast = parse_reference(cls, body), parse_fast(cls, body)
    if isinstance(ref, ProtocolError):
        assert fast is None
    else:
        assert fast is not None, f"fast path declined a body the reference accepts: {body!r}"
        assert type(fast) is type(ref) and fast == ref
        assert cls.from_body(body) == ref


@PROP
@given(classes_and_bodies)
def test_from_body_is_the_reference_on_any_input(case):
    """from_body on bodies that did not come from msgpack (tuples, subclasses): same answer."""
    cls, body = case
    ref = parse_reference(cls, body)
    try:
        got = cls.from_body(body)
    except ProtocolError as e:
        assert isinstance(ref, ProtocolError) and (e.code, e.message) == (ref.code, ref.message)
    else:
        assert not isinstance(ref, ProtocolError) and got == ref


@PROP
@given(types_and_bodies, st.integers(0, 4))
def test_proven_bodies_pass_the_shape_check(case, max_depth):
    ftype, body = case
    body = wire(body)
    msg = m.parse_proven(ftype, body, max_depth)
    if msg is not None:
        reference_check_shape(body, 1, max_depth)  # must not raise
        assert msg == parse_reference(m.MESSAGES[ftype], body)


@PROP
@given(frames, limits)
def test_decode_frame_matches_the_reference(data, lim):
    for kw in ({}, {"now": T}, {"expected_key": A.public, "now": T}):
        got = outcome(lambda: decode_frame(data, lim, **kw))
        with reference_only():
            want = outcome(lambda: decode_frame(data, lim, **kw))
        assert got == want


def receiver(limits: Limits = Limits()) -> Session:
    return Session(B, A.public, None, SID, False, MacKey(b"\x00" * 32), MK, limits)


@PROP
@given(session_frames, limits)
def test_session_decode_matches_the_reference(data, lim):
    def decode() -> Any:
        return receiver(lim).decode(data)

    got = outcome(decode)
    with reference_only():
        want = outcome(decode)
    assert got == want


def minimal(spec: m.Spec) -> Any:
    """The smallest value a spec accepts."""
    k, lo = spec.kind, spec.min_len or 0
    if k == "str":
        return spec.choices[0] if spec.choices else "x" * lo
    if k == "list":
        return [minimal(spec.item)] * lo
    if k == "struct":
        return minimal_body(spec.struct)
    return {"bin": b"x" * lo, "uint": 0, "bool": False, "strmap": {}, "anymap": {}, "any": None}[k]


def minimal_body(cls: type) -> dict:
    return {a.name: minimal(a.metadata["gelato"]) for a in attrs.fields(cls) if a.default is attrs.NOTHING}


def edges(spec: m.Spec) -> list:
    """Values at and just past each bound of a spec, and of near types."""
    k, lo, hi = spec.kind, spec.min_len or 0, spec.max_len
    common = [None, True, 0, -1, 1.5, "", b"", [], {}, {"x": 1}]
    if k in ("str", "bin"):
        unit = "é" if k == "str" else b"x"
        sizes = [n for n in (lo - 1, lo, lo + 1, hi, None if hi is None else hi + 1) if n is not None and n >= 0]
        out = [unit * n for n in sizes] + [(unit * n).encode() if k == "str" else "x" * n for n in sizes]
        return out + [*(spec.choices or ()), *(c.upper() for c in spec.choices or ())] + common
    if k == "uint":
        top = spec.max if spec.max is not None else 2**64 - 1
        return [v for v in (0, 1, top - 1, top, top + 1) if v < 2**64] + [-1, False, float(top)] + common
    if k == "bool":
        return [False, True, 0, 1] + common
    if k == "list":
        item = minimal(spec.item)
        sizes = [n for n in (lo - 1, lo, lo + 1, hi, hi + 1) if n >= 0]
        bad_items = [e for e in edges(spec.item) if e != item][:12]
        return [[item] * n for n in sizes] + [[item] * lo + [b] for b in bad_items] + common
    if k == "strmap":
        return ([{"k": "v"}, {"k" * m.MAX_NAME: "v" * m.MAX_META_VALUE}, {f"k{i}": "" for i in range(hi)},
                 {f"k{i}": "" for i in range(hi + 1)}, {"": "v"}, {"k" * (m.MAX_NAME + 1): "v"},
                 {"k": "v" * (m.MAX_META_VALUE + 1)}, {1: "v"}, {b"k": "v"}, {"k": 1}, {"k": None}, {"k": b"v"}]
                + common)
    if k == "struct":
        base = minimal_body(spec.struct)
        return [base] + [{**base, name: e} for name, e in field_edges(spec.struct)][:60] + common
    return common + [{"a": [1, {"b": None}]}]


def field_edges(cls: type) -> list[tuple[str, Any]]:
    return [(a.name, e) for a in attrs.fields(cls) for e in edges(a.metadata["gelato"])]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fast_parser_at_every_bound(cls):
    """Each field of each class at and past its bounds, the rest minimal: fast path and reference agree."""
    base = minimal_body(cls)
    cases = [base, {}] + [{**base, name: e} for name, e in field_edges(cls)]
    cases += [{k: v for k, v in base.items() if k != name} for name in base]  # each required field missing
    for body in cases:
        body = wire(body)
        ref, fast = parse_reference(cls, body), parse_fast(cls, body)
        assert (fast is None) == isinstance(ref, ProtocolError), body
        assert fast is None or (type(fast) is type(ref) and fast == ref), body


# --- cases ---------------------------------------------------------------------------------------

def frame(ftype: str, body: Any, **header: Any) -> bytes:
    p = {"type": ftype, "id": FID, "ts": T, "from": A.public, **header, "body": body}
    return sign_payload(A, msgpack.packb(p, use_bin_type=True))


def rejects(code: ErrorCode, data: bytes, limits: Limits = Limits(), ref: bytes | None = FID) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(data, limits)
    assert (info.value.code, info.value.ref) == (code, ref), info.value
    return info.value


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


JOIN = m.Join(ttl=60, capabilities=("gpu", "cuda"), meta={"zone": "eu", "rack": "r1"})
HELLO = m.Hello(network="main", role="pool", nonce=K, eph=K, versions=(2,), features=("relay",), listen=("ws://h:1",))


@pytest.mark.parametrize("msg", [JOIN, HELLO, m.Ping(data=b"x"), m.Heartbeat(ttl=5), m.Leave(),
                                 m.Query(capabilities=("gpu",), meta={"a": "b"}, key=K, cursor=b"c"),
                                 m.Subscribe(topics=("node.*",)), m.Error(code=1000, name="x", re=FID)])
def test_closed_schemas_are_parsed_with_the_envelope(msg):
    f = decode_envelope(encode_frame(A, msg, ts=T))
    assert f._parsed == msg and f.msg is None  # the envelope alone still reports no message
    assert decode_frame(encode_frame(A, msg, ts=T)).msg == msg


@pytest.mark.parametrize("msg", [
    m.Event(topic="t", event_id=FID, origin=K, ts=T, data={"x": [1, {"y": b""}]}),
    m.QueryResult(re=FID, nodes=(m.NodeRecord(key=K, expires=T),)),
    m.Announce(descriptor=m.SignedDescriptor(record=b"r", sig=b"s" * 64)),
])
def test_open_schemas_are_walked(msg):
    """Fields that can hold any msgpack (or a struct with unknown keys) leave the walk to the codec."""
    assert decode_envelope(encode_frame(A, msg, ts=T))._parsed is None
    assert decode_frame(encode_frame(A, msg, ts=T)).msg == msg


def test_unknown_body_keys_are_walked():
    body = {**JOIN.to_body(), "future": {"ok": [1]}}
    assert decode_envelope(frame("JOIN", body))._parsed is None
    assert decode_frame(frame("JOIN", body)).msg == JOIN
    rejects(ErrorCode.MALFORMED_FRAME, frame("JOIN", {**body, "future": {1: 2}}))
    rejects(ErrorCode.LIMIT_EXCEEDED, frame("JOIN", {**body, "future": nested(20)}))


def test_schema_depth_against_a_lower_limit():
    # a JOIN body is depth 1 and its capabilities list depth 2
    data = encode_frame(A, JOIN, frame_id=FID, ts=T)
    assert decode_frame(data, Limits(max_depth=2)).msg == JOIN
    rejects(ErrorCode.LIMIT_EXCEEDED, data, Limits(max_depth=1))
    rejects(ErrorCode.LIMIT_EXCEEDED, data, Limits(max_depth=0))
    ping = encode_frame(A, m.Ping(data=b"x"), frame_id=FID, ts=T)
    assert decode_frame(ping, Limits(max_depth=1)).msg == m.Ping(data=b"x")
    rejects(ErrorCode.LIMIT_EXCEEDED, ping, Limits(max_depth=0))


@pytest.mark.parametrize("body,code", [
    ({"capabilities": [{1: "x"}]}, ErrorCode.MALFORMED_FRAME),      # a shape fault inside a known field
    ({"capabilities": [nested(20)]}, ErrorCode.LIMIT_EXCEEDED),     # is a framing error, not INVALID_BODY
    ({"meta": {"k": {b"k": 1}}}, ErrorCode.MALFORMED_FRAME),
    ({"meta": {"k": nested(20)}}, ErrorCode.LIMIT_EXCEEDED),
    ({"ttl": {"x": nested(20)}}, ErrorCode.LIMIT_EXCEEDED),
    ({"meta": {"k": 1}}, ErrorCode.INVALID_BODY),
    ({"capabilities": [""]}, ErrorCode.INVALID_BODY),
])
def test_faults_in_known_fields_keep_their_codes(body, code):
    rejects(code, frame("JOIN", body))


def test_shape_faults_are_found_in_document_order():
    rejects(ErrorCode.LIMIT_EXCEEDED, frame("PING", {"a": nested(20), "b": {1: 2}}))
    rejects(ErrorCode.MALFORMED_FRAME, frame("PING", {"b": {1: 2}, "a": nested(20)}))


@pytest.mark.parametrize("where", ["header", "body", "meta"])
def test_duplicate_keys_anywhere(where):
    meta = pack_map([("a", "1"), ("a", "2")] if where == "meta" else [("a", "1")])
    body = pack_map([("ttl", 5), ("meta", Raw(meta))] + ([("ttl", 6)] if where == "body" else []))
    pairs = [("type", "JOIN"), ("id", FID), ("ts", T), ("from", A.public), ("body", Raw(body))]
    if where == "header":
        pairs.append(("ts", T + 1))
    e = rejects(ErrorCode.MALFORMED_FRAME, sign_payload(A, pack_map(pairs)), ref=None)
    assert "duplicate" in e.message


def test_proven_frames_still_obey_the_session():
    """The body is parsed early, but the session's MAC/seq judgement still comes first."""
    session = receiver()
    good = encode_session_frame(MK, JOIN, seq=0)
    with pytest.raises(ProtocolError) as info:
        session.decode(encode_session_frame(MK, JOIN, seq=1))
    assert info.value.code is ErrorCode.BAD_SEQUENCE
    assert session.decode(good).msg == JOIN
    bad_body = mac_payload(MK, msgpack.packb({"type": "JOIN", "id": FID, "seq": 1, "body": {"ttl": -1}},
                                             use_bin_type=True))
    with pytest.raises(ProtocolError) as info:
        session.decode(bad_body)
    assert info.value.code is ErrorCode.INVALID_BODY and session.recv_seq == 2  # the seq is consumed


def test_fast_parser_copies_like_the_reference():
    body = wire(JOIN.to_body())
    msg = m.Join.from_body(body)
    assert msg == JOIN and type(msg.capabilities) is tuple
    assert msg.meta == body["meta"] and msg.meta is not body["meta"]  # a strmap is copied, as before


def _outer(version: bytes, payload: bytes, auth: bytes, *, wide: bool = False) -> bytes:
    """[version, payload, auth] with chosen encodings (wide: bin16/bin32 headers where bin8 would do)."""
    def binary(b: bytes, big: bool) -> bytes:
        return (b"\xc6" + len(b).to_bytes(4, "big") if big else b"\xc5" + len(b).to_bytes(2, "big")) + b
    if wide:
        return b"\x93" + version + binary(payload, False) + binary(auth, True)
    return b"\x93" + version + msgpack.packb(payload, use_bin_type=True) + msgpack.packb(auth, use_bin_type=True)


@PROP
@given(st.sampled_from([b"\x02", b"\xcc\x02", b"\x01", b"\xd0\x02"]), st.binary(max_size=300),
       st.sampled_from([0, 15, 16, 17, 64, 65]), st.booleans(), st.integers(-3, 3), st.binary(max_size=2))
def test_the_hand_read_outer_array_agrees_with_msgpack(version, payload, auth_len, wide, cut, tail):
    """codec._split_fast (the outer array read by hand) against msgpack's reading of the same bytes,
    over other integer encodings of the version, wide bin headers, truncation and trailing bytes."""
    data = _outer(version, payload, b"\x07" * auth_len, wide=wide)
    data = (data[:cut] if cut < 0 else data) + (tail if cut > 0 else b"")
    def split(lim: Limits) -> tuple:
        try:
            return ("parts", *codec.split_frame(data, lim))
        except ProtocolError as e:
            return ("error", e.code, e.ref, e.message)
    for lim in (Limits(), Limits(max_frame_size=max(1, len(data) - 1))):
        got = split(lim)
        with reference_only():
            assert split(lim) == got
