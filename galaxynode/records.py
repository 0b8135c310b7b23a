"""Signed records (sans-IO): what a pool asserts about itself, bound to it by its own signature, so
that any pool can relay it and every hop can verify it without trusting the relay.

A record is a msgpack map; its envelope is ``SignedRecord(record, sig)`` with ``sig`` = Ed25519 by
the record's ``origin`` over ``prefix || record``. As in libp2p's signed envelopes (RFC 0002) the
domain prefix is not carried: the verifier supplies it from the context (the field the envelope was
found in), so a node record can never pass as an event or a pool descriptor, nor a record of one
network as one of another (``network`` is signed). Signing the encoded bytes means no canonical
encoding: relays forward the bytes unaltered and unknown fields stay covered by the signature.

Every record carries the origin's ``seq``: one counter per pool for all kinds, ``max(previous + 1,
now_ms)``, so it only grows, also across restarts, with nothing persisted (as DescriptorIssuer).
Receivers keep, per (origin, node key), the highest node-record seq seen (`NodeSeqs`) and, per
origin, a window of recent event seqs (`EventSeqs`): older versions and replays are refused.

Cost: node records are signed on change, not per answer. The signed ``expires`` is the lease expiry
rounded up to ``granularity_ms``, so heartbeats only force a new signature once per granularity
(`RecordSigner`). The spec is docs/gelato/records.md; check ids (R1..R8, S1..S3) are cited there.
"""
from __future__ import annotations

import bisect
import hashlib
from array import array
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import attrs
import msgpack

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import (MAX_CAPABILITIES, MAX_META_ENTRIES, MAX_NAME, MAX_SIGNED_RECORD, MAX_TOPIC,
                                        MAX_TTL_S, Body, SignedRecord, Spec, field)
from galaxynode.identity import Identity, verify

NODE_PREFIX = b"gelato/v1/node-record\0"
EVENT_PREFIX = b"gelato/v1/event\0"
SIG_LEN = 64
MAX_NODE_RECORD = 16 * 1024   # a NodeRecord at its field bounds encodes to ~13 KiB
MAX_EVENT_RECORD = MAX_SIGNED_RECORD  # the envelope (messages.SignedRecord) is the wire struct
MAX_RECORD_FIELDS = 64        # top-level entries, known plus future ones
MAX_RECORD_DEPTH = 16         # the record map is level 1 (as a frame body, framing §2.7)
MAX_SKEW_MS = 120_000
MAX_GRANULARITY_MS = 3_600_000
MAX_NODE_LIFETIME_MS = MAX_TTL_S * 1000 + MAX_GRANULARITY_MS  # longest lease plus rounding
MAX_EVENT_AGE_MS = 300_000

# Check id -> (error code, what it checks). Codes are what a receiver answers a refused EVENT with;
# refused node records are dropped from the answer, and S1..S3 are never answered (records.md §6).
CHECKS: dict[str, tuple[ErrorCode, str]] = {
    "R1": (ErrorCode.INVALID_BODY, "record is bin of 1..max_record bytes, sig is bin of 64 bytes"),
    "R2": (ErrorCode.INVALID_BODY, "record is exactly one msgpack map: str keys, no duplicates, no ext, "
                                   "nesting <= 16, <= 64 top-level fields"),
    "R3": (ErrorCode.INVALID_BODY, "the record's fields match its kind's schema"),
    "R4": (ErrorCode.FORBIDDEN, "the record's origin is the origin its carrier names"),
    "R5": (ErrorCode.FORBIDDEN, "the record is for the receiver's network"),
    "R6": (ErrorCode.FORBIDDEN, "the record is current at the receiver's clock"),
    "R7": (ErrorCode.FORBIDDEN, "the carrier's copies of signed fields equal the signed ones"),
    "R8": (ErrorCode.FORBIDDEN, "sig verifies with origin over the kind's prefix || record"),
    "S1": (ErrorCode.FORBIDDEN, "not a duplicate of a record already accepted"),
    "S2": (ErrorCode.FORBIDDEN, "seq is not older than what is held for the same subject"),
    "S3": (ErrorCode.FORBIDDEN, "no two different records from one origin with the same seq and subject"),
    "A1": (ErrorCode.FORBIDDEN, "a claim about another origin carries that origin's signed record"),
    "A2": (ErrorCode.FORBIDDEN, "nobody relays the receiver's own records back to it"),
}


