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

import logging
import os
import random
from collections import Counter
from functools import partial
from typing import Any, Callable, Iterable

import msgpack
import trio

from galaxynode.descriptor import (write_atomic, MAX_LIFETIME_MS, MAX_SKEW_MS, Descriptor, DescriptorBook, DescriptorIssuer,
                                   decode_record, verify_descriptor)
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.net.client import connect
from galaxynode.net.connection import DEFAULT_SESSION_LIMITS, Connection, SessionClosed, SessionLimits
from galaxynode.net.transport import ChannelClosed
from galaxynode.pool import PoolInfo, PoolServices, SessionHandler
from galaxynode.registry import LeaseTable, Registry
from galaxynode.registry.leases import Entry
from galaxynode.registry.service import wall_clock_ms
from galaxynode.resilience import TaskFailures

log = logging.getLogger(__name__)

POOL_STORE_TABLE = "pools"
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


# --- main net ----------------------------------------------------------------------------------

class MainnetServices(PoolServices):
    """Shared by all main net sessions. `registry` comes from open_pool_registry (so its events are
    pool.*); `bus` is the real bus (pool.announced, subscriptions). Descriptors must be for
    ``info.network``. A LOOKUP reply is cut (with a cursor) before `max_reply_bytes` of descriptors."""

    def __init__(self, info: PoolInfo, registry: Registry, bus: Any, *, event_queue: int = 256,
                 max_reply_bytes: int = 256 * 1024, max_lifetime_ms: int = MAX_LIFETIME_MS,
                 max_skew_ms: int = MAX_SKEW_MS):
        if info.role != "mainnet":
            raise ValueError("a main net's PoolInfo has role 'mainnet'")
        if max_reply_bytes < m.MAX_DESCRIPTOR_RECORD + 128:
            raise ValueError("max_reply_bytes must hold at least one maximal descriptor")
        super().__init__(info, registry, bus, event_queue=event_queue)
        self.max_reply_bytes = max_reply_bytes
        self.max_lifetime_ms = max_lifetime_ms
        self.max_skew_ms = max_skew_ms
        self.refused = 0  # announces refused (metrics)

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

    async def announce(self, peer_key: bytes, signed: m.SignedDescriptor) -> Entry:
        """Verify and register `signed` on behalf of the session with `peer_key`; ProtocolError if
        refused. Returns the registry entry once it is durable."""
        try:
            return await self._announce(peer_key, signed)
        except ProtocolError:
            self.refused += 1
            raise

    async def _announce(self, peer_key: bytes, signed: m.SignedDescriptor) -> Entry:
        reg, table = self.registry, self.registry.table
        now = reg.clock()
        desc = verify_descriptor(signed, now=now, network=self.info.network, max_lifetime_ms=self.max_lifetime_ms,
                                 max_skew_ms=self.max_skew_ms)
        if desc.key != peer_key:
            raise ProtocolError(ErrorCode.FORBIDDEN, "a pool can only announce its own descriptor")
        if desc.role != "pool":
            raise ProtocolError(ErrorCode.BAD_DESCRIPTOR, f"the main net registers pools, not {desc.role!r}")
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
        entry = await reg.join(desc.key, capabilities=desc.capabilities,
                               meta={"name": desc.name, "network": desc.network}, ttl=ttl,
                               payload=pack_signed(signed))
        if changed and self.bus is not None:
            self.bus.publish("pool.announced", {"key": desc.key.hex(), "name": desc.name, "network": desc.network,
                                                "endpoints": list(desc.endpoints), "seq": desc.seq})
        return entry

    def lookup(self, q: m.Lookup) -> tuple[list[m.SignedDescriptor], bytes | None]:
        """One page of registered descriptors matching `q`, as received, and the next cursor."""
        meta = {k: v for k, v in (("network", q.network), ("name", q.name)) if v is not None}
        entries, cursor = self.registry.query(capabilities=(q.capability,) if q.capability else (), meta=meta,
                                              limit=q.limit, cursor=q.cursor)
        out: list[m.SignedDescriptor] = []
        size = 0
        for i, e in enumerate(entries):
            signed = unpack_signed(e.payload)
            if signed is None:
                log.error("registered pool %s has no readable descriptor; skipped", e.key.hex()[:16])
                continue
            size += len(signed.record) + len(signed.sig) + 16  # + msgpack framing of the pair
            if size > self.max_reply_bytes:
                return out, entries[i - 1].key  # i > 0: one descriptor always fits
            out.append(signed)
        return out, cursor


class MainnetSession(SessionHandler):
    """Per-session routes of the main net: discovery, events, status. Event pushes come from
    SessionHandler.run."""

    s: MainnetServices

    def __init__(self, services: MainnetServices):
        super().__init__(services)
        self.routes = {"ANNOUNCE": self.announce, "LOOKUP": self.lookup, "SUBSCRIBE": self.subscribe,
                       "UNSUBSCRIBE": self.unsubscribe, "STATUS": self.status}

    async def announce(self, conn: Any, frame: Frame) -> m.Lease:
        entry = await self.s.announce(conn.peer_key, frame.msg.descriptor)
        return m.Lease(re=frame.id, ttl=entry.ttl, expires=entry.expires)

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
            error = "internal error (logged)"
            with self.task_failures.guard("mainnet.announce"):
                try:
                    async with connect(self.mainnet_url, self.identity, network=self.network, role="pool",
                                       limits=self.limits, pinned_key=self.mainnet_key,
                                       ssl_context=self.ssl_context, connect_timeout=self.connect_timeout) as conn:
                        await self._serve(conn)
                    error = "the main net closed the session"
                except _SESSION_ENDED as e:
                    error = str(e)
            if self.state == "announced":  # we got through before it ended: start over gently
                backoff = self.backoff_min
            self.failures += 1
            self.last_error = error
            self.state = "backoff"
            delay = backoff * random.uniform(0.5, 1.0)
            log.warning("main net %s: %s; retrying in %.1fs", self.mainnet_url, error, delay)
            await trio.sleep(delay)
            backoff = min(backoff * 2, self.backoff_max)

    async def _serve(self, conn: Connection) -> None:
        """One session: returns when the main net closes it; raises what ended it otherwise."""
        announced: m.SignedDescriptor | None = None
        renew_at = next_lookup = trio.current_time()
        while not conn.closed:
            nodes, caps = await node_summary(self.registry)
            signed = self.issuer.current(self.clock(), nodes=nodes, capabilities=caps)
            if signed != announced or trio.current_time() >= renew_at:
                lease = await self._announce(conn, signed)
                announced = signed
                remaining = max(0, lease.expires - self.clock()) / 1000
                renew_at = trio.current_time() + min(self.announce_interval, remaining / 2)
            if trio.current_time() >= next_lookup:
                await self._lookup(conn)
                next_lookup = trio.current_time() + self.lookup_interval
            with trio.move_on_at(min(renew_at, next_lookup, trio.current_time() + self.check_interval)):
                await conn.wait_closed()

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

    def _offer(self, descriptors: Iterable[m.SignedDescriptor], found: list[Descriptor]) -> bool:
        """Verify into the book; appends what the book now holds for each pool. True if the book changed."""
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
                found.append(self.book.offer(signed, now=now, network=self.network))
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
        signed = [s for d in saved.all(now) if (s := saved.signed(d.key)) is not None]
        for i in range(0, len(signed), 64):  # verifying is ~150 us each: let others run between chunks
            self._offer(signed[i:i + 64], found)
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
