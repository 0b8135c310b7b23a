"""Issue 12 item 1 against live processes: the JOIN that crashed a pool (32 capabilities of "é" * 62),
fat multi-byte meta, and a lease stored by an older version that no descriptor can hold.

The crash was ~5 s after the JOIN, when the pool rebuilt its signed descriptor (record over 4,096
bytes, ValueError out of a background task); a restart then failed on the persisted lease. So each
test waits past a descriptor rebuild (every 5 s) and an announce to a real `galaxynode mainnet`, then
checks that the pool is up, answers STATUS, announces a descriptor that verifies, and restarts on the
same data dir. Bounds: honest connect+JOIN within 10 x quiet + 200 ms; RSS growth under 40 MiB.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import trio

from abuse import NETWORK, PoolProcess, alive, assert_within, honest_latency, live_pool, rss_mib
from galaxynode.descriptor import Descriptor, verify_descriptor
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.net.client import connect as open_session
from galaxynode.nodeclient import connect
from galaxynode.registry.leases import Entry
from galaxynode.registry.service import wall_clock_ms
from galaxynode.registry.store import SqliteStore, Upsert

FACTOR, SLACK = 10, 0.2          # honest connect+JOIN bound: FACTOR x quiet + SLACK seconds
RSS_GROWTH_MIB = 40
REBUILD = 5.0                    # PeerManager.descriptor_interval and Announcer.check_interval
REPORTED_CAPS = ["\u00e9" * 62 + f"{i:02d}" for i in range(32)]   # 126 bytes each: the reported JOIN
FAT_META = {"\u00e9" * 31 + f"{i:02d}": "\u20ac" * 85 for i in range(32)}  # keys 64 B, values 255 B: at the limits
FAT_CAPS = ["\u00e9" * 31 + f"{i:02d}" for i in range(32)]        # 64 bytes each: at the limit


class MainNet(PoolProcess):
    """`galaxynode mainnet` as a child process (same harness as the pool)."""

    def __init__(self, data_dir: Path):
        super().__init__(data_dir, name="main", command=[
            sys.executable, "-m", "galaxynode", "mainnet", "--listen", "ws://127.0.0.1:0", "--data-dir",
            str(data_dir), "--name", "main", "--network", NETWORK])


async def lookup(main_url: str) -> list[Descriptor]:
    """The pools the main net lists, each verified here (the main net is not trusted)."""
    async with open_session(main_url, Identity.generate(), network=NETWORK, role="probe", connect_timeout=5) as conn:
        reply = await conn.request(m.Lookup(network=NETWORK), timeout=5)
    return [verify_descriptor(s, now=wall_clock_ms(), network=NETWORK) for s in reply.msg.descriptors]


async def announced(main_url: str, pool_key: bytes, *, after: int, timeout: float = 3 * REBUILD) -> Descriptor:
    """The pool's descriptor as the main net lists it, once issued after `after` (wall ms): i.e. a
    rebuild and an announce that happened after the attack."""
    with trio.fail_after(timeout):
        while True:
            for d in await lookup(main_url):
                if d.key == pool_key and d.issued > after:
                    return d
            await trio.sleep(0.25)


async def status(url: str) -> m.StatusResult:
    async with connect(url, Identity.generate(), network=NETWORK) as pool:
        return await pool.status()


def _legacy_lease(data_dir: Path, key: bytes) -> None:
    """What an older version (bounds in characters) stored for the reported JOIN: a lease of 126-byte
    capabilities and fat multi-byte meta that no valid descriptor or record can carry."""
    now = wall_clock_ms()
    store = SqliteStore(data_dir / "registry.sqlite", table="nodes")
    try:
        store.apply([Upsert(Entry(key=key, capabilities=tuple(REPORTED_CAPS), ttl=3600, expires=now + 3_600_000,
                                  joined=now, meta={"\u00e9" * 64: "\u00e9" * 256}))])
    finally:
        store.close()


def test_reported_join_and_fat_meta_do_not_stop_the_pool(tmp_path):
    """The exact reported JOIN is refused (invalid_body: capabilities are bounded in bytes); JOINs at
    every byte limit with multi-byte strings are accepted. Past a descriptor rebuild and an announce,
    the pool is up (10 x + 200 ms honest latency, < 40 MiB RSS growth), its announced descriptor
    verifies and counts those nodes, and it restarts on the same data dir."""
    with MainNet(tmp_path / "main") as main, \
            live_pool(tmp_path / "pool", args=("--mainnet", main.url)) as pool:
        pool.wait_for("announced to the main net")

        async def attack() -> tuple[float, float, float, float, Descriptor]:
            quiet = await honest_latency(pool.url)
            rss0 = rss_mib(pool)
            started = wall_clock_ms()
            fat = []
            async with trio.open_nursery() as nursery:
                # The reported JOIN, through the client API: refused, the session goes on.
                async with connect(pool.url, Identity.generate(), network=NETWORK) as node:
                    with pytest.raises(ProtocolError) as refused:
                        await node.join(capabilities=REPORTED_CAPS)
                    assert refused.value.code == ErrorCode.INVALID_BODY and "bytes" in refused.value.message
                    assert (await node.status()).nodes >= 0  # still served
                # Nodes at every byte limit, in multi-byte characters, held joined meanwhile.
                for i in range(4):
                    node = await nursery.start(_hold, pool.url, FAT_CAPS[i:] + FAT_CAPS[:i], FAT_META)
                    fat.append(node)
                st = await status(pool.url)
                assert st.nodes == 4
                loaded = await honest_latency(pool.url)
                desc = await announced(main.url, st.key, after=started)
                nursery.cancel_scope.cancel()
            return quiet, loaded, rss0, rss_mib(pool), desc

        quiet, loaded, rss0, rss1, desc = trio.run(attack)
        print(f"\nquiet {quiet * 1000:.1f} ms, during {loaded * 1000:.1f} ms, RSS {rss0:.1f} -> {rss1:.1f} MiB, "
              f"descriptor {len(desc.capabilities)} capabilities, {desc.nodes} nodes")
        assert alive(pool)
        assert_within(quiet, loaded, factor=FACTOR, slack=SLACK)
        assert rss1 - rss0 < RSS_GROWTH_MIB
        assert desc.nodes >= 4 and set(desc.capabilities) <= set(FAT_CAPS) | {"honest"}
        assert "Traceback" not in pool.output and "background task" not in pool.output
        assert pool.stop() == 0

        with live_pool(tmp_path / "pool", args=("--mainnet", main.url)) as again:
            again.wait_for("announced to the main net")
            assert trio.run(status, again.url).nodes == 4  # restored, leases not yet expired
            assert "Traceback" not in again.output


def test_a_stored_lease_no_descriptor_can_hold_does_not_block_start_up(tmp_path):
    """A lease persisted under the old character bounds (126-byte capabilities, 128-byte meta key) and a
    corrupt saved pool book: the pool starts (the lease, outside today's byte bounds, is dropped at
    start-up), announces a descriptor that verifies, serves STATUS, and goes on past a rebuild."""
    data = tmp_path / "pool"
    data.mkdir(mode=0o700)
    _legacy_lease(data, Identity.generate().public)
    (data / "descriptors.bin").write_bytes(b"\x92\xa9not a book\xc1")
    with MainNet(tmp_path / "main") as main, live_pool(data, args=("--mainnet", main.url)) as pool:
        pool.wait_for("announced to the main net")
        began = time.monotonic()

        async def check() -> tuple[m.StatusResult, Descriptor]:
            st = await status(pool.url)
            return st, await announced(main.url, st.key, after=wall_clock_ms() - 1000)

        st, desc = trio.run(check)
        assert st.nodes == 0 and desc.nodes == 0 and desc.capabilities == ()
        time.sleep(max(0.0, REBUILD + 0.5 - (time.monotonic() - began)))  # past a rebuild
        assert alive(pool) and trio.run(status, pool.url).nodes == 0
        assert "Traceback" not in pool.output


async def _hold(url: str, caps: list[str], meta: dict[str, str], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A node joined with `caps` and `meta` until cancelled (re-joined as an update, heartbeating)."""
    me = Identity.generate()
    async with connect(url, me, network=NETWORK) as node:
        await node.join(capabilities=caps[::-1], meta={}, ttl=30)
        lease = await node.join(capabilities=caps, meta=meta, ttl=30)  # a re-join replaces the record
        [record] = await node.query(key=me.public)
        assert record.capabilities == tuple(caps) and record.meta == meta
        task_status.started()
        while True:
            await trio.sleep(max(1.0, lease.ttl / 3))
            lease = await node.heartbeat()