class RecordError(ProtocolError):
    """A record refused by check `check` (an id of CHECKS); the code is the check's."""

    def __init__(self, check: str, message: str):
        super().__init__(CHECKS[check][0], f"{check}: {message}")
        self.check = check


# --- the envelope and the kinds ----------------------------------------------------------------

@attrs.frozen(kw_only=True)
class NodeClaim(Body):
    """A pool's record of one of its nodes. ``expires`` is coarse (>= the lease expiry when
    signed); ``issued`` is when it was signed. Times are ms since the epoch."""

    origin: bytes = field("bin", min_len=32, max_len=32)
    network: str = field("str", min_len=1, max_len=MAX_NAME)
    seq: int = field("uint")
    issued: int = field("uint")
    expires: int = field("uint")
    key: bytes = field("bin", min_len=32, max_len=32)
    capabilities: tuple[str, ...] = field("list", max_len=MAX_CAPABILITIES,
                                          item=Spec("str", min_len=1, max_len=MAX_NAME), default=())
    meta: dict = field("strmap", max_len=MAX_META_ENTRIES, default={})


@attrs.frozen(kw_only=True)
class EventClaim(Body):
    """An event as it happened at its origin pool; ``hops`` is not signed (it grows on relay)."""

    origin: bytes = field("bin", min_len=32, max_len=32)
    network: str = field("str", min_len=1, max_len=MAX_NAME)
    seq: int = field("uint")
    topic: str = field("str", min_len=1, max_len=MAX_TOPIC)
    event_id: bytes = field("bin", min_len=16, max_len=16)
    ts: int = field("uint")
    data: dict = field("anymap", default={})


@attrs.frozen
class Kind:
    name: str
    prefix: bytes
    cls: type
    max_record: int


NODE = Kind("node", NODE_PREFIX, NodeClaim, MAX_NODE_RECORD)
EVENT = Kind("event", EVENT_PREFIX, EventClaim, MAX_EVENT_RECORD)


# --- strict decoding (shared by every signed record kind) ----------------------------------------

