import logging
import os
import struct

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from galaxynode.descriptor import (MAX_LIFETIME_MS, SIGN_PREFIX, Descriptor, DescriptorBook, DescriptorIssuer,
                                   decode_record, sign_descriptor, verify_descriptor)
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import MAX_DESCRIPTOR_RECORD, Announce, SignedDescriptor
from galaxynode.identity import Identity

A = Identity.from_seed(b"\x0a" * 32)
B = Identity.from_seed(b"\x0b" * 32)
NOW = 1_700_000_000_000
HOUR = 3_600_000
BAD, STALE = ErrorCode.BAD_DESCRIPTOR, ErrorCode.STALE_DESCRIPTOR


def desc(identity: Identity = A, **over) -> Descriptor:
    fields = dict(key=identity.public, name="pool-a", network="main",
                  endpoints=("wss://pool-a.example:443/gelato", "ws://127.0.0.1:7000"),
                  capabilities=("gpu", "cpu"), nodes=3, issued=NOW, expires=NOW + HOUR, seq=7)
    fields.update(over)
    return Descriptor(**fields)


def body(identity: Identity = A, **over) -> dict:
    return desc(identity).to_body() | over


def raw_map(pairs) -> bytes:
    """A msgpack map from (key, value) pairs, allowing duplicates and odd keys."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True)
                           for k, v in pairs)


def sign_raw(record: bytes | dict, identity: Identity = A) -> SignedDescriptor:
    """A validly signed record of arbitrary bytes: only the record's content can be at fault."""
    if isinstance(record, dict):
        record = msgpack.packb(record, use_bin_type=True)
    return SignedDescriptor(record=record, sig=identity.sign(SIGN_PREFIX + record))


