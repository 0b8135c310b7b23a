"""Peer abuse (issue 13 items 1 and 3): role claims, peer slot filling, a silent peer. Live pools.

(a) Role claim. Keys the peering policy does not accept (default `[peers] accept = "listed"`) say
    role "pool" or "mainnet" in HELLO: they get the node frame bucket (a 3,000-frame burst is
    rate_limited past `[limits] frame_burst` 400; the pool bucket would allow 20,000) and no peer
    services (DESCRIPTORS and EVENT answered ERROR forbidden, the session goes on as a node's).
(b) Slot filling. 32 fake peers (every one answering requests) connect to a pool that accepts anyone
    as a peer (`accept = "any"`, the worst case): at most `[peers] max_inbound` (24) of them hold a
    slot, and the pool's static peer, started afterwards, still connects (within 10 s).
(c) Silent peer. A peer that never answers: once it missed `[peers] max_misses` (2) queries in a
    row, cross-pool queries no longer wait for it: each returns partial in < 500 ms (3,000 ms each
    before); when it answers again its standing comes back and queries wait for it again.

Each test also states the honest connect+JOIN bound while its attack runs (10x quiet + 300 ms) and
an RSS growth bound.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Iterator

import trio

from abuse import NETWORK, PoolProcess, alive, assert_within, honest_latency, live_pool, rss_mib
from galaxynode.descriptor import DescriptorIssuer
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import now_ms
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity, write_key
from galaxynode.net import RemoteError, connect
from galaxynode.nodeclient import connect as node_connect
from galaxynode.net.connection import SessionClosed
from galaxynode.net.transport import ChannelClosed

FACTOR, SLACK = 10.0, 0.3


def admin_env(tmp_path, **extra: str) -> tuple[Identity, dict[str, str]]:
    admin = Identity.generate()
    return admin, {"GALAXYNODE_ADMISSION_ADMINS": admin.public_text, **extra}


async def admin_peers(url: str, admin: Identity) -> list[dict]:
    async with node_connect(url, admin, network=NETWORK) as pool:
        return await pool.admin("peers")


# --- (a) role claims ------------------------------------------------------------------------------

async def claim_and_probe(url: str, role: str, pings: int) -> dict[str, object]:
    """One unlisted key saying `role`: what DESCRIPTORS, EVENT and a burst of `pings` PINGs get."""
    me = Identity.generate()
    out: dict[str, object] = {}
    issuer = DescriptorIssuer(me, name="claimer", network=NETWORK, endpoints=["ws://127.0.0.1:9"], ttl_ms=600_000)
    async with connect(url, me, network=NETWORK, role=role) as conn:
        for name, msg in (("descriptors", m.Descriptors(descriptors=(issuer.current(now_ms(), nodes=0,
                                                                                     capabilities=()),))),
                          ("event", m.Event(topic="node.left", event_id=os.urandom(16), origin=os.urandom(32),
                                            ts=now_ms(), data={"key": os.urandom(32).hex()}))):
            try:
                await conn.request(msg, timeout=3)
                out[name] = "answered"
            except RemoteError as e:
                out[name] = e.code
            except trio.TooSlowError:  # a peer push is not answered when it is taken
                out[name] = "taken"
        out["status"] = (await conn.request(m.Status(), timeout=5)).type  # still served, as a node
        sent = 0
        try:
            for sent in range(1, pings + 1):
                await conn.send(m.Ping())
            with trio.move_on_after(3):
                await conn.wait_closed()
        except SessionClosed:
            pass
        out["pings_sent"] = sent
        out["closed_with"] = conn.remote_error.code if conn.remote_error is not None else None
    return out


def test_role_claims_get_the_node_bucket_and_no_peer_services(tmp_path):
    """An unlisted key claiming role pool or mainnet: DESCRIPTORS and EVENT refused (forbidden), the
    session still served as a node, and a 3,000-PING burst is rate_limited (node bucket: burst 400,
    200/s; the pool bucket, burst 20,000, would take it). 20 claimers at once: honest connect+JOIN within 10x quiet
    + 300 ms, RSS growth < 60 MiB. Before the fix both claims got the pool bucket (no rate_limited)
    and role pool got peer services (the EVENT was relayed)."""
    admin, env = admin_env(tmp_path)
    with live_pool(tmp_path / "p", env=env) as pool:
        async def main():
            quiet = await honest_latency(pool.url)
            rss0 = rss_mib(pool)
            results: list[dict] = []
            async with trio.open_nursery() as nursery:
                async def one(role: str, pings: int) -> None:
                    results.append(await claim_and_probe(pool.url, role, pings))
                for i in range(20):  # staggered: [server] max_pending_per_address is 16
                    nursery.start_soon(one, ("pool", "mainnet")[i % 2], 50)
                    await trio.sleep(0.05)
                loaded = await honest_latency(pool.url)
            bursts = [await claim_and_probe(pool.url, role, 3000) for role in ("pool", "mainnet")]
            peers = await admin_peers(pool.url, admin)
            return quiet, loaded, rss_mib(pool) - rss0, results, bursts, peers

        quiet, loaded, grew, results, bursts, peers = trio.run(main)
        assert alive(pool)
    for r in results + bursts:
        assert r["descriptors"] == ErrorCode.FORBIDDEN and r["event"] == ErrorCode.FORBIDDEN, r
        assert r["status"] == "STATUS_RESULT", r
    for r in bursts:
        # rate_limited is the verdict (the pool bucket would take all 3,000). How many PINGs the client
        # got out before the close reached it is not: a writer that batches its queue (Gelato v2)
        # hands all 3,000 to the socket buffers before the pool has read 400 of them.
        assert r["closed_with"] == ErrorCode.RATE_LIMITED, r
    assert not [p for p in peers if p["state"] == "connected"], peers
    print(f"role claims: honest JOIN quiet {quiet * 1000:.1f} ms, under 20 claimers {loaded * 1000:.1f} ms, "
          f"RSS +{grew:.1f} MiB")
    assert_within(quiet, loaded, factor=FACTOR, slack=SLACK)
    assert grew < 60


# --- fake peers ------------------------------------------------------------------------------------

class FakePeer:
    """A pool-role session: answers the pool's requests (ERROR not_supported, or an empty
    QUERY_RESULT and ACK) unless silent, in which case it answers nothing."""

    def __init__(self, *, silent: bool = False):
        self.silent = silent
        self.identity = Identity.generate()
        self.queries = 0

    async def __call__(self, conn, frame):
        if frame.type == "QUERY":
            self.queries += 1
        if self.silent:
            return None
        if frame.type == "QUERY":
            return m.QueryResult(re=frame.id, nodes=())
        if frame.type == "SUBSCRIBE":
            return m.Ack(re=frame.id)
        if frame.type in ("DESCRIPTORS", "EVENT"):
            return None
        raise ProtocolError(ErrorCode.NOT_SUPPORTED, f"{frame.type} is not served here", frame.id)

    async def serve(self, url: str, stop: trio.Event, held: list) -> None:
        try:
            async with connect(url, self.identity, network=NETWORK, role="pool", handler=self) as conn:
                held.append(self)
                with trio.move_on_after(60):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(conn.wait_closed)
                        await stop.wait()
                        nursery.cancel_scope.cancel()
        except (RemoteError, ChannelClosed, SessionClosed, trio.TooSlowError):
            pass


@contextlib.contextmanager
def real_pool(data_dir, env: dict[str, str], listen: str) -> Iterator[PoolProcess]:
    """A second live pool on a chosen address (live_pool picks a free port itself)."""
    p = PoolProcess(data_dir, env=env, listen=listen, name="real", network=NETWORK)
    try:
        yield p
    finally:
        p.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- (b) slot filling -------------------------------------------------------------------------------

def test_fake_peers_cannot_keep_a_static_peer_out(tmp_path):
    """32 fake peers (all answering) fill a pool that accepts anyone as a peer; at most max_inbound
    (24) hold a slot. The pool's static peer, started after them, connects within 10 s. Honest
    connect+JOIN within 10x quiet + 300 ms with the fakes connected; RSS growth < 60 MiB. Before the
    fix: 32 fakes took all 32 slots and the static peer was never dialled (the dialler waited for a
    free slot)."""
    port = free_port()
    real_key = Identity.generate()
    write_key(real_key, tmp_path / "real.key")
    admin, env = admin_env(tmp_path, GALAXYNODE_PEERS_ACCEPT="any", GALAXYNODE_PEERS_RECONNECT_MIN="0.1",
                           GALAXYNODE_PEERS_RECONNECT_MAX="0.5")
    real_url = f"ws://127.0.0.1:{port}"
    with live_pool(tmp_path / "p", env=env, args=("--peer", f"{real_url}#{real_key.public_text}")) as pool:
        async def fill():
            quiet = await honest_latency(pool.url)
            rss0 = rss_mib(pool)
            stop, held = trio.Event(), []
            fakes = [FakePeer() for _ in range(32)]
            async with trio.open_nursery() as nursery:
                for f in fakes:
                    nursery.start_soon(f.serve, pool.url, stop, held)
                    await trio.sleep(0.02)
                await trio.sleep(1.0)
                connected = [p for p in await admin_peers(pool.url, admin) if p["state"] == "connected"]
                loaded = await honest_latency(pool.url)
                # The real pool comes up now, in its own process, with the victim pool static on its side too.
                real_env = {"GALAXYNODE_NODE_KEY_FILE": str(tmp_path / "real.key"), "GALAXYNODE_PEERS_ACCEPT": "any"}
                started = time.monotonic()
                with real_pool(tmp_path / "real", real_env, real_url) as real:
                    await trio.to_thread.run_sync(
                        lambda: pool.wait_for(f"peer {real_key.public.hex()[:16]} connected", timeout=10))
                    took = time.monotonic() - started
                    after = [p for p in await admin_peers(pool.url, admin) if p["state"] == "connected"]
                    assert alive(real)
                stop.set()
            return quiet, loaded, rss_mib(pool) - rss0, connected, after, took

        quiet, loaded, grew, connected, after, took = trio.run(fill)
        assert alive(pool)
    inbound = [p for p in connected if p["direction"] == "inbound"]
    assert len(inbound) == 24, connected
    assert any(p["key"] == real_key.public and p["grade"] == "static" for p in after), after
    print(f"slot filling: {len(inbound)} of 32 fakes held a slot; static peer in {took:.1f} s; honest JOIN "
          f"quiet {quiet * 1000:.1f} ms, with fakes {loaded * 1000:.1f} ms, RSS +{grew:.1f} MiB")
    assert_within(quiet, loaded, factor=FACTOR, slack=SLACK)
    assert grew < 60


# --- (c) silent peer ---------------------------------------------------------------------------------

async def timed_query(url: str) -> tuple[float, bool]:
    async with node_connect(url, Identity.generate(), network=NETWORK, timeout=20) as pool:
        started = time.perf_counter()
        async with contextlib.aclosing(pool.query_pages(scope="peers")) as pages:
            async for page in pages:
                return time.perf_counter() - started, page.partial
    raise AssertionError("no page")


def test_silent_peer_loses_standing_and_queries_fail_fast(tmp_path):
    """A peer that never answers: the first max_misses (2) cross-pool queries wait the full
    query_timeout (3 s) and come back partial; after that each returns partial in < 500 ms while
    the peer's standing is low (ADMIN peers: standing low). When the peer answers again (a probe
    query), its standing is good again and queries include it (not partial). Honest connect+JOIN
    within 10x quiet + 300 ms meanwhile; RSS growth < 40 MiB. Before the fix every query took
    3,003 ms."""
    admin, env = admin_env(tmp_path, GALAXYNODE_PEERS_ACCEPT="any")
    with live_pool(tmp_path / "p", env=env) as pool:
        async def main():
            quiet = await honest_latency(pool.url)
            rss0 = rss_mib(pool)
            stop, held = trio.Event(), []
            fake = FakePeer(silent=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fake.serve, pool.url, stop, held)
                await trio.to_thread.run_sync(lambda: pool.wait_for(
                    f"peer {fake.identity.public.hex()[:16]} connected", timeout=10))
                slow = [await timed_query(pool.url) for _ in range(2)]
                fast = [await timed_query(pool.url) for _ in range(5)]
                standing = [p for p in await admin_peers(pool.url, admin) if p["state"] == "connected"]
                loaded = await honest_latency(pool.url)
                fake.silent = False  # it answers again: the next skipped query's probe restores it
                recovered = None
                for _ in range(40):  # a probe sent while it was silent may still be out (3 s)
                    took, partial = await timed_query(pool.url)
                    if not partial:
                        recovered = took
                        break
                    await trio.sleep(0.2)
                stop.set()
            return quiet, loaded, rss_mib(pool) - rss0, slow, fast, standing, recovered

        quiet, loaded, grew, slow, fast, standing, recovered = trio.run(main)
        assert alive(pool)
    print(f"silent peer: first queries {[round(t * 1000) for t, _ in slow]} ms, then "
          f"{[round(t * 1000) for t, _ in fast]} ms; recovered query {recovered and round(recovered * 1000)} ms; "
          f"honest JOIN quiet {quiet * 1000:.1f} ms, loaded {loaded * 1000:.1f} ms, RSS +{grew:.1f} MiB")
    assert all(partial for _, partial in slow + fast)
    assert all(t >= 2.5 for t, _ in slow), slow
    assert all(t < 0.5 for t, _ in fast), fast
    assert [p["standing"] for p in standing] == ["low"] and standing[0]["skipped"] >= 5, standing
    assert recovered is not None and recovered < 2.5
    assert_within(quiet, loaded, factor=FACTOR, slack=SLACK)
    assert grew < 40
