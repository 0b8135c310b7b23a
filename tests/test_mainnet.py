"""The reference main net and the pool's Announcer, over real loopback sockets."""
from __future__ import annotations

import gc
import os
import time
from contextlib import asynccontextmanager
from typing import Any

import attrs
import msgpack
import pytest
import trio

from galaxynode.descriptor import (SIGN_PREFIX, Descriptor, DescriptorBook, DescriptorIssuer, sign_descriptor,
                                   verify_descriptor)
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.mainnet import (POOL_STORE_TABLE, Announcer, MainnetServices, PoolTopics, node_summary,
                                open_pool_registry, pool_table)
from galaxynode.net import RemoteError, Server, SessionLimits, connect
from galaxynode.pool import PoolInfo
from galaxynode.registry import LeaseTable, Registry

NET = "galaxy-test"
MAIN = Identity.from_seed(b"\x4d" * 32)
POOLS = [Identity.from_seed(bytes([0x50 + i]) * 32) for i in range(3)]
PROBE = Identity.from_seed(b"\x70" * 32)
LIMITS = SessionLimits(close_timeout=0.2, handshake_timeout=2.0)
HOUR = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


# --- helpers -------------------------------------------------------------------------------------

async def wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@attrs.define
class Mainnet:
    url: str
    port: int
    server: Server
    registry: Registry
    services: MainnetServices


@asynccontextmanager
async def mainnet(db, bus, *, port: int = 0, clock=None, **services_kw):
    kw = {"clock": clock} if clock else {}
    registry = await open_pool_registry(db, bus, expiry_interval=0.05, **kw)
    services = MainnetServices(PoolInfo(MAIN.public, "main", NET, role="mainnet"), registry, bus, **services_kw)
    server = Server(MAIN, network=NET, role="mainnet", limits=LIMITS, listen_urls=(f"ws://127.0.0.1:{port}",),
                    handler_factory=lambda conn: services.handler())
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        urls = await nursery.start(server.run)
        yield Mainnet(urls[0], int(urls[0].rsplit(":", 1)[1]), server, registry, services)
        await server.shutdown()
        nursery.cancel_scope.cancel()


@attrs.define
class PoolSide:
    identity: Identity
    registry: Registry
    issuer: DescriptorIssuer
    book: DescriptorBook
    announcer: Announcer
    handed: list[list[Descriptor]] = attrs.field(factory=list)


def pool_side(i: int, url: str, tmp_path, *, book: DescriptorBook | None = None, **kw) -> PoolSide:
    identity = POOLS[i]
    registry = Registry(LeaseTable())
    issuer = DescriptorIssuer(identity, name=f"pool-{i}", network=NET, endpoints=[f"ws://127.0.0.1:{7000 + i}"],
                              ttl_ms=HOUR)
    book = book if book is not None else DescriptorBook()
    handed: list[list[Descriptor]] = []
    settings = dict(limits=LIMITS, announce_interval=0.5, lookup_interval=0.05, check_interval=0.02,
                    backoff_min=0.02, backoff_max=0.1, request_timeout=2.0, connect_timeout=2.0,
                    on_descriptors=handed.append) | kw
    announcer = Announcer(identity, issuer, mainnet_url=url, network=NET, registry=registry, book=book,
                          book_path=tmp_path / f"pool-{i}.book", **settings)
    return PoolSide(identity, registry, issuer, book, announcer, handed)


async def lookup(conn, **q) -> tuple[list[Descriptor], list[m.SignedDescriptor], bytes | None]:
    reply = await conn.request(m.Lookup(**q), timeout=5)
    assert reply.type == "LOOKUP_RESULT"
    signed = list(reply.msg.descriptors)
    return [verify_descriptor(s, now=now_ms(), network=NET) for s in signed], signed, reply.msg.cursor


def descriptor(identity: Identity, **over) -> Descriptor:
    now = now_ms()
    fields = dict(key=identity.public, name="manual", network=NET, endpoints=("ws://127.0.0.1:7100",),
                  capabilities=("x",), nodes=0, issued=now, expires=now + HOUR, seq=10)
    return Descriptor(**(fields | over))


def signed_raw(record: bytes, identity: Identity) -> m.SignedDescriptor:
    return m.SignedDescriptor(record=record, sig=identity.sign(SIGN_PREFIX + record))