def refused(signed: SignedDescriptor, code: ErrorCode = BAD, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        verify_descriptor(signed, now=kw.pop("now", NOW + 1000), **kw)
    assert info.value.code == code, info.value
    return info.value


# --- signing and verification --------------------------------------------------------------

def test_round_trip():
    d = desc()
    signed = sign_descriptor(A, d)
    assert verify_descriptor(signed, now=NOW + 1000, network="main") == d
    assert d.role == "pool"
    assert msgpack.unpackb(signed.record)["name"] == "pool-a"
    main = desc(role="mainnet", endpoints=(), capabilities=(), nodes=0)
    assert verify_descriptor(sign_descriptor(A, main), now=NOW) == main


def test_signed_descriptor_travels_in_messages():
    signed = sign_descriptor(A, desc())
    back = Announce.from_body(msgpack.unpackb(msgpack.packb(Announce(descriptor=signed).to_body())))
    assert verify_descriptor(back.descriptor, now=NOW) == desc()


def test_sign_refuses_foreign_key_and_invalid_descriptors():
    with pytest.raises(ValueError, match="key"):
        sign_descriptor(A, desc(B))
    with pytest.raises(ValueError, match="endpoints"):
        sign_descriptor(A, desc(endpoints=("http://x",)))
    with pytest.raises(ValueError, match="name"):
        sign_descriptor(A, desc(name=""))
    with pytest.raises(ValueError):
        sign_descriptor(A, desc(nodes=-1))
    with pytest.raises(ValueError, match="exceeds"):
        sign_descriptor(A, desc(), max_record=50)


def test_unknown_fields_accepted_but_signed():
    record = msgpack.packb(body(future={"nested": [1, {"x": b"y"}]}, v2=True), use_bin_type=True)
    assert verify_descriptor(sign_raw(record), now=NOW) == desc()
    stripped = msgpack.packb(body(future={"nested": [1, {"x": b"z"}]}, v2=True), use_bin_type=True)
    refused(SignedDescriptor(record=stripped, sig=sign_raw(record).sig))


def test_wrong_key_refused():
    refused(sign_raw(body(B), identity=A))  # record claims B, signed by A
    signed_by_b = sign_descriptor(B, desc(B))
    refused(SignedDescriptor(record=sign_descriptor(A, desc()).record, sig=signed_by_b.sig))


TAMPER = {
    "key": B.public, "name": "pool-b", "network": "test", "endpoints": ["ws://evil.example:1"],
    "capabilities": ["gpu"], "nodes": 4, "issued": NOW - 1, "expires": NOW + HOUR + 1, "seq": 8,
    "role": "mainnet",
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_every_field_tampered_after_signing(name):
    signed = sign_descriptor(A, desc())
    tampered = msgpack.packb(body(**{name: TAMPER[name]}), use_bin_type=True)
    assert tampered != signed.record
    err = refused(SignedDescriptor(record=tampered, sig=signed.sig))
    assert "signature" in err.message


def test_signature_tampered():
    signed = sign_descriptor(A, desc())
    for i in (0, 31, 63):
        sig = bytearray(signed.sig)
        sig[i] ^= 0x01
        refused(attrs.evolve(signed, sig=bytes(sig)))
    refused(attrs.evolve(signed, sig=b"\x00" * 63))
    refused(attrs.evolve(signed, sig=b"\x00" * 64))


def test_truncated_and_garbage_records():
    signed = sign_descriptor(A, desc())
    for n in range(len(signed.record)):
        refused(attrs.evolve(signed, record=signed.record[:n]))
    refused(attrs.evolve(signed, record=signed.record + b"\x00"))  # trailing data
    for garbage in (b"\xc1", b"\xff" * 40, os.urandom(200), b"\x91\x01", b"\xa3abc", b"\xc0"):
        refused(sign_raw(garbage))
        refused(attrs.evolve(signed, record=garbage))
    refused(sign_raw(b"\xa2\xff\xfe"))  # invalid UTF-8 string


def test_non_string_keys_refused():
    refused(sign_raw(raw_map(list(body().items()) + [(1, "x")])))
    refused(sign_raw(raw_map(list(body().items()) + [(b"bytes", "x")])))
    refused(sign_raw(raw_map(list(body().items()) + [("extra", {2: "nested int key"})])))


def test_duplicate_keys_refused():
    # A second "name" would be read differently by different decoders: ambiguous, so refused.
    refused(sign_raw(raw_map(list(body().items()) + [("name", "other")])))


@pytest.mark.parametrize("ext", [msgpack.ExtType(1, b"x"), msgpack.ExtType(5, b""), msgpack.Timestamp(1, 0)])
def test_ext_types_refused(ext):
    refused(sign_raw(body(future=ext)))
    refused(sign_raw(body(name=ext)))


def test_oversized_record_refused():
    big = sign_raw(body(padding="x" * 4100))
    refused(big)
    small = sign_descriptor(A, desc())
    refused(small, max_record=len(small.record) - 1)
    assert verify_descriptor(small, now=NOW, max_record=len(small.record)) == desc()
    refused(sign_raw(body(**{f"f{i}": i for i in range(60)})))  # too many fields


def test_record_must_be_a_map():
    refused(sign_raw(msgpack.packb(list(body().values()), use_bin_type=True)))


@pytest.mark.parametrize("name", ["key", "name", "network", "endpoints", "capabilities", "nodes", "issued",
                                  "expires", "seq"])
def test_missing_field_refused(name):
    b = body()
    del b[name]
    assert name in refused(sign_raw(b)).message


def test_role_defaults_to_pool():
    b = body()
    del b["role"]
    assert verify_descriptor(sign_raw(b), now=NOW).role == "pool"


@pytest.mark.parametrize("name,value", [
    ("key", A.public[:31]), ("key", A.public.hex()), ("name", ""), ("name", "n" * 65), ("name", b"pool"),
    ("network", ""), ("network", "n" * 65), ("network", 1), ("endpoints", "ws://a"),
    ("endpoints", [f"ws://h{i}" for i in range(9)]), ("endpoints", ["ws://h/" + "p" * 256]), ("endpoints", [1]),
    ("capabilities", [""]), ("capabilities", [f"c{i}" for i in range(33)]), ("capabilities", ["c" * 65]),
    ("capabilities", "gpu"), ("nodes", -1), ("nodes", "3"), ("nodes", 1.0), ("nodes", True), ("issued", -5),
    ("issued", None), ("expires", 1.5e12), ("seq", -1), ("seq", [1]), ("role", "node"), ("role", "probe"),
    ("role", ""),
])
def test_wrong_type_or_bounds_refused(name, value):
    assert name in refused(sign_raw(body(**{name: value}))).message


@pytest.mark.parametrize("url", [
    "http://pool.example", "tcp://1.2.3.4:5", "ws://", "ws://:7000", "ws://host:99999", "ws://host:port",
    "ws://user:pw@host", "ws://user@host", "ws://ho st", "ws://host\n", "ws://[::1", "ws://host/#frag",
    "WS://host", "wss//host", "",
])
def test_bad_endpoint_refused(url):
    assert "endpoints" in refused(sign_raw(body(endpoints=["ws://ok.example", url]))).message


@pytest.mark.parametrize("url", ["ws://127.0.0.1:7000", "wss://pool.example/gelato?v=1", "ws://[::1]:7000",
                                 "wss://xn--bcher-kva.example"])
def test_good_endpoints_accepted(url):
    assert verify_descriptor(sign_raw(body(endpoints=[url])), now=NOW).endpoints == (url,)


def test_expired_refused():
    signed = sign_descriptor(A, desc())
    assert verify_descriptor(signed, now=NOW + HOUR - 1)
    assert "expired" in refused(signed, now=NOW + HOUR).message
    assert "expired" in refused(signed, now=NOW + 2 * HOUR).message


def test_future_issued_refused():
    signed = sign_descriptor(A, desc(issued=NOW + 120_000, expires=NOW + HOUR))
    assert verify_descriptor(signed, now=NOW)
    assert "future" in refused(signed, now=NOW - 1).message
    assert verify_descriptor(signed, now=NOW - 1, max_skew_ms=200_000)


def test_lifetime_bounds():
    assert verify_descriptor(sign_descriptor(A, desc(expires=NOW + MAX_LIFETIME_MS)), now=NOW)
    too_long = sign_descriptor(A, desc(expires=NOW + MAX_LIFETIME_MS + 1))
    assert "lifetime" in refused(too_long, now=NOW).message
    refused(sign_descriptor(A, desc(expires=NOW + 2 * HOUR)), now=NOW, max_lifetime_ms=HOUR)
    refused(sign_descriptor(A, desc(issued=NOW, expires=NOW)), now=NOW - 1)
    refused(sign_descriptor(A, desc(issued=NOW + 10, expires=NOW)), now=NOW - 1)


def test_wrong_network_refused():
    signed = sign_descriptor(A, desc())
    assert verify_descriptor(signed, now=NOW, network="main")
    assert "network" in refused(signed, network="test").message


# --- property tests ------------------------------------------------------------------------

SIGNED = sign_descriptor(A, desc())


@st.composite
def mutated(draw, data: bytes):
    ops = draw(st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]),
                                  st.integers(0, len(data)), st.integers(0, 255)), min_size=1, max_size=4))
    out = bytearray(data)
    for op, pos, val in ops:
        pos = min(pos, max(len(out) - 1, 0))
        if op == "flip" and out:
            out[pos] ^= 1 << (val % 8)
        elif op == "set" and out:
            out[pos] = val
        elif op == "insert":
            out.insert(pos, val)
        elif op == "delete" and out:
            del out[pos]
        elif op == "cut":
            del out[pos:]
    result = bytes(out)
    assume(result != data)
    return result


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(mutated(SIGNED.record))
def test_mutated_records_never_verify(record):
    with pytest.raises(ProtocolError) as info:
        verify_descriptor(SignedDescriptor(record=record, sig=SIGNED.sig), now=NOW)
    assert info.value.code == BAD


