"""Discovery: the reference main net (a registry of pools) and the pool's side of it (Announcer).

The main net has no special trust. It stores each pool's signed descriptor exactly as received and
relays it unaltered; every pool verifies what it looks up. A pool may only announce itself: the
descriptor's key must be the announcing session's key, so nobody can register, refresh or replace
another pool's entry, even with a validly signed descriptor of it.

Pools are kept in an ordinary Registry (SQLite-backed, leases restored after a restart): the lease
ends no later than the descriptor expires, ``payload`` holds the signed descriptor, and the name and
network go into ``meta`` so LOOKUP filters through the registry's indexes. The registry speaks of
``node.*`` events; `PoolTopics` stands between it and the bus so main net subscribers see ``pool.*``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter, OrderedDict, deque
from functools import partial
from typing import Any, Callable, Iterable

import attrs
import msgpack
import trio

from galaxynode.descriptor import (write_atomic, MAX_LIFETIME_MS, MAX_SKEW_MS, Descriptor, DescriptorBook, DescriptorIssuer,
                                   decode_record, network_prefix, verify_descriptor)
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity, format_public_key
from galaxynode.net.client import connect
from galaxynode.net.connection import DEFAULT_SESSION_LIMITS, Connection, SessionClosed, SessionLimits
from galaxynode.net.slots import address_group
from galaxynode.net.transport import CertificateError, ChannelClosed, parse_url
from galaxynode.pool import PoolInfo, PoolServices, SessionHandler
from galaxynode.registry import LeaseTable, Registry
from galaxynode.registry.leases import Entry
from galaxynode.registry.service import wall_clock_ms
from galaxynode.resilience import TaskFailures

log = logging.getLogger(__name__)

POOL_STORE_TABLE = "pools"
ORDER_TTL = 30.0   # seconds a drawn LOOKUP order is shared by new series and kept for their pages
MAX_ORDERS = 64    # LOOKUP orders remembered at once (an older one is drawn again: same seed, same order)
_CLOCK_MARGIN_MS = 100  # bound on the time between ANNOUNCE's clock reading and the registry's
# Registry lifecycle topics as main net subscribers see them. node.joined/node.renewed are not
# mapped: ANNOUNCE publishes pool.announced itself, with details the registry entry lacks.
POOL_TOPICS = {"node.expired": "pool.expired", "node.left": "pool.left", "node.kicked": "pool.kicked",
               "node.banned": "pool.banned"}


class PoolTopics:
    """The bus as the main net's pool Registry sees it: renames node.* lifecycle events to pool.*
    and reshapes their data to {key, name, network} (+ until for bans)."""

    def __init__(self, bus: Any):
        self.bus = bus

    def publish(self, topic: str, data: dict) -> None:
        pool_topic = POOL_TOPICS.get(topic)
        if pool_topic is None or self.bus is None:
            return
        meta = data.get("meta") or {}
        out = {"key": data["key"], "name": meta.get("name", ""), "network": meta.get("network", "")}
        if "until" in data:
            out["until"] = data["until"]
        self.bus.publish(pool_topic, out)


def pool_table(*, max_entries: int = 100_000, page_max: int = 1000, **kw: Any) -> LeaseTable:
    """A LeaseTable suited to pools: leases up to a descriptor's maximal lifetime, down to 1 s (a lease
    never outlives its descriptor, so a short-lived descriptor gets a short lease)."""
    kw.setdefault("min_ttl", 1)
    kw.setdefault("max_ttl", MAX_LIFETIME_MS // 1000)
    kw.setdefault("default_ttl", kw["min_ttl"])
    return LeaseTable(max_entries=max_entries, page_max=page_max, **kw)


async def open_pool_registry(path: str | os.PathLike | None, bus: Any, table: LeaseTable | None = None,
                             **kwargs: Any) -> Registry:
    """The main net's registry of pools (table ``pools`` in the SQLite file at `path`, None: in
    memory), publishing pool.* events on `bus`. Start its `run` in a nursery, as for any Registry."""
    return await Registry.open(path, table if table is not None else pool_table(), PoolTopics(bus),
                               store_table=POOL_STORE_TABLE, **kwargs)


def pack_signed(signed: m.SignedDescriptor) -> bytes:
    return msgpack.packb(signed.to_body(), use_bin_type=True)


def unpack_signed(payload: bytes | None) -> m.SignedDescriptor | None:
    """The signed descriptor stored in a registry entry, or None if it is missing or unreadable."""
    if not payload:
        return None
    try:
        body = msgpack.unpackb(payload, raw=False, max_ext_len=0, max_map_len=16, max_array_len=16,
                               max_str_len=m.MAX_DESCRIPTOR_RECORD, max_bin_len=m.MAX_DESCRIPTOR_RECORD)
        return m.SignedDescriptor.from_body(body) if isinstance(body, dict) else None
    except (ProtocolError, ValueError, TypeError, msgpack.UnpackException):
        return None


# --- poisoning defences (sans-IO) --------------------------------------------------------------

def remote_host(remote: str) -> str:
    """The host of a Connection.remote ("1.2.3.4:5", "[::1]:5")."""
    host = remote.rsplit(":", 1)[0] if remote.count(":") == 1 or remote.startswith("[") else remote
    return host.strip("[]")


def dial_target(url: str) -> str:
    """What a dial costs someone: the host and port a URL points at (paths and schemes aside),
    so 3,000 URLs that differ only in their path count as one target."""
    _, host, port, _ = parse_url(url)
    return f"{host.lower()}:{port}"


class TargetBudget:
    """At most `per_window` uses per target in any `window` seconds (sliding). Bounded memory: at
    most `max_targets` targets are tracked; past that, new targets are refused until old uses age
    out (refusing costs nobody a dial)."""

    def __init__(self, per_window: int, window: float, *, max_targets: int = 100_000):
        if per_window < 1 or window <= 0:
            raise ValueError("per_window must be at least 1 and window positive")
        self.per_window, self.window, self.max_targets = per_window, window, max_targets
        self._uses: dict[str, deque[float]] = {}

    def _live(self, target: str, now: float) -> deque[float]:
        uses = self._uses.get(target)
        if uses is None:
            return deque()
        while uses and uses[0] <= now - self.window:
            uses.popleft()
        if not uses:
            del self._uses[target]
        return uses

    def used(self, target: str, now: float) -> int:
        return len(self._live(target, now))

    def allow(self, target: str, now: float) -> bool:
        """Take one use of `target` if it has any left (True), else False."""
        uses = self._live(target, now)
        if len(uses) >= self.per_window:
            return False
        if target not in self._uses:
            if len(self._uses) >= self.max_targets:
                for t in list(self._uses):
                    self._live(t, now)
                if len(self._uses) >= self.max_targets:
                    return False
            self._uses[target] = uses
        uses.append(now)
        return True


class RateBuckets:
    """A token bucket per address group (`rate` per second, `burst`), at most `max_groups` tracked
    (the fullest are forgotten first: a forgotten bucket is a full one)."""

    def __init__(self, rate: float, burst: float, *, max_groups: int = 65_536):
        self.rate, self.burst, self.max_groups = rate, burst, max_groups
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, group: str, now: float) -> bool:
        tokens, at = self._buckets.pop(group, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1
        self._buckets[group] = (tokens - 1 if ok else tokens, now)
        if len(self._buckets) > self.max_groups:
            self._buckets.popitem(last=False)
        return ok


class Verdicts:
    """Cached outcomes of dial-backs per (URL, key): a proven pair is not redialled before `ok_ttl`
    seconds, a failed one is refused without dialling for `fail_ttl` (so nobody can have the same
    unverified claim dialled again and again). LRU-bounded to `max_size` pairs."""

    def __init__(self, ok_ttl: float, fail_ttl: float, *, max_size: int = 100_000):
        self.ok_ttl, self.fail_ttl, self.max_size = ok_ttl, fail_ttl, max_size
        self._cache: OrderedDict[tuple[str, bytes], tuple[str | None, float]] = OrderedDict()

    def get(self, url: str, key: bytes, now: float) -> tuple[bool, str | None] | None:
        """(True, None) proven, (False, why) failed recently, None unknown."""
        hit = self._cache.get((url, key))
        if hit is None or hit[1] <= now:
            return None
        self._cache.move_to_end((url, key))
        return (hit[0] is None, hit[0])

    def put(self, url: str, key: bytes, why: str | None, now: float) -> None:
        self._cache[(url, key)] = (why, now + (self.ok_ttl if why is None else self.fail_ttl))
        self._cache.move_to_end((url, key))
        while len(self._cache) > self.max_size:
            self._cache.popitem(last=False)


@attrs.frozen(kw_only=True)
class MainnetPolicy:
    """What the main net demands before it lists a pool (config [mainnet], docs/gelato/peering.md §7.10).
    Times are seconds."""

    verify: bool = True             # dial the first endpoint back and check the key answering there
    verify_timeout: float = 5.0     # connect + handshake of one dial-back
    verify_ttl: float = 3600.0      # a proven (URL, key) is not redialled for this long
    verify_retry: float = 600.0     # a failed (URL, key) is refused without a dial for this long
    dials_per_target: int = 4       # dial-backs of one host:port per dial_window, whoever asks
    dial_window: float = 3600.0
    max_verifications: int = 16     # dial-backs in flight at once
    pools_per_address: int = 16     # listed pools announced from one address (IPv6: /64)
    pools_per_prefix: int = 64      # listed pools announced from one IPv4 /24 or IPv6 /48
    announce_rate: float = 1.0      # announces per second per address that need a check (new or changed claims)
    announce_burst: int = 16


class Reachability:
    """Proof of reachability: dial the URL a descriptor names and check that the key answering
    there is the descriptor's key. Bounded so that the main net cannot be aimed at a third party:
    a target (host:port) is dialled at most `dials_per_target` times per `dial_window` whatever the
    claims, the verdict on each (URL, key) is cached, and at most `max_verifications` dials run at once."""

    def __init__(self, identity: Identity, *, network: str, policy: MainnetPolicy,
                 limits: SessionLimits = DEFAULT_SESSION_LIMITS, ssl_context: Any = None,
                 clock: Callable[[], float] = trio.current_time):
        self.identity, self.network, self.policy, self.limits = identity, network, policy, limits
        self.ssl_context, self.clock = ssl_context, clock
        self.verdicts = Verdicts(policy.verify_ttl, policy.verify_retry)
        self.budget = TargetBudget(policy.dials_per_target, policy.dial_window)
        self.limiter = trio.CapacityLimiter(policy.max_verifications)
        self.dials = 0  # dial-backs made (metrics, tests)

    def known(self, url: str, key: bytes) -> bool:
        """Whether (url, key) is proven and needs no dial now."""
        v = self.verdicts.get(url, key, self.clock())
        return v is not None and v[0]

    async def check(self, url: str, key: bytes) -> None:
        """Return if `key` answers at `url`; else ProtocolError: bad_descriptor (it did not, now or
        recently) or unavailable (the target's dial budget is spent; retry later)."""
        now = self.clock()
        v = self.verdicts.get(url, key, now)
        if v is not None:
            if v[0]:
                return
            raise ProtocolError(ErrorCode.BAD_DESCRIPTOR, f"endpoint {url} not verified (cached): {v[1]}")
        target = dial_target(url)
        if not self.budget.allow(target, now):
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"{target} was dialled {self.policy.dials_per_target} times "
                                                       f"in {self.policy.dial_window:g} s; retry later")
        async with self.limiter:
            self.dials += 1
            why = await self._dial(url, key)
        self.verdicts.put(url, key, why, self.clock())
        if why is not None:
            raise ProtocolError(ErrorCode.BAD_DESCRIPTOR, f"endpoint {url} not verified: {why}")

    async def _dial(self, url: str, key: bytes) -> str | None:
        try:
            with trio.fail_after(self.policy.verify_timeout):
                async with connect(url, self.identity, network=self.network, role="mainnet", limits=self.limits,
                                   pinned_key=key, ssl_context=self.ssl_context,
                                   connect_timeout=self.policy.verify_timeout):
                    return None
        except trio.TooSlowError:
            return f"no answer within {self.policy.verify_timeout:g} s"
        except ProtocolError as e:
            return f"{e.code.name.lower()}: {e.message}"[:200]
        except Exception as e:  # whatever stops the dial (refused, reset, TLS, garbage) is a failed proof
            return f"{type(e).__name__}: {e}"[:200]


