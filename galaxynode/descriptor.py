"""Signed pool descriptors (sans-IO): a self-contained record a pool signs so anyone can relay it
and anyone can verify it without trusting the relay.

Wire form is `messages.SignedDescriptor`: ``record`` is a msgpack map with string keys, ``sig`` is
Ed25519 over ``b"gelato/v1/descriptor\\0" + record`` by the key named inside the record. Signing
the encoded bytes means no canonical encoding is needed, relays forward the bytes unaltered, and
unknown record fields (from newer versions) are ignored yet still covered by the signature.
A higher ``seq`` from the same key replaces a lower one.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import attrs
import msgpack

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import (MAX_CAPABILITIES, MAX_DESCRIPTOR_RECORD, MAX_ENDPOINT, MAX_ENDPOINTS,
                                        MAX_NAME, Body, SignedDescriptor, Spec, field, is_str_of, utf8_len)
from galaxynode.identity import Identity, verify
from galaxynode.records import unpack_record

log = logging.getLogger(__name__)

SIGN_PREFIX = b"gelato/v1/descriptor\0"
DESCRIPTOR_ROLES = ("pool", "mainnet")
MAX_LIFETIME_MS = 24 * 3600 * 1000
MAX_SKEW_MS = 120_000
MAX_RECORD_FIELDS = 64  # top-level entries, known plus future ones
FILE_VERSION = 1


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_DESCRIPTOR, message)


def endpoint_error(url: str) -> str | None:
    """Why `url` is not a usable ws:// or wss:// endpoint, or None."""
    if not url.startswith(("ws://", "wss://")):
        return "scheme must be ws:// or wss://"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as e:
        return f"invalid URL ({e})"
    if not parts.hostname:
        return "missing host"
    if parts.username is not None or parts.password is not None:
        return "credentials are not allowed in a public endpoint"
    if parts.fragment:
        return "fragments are not allowed"
    return None


@attrs.frozen(kw_only=True)
class Descriptor(Body):
    """The decoded record. Times are ms since the epoch."""

    key: bytes = field("bin", min_len=32, max_len=32)
    name: str = field("str", min_len=1, max_len=MAX_NAME)
    network: str = field("str", min_len=1, max_len=MAX_NAME)
    endpoints: tuple[str, ...] = field("list", max_len=MAX_ENDPOINTS,
                                       item=Spec("str", min_len=1, max_len=MAX_ENDPOINT))
    capabilities: tuple[str, ...] = field("list", max_len=MAX_CAPABILITIES,
                                          item=Spec("str", min_len=1, max_len=MAX_NAME))
    nodes: int = field("uint")
    issued: int = field("uint")
    expires: int = field("uint")
    seq: int = field("uint")
    role: str = field("str", choices=DESCRIPTOR_ROLES, default="pool")

    def encode(self) -> bytes:
        return msgpack.packb(self.to_body(), use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"extension type {code} not allowed")


def decode_record(record: Any, *, max_record: int = MAX_DESCRIPTOR_RECORD) -> Descriptor:
    """Strict, bounded decode and field validation; the signature is NOT checked here."""
    if type(record) is not bytes or not record:
        raise _bad("record must be non-empty bytes")
    if len(record) > max_record:
        raise _bad(f"record of {len(record)} bytes exceeds {max_record}")
    try:  # the same strict decoding as every signed record (string keys, no duplicates, no ext)
        body = unpack_record(record, max_bytes=max_record, max_fields=MAX_RECORD_FIELDS)
    except ValueError as e:
        raise _bad(f"record: {e}") from None
    try:
        desc = Descriptor.from_body(body)
    except ProtocolError as e:
        raise _bad(e.message) from None
    for i, url in enumerate(desc.endpoints):
        why = endpoint_error(url)
        if why:
            raise _bad(f"Descriptor.endpoints[{i}]: {why}")
    return desc


def _check_signature(desc: Descriptor, signed: SignedDescriptor) -> None:
    if type(signed.sig) is not bytes or len(signed.sig) != 64:
        raise _bad("signature must be 64 bytes")
    if not verify(desc.key, signed.sig, SIGN_PREFIX + signed.record):
        raise _bad(f"signature does not verify with the record's key {desc.key.hex()[:16]}")


