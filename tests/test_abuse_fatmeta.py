"""Fat metadata (issue 12, item 7): replies page by bytes, so no set of nodes can break a listing.

A record can hold 32 capabilities and 32 metadata entries of multi-byte text: ~12.6 KB of msgpack.
100 of them no longer fit one 1 MiB frame, which is what the default QUERY (limit 100), `galaxynode
query` and `admin nodes` (up to 1,000 per page) used to ask for: the reply could not be encoded
and the client got ERROR internal. (Issue 12 saw it with 22 nodes, when str bounds still counted
characters and a record could reach ~41 KB.) Now a page ends where the next record would take it
past [registry] page_bytes (256 KiB), with a cursor, and the clients follow cursors.

The live test populates a pool with 100 such nodes, then lists them every way while an honest node
joins: all 100 come back, across several pages. Bounds (generous: 2 shared cores): the honest
connect+JOIN stays within 10x its quiet latency + 300 ms, and the pool's RSS grows by less than
100 MiB (100 records of 12.6 KB and a few 256 KiB replies).
"""
from __future__ import annotations

import json
import sys

import msgpack
import pytest
import trio

from abuse import NETWORK, alive, assert_within, honest_latency, live_pool, rss_mib
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import DEFAULT_LIMITS, encode_frame
from galaxynode.identity import Identity, write_key
from galaxynode.nodeclient import connect
from galaxynode.pool import node_record
from galaxynode.registry.leases import LeaseTable, record_bytes

NODES = 100
CAPS = tuple(f"{i:02d}" + "é" * 31 for i in range(m.MAX_CAPABILITIES))             # 64 bytes each
FAT_META = {f"{i:02d}" + "é" * 31: "😀" * 64 for i in range(m.MAX_META_ENTRIES)}   # 64-byte keys, 256-byte values
T0 = 1_700_000_000_000


def fat_table(n: int, page_bytes: int) -> LeaseTable:
    t = LeaseTable(page_bytes=page_bytes, max_ttl=3600)
    for i in range(n):
        t.join(i.to_bytes(32, "big"), capabilities=CAPS[: 1 + i % 32], meta=dict(list(FAT_META.items())[: 1 + i % 32]),
               ttl=600, now=T0)
    return t


def test_record_bytes_bounds_the_encoded_record_tightly():
    t = fat_table(40, 1 << 20)
    for e in t.query(limit=1000)[0]:
        encoded = len(msgpack.packb(node_record(e, pool=bytes(32)).to_body()))  # the largest form: relayed
        assert encoded <= record_bytes(e) <= encoded + 16


@pytest.mark.parametrize("page_bytes", [4096, 20_000, 100_000])
def test_query_pages_by_bytes_and_returns_every_record_once(page_bytes):
    t = fat_table(40, page_bytes)
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = t.query(limit=1000, cursor=cursor, capabilities=["00" + "é" * 31])
        pages += 1
        assert page, "a page holds at least one record"
        size = sum(map(record_bytes, page))
        assert size <= page_bytes or len(page) == 1
        if cursor is not None:  # cut early: the next record would not have fitted
            nxt = t.query(limit=1, cursor=cursor, capabilities=["00" + "é" * 31])[0][0]
            assert size + record_bytes(nxt) > page_bytes
        seen += [e.key for e in page]
        if cursor is None:
            break
    assert seen == [i.to_bytes(32, "big") for i in range(40)]  # every node has the first capability
    assert pages > 1
    assert len(t.query(limit=1)[0]) == 1 and t.query(limit=1)[1] is not None  # the count still bounds a page


def test_a_full_page_of_maximal_records_fits_the_frame():
    t = fat_table(200, 256 * 1024)
    t2 = LeaseTable(page_bytes=256 * 1024)
    for i in range(200):
        t2.join(i.to_bytes(32, "big"), capabilities=CAPS, meta=FAT_META, ttl=600, now=T0)
    for table in (t, t2):
        page, cursor = table.query(limit=1000)
        assert cursor is not None
        reply = m.QueryResult(re=bytes(16), nodes=tuple(node_record(e, pool=bytes(32)) for e in page), cursor=cursor)
        assert len(encode_frame(Identity.generate(), reply)) < 256 * 1024 + 4096 < DEFAULT_LIMITS.max_frame_size


async def run_cli(*argv: str) -> str:
    done = await trio.run_process([sys.executable, "-m", "galaxynode", *argv], capture_stdout=True,
                                  capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def join_fat(url: str, n: int) -> set[bytes]:
    keys: set[bytes] = set()

    async def one() -> None:
        identity = Identity.generate()
        async with connect(url, identity, network=NETWORK) as node:
            await node.join(capabilities=CAPS, meta=FAT_META, ttl=600)
        keys.add(identity.public)

    for start in range(0, n, 8):  # under [server] max_pending_per_address (16)
        async with trio.open_nursery() as nursery:
            for _ in range(min(8, n - start)):
                nursery.start_soon(one)
    return keys


def test_fat_meta_nodes_are_listed_across_pages_by_query_cli_and_admin(tmp_path):
    """100 nodes of maximal multi-byte meta: the default QUERY, `galaxynode query` and `admin nodes`
    return all of them, in several byte-bounded pages. Honest connect+JOIN meanwhile within
    10x quiet + 300 ms; pool RSS growth < 100 MiB."""
    admin = Identity.generate()
    key_file = tmp_path / "admin.key"
    write_key(admin, key_file)
    with live_pool(tmp_path / "pool", env={"GALAXYNODE_ADMISSION_ADMINS": admin.public_text}) as pool:
        url = pool.url

        async def main() -> dict:
            out: dict = {}
            out["quiet"] = await honest_latency(url)
            out["rss0"] = rss_mib(pool)
            with trio.fail_after(60):
                out["keys"] = await join_fat(url, NODES)
                async with connect(url, Identity.generate(), network=NETWORK) as client:
                    out["pages"] = [page async for page in client.query_pages()]          # the default QUERY
                async with connect(url, admin, network=NETWORK) as client:
                    out["admin"] = await client.admin("nodes")

                async def listings() -> None:
                    common = ("--network", NETWORK)
                    out["cli_query"] = json.loads(await run_cli("query", url, *common, "--json", "--limit", "1000"))
                    out["cli_nodes"] = json.loads(await run_cli("admin", url, *common, "--key", str(key_file),
                                                                "nodes", "--json"))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(listings)
                    out["loaded"] = await honest_latency(url)
            out["rss1"] = rss_mib(pool)
            return out

        out = trio.run(main)
        assert alive(pool)
    keys = {k.hex() for k in out["keys"]}
    assert len(keys) == NODES
    pages = out["pages"]
    assert len(pages) >= 5 and all(p.nodes for p in pages) and pages[-1].cursor is None
    assert {n.key.hex() for p in pages for n in p.nodes} == keys
    assert sum(len(p.nodes) for p in pages) == NODES                    # none twice
    assert {m.NodeRecord.from_body(i).key.hex() for i in out["admin"]} == keys
    assert len(out["admin"]) == NODES
    for listing in (out["cli_query"], out["cli_nodes"]):
        listing = [r for r in listing if r["capabilities"] != ["honest"]]  # honest nodes join meanwhile
        assert len(listing) == NODES
        assert {r["key"].split(":")[-1] for r in listing} == keys
        assert all(r["meta"] == FAT_META for r in listing)
    assert out["rss1"] - out["rss0"] < 100, out
    assert_within(out["quiet"], out["loaded"], factor=10, slack=0.3)