async def refused(conn, signed: m.SignedDescriptor, code: ErrorCode) -> None:
    with pytest.raises(RemoteError) as info:
        await conn.request(m.Announce(descriptor=signed), timeout=5)
    assert info.value.code == code, info.value


async def announce(conn, signed: m.SignedDescriptor) -> m.Lease:
    reply = await conn.request(m.Announce(descriptor=signed), timeout=5)
    assert reply.type == "LEASE"
    return reply.msg


# --- main net with announcers --------------------------------------------------------------------

async def test_pools_are_listed_filtered_and_paged(tmp_path, recording_bus):
    bus = recording_bus()
    async with mainnet(tmp_path / "main.sqlite", bus) as mn, trio.open_nursery() as nursery:
        sides = [pool_side(i, mn.url, tmp_path) for i in range(3)]
        await sides[0].registry.join(os.urandom(32), capabilities=["gpu"])
        await sides[1].registry.join(os.urandom(32), capabilities=["cpu", "gpu"])
        await sides[1].registry.join(os.urandom(32), capabilities=["cpu"])
        for s in sides:
            await nursery.start(s.announcer.run)
        await wait_for(lambda: all(s.announcer.state == "announced" for s in sides))
        assert all(s.announcer.last_announced is not None for s in sides)

        async with connect(mn.url, PROBE, network=NET, role="probe", limits=LIMITS) as conn:
            descs, signed, cursor = await lookup(conn, network=NET)
            assert cursor is None
            assert {d.key for d in descs} == {p.public for p in POOLS}
            # Relayed unaltered: exactly the bytes each pool signed.
            assert set(signed) == {s.issuer.current(now_ms(), nodes=len(s.registry.table),
                                                    capabilities=(await node_summary(s.registry))[1])
                                   for s in sides}
            by_key = {d.key: d for d in descs}
            assert by_key[POOLS[1].public].nodes == 2
            assert by_key[POOLS[1].public].capabilities == ("cpu", "gpu")  # most common first

            gpu, _, _ = await lookup(conn, capability="gpu")
            assert {d.key for d in gpu} == {POOLS[0].public, POOLS[1].public}
            named, _, _ = await lookup(conn, name="pool-2", network=NET)
            assert [d.key for d in named] == [POOLS[2].public]
            assert (await lookup(conn, network="elsewhere"))[0] == []
            assert (await lookup(conn, capability="gpu", name="pool-2"))[0] == []

            pages, cursor = [], None
            while True:
                page, _, cursor = await lookup(conn, limit=1, cursor=cursor)
                pages.append([d.key for d in page])
                if cursor is None:
                    break
            assert sorted(pages) == [[k] for k in sorted(p.public for p in POOLS)]  # each once, random order

            with pytest.raises(RemoteError) as info:
                await conn.request(m.Lookup(cursor=b"nope"), timeout=5)
            assert info.value.code == ErrorCode.BAD_CURSOR

            status = (await conn.request(m.Status(), timeout=5)).msg
            assert (status.role, status.nodes, status.key, status.network) == ("mainnet", 3, MAIN.public, NET)

            # A changed pool re-announces by itself; LOOKUP shows the new descriptor.
            await sides[2].registry.join(os.urandom(32), capabilities=["tpu"])
            async def pool2_updated() -> bool:
                return (await lookup(conn, name="pool-2"))[0][0].capabilities == ("tpu",)
            with trio.fail_after(5):
                while not await pool2_updated():
                    await trio.sleep(0.02)

        # Each pool learnt the others (verified, never itself), handed them on and saved them.
        def saved(s: PoolSide) -> DescriptorBook:
            return DescriptorBook.from_disk(tmp_path / f"pool-{POOLS.index(s.identity)}.book", now_ms())
        await wait_for(lambda: all(s.handed and len(s.handed[-1]) == 2 and len(saved(s)) == 2 for s in sides))
        for s in sides:
            others = {p.public for p in POOLS} - {s.identity.public}
            assert {d.key for d in s.book.all(now_ms())} == others
            assert {d.key for d in s.handed[-1]} == others
            assert {d.key for d in saved(s).all(now_ms())} == others
            assert s.announcer.rejected == 0
        nursery.cancel_scope.cancel()


