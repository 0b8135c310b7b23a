"""Pool peering over real loopback sockets: two or three pools, each with its own server, in-memory
registry, event bus, pool services and PeerManager."""
from __future__ import annotations

import gc
import os
import time
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from galaxynode.descriptor import (SIGN_PREFIX, Descriptor, DescriptorBook, DescriptorIssuer, decode_record,
                                   sign_descriptor)
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.net import RemoteError, Server, SessionLimits, connect
from galaxynode.peering import PeerManager
from galaxynode.pool import PoolInfo, PoolServices
from galaxynode.registry import LeaseTable, Registry

NET = "peer-test"
LIMITS = SessionLimits(close_timeout=0.2, handshake_timeout=2.0)
HOUR = 3_600_000
IDS = [Identity.from_seed(bytes([0x30 + i]) * 32) for i in range(4)]
NODES = [Identity.from_seed(bytes([0x60 + i]) * 32) for i in range(6)]
FAST = dict(reconnect_min=0.02, reconnect_max=0.1, query_timeout=1.0, request_timeout=1.0,
            descriptor_interval=0.05, connect_timeout=2.0)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


# --- pools -----------------------------------------------------------------------------------------

async def wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


@attrs.define(eq=False)
class Pool:
    identity: Identity
    bus: Any  # the shared RecordingBus: a real EventBus that records what it published
    registry: Registry
    book: DescriptorBook
    issuer: DescriptorIssuer
    server: Server
    url: str
    manager: Any = None
    services: Any = None

    @property
    def key(self) -> bytes:
        return self.identity.public

    def server_for(self, port: int = 0) -> Server:
        return Server(self.identity, network=NET, limits=LIMITS, listen_urls=(f"ws://127.0.0.1:{port}",),
                      handler_factory=lambda conn: self.manager.handler_factory(conn))


class Net:
    def __init__(self, nursery: trio.Nursery, pools: list[Pool]):
        self.nursery = nursery
        self.pools = pools

    async def start(self, *indices: int) -> None:
        for i in indices:
            await self.nursery.start(self.pools[i].manager.run)

    async def restart_server(self, i: int, *, down: float = 0.0) -> None:
        p = self.pools[i]
        port = int(p.url.rsplit(":", 1)[1])
        await p.server.shutdown()
        await trio.sleep(down)
        p.server = p.server_for(port)
        await self.nursery.start(p.server.run)


@asynccontextmanager
async def network(new_bus, n: int, *, static: dict[int, list] | None = None, start: bool = True,
                  unpinned: frozenset[int] = frozenset(), kw: dict[int, dict] | None = None, **manager_kw):
    """n pools, each with its own `new_bus()`; `static[i]` lists the pools that pool i dials (indices,
    or (url, key) of outsiders), without pinning their keys if i is in `unpinned`; managers run unless
    start=False."""
    static, kw = static or {}, kw or {}
    async with trio.open_nursery() as nursery:
        pools = []
        for i in range(n):
            bus = new_bus()
            registry = Registry(LeaseTable(), bus=bus)
            await nursery.start(registry.run)
            issuer = DescriptorIssuer(IDS[i], name=f"pool-{i}", network=NET, endpoints=["ws://127.0.0.1:1"],
                                      ttl_ms=HOUR)
            p = Pool(IDS[i], bus, registry, DescriptorBook(), issuer, None, "")  # type: ignore[arg-type]
            p.server = p.server_for()
            p.url = (await nursery.start(p.server.run))[0]
            pools.append(p)
        for i, p in enumerate(pools):
            peers = [(pools[j].url, None if i in unpinned else pools[j].key) if isinstance(j, int) else j
                     for j in static.get(i, [])]
            p.manager = PeerManager(p.identity, network=NET, registry=p.registry, bus=p.bus,
                                    pool_handler=lambda p=p: p.services.handler(), limits=LIMITS, static=peers,
                                    issuer=p.issuer, book=p.book, **(FAST | manager_kw | kw.get(i, {})))
            p.services = PoolServices(PoolInfo(p.key, f"pool-{i}", NET), p.registry, p.bus, peers=p.manager)
        net = Net(nursery, pools)
        if start:
            await net.start(*range(n))
        yield net
        nursery.cancel_scope.cancel()


