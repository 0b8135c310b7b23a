"""The pool's services on the wire: routes verified frames to the registry, event bus, peering
and status, and checks authorization against the session key.

A node can only act as itself: JOIN/HEARTBEAT/LEAVE always apply to the session's key, so
"joining as someone else" is impossible by construction. Admin actions need an admin key.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from types import MappingProxyType
from typing import Any, Awaitable, Callable

import attrs
import trio

from galaxynode import __version__
from galaxynode.events import Subscription, TooManyPatterns
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import format_public_key
from galaxynode.net.connection import SessionClosed
from galaxynode.plugin import AdmissionRequest
from galaxynode.registry.pacing import EarlyHeartbeats, Grant, Pacer

log = logging.getLogger(__name__)


def node_record(entry: Any, pool: bytes | None = None, signed: m.SignedRecord | None = None) -> m.NodeRecord:
    return m.NodeRecord(key=entry.key, capabilities=tuple(entry.capabilities), meta=dict(entry.meta),
                        expires=entry.expires, pool=pool, signed=signed)


def event_message(ev: Any, origin: bytes, signed: m.SignedRecord | None = None) -> m.Event:
    return m.Event(topic=ev.topic, event_id=ev.id, origin=ev.origin or origin, ts=ev.ts,
                   data=dict(ev.data), hops=ev.hops, signed=signed)


def is_pool_session(conn: Any) -> bool:
    """Whether the session's peer speaks as a pool: it is sent signed records (records.md §8.2)."""
    hello = getattr(conn, "peer_hello", None)
    return hello is not None and hello.role == "pool"


DEFAULT_HEARTBEATS_PER_S = 1000  # [registry] max_heartbeats_per_s


@attrs.define
class PoolInfo:
    """Public facts about this pool (STATUS, descriptors)."""

    key: bytes
    name: str
    network: str
    role: str = "pool"
    started: float = attrs.field(factory=time.monotonic)


class PoolServices:
    """Shared by all sessions: the services a pool offers."""

    def __init__(self, info: PoolInfo, registry: Any, bus: Any, *, peers: Any = None, event_queue: int = 256,
                 pacer: Pacer | None = None):
        self.info = info
        self.registry = registry
        # Heartbeat pacing ([registry] max_heartbeats_per_s): the interval and ttl of every LEASE.
        self.pacer = pacer or Pacer(DEFAULT_HEARTBEATS_PER_S,
                                    registry.table.max_ttl if registry is not None else m.MAX_TTL_S)
        self.bus = bus
        self.peers = peers
        self.event_queue = event_queue
        self.plugins: Any = None  # plugins.PluginSupervisor, set by the daemon: admission and x.* messages

    def handler(self) -> "SessionHandler":
        return SessionHandler(self)

    def status(self, re: bytes) -> m.StatusResult:
        return m.StatusResult(re=re, key=self.info.key, name=self.info.name, network=self.info.network,
                              role=self.info.role, version=__version__,
                              uptime=int(time.monotonic() - self.info.started), nodes=len(self.registry.table),
                              peers=len(self.peers.connected) if self.peers else 0)


