"""Main-net poisoning against a live `galaxynode mainnet` process (issue 13 item 4), loopback only.

Before: 3,000 fake pools announced from one address were all listed (keys ground to sort first),
two honest pools on that main net never found each other in 2.7 min, and each dialled the URL
written in the fakes (a victim's address) 72 times. Now the main net lists a pool only after
dialling its first endpoint back and finding the announcing key there, dials one host:port at most
[mainnet] dials_per_target (4) times per dial_window (1 h) whatever the claims, and pools dial only
what it listed.

The attacker announces from 127.0.1.1 (another /24 than the honest pools' 127.0.0.1, as on a real
network); the fakes name ws://127.0.0.1:<victim>/<i>, a plain TCP listener that counts connections.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from abuse import NETWORK, PoolProcess, alive, assert_within, live_pool, rss_mib
from galaxynode.descriptor import Descriptor, sign_descriptor, verify_descriptor
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.net import RemoteError, Server, connect
from galaxynode.net.transport import ChannelClosed
from galaxynode.registry.service import wall_clock_ms

ATTACKER = "127.0.1.1"
FAKES = int(os.environ.get("ABUSE_MAINNET_FAKES", "300"))
PEERED_BOUND = 25.0      # s for two honest pools to peer through a flooded main net (clean: ~1-2 s)
VICTIM_DIALS = 4         # [mainnet] dials_per_target: the main net's dial-backs of the victim's host:port
ENV = {"GALAXYNODE_PEERS_RECONNECT_MIN": "0.1", "GALAXYNODE_PEERS_RECONNECT_MAX": "1"}


@asynccontextmanager
async def victim():
    """A TCP listener on loopback that counts connections (and closes them)."""
    count = [0]

    async def handle(stream: trio.SocketStream) -> None:
        count[0] += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield port, count
        nursery.cancel_scope.cancel()


def mainnet_process(tmp_path: Path, env: dict[str, str] | None = None) -> PoolProcess:
    return PoolProcess(tmp_path / "main", env={"GALAXYNODE_MAINNET_VERIFY_TIMEOUT": "2", **(env or {})},
                       command=[sys.executable, "-m", "galaxynode", "mainnet", "--listen", "ws://127.0.0.1:0",
                                "--data-dir", str(tmp_path / "main"), "--name", "main", "--network", NETWORK])


def session_from(url: str, identity: Identity, local: str):
    """A role-pool session to `url` from source address `local`."""
    return connect(url, identity, network=NETWORK, role="pool", connect_timeout=5, local_address=local)


def descriptor(identity: Identity, url: str, *, seq: int | None = None) -> m.SignedDescriptor:
    now = wall_clock_ms()
    d = Descriptor(key=identity.public, name=f"fake-{identity.public.hex()[:8]}", network=NETWORK, endpoints=(url,),
                   capabilities=(), nodes=0, issued=now, expires=now + 300_000, seq=now if seq is None else seq)
    return sign_descriptor(identity, d)


async def announce(url: str, identity: Identity, signed: m.SignedDescriptor, local: str) -> str:
    """ANNOUNCE from `local`; the reply's name ("lease", an error name, or how the session failed)."""
    try:
        async with session_from(url, identity, local) as conn:
            reply = await conn.request(m.Announce(descriptor=signed), timeout=10)
            return "lease" if reply.type == "LEASE" else reply.type
    except RemoteError as e:
        return e.code.name.lower()
    except (ChannelClosed, ProtocolError, OSError, trio.TooSlowError) as e:
        return f"failed: {type(e).__name__}"


async def flood(url: str, victim_port: int, n: int, outcomes: dict[str, int], *, concurrency: int = 8) -> None:
    async def one(i: int) -> None:
        ident = Identity.generate()
        outcome = await announce(url, ident, descriptor(ident, f"ws://127.0.0.1:{victim_port}/{i}"), ATTACKER)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    send, recv = trio.open_memory_channel[int](0)

    async def worker() -> None:
        async for i in recv:
            await one(i)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
        async with send:
            for i in range(n):
                await send.send(i)


async def listed(url: str) -> list[Descriptor]:
    async with connect(url, Identity.generate(), network=NETWORK, role="probe", connect_timeout=5) as conn:
        out, cursor = [], None
        while True:
            reply = await conn.request(m.Lookup(network=NETWORK, limit=100, cursor=cursor), timeout=10)
            out += [verify_descriptor(s, now=wall_clock_ms()) for s in reply.msg.descriptors]
            cursor = reply.msg.cursor
            if cursor is None:
                return out


