"""Memory exhaustion by not reading (issue 12, item 3): queued output is bounded in bytes.

The attack as reported: a pool holds ~1,000 nodes with fat metadata; 20 sessions each pipeline
QUERY(limit=1000) and never read a byte. When the send queue was bounded in frames (256) only,
each session could hold 256 replies of up to 1 MiB: the pool grew from 53 MB to 1.07 GB in 14 s.

Now each session's queued output is bounded by [limits] send_queue_bytes (4 MiB) and all of them
by send_queue_total_bytes (256 MiB); replies are at most [registry] page_bytes (256 KiB) of
records; a reply that does not fit waits, so the pool stops reading the session's requests; and a
session whose writer cannot hand a frame over for write_timeout is closed with slow_reader.

Bounds (generous: 2 cores shared with other test runs): the pool's RSS peak grows by < 150 MiB
during the attack (20 x (4 MiB queue + the frame in flight) ~ 90 MiB, plus encoding transients);
every attacker is closed as slow_reader within write_timeout + 8 s of its last request; the honest
connect+JOIN stays within 10x its quiet latency + 300 ms while the attackers are held.

Run twice: with write_timeout 3 s (fast, by default) and with the default 10 s (-m slow). The pool
makes replies at ~25 MB/s here, so within 3 s the byte budgets are not reached yet and the fast run
checks the closing; the slow run is the one the byte budgets decide (without them: +256 MiB peak,
honest JOIN 1.4 s).
"""
from __future__ import annotations

import time

import pytest
import trio

from abuse import NETWORK, alive, assert_within, honest_latency, live_pool, rss_mib
from galaxynode.gelato import messages as m
from galaxynode.identity import Identity
from galaxynode.net import establish, open_channel
from galaxynode.registry.leases import Entry
from galaxynode.registry.store import SqliteStore, Upsert

NODES = 1000
ATTACKERS = 20
QUERIES = 300                # per attacker: more than the 256 frames the old queue held
CAPS = tuple(f"{i:02d}" + "é" * 31 for i in range(m.MAX_CAPABILITIES))
FAT_META = {f"{i:02d}" + "é" * 31: "😀" * 64 for i in range(m.MAX_META_ENTRIES)}  # ~12.6 KB per record


def populate(data_dir) -> None:
    """1,000 fat leases written straight into the pool's store (JOINing them would take most of the
    time budget); the pool restores them at start-up like any stored lease."""
    data_dir.mkdir(mode=0o700)
    now = int(time.time() * 1000)
    with SqliteStore(data_dir / "registry.sqlite") as store:
        store.apply([Upsert(Entry(key=Identity.generate().public, capabilities=CAPS, meta=FAT_META, ttl=3600,
                                  expires=now + 3_600_000, joined=now)) for _ in range(NODES)])


async def slow_reader(url: str, held: trio.Event, sent: list[float]) -> None:
    """A Gelato session that pipelines QUERY(limit=1000) and never reads; held open until `held`."""
    async with open_channel(url, max_message_size=1 << 20, connect_timeout=10) as channel:
        session = await establish(channel, Identity.generate(), opener=True, network=NETWORK, role="node")
        for _ in range(QUERIES):
            await channel.send(session.encode(m.Query(limit=m.MAX_PAGE)))
        sent.append(time.monotonic())
        await held.wait()


@pytest.mark.parametrize("write_timeout", [3.0, pytest.param(10.0, marks=pytest.mark.slow)])
def test_sessions_that_never_read_cost_bounded_memory_and_are_closed(tmp_path, write_timeout):
    """20 sessions x 300 QUERY(limit=1000) against 1,000 fat records, never read: RSS peak growth
    < 150 MiB; all 20 closed with slow_reader within write_timeout + 8 s of their last request;
    honest connect+JOIN within 10x quiet + 300 ms meanwhile."""
    populate(tmp_path / "pool")
    env = {"GALAXYNODE_LIMITS_WRITE_TIMEOUT": str(write_timeout)}
    with live_pool(tmp_path / "pool", env=env) as pool:
        url = pool.url

        async def main() -> dict:
            out: dict = {"quiet": await honest_latency(url), "rss0": rss_mib(pool), "peak": 0.0}
            held, sent = trio.Event(), []

            async def sample_rss() -> None:
                while True:
                    out["peak"] = max(out["peak"], rss_mib(pool))
                    await trio.sleep(0.1)

            with trio.fail_after(write_timeout + 30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample_rss)
                    async with trio.open_nursery() as attackers:
                        for i in range(ATTACKERS):
                            attackers.start_soon(slow_reader, url, held, sent)
                            if i % 8 == 7:  # under [server] max_pending_per_address
                                await trio.sleep(0.2)
                        while len(sent) < ATTACKERS:
                            await trio.sleep(0.05)
                        out["loaded"] = await honest_latency(url)
                        while pool.output.count("slow_reader (5003)") < ATTACKERS:
                            await trio.sleep(0.1)
                        out["closed_after"] = time.monotonic() - max(sent)
                        held.set()
                    nursery.cancel_scope.cancel()
            return out

        out = trio.run(main)
        assert alive(pool)
    assert out["peak"] - out["rss0"] < 150, out
    assert out["closed_after"] < write_timeout + 8, out
    assert_within(out["quiet"], out["loaded"], factor=10, slack=0.3)