def peered(a: Pool, b: Pool) -> bool:
    ca, cb = a.manager.connected.get(b.key), b.manager.connected.get(a.key)
    return ca is not None and cb is not None and ca.session.sid == cb.session.sid


@asynccontextmanager
async def client(pool: Pool, ident: Identity, role: str = "node", **kw):
    async with connect(pool.url, ident, network=NET, role=role, limits=LIMITS, **kw) as conn:
        yield conn


async def join(pool: Pool, ident: Identity, **kw) -> None:
    async with client(pool, ident) as conn:
        assert (await conn.request(m.Join(**kw), timeout=5)).type == "LEASE"


async def query(conn, **q) -> m.QueryResult:
    reply = await conn.request(m.Query(**q), timeout=5)
    assert reply.type == "QUERY_RESULT"
    return reply.msg


# --- sessions --------------------------------------------------------------------------------------

async def test_static_peering_connects_both_ways(recording_bus):
    async with network(recording_bus, 2, static={0: [1], 1: [0]}) as net:
        a, b = net.pools
        await wait_for(lambda: peered(a, b))
        small = min(a.key, b.key)
        conn = a.manager.connected[b.key]
        assert (a.key if conn.session.opener else b.key) == small  # the one kept is opened by the smaller key
        # Both loops settle: one serves the session, the other stands by instead of redialling.
        await wait_for(lambda: sorted(p.manager.static[0].state for p in net.pools) == ["connected", "standby"])
        assert a.bus.topics("peer.") == ["peer.connected"] and b.bus.topics("peer.") == ["peer.connected"]
        desc = a.manager.describe()
        assert [d["key"] for d in desc] == [b.key] and desc[0]["state"] == "connected"
        async with client(a, NODES[0]) as conn:
            status = (await conn.request(m.Status(), timeout=5)).msg
            assert status.peers == 1
        accepted = a.server.stats.accepted + b.server.stats.accepted
        await trio.sleep(0.3)  # many times reconnect_max: nobody redials a connected peer
        assert a.server.stats.accepted + b.server.stats.accepted == accepted
        assert peered(a, b)


@pytest.mark.parametrize("first", ["smaller", "larger"])
async def test_duplicate_sessions_reduced_to_one(first, recording_bus):
    """Each pool dials the other, one after the other (the second does not know the first's key,
    so it cannot tell they are connected): the session opened by the smaller key is kept on both
    sides, whichever came first, and the loser's loop stands by."""
    order = sorted(range(2), key=lambda i: IDS[i].public)
    if first == "larger":
        order.reverse()
    async with network(recording_bus, 2, static={0: [1], 1: [0]}, start=False, unpinned=frozenset(order[1:])) as net:
        s, l = sorted(net.pools, key=lambda p: p.key)
        early, late = net.pools[order[0]], net.pools[order[1]]
        await net.start(net.pools.index(early))
        await wait_for(lambda: peered(s, l))
        before = early.manager.connected[late.key].session.sid
        await net.start(net.pools.index(late))
        await wait_for(lambda: peered(s, l) and l.manager.static[0].state == "standby"
                       and s.manager.static[0].state == "connected")
        kept = s.manager.connected[l.key]
        assert kept.session.opener  # opened by the smaller key, on both sides
        assert not l.manager.connected[s.key].session.opener
        assert (kept.session.sid == before) == (first == "smaller")
        assert s.manager.stats.duplicates_closed == 1 and l.manager.stats.duplicates_closed == 1
        # A replacement is not a disconnection.
        assert s.bus.topics("peer.") == l.bus.topics("peer.") == ["peer.connected"]
        accepted = s.server.stats.accepted + l.server.stats.accepted
        await trio.sleep(0.3)
        assert s.server.stats.accepted + l.server.stats.accepted == accepted and peered(s, l)


async def test_reconnects_after_peer_server_restart(recording_bus):
    async with network(recording_bus, 2, static={0: [1]}) as net:
        a, b = net.pools
        await wait_for(lambda: peered(a, b))
        first = a.manager.connected[b.key].session.sid
        await net.restart_server(1, down=0.2)  # several failed dials while it is down
        await wait_for(lambda: peered(a, b) and a.manager.connected[b.key].session.sid != first)
        assert a.bus.topics("peer.") == ["peer.connected", "peer.disconnected", "peer.connected"]
        assert b.bus.topics("peer.") == ["peer.connected", "peer.disconnected", "peer.connected"]
        assert a.manager.describe()[0]["direction"] == "outbound"
        assert b.manager.describe()[0]["direction"] == "inbound"