async def lookup_latency(url: str, n: int = 5) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await listed(url)
        times.append(time.perf_counter() - started)
    return sorted(times)[n // 2]


async def peers_of(url: str) -> int:
    async with connect(url, Identity.generate(), network=NETWORK, role="probe", connect_timeout=5) as conn:
        return (await conn.request(m.Status(), timeout=5)).msg.peers


async def run_flood_test(tmp_path: Path, fakes: int) -> None:
    main = mainnet_process(tmp_path)
    try:
        async with victim() as (victim_port, victim_count):
            quiet = await lookup_latency(main.url)
            rss0 = rss_mib(main)
            outcomes: dict[str, int] = {}
            started = time.monotonic()
            loaded: list[float] = []
            peered_after: list[float] = []
            with live_pool(tmp_path / "a", env=ENV, args=("--mainnet", main.url), name="a") as a, \
                    live_pool(tmp_path / "b", env=ENV, args=("--mainnet", main.url), name="b") as b:
                async with trio.open_nursery() as nursery:
                    async def attack() -> None:
                        await flood(main.url, victim_port, fakes, outcomes)

                    async def measure() -> None:
                        await trio.sleep(0.5)
                        loaded.append(await lookup_latency(main.url))

                    async def peering() -> None:
                        with trio.fail_after(PEERED_BOUND):
                            while not (await peers_of(a.url) >= 1 and await peers_of(b.url) >= 1):
                                await trio.sleep(0.2)
                        peered_after.append(time.monotonic() - started)

                    nursery.start_soon(attack)
                    nursery.start_soon(measure)
                    nursery.start_soon(peering)
                names = {d.name for d in await listed(main.url)}
                assert alive(main) and alive(a) and alive(b)
        took = time.monotonic() - started
        print(f"\n{fakes} fakes in {took:.1f}s: {outcomes}; victim dialled {victim_count[0]}x; "
              f"honest pools peered after {peered_after[0]:.1f}s; LOOKUP quiet {quiet * 1000:.1f} ms, "
              f"under attack {loaded[0] * 1000:.1f} ms; main net RSS {rss0:.1f} -> {rss_mib(main):.1f} MiB")
        assert names == {"a", "b"}, names  # not one fake listed
        assert outcomes.get("lease", 0) == 0
        assert victim_count[0] <= VICTIM_DIALS
        assert_within(quiet, loaded[0], factor=10, slack=0.3)
        assert rss_mib(main) - rss0 < 60
    finally:
        main.close()


async def test_fakes_pointing_at_a_victim_are_not_listed_and_honest_pools_still_peer(tmp_path):
    """300 fake pools announced from one address (127.0.1.1), each naming a victim listener on
    loopback: none is listed (the dial-back finds no Gelato endpoint, or the victim's dial budget
    is spent), the victim is dialled at most 4 times ([mainnet] dials_per_target) in all, two
    honest pools started alongside find and peer with each other within 25 s (clean: ~1-2 s), an
    honest LOOKUP stays within 10x its quiet median + 300 ms, main net RSS grows < 60 MiB.
    Without the dial-back every fake is listed and LOOKUP hands them out; pools dial the victim."""
    await run_flood_test(tmp_path, FAKES)


@pytest.mark.slow
async def test_3000_fakes_pointing_at_a_victim(tmp_path):
    """The reported attack at full size: 3,000 fakes from one address (same bounds as above)."""
    await run_flood_test(tmp_path, 3000)


async def test_seq_at_the_top_is_refused_and_the_key_can_still_update(tmp_path):
    """seq 2**64 - 1 is refused (bad_descriptor: seq past now + 120 s) before any dial, so the key
    can still register (and later update) its own entry; a key that does not answer at its URL is
    refused (bad_descriptor), and one that does is listed."""
    main = mainnet_process(tmp_path)
    try:
        pool_id = Identity.generate()
        server = Server(pool_id, network=NETWORK, role="pool")
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(server.run)
            url = urls[0]
            assert await announce(main.url, pool_id, descriptor(pool_id, url, seq=2**64 - 1), "127.0.0.1") == \
                "bad_descriptor"
            assert await announce(main.url, pool_id, descriptor(pool_id, url), "127.0.0.1") == "lease"
            assert [d.key for d in await listed(main.url)] == [pool_id.public]
            assert await announce(main.url, pool_id, descriptor(pool_id, url), "127.0.0.1") == "lease"  # updates
            liar = Identity.generate()  # claims the same URL: another key answers there
            assert await announce(main.url, liar, descriptor(liar, url), "127.0.0.1") == "bad_descriptor"
            assert [d.key for d in await listed(main.url)] == [pool_id.public]
            await server.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        main.close()
