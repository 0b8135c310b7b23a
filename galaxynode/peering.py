"""Pool peering: sessions between pools, descriptor exchange, cross-pool QUERY and event relay.

Sessions are symmetric. Whichever pool opened it (our outbound loop for a static peer, or the
peer dialling our server with role "pool"), a peer session runs the same `PeerSession` handler:
the pool's own SessionHandler serves the peer's requests, and alongside it we exchange
DESCRIPTORS and SUBSCRIBE to the peer's `node.#`, `pool.#` and `peer.#` events.

One session per peer key. When two exist (both pools dialled each other, or a peer redialled),
both sides keep the same one: the session opened by the pool with the smaller key, or between
two opened by the same pool, the newer. The loser gets ERROR duplicate_session. An outbound loop
whose peer is already connected through another session waits for that session to end instead
of redialling.

Cross-pool QUERY (scope "peers") fans out to every peer but the asker with `hops - 1`. QUERY
carries no list of visited pools, so loops are bounded by hops alone (each pool clamps them to
`max_query_hops`) and the duplicates a loop produces are merged by node key. Paging works across
pools because every registry pages in key order and its cursor is the last key returned: the
cursor is forwarded unchanged, each pool answers with its first `limit` keys after it, and the
merged page is again the first `limit` keys after it.

Events: a relayed EVENT keeps its origin and event_id and gains a hop. It is dropped when its
origin is us, when (origin, event_id) was seen recently (bounded LRU), or past `max_event_hops`;
together these end loops in any topology (tested on a triangle).
"""
from __future__ import annotations

import logging
import os
import random
import ssl
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Iterable, Sequence

import attrs
import trio

from galaxynode.descriptor import DescriptorBook, DescriptorIssuer, decode_record, endpoint_error
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity, format_public_key
from galaxynode.mainnet import dial_target, discover_budget, node_summary
from galaxynode.net.client import connect
from galaxynode.net.connection import (DEFAULT_SESSION_LIMITS, Connection, ConnectionStats, Handler, SessionClosed,
                                       SessionLimits)
from galaxynode.net.transport import CertificateError, ChannelClosed, parse_url
from galaxynode.peerpolicy import Grade, PeerPolicy, Standing
from galaxynode.pool import node_record
from galaxynode.records import EventSeqs, NodeSeqs, RecordError, RecordSigner, accept_event, accept_node, matches
from galaxynode.registry.leases import record_bytes
from galaxynode.registry.service import wall_clock_ms
from galaxynode.resilience import TaskFailures

log = logging.getLogger(__name__)

_SESSION_ENDED = (ChannelClosed, ProtocolError, SessionClosed, trio.TooSlowError)
_VERIFY_CHUNK = 32  # descriptors verified between checkpoints (~150 us each)


@attrs.define
class PeerStats:
    sessions: int = 0            # peer sessions that became the active one
    duplicates_closed: int = 0   # sessions closed because another one to the same pool won
    refused_full: int = 0        # refused past max_peers
    queries_out: int = 0         # QUERY requests sent to peers
    query_failures: int = 0      # of those: timed out, refused or session lost
    events_relayed: int = 0      # peer events published on our bus
    events_duplicate: int = 0    # seen before (another path)
    events_looped: int = 0       # our own events coming back
    events_too_far: int = 0      # past max_event_hops
    events_refused: int = 0      # topic outside the relayed families, or not accepted by the bus
    events_forged: int = 0       # refused by attribution: unsigned, or not verifying, for its origin
    records_refused: int = 0     # peer query records refused by attribution (records.md §6.2)
    records_filtered: int = 0    # peer query records outside the query's filter
    queries_duplicate: int = 0   # peer QUERYs whose id was seen: answered locally, not fanned out
    descriptors_accepted: int = 0
    descriptors_refused: int = 0
    not_accepted: int = 0        # sessions claiming role pool whose key the policy does not accept (served as nodes)
    evicted: int = 0             # peers that gave their slot to a better newcomer
    queries_skipped: int = 0     # peers not asked (not waited for) because their standing was low


@attrs.define(eq=False)
class StaticPeer:
    """A configured peer and what its outbound loop is doing (for ADMIN peers)."""

    url: str
    pinned_key: bytes | None = None
    learned_key: bytes | None = None  # from the last handshake, when not pinned
    state: str = "idle"               # idle | connecting | connected | standby | backoff
    last_error: str | None = None

    @property
    def key(self) -> bytes | None:
        return self.pinned_key or self.learned_key