def _check_current(desc: Descriptor, *, now: int, network: str | None, max_lifetime_ms: int,
                   max_skew_ms: int) -> None:
    """The checks that depend on the verifier's clock and network, not on the bytes alone."""
    if desc.expires <= desc.issued:
        raise _bad("expires is not after issued")
    if desc.expires - desc.issued > max_lifetime_ms:
        raise _bad(f"lifetime of {desc.expires - desc.issued} ms exceeds {max_lifetime_ms}")
    if desc.expires <= now:
        raise _bad(f"expired {now - desc.expires} ms ago")
    if desc.issued > now + max_skew_ms:
        raise _bad(f"issued {desc.issued - now} ms in the future")
    # Issuers use seq = max(previous + 1, now_ms): a seq past the clock's reach would lock the key
    # out of replacing its own descriptor (nothing newer could follow 2**64 - 1) for a lifetime.
    if desc.seq > now + max_skew_ms:
        raise _bad(f"seq {desc.seq} is more than {max_skew_ms} ms past the clock ({now})")
    if network is not None and desc.network != network:
        raise _bad(f"descriptor is for network {desc.network!r}, not {network!r}")


def verify_descriptor(signed: SignedDescriptor, *, now: int, network: str | None = None,
                      max_record: int = MAX_DESCRIPTOR_RECORD, max_lifetime_ms: int = MAX_LIFETIME_MS,
                      max_skew_ms: int = MAX_SKEW_MS) -> Descriptor:
    """Decode and verify a relayed descriptor; any defect is ProtocolError(BAD_DESCRIPTOR)."""
    desc = decode_record(signed.record, max_record=max_record)
    _check_signature(desc, signed)
    _check_current(desc, now=now, network=network, max_lifetime_ms=max_lifetime_ms, max_skew_ms=max_skew_ms)
    return desc


def sign_descriptor(identity: Identity, descriptor: Descriptor, *,
                    max_record: int = MAX_DESCRIPTOR_RECORD) -> SignedDescriptor:
    """Sign our own descriptor. Refuses (ValueError) anything a verifier would refuse on its
    bytes alone, so a pool never announces a descriptor nobody accepts."""
    if descriptor.key != identity.public:
        raise ValueError("descriptor key is not the signing identity's public key")
    record = descriptor.encode()
    try:
        decode_record(record, max_record=max_record)
    except ProtocolError as e:
        raise ValueError(f"invalid descriptor: {e.message}") from None
    return SignedDescriptor(record=record, sig=identity.sign(SIGN_PREFIX + record))


# Standing of a held descriptor, lowest evicted first. PINNED: this pool's static peers (and any
# key the operator pins): never evicted, never refused for room. VERIFIED: a peer's own descriptor
# (its key proven by the session handshake) or one from the main net (which dialled its endpoint).
# RELAYED: anything else a peer passed on; the only kind the per-source and per-network quotas count.
RELAYED, VERIFIED, PINNED = 0, 1, 2


def network_prefix(host: str) -> str:
    """The network a host is in, for quotas: IPv4 /24, IPv6 /48 (an IPv4-mapped address counts as
    IPv4), a DNS name as itself (lower-cased). One operator usually holds a whole /24 or /48."""
    host = host.strip("[]").split("%", 1)[0].lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network((ip, bits), strict=False))


def endpoint_network(desc: Descriptor) -> str:
    """network_prefix of the host of the descriptor's first endpoint (the one pools dial)."""
    if not desc.endpoints:
        return ""
    try:
        return network_prefix(urlsplit(desc.endpoints[0]).hostname or "")
    except ValueError:
        return ""


@attrs.define
class _Entry:
    desc: Descriptor
    signed: SignedDescriptor
    rank: int = RELAYED
    source: Any = None   # who brought it (a peer key, "mainnet"); quotas count RELAYED entries per source
    seen: int = 0        # ms of the last offer of these (or newer) bytes