async def test_max_peers_refuses_more_pools(recording_bus):
    async with network(recording_bus, 3, static={1: [0]}, kw={0: {"max_peers": 1}}) as net:
        a, b, c = net.pools
        await wait_for(lambda: peered(a, b))
        async with client(a, c.identity, role="pool") as conn:
            await conn.wait_closed()
            assert conn.remote_error is not None and conn.remote_error.code == ErrorCode.TOO_MANY_CONNECTIONS
        assert list(a.manager.connected) == [b.key] and a.manager.stats.refused_full == 1
        # A node session is not a peer and is not counted.
        async with client(a, NODES[0]) as conn:
            assert (await conn.request(m.Status(), timeout=5)).msg.peers == 1


# --- queries ---------------------------------------------------------------------------------------

async def test_peer_query_merges_pools_and_deduplicates(recording_bus):
    async with network(recording_bus, 2, static={0: [1]}) as net:
        a, b = net.pools
        await wait_for(lambda: peered(a, b))
        await join(a, NODES[0], capabilities=["gpu"])
        await join(a, NODES[1])
        await join(b, NODES[2], capabilities=["gpu"])
        await join(b, NODES[3])
        await join(a, NODES[4], ttl=30)
        await join(b, NODES[4], ttl=60)  # on both pools: one record per pool (records.md §6.4)
        async with client(a, NODES[5]) as conn:
            local = await query(conn)
            assert {n.key for n in local.nodes} == {NODES[i].public for i in (0, 1, 4)}
            assert all(n.pool is None for n in local.nodes)
            everything = await query(conn, scope="peers", hops=1)
            assert not everything.partial and everything.cursor is None
            keys = [n.key for n in everything.nodes]
            assert keys == sorted([NODES[i].public for i in range(5)] + [NODES[4].public])
            owner = {(n.key, n.pool) for n in everything.nodes}
            assert owner == {(NODES[0].public, a.key), (NODES[1].public, a.key), (NODES[2].public, b.key),
                             (NODES[3].public, b.key), (NODES[4].public, a.key), (NODES[4].public, b.key)}
            assert all(n.signed is not None for n in everything.nodes if n.pool == b.key)  # relayed: signed
            gpu = await query(conn, scope="peers", capabilities=["gpu"])
            assert {n.key for n in gpu.nodes} == {NODES[0].public, NODES[2].public}
            # Pages of 2 across both pools: the same keys in the same order, each once.
            paged, cursor = [], None
            while True:
                page = await query(conn, scope="peers", limit=2, cursor=cursor)
                assert len(page.nodes) <= 2
                paged += [n.key for n in page.nodes]
                cursor = page.cursor
                if cursor is None:
                    break
            assert paged == keys
            # hops=0 is the local registry only, labelled with our key.
            alone = await query(conn, scope="peers", hops=0)
            assert {n.key for n in alone.nodes} == {NODES[i].public for i in (0, 1, 4)}
            assert {n.pool for n in alone.nodes} == {a.key}


async def test_peer_query_two_hops_in_a_line(recording_bus):
    async with network(recording_bus, 3, static={0: [1], 1: [2]}) as net:
        a, b, c = net.pools
        await wait_for(lambda: peered(a, b) and peered(b, c))
        await join(c, NODES[0])
        async with client(a, NODES[5]) as conn:
            assert (await query(conn, scope="peers", hops=1)).nodes == ()
            far = await query(conn, scope="peers", hops=2)
            assert [(n.key, n.pool) for n in far.nodes] == [(NODES[0].public, c.key)] and not far.partial


async def silent(conn, frame):
    await trio.sleep_forever()


async def test_peer_that_does_not_answer_gives_partial_result(recording_bus):
    mute = Server(IDS[3], network=NET, limits=LIMITS, handler_factory=lambda conn: silent)
    async with trio.open_nursery() as nursery:
        mute_url = (await nursery.start(mute.run))[0]
        async with network(recording_bus, 1, static={0: [(mute_url, IDS[3].public)]}, query_timeout=0.3,
                           request_timeout=0.3) as net:
            (a,) = net.pools
            await wait_for(lambda: IDS[3].public in a.manager.connected)
            await join(a, NODES[0])
            async with client(a, NODES[5]) as conn:
                with trio.fail_after(30):  # sanity only: a query that waits for the mute peer forever fails
                    result = await query(conn, scope="peers", hops=1)
                assert result.partial and [n.key for n in result.nodes] == [NODES[0].public]
                assert a.manager.stats.query_failures == 1
        nursery.cancel_scope.cancel()


