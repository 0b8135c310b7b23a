"""The lease table: who is registered, until when, and who may register (sans-IO, no clock).

Every method that depends on time takes ``now`` (ms since epoch), so the same logic serves the pool,
the main net and the tests. Expiry uses a heap of ``(expires, key)`` with lazy invalidation: a renewal
pushes a new item and leaves the old one to be skipped when it surfaces, so a tick costs
O((expired + stale) * log n) and never a scan of the table.
"""
from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal

import attrs

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import MAX_CAPABILITIES, MAX_META_ENTRIES, MAX_META_VALUE, MAX_NAME, is_str_of

KEY_LEN = 32
PAGE_BYTES = 256 * 1024  # [registry] page_bytes


def _freeze_meta(meta: Mapping[str, str]) -> Mapping[str, str]:
    return meta if isinstance(meta, MappingProxyType) else MappingProxyType(dict(meta))


@attrs.frozen
class Entry:
    """One lease. ``expires`` and ``joined`` are absolute (ms), so a restored lease keeps its remaining time."""

    key: bytes
    capabilities: tuple[str, ...]
    meta: Mapping[str, str] = attrs.field(converter=_freeze_meta)
    ttl: int  # seconds, as the node asked (heartbeats without a ttl renew by it; pacing may grant more)
    expires: int  # ms since epoch
    joined: int  # ms since epoch
    payload: bytes | None = None  # opaque record (the main net stores signed pool descriptors here)

    def to_event(self) -> dict:
        """The data carried by node.* events."""
        return {"key": self.key, "capabilities": list(self.capabilities),
                "meta": dict(self.meta), "expires": self.expires}


def _keyset(keys: Iterable[bytes]) -> frozenset[bytes]:
    out = frozenset(keys)
    for k in out:
        if not isinstance(k, bytes) or len(k) != KEY_LEN:
            raise ValueError(f"node keys must be {KEY_LEN} bytes")
    return out


@attrs.frozen
class Admission:
    """Who may join: anyone ("open") or the keys in ``allow`` ("allowlist"). Admins are always admitted."""

    mode: Literal["open", "allowlist"] = attrs.field(default="open",
                                                     validator=attrs.validators.in_(("open", "allowlist")))
    allow: frozenset[bytes] = attrs.field(default=frozenset(), converter=_keyset)
    admins: frozenset[bytes] = attrs.field(default=frozenset(), converter=_keyset)

    def admits(self, key: bytes) -> bool:
        return self.mode == "open" or key in self.allow or key in self.admins


def _check_key(key: object, code: ErrorCode = ErrorCode.BAD_KEY) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ProtocolError(code, f"a node key is {KEY_LEN} bytes")
    return key


def _check_caps(capabilities: Iterable[str]) -> tuple[str, ...]:
    """The wire bounds again, for callers that do not come through the codec (plugins, the main
    net, a restored row): a capability that passed here always fits a descriptor or a reply."""
    if isinstance(capabilities, (str, bytes)):
        raise ProtocolError(ErrorCode.INVALID_BODY, "capabilities must be a list of strings")
    caps = tuple(dict.fromkeys(capabilities))  # dedupe, keep order
    if len(caps) > MAX_CAPABILITIES:
        raise ProtocolError(ErrorCode.INVALID_BODY, f"at most {MAX_CAPABILITIES} capabilities")
    if not all(is_str_of(c, 1, MAX_NAME) for c in caps):
        raise ProtocolError(ErrorCode.INVALID_BODY, f"capabilities must be strings of 1..{MAX_NAME} bytes (UTF-8)")
    return caps


def _within_bounds(entry: Entry) -> bool:
    try:
        _check_meta(entry.meta)
        return _check_caps(entry.capabilities) == tuple(entry.capabilities)
    except ProtocolError:
        return False