async def test_announced_events_reach_subscribers(tmp_path, recording_bus):
    bus = recording_bus()
    async with mainnet(None, bus) as mn, trio.open_nursery() as nursery:
        events_tx, events_rx = trio.open_memory_channel(100)

        async def on_frame(conn, frame):
            if frame.type == "EVENT":
                events_tx.send_nowait(frame.msg)

        async with connect(mn.url, PROBE, network=NET, role="probe", limits=LIMITS, handler=on_frame) as conn:
            assert (await conn.request(m.Subscribe(topics=("pool.*",)), timeout=5)).type == "ACK"
            await wait_for(lambda: bus.subscribed("pool.*"))
            sides = [pool_side(i, mn.url, tmp_path) for i in range(2)]
            for s in sides:
                await nursery.start(s.announcer.run)
            got = {}
            with trio.fail_after(5):
                while len(got) < 2:
                    ev = await events_rx.receive()
                    assert ev.topic == "pool.announced"
                    got[ev.data["key"]] = ev.data
            for s in sides:
                d = s.issuer.descriptor
                assert got[d.key] == {"key": d.key, "name": d.name, "network": NET,
                                            "endpoints": list(d.endpoints), "seq": d.seq}
        assert bus.topics() == ["pool.announced"] * 2  # the registry's node.* never reach the bus
        nursery.cancel_scope.cancel()


async def test_forged_and_foreign_descriptors_are_refused(tmp_path, recording_bus):
    bus = recording_bus()
    async with mainnet(tmp_path / "main.sqlite", bus) as mn:
        me, other = POOLS[0], POOLS[1]
        async with connect(mn.url, me, network=NET, role="pool", limits=LIMITS) as conn:
            good = sign_descriptor(me, descriptor(me))
            # Signed by another key than the record names.
            await refused(conn, signed_raw(good.record, other), ErrorCode.BAD_DESCRIPTOR)
            # A field changed after signing.
            body = msgpack.unpackb(good.record)
            tampered = msgpack.packb(body | {"nodes": 99}, use_bin_type=True)
            await refused(conn, m.SignedDescriptor(record=tampered, sig=good.sig), ErrorCode.BAD_DESCRIPTOR)
            # Expired, another network, not a pool.
            old = now_ms() - 2 * HOUR
            await refused(conn, sign_descriptor(me, descriptor(me, issued=old, expires=old + HOUR)),
                          ErrorCode.BAD_DESCRIPTOR)
            await refused(conn, sign_descriptor(me, descriptor(me, network="other")), ErrorCode.BAD_DESCRIPTOR)
            await refused(conn, sign_descriptor(me, descriptor(me, role="mainnet")), ErrorCode.BAD_DESCRIPTOR)
            # Expiring sooner than the shortest lease.
            await refused(conn, sign_descriptor(me, descriptor(me, expires=now_ms() + 500)), ErrorCode.BAD_DESCRIPTOR)
            # Someone else's perfectly valid descriptor.
            await refused(conn, sign_descriptor(other, descriptor(other)), ErrorCode.FORBIDDEN)
            assert bus.topics() == [] and len(mn.registry.table) == 0

            lease = await announce(conn, good)
            assert lease.expires <= descriptor(me).expires + 1000 and lease.ttl > 3500
            assert await announce(conn, good)  # the same bytes again: renewed, not an event
            await refused(conn, sign_descriptor(me, descriptor(me, seq=9)), ErrorCode.STALE_DESCRIPTOR)
            await refused(conn, sign_descriptor(me, descriptor(me, name="same-seq")), ErrorCode.STALE_DESCRIPTOR)
            newer = sign_descriptor(me, descriptor(me, seq=11, name="newer"))
            await announce(conn, newer)
            assert not conn.closed  # refusals are not fatal
            assert mn.services.refused == 9
            assert [e.data["seq"] for e in bus.history] == [10, 11]
            _, signed, _ = await lookup(conn)
            assert signed == [newer]
        # What was stored survives in SQLite exactly as received.
        await trio.sleep(0)
    reg = await open_pool_registry(tmp_path / "main.sqlite", None)
    try:
        assert msgpack.unpackb(reg.get(me.public).payload) == newer.to_body()
    finally:
        reg.close()