class PeerSession:
    """The handler of one pool-to-pool session, whichever side opened it: requests go to the
    pool's handler; `run` registers the session with the manager and runs the peering tasks."""

    def __init__(self, manager: "PeerManager", inner: Handler, *, direction: str, url: str | None = None,
                 grade: Grade = Grade.NONE):
        self.manager = manager
        self.inner = inner
        self.direction = direction
        self.url = url
        self.conn: Connection | None = None
        # new -> active | refused | unverified (served as a node until the policy accepts the key) -> ended
        self.state = "new"
        self.refusal: ProtocolError | None = None   # why we close it (lost to another session, full)
        self.evict: tuple[Connection, ProtocolError] | None = None  # a session this one replaced, to close
        self.since = 0                              # wall ms when it became active
        self.events_in = 0
        self.floor = grade                          # outbound: the grade we dialled it with (static, listed)
        self.grade = grade                          # the policy's grade once attached
        self.standing = Standing(0)
        self.probing = False                        # a query to this low-standing peer is out (recovery)
        # inbound sessions wait for the plugins' admission hooks (is_peer) before the policy grades them
        self.plugin_verdict: bool | None = None if manager.admission is not None and direction == "inbound" else True

    @property
    def key(self) -> bytes:
        assert self.conn is not None
        return self.conn.peer_key

    @property
    def opener(self) -> bytes:
        """Key of the pool that opened the session."""
        assert self.conn is not None
        return self.manager.identity.public if self.conn.session.opener else self.conn.peer_key

    async def __call__(self, conn: Connection, frame: Frame) -> Any:
        return await self.inner(conn, frame)

    async def run(self, conn: Connection) -> None:
        mgr = self.manager
        if self.plugin_verdict is None:
            self.plugin_verdict = await mgr.admit_peer(conn)
        mgr._attach(self, conn)
        if self.refusal is not None:
            await conn.close(self.refusal)
            return
        try:
            async with trio.open_nursery() as nursery:
                inner_run = getattr(self.inner, "run", None)
                if inner_run is not None:
                    nursery.start_soon(_until_closed, inner_run, conn)
                if self.state == "unverified":  # served as a node until the policy accepts the key
                    await mgr._wait_until(lambda: self.state != "unverified")
                    if self.refusal is not None:
                        await conn.close(self.refusal)
                        return
                if self.evict is not None:
                    (old, why), self.evict = self.evict, None
                    await old.close(why)
                nursery.start_soon(_until_closed, mgr._subscribe, self)
                nursery.start_soon(_until_closed, mgr._send_descriptors, self)
        finally:
            mgr._detach(self)


def _reply_bytes(n: m.NodeRecord) -> int:
    """What a record takes in a QUERY_RESULT, as page_bytes counts it: the record plus its envelope."""
    return record_bytes(n) + (len(n.signed.record) + m.SignedRecord.SIG_OVERHEAD if n.signed is not None else 0)


def _page(re: bytes, q: m.Query, found: dict[tuple[bytes, bytes], tuple[int, m.NodeRecord]], ends: list[bytes],
          limit: int, page_bytes: int, partial: bool) -> m.QueryResult:
    """The merged page (peering §4.3): keys up to the smallest cursor any source returned (past it
    that source has not answered yet), then whole node keys (a node held by several pools is never
    split across pages) while they fit `limit` records and `page_bytes`; the cursor is the last
    key kept. The first key always goes in, at most `limit` of its records, so paging progresses."""
    end = min(ends) if ends else None
    records = sorted((n for _, n in found.values() if end is None or n.key <= end), key=lambda n: (n.key, n.pool))
    kept: list[m.NodeRecord] = []
    size, i, more = 0, 0, end is not None
    while i < len(records):
        j = i
        while j < len(records) and records[j].key == records[i].key:
            j += 1
        group = records[i:j]
        weight = sum(map(_reply_bytes, group))
        if kept and (len(kept) + len(group) > limit or size + weight > page_bytes):
            more = True
            break
        kept.extend(group[:limit])
        size, i = size + weight, j
    cursor = None
    if more and q.key is None:
        cursor = kept[-1].key if kept else end
    return m.QueryResult(re=re, nodes=tuple(kept), partial=partial, cursor=cursor)


async def _until_closed(fn: Callable[[Any], Any], arg: Any) -> None:
    """Run one task of a session; the session closing ends it quietly, also when the task
    raised it from a nursery of its own (as an exception group)."""
    try:
        await fn(arg)
    except* SessionClosed:
        pass


def _wins(new: PeerSession, old: PeerSession) -> bool:
    """Whether `new` replaces `old` (same peer key). Both pools decide alike: the session opened
    by the smaller key wins; of two opened by the same pool, the newer one."""
    if new.opener != old.opener:
        return new.opener < old.opener
    return True