@FAST
@given(mutated(SIGNED.sig))
def test_mutated_signatures_never_verify(sig):
    with pytest.raises(ProtocolError) as info:
        verify_descriptor(SignedDescriptor(record=SIGNED.record, sig=sig), now=NOW)
    assert info.value.code == BAD


@FAST
@given(st.binary(max_size=600), st.binary(min_size=64, max_size=64), st.booleans())
def test_arbitrary_bytes_only_raise_protocol_error(record, sig, self_signed):
    signed = sign_raw(record) if self_signed and record else SignedDescriptor(record=record, sig=sig)
    try:
        verify_descriptor(signed, now=NOW)
    except ProtocolError as e:
        assert e.code == BAD
    book = DescriptorBook(max_entries=2)
    try:
        book.offer(signed, now=NOW)
    except ProtocolError as e:
        assert e.code == BAD


NAMES = st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode()) <= 64)  # bounds count UTF-8 bytes


@FAST
@given(name=NAMES, network=NAMES, caps=st.lists(NAMES, max_size=32),
       nodes=st.integers(0, 2**64 - 1), seq=st.integers(0, NOW + 120_000), role=st.sampled_from(["pool", "mainnet"]),
       hosts=st.lists(st.from_regex(r"[a-z0-9]{1,20}(\.[a-z]{2,5})?", fullmatch=True), max_size=8))