class SessionHandler:
    """Per-session state (subscriptions) and request routing. Requests on one session are
    handled in order; event pushes run in `run`, a task owned by the connection."""

    def __init__(self, services: PoolServices):
        self.s = services
        self.sub: Subscription | None = None  # made by the first SUBSCRIBE, closed when `run` ends
        self.include_peers = False
        self._subscribed = trio.Event()
        self._ended = False
        self.early = EarlyHeartbeats()  # this session's HEARTBEAT obligation (interval/2 after a LEASE)
        self.routes: dict[str, Callable[[Any, Frame], Awaitable[Any]]] = {
            "JOIN": self.join, "HEARTBEAT": self.heartbeat, "LEAVE": self.leave, "QUERY": self.query,
            "SUBSCRIBE": self.subscribe, "UNSUBSCRIBE": self.unsubscribe, "STATUS": self.status,
            "ADMIN": self.admin,
        }
        if services.peers is not None:
            self.routes.update(services.peers.routes())

    async def __call__(self, conn: Any, frame: Frame) -> Any:
        route = self.routes.get(frame.type)
        if route is None:
            if isinstance(frame.msg, m.Extension):  # x.<plugin>.<name>: a plugin's, or unknown_type
                if self.s.plugins is None:
                    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {frame.type!r}", frame.id)
                return await self.s.plugins.dispatch(conn, frame, is_peer=is_pool_session(conn))
            raise ProtocolError(ErrorCode.NOT_SUPPORTED, f"{frame.type} is not served by this endpoint", frame.id)
        return await route(conn, frame)

    # registry -------------------------------------------------------------------------------
    async def join(self, conn: Any, frame: Frame) -> m.Lease:
        msg, reg, pacer = frame.msg, self.s.registry, self.s.pacer
        if conn.peer_key not in reg.table and pacer.overloaded(len(reg.table) + 1):
            # Leases already held are never refused (their intervals stretch to max_ttl/3); a new one would
            # take the pool further past its budget.
            pacer.refused_overloaded += 1
            raise ProtocolError(ErrorCode.OVERLOADED, f"the pool holds the {len(reg.table)} leases its heartbeat "
                                f"budget allows; retry later", frame.id, retry_after=pacer.retry_after())
        if conn.peer_key in reg.table:  # a JOIN that renews a held lease: the same obligation as HEARTBEAT
            self._paced(frame, "JOIN")
        meta = msg.meta
        if any(k.startswith(m.EXTENSION_PREFIX) for k in meta):  # x.* keys are the plugins' (Admit.meta)
            meta = {k: v for k, v in meta.items() if not k.startswith(m.EXTENSION_PREFIX)}
        plugins = self.s.plugins
        if plugins is not None and plugins.admitters:
            hello = getattr(conn, "peer_hello", None)
            attached = await plugins.admit(AdmissionRequest(
                key=conn.peer_key, capabilities=msg.capabilities, meta=MappingProxyType(meta),
                remote=getattr(conn, "remote", None),
                is_peer=False, role=hello.role if hello is not None else "node"))
            if attached:
                meta = {**meta, **attached}
                if len(meta) > m.MAX_META_ENTRIES:
                    raise ProtocolError(ErrorCode.INVALID_BODY, f"meta: more than {m.MAX_META_ENTRIES} entries "
                                        f"with the {len(attached)} the pool's plugins attach", frame.id)
        grant = pacer.grant(msg.ttl, len(reg.table) + (conn.peer_key not in reg.table))
        e = await reg.join(conn.peer_key, capabilities=msg.capabilities, meta=meta, ttl=msg.ttl, granted=grant.ttl)
        return self._lease(conn, frame, e, grant)

    async def heartbeat(self, conn: Any, frame: Frame) -> m.Lease:
        reg, ttl = self.s.registry, frame.msg.ttl
        held = reg.get(conn.peer_key)
        if held is None:  # joined on another worker a moment ago? (a cluster member catches up; else no-op)
            await reg.consistent()
            held = reg.get(conn.peer_key)
        if held is None:  # before the bucket: costs no write, and says what is wrong
            raise ProtocolError(ErrorCode.NOT_JOINED, "no lease to renew; JOIN first", frame.id)
        self._paced(frame, "HEARTBEAT")
        grant = self.s.pacer.grant(held.ttl if ttl is None else ttl, len(reg.table))
        return self._lease(conn, frame, await reg.renew(conn.peer_key, ttl=ttl, granted=grant.ttl), grant)

    def _paced(self, frame: Frame, what: str) -> None:
        """The session's obligation (docs/gelato/messages.md §8): a renewal sooner than half the interval
        after the last LEASE, past a burst of two, is refused rate_limited and renews nothing."""
        if not self.early.allow(trio.current_time()):
            self.s.pacer.refused_early += 1
            raise ProtocolError(ErrorCode.RATE_LIMITED, f"{what} sooner than half the interval "
                                f"({self.early.interval:g} s) after the last LEASE", frame.id)

    def _lease(self, conn: Any, frame: Frame, e: Any, grant: Grant) -> m.Lease:
        """The LEASE for a granted lease; the session's early-heartbeat bucket and its keepalive
        (messages §8.6) follow its interval."""
        self.early.leased(grant.interval, trio.current_time())
        conn.quiet_for(grant.interval / 1000)
        return m.Lease(re=frame.id, ttl=grant.ttl, expires=e.expires, interval=grant.interval)

    async def leave(self, conn: Any, frame: Frame) -> m.Ack:
        await self.s.registry.leave(conn.peer_key)
        return m.Ack(re=frame.id)

    async def query(self, conn: Any, frame: Frame) -> m.QueryResult:
        q = frame.msg
        if q.scope == "peers" and self.s.peers is not None:
            return await self.s.peers.query(frame)
        await self.s.registry.consistent()
        entries, cursor = self.s.registry.query(capabilities=q.capabilities, meta=q.meta, key=q.key,
                                                limit=q.limit, cursor=q.cursor)
        if self.s.peers is not None and is_pool_session(conn):  # a pool may relay them: signed
            nodes = await self.s.peers.own_records(entries, pool=None)
            return m.QueryResult(re=frame.id, nodes=tuple(nodes), cursor=cursor)
        return m.QueryResult(re=frame.id, nodes=tuple(node_record(e) for e in entries), cursor=cursor)

    # events ---------------------------------------------------------------------------------
    @property
    def patterns(self) -> Any:
        """The session's patterns (canonical segment tuples, see events.validate_pattern)."""
        return self.sub.patterns if self.sub is not None else ()

    async def subscribe(self, conn: Any, frame: Frame) -> Any:
        """Add patterns to the session's one subscription: only the new ones are parsed and
        indexed. Past limits.max_subscriptions (duplicates count once) the SUBSCRIBE is refused
        whole with limit_exceeded, past the pool-wide cap with unavailable; neither is fatal, and
        the patterns held before stay."""
        if self._ended:  # `run` is over: a subscription made now would never be closed
            raise SessionClosed(None, "session ended")
        topics = frame.msg.topics
        try:
            if self.sub is None:
                self.sub = self.s.bus.subscribe(topics, queue_size=self.s.event_queue,
                                                max_patterns=conn.limits.max_subscriptions)
                self._subscribed.set()
            else:
                self.sub.add(topics)
        except ValueError as e:
            raise ProtocolError(ErrorCode.INVALID_BODY, f"bad topic pattern: {e}", frame.id) from None
        except TooManyPatterns as e:
            if e.pool:
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"subscriptions: {e}", frame.id) from None
            # limit_exceeded is fatal as a decoding error; here it refuses one request and the
            # session goes on (messages §3.3.1), so it is the reply rather than a raised error.
            return m.Error(code=int(ErrorCode.LIMIT_EXCEEDED), name="limit_exceeded",
                           message=f"subscriptions: {e}", re=frame.id)
        self.include_peers = self.include_peers or frame.msg.peers
        return m.Ack(re=frame.id)

    async def unsubscribe(self, conn: Any, frame: Frame) -> m.Ack:
        if self.sub is not None:
            self.sub.remove(frame.msg.topics)
        return m.Ack(re=frame.id)

    async def run(self, conn: Any) -> None:
        """Push the events of the session's subscription, which SUBSCRIBE and UNSUBSCRIBE change in
        place. A subscriber that cannot keep up loses the oldest events (counted by the bus). The
        subscription is closed when this ends, so its patterns leave the pool-wide count with it."""
        try:
            await self._subscribed.wait()
            assert self.sub is not None
            to_pool = self.s.peers is not None and is_pool_session(conn)
            async for ev in self.sub:
                if ev.origin is not None and ev.origin != self.s.info.key and not self.include_peers:
                    continue
                signed = ev.signed  # a relayed event's origin signature (nodes may verify it)
                if to_pool:  # a pool gets each event with its origin's signature, or not at all
                    signed = self.s.peers.event_envelope(ev)
                    if signed is None and ev.origin is not None:
                        continue
                try:
                    await conn.send(event_message(ev, self.s.info.key, signed))
                except SessionClosed:  # the subscriber went away: nothing left to push to
                    return
        finally:
            self._ended = True
            if self.sub is not None:
                self.sub.close()

    # status and admin -----------------------------------------------------------------------
    async def status(self, conn: Any, frame: Frame) -> m.StatusResult:
        return self.s.status(frame.id)

    async def admin(self, conn: Any, frame: Frame) -> Any:
        """ADMIN (docs/gelato/messages.md §5). kick and ban also end the target key's live session
        with ERROR kicked / banned, so the node learns it at once instead of finding out (or not)
        at its next HEARTBEAT; `bans` and `unban` cover the admin bans of the registry and the
        violation bans of the server (keys and addresses)."""
        a, reg, by = frame.msg, self.s.registry, conn.peer_key
        if not reg.table.is_admin(by):
            raise ProtocolError(ErrorCode.FORBIDDEN, "admin actions need an admin key", frame.id)
        if a.action in ("kick", "ban") and a.key is None:
            raise ProtocolError(ErrorCode.INVALID_BODY, f"ADMIN {a.action} needs 'key'", frame.id)
        if a.action == "unban" and (a.key is None) == (a.address is None):
            raise ProtocolError(ErrorCode.INVALID_BODY, "ADMIN unban needs one of 'key' and 'address'", frame.id)
        server = getattr(self.s, "server", None)  # set by the daemon; None when serving without one
        bans = server.bans if server is not None else None
        await reg.consistent()  # in a cluster: act on what other members acknowledged, too
        if a.action == "kick":
            entry = await reg.kick(a.key, by=by)
            kicked = ProtocolError(ErrorCode.KICKED, "kicked by an administrator")
            if not await end_session(server, conn, a.key, kicked) and entry is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such node or session", frame.id)
        elif a.action == "ban":
            await reg.ban(a.key, until=_ban_until(reg.clock(), a.duration, frame.id), by=by)
            await end_session(server, conn, a.key, ProtocolError(ErrorCode.BANNED, "banned by an administrator"))
        elif a.action == "unban":
            if a.key is not None:
                await reg.unban(a.key, by=by)
                if bans is not None:
                    bans.unban_key(a.key)
            elif bans is not None:
                bans.unban_address(_address(a.address, frame.id))
        elif a.action == "bans":
            return m.AdminResult(re=frame.id, items=tuple(_ban_items(reg, bans)))
        elif a.action == "nodes":
            entries, cursor = reg.query(limit=reg.table.page_max, cursor=a.cursor)  # paged like QUERY
            return m.AdminResult(re=frame.id, items=tuple(node_record(e).to_body() for e in entries), cursor=cursor)
        elif a.action == "peers":
            items = self.s.peers.describe() if self.s.peers else ()
            return m.AdminResult(re=frame.id, items=tuple(items))
        log.info("admin %s by %s: %s", a.action, format_public_key(conn.peer_key),
                 format_public_key(a.key) if a.key else a.address or "")
        return m.Ack(re=frame.id)


