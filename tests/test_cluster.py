"""Cluster members in one process (galaxynode.cluster): each member's replica sees every change of the
others and publishes their events; the change log misses nothing between snapshot and stream; one
member leads, another takes over when it goes; a lease expires once for the pool."""
from __future__ import annotations

import hashlib
import os

import psycopg
import pytest
import trio

from galaxynode.cluster import Election, Replica, expire_leases
from galaxynode.registry import LeaseTable, Registry
from galaxynode.registry.pgstore import PgStore
from tests.pg import pg_dsn, pg_server  # noqa: F401


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


class Bus:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.arrived = trio.Event()

    def publish(self, topic: str, data: dict) -> None:
        self.events.append((topic, data))
        self.arrived.set()
        self.arrived = trio.Event()

    def topics(self, key: bytes | None = None) -> list[str]:
        return [t for t, d in self.events if key is None or d.get("key") == key]


class Member:
    def __init__(self, dsn: str, clock=None):
        self.bus = Bus()
        self.store = PgStore(dsn, origin=os.urandom(8))
        kw = {"clock": clock} if clock else {}
        self.registry = Registry(LeaseTable(), self.store, self.bus, owns_store=True, expire_locally=False, **kw)
        self.replica = Replica(self.registry, dsn, poll_interval=0.2)

    async def start(self, nursery: trio.Nursery) -> "Member":
        await nursery.start(self.registry.run)
        await nursery.start(self.replica.run)
        return self


async def until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_every_member_sees_every_change_and_its_events(pg_dsn):
    async with trio.open_nursery() as n:
        a, b = await Member(pg_dsn).start(n), await Member(pg_dsn).start(n)
        await a.registry.join(k(1), capabilities=["gpu"], ttl=60)
        await until(lambda: b.registry.get(k(1)) is not None)
        assert b.registry.query(capabilities=["gpu"])[0][0].key == k(1)
        assert b.bus.topics(k(1)) == ["node.joined"] and a.bus.topics(k(1)) == ["node.joined"]
        await b.registry.renew(k(1), ttl=120)  # the lease is the pool's: any member renews it
        await until(lambda: a.registry.get(k(1)).ttl == 120)
        await b.registry.ban(k(2), until=None)
        await until(lambda: a.registry.table.is_banned(k(2), 0))
        await a.registry.leave(k(1))
        await until(lambda: b.registry.get(k(1)) is None)
        assert b.bus.topics(k(1)) == ["node.joined", "node.left"]
        assert b.bus.topics(k(2)) == ["node.banned"] == a.bus.topics(k(2))
        n.cancel_scope.cancel()


async def test_changes_between_snapshot_and_stream_are_not_missed(pg_dsn):
    """A member starting while another writes all the time ends with exactly the stored state, and
    publishes each event after its snapshot once."""
    async with trio.open_nursery() as n:
        a = await Member(pg_dsn).start(n)

        async def writer():
            for i in range(300):
                await a.registry.join(k(i), ttl=60)
                if i % 3 == 0:
                    await a.registry.leave(k(i - 1 if i else 0))
        async with trio.open_nursery() as w:
            w.start_soon(writer)
            await trio.sleep(0.05)
            b = await Member(pg_dsn).start(n)
        await b.replica.catch_up()
        assert {e.key for e in b.registry.query(limit=1000)[0]} == {e.key for e in a.registry.query(limit=1000)[0]}
        with PgStore(pg_dsn) as s:
            assert {e.key for e in s.load()[0]} == {e.key for e in b.registry.query(limit=1000)[0]}
        joined = [d["key"] for t, d in b.bus.events if t == "node.joined"]
        assert len(joined) == len(set(joined))  # none twice
        n.cancel_scope.cancel()


async def test_a_query_on_any_member_sees_what_another_acknowledged(pg_dsn):
    """Read-your-writes across members: the read barrier catches up with the change log, so a JOIN
    acknowledged by A is in B's next query although B's notification has not been acted on; a burst of
    concurrent queries shares the change-log reads."""
    async with trio.open_nursery() as n:
        a, b = await Member(pg_dsn).start(n), await Member(pg_dsn).start(n)
        b.registry.read_barrier = b.replica.sync
        b.replica.coalesce = 3600  # B acts on NOTIFY never during this test
        await trio.sleep(0.1)
        for i in range(5):
            await a.registry.join(k(100 + i), ttl=60)
            assert b.registry.get(k(100 + i)) is None  # not there without the barrier
            await b.registry.consistent()
            assert b.registry.get(k(100 + i)) is not None
        reads = 0
        real = b.replica.reader.changes

        def counted(after, limit=1000):
            nonlocal reads
            reads += 1
            return real(after, limit)
        b.replica.reader.changes = counted
        await a.registry.join(k(200), ttl=60)
        async with trio.open_nursery() as q:
            for _ in range(50):
                q.start_soon(b.registry.consistent)
        assert b.registry.get(k(200)) is not None
        assert 1 <= reads <= 2
        n.cancel_scope.cancel()