def test_valid_descriptors_round_trip(name, network, caps, nodes, seq, role, hosts):
    d = desc(name=name, network=network, capabilities=tuple(caps), nodes=nodes, seq=seq, role=role,
             endpoints=tuple(f"wss://{h}:443/g" for h in hosts))
    assume(len(d.encode()) <= MAX_DESCRIPTOR_RECORD)  # past it sign_descriptor refuses; the issuer fits
    assert verify_descriptor(sign_descriptor(A, d), now=NOW, network=network) == d


# --- the book ------------------------------------------------------------------------------

def test_book_newer_replaces_older_and_older_is_stale():
    book = DescriptorBook()
    v1 = sign_descriptor(A, desc(seq=1))
    v2 = sign_descriptor(A, desc(seq=2, nodes=9))
    assert book.offer(v1, now=NOW).seq == 1
    assert book.offer(v2, now=NOW).nodes == 9
    assert len(book) == 1 and book.get(A.public).seq == 2 and book.signed(A.public) is v2
    with pytest.raises(ProtocolError) as info:
        book.offer(v1, now=NOW)
    assert info.value.code == STALE
    assert book.get(A.public).seq == 2


def test_book_same_record_is_idempotent_and_conflicting_record_is_stale():
    book = DescriptorBook()
    v = sign_descriptor(A, desc())
    held = book.offer(v, now=NOW)
    copy = SignedDescriptor(record=bytes(v.record), sig=bytes(v.sig))
    assert book.offer(copy, now=NOW + 1) == held
    assert len(book) == 1 and book.signed(A.public) is v
    with pytest.raises(ProtocolError) as info:
        book.offer(sign_descriptor(A, desc(nodes=99)), now=NOW)  # same seq, different content
    assert info.value.code == STALE


def test_book_refuses_forgeries_even_for_known_keys():
    book = DescriptorBook()
    v = sign_descriptor(A, desc(seq=1))
    book.offer(v, now=NOW)
    forged = SignedDescriptor(record=desc(seq=5).encode(), sig=v.sig)
    with pytest.raises(ProtocolError) as info:
        book.offer(forged, now=NOW)
    assert info.value.code == BAD
    with pytest.raises(ProtocolError) as info:
        book.offer(v, now=NOW + HOUR)  # held bytes, but expired now
    assert info.value.code == BAD
    with pytest.raises(ProtocolError) as info:
        book.offer(v, now=NOW, network="test")
    assert info.value.code == BAD
    assert book.signed(A.public) is v