def _check_meta(meta: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ProtocolError(ErrorCode.INVALID_BODY, "meta must map strings to strings")
    if len(meta) > MAX_META_ENTRIES:
        raise ProtocolError(ErrorCode.INVALID_BODY, f"at most {MAX_META_ENTRIES} meta entries")
    # In bytes, as on the wire: every budget built from these strings (descriptor, replies, rows) is bytes.
    if not all(is_str_of(k, 1, MAX_NAME) and is_str_of(v, 0, MAX_META_VALUE) for k, v in meta.items()):
        raise ProtocolError(ErrorCode.INVALID_BODY, f"meta keys must be 1..{MAX_NAME} bytes and values "
                                                    f"at most {MAX_META_VALUE} bytes (UTF-8)")
    return meta


# A record's msgpack bytes beyond its strings: the map header, the five field names, key and pool
# (bin 32 with header), expires (uint64), and the headers of the capabilities array and meta map.
_RECORD_OVERHEAD = 1 + (4 + 34) + (13 + 5) + (5 + 5) + (8 + 9) + (5 + 34)


def _str_bytes(s: str) -> int:
    n = len(s) if s.isascii() else len(s.encode())
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)  # msgpack str header


def record_bytes(entry: Entry) -> int:
    """An upper bound of the bytes an entry (or a NodeRecord) takes in a reply: its msgpack encoding
    as a NodeRecord (UTF-8 bytes, not characters: "é" is two), plus the payload the main net sends."""
    n = _RECORD_OVERHEAD + sum(map(_str_bytes, entry.capabilities))
    for k, v in entry.meta.items():
        n += _str_bytes(k) + _str_bytes(v)
    payload = getattr(entry, "payload", None)
    return n if payload is None else n + len(payload) + 5


def _terms(capabilities: Iterable[str], meta: Mapping[str, str]) -> list[tuple]:
    """Index terms: one per capability and one per meta (name, value) pair."""
    return [("c", c) for c in capabilities] + [("m", k, v) for k, v in meta.items()]


