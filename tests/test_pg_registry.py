"""The Registry service on both backends (the store fixture is parametrised: SQLite, PostgreSQL):
a JOIN is acknowledged once committed, concurrent joins share commits, a restart keeps each lease's
remaining time, a store that fails refuses changes with UNAVAILABLE and recovers by itself. And a live
pool process with [registry] backend = "postgresql": a node's lease outlives a restart of the pool."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import psycopg
import pytest
import trio

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.nodeclient import connect
from galaxynode.registry import LeaseTable, Registry, SqliteStore
from galaxynode.registry.pgstore import PgStore
from tests.pg import pg_dsn, pg_server  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abuse import NETWORK, live_pool  # noqa: E402

T0 = 1_700_000_000_000


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


class Counting:
    """Wraps a store: counts transactions."""

    def __init__(self, store):
        self.store, self.transactions, self.path = store, 0, store.path

    def apply(self, ops, *events):
        self.store.apply(ops, *events)
        self.transactions += 1

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """backend(table) -> a new store of the parametrised kind on the same database (Registry.open's opener)."""
    if request.param == "sqlite":
        return lambda table="nodes": SqliteStore(tmp_path / "registry.sqlite", table=table)
    dsn = request.getfixturevalue("pg_dsn")
    return lambda table="nodes": PgStore(dsn, table=table)


def stored(backend) -> set[bytes]:
    with backend() as s:
        return {e.key for e in s.load()[0]}


async def test_join_is_committed_when_acknowledged_and_commits_are_shared(backend):
    store = Counting(backend())
    reg = Registry(LeaseTable(), store)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(0), capabilities=["gpu"], ttl=60)
        assert stored(backend) == {k(0)}  # another connection sees it: committed
        async with trio.open_nursery() as callers:
            for i in range(1, 301):
                callers.start_soon(lambda i=i: reg.join(k(i), ttl=60))
        assert store.transactions < 300 / 4
        assert len(stored(backend)) == 301
        await reg.leave(k(0))
        assert k(0) not in stored(backend)
        n.cancel_scope.cancel()
    store.close()


async def test_restart_restores_remaining_time_and_expires_what_ran_out(backend):
    now = [T0]
    reg = await Registry.open(None, LeaseTable(), backend=backend, clock=lambda: now[0])
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(1), ttl=60)
        await reg.join(k(2), ttl=5)
        await reg.ban(k(3), until=T0 + 10_000)
        n.cancel_scope.cancel()
    now[0] = T0 + 30_000
    reg = await Registry.open(None, LeaseTable(), backend=backend, clock=lambda: now[0])
    try:
        assert reg.get(k(1)).expires == T0 + 60_000 and reg.get(k(2)) is None
        assert reg.expired == 1 and reg.table.bans() == {}
    finally:
        reg.close()
    assert stored(backend) == {k(1)}


async def test_store_failure_is_refused_then_recovers(pg_dsn, pg_server):
    """PostgreSQL drops our connection: the change in flight is refused (UNAVAILABLE) and not visible,
    reads go on from memory, and the next change reconnects."""
    store = PgStore(pg_dsn)
    reg = Registry(LeaseTable(), store, retry_delay=0.01)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(1), ttl=60)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
        with pytest.raises(ProtocolError) as info:
            await reg.join(k(2), ttl=60)
        assert info.value.code == ErrorCode.UNAVAILABLE
        assert reg.get(k(2)) is None and reg.get(k(1)) is not None
        await reg.join(k(2), ttl=60)
        assert reg.commit_failures == 1 and {k(1), k(2)} <= {e.key for e in reg.query()[0]}
        n.cancel_scope.cancel()
    store.close()
    with PgStore(pg_dsn) as s:
        assert {e.key for e in s.load()[0]} == {k(1), k(2)}


def test_live_pool_on_postgresql_keeps_leases_across_restart(tmp_path, pg_dsn):
    env = {"GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": pg_dsn}
    me = Identity.generate()

    async def join(url):
        async with connect(url, me, network=NETWORK) as pool:
            await pool.join(capabilities=["pg"], ttl=600)

    async def query(url):
        async with connect(url, Identity.generate(), network=NETWORK) as pool:
            return [r.key for r in await pool.query(capabilities=["pg"])]

    with live_pool(tmp_path / "a", env=env) as pool:
        trio.run(join, pool.url)
    with live_pool(tmp_path / "b", env=env) as pool:  # another data dir: the lease lives in PostgreSQL only
        assert trio.run(query, pool.url) == [me.public]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM nodes").fetchone()[0] == 1


def test_unreachable_database_is_one_line_at_start(tmp_path):
    from procutil import Proc
    env = {"GALAXYNODE_REGISTRY_BACKEND": "postgresql",
           "GALAXYNODE_REGISTRY_DSN": "postgresql://galaxy:s3cret@127.0.0.1:1/nope"}
    with Proc("run", "--data-dir", str(tmp_path), "--listen", "ws://127.0.0.1:0", env={**os.environ, **env}) as p:
        assert p.wait() == 1
    lines = [line for line in p.output.splitlines() if line.strip()]
    assert "cannot connect to the registry database" in lines[-1] and "s3cret" not in p.output
    assert "Traceback" not in p.output


def test_registry_migrate_command(pg_dsn):
    from procutil import Proc
    env = {**os.environ, "GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": pg_dsn}
    with Proc("registry", "migrate", env=env) as p:
        assert p.wait() == 0
    assert "registry nodes: schema version 0 -> 4" in p.output
    with Proc("registry", "migrate", env=env) as p:
        assert p.wait() == 0
    assert "schema version 4 (current" in p.output
    with Proc("registry", "migrate") as p:  # SQLite: nothing to do, said in one line
        assert p.wait() == 2
    assert p.output.strip().count("\n") == 0 and "backend is \"sqlite\"" in p.output