class PeerManager:
    """Keeps sessions with peer pools and offers cross-pool services to the pool's sessions.

    Wiring: `pool_handler()` makes the pool's handler for one session (normally
    `lambda: services.handler()`, where `services = PoolServices(..., peers=manager)`), the
    server is built with `handler_factory=manager.handler_factory`, and `run` goes in a nursery.
    Peers are `static` (url, pinned key or None) pairs dialled by us, plus any pool that dials
    us with role "pool", up to `max_peers` in all. Times are seconds; `clock` is wall ms.
    """

    def __init__(self, identity: Identity, *, network: str, registry: Any, bus: Any,
                 pool_handler: Callable[[], Handler], limits: SessionLimits = DEFAULT_SESSION_LIMITS,
                 static: Iterable[tuple[str, bytes | None]] = (), max_peers: int = 32,
                 reconnect_min: float = 1.0, reconnect_max: float = 60.0, query_timeout: float = 3.0,
                 max_query_hops: int = 2, max_event_hops: int = 4, dedup_size: int = 4096,
                 relay_families: Sequence[str] = ("node", "pool", "peer"), request_timeout: float = 10.0,
                 issuer: DescriptorIssuer | None = None, book: DescriptorBook | None = None,
                 descriptor_interval: float = 5.0, descriptor_batch: int = 64, connect_timeout: float = 10.0,
                 listen: Sequence[str] = (), ssl_context: ssl.SSLContext | None = None,
                 policy: PeerPolicy | None = None, max_inbound: int = 24, max_outbound: int = 8,
                 clock: Callable[[], int] = wall_clock_ms, target: int = 8, give_up_after: int = 3,
                 query_budget: int = 8):
        if max_peers < 0 or dedup_size < 1:
            raise ValueError("max_peers must not be negative and dedup_size at least 1")
        if max_inbound < 0 or max_outbound < 0:
            raise ValueError("max_inbound and max_outbound must not be negative")
        if min(reconnect_min, query_timeout, request_timeout, descriptor_interval, connect_timeout) <= 0:
            raise ValueError("reconnect_min, timeouts and descriptor_interval must be positive")
        if reconnect_max < reconnect_min:
            raise ValueError("reconnect_max must be at least reconnect_min")
        if not 0 <= max_query_hops <= m.MAX_HOPS or not 0 <= max_event_hops <= m.MAX_HOPS:
            raise ValueError(f"hop limits must be in 0..{m.MAX_HOPS}")
        if not 0 <= query_budget <= m.MAX_QUERY_BUDGET:
            raise ValueError(f"query_budget must be in 0..{m.MAX_QUERY_BUDGET}")
        if not 1 <= descriptor_batch <= 256:
            raise ValueError("descriptor_batch must be in 1..256 (the DESCRIPTORS limit)")
        if any(not f or "." in f or f in ("*", "#", "**") for f in relay_families):
            raise ValueError("relay_families are plain topic segments such as 'node'")
        if issuer is not None and issuer.identity.public != identity.public:
            raise ValueError("the issuer signs for another identity")
        self.static: list[StaticPeer] = []
        for url, key in static:
            parse_url(url)  # ValueError now rather than at the first dial
            if key is not None and len(key) != 32:
                raise ValueError(f"{url}: pinned key must be 32 bytes")
            self.static.append(StaticPeer(url, key))
        self.identity = identity
        self.network = network
        self.registry = registry
        self.bus = bus
        self.pool_handler = pool_handler
        self.limits = limits
        self.max_peers = max_peers
        # Who may peer and who keeps a slot (peerpolicy.py). A library default of "any" keeps a bare
        # PeerManager open; the daemon passes [peers] accept (default "listed").
        self.policy = policy if policy is not None else PeerPolicy("any")
        for _, key in static:
            if key is not None:
                self.policy.add_static(key)
        self.quota = {"inbound": max_inbound, "outbound": max_outbound}  # static peers may exceed theirs
        self._unverified: set[PeerSession] = set()  # role-pool sessions served as nodes for now
        # Called when a pool we do not know as listed dials us under accept = "listed": the daemon
        # sets it to the announcer's lookup_soon, so a pool listed since our last LOOKUP is promoted.
        self.on_unlisted: Callable[[], None] | None = None
        # plugins.PluginSupervisor.admit when a plugin has an admission hook (set by the daemon)
        self.admission: Callable[[Any], Awaitable[Any]] | None = None
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.query_timeout = query_timeout
        self.max_query_hops = max_query_hops
        self.max_event_hops = max_event_hops
        self.dedup_size = dedup_size
        self.relay_families = tuple(relay_families)
        self.request_timeout = request_timeout
        self.issuer = issuer
        self.book = book
        self.descriptor_interval = descriptor_interval
        self.descriptor_batch = descriptor_batch
        self.connect_timeout = connect_timeout
        self.listen = tuple(listen)
        self.ssl_context = ssl_context
        self.clock = clock
        self.stats = PeerStats()
        self.target = target                # pools dialled from discovery, beyond the static ones
        self.give_up_after = give_up_after  # failed dials before a discovered pool yields its slot
        self.discovered_peers: dict[bytes, StaticPeer] = {}
        self._nursery: trio.Nursery | None = None
        self._peers: dict[bytes, PeerSession] = {}
        self._changed = trio.Event()      # set (and replaced) whenever a peer comes or goes
        self._own: m.SignedDescriptor | None = None
        self._own_changed = trio.Event()  # set (and replaced) whenever our descriptor changes
        self._seen: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._dialled: set[Connection] = set()        # live sessions we opened (the server counts the rest)
        self._dialled_ended = ConnectionStats()
        self.task_failures = TaskFailures(log)  # descriptor rebuild, dialling: they go on (metrics)
        # Attribution (records.md): our records signed once, others' verified at every hop.
        self.query_budget = query_budget
        self.signer = RecordSigner(identity, network=network)
        self.node_seqs = NodeSeqs()
        self.event_seqs = EventSeqs()
        self._queries: OrderedDict[bytes, None] = OrderedDict()  # query ids seen (duplicate suppression)
        self._event_sigs: OrderedDict[bytes, m.SignedRecord | None] = OrderedDict()  # our events, signed once

    # --- what the pool services use ------------------------------------------------------------

    @property
    def connected(self) -> dict[bytes, Connection]:
        return {k: s.conn for k, s in self._peers.items() if s.conn is not None}

    def session_stats(self) -> ConnectionStats:
        """Counters of every session this manager dialled, the live ones included (for metrics)."""
        return ConnectionStats.total(self._dialled_ended, self._dialled)

    def routes(self) -> dict[str, Callable[[Connection, Frame], Any]]:
        return {"DESCRIPTORS": self._on_descriptors, "EVENT": self._on_event}

    async def admit_peer(self, conn: Connection) -> bool:
        """Whether the plugins' admission hooks (galaxynode.plugin, is_peer) let this pool be a peer; a
        refused one is served as a node, like a key the policy does not accept."""
        from galaxynode.plugin import AdmissionRequest
        try:
            await self.admission(AdmissionRequest(key=conn.peer_key, remote=conn.remote, is_peer=True, role="pool"))
        except ProtocolError as e:
            log.info("pool %s (%s) is not accepted as a peer by a plugin: %s", format_public_key(conn.peer_key),
                     conn.remote, e.message)
            return False
        return True

    def handler_factory(self, conn: Connection) -> Handler:
        """For Server(handler_factory=...): sessions that say role "pool" get a PeerSession, which
        becomes a peer only if the policy accepts the key (_attach); until then it serves a node."""
        inner = self.pool_handler()
        if conn.peer_hello.role != "pool":
            return inner
        # The peer's claimed listen URLs are only shown to operators: keep the first well-formed one.
        url = next((u for u in conn.peer_hello.listen if endpoint_error(u) is None), None)
        return PeerSession(self, inner, direction="inbound", url=url)

    def describe(self) -> list[dict[str, Any]]:
        """ADMIN peers: connected peers (with grade and standing), then static peers not connected,
        then sessions that claim role pool but are not accepted as peers (state "not accepted")."""
        out = []
        for key, s in sorted(self._peers.items()):
            desc = self.book.get(key) if self.book is not None else None
            st = s.standing
            out.append({"key": key, "state": "connected", "direction": s.direction,
                        "url": s.url or "", "remote": s.conn.remote if s.conn else "", "since": s.since,
                        "name": desc.name if desc else "", "events_in": s.events_in,
                        "grade": s.grade.name.lower(), "standing": "low" if self.policy.low(st) else "good",
                        "answered": st.answered, "missed": st.missed, "skipped": st.skipped})
        for p in self.static:
            if p.key is None or p.key not in self._peers:
                out.append({"key": p.key if p.key else None, "state": p.state, "direction": "outbound",
                            "url": p.url, "last_error": p.last_error or ""})
        for s in sorted(self._unverified, key=lambda s: s.key):
            out.append({"key": s.key, "state": "not accepted", "direction": s.direction, "url": s.url or "",
                        "remote": s.conn.remote if s.conn else ""})
        return out

    def standing_counts(self) -> dict[str, int]:
        """Connected peers by standing (metrics)."""
        low = sum(1 for s in self._peers.values() if self.policy.low(s.standing))
        return {"good": len(self._peers) - low, "low": low}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Issue our descriptor, keep the static peers connected; until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.issuer is not None:
                with self.task_failures.guard("peering.descriptor"):  # start-up goes on without one
                    await self._refresh_descriptor()
                nursery.start_soon(self._descriptor_loop)
            for peer in self.static:
                nursery.start_soon(self._keep, peer)
            self._nursery = nursery
            task_status.started()

    # --- sessions ------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _attach(self, s: PeerSession, conn: Connection) -> None:
        """Decide whether this session becomes the peer's active one (synchronous, so the decision
        cannot interleave with another session's): the policy grades the key (a key it does not
        accept leaves the session unverified: served as a node, decided again when the policy
        lists it), then one session per key, then the slots (_slot)."""
        if s.state not in ("new", "unverified") or s.plugin_verdict is None:  # None: the plugins are asked
            return
        s.conn = conn
        key = conn.peer_key
        s.grade = max(s.floor, self.policy.grade(key, self.clock())) if s.plugin_verdict else Grade.NONE
        if s.grade == Grade.NONE:
            if s.state == "new":
                s.state = "unverified"
                self._unverified.add(s)
                self.stats.not_accepted += 1
                log.info("pool %s (%s) is not accepted as a peer (accept = %s): served as a node",
                         format_public_key(key), conn.remote, self.policy.accept)
                if self.policy.accept == "listed" and self.on_unlisted is not None:
                    self.on_unlisted()
            return
        self._unverified.discard(s)
        old = self._peers.get(key)
        if old is not None and not _wins(s, old):
            self.stats.duplicates_closed += 1
            s.state, s.refusal = "refused", ProtocolError(ErrorCode.DUPLICATE_SESSION,
                                                          "another session with this pool is kept")
            log.info("peer %s: keeping the %s session, closing the new %s one", format_public_key(key),
                     old.direction, s.direction)
            self._notify()
            return
        if old is None and not self._slot(s):
            return
        s.state, s.since = "active", self.clock()
        conn.grant_peer_frames()
        self._peers[key] = s
        self.stats.sessions += 1
        if old is not None:
            self.stats.duplicates_closed += 1
            old.state = "ended"
            s.standing = old.standing  # the pool's record, not the session's: redialling resets nothing
            s.evict = (old.conn, ProtocolError(ErrorCode.DUPLICATE_SESSION, "replaced by another session"))
            log.info("peer %s: %s session replaces the %s one", format_public_key(key), s.direction, old.direction)
        else:
            s.standing = Standing(s.since)
            log.info("peer %s connected (%s, %s, %s)", format_public_key(key), s.direction, s.grade.name.lower(),
                     s.url or conn.remote)
            self._publish_peer("peer.connected", s)
        self._notify()

    def _slot(self, s: PeerSession) -> bool:
        """A slot for a new peer key: free in its direction's quota (and under max_peers), or taken
        from the peer the policy lets it evict; a static peer gets one in any case. False: refused."""
        same = [p for p in self._peers.values() if p.direction == s.direction]
        if len(same) < self.quota[s.direction] and len(self._peers) < self.max_peers:
            return True
        pool = same if len(same) >= self.quota[s.direction] else list(self._peers.values())
        victim_key = self.policy.victim(s.grade, ((p.key, p.grade, p.standing) for p in pool))
        if victim_key is not None:
            victim = self._peers.pop(victim_key)
            victim.state = "ended"
            self.stats.evicted += 1
            s.evict = (victim.conn, ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, "slot given to a better peer"))
            log.info("peer %s (%s, %d missed) gives its slot to %s (%s)", format_public_key(victim_key),
                     victim.grade.name.lower(), victim.standing.missed, format_public_key(s.key), s.grade.name.lower())
            self._publish_peer("peer.disconnected", victim)
            return True
        if s.grade == Grade.STATIC:  # configured by the operator, bounded by the config: never refused
            return True
        self.stats.refused_full += 1
        s.state, s.refusal = "refused", ProtocolError(
            ErrorCode.TOO_MANY_CONNECTIONS, f"at most {self.quota[s.direction]} {s.direction} peers")
        log.info("refused peer %s: %d %s peers already", format_public_key(s.key), len(same), s.direction)
        self._notify()  # an unverified session's run waits for its state to change
        return False

    def _outbound_free(self) -> bool:
        out = sum(1 for p in self._peers.values() if p.direction == "outbound")
        return out < self.quota["outbound"] and len(self._peers) < self.max_peers

    def _detach(self, s: PeerSession) -> None:
        was_active = s.state == "active"
        s.state = "ended"
        self._unverified.discard(s)
        if was_active and self._peers.get(s.key) is s:
            del self._peers[s.key]
            log.info("peer %s disconnected (%s)", format_public_key(s.key), s.direction)
            self._publish_peer("peer.disconnected", s)
            self._notify()

    def _publish_peer(self, topic: str, s: PeerSession) -> None:
        self.bus.publish(topic, {"key": s.key, "url": s.url or "", "direction": s.direction})

    def _active(self, conn: Connection, frame: Frame) -> PeerSession:
        """The peer session of conn, if it is the active one; peering messages need one."""
        s = conn.handler
        if isinstance(s, PeerSession) and s.manager is self:
            self._attach(s, conn)  # a peer may speak before our run task got going
            if s.state == "active":
                return s
            if s.state == "unverified":
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{frame.type}: this pool's peering policy does not "
                                                         "accept your key as a peer", frame.id)
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{frame.type} is accepted on an active peer session only",
                            frame.id)

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    def discover(self, descriptors: Iterable[Any]) -> None:
        """Auto-peering: dial pools learned from the main net (verified descriptors), up to
        `target` of them. One that cannot be reached `give_up_after` times in a row gives its
        slot up, so the slots end up with pools we can reach. The main net listed these pools:
        under accept = "listed" their keys are accepted as peers, also sessions they opened
        before we knew (those are decided again now)."""
        descriptors = list(descriptors)
        now = self.clock()
        for d in descriptors:
            if d.network == self.network:
                self.policy.list(d.key, d.expires)
        self.policy.prune(now)
        for s in list(self._unverified):
            if s.conn is not None:
                self._attach(s, s.conn)
        self._notify()
        if self._nursery is None or self.policy.accept == "static":
            return
        known = {p.key for p in self.static} | set(self.discovered_peers)
        if not hasattr(self, "discover_budget"):  # the daemon sets it from [mainnet] discover_dials
            self.discover_budget = discover_budget(give_up_after=self.give_up_after)
        for d in descriptors:
            if len(self.discovered_peers) >= self.target:
                break
            if d.key == self.identity.public or d.key in known or d.network != self.network or not d.endpoints:
                continue
            # A poisoned main net must not aim our dialler at a third party: each host:port is
            # taken up at most a few times per hour, however many keys name it.
            if not self.discover_budget.allow(dial_target(d.endpoints[0]), trio.current_time()):
                continue
            peer = StaticPeer(d.endpoints[0], d.key)
            self.discovered_peers[d.key] = peer
            known.add(d.key)
            self._nursery.start_soon(self._keep_discovered, peer)

    async def _keep_discovered(self, peer: StaticPeer) -> None:
        try:
            await self._keep(peer, give_up_after=self.give_up_after, grade=Grade.LISTED)
        finally:
            self.discovered_peers.pop(peer.key, None)

    async def _keep(self, peer: StaticPeer, *, give_up_after: int | None = None,
                    grade: Grade = Grade.STATIC) -> None:
        """Keep a session with one peer: redial with exponential backoff and full jitter,
        stand by while the peer is connected through another session, never spin. A static
        peer dials whatever the slots (it may take a non-static peer's); others wait for one."""
        backoff = self.reconnect_min
        failures = 0
        while True:
            if peer.key is not None and peer.key in self._peers:
                peer.state = "standby"
                await self._wait_until(lambda: peer.key not in self._peers)
                backoff = self.reconnect_min  # it was up; the peer may just be redialling us
            if grade != Grade.STATIC:
                await self._wait_until(lambda: self._outbound_free() or peer.key in self._peers)
            if peer.key is not None and peer.key in self._peers:
                continue
            peer.state = "connecting"
            session = PeerSession(self, self.pool_handler(), direction="outbound", url=peer.url, grade=grade)
            conn: Connection | None = None
            error: Any = "internal error (logged)"
            with self.task_failures.guard("peering.dial"):  # redialled with backoff like any failure
                try:
                    async with connect(peer.url, self.identity, network=self.network, role="pool",
                                       limits=self.limits, pinned_key=peer.pinned_key, handler=session,
                                       ssl_context=self.ssl_context, connect_timeout=self.connect_timeout,
                                       listen=self.listen) as conn:
                        self._dialled.add(conn)
                        peer.learned_key = conn.peer_key
                        if grade == Grade.STATIC:  # its own dials to us are static too
                            self.policy.add_static(conn.peer_key)
                        peer.state = "connected"
                        await conn.wait_closed()
                    error = conn.local_error or conn.remote_error or conn.close_reason or "closed"
                except _SESSION_ENDED as e:
                    error = e
                finally:
                    if conn is not None:
                        self._dialled.discard(conn)
                        self._dialled_ended.add(conn.stats)
            peer.last_error = str(error)
            failures = 0 if session.since else failures + 1
            if session.since:  # it was the active session for a while: start over gently
                backoff = self.reconnect_min
            elif give_up_after is not None and failures >= give_up_after:
                log.info("peer %s: unreachable %d times, giving its slot up", peer.url, failures)
                return
            if peer.key is not None and peer.key in self._peers:
                continue  # lost to another session: stand by
            peer.state = "backoff"
            if isinstance(error, CertificateError):  # no redial cures it: wait the longest, say so
                delay = self.reconnect_max
                log.warning("peer %s: %s; this will not fix itself (its certificate or our [tls] ca_file "
                            "must change): redialling in %.0fs", peer.url, error.reason, delay)
            else:
                delay = random.uniform(0, backoff)
                log.info("peer %s: %s; redialling in %.2fs", peer.url, error, delay)
            await trio.sleep(delay)
            backoff = min(backoff * 2, self.reconnect_max)

    # --- descriptors ---------------------------------------------------------------------------

    async def _refresh_descriptor(self) -> None:
        assert self.issuer is not None
        nodes, caps = await node_summary(self.registry)
        signed = self.issuer.current(self.clock(), nodes=nodes, capabilities=caps)
        if signed != self._own:
            self._own = signed
            self._own_changed.set()
            self._own_changed = trio.Event()

    async def _descriptor_loop(self) -> None:
        while True:
            await trio.sleep(self.descriptor_interval)
            with self.task_failures.guard("peering.descriptor"):
                await self._refresh_descriptor()

    async def _send_descriptors(self, s: PeerSession) -> None:
        """On connect: ours and every one we know; afterwards ours whenever it changes."""
        assert s.conn is not None
        batch: list[m.SignedDescriptor] = []
        if self.book is not None:
            for d in self.book.all(self.clock()):
                signed = self.book.signed(d.key)
                if d.key != s.key and signed is not None:
                    batch.append(signed)
        sent = None
        while True:
            changed, own = self._own_changed, self._own
            if own is not None and own != sent:
                batch.insert(0, own)
                sent = own
            for i in range(0, len(batch), self.descriptor_batch):
                await s.conn.send(m.Descriptors(descriptors=tuple(batch[i:i + self.descriptor_batch])))
            batch = []
            await changed.wait()

    async def _on_descriptors(self, conn: Connection, frame: Frame) -> None:
        """Verify each into the book. Refusals are answered with one ERROR for the message
        (non-fatal; the valid ones are kept)."""
        self._active(conn, frame)
        if self.book is None:
            return None
        now, refused, first = self.clock(), 0, None
        for i, signed in enumerate(frame.msg.descriptors):
            if i and i % _VERIFY_CHUNK == 0:
                await trio.sleep(0)
            try:
                key = decode_record(signed.record, max_record=self.book.max_record).key
                if key == self.identity.public:
                    continue  # our own, relayed back: we know better
                # The peer's own descriptor is verified (the handshake proved its key); the rest it
                # only relays, counted against its quota in the book.
                self.book.offer(signed, now=now, network=self.network, source=conn.peer_key,
                                verified=key == conn.peer_key)
                self.stats.descriptors_accepted += 1
            except ProtocolError as e:
                refused += 1
                first = first or e
        if first is not None:
            self.stats.descriptors_refused += refused
            log.info("peer %s: refused %d of %d descriptors: %s", format_public_key(conn.peer_key), refused,
                     len(frame.msg.descriptors), first.message)
            raise ProtocolError(first.code, f"{refused} of {len(frame.msg.descriptors)} descriptors refused; "
                                            f"first: {first.message}", frame.id)
        return None

    # --- queries -------------------------------------------------------------------------------

    def _peer_timeout(self, hops: int) -> float:
        """How long a pool asked with `hops` waits for its peers: further pools give up first, so
        their partial answers still reach the pool that asked them."""
        return self.query_timeout * hops / max(1, self.max_query_hops)

    async def own_records(self, entries: Iterable[Any], *, pool: bytes | None) -> list[m.NodeRecord]:
        """Our nodes' records for a pool, which may relay them: each with our signed record (the
        signer caches it and re-signs once per granularity). One too large to sign goes unsigned:
        the asker may use it as our own word but relays it no further (records.md §6.2)."""
        now, out = self.clock(), []
        for i, e in enumerate(entries):
            if i and i % _VERIFY_CHUNK == 0:
                await trio.sleep(0)
            try:
                signed = self.signer.node(e.key, capabilities=e.capabilities, meta=e.meta, expires=e.expires, now=now)
            except ValueError:
                signed = None
            out.append(node_record(e, pool=pool, signed=signed))
        return out

    def _first_query(self, qid: bytes) -> bool:
        if qid in self._queries:
            self._queries.move_to_end(qid)
            return False
        self._queries[qid] = None
        if len(self._queries) > self.dedup_size:
            self._queries.popitem(last=False)
        return True

    async def query(self, frame: Frame) -> m.QueryResult:
        """QUERY scope "peers" (peering §4): our registry plus the peers' answers, each record
        verified and re-filtered (records.md §6.4), merged by (origin, key), and cut where every
        source is complete, at `limit` and at page_bytes.

        Fan-out is bounded by the query's budget: the peer QUERYs it may still cause across the
        mesh, which we clamp to our own `query_budget`, spend one per peer asked and share out among
        them. A query id seen before (another path) is answered from our registry only."""
        q, own = frame.msg, self.identity.public
        from_peer = frame.sender in self._peers
        await self.registry.consistent()
        entries, cursor = self.registry.query(capabilities=q.capabilities, meta=q.meta, key=q.key, limit=q.limit,
                                              cursor=q.cursor)
        if from_peer:
            local = await self.own_records(entries, pool=own)
        else:
            local = [node_record(e, pool=own) for e in entries]
        hops = min(q.hops, self.max_query_hops)
        budget = self.query_budget if q.budget is None else min(q.budget, self.query_budget)
        qid = q.qid if from_peer and q.qid is not None else os.urandom(16)  # a node's id is not trusted
        if not self._first_query(qid):
            self.stats.queries_duplicate += 1
            hops = 0
        peers = [s for k, s in self._peers.items() if k != frame.sender] if hops > 0 else []
        random.shuffle(peers)
        peers = peers[:budget]
        answers: dict[bytes, m.QueryResult] = {}
        if peers:
            spare, n = budget - len(peers), len(peers)
            async with trio.open_nursery() as nursery:
                for i, s in enumerate(peers):
                    ask = attrs.evolve(q, scope="peers", hops=hops - 1, qid=qid,
                                       budget=spare // n + (1 if i < spare % n else 0))
                    self._ask_or_skip(nursery, s, ask, self._peer_timeout(hops), answers)
        limit = max(1, min(q.limit, self.registry.table.page_max))
        found: dict[tuple[bytes, bytes], tuple[int, m.NodeRecord]] = {(own, n.key): (0, n) for n in local}
        ends = [cursor] if cursor is not None else []  # where each source's page ended
        partial = False
        for s in peers:
            r = answers.get(s.key)
            if r is None:
                partial = True
                continue
            partial |= r.partial
            if r.cursor is not None and q.key is None and (q.cursor is None or r.cursor > q.cursor):
                ends.append(r.cursor)
            await self._merge(s, r.nodes[:limit], q, found, relaying=from_peer)
        return _page(frame.id, q, found, ends, limit, self.registry.table.page_bytes, partial)

    async def _merge(self, s: PeerSession, nodes: Sequence[m.NodeRecord], q: m.Query,
                     found: dict[tuple[bytes, bytes], tuple[int, m.NodeRecord]], *, relaying: bool) -> None:
        """Add one peer's records to `found`: attribution checked (records.md §6.2), the signed
        content used, the query's filter re-applied; per (origin, key) the highest seq stays."""
        own, now, refused = self.identity.public, self.clock(), None
        for i, n in enumerate(nodes):
            if i and i % _VERIFY_CHUNK == 0:
                await trio.sleep(0)
            try:
                a = accept_node(n, n.signed, sender=s.key, own=own, network=self.network, now=now,
                                seqs=self.node_seqs)
            except RecordError as e:
                if e.check != "A2":  # our own records coming back: we answered for ourselves
                    self.stats.records_refused += 1
                    refused = refused or e
                continue
            c = a.claim
            if not matches(c, capabilities=q.capabilities, meta=q.meta, key=q.key, cursor=q.cursor):
                self.stats.records_filtered += 1
                continue
            if relaying and a.signed is None:  # the sender's own word: not ours to pass on
                continue
            held = found.get((a.origin, c.key))
            if held is None or c.seq > held[0]:
                found[(a.origin, c.key)] = (c.seq, m.NodeRecord(
                    key=c.key, capabilities=tuple(c.capabilities), meta=dict(c.meta), expires=c.expires,
                    pool=a.origin, signed=a.signed))
        if refused is not None:
            log.info("peer %s: refused records in a query answer: %s", format_public_key(s.key), refused.message)

    def _ask_or_skip(self, nursery: trio.Nursery, s: PeerSession, q: m.Query, timeout: float,
                     answers: dict[bytes, m.QueryResult]) -> None:
        """Ask `s` in `nursery` (the query waits for it), or, while its standing is low, do not
        wait for it: the answer is partial at once, and one query at a time goes to it from the
        manager's nursery so that an answer in time restores its standing."""
        if not self.policy.low(s.standing) or self._nursery is None:
            nursery.start_soon(self._ask, s, q, timeout, answers)
            return
        s.standing.skipped += 1
        self.stats.queries_skipped += 1
        if not s.probing:
            s.probing = True
            self._nursery.start_soon(self._probe, s, q, timeout)

    async def _probe(self, s: PeerSession, q: m.Query, timeout: float) -> None:
        try:
            with self.task_failures.guard("peering.probe"):
                await self._ask(s, q, timeout, {})
        finally:
            s.probing = False

    async def _ask(self, s: PeerSession, q: m.Query, timeout: float, answers: dict[bytes, m.QueryResult]) -> None:
        assert s.conn is not None
        self.stats.queries_out += 1
        try:
            reply = await s.conn.request(q, timeout=timeout)
        except _SESSION_ENDED as e:
            self.stats.query_failures += 1
            if isinstance(e, trio.TooSlowError):
                s.standing.miss()
            elif isinstance(e, ProtocolError):  # it answered, with an ERROR
                s.standing.answer()
            log.info("peer %s did not answer a query: %s", format_public_key(s.key), e or "timed out")
            return
        s.standing.answer()
        if reply.type != "QUERY_RESULT":
            self.stats.query_failures += 1
            return
        answers[s.key] = reply.msg

    # --- events --------------------------------------------------------------------------------

    async def _subscribe(self, s: PeerSession) -> None:
        """Ask the peer for its events (and those it relays)."""
        assert s.conn is not None
        if not self.relay_families:
            return
        topics = tuple(f"{f}.#" for f in self.relay_families)
        try:
            await s.conn.request(m.Subscribe(topics=topics, peers=True), timeout=self.request_timeout)
            s.standing.answer()
        except (ProtocolError, trio.TooSlowError) as e:  # the session itself goes on
            if isinstance(e, trio.TooSlowError):
                s.standing.miss()
            log.warning("peer %s refused our subscription: %s", format_public_key(s.key), e or "timed out")

    def event_envelope(self, ev: Any) -> m.SignedRecord | None:
        """What a peer gets with bus event `ev`: for a relayed one the origin's envelope (None: the
        sender's own unsigned word, relayed no further), for ours our signature, made once per
        event however many peers it goes to. None for one of ours too large to sign."""
        if ev.origin is not None:
            return ev.signed
        if ev.id in self._event_sigs:
            return self._event_sigs[ev.id]
        try:
            signed = self.signer.event(ev.topic, ev.id, ev.ts, ev.data, now=self.clock())
        except (ValueError, TypeError):  # too large, or data msgpack cannot carry
            signed = None
        self._event_sigs[ev.id] = signed
        if len(self._event_sigs) > self.dedup_size:
            self._event_sigs.popitem(last=False)
        return signed

    def _first_sight(self, origin: bytes, event_id: bytes, *, commit: bool) -> bool:
        """Whether (origin, event_id) is new; `commit` records it, which happens only once the
        event verified (records.md §5.1: a forged copy must not make the real one a duplicate)."""
        k = (origin, event_id)
        if k in self._seen:
            self._seen.move_to_end(k)
            return False
        if commit:
            self._seen[k] = None
            if len(self._seen) > self.dedup_size:
                self._seen.popitem(last=False)
        return True

    async def _on_event(self, conn: Connection, frame: Frame) -> None:
        """A peer's EVENT: loops, foreign families, hop limit and duplicates are dropped; then the
        attribution rules (records.md §6.2, §6.5) decide, and what is published (and relayed on)
        is the origin's signed content."""
        s = self._active(conn, frame)
        ev, st = frame.msg, self.stats
        if ev.origin == self.identity.public:
            st.events_looped += 1
            return None
        if ev.topic.split(".", 1)[0] not in self.relay_families:
            st.events_refused += 1
            raise ProtocolError(ErrorCode.FORBIDDEN, f"topic {ev.topic!r} is not relayed between pools", frame.id)
        if ev.hops + 1 > self.max_event_hops:
            st.events_too_far += 1
            return None
        if not self._first_sight(ev.origin, ev.event_id, commit=False):
            st.events_duplicate += 1
            return None
        try:
            a = accept_event(ev, ev.signed, sender=s.key, own=self.identity.public, network=self.network,
                             now=self.clock(), seqs=self.event_seqs)
        except RecordError as e:
            if e.check in ("S1", "S2"):  # the same event by another path, or a replay: no answer
                st.events_duplicate += 1
                return None
            st.events_forged += 1
            log.info("peer %s: event %s refused: %s", format_public_key(s.key), ev.topic, e.message)
            raise ProtocolError(e.code, f"event refused: {e.message}", frame.id) from None
        self._first_sight(ev.origin, ev.event_id, commit=True)
        c = a.claim
        try:
            self.bus.publish(c.topic, dict(c.data), event_id=c.event_id, origin=a.origin, ts=c.ts,
                             hops=ev.hops + 1, signed=a.signed)
        except ValueError as e:
            st.events_refused += 1
            raise ProtocolError(ErrorCode.INVALID_BODY, f"event not accepted: {e}", frame.id) from None
        st.events_relayed += 1
        s.events_in += 1
        return None
