"""SqliteStore: round trips, one transaction per batch, durability settings, bad files."""
from __future__ import annotations

import hashlib
import sqlite3

import pytest

from galaxynode.registry.leases import Entry, LeaseTable
from galaxynode.registry.store import Ban, Delete, SqliteStore, StoreError, Unban, Upsert

T0 = 1_700_000_000_000


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def entry(i: int, **kw) -> Entry:
    args = dict(key=k(i), capabilities=("gpu", f"c{i}"), meta={"region": "eu", "i": str(i)}, ttl=30,
                expires=T0 + 30_000 + i, joined=T0 + i)
    return Entry(**{**args, **kw})


@pytest.fixture
def path(tmp_path):
    return tmp_path / "registry.sqlite"


def test_round_trip(path):
    with SqliteStore(path) as s:
        s.apply([Upsert(entry(1)), Upsert(entry(2, payload=b"\x00signed")), Ban(k(3), None), Ban(k(4), T0 + 5)])
    with SqliteStore(path) as s:
        entries, bans = s.load()
    assert sorted(entries, key=lambda e: e.key) == sorted([entry(1), entry(2, payload=b"\x00signed")],
                                                          key=lambda e: e.key)
    assert bans == {k(3): None, k(4): T0 + 5}


def test_deletes_unbans_and_in_batch_order(path):
    with SqliteStore(path) as s:
        s.apply([Upsert(entry(i)) for i in range(5)] + [Ban(k(7), None), Ban(k(8), None)])
        s.apply([Delete(k(0)), Delete(k(99)), Unban(k(7)),
                 Upsert(entry(1, ttl=60)), Delete(k(1)),  # upsert then delete: gone
                 Delete(k(2)), Upsert(entry(2, ttl=90))])  # delete then upsert: present
        s.apply([])
        entries, bans = s.load()
    assert {e.key: e.ttl for e in entries} == {k(2): 90, k(3): 30, k(4): 30}
    assert bans == {k(8): None}


def test_failed_batch_is_rolled_back_as_a_whole(path):
    with SqliteStore(path) as s:
        s.apply([Upsert(entry(1))])
        bad = entry(3, payload=["not", "bytes"])  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            s.apply([Upsert(entry(2)), Delete(k(1)), Upsert(bad)])
        entries, _ = s.load()
        assert [e.key for e in entries] == [k(1)]
        s.apply([Upsert(entry(2))])  # the connection is usable afterwards
        assert len(s.load()[0]) == 2


def test_durability_settings(path):
    with SqliteStore(path) as s:
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_tables_are_independent(path):
    with SqliteStore(path) as nodes, SqliteStore(path, table="pools") as pools:
        nodes.apply([Upsert(entry(1))])
        pools.apply([Upsert(entry(2)), Ban(k(5), None)])
        assert [e.key for e in nodes.load()[0]] == [k(1)] and nodes.load()[1] == {}
        assert [e.key for e in pools.load()[0]] == [k(2)] and pools.load()[1] == {k(5): None}


@pytest.mark.parametrize("name", ["", "1abc", "nodes; DROP TABLE x", "a-b", "x" * 64])
def test_bad_table_name(path, name):
    with pytest.raises(ValueError):
        SqliteStore(path, table=name)


def test_not_a_database(path):
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="registry database"):
        SqliteStore(path)


def test_unopenable_path(tmp_path):
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "missing-dir" / "x.sqlite")


def test_malformed_row(path):
    with SqliteStore(path) as s:
        s._conn.execute("INSERT INTO nodes VALUES (?, 'not json', '{}', 30, 1, 1, NULL)", (k(1),))
        with pytest.raises(StoreError, match="cannot read"):
            s.load()


def test_restart_restores_remaining_lease_time(path):
    t = LeaseTable()
    long = t.join(k(1), ttl=600, capabilities=["gpu"], now=T0)
    short = t.join(k(2), ttl=5, now=T0)
    with SqliteStore(path) as s:
        s.apply([Upsert(long), Upsert(short)])
    restart = T0 + 100_000  # down for 100 s
    t2 = LeaseTable()
    with SqliteStore(path) as s:
        dropped, lapsed = t2.restore(*s.load(), now=restart)
    assert dropped == [short] and lapsed == []
    assert t2.get(k(1)).expires - restart == 500_000
    assert t2.expire(T0 + 599_999) == [] and t2.expire(T0 + 600_000) == [long]