# --- events ----------------------------------------------------------------------------------------

async def next_event(conn_events: trio.MemoryReceiveChannel, timeout: float = 5.0) -> m.Event:
    with trio.fail_after(timeout):
        return await conn_events.receive()


@asynccontextmanager
async def subscriber(pool: Pool, ident: Identity, topics=("node.#",), peers: bool = True):
    """A node subscribed on `pool`; yields a channel of the EVENTs it is pushed."""
    send, recv = trio.open_memory_channel(100)

    async def handler(conn, frame):
        if frame.type == "EVENT":
            send.send_nowait(frame.msg)

    async with client(pool, ident, handler=handler) as conn:
        await conn.request(m.Subscribe(topics=topics, peers=peers), timeout=5)
        yield recv


async def test_event_relayed_to_peer_subscribers(recording_bus):
    async with network(recording_bus, 2, static={0: [1]}) as net:
        a, b = net.pools
        await wait_for(lambda: peered(a, b) and a.bus.subscribed("node.#") == 1)
        async with subscriber(b, NODES[1]) as events, subscriber(b, NODES[2], peers=False) as local_only:
            await wait_for(lambda: b.bus.subscribed("node.#") == 3)
            await join(a, NODES[0])
            ev = await next_event(events)
            assert (ev.topic, ev.origin, ev.hops) == ("node.joined", a.key, 1)
            assert ev.data["key"] == NODES[0].public
            await join(b, NODES[3])  # a local event reaches both
            assert (await next_event(local_only)).data["key"] == NODES[3].public
            ev = await next_event(events)
            assert (ev.data["key"], ev.origin, ev.hops) == (NODES[3].public, b.key, 0)
            with pytest.raises(trio.WouldBlock):
                local_only.receive_nowait()
        # The relayed copy keeps the original id.
        original = [e for e in a.bus.history if e.topic == "node.joined" and e.origin is None]
        relayed = [e for e in b.bus.history if e.topic == "node.joined" and e.origin == a.key]
        assert [e.id for e in relayed] == [e.id for e in original]


async def test_triangle_delivers_each_event_once(recording_bus):
    async with network(recording_bus, 3, static={0: [1], 1: [2], 2: [0]}, relay_families=("node",)) as net:
        a, b, c = net.pools
        await wait_for(lambda: peered(a, b) and peered(b, c) and peered(c, a)
                       and all(p.bus.subscribed("node.#") == 2 for p in net.pools))
        async with subscriber(c, NODES[1]) as events:
            await wait_for(lambda: c.bus.subscribed("node.#") == 3)
            await join(a, NODES[0])
            # A's event reaches B and C directly and through each other; the second copy is a
            # duplicate at B and C, and both copies that come back to A are its own.
            st = [p.manager.stats for p in net.pools]
            await wait_for(lambda: st[0].events_looped == 2 and st[1].events_duplicate == 1
                           and st[2].events_duplicate == 1)
            ev = await next_event(events)
            assert (ev.topic, ev.origin, ev.hops) == ("node.joined", a.key, 1)
            for p in net.pools:
                assert p.bus.topics("node.joined") == ["node.joined"]
            assert [s.events_relayed for s in st] == [0, 1, 1]
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()


async def test_event_hop_limit(recording_bus):
    async with network(recording_bus, 3, static={0: [1], 1: [2]}, max_event_hops=1) as net:
        a, b, c = net.pools
        await wait_for(lambda: peered(a, b) and peered(b, c)
                       and a.bus.subscribed("node.#") == 1 and b.bus.subscribed("node.#") == 2)
        await join(a, NODES[0])
        await wait_for(lambda: c.manager.stats.events_too_far == 1)
        assert b.bus.topics("node.joined") == ["node.joined"] and c.bus.topics("node.joined") == []