class DescriptorBook:
    """The newest verified descriptor per pool key, bounded by max_entries.

    Keys are free to mint, so the book must not be a first-come store: it keeps at most
    `max_per_source` relayed descriptors per source (the peer that sent them) and `max_per_network`
    relayed descriptors whose first endpoint is in one network (network_prefix); past those a new
    key is refused with UNAVAILABLE. When the book is full, a new descriptor evicts the held one of
    lowest standing (relayed < verified < pinned), least recently seen first, but only one of no
    higher standing than itself: junk from one peer can evict only older junk, never a verified
    pool, and a pinned key (a static peer) always fits.
    """

    def __init__(self, *, max_entries: int = 10_000, max_record: int = MAX_DESCRIPTOR_RECORD,
                 max_lifetime_ms: int = MAX_LIFETIME_MS, max_skew_ms: int = MAX_SKEW_MS,
                 max_per_source: int = 256, max_per_network: int = 64, pinned: Iterable[bytes] = ()):
        if min(max_entries, max_per_source, max_per_network) < 1:
            raise ValueError("max_entries, max_per_source and max_per_network must be at least 1")
        self.max_entries = max_entries
        self.max_record = max_record
        self.max_lifetime_ms = max_lifetime_ms
        self.max_skew_ms = max_skew_ms
        self.max_per_source = max_per_source
        self.max_per_network = max_per_network
        self.pinned: set[bytes] = set(pinned)
        self.evicted = 0  # descriptors dropped to make room (metrics, tests)
        self._entries: dict[bytes, _Entry] = {}
        self._by_source: Counter[Any] = Counter()   # RELAYED entries per source
        self._by_network: Counter[str] = Counter()  # RELAYED entries per endpoint network
        self._next_expiry: int | None = None  # lower bound of held expiries: prune only when useful

    def __len__(self) -> int:
        return len(self._entries)

    def pin(self, key: bytes) -> None:
        """Always keep (room is made) and never evict `key`'s descriptor: e.g. a static peer's."""
        self.pinned.add(key)
        e = self._entries.get(key)
        if e is not None:
            self._count(e, -1)
            e.rank = PINNED

    def _count(self, e: _Entry, n: int) -> None:
        if e.rank == RELAYED:
            self._by_source[e.source] += n
            self._by_network[endpoint_network(e.desc)] += n
            for counter, k in ((self._by_source, e.source), (self._by_network, endpoint_network(e.desc))):
                if counter[k] <= 0:
                    del counter[k]

    def _drop(self, key: bytes) -> _Entry:
        e = self._entries.pop(key)
        self._count(e, -1)
        return e

    def offer(self, signed: SignedDescriptor, *, now: int, network: str | None = None, source: Any = None,
              verified: bool = False) -> Descriptor:
        """Verify and keep if newer. Returns the descriptor now held for that key. `source` names
        who sent it (quotas); `verified`: its key and endpoint are known to belong together (the
        sender's own descriptor, or from the main net)."""
        desc = decode_record(signed.record, max_record=self.max_record)
        held = self._entries.get(desc.key)
        rank = PINNED if desc.key in self.pinned else VERIFIED if verified else RELAYED
        if held is None and rank == RELAYED:
            self._check_quota(desc, source)  # before the signature: a flood past its quota costs no verify
        if held is None or held.signed != signed:  # the exact bytes already held were verified once
            _check_signature(desc, signed)
        _check_current(desc, now=now, network=network, max_lifetime_ms=self.max_lifetime_ms,
                       max_skew_ms=self.max_skew_ms)
        if held is not None:
            if desc.seq == held.desc.seq and signed.record == held.signed.record:
                held.seen = max(held.seen, now)
                if rank > held.rank:  # the same bytes, now from a better source
                    self._count(held, -1)
                    held.rank, held.source = rank, source
                return held.desc
            if desc.seq <= held.desc.seq:
                raise ProtocolError(ErrorCode.STALE_DESCRIPTOR,
                                    f"seq {desc.seq} is not newer than held seq {held.desc.seq}")
            rank = max(rank, held.rank)  # a newer version keeps the standing the key earned
            if rank > RELAYED or (held.source == source and endpoint_network(held.desc) == endpoint_network(desc)):
                self._replace(held, _Entry(desc, signed, rank, source if rank == RELAYED or held.rank == RELAYED
                                           else held.source, now))
                return desc
            self._drop(desc.key)  # a relayed update from elsewhere is admitted like a new key
            try:
                self._admit(_Entry(desc, signed, rank, source, now), now)
            except ProtocolError:
                self._entries[desc.key] = held  # refused: keep what we had
                self._count(held, +1)
                raise
            return desc
        self._admit(_Entry(desc, signed, rank, source, now), now)
        return desc

    def _replace(self, held: _Entry, new: _Entry) -> None:
        self._count(held, -1)
        self._entries[new.desc.key] = new
        self._count(new, +1)
        self._note_expiry(new.desc.expires)

    def _note_expiry(self, expires: int) -> None:
        if self._next_expiry is None or expires < self._next_expiry:
            self._next_expiry = expires

    def _check_quota(self, desc: Descriptor, source: Any) -> None:
        if self._by_source[source] >= self.max_per_source:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"source holds {self.max_per_source} relayed descriptors already")
        net = endpoint_network(desc)
        if self._by_network[net] >= self.max_per_network:
            raise ProtocolError(ErrorCode.UNAVAILABLE,
                                f"{self.max_per_network} relayed descriptors with endpoints in {net} already")

    def _admit(self, e: _Entry, now: int) -> None:
        """A key not held: quotas, then room (pruning, then evicting), then in."""
        if e.rank == RELAYED:
            self._check_quota(e.desc, e.source)
        if len(self._entries) >= self.max_entries and self._next_expiry is not None and self._next_expiry <= now:
            self.prune(now)
        if len(self._entries) >= self.max_entries:
            victim = min(self._entries.values(), key=lambda v: (v.rank, v.seen), default=None)
            if victim is None or (victim.rank > e.rank or victim.rank == PINNED) and e.rank != PINNED:
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"descriptor book full ({self.max_entries} pools)")
            if victim.rank != PINNED:  # a book full of pinned keys grows past max_entries for another pin
                self._drop(victim.desc.key)
                self.evicted += 1
        self._entries[e.desc.key] = e
        self._count(e, +1)
        self._note_expiry(e.desc.expires)

    def get(self, key: bytes) -> Descriptor | None:
        """The held descriptor, possibly expired until the next prune."""
        entry = self._entries.get(key)
        return entry.desc if entry else None

    def signed(self, key: bytes) -> SignedDescriptor | None:
        """The descriptor exactly as received, for relaying."""
        entry = self._entries.get(key)
        return entry.signed if entry else None

    def verified(self, key: bytes) -> bool:
        """Whether the descriptor held for `key` is verified or pinned (not only relayed)."""
        entry = self._entries.get(key)
        return entry is not None and entry.rank > RELAYED

    def all(self, now: int) -> list[Descriptor]:
        return [e.desc for e in self._entries.values() if e.desc.expires > now]

    def prune(self, now: int) -> list[Descriptor]:
        expired = [k for k, e in self._entries.items() if e.desc.expires <= now]
        removed = [self._drop(k).desc for k in expired]
        self._next_expiry = min((e.desc.expires for e in self._entries.values()), default=None)
        return removed

    # --- persistence (blocking file I/O: call through trio.to_thread from async code) ------

    def dump(self) -> bytes:
        """The held descriptors as received, serialised (call from the owning task: it reads the
        book); each marked whether it was verified, so a restart does not promote relayed ones."""
        return msgpack.packb({"version": FILE_VERSION,
                              "descriptors": [{**e.signed.to_body(), "verified": e.rank > RELAYED}
                                              for e in self._entries.values()]},
                             use_bin_type=True)

    def to_disk(self, path: str | os.PathLike) -> None:
        """Atomically replace `path` with dump(). OSError propagates."""
        write_atomic(path, self.dump())


    @classmethod
    def from_disk(cls, path: str | os.PathLike, now: int, *, network: str | None = None,
                  **limits: Any) -> "DescriptorBook":
        """Load a book saved by to_disk, re-verifying every entry. A missing, unreadable or corrupt
        file gives an empty book (logged); bad or expired entries are skipped (logged)."""
        book = cls(**limits)
        path = Path(path)
        max_size = book.max_entries * (book.max_record + 128) + 1024
        try:
            with open(path, "rb") as f:
                data = f.read(max_size + 1)
        except FileNotFoundError:
            return book
        except OSError as e:
            log.warning("descriptor file %s unreadable (%s); starting with no known pools", path, e)
            return book
        items = _parse_file(data, max_size)
        if isinstance(items, str):
            log.warning("descriptor file %s is corrupt (%s); starting with no known pools", path, items)
            return book
        skipped: list[str] = []
        for item in items:
            try:
                if not isinstance(item, dict):
                    raise ProtocolError(ErrorCode.BAD_DESCRIPTOR, "entry is not a map")
                verified = item.pop("verified", True)  # files saved before the mark: all came verified
                book.offer(SignedDescriptor.from_body(item), now=now, network=network, verified=verified is True,
                           source="disk")
            except ProtocolError as e:
                skipped.append(e.message)
        if skipped:
            log.warning("descriptor file %s: skipped %d of %d entries (first: %s)",
                        path, len(skipped), len(items), skipped[0])
        return book