async def test_lease_expiry_publishes_pool_expired(tmp_path, recording_bus):
    bus = recording_bus()
    skew = [0]
    async with mainnet(tmp_path / "main.sqlite", bus, clock=lambda: now_ms() + skew[0]) as mn:
        async with trio.open_nursery() as nursery:
            side = pool_side(0, mn.url, tmp_path)
            await nursery.start(side.announcer.run)
            await wait_for(lambda: side.announcer.state == "announced")
            nursery.cancel_scope.cancel()  # the pool goes silent
        skew[0] = HOUR + 1000  # ... for longer than its descriptor lives
        await wait_for(lambda: "pool.expired" in bus.topics())
        last = bus.history[-1]
        assert (last.topic, last.data) == ("pool.expired", {"key": POOLS[0].public, "name": "pool-0",
                                                            "network": NET})
        assert len(mn.registry.table) == 0


async def test_mainnet_restart_pools_come_back_by_themselves(tmp_path, recording_bus):
    db = tmp_path / "main.sqlite"
    bus = recording_bus()
    async with trio.open_nursery() as nursery:
        async with mainnet(db, bus) as mn:
            port = mn.port
            sides = [pool_side(i, mn.url, tmp_path) for i in range(2)]
            for s in sides:
                await nursery.start(s.announcer.run)
            await wait_for(lambda: all(s.announcer.state == "announced" for s in sides))
        await wait_for(lambda: all(s.announcer.state != "announced" for s in sides))
        before = [s.announcer.announces for s in sides]
        await wait_for(lambda: all(s.announcer.failures >= 3 for s in sides))  # retrying while it is down
        assert all(s.announcer.state in ("backoff", "connecting") for s in sides)
        await sides[0].registry.join(os.urandom(32), capabilities=["late"])  # changes while it is away

        async with mainnet(db, bus, port=port) as mn:
            assert len(mn.registry.table) == 2  # restored from SQLite
            await wait_for(lambda: all(s.announcer.state == "announced" and s.announcer.announces > b
                                       for s, b in zip(sides, before)))
            async with connect(mn.url, PROBE, network=NET, role="probe", limits=LIMITS) as conn:
                async def listed() -> bool:
                    descs = {d.key: d for d in (await lookup(conn, network=NET))[0]}
                    return set(descs) == {POOLS[0].public, POOLS[1].public} and descs[POOLS[0].public].nodes == 1
                with trio.fail_after(5):
                    while not await listed():
                        await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_refused_announce_backs_off_and_keeps_trying(tmp_path, recording_bus):
    """The main net holds a newer descriptor of ours (say our clock went back): STALE, retried later."""
    bus = recording_bus()
    async with mainnet(None, bus) as mn, trio.open_nursery() as nursery:
        async with connect(mn.url, POOLS[0], network=NET, role="pool", limits=LIMITS) as conn:
            await announce(conn, sign_descriptor(POOLS[0], descriptor(POOLS[0], seq=now_ms() + 100_000)))  # within the seq bound
        side = pool_side(0, mn.url, tmp_path)
        await nursery.start(side.announcer.run)
        await wait_for(lambda: side.announcer.failures >= 3)
        assert side.announcer.state != "announced" and side.announcer.announces == 0
        assert "stale_descriptor" in side.announcer.last_error
        nursery.cancel_scope.cancel()


async def test_book_persists_across_announcer_restarts(tmp_path, recording_bus):
    bus = recording_bus()
    async with mainnet(None, bus) as mn, trio.open_nursery() as nursery:
        a, b = pool_side(0, mn.url, tmp_path), pool_side(1, mn.url, tmp_path)
        await nursery.start(b.announcer.run)
        await nursery.start(a.announcer.run)
        await wait_for(lambda: len(a.book) == 1 and (tmp_path / "pool-0.book").exists())
        nursery.cancel_scope.cancel()
        port = mn.port
    # The main net is gone for good: a restarted pool still knows its peers from disk.
    again = pool_side(0, f"ws://127.0.0.1:{port}", tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.announcer.run)
        assert [d.key for d in again.book.all(now_ms())] == [POOLS[1].public]
        assert [[d.key for d in batch] for batch in again.handed] == [[POOLS[1].public]]
        await wait_for(lambda: again.announcer.failures >= 2)
        assert again.announcer.state in ("backoff", "connecting") and again.announcer.last_announced is None
        nursery.cancel_scope.cancel()