class LeaseTable:
    """Registered nodes with their leases, the admission policy and the ban list."""

    def __init__(self, *, min_ttl: int = 5, max_ttl: int = 3600, default_ttl: int = 30, page_max: int = 1000,
                 max_entries: int = 250_000, admission: Admission = Admission(), page_bytes: int = PAGE_BYTES):
        if not 0 < min_ttl <= default_ttl <= max_ttl:
            raise ValueError("need 0 < min_ttl <= default_ttl <= max_ttl")
        if page_max < 1 or max_entries < 1:
            raise ValueError("page_max and max_entries must be positive")
        self.min_ttl, self.max_ttl, self.default_ttl = min_ttl, max_ttl, default_ttl
        self.page_max = page_max
        self.page_bytes = page_bytes  # a page's records, as record_bytes() counts them
        self.max_entries = max_entries
        self.admission = admission  # replaceable at runtime (reload)
        self._entries: dict[bytes, Entry] = {}
        self._keys: list[bytes] = []  # sorted, for ordered paging
        self._index: dict[tuple, set[bytes]] = {}  # term -> keys
        self._heap: list[tuple[int, bytes]] = []  # (expires, key); stale items are skipped
        self._bans: dict[bytes, int | None] = {}  # key -> until (ms) or None for permanent

    # --- membership -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: bytes) -> Entry | None:
        return self._entries.get(key)

    def is_admin(self, key: bytes) -> bool:
        return key in self.admission.admins

    def require_admin(self, key: bytes) -> None:
        if not self.is_admin(key):
            raise ProtocolError(ErrorCode.FORBIDDEN, "admin key required")

    def join(self, key: bytes, *, capabilities: Iterable[str] = (), meta: Mapping[str, str] = MappingProxyType({}),
             ttl: int | None = None, now: int, payload: bytes | None = None, granted: int | None = None) -> Entry:
        """Register or re-register (a re-join replaces the entry, including its joined time). The lease
        lasts `granted` seconds (heartbeat pacing may grant more than asked), by default `ttl`."""
        _check_key(key)
        self._admit(key, now)
        ttl = self._ttl(ttl)
        caps, meta = _check_caps(capabilities), _check_meta(meta)
        if key not in self._entries and len(self._entries) >= self.max_entries:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "registry is full")
        entry = Entry(key=key, capabilities=caps, meta=meta, ttl=ttl, expires=now + (granted or ttl) * 1000,
                      joined=now, payload=payload)
        self._put(entry)
        return entry

    def renew(self, key: bytes, *, ttl: int | None = None, now: int, granted: int | None = None) -> Entry:
        """Extend a lease by ``ttl`` (default: the lease's own ttl), or by ``granted`` when pacing grants
        more, from ``now``."""
        old = self._entries.get(key)
        if old is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "no lease to renew; JOIN first")
        self._admit(key, now)  # the allowlist may have changed since the join
        ttl = old.ttl if ttl is None else self._ttl(ttl)
        entry = attrs.evolve(old, ttl=ttl, expires=now + (granted or ttl) * 1000)
        self._entries[key] = entry
        self._push(entry)
        return entry

    def leave(self, key: bytes) -> Entry | None:
        return self._remove(key)

    def kick(self, key: bytes) -> Entry | None:
        """Remove a lease on an admin's request; the node may join again (unlike a ban)."""
        return self._remove(key)

    def restore(self, entries: Iterable[Entry], bans: Mapping[bytes, int | None], now: int
                ) -> tuple[list[Entry], list[bytes]]:
        """Replace the contents with stored state. Returns (dropped entries, lapsed bans) so the caller can
        delete them from the store; entries are dropped when expired, banned, no longer admitted, or
        outside today's wire bounds (a row stored by an older version, e.g. limits in characters)."""
        self._entries.clear()
        self._keys.clear()
        self._index.clear()
        self._heap.clear()
        self._bans = {k: u for k, u in bans.items() if u is None or u > now}
        lapsed = [k for k in bans if k not in self._bans]
        dropped = []
        for e in entries:
            if (e.expires <= now or self.is_banned(e.key, now) or not self.admission.admits(e.key)
                    or not _within_bounds(e)):
                dropped.append(e)
            else:
                self._put(e)
        return dropped, lapsed

    # --- bans -----------------------------------------------------------------------------------

    def ban(self, key: bytes, *, until: int | None, now: int) -> Entry | None:
        """Ban until ``until`` (ms; None = permanently) and drop the current lease, which is returned.
        A ban ends at most Admin.MAX_DURATION from now: a later end would overflow the store's
        64-bit integers and fail every later write (longer is what a permanent ban is for)."""
        from galaxynode.gelato.messages import Admin
        _check_key(key)
        if until is not None and (type(until) is not int or until <= now):
            raise ProtocolError(ErrorCode.INVALID_BODY, "a ban must end in the future")
        if until is not None and until - now > Admin.MAX_DURATION * 1000:
            raise ProtocolError(ErrorCode.INVALID_BODY, f"a ban lasts at most {Admin.MAX_DURATION} s; "
                                                        "omit the duration for a permanent ban")
        self._bans[key] = until
        return self._remove(key)

    def unban(self, key: bytes) -> bool:
        """Lift a ban; False if there was none."""
        if key not in self._bans:
            return False
        del self._bans[key]
        return True

    def is_banned(self, key: bytes, now: int) -> bool:
        if key not in self._bans:
            return False
        until = self._bans[key]
        if until is not None and until <= now:
            del self._bans[key]  # lapsed
            return False
        return True

    def bans(self) -> dict[bytes, int | None]:
        return dict(self._bans)

    # --- expiry ---------------------------------------------------------------------------------

    def expire(self, now: int) -> list[Entry]:
        """Remove and return every lease with ``expires <= now``."""
        heap, entries = self._heap, self._entries
        out = []
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            entry = entries.get(key)
            if entry is not None and entry.expires == expires:
                self._remove(key)
                out.append(entry)
        return out

    def next_expiry(self) -> int | None:
        """When the earliest live lease expires (ms), or None when the table is empty."""
        heap, entries = self._heap, self._entries
        while heap:
            expires, key = heap[0]
            entry = entries.get(key)
            if entry is not None and entry.expires == expires:
                return expires
            heapq.heappop(heap)  # stale
        return None

    # --- queries --------------------------------------------------------------------------------

    def query(self, *, capabilities: Iterable[str] = (), meta: Mapping[str, str] = MappingProxyType({}),
              key: bytes | None = None, limit: int = 100, cursor: bytes | None = None
              ) -> tuple[list[Entry], bytes | None]:
        """Entries having all ``capabilities`` and all ``meta`` pairs, ordered by key, one page at a time.

        The cursor is a position in key order, so it stays valid while entries come and go. ``limit`` is
        clamped to 1..page_max, and a page ends early where the next record would take its records past
        ``page_bytes`` (record_bytes; a page holds at least one), so a reply fits its frame whatever the
        records hold. Returns (page, cursor for the next page or None at the end).
        """
        after = self._cursor(cursor)
        limit = max(1, min(int(limit), self.page_max))
        sets = []
        for term in _terms(_check_caps(capabilities), _check_meta(meta)):
            s = self._index.get(term)
            if not s:
                return [], None
            sets.append(s)
        if key is not None:
            _check_key(key, ErrorCode.INVALID_BODY)
            hit = key in self._entries and (after is None or key > after) and all(key in s for s in sets)
            return ([self._entries[key]] if hit else []), None
        sets.sort(key=len)
        want = limit + 1  # one extra tells whether there is a next page
        # Expected keys to walk for a full page, taking the filters as independent.
        density = 1.0
        for s in sets:
            density *= len(s) / len(self._entries)
        walk = want / density
        if sets and 4 * len(sets[0]) <= walk:  # ~ relative cost per key of the two ways
            # The smallest posting set is small: filter it and pick the lowest keys.
            found = sets[0] if after is None else [k for k in sets[0] if k > after]
            for s in sets[1:]:
                found = [k for k in found if k in s]
            found = heapq.nsmallest(want, found)
        else:
            # Matches are dense: walk the sorted keys from the cursor in growing chunks.
            keys = self._keys
            pos = 0 if after is None else bisect.bisect_right(keys, after)
            step = want if not sets else int(walk * 1.25) + 64
            found = []
            while len(found) < want and pos < len(keys):
                chunk = keys[pos:pos + step]
                pos += step
                step *= 2
                for s in sets:
                    chunk = [k for k in chunk if k in s]
                found += chunk
            del found[want:]
        page, size = [], 0
        for k in found[:limit]:
            entry = self._entries[k]
            size += record_bytes(entry)
            if size > self.page_bytes and page:
                break
            page.append(entry)
        more = len(found) > len(page)
        return page, (page[-1].key if more else None)

    # --- internals ------------------------------------------------------------------------------

    def _admit(self, key: bytes, now: int) -> None:
        if self.is_banned(key, now):
            raise ProtocolError(ErrorCode.BANNED, "this node key is banned")
        if not self.admission.admits(key):
            raise ProtocolError(ErrorCode.NOT_ADMITTED, "this node key is not on the allowlist")

    def _ttl(self, ttl: int | None) -> int:
        if ttl is None:
            return self.default_ttl
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not self.min_ttl <= ttl <= self.max_ttl:
            raise ProtocolError(ErrorCode.BAD_TTL, f"ttl must be {self.min_ttl}..{self.max_ttl} seconds")
        return ttl

    def _cursor(self, cursor: bytes | None) -> bytes | None:
        if cursor is not None and (not isinstance(cursor, bytes) or len(cursor) != KEY_LEN):
            raise ProtocolError(ErrorCode.BAD_CURSOR, "cursor was not issued by this registry")
        return cursor

    def _put(self, entry: Entry) -> None:
        key = entry.key
        old = self._entries.get(key)
        if old is None:
            bisect.insort(self._keys, key)
        else:
            self._unindex(old)
        self._entries[key] = entry
        for term in _terms(entry.capabilities, entry.meta):
            self._index.setdefault(term, set()).add(key)
        self._push(entry)

    def _remove(self, key: bytes) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._keys
            del keys[bisect.bisect_left(keys, key)]
            self._unindex(entry)
        return entry  # its heap item goes stale and is skipped later

    def _unindex(self, entry: Entry) -> None:
        for term in _terms(entry.capabilities, entry.meta):
            s = self._index[term]
            s.discard(entry.key)
            if not s:
                del self._index[term]

    def _push(self, entry: Entry) -> None:
        heap = self._heap
        heapq.heappush(heap, (entry.expires, entry.key))
        if len(heap) > 2 * len(self._entries) + 64:
            # Renewals leave stale items behind; rebuild so the heap stays O(n) (amortised O(1) per push).
            heap[:] = [(e.expires, k) for k, e in self._entries.items()]
            heapq.heapify(heap)