def _pairs(pairs: list[tuple[Any, Any]]) -> dict:
    """Maps: str keys only, no duplicates (which decoders resolve differently, so a signer could
    mean two things at once)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate map key")
    if any(type(k) is not str for k in out):
        raise ValueError("map keys must be strings")
    return out


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"extension type {code} not allowed")


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than max_depth (value itself is level 1); iterative, so a
    hostile record cannot exhaust the Python stack."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > max_depth:
            return True
        items = v.values() if type(v) is dict else v
        stack.extend((x, d + 1) for x in items if type(x) is dict or type(x) is list)
    return False


def unpack_record(data: bytes, *, max_bytes: int, max_fields: int = MAX_RECORD_FIELDS,
                  max_depth: int = MAX_RECORD_DEPTH) -> dict:
    """One signed record's msgpack map, decoded strictly and within bounds, or ValueError saying
    why not. Kind-independent: pool descriptors can use it too."""
    if type(data) is not bytes or not 0 < len(data) <= max_bytes:
        raise ValueError(f"record must be 1..{max_bytes} bytes")
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, object_pairs_hook=_pairs, max_ext_len=0,
                                ext_hook=_no_ext, max_str_len=max_bytes, max_bin_len=max_bytes,
                                max_array_len=max_bytes, max_map_len=max_bytes)
    except Exception as e:  # msgpack raises a zoo of types (ExtraData for trailing bytes); hooks ValueError
        raise ValueError(f"undecodable: {type(e).__name__}: {e}"[:200]) from None
    if type(value) is not dict:
        raise ValueError("record must be a map")
    if len(value) > max_fields:
        raise ValueError(f"more than {max_fields} top-level fields")
    if _too_deep(value, max_depth):
        raise ValueError(f"nested deeper than {max_depth}")
    return value


def decode(kind: Kind, signed: SignedRecord) -> Any:
    """Structure only (R1-R3); neither the signature nor anything about the receiver is checked."""
    record, sig = signed.record, signed.sig
    if type(record) is not bytes or not 0 < len(record) <= kind.max_record:
        raise RecordError("R1", f"{kind.name} record must be 1..{kind.max_record} bytes")
    if type(sig) is not bytes or len(sig) != SIG_LEN:
        raise RecordError("R1", f"sig must be {SIG_LEN} bytes")
    try:
        body = unpack_record(record, max_bytes=kind.max_record)
    except ValueError as e:
        raise RecordError("R2", str(e)) from None
    try:
        return kind.cls.from_body(body)
    except ProtocolError as e:
        raise RecordError("R3", e.message) from None


def sign(identity: Identity, kind: Kind, claim: Any) -> SignedRecord:
    """Sign our own record. Refuses (ValueError) what any verifier would refuse on its bytes alone,
    so a pool never sends a record nobody accepts."""
    if claim.origin != identity.public:
        raise ValueError("a pool signs only records whose origin is its own key")
    record = _encode(claim)
    signed = SignedRecord(record=record, sig=identity.sign(kind.prefix + record))
    try:
        decode(kind, signed)
    except RecordError as e:
        raise ValueError(f"unsignable {kind.name} record: {e.message}") from None
    return signed


def _encode(claim: Any) -> bytes:
    return msgpack.packb(claim.to_body(), use_bin_type=True)


def _current(kind: Kind, c: Any, now: int, max_skew_ms: int, max_age_ms: int) -> None:
    if kind is NODE:
        if c.expires <= c.issued or c.expires - c.issued > MAX_NODE_LIFETIME_MS:
            raise RecordError("R6", f"lifetime {c.expires - c.issued} ms outside (0, {MAX_NODE_LIFETIME_MS}]")
        if c.expires <= now:
            raise RecordError("R6", f"expired {now - c.expires} ms ago")
        if c.issued > now + max_skew_ms:
            raise RecordError("R6", f"issued {c.issued - now} ms in the future")
    else:
        if c.ts > now + max_skew_ms:
            raise RecordError("R6", f"ts {c.ts - now} ms in the future")
        if c.ts < now - max_age_ms:
            raise RecordError("R6", f"ts {now - c.ts} ms old (at most {max_age_ms})")


def verify_record(kind: Kind, signed: SignedRecord, *, origin: bytes, network: str, now: int,
                  carried: Mapping[str, Any] = MappingProxyType({}), seqs: "NodeSeqs | EventSeqs | None" = None,
                  max_skew_ms: int = MAX_SKEW_MS, max_age_ms: int = MAX_EVENT_AGE_MS) -> Any:
    """Checks R1-R8 in the spec's order (records.md §5): `origin` is the origin the carrier names,
    `carried` its copies of signed fields. With `seqs`, S1-S3 run before the signature (duplicates
    are dropped without a verify) and the seq is recorded only once the signature holds."""
    claim = decode(kind, signed)
    if claim.origin != origin:
        raise RecordError("R4", f"signed by origin {claim.origin.hex()[:16]}, carried as {origin.hex()[:16]}")
    if claim.network != network:
        raise RecordError("R5", f"record for network {claim.network!r}, not {network!r}")
    _current(kind, claim, now, max_skew_ms, max_age_ms)
    for name, value in carried.items():
        if getattr(claim, name) != value:
            raise RecordError("R7", f"the carrier's {name} differs from the signed one")
    if seqs is not None:
        seqs.check(claim, signed.record)
    if not verify(claim.origin, signed.sig, kind.prefix + signed.record):
        raise RecordError("R8", f"signature does not verify with origin {claim.origin.hex()[:16]}")
    if seqs is not None:
        seqs.commit(claim, signed.record)
    return claim


# --- seq state at receivers ---------------------------------------------------------------------

def _digest(record: bytes) -> bytes:
    """What NodeSeqs keeps of a record: enough to tell two records apart, 16 bytes not 16 KiB."""
    return hashlib.blake2b(record, digest_size=16).digest()


class NodeSeqs:
    """Highest node-record seq seen per (origin, node key), LRU-bounded: an older version of a
    record is refused (S2), two different records with one seq too (S3); the same bytes again are
    fine (the same record reaches a pool by several paths). Entries are forgotten once the record
    they remember has expired; a forgotten subject accepts any seq again, which is safe because
    the records it could have refused have expired too (R6)."""

    def __init__(self, max_entries: int = 65_536):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._held: OrderedDict[tuple[bytes, bytes], tuple[int, bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def check(self, claim: NodeClaim, record: bytes) -> None:
        held = self._held.get((claim.origin, claim.key))
        if held is None:
            return
        seq, digest, _ = held
        if claim.seq < seq:
            raise RecordError("S2", f"seq {claim.seq} is older than held seq {seq}")
        if claim.seq == seq and _digest(record) != digest:
            raise RecordError("S3", f"another record with seq {seq} is held")

    def commit(self, claim: NodeClaim, record: bytes) -> None:
        k = (claim.origin, claim.key)
        self._held[k] = (claim.seq, _digest(record), claim.expires)
        self._held.move_to_end(k)
        if len(self._held) > self.max_entries:
            self._held.popitem(last=False)

    def prune(self, now: int) -> int:
        """Forget subjects whose newest record has expired; returns how many."""
        gone = [k for k, (_, _, expires) in self._held.items() if expires <= now]
        for k in gone:
            del self._held[k]
        return len(gone)


class EventSeqs:
    """Per origin, the `window` highest event seqs accepted (an anti-replay window, as in IPsec):
    a seq held is a duplicate (S1), one below the whole full window is stale (S2). Events may arrive
    out of order by other paths, so anything newer than the window's oldest is fine. Origins are
    LRU-bounded; an origin forgotten is still covered by the event age bound (R6)."""

    def __init__(self, window: int = 256, max_origins: int = 4096):
        if window < 1 or max_origins < 1:
            raise ValueError("window and max_origins must be at least 1")
        self.window = window
        self.max_origins = max_origins
        self._seen: OrderedDict[bytes, array] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, claim: EventClaim, record: bytes = b"") -> None:
        seqs = self._seen.get(claim.origin)
        if not seqs:
            return
        i = bisect.bisect_left(seqs, claim.seq)
        if i < len(seqs) and seqs[i] == claim.seq:
            raise RecordError("S1", f"event seq {claim.seq} already accepted")
        if i == 0 and len(seqs) >= self.window:
            raise RecordError("S2", f"event seq {claim.seq} is older than the last {self.window} accepted")

    def commit(self, claim: EventClaim, record: bytes = b"") -> None:
        seqs = self._seen.get(claim.origin)
        if seqs is None:
            seqs = self._seen[claim.origin] = array("Q")
            while len(self._seen) > self.max_origins:
                self._seen.popitem(last=False)
        self._seen.move_to_end(claim.origin)
        i = bisect.bisect_left(seqs, claim.seq)
        if i < len(seqs) and seqs[i] == claim.seq:
            return
        seqs.insert(i, claim.seq)
        if len(seqs) > self.window:
            del seqs[0]


# --- what a receiver accepts from a peer ----------------------------------------------------------

@attrs.frozen
class Accepted:
    """A record as the receiver may use and relay it: origin, the content (taken from the signed
    record when there is one) and the envelope to forward unaltered (None: the sender's own
    unsigned claim, which must not be relayed further)."""

    origin: bytes
    claim: Any
    signed: SignedRecord | None


def _attribution(origin: bytes, signed: SignedRecord | None, *, sender: bytes, own: bytes) -> bool:
    """A1/A2: whether the claim needs its envelope verified."""
    if origin == own:
        raise RecordError("A2", "a record of ours relayed back")
    if origin != sender and signed is None:
        raise RecordError("A1", f"claim about origin {origin.hex()[:16]} without its signed record")
    return signed is not None


def accept_node(n: Any, signed: SignedRecord | None, *, sender: bytes, own: bytes, network: str, now: int,
                seqs: NodeSeqs | None = None, max_skew_ms: int = MAX_SKEW_MS) -> Accepted:
    """A NodeRecord `n` from peer `sender` (attribute pool: its origin, None meaning the sender).
    The sender speaks for itself; anything else needs the origin's signed record, and then the
    signed content is what counts: capabilities and meta from it, expires at most the signed one."""
    origin = n.pool if n.pool is not None else sender
    if not _attribution(origin, signed, sender=sender, own=own):
        claim = NodeClaim(origin=origin, network=network, seq=0, issued=now, expires=n.expires, key=n.key,
                          capabilities=tuple(n.capabilities), meta=dict(n.meta))
        return Accepted(origin, claim, None)
    claim = verify_record(NODE, signed, origin=origin, network=network, now=now, max_skew_ms=max_skew_ms,
                          carried={"key": n.key, "capabilities": tuple(n.capabilities), "meta": dict(n.meta)},
                          seqs=seqs)
    if n.expires < claim.expires:  # the lease the origin reported may end before the signed bound
        claim = attrs.evolve(claim, expires=n.expires)
    return Accepted(origin, claim, signed)


def accept_event(ev: Any, signed: SignedRecord | None, *, sender: bytes, own: bytes, network: str, now: int,
                 seqs: EventSeqs | None = None, max_skew_ms: int = MAX_SKEW_MS,
                 max_age_ms: int = MAX_EVENT_AGE_MS) -> Accepted:
    """An EVENT `ev` from peer `sender`. Its origin speaks for itself; a relayed one needs the
    origin's signed record, whose topic, event id, ts and data are what gets published."""
    if not _attribution(ev.origin, signed, sender=sender, own=own):
        claim = EventClaim(origin=ev.origin, network=network, seq=0, topic=ev.topic, event_id=ev.event_id,
                           ts=ev.ts, data=dict(ev.data))
        return Accepted(ev.origin, claim, None)
    claim = verify_record(EVENT, signed, origin=ev.origin, network=network, now=now, max_skew_ms=max_skew_ms,
                          max_age_ms=max_age_ms, seqs=seqs,
                          carried={"topic": ev.topic, "event_id": ev.event_id, "ts": ev.ts})
    return Accepted(ev.origin, claim, signed)