async def test_a_kick_or_ban_on_one_member_ends_the_session_on_the_others(pg_dsn):
    async with trio.open_nursery() as n:
        a, b = await Member(pg_dsn).start(n), await Member(pg_dsn).start(n)
        ended = []

        async def end_session(key, topic):
            ended.append((key, topic))
        b.replica.end_session = end_session
        await b.registry.join(k(1), ttl=60)
        await b.registry.join(k(2), ttl=60)
        await until(lambda: a.registry.get(k(1)) is not None and a.registry.get(k(2)) is not None)
        await a.registry.kick(k(1))
        await a.registry.ban(k(2), until=None)
        await b.registry.leave(k(3))  # neither a kick nor a ban: no session ends
        await until(lambda: len(ended) == 2)
        assert ended == [(k(1), "node.kicked"), (k(2), "node.banned")]
        n.cancel_scope.cancel()


async def test_a_query_is_served_from_memory_when_the_database_is_gone(pg_dsn):
    async with trio.open_nursery() as n:
        b = await Member(pg_dsn).start(n)
        b.registry.read_barrier = b.replica.sync
        b.replica.lost_since = 0.0  # as the follower sets it when PostgreSQL is unreachable
        b.replica.reader.changes = lambda *a, **kw: pytest.fail("read the change log during an outage")
        await b.registry.consistent()
        n.cancel_scope.cancel()


async def test_one_leader_and_fail_over(pg_dsn):
    async with trio.open_nursery() as n:
        elections = [Election(pg_dsn, interval=0.05) for _ in range(3)]
        scopes = [trio.CancelScope() for _ in elections]
        for e, scope in zip(elections, scopes):
            n.start_soon(_run_in, scope, e)
        await until(lambda: any(e.leader for e in elections))
        await trio.sleep(0.3)
        assert sum(e.leader for e in elections) == 1
        first = next(i for i, e in enumerate(elections) if e.leader)
        scopes[first].cancel()  # the leader goes: its connection closes and the lock with it
        await until(lambda: any(e.leader for i, e in enumerate(elections) if i != first))
        await trio.sleep(0.3)
        assert sum(e.leader for e in elections) == 1 and not elections[first].leader
        n.cancel_scope.cancel()


async def _run_in(scope: trio.CancelScope, election: Election) -> None:
    with scope:
        await election.run()


async def test_a_lease_expires_once_for_the_pool(pg_dsn):
    now = [1_700_000_000_000]
    clock = lambda: now[0]  # noqa: E731
    async with trio.open_nursery() as n:
        a, b = await Member(pg_dsn, clock).start(n), await Member(pg_dsn, clock).start(n)
        await a.registry.join(k(1), ttl=5)
        await until(lambda: b.registry.get(k(1)) is not None)
        now[0] += 6_000
        # Two members that both believe they lead (the overlap of a fail-over) expire concurrently.
        n.start_soon(expire_leases, a.registry, a.replica.reader, 0.01)
        n.start_soon(expire_leases, b.registry, b.replica.reader, 0.01)
        await until(lambda: a.registry.get(k(1)) is None and b.registry.get(k(1)) is None)
        await trio.sleep(0.3)
        assert a.bus.topics(k(1)) == ["node.joined", "node.expired"] == b.bus.topics(k(1))
        assert a.registry.expired + b.registry.expired == 1
        n.cancel_scope.cancel()


async def test_replica_survives_a_dropped_connection(pg_dsn, pg_server):
    async with trio.open_nursery() as n:
        a, b = await Member(pg_dsn).start(n), await Member(pg_dsn).start(n)
        await until(lambda: b.replica._listen is not None)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (b.replica._listen.info.backend_pid,))
        await a.registry.join(k(7), ttl=60)
        await until(lambda: b.registry.get(k(7)) is not None)
        n.cancel_scope.cancel()


@pytest.mark.parametrize("n_events", [200])
async def test_event_latency_between_members(pg_dsn, n_events):
    """A change on one member reaches a subscriber of another (the bench measures the p99)."""
    async with trio.open_nursery() as n:
        a, b = await Member(pg_dsn).start(n), await Member(pg_dsn).start(n)
        for i in range(n_events):
            await a.registry.join(k(i), ttl=60)
        await until(lambda: len(b.bus.topics()) == n_events)
        n.cancel_scope.cancel()