def _ban_until(now_ms: int, duration: int | None, ref: bytes) -> int | None:
    """The end (ms since epoch) of a ban of `duration` seconds; None (no duration) is permanent."""
    if duration is None:
        return None
    if not 1 <= duration <= m.Admin.MAX_DURATION:  # 0 used to make a permanent ban by accident
        raise ProtocolError(ErrorCode.INVALID_BODY, f"duration must be 1..{m.Admin.MAX_DURATION} seconds "
                                                    "(omit it for a permanent ban)", ref)
    return now_ms + duration * 1000


def _address(text: str, ref: bytes) -> str:
    """An unban target: an IP address, or an IPv6 /64 as `bans` lists it."""
    try:
        ipaddress.ip_address(text.removesuffix("/64") if ":" in text else text)
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID_BODY, "address must be an IP address (or an IPv6 /64)", ref) from None
    return text


async def end_session(server: Any, requester: Any, key: bytes, error: ProtocolError) -> bool:
    """Close `key`'s live session with `error` (bounded by its close_timeout); False if it has none.
    The requester's own session stays open: it is waiting for the answer."""
    conn = server.connections.get(key) if server is not None else None
    if conn is None or conn is requester or conn.closed:
        return False
    await conn.close(error)
    return True


def _ban_items(reg: Any, bans: Any) -> list[dict[str, Any]]:
    """Every ban in force: the registry's admin bans of keys, then the server's violation bans of
    keys and addresses. `until` is ms since epoch, absent for a permanent ban."""
    now_ms = reg.clock()
    items: list[dict[str, Any]] = []
    for key, until in reg.table.bans().items():
        if until is None or until > now_ms:
            items.append({"key": key, "by": "admin", **({} if until is None else {"until": until})})
    if bans is not None:
        now = trio.current_time()
        for ban in bans.list(now):
            until = now_ms + max(0, round((ban.until - now) * 1000))
            items.append({ban.kind: ban.subject, "by": "violations", "reason": ban.reason, "until": until})
    return items