def matches(claim: NodeClaim, *, capabilities: Iterable[str] = (), meta: Mapping[str, str] = MappingProxyType({}),
            key: bytes | None = None, cursor: bytes | None = None) -> bool:
    """The QUERY filter, re-applied by the receiver to what a peer returns (messages §2.7): every
    capability present, every meta entry equal, the key if given, and after the cursor."""
    return ((key is None or claim.key == key) and (cursor is None or claim.key > cursor)
            and set(capabilities) <= set(claim.capabilities)
            and all(claim.meta.get(k) == v for k, v in meta.items()))


# --- the signing side -----------------------------------------------------------------------------

def coarse_expiry(expires: int, granularity_ms: int) -> int:
    """The signed expiry of a lease ending at `expires`: the next multiple of the granularity
    after it, so a lease extended by heartbeats keeps its signature until it crosses one."""
    return (expires // granularity_ms + 1) * granularity_ms


class RecordSigner:
    """Signs this pool's records: one seq counter for every kind, node records cached per node
    and re-signed only when capabilities or meta change or the lease outgrows the signed expiry.
    With heartbeats every ttl/3 a node costs one signature per `granularity_ms` at most; the price
    is that a relayed record may outlive the lease by up to that much (records.md §4.3)."""

    def __init__(self, identity: Identity, *, network: str, granularity_ms: int = 60_000,
                 max_cached: int = 100_000):
        if not 1_000 <= granularity_ms <= MAX_GRANULARITY_MS:
            raise ValueError(f"granularity_ms must be in 1000..{MAX_GRANULARITY_MS}")
        if max_cached < 1:
            raise ValueError("max_cached must be at least 1")
        self.identity = identity
        self.network = network
        self.granularity_ms = granularity_ms
        self.max_cached = max_cached
        self._seq = 0
        self._nodes: OrderedDict[bytes, tuple[NodeClaim, SignedRecord]] = OrderedDict()
        self.signed = 0  # signatures made (node records and events), for metrics and benchmarks

    def next_seq(self, now: int) -> int:
        self._seq = max(self._seq + 1, now)
        return self._seq

    def node(self, key: bytes, *, capabilities: Iterable[str], meta: Mapping[str, str], expires: int,
             now: int) -> SignedRecord:
        """The signed record of our node `key` whose lease ends at `expires`; ValueError for a
        record too large to sign (the node is then answered unsigned, to direct peers only)."""
        caps, meta = tuple(capabilities), dict(meta)
        held = self._nodes.get(key)
        if (held is not None and held[0].capabilities == caps and held[0].meta == meta
                and expires <= held[0].expires):
            self._nodes.move_to_end(key)
            return held[1]
        claim = NodeClaim(origin=self.identity.public, network=self.network, seq=self.next_seq(now), issued=now,
                          expires=coarse_expiry(max(expires, now), self.granularity_ms), key=key,
                          capabilities=caps, meta=meta)
        signed = sign(self.identity, NODE, claim)
        self.signed += 1
        self._nodes[key] = (claim, signed)
        self._nodes.move_to_end(key)
        while len(self._nodes) > self.max_cached:
            self._nodes.popitem(last=False)
        return signed

    def forget(self, key: bytes) -> None:
        """The node left: drop its cached record (a later JOIN signs a fresh one)."""
        self._nodes.pop(key, None)

    def event(self, topic: str, event_id: bytes, ts: int, data: Mapping[str, Any], *, now: int) -> SignedRecord:
        """Sign one of our events, once: the caller keeps the envelope with the event for every
        subscriber and peer it goes to. ValueError when it does not fit MAX_EVENT_RECORD."""
        claim = EventClaim(origin=self.identity.public, network=self.network, seq=self.next_seq(now), topic=topic,
                           event_id=event_id, ts=ts, data=dict(data))
        signed = sign(self.identity, EVENT, claim)
        self.signed += 1
        return signed
