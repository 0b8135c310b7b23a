"""The store contract on both backends (SQLite, PostgreSQL), and what only PgStore does: versioned
migrations, a newer schema refused, a lost connection reopened, the password kept out of messages."""
from __future__ import annotations

import hashlib

import psycopg
import pytest

from galaxynode.registry.leases import Entry
from galaxynode.registry.pgstore import SCHEMA_VERSION, PgStore, migrate, redact
from galaxynode.registry.store import Ban, Delete, SqliteStore, StoreError, Unban, Upsert
from tests.pg import pg_dsn, pg_server  # noqa: F401

T0 = 1_700_000_000_000


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def entry(i: int, **kw) -> Entry:
    args = dict(key=k(i), capabilities=("gpu", f"c{i}"), meta={"region": "eu", "i": str(i)}, ttl=30,
                expires=T0 + 30_000 + i, joined=T0 + i)
    return Entry(**{**args, **kw})


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path):
    """open_store(table="nodes") -> a store of the parametrised backend (same database on every call)."""
    if request.param == "sqlite":
        return lambda table="nodes": SqliteStore(tmp_path / "registry.sqlite", table=table)
    dsn = request.getfixturevalue("pg_dsn")
    return lambda table="nodes": PgStore(dsn, table=table)


def by_key(entries):
    return sorted(entries, key=lambda e: e.key)


def test_round_trip(open_store):
    with open_store() as s:
        s.apply([Upsert(entry(1)), Upsert(entry(2, payload=b"\x00signed")), Ban(k(3), None), Ban(k(4), T0 + 5)])
    with open_store() as s:
        entries, bans = s.load()
    assert by_key(entries) == by_key([entry(1), entry(2, payload=b"\x00signed")])
    assert bans == {k(3): None, k(4): T0 + 5}
    assert all(type(e.key) is bytes and type(e.meta["i"]) is str for e in entries)


def test_deletes_unbans_and_in_batch_order(open_store):
    with open_store() as s:
        s.apply([Upsert(entry(i)) for i in range(5)] + [Ban(k(7), None), Ban(k(8), None)])
        s.apply([Delete(k(0)), Delete(k(99)), Unban(k(7)),
                 Upsert(entry(1, ttl=60)), Delete(k(1)),  # upsert then delete: gone
                 Delete(k(2)), Upsert(entry(2, ttl=90))])  # delete then upsert: present
        s.apply([])
        entries, bans = s.load()
    assert {e.key: e.ttl for e in entries} == {k(2): 90, k(3): 30, k(4): 30}
    assert bans == {k(8): None}


def test_failed_batch_is_rolled_back_as_a_whole(open_store):
    with open_store() as s:
        s.apply([Upsert(entry(1))])
        bad = entry(3, payload=["not", "bytes"])  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            s.apply([Upsert(entry(2)), Delete(k(1)), Upsert(bad)])
        assert [e.key for e in s.load()[0]] == [k(1)]
        s.apply([Upsert(entry(2))])  # the connection is usable afterwards
        assert len(s.load()[0]) == 2


def test_read_returns_what_is_stored(open_store):
    with open_store() as s:
        s.apply([Upsert(entry(1)), Upsert(entry(2)), Ban(k(5), T0)])
        entries, bans = s.read([k(1), k(3)], [k(5), k(6)])
    assert entries == {k(1): entry(1)} and bans == {k(5): T0}


def test_tables_are_independent(open_store):
    with open_store() as nodes, open_store("pools") as pools:
        nodes.apply([Upsert(entry(1))])
        pools.apply([Upsert(entry(2)), Ban(k(5), None)])
        assert [e.key for e in nodes.load()[0]] == [k(1)] and nodes.load()[1] == {}
        assert [e.key for e in pools.load()[0]] == [k(2)] and pools.load()[1] == {k(5): None}


# --- PostgreSQL only --------------------------------------------------------------------------------

def test_migrate_is_versioned_and_idempotent(pg_dsn):
    assert migrate(pg_dsn) == (0, SCHEMA_VERSION)
    assert migrate(pg_dsn) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT component, version FROM schema_version").fetchall() == [("nodes", SCHEMA_VERSION)]


def test_unmigrated_or_newer_schema_is_refused(pg_dsn):
    with pytest.raises(StoreError, match="registry migrate"):
        PgStore(pg_dsn, migrate_schema=False)
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreError, match="newer than this galaxynode"):
        PgStore(pg_dsn)


def test_lost_connection_fails_one_write_and_is_reopened(pg_dsn, pg_server):
    with PgStore(pg_dsn) as s:
        s.apply([Upsert(entry(1))])
        pid = s._conn.info.backend_pid
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError, match="registry write failed"):
            s.apply([Upsert(entry(2))])
        with pytest.raises(StoreError, match="connection lost"):
            s.read([k(1)], [])  # on the event loop: never reconnects
        s.apply([Upsert(entry(3))])  # the next write reconnects
        assert {e.key for e in s.load()[0]} == {k(1), k(3)}


def test_password_stays_out_of_messages():
    dsn = "postgresql://galaxy:s3cret@127.0.0.1:1/nope"
    assert "s3cret" not in redact(dsn)
    with pytest.raises(StoreError) as info:
        PgStore(dsn)
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)
