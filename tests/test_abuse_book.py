"""Descriptor-book flooding against a live pool (issue 13 item 3), loopback only.

Before: 10,000 throwaway descriptors pushed by one peer in 9.1 s filled a pool's book; the real
pool's descriptor was then refused (book full) and the fakes spread to the next pool that
connected. Now the book keeps at most [mainnet] book_per_peer (256) relayed descriptors per
sending peer and book_per_network (64) per endpoint /24 (/48), a peer's own descriptor is verified
(the handshake proved its key) and evicts relayed ones when the book is full, static peers always fit.

The attacker is an accepted peer ([peers] accept = "any": the worst case, a peer the policy lets in).
"""
from __future__ import annotations

import time

import trio

from abuse import NETWORK, alive, assert_within, honest_latency, live_pool, rss_mib
from galaxynode.descriptor import Descriptor, decode_record, sign_descriptor
from galaxynode.gelato import messages as m
from galaxynode.identity import Identity
from galaxynode.net import connect
from galaxynode.registry.service import wall_clock_ms

FLOOD = 10_000
BATCH = 256   # the DESCRIPTORS limit
PER_PEER = 256  # [mainnet] book_per_peer default
ENV = {"GALAXYNODE_PEERS_ACCEPT": "any", "GALAXYNODE_PEERS_RECONNECT_MIN": "0.1",
       "GALAXYNODE_PEERS_RECONNECT_MAX": "1"}


def throwaway(n: int) -> list[m.SignedDescriptor]:
    """n descriptors of fresh keys, endpoints spread over many /24s (so only the per-peer quota binds)."""
    now = wall_clock_ms()
    out = []
    for i in range(n):
        ident = Identity.generate()
        d = Descriptor(key=ident.public, name=f"junk{i}", network=NETWORK,
                       endpoints=(f"ws://10.{i // 250 % 250}.{i % 250}.1:7447/",), capabilities=(), nodes=0,
                       issued=now, expires=now + 86_000_000, seq=now)
        out.append(sign_descriptor(ident, d))
    return out


class Collector:
    """A peer-session handler that keeps the keys of the DESCRIPTORS it is sent."""

    def __init__(self):
        self.keys: set[bytes] = set()
        self.changed = trio.Event()

    async def __call__(self, conn, frame):
        if frame.type == "DESCRIPTORS":
            self.keys.update(decode_record(s.record).key for s in frame.msg.descriptors)
            self.changed.set()
        return None


async def test_one_peer_cannot_fill_the_book_and_the_real_pool_still_spreads(tmp_path):
    """One peer pushes 10,000 throwaway descriptors (40 DESCRIPTORS of 256): the pool keeps at most
    256 of them (book_per_peer) and answers the rest unavailable; a real pool that then peers with
    it gets its own descriptor kept (verified), and a pool connecting afterwards is sent the real
    pool's descriptor and at most 256 fakes. Honest connect+JOIN stays within 10x quiet + 200 ms
    during the flood; RSS grows < 40 MiB. Without the per-peer quota all 10,000 are kept and
    handed to every new peer."""
    junk = throwaway(FLOOD)
    with live_pool(tmp_path / "a", env=ENV, name="a") as a:
        quiet = await honest_latency(a.url)
        rss0 = rss_mib(a)
        attacker = Identity.generate()
        loaded: list[float] = []
        async with connect(a.url, attacker, network=NETWORK, role="pool", handler=Collector()) as conn:
            async with trio.open_nursery() as nursery:
                async def push() -> None:
                    started = time.monotonic()
                    for i in range(0, FLOOD, BATCH):
                        await conn.send(m.Descriptors(descriptors=tuple(junk[i:i + BATCH])))
                        await trio.sleep(0.02)
                    print(f"\n{FLOOD} descriptors pushed in {time.monotonic() - started:.1f}s")

                async def measure() -> None:
                    loaded.append(await honest_latency(a.url))
                nursery.start_soon(push)
                nursery.start_soon(measure)
            await trio.sleep(0.5)  # the last batches verified
            assert not conn.closed
        with live_pool(tmp_path / "b", env=ENV, args=("--peer", a.url), name="b") as b:
            # A later peer of a: what a's book hands out.
            watcher = Collector()
            b_key = None
            async with connect(b.url, Identity.generate(), network=NETWORK, role="probe") as probe:
                b_key = (await probe.request(m.Status(), timeout=5)).msg.key
            with trio.fail_after(15):
                while True:
                    watcher.keys.clear()
                    async with connect(a.url, Identity.generate(), network=NETWORK, role="pool", handler=watcher):
                        with trio.move_on_after(2):
                            while b_key not in watcher.keys:
                                await watcher.changed.wait()
                                watcher.changed = trio.Event()
                        await trio.sleep(0.3)  # the rest of the book's batches
                    if b_key in watcher.keys:
                        break
            fakes = len(watcher.keys & {decode_record(s.record).key for s in junk})
            print(f"a new peer of the flooded pool got {len(watcher.keys)} descriptors: the real pool's and "
                  f"{fakes} fakes; honest JOIN quiet {quiet * 1000:.1f} ms, flooded {loaded[0] * 1000:.1f} ms; "
                  f"RSS {rss0:.1f} -> {rss_mib(a):.1f} MiB")
            assert alive(a) and alive(b)
        assert fakes <= PER_PEER
        assert_within(quiet, loaded[0], factor=10, slack=0.2)
        assert rss_mib(a) - rss0 < 40