def test_book_all_and_prune():
    book = DescriptorBook()
    short = sign_descriptor(A, desc(expires=NOW + 1000))
    long = sign_descriptor(B, desc(B, name="pool-b", expires=NOW + HOUR))
    book.offer(short, now=NOW)
    book.offer(long, now=NOW)
    assert {d.name for d in book.all(NOW)} == {"pool-a", "pool-b"}
    assert [d.name for d in book.all(NOW + 1000)] == ["pool-b"]
    assert book.prune(NOW + 999) == []
    assert [d.name for d in book.prune(NOW + 1000)] == ["pool-a"]
    assert len(book) == 1 and book.get(A.public) is None and book.signed(A.public) is None
    assert book.get(b"\x00" * 32) is None


def test_book_bounded():
    ids = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 5)]
    book = DescriptorBook(max_entries=2)
    book.offer(sign_descriptor(ids[0], desc(ids[0], expires=NOW + 1000)), now=NOW, verified=True)
    book.offer(sign_descriptor(ids[1], desc(ids[1])), now=NOW, verified=True)
    with pytest.raises(ProtocolError) as info:  # relayed never evicts verified
        book.offer(sign_descriptor(ids[2], desc(ids[2])), now=NOW)
    assert info.value.code == ErrorCode.UNAVAILABLE
    book.offer(sign_descriptor(ids[1], desc(ids[1], seq=8)), now=NOW)  # known keys still update
    book.offer(sign_descriptor(ids[2], desc(ids[2])), now=NOW + 1000)  # the expired entry makes room
    assert len(book) == 2 and book.get(ids[0].public) is None and book.get(ids[2].public)


# --- persistence ---------------------------------------------------------------------------

def test_disk_round_trip(tmp_path, caplog):
    path = tmp_path / "state" / "descriptors.msgpack"
    book = DescriptorBook()
    a = sign_descriptor(A, desc())
    b = sign_descriptor(B, desc(B, name="pool-b", network="test"))
    book.offer(a, now=NOW)
    book.offer(b, now=NOW)
    book.to_disk(path)
    book.to_disk(path)  # replacing an existing file
    assert os.listdir(path.parent) == ["descriptors.msgpack"]  # no temp files left behind
    with caplog.at_level(logging.WARNING):
        loaded = DescriptorBook.from_disk(path, NOW + 10)
    assert not caplog.records
    assert len(loaded) == 2 and loaded.signed(A.public) == a and loaded.signed(B.public) == b
    assert loaded.get(B.public) == desc(B, name="pool-b", network="test")
    only_main = DescriptorBook.from_disk(path, NOW + 10, network="main")
    assert len(only_main) == 1 and only_main.get(A.public)
    assert len(DescriptorBook.from_disk(path, NOW, max_entries=1)) == 1


def test_disk_skips_expired_and_bad_entries(tmp_path, caplog):
    path = tmp_path / "d.msgpack"
    good = sign_descriptor(A, desc(expires=NOW + 2 * HOUR))
    old = sign_descriptor(B, desc(B, expires=NOW + 1000))
    forged = SignedDescriptor(record=desc(B, seq=99).encode(), sig=old.sig)
    entries = [good.to_body(), old.to_body(), forged.to_body(), {"record": 5}, "junk", sign_raw(b"\xc1").to_body()]
    path.write_bytes(msgpack.packb({"version": 1, "descriptors": entries}, use_bin_type=True))
    with caplog.at_level(logging.WARNING, logger="galaxynode.descriptor"):
        book = DescriptorBook.from_disk(path, NOW + HOUR)
    assert len(book) == 1 and book.signed(A.public) == good
    assert "skipped 5 of 6" in caplog.text