DISCOVER_DIALS_PER_HOUR = 6  # [mainnet] discover_dials


def discover_budget(dials_per_hour: int = DISCOVER_DIALS_PER_HOUR, *, give_up_after: int = 3) -> TargetBudget:
    """The pool side's bound on dialling what the main net lists: a discovered host:port is taken
    up at most dials_per_hour // give_up_after times an hour (each take-up dials it at most
    give_up_after times in a row before giving up), so at most `dials_per_hour` failing dials."""
    return TargetBudget(max(1, dials_per_hour // max(1, give_up_after)), 3600.0)


def sample_order(entries: list[Entry], seed: bytes) -> list[Entry]:
    """A random order spread over source prefixes, fixed by `seed` (so pages of one LOOKUP series
    agree): prefixes in a seeded shuffle, keys within each in a seeded shuffle, then one from each
    prefix in turn. A prefix holding many pools gets no more of the first places than one holding one."""
    def rank(b: bytes) -> bytes:
        return hashlib.blake2b(b, key=seed, digest_size=8).digest()
    prefix_rank: dict[str, bytes] = {}
    ranked = sorted(((prefix_rank.get(p) or prefix_rank.setdefault(p, rank(p.encode())), rank(e.key), e)
                     for e in entries for p in (e.meta.get("prefix", "?"),)), key=lambda t: t[:2])
    depth, last = [], None  # each pool's place within its prefix
    for pr, _, _ in ranked:
        depth.append(depth[-1] + 1 if pr == last else 0)
        last = pr
    return [t[2] for _, t in sorted(zip(depth, ranked), key=lambda dt: (dt[0], dt[1][0]))]


# --- main net ----------------------------------------------------------------------------------

class MainnetServices(PoolServices):
    """Shared by all main net sessions. `registry` comes from open_pool_registry (so its events are
    pool.*); `bus` is the real bus (pool.announced, subscriptions). Descriptors must be for
    ``info.network``. A LOOKUP reply is cut (with a cursor) before `max_reply_bytes` of descriptors."""

    def __init__(self, info: PoolInfo, registry: Registry, bus: Any, *, event_queue: int = 256,
                 max_reply_bytes: int = 256 * 1024, max_lifetime_ms: int = MAX_LIFETIME_MS,
                 max_skew_ms: int = MAX_SKEW_MS, policy: MainnetPolicy | None = None,
                 reachability: Reachability | None = None, clock: Callable[[], float] = trio.current_time):
        if info.role != "mainnet":
            raise ValueError("a main net's PoolInfo has role 'mainnet'")
        if max_reply_bytes < m.MAX_DESCRIPTOR_RECORD + 128:
            raise ValueError("max_reply_bytes must hold at least one maximal descriptor")
        super().__init__(info, registry, bus, event_queue=event_queue)
        self.max_reply_bytes = max_reply_bytes
        self.max_lifetime_ms = max_lifetime_ms
        self.max_skew_ms = max_skew_ms
        self.refused = 0  # announces refused (metrics)
        # Poisoning defences: without `reachability` nothing is dialled back (embedded and unit
        # uses); the quotas and the announce rate apply whenever a policy is given.
        self.policy = policy or (reachability.policy if reachability else None)
        self.reachability = reachability
        self.clock = clock
        p = self.policy
        self.announce_rate = RateBuckets(p.announce_rate, p.announce_burst) if p else None
        self._listed: dict[str, set[bytes]] = {}  # address group / prefix -> keys announced from it
        # LOOKUP orders (_order): by (seed, filters), and the current shared one by filters.
        self._orders: OrderedDict[tuple, tuple[float, bytes, list[bytes], int]] = OrderedDict()
        self._current: dict[tuple, tuple[float, bytes, list[bytes], int]] = {}
        self._generation = 0  # counts changes of the listed set or of what a listed pool matches

    def handler(self) -> "MainnetSession":
        return MainnetSession(self)

    def held(self, key: bytes, now: int) -> tuple[Descriptor, m.SignedDescriptor] | None:
        """The live descriptor registered for `key`, if any."""
        entry = self.registry.get(key)
        if entry is None or entry.expires <= now:
            return None
        signed = unpack_signed(entry.payload)
        if signed is None:
            return None
        try:
            return decode_record(signed.record), signed
        except ProtocolError:
            return None

    async def announce(self, peer_key: bytes, signed: m.SignedDescriptor, remote: str = "?") -> Entry:
        """Verify and register `signed` on behalf of the session with `peer_key` from address
        `remote`; ProtocolError if refused. Returns the registry entry once it is durable."""
        try:
            return await self._announce(peer_key, signed, remote)
        except ProtocolError:
            self.refused += 1
            raise

    def _sources(self, remote: str) -> tuple[str, str]:
        host = remote_host(remote)
        return "a:" + address_group(host), "p:" + network_prefix(host)

    def _listed_from(self, group: str) -> set[bytes]:
        """Keys currently listed that were announced from `group` (dead ones dropped on the way)."""
        keys = self._listed.get(group, set())
        for k in [k for k in keys if self.registry.get(k) is None]:
            keys.discard(k)
        return keys

    def _admit(self, key: bytes, remote: str, url: str) -> None:
        """Announce rate and per-address / per-prefix quotas, for a claim that is new or changed."""
        p = self.policy
        assert p is not None and self.announce_rate is not None
        addr, prefix = self._sources(remote)
        listed = self.registry.get(key) is not None
        if self.reachability is not None and self.reachability.known(url, key) and listed:
            return  # a refresh of a proven, listed claim costs nothing to check
        if not self.announce_rate.take(addr, self.clock()):
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"more than {p.announce_rate:g} announces per second "
                                                       f"from {addr[2:]} need checking; retry later")
        if listed:
            return
        for group, cap in ((addr, p.pools_per_address), (prefix, p.pools_per_prefix)):
            if len(self._listed_from(group)) >= cap:
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"{cap} pools are listed from {group[2:]} already")

    async def _announce(self, peer_key: bytes, signed: m.SignedDescriptor, remote: str) -> Entry:
        reg, table = self.registry, self.registry.table
        now = reg.clock()
        desc = verify_descriptor(signed, now=now, network=self.info.network, max_lifetime_ms=self.max_lifetime_ms,
                                 max_skew_ms=self.max_skew_ms)
        if desc.key != peer_key:
            raise ProtocolError(ErrorCode.FORBIDDEN, "a pool can only announce its own descriptor")
        if desc.role != "pool":
            raise ProtocolError(ErrorCode.BAD_DESCRIPTOR, f"the main net registers pools, not {desc.role!r}")
        if self.policy is not None:
            url = desc.endpoints[0] if desc.endpoints else ""
            if self.reachability is not None and not url:
                raise ProtocolError(ErrorCode.BAD_DESCRIPTOR, "no endpoint to verify: the main net lists reachable pools")
            self._admit(desc.key, remote, url)
            if self.reachability is not None:
                await self.reachability.check(url, desc.key)  # may take verify_timeout
            now = reg.clock()
        held = self.held(desc.key, now)
        changed = held is None or held[1] != signed
        if held is not None and changed and desc.seq <= held[0].seq:
            raise ProtocolError(ErrorCode.STALE_DESCRIPTOR,
                                f"seq {desc.seq} is not newer than registered seq {held[0].seq}")
        # The lease never outlives the descriptor: a LOOKUP must not hand out expired records.
        # join() reads the clock again, a little later: keep a margin for the time in between.
        ttl = min((desc.expires - now - _CLOCK_MARGIN_MS) // 1000, table.max_ttl)
        if ttl < table.min_ttl:
            raise ProtocolError(ErrorCode.BAD_DESCRIPTOR,
                                f"expires in {desc.expires - now} ms; leases here last at least {table.min_ttl} s")
        # No await between the seq check and the table update inside join(): they are atomic.
        addr, prefix = self._sources(remote)
        if held is None or (held[0].name, held[0].capabilities) != (desc.name, desc.capabilities):
            self._generation += 1  # a new pool, or one LOOKUP filters differently: orders are drawn again
        entry = await reg.join(desc.key, capabilities=desc.capabilities,
                               meta={"name": desc.name, "network": desc.network, "prefix": prefix[2:]}, ttl=ttl,
                               payload=pack_signed(signed))
        if self.policy is not None:
            for group in (addr, prefix):
                self._listed.setdefault(group, set()).add(desc.key)
        if changed and self.bus is not None:
            self.bus.publish("pool.announced", {"key": desc.key, "name": desc.name, "network": desc.network,
                                                "endpoints": list(desc.endpoints), "seq": desc.seq})
        return entry

    def lookup(self, q: m.Lookup) -> tuple[list[m.SignedDescriptor], bytes | None]:
        """One page of registered descriptors matching `q`, as received, and the next cursor.

        Not in key order (keys are free to grind, so whoever sorts first would fill every first
        page): a random order spread over the prefixes the pools announced from (sample_order).
        Drawing an order walks every matching pool, so one order is drawn per ORDER_TTL and filter
        and shared: each series starts at a random place in it and wraps around. The cursor is 16
        bytes: the order's seed (8), the start (4) and how far the series got (4)."""
        if q.cursor is None:
            seed, keys = self._order(q, None)
            start, offset = (random.randrange(len(keys)) if keys else 0), 0
        elif len(q.cursor) == 16:
            seed, start, offset = q.cursor[:8], int.from_bytes(q.cursor[8:12], "big"), int.from_bytes(q.cursor[12:], "big")
            seed, keys = self._order(q, seed)
        else:
            raise ProtocolError(ErrorCode.BAD_CURSOR, "not a cursor of this main net")
        limit = max(1, min(q.limit, self.registry.table.page_max))
        now = self.registry.clock()
        out: list[m.SignedDescriptor] = []
        size = taken = 0
        n = len(keys)
        for key in (keys[(start + i) % n] for i in range(offset, min(n, offset + limit))):
            e = self.registry.get(key)
            if e is not None and e.expires > now:  # else it left or expired since the order was drawn
                signed = unpack_signed(e.payload)
                if signed is None:
                    log.error("registered pool %s has no readable descriptor; skipped", format_public_key(key))
                else:
                    size += len(signed.record) + len(signed.sig) + 16  # + msgpack framing of the pair
                    if size > self.max_reply_bytes and out:
                        break
                    out.append(signed)
            taken += 1
        end = offset + taken
        return out, (seed + start.to_bytes(4, "big") + end.to_bytes(4, "big") if end < n else None)

    def _order(self, q: m.Lookup, seed: bytes | None) -> tuple[bytes, list[bytes]]:
        """(seed, the matching keys in sample_order) for `q`'s filters: with seed None the current
        shared order (drawn anew past ORDER_TTL or once a new pool is listed, so a new series sees
        every listed pool); a given seed's order is kept as long, or drawn again (the same seed gives
        the same order of the same pools)."""
        filters = (q.network, q.capability, q.name)
        now = self.clock()
        hit = self._orders.get((seed, *filters)) if seed is not None else self._current.get(filters)
        if hit is not None and hit[0] > now and (seed is not None or hit[3] == self._generation):
            return hit[1], hit[2]
        seed = seed if seed is not None else os.urandom(8)
        keys = [e.key for e in sample_order(self._matching(q), seed)]
        self._orders[(seed, *filters)] = self._current[filters] = (now + ORDER_TTL, seed, keys, self._generation)
        while len(self._orders) > MAX_ORDERS:
            self._orders.popitem(last=False)
        while len(self._current) > MAX_ORDERS:
            self._current.pop(next(iter(self._current)))
        return seed, keys

    def _matching(self, q: m.Lookup) -> list[Entry]:
        """Every live registered pool matching `q`'s filters (the registry's indexes do the filtering)."""
        meta = {k: v for k, v in (("network", q.network), ("name", q.name)) if v is not None}
        caps = (q.capability,) if q.capability else ()
        found: list[Entry] = []
        cursor = None
        while True:
            entries, cursor = self.registry.query(capabilities=caps, meta=meta, limit=self.registry.table.page_max,
                                                  cursor=cursor)
            found.extend(entries)
            if cursor is None:
                return found


class MainnetSession(SessionHandler):
    """Per-session routes of the main net: discovery, events, status. Event pushes come from
    SessionHandler.run."""

    s: MainnetServices

    def __init__(self, services: MainnetServices):
        super().__init__(services)
        self.routes = {"ANNOUNCE": self.announce, "LOOKUP": self.lookup, "SUBSCRIBE": self.subscribe,
                       "UNSUBSCRIBE": self.unsubscribe, "STATUS": self.status}

    async def announce(self, conn: Any, frame: Frame) -> m.Lease:
        entry = await self.s.announce(conn.peer_key, frame.msg.descriptor, conn.remote)
        # No heartbeat budget here: a pool re-announces as its descriptor ages (Announcer), at most this often.
        return m.Lease(re=frame.id, ttl=entry.ttl, expires=entry.expires, interval=max(1, entry.ttl * 1000 // 3))

    async def lookup(self, conn: Any, frame: Frame) -> m.LookupResult:
        descriptors, cursor = self.s.lookup(frame.msg)
        return m.LookupResult(re=frame.id, descriptors=tuple(descriptors), cursor=cursor)


# --- pool side ---------------------------------------------------------------------------------

async def node_summary(registry: Registry, *, max_capabilities: int = m.MAX_CAPABILITIES) -> tuple[int, list[str]]:
    """(node count, the most common node capabilities, most common first) for the descriptor.
    Walks the registry page by page, yielding to the event loop between pages."""
    counts: Counter[str] = Counter()
    cursor = None
    while True:
        entries, cursor = registry.query(limit=registry.table.page_max, cursor=cursor)
        for e in entries:
            counts.update(e.capabilities)
        if cursor is None:
            break
        await trio.sleep(0)
    return len(registry.table), [c for c, _ in counts.most_common(max_capabilities)]


_SESSION_ENDED = (ChannelClosed, ProtocolError, SessionClosed, trio.TooSlowError)


EARLY_LOOKUP_GAP = 1.0  # seconds between LOOKUPs asked early by lookup_soon()


class Announcer:
    """Keeps this pool registered at the main net and learns the other pools of its network from it.

    One task (`run`): connect, ANNOUNCE the current descriptor (at once, whenever it changes, and
    before the lease ends), LOOKUP every `lookup_interval`, verify every result through `book`
    (the main net is not trusted), save the book to `book_path` and hand the descriptors to
    `on_descriptors`. When the main net is unreachable or refuses us, it retries with exponential
    backoff and jitter; the pool keeps serving meanwhile, with the descriptors last saved to disk.

    `check_interval` bounds both how often the node summary is recomputed and how often a changed
    descriptor is re-announced. Times are seconds; `clock` gives wall time in ms.
    """

    def __init__(self, identity: Identity, issuer: DescriptorIssuer, *, mainnet_url: str, network: str,
                 limits: SessionLimits = DEFAULT_SESSION_LIMITS, registry: Registry, book: DescriptorBook,
                 book_path: str | os.PathLike, announce_interval: float = 30.0, lookup_interval: float = 60.0,
                 check_interval: float = 5.0, backoff_min: float = 1.0, backoff_max: float = 60.0,
                 request_timeout: float = 10.0, connect_timeout: float = 10.0, lookup_page: int = 100,
                 mainnet_key: bytes | None = None, ssl_context: Any = None,
                 on_descriptors: Callable[[list[Descriptor]], None] | None = None,
                 clock: Callable[[], int] = wall_clock_ms):
        if min(announce_interval, lookup_interval, check_interval, backoff_min, request_timeout) <= 0:
            raise ValueError("intervals, backoff_min and request_timeout must be positive")
        if backoff_max < backoff_min:
            raise ValueError("backoff_max must be at least backoff_min")
        if not 1 <= lookup_page <= m.MAX_PAGE:
            raise ValueError(f"lookup_page must be in 1..{m.MAX_PAGE}")
        if issuer.identity.public != identity.public:
            raise ValueError("the issuer signs for another identity")
        self.identity = identity
        self.issuer = issuer
        self.mainnet_url = mainnet_url
        self.network = network
        self.limits = limits
        self.registry = registry
        self.book = book
        self.book_path = book_path
        self.announce_interval = announce_interval
        self.lookup_interval = lookup_interval
        self.check_interval = check_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.lookup_page = lookup_page
        self.mainnet_key = mainnet_key
        self.ssl_context = ssl_context
        self.on_descriptors = on_descriptors
        self.clock = clock
        # Observable state (STATUS, metrics).
        self.state = "connecting"  # connecting | announced | backoff
        self.last_announced: int | None = None  # wall ms of the last LEASE received
        self.lease_expires: int | None = None
        self.last_error: str | None = None
        self.announces = 0
        self.lookups = 0
        self.failures = 0  # sessions that ended in an error or could not be opened
        self.rejected = 0  # descriptors from the main net that did not verify
        self.task_failures = TaskFailures(log)  # what raised in here: logged once, counted, retried
        self._lookup_soon = False  # lookup_soon(): LOOKUP now (at most one per EARLY_LOOKUP_GAP)
        self._wake = trio.Event()

    def lookup_soon(self) -> None:
        """LOOKUP again now, or EARLY_LOOKUP_GAP after the last one (so at most one early LOOKUP
        per gap however often this is called): the peering policy met a pool dialling us that the
        main net may have listed since our last LOOKUP (peerpolicy.py, accept = "listed")."""
        self._lookup_soon = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the saved book (reported started once loaded), then keep the main net session
        going until cancelled. Nothing that fails in here stops the pool or its start-up: a saved
        book that cannot be loaded is skipped, a failing session is retried with backoff."""
        with self.task_failures.guard("mainnet.load"):
            await self._load()
        task_status.started()
        backoff = self.backoff_min
        while True:
            self.state = "connecting"
            error, certificate = "internal error (logged)", False
            with self.task_failures.guard("mainnet.announce"):
                try:
                    async with connect(self.mainnet_url, self.identity, network=self.network, role="pool",
                                       limits=self.limits, pinned_key=self.mainnet_key,
                                       ssl_context=self.ssl_context, connect_timeout=self.connect_timeout) as conn:
                        await self._serve(conn)
                    error = "the main net closed the session"
                except CertificateError as e:  # no retry cures it: wait the longest, say so
                    error = (f"{e.reason}; this will not fix itself (the main net's certificate or our [tls] "
                             "ca_file must change)")
                    certificate = True
                except _SESSION_ENDED as e:
                    error = str(e)
            if self.state == "announced":  # we got through before it ended: start over gently
                backoff = self.backoff_min
            self.failures += 1
            self.last_error = error
            self.state = "backoff"
            delay = self.backoff_max if certificate else backoff * random.uniform(0.5, 1.0)
            log.warning("main net %s: %s; retrying in %.1fs", self.mainnet_url, error, delay)
            await trio.sleep(delay)
            backoff = min(backoff * 2, self.backoff_max)

    async def _serve(self, conn: Connection) -> None:
        """One session: returns when the main net closes it; raises what ended it otherwise."""
        announced: m.SignedDescriptor | None = None
        renew_at = next_lookup = last_lookup = trio.current_time()
        while not conn.closed:
            nodes, caps = await node_summary(self.registry)
            signed = self.issuer.current(self.clock(), nodes=nodes, capabilities=caps)
            if signed != announced or trio.current_time() >= renew_at:
                lease = await self._announce(conn, signed)
                announced = signed
                remaining = max(0, lease.expires - self.clock()) / 1000
                renew_at = trio.current_time() + min(self.announce_interval, remaining / 2)
            now = trio.current_time()
            early_at = last_lookup + EARLY_LOOKUP_GAP
            if now >= next_lookup or (self._lookup_soon and now >= early_at):
                self._lookup_soon = False
                await self._lookup(conn)
                last_lookup = trio.current_time()
                next_lookup = last_lookup + self.lookup_interval
            wake_at = min(renew_at, next_lookup, trio.current_time() + self.check_interval)
            if self._lookup_soon:
                wake_at = min(wake_at, last_lookup + EARLY_LOOKUP_GAP)
            await self._nap(conn, wake_at)

    async def _nap(self, conn: Connection, deadline: float) -> None:
        """Until the deadline, the end of the session, or lookup_soon()."""
        self._wake = trio.Event()
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                async def until_closed() -> None:
                    await conn.wait_closed()
                    nursery.cancel_scope.cancel()
                nursery.start_soon(until_closed)
                await self._wake.wait()
                nursery.cancel_scope.cancel()

    async def _announce(self, conn: Connection, signed: m.SignedDescriptor) -> m.Lease:
        reply = await conn.request(m.Announce(descriptor=signed), timeout=self.request_timeout)
        if reply.type != "LEASE":
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"ANNOUNCE answered with {reply.type}")
        lease = reply.msg
        self.announces += 1
        self.last_announced, self.lease_expires = self.clock(), lease.expires
        if self.state != "announced":
            log.info("announced to the main net %s (lease %d s)", self.mainnet_url, lease.ttl)
        self.state = "announced"
        return lease

    async def _lookup(self, conn: Connection) -> None:
        """Every pool of our network the main net lists, verified into the book; bounded by the
        book's capacity however many pages the main net offers."""
        found: list[Descriptor] = []
        changed = False
        cursor, seen = None, 0
        while seen < self.book.max_entries:
            reply = await conn.request(m.Lookup(network=self.network, limit=self.lookup_page, cursor=cursor),
                                       timeout=self.request_timeout)
            if reply.type != "LOOKUP_RESULT":
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"LOOKUP answered with {reply.type}")
            page = reply.msg.descriptors
            seen += len(page)
            changed |= self._offer(page, found)
            cursor = reply.msg.cursor
            if cursor is None or not page:
                break
            await trio.sleep(0)
        self.lookups += 1
        self._hand_over(found)
        if changed:
            await self._save()

    def _offer(self, descriptors: Iterable[m.SignedDescriptor], found: list[Descriptor], *,
               verified: bool = True) -> bool:
        """Verify into the book (as verified: the main net proved each pool's endpoint, unless
        `verified` is False); appends what the book now holds for each pool. True if the book changed."""
        changed = False
        now = self.clock()
        for signed in descriptors:
            try:
                key = decode_record(signed.record, max_record=self.book.max_record).key
            except ProtocolError as e:
                self.rejected += 1
                log.warning("main net %s relayed a descriptor that does not verify: %s", self.mainnet_url, e)
                continue
            if key == self.identity.public:
                continue
            try:
                before = self.book.signed(key)
                found.append(self.book.offer(signed, now=now, network=self.network, source="mainnet",
                                             verified=verified))
                changed |= self.book.signed(key) != before
            except ProtocolError as e:
                if e.code == ErrorCode.STALE_DESCRIPTOR:  # we hold a newer one (from a peer)
                    held = self.book.get(key)
                    if held is not None and held.expires > now:
                        found.append(held)
                    continue
                self.rejected += 1
                log.warning("main net %s relayed a descriptor that does not verify: %s", self.mainnet_url, e)
        return changed

    async def _load(self) -> None:
        """Start from the descriptors saved by a previous run (verified again; bad ones are skipped)."""
        b = self.book
        now = self.clock()
        saved = await trio.to_thread.run_sync(partial(
            DescriptorBook.from_disk, self.book_path, now, network=self.network, max_entries=b.max_entries,
            max_record=b.max_record, max_lifetime_ms=b.max_lifetime_ms, max_skew_ms=b.max_skew_ms))
        found: list[Descriptor] = []
        for verified in (True, False):
            signed = [s for d in saved.all(now) if saved.verified(d.key) is verified
                      and (s := saved.signed(d.key)) is not None]
            for i in range(0, len(signed), 64):  # verifying is ~150 us each: let others run between chunks
                self._offer(signed[i:i + 64], found, verified=verified)
                await trio.sleep(0)
        if found:
            log.info("loaded %d known pools from %s", len(found), self.book_path)
            self._hand_over(found)

    async def _save(self) -> None:
        self.book.prune(self.clock())
        try:
            await trio.to_thread.run_sync(write_atomic, self.book_path, self.book.dump())
        except OSError as e:
            log.warning("cannot save known pools to %s: %s", self.book_path, e)

    def _hand_over(self, found: list[Descriptor]) -> None:
        if self.on_descriptors is None:
            return
        with self.task_failures.guard("mainnet.discover"):
            self.on_descriptors(found)