async def test_peering_messages_need_a_peer_session(recording_bus):
    async with network(recording_bus, 1) as net:
        (a,) = net.pools
        async with client(a, NODES[0]) as conn:
            ev = m.Event(topic="node.joined", event_id=os.urandom(16), origin=IDS[3].public, ts=now_ms())
            with pytest.raises(RemoteError) as info:
                await conn.request(ev, timeout=5)
            assert info.value.code == ErrorCode.FORBIDDEN
            with pytest.raises(RemoteError) as info:
                await conn.request(m.Descriptors(descriptors=()), timeout=5)
            assert info.value.code == ErrorCode.FORBIDDEN
            assert not conn.closed
        assert a.bus.topics("node.") == []


# --- descriptors -----------------------------------------------------------------------------------

def descriptor(identity: Identity, **over) -> Descriptor:
    now = now_ms()
    fields = dict(key=identity.public, name="other", network=NET, endpoints=("ws://127.0.0.1:7100",),
                  capabilities=(), nodes=0, issued=now, expires=now + HOUR, seq=10)
    return Descriptor(**(fields | over))


async def test_descriptor_exchange_and_refusals(recording_bus):
    async with network(recording_bus, 2, static={0: [1]}) as net:
        a, b = net.pools
        await wait_for(lambda: peered(a, b) and b.book.get(a.key) is not None and a.book.get(b.key) is not None)
        assert b.book.get(a.key).name == "pool-0" and a.manager.describe()[0]["name"] == "pool-1"
        # Ours is sent again when it changes (here: the node count).
        await join(a, NODES[0])
        await wait_for(lambda: b.book.get(a.key).nodes == 1)

        async def ack(conn, frame):
            return m.Ack(re=frame.id) if frame.type == "SUBSCRIBE" else None

        other = IDS[3]
        async with client(b, other, role="pool", handler=ack) as conn:
            await wait_for(lambda: other.public in b.manager.connected)
            # Forged: claims another pool's key, signed by us.
            record = descriptor(IDS[2]).encode()
            forged = m.SignedDescriptor(record=record, sig=other.sign(SIGN_PREFIX + record))
            good = sign_descriptor(other, descriptor(other, seq=20))
            with pytest.raises(RemoteError) as info:
                await conn.request(m.Descriptors(descriptors=(forged, good)), timeout=5)
            assert info.value.code == ErrorCode.BAD_DESCRIPTOR and "1 of 2" in info.value.message
            assert b.book.get(IDS[2].public) is None and b.book.get(other.public).seq == 20  # the good one kept
            stale = sign_descriptor(other, descriptor(other, seq=19))
            with pytest.raises(RemoteError) as info:
                await conn.request(m.Descriptors(descriptors=(stale,)), timeout=5)
            assert info.value.code == ErrorCode.STALE_DESCRIPTOR
            expired = sign_descriptor(other, descriptor(other, seq=30, issued=now_ms() - HOUR, expires=now_ms() - 1))
            with pytest.raises(RemoteError) as info:
                await conn.request(m.Descriptors(descriptors=(expired,)), timeout=5)
            assert info.value.code == ErrorCode.BAD_DESCRIPTOR
            # A field changed after signing (here the endpoints, to divert dials), with a newer seq.
            genuine = descriptor(other, seq=40)
            signed = sign_descriptor(other, genuine)
            tampered = attrs.evolve(genuine, endpoints=("ws://127.0.0.1:9",)).encode()
            with pytest.raises(RemoteError) as info:
                await conn.request(m.Descriptors(descriptors=(m.SignedDescriptor(record=tampered, sig=signed.sig),)),
                                   timeout=5)
            assert info.value.code == ErrorCode.BAD_DESCRIPTOR
            assert not conn.closed and b.book.get(other.public).seq == 20
            assert b.manager.stats.descriptors_refused == 4
        # A pool connecting later gets what B knows: its own descriptor and A's.
        got: list[m.SignedDescriptor] = []

        async def collect(conn, frame):
            if frame.type == "DESCRIPTORS":
                got.extend(frame.msg.descriptors)
            return m.Ack(re=frame.id) if frame.type == "SUBSCRIBE" else None

        async with client(b, IDS[2], role="pool", handler=collect):
            await wait_for(lambda: len(got) >= 3)
        keys = [decode_record(s.record).key for s in got]
        assert keys[0] == b.key and set(keys) == {b.key, a.key, other.public}