@pytest.mark.parametrize("content", [
    b"", b"\xc1", b"garbage" * 100, msgpack.packb([1, 2, 3]), msgpack.packb({"version": 2, "descriptors": []}),
    msgpack.packb({"version": 1}), msgpack.packb({"version": 1, "descriptors": {"a": 1}}),
    msgpack.packb({"version": 1, "descriptors": [msgpack.ExtType(1, b"x")]}),
    "truncated",
])
def test_corrupt_file_gives_empty_book(tmp_path, caplog, content):
    path = tmp_path / "d.msgpack"
    if content == "truncated":
        book = DescriptorBook()
        book.offer(sign_descriptor(A, desc()), now=NOW)
        book.to_disk(path)
        content = path.read_bytes()[:-10]
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="galaxynode.descriptor"):
        book = DescriptorBook.from_disk(path, NOW)
    assert len(book) == 0
    assert "corrupt" in caplog.text


def test_oversized_file_and_missing_file(tmp_path, caplog):
    path = tmp_path / "d.msgpack"
    with caplog.at_level(logging.WARNING):
        assert len(DescriptorBook.from_disk(path, NOW)) == 0  # first start: no file, no warning
    assert not caplog.records
    path.write_bytes(b"\x00" * 10_000)
    with caplog.at_level(logging.WARNING, logger="galaxynode.descriptor"):
        assert len(DescriptorBook.from_disk(path, NOW, max_entries=1)) == 0
    assert "larger than" in caplog.text
    (tmp_path / "dir").mkdir()
    with caplog.at_level(logging.WARNING, logger="galaxynode.descriptor"):
        assert len(DescriptorBook.from_disk(tmp_path / "dir", NOW)) == 0
    assert "unreadable" in caplog.text


# --- the issuer ----------------------------------------------------------------------------

def issuer(**kw) -> DescriptorIssuer:
    return DescriptorIssuer(A, name="pool-a", network="main", endpoints=["ws://127.0.0.1:7000"],
                            ttl_ms=kw.pop("ttl_ms", HOUR), **kw)