def _parse_file(data: bytes, max_size: int) -> list | str:
    """The entry list of a descriptor file, or why it is unusable."""
    if len(data) > max_size:
        return f"larger than {max_size} bytes"
    try:
        doc = msgpack.unpackb(data, raw=False, use_list=True, max_ext_len=0, ext_hook=_no_ext,
                              max_str_len=max_size, max_bin_len=max_size,
                              max_array_len=max_size, max_map_len=64)
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:200]
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
        return f"not a version {FILE_VERSION} descriptor file"
    items = doc.get("descriptors")
    if not isinstance(items, list):
        return "no descriptor list"
    return items


_WIDEST_UINT = 2**64 - 1  # msgpack's widest integer: the template is checked at its largest


class DescriptorIssuer:
    """Keeps this pool's own signed descriptor current.

    Sequence numbers are ``max(previous + 1, now_ms)``: strictly increasing within a run, and a
    restarted pool starts above anything it issued before as long as the wall clock has not gone
    backwards, so nothing needs persisting. (A clock stepped back makes peers answer
    STALE_DESCRIPTOR until it catches up or their copy expires, at most ttl_ms later.)

    The capabilities come from the pool's nodes, i.e. from anyone: whatever they are, `current`
    signs a descriptor every verifier accepts. What the operator configured (name, network,
    endpoints) is checked once here, at its widest, so that only capabilities can ever be too many.
    """

    def __init__(self, identity: Identity, *, name: str, network: str, endpoints: Iterable[str], ttl_ms: int,
                 role: str = "pool", max_lifetime_ms: int = MAX_LIFETIME_MS,
                 max_record: int = MAX_DESCRIPTOR_RECORD):
        if not 0 < ttl_ms <= max_lifetime_ms:
            raise ValueError(f"ttl_ms must be in (0, {max_lifetime_ms}]")
        self.identity = identity
        self.ttl_ms = ttl_ms
        self.max_record = max_record
        self._template = Descriptor(key=identity.public, name=name, network=network, endpoints=tuple(endpoints),
                                    capabilities=(), nodes=0, issued=0, expires=ttl_ms, seq=0, role=role)
        widest = attrs.evolve(self._template, nodes=_WIDEST_UINT, issued=_WIDEST_UINT, expires=_WIDEST_UINT,
                              seq=_WIDEST_UINT)
        try:  # fail at configuration time, not at the first announce
            decode_record(self._template.encode(), max_record=max_record)
            decode_record(widest.encode(), max_record=max_record)
        except ProtocolError as e:
            raise ValueError(f"invalid pool descriptor: {e.message}") from None
        self._current: _Entry | None = None
        self._offered: tuple[str, ...] = ()  # the capabilities asked for when _current was signed
        self.dropped = 0  # capabilities left out of the last descriptor to fit max_record

    @property
    def descriptor(self) -> Descriptor | None:
        return self._current.desc if self._current else None

    def current(self, now: int, *, nodes: int, capabilities: Iterable[str]) -> SignedDescriptor:
        """The descriptor to announce, re-signed when nodes or capabilities changed or it is past
        half its lifetime. Capabilities are given most relevant first; the ones a verifier would
        refuse are skipped, duplicates removed, the rest cut to the protocol's count and then,
        least relevant first, until the record fits max_record bytes."""
        caps = tuple(c for c in dict.fromkeys(capabilities) if is_str_of(c, 1, MAX_NAME))[:MAX_CAPABILITIES]
        cur = self._current
        if (cur is not None and cur.desc.nodes == nodes and self._offered == caps
                and now < cur.desc.issued + self.ttl_ms // 2):
            return cur.signed
        seq = max(cur.desc.seq + 1 if cur else 0, now)
        desc = _fit(attrs.evolve(self._template, capabilities=caps, nodes=nodes, issued=now,
                                 expires=now + self.ttl_ms, seq=seq), self.max_record)
        signed = sign_descriptor(self.identity, desc, max_record=self.max_record)
        self._current, self._offered = _Entry(desc, signed), caps
        self.dropped = len(caps) - len(desc.capabilities)
        if self.dropped:
            log.debug("descriptor: left out %d of %d capabilities to fit %d bytes", self.dropped, len(caps),
                      self.max_record)
        return signed


def _fit(desc: Descriptor, max_record: int) -> Descriptor:
    """`desc` without its last capabilities, as few as needed for the record to fit max_record."""
    caps = desc.capabilities
    excess = len(desc.encode()) - max_record
    if excess <= 0:
        return desc
    # Each capability costs its bytes plus a str header (1..3 bytes); drop from the end until
    # enough is saved, then check (the array header may shrink too, which only helps).
    keep = len(caps)
    while excess > 0 and keep:
        keep -= 1
        excess -= utf8_len(caps[keep]) + 1
    fitted = attrs.evolve(desc, capabilities=caps[:keep])
    while len(fitted.encode()) > max_record and fitted.capabilities:  # a safety net; not reached
        fitted = attrs.evolve(fitted, capabilities=fitted.capabilities[:-1])
    return fitted


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Blocking durable replace (temp file, fsync, rename, fsync dir): safe to run in a worker thread."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