async def test_announcer_does_not_trust_the_mainnet(tmp_path):
    """A lying main net: relays a tampered descriptor next to a good one."""
    good = sign_descriptor(POOLS[1], descriptor(POOLS[1], name="honest"))
    forged = sign_descriptor(POOLS[2], descriptor(POOLS[2], name="forged"))
    body = msgpack.unpackb(forged.record) | {"endpoints": ["ws://evil.example:1"]}
    forged = attrs.evolve(forged, record=msgpack.packb(body, use_bin_type=True))
    lookups = []

    async def liar(conn, frame):
        if frame.type == "ANNOUNCE":
            return m.Lease(re=frame.id, ttl=60, expires=now_ms() + 60_000, interval=20_000)
        if frame.type == "LOOKUP":
            lookups.append(frame.msg)
            return m.LookupResult(re=frame.id, descriptors=(forged, good))
        raise AssertionError(frame.type)

    server = Server(MAIN, network=NET, role="mainnet", limits=LIMITS, handler_factory=lambda conn: liar)
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(server.run))[0]
        side = pool_side(0, url, tmp_path)
        await nursery.start(side.announcer.run)
        await wait_for(lambda: side.announcer.rejected >= 1 and side.handed)
        assert lookups[0].network == NET
        assert [d.name for d in side.handed[-1]] == ["honest"]
        assert [d.key for d in side.book.all(now_ms())] == [POOLS[1].public]
        nursery.cancel_scope.cancel()


# --- sans-network pieces -------------------------------------------------------------------------

async def test_lookup_reply_is_cut_to_its_byte_budget(recording_bus):
    bus = recording_bus()
    registry = await open_pool_registry(None, bus)
    services = MainnetServices(PoolInfo(MAIN.public, "main", NET, role="mainnet"), registry, bus,
                               max_reply_bytes=m.MAX_DESCRIPTOR_RECORD + 128)
    long = tuple(f"ws://pool.example:{7000 + i}/" + "p" * 200 for i in range(8))  # ~1.8 KB records
    for p in POOLS:
        await services.announce(p.public, sign_descriptor(p, descriptor(p, endpoints=long)))
    keys, cursor, pages = [], None, 0
    while True:
        page, cursor = services.lookup(m.Lookup(limit=100, cursor=cursor))
        pages += 1
        keys += [verify_descriptor(s, now=now_ms()).key for s in page]
        if cursor is None:
            break
    assert sorted(keys) == sorted(p.public for p in POOLS) and pages >= 2  # each once, random order


async def test_pool_topics_and_table(recording_bus):
    bus = recording_bus()
    topics = PoolTopics(bus)
    data = {"key": "ab", "capabilities": ["x"], "meta": {"name": "n", "network": "w"}, "expires": 1}
    for t in ("node.joined", "node.renewed", "node.expired", "node.kicked", "node.left"):
        topics.publish(t, data)
    topics.publish("node.banned", {"key": "cd", "capabilities": [], "meta": {}, "expires": None, "until": 5})
    assert [(e.topic, e.data) for e in bus.history] == [
        ("pool.expired", {"key": "ab", "name": "n", "network": "w"}),
        ("pool.kicked", {"key": "ab", "name": "n", "network": "w"}),
        ("pool.left", {"key": "ab", "name": "n", "network": "w"}),
        ("pool.banned", {"key": "cd", "name": "", "network": "", "until": 5})]
    table = pool_table()
    assert table.min_ttl == 1 and table.max_ttl == 86_400
    assert POOL_STORE_TABLE == "pools"


def test_configuration_errors(tmp_path):
    issuer = DescriptorIssuer(POOLS[0], name="p", network=NET, endpoints=(), ttl_ms=HOUR)
    common: dict[str, Any] = dict(mainnet_url="ws://127.0.0.1:1", network=NET, registry=Registry(LeaseTable()),
                                  book=DescriptorBook(), book_path=tmp_path / "b")
    with pytest.raises(ValueError):
        Announcer(POOLS[1], issuer, **common)
    with pytest.raises(ValueError):
        Announcer(POOLS[0], issuer, backoff_min=2, backoff_max=1, **common)
    with pytest.raises(ValueError):
        MainnetServices(PoolInfo(MAIN.public, "main", NET), Registry(LeaseTable()), None)