def test_issuer_bumps_seq_only_on_change_or_half_life():
    iss = issuer()
    assert iss.descriptor is None
    first = iss.current(NOW, nodes=2, capabilities=["gpu", "cpu"])
    d1 = verify_descriptor(first, now=NOW, network="main")
    assert d1.seq >= NOW and d1.expires == NOW + HOUR and d1.key == A.public and iss.descriptor == d1
    assert iss.current(NOW + 1000, nodes=2, capabilities=["gpu", "cpu"]) is first
    assert iss.current(NOW + HOUR // 2 - 1, nodes=2, capabilities=("gpu", "cpu", "gpu")) is first
    nodes = verify_descriptor(iss.current(NOW + 2000, nodes=3, capabilities=["gpu", "cpu"]), now=NOW + 2000)
    assert nodes.seq > d1.seq and nodes.nodes == 3 and nodes.issued == NOW + 2000
    caps = verify_descriptor(iss.current(NOW + 3000, nodes=3, capabilities=["gpu"]), now=NOW + 3000)
    assert caps.seq > nodes.seq and caps.capabilities == ("gpu",)
    same = iss.current(NOW + 3000 + HOUR // 2 - 1, nodes=3, capabilities=["gpu"])
    assert verify_descriptor(same, now=NOW + 3000).seq == caps.seq
    renewed = verify_descriptor(iss.current(NOW + 3000 + HOUR // 2, nodes=3, capabilities=["gpu"]), now=NOW + 3000 + HOUR // 2)
    assert renewed.seq > caps.seq and renewed.expires == NOW + 3000 + HOUR // 2 + HOUR


def test_issuer_descriptors_are_accepted_in_order_by_a_book():
    iss, book = issuer(), DescriptorBook()
    t = NOW
    for nodes in (1, 2, 2, 3, 3, 4):
        t += 1  # several changes within the same ms still increase seq
        book.offer(iss.current(t, nodes=nodes, capabilities=[]), now=t)
        assert book.get(A.public).nodes == nodes
        iss.current(t, nodes=nodes + 100, capabilities=[])
        iss.current(t, nodes=nodes, capabilities=[])


def test_issuer_seq_grows_across_restarts():
    before = issuer()
    old = verify_descriptor(before.current(NOW, nodes=1, capabilities=[]), now=NOW)
    for n in range(5):  # many re-signs within one ms push seq past the clock
        before.current(NOW, nodes=n + 2, capabilities=[])
    last = before.descriptor.seq
    assert last > old.seq
    book = DescriptorBook()
    book.offer(before.current(NOW, nodes=0, capabilities=[]), now=NOW)
    after = issuer()  # restart: no state, clock has moved on
    book.offer(after.current(NOW + 1000, nodes=0, capabilities=[]), now=NOW + 1000)
    assert book.get(A.public).seq > last


def test_issuer_caps_capabilities_and_validates_config():
    iss = issuer()
    caps = [f"cap{i}" for i in range(40)] + ["cap0"]
    d = verify_descriptor(iss.current(NOW, nodes=1, capabilities=caps), now=NOW)
    assert d.capabilities == tuple(f"cap{i}" for i in range(32))
    with pytest.raises(ValueError):
        issuer(ttl_ms=0)
    with pytest.raises(ValueError):
        issuer(ttl_ms=MAX_LIFETIME_MS + 1)
    with pytest.raises(ValueError, match="endpoints"):
        DescriptorIssuer(A, name="p", network="main", endpoints=["http://x"], ttl_ms=HOUR)
    with pytest.raises(ValueError, match="name"):
        DescriptorIssuer(A, name="", network="main", endpoints=[], ttl_ms=HOUR)
    with pytest.raises(ValueError, match="role"):
        issuer(role="node")
    with pytest.raises(ValueError):
        iss.current(NOW, nodes=-1, capabilities=[])


def test_issuer_fits_any_capabilities_into_the_record_limit():
    """Issue 12 item 1: 32 capabilities of 62 two-byte characters made the record exceed 4,096 bytes
    and the rebuild raised. Over-long ones are skipped (a verifier refuses them), and with the widest
    configured fields the least common capabilities are left out until the record fits."""
    iss = issuer()
    reported = ["\u00e9" * 62 + f"{i:02d}" for i in range(32)]  # 126 bytes each: over MAX_NAME
    d = verify_descriptor(iss.current(NOW, nodes=32, capabilities=reported), now=NOW)
    assert d.capabilities == () and d.nodes == 32
    wide = DescriptorIssuer(A, name="n" * 64, network="w" * 64, ttl_ms=HOUR,
                            endpoints=[f"wss://{'h' * 200}{i}.example:443/{'p' * 30}" for i in range(8)])
    caps = ["\u00e9" * 31 + f"{i:02d}" for i in range(40)]  # 64 bytes each, most common first
    signed = wide.current(NOW, nodes=1, capabilities=caps)
    d = verify_descriptor(signed, now=NOW, network="w" * 64)
    assert len(signed.record) <= MAX_DESCRIPTOR_RECORD
    assert 0 < len(d.capabilities) < 32 and d.capabilities == tuple(caps[:len(d.capabilities)])
    assert wide.dropped == 32 - len(d.capabilities)
    assert wide.current(NOW + 1, nodes=1, capabilities=caps) is signed  # unchanged input: no re-sign
    with pytest.raises(ValueError, match="exceeds"):  # what the operator configured must fit at once
        DescriptorIssuer(A, name="n", network="w", ttl_ms=HOUR, max_record=200,
                         endpoints=[f"wss://{'h' * 200}.example:443/"])


@FAST
@given(caps=st.lists(st.text(min_size=0, max_size=80), max_size=48), nodes=st.integers(0, 2**64 - 1))
def test_issuer_always_signs_what_verifiers_accept(caps, nodes):
    d = verify_descriptor(issuer().current(NOW, nodes=nodes, capabilities=caps), now=NOW)
    assert set(d.capabilities) <= set(caps)


def test_decode_record_does_not_check_signature():
    assert decode_record(desc().encode()) == desc()
