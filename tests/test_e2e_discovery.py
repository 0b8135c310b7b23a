"""Discovery end to end, every daemon a separate process: a main net and three pools with no static
peers find each other through it, form a connected peer graph, answer cross-pool queries, and ride
out a main net crash (SIGKILL, restart on the same data dir and port) with no manual action.

Timers are shortened through environment overrides only (GALAXYNODE_PEERS_RECONNECT_*: peer redials
and, as its backoff ceiling, the announcer's retries). The main net is reached over the protocol
(LOOKUP, descriptors verified here), the pools through the CLI.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import trio

from procutil import Proc

from galaxynode.descriptor import verify_descriptor
from galaxynode.gelato import messages as m
from galaxynode.identity import Identity, write_key
from galaxynode.net.client import connect
from galaxynode.registry.service import wall_clock_ms

NET = "galaxy-dev"
# reconnect_max is also the announcer's backoff ceiling: the pools retry the main net at least once a second.
ENV = {"GALAXYNODE_PEERS_RECONNECT_MIN": "0.1", "GALAXYNODE_PEERS_RECONNECT_MAX": "1",
       "GALAXYNODE_LOGGING_LEVEL": "info"}
URL = r"serving Gelato on (ws://\S+)"
BOUND = 15.0  # generous: each step below takes about a second on a 2-core machine


def gn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True, timeout=20)


def status(url: str) -> dict:
    r = gn("status", url, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def query_peers(url: str) -> set[str]:
    r = gn("query", url, "--scope", "peers", "--json")
    assert r.returncode == 0, r.stderr
    return {n["key"] for n in json.loads(r.stdout)}


def lookup(url: str) -> dict[str, m.SignedDescriptor]:
    """The pools the main net lists, by name, each descriptor verified (the main net is not trusted)."""
    async def main() -> dict:
        async with connect(url, Identity.generate(), network=NET, role="probe", connect_timeout=5) as conn:
            reply = await conn.request(m.Lookup(network=NET), timeout=5)
        assert reply.type == "LOOKUP_RESULT" and reply.msg.cursor is None
        descs = [verify_descriptor(s, now=wall_clock_ms(), network=NET) for s in reply.msg.descriptors]
        return {d.name: d for d in descs}
    return trio.run(main)


def eventually(check, timeout: float = BOUND, interval: float = 0.1):
    """Poll check() until it is truthy; return (value, seconds it took), or fail with its last value."""
    start = time.monotonic()
    while True:
        got = check()
        took = time.monotonic() - start
        if got:
            return got, took
        assert took < timeout, f"not within {timeout}s (last: {got!r})"
        time.sleep(interval)


def node(tmp_path, name: str, url: str) -> tuple[Proc, str]:
    """A node process joined to `url` (heartbeating until stopped); returns it and its public key."""
    identity = Identity.generate()
    write_key(identity, tmp_path / f"{name}.key")
    proc = Proc("node", "join", url, "--key", str(tmp_path / f"{name}.key"), "--capability", name)
    proc.wait_for("joined")
    return proc, identity.public_text


def test_discovery_federation_and_mainnet_restart(tmp_path):
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        p = Proc(*args, env=ENV)
        procs.append(p)
        return p

    try:
        main = start("mainnet", "--name", "main", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "main"))
        main_url = main.wait_for(URL).group(1)
        main.wait_for("ready: pool")

        # Three pools started together, none told about another: only the main net.
        t0 = time.monotonic()
        pools = {name: start("run", "--name", name, "--listen", "ws://127.0.0.1:0", "--data-dir",
                             str(tmp_path / name), "--mainnet", main_url) for name in ("a", "b", "c")}
        urls = {name: p.wait_for(URL).group(1) for name, p in pools.items()}
        for p in pools.values():
            p.wait_for("announced to the main net")
        assert set(lookup(main_url)) == {"a", "b", "c"}
        # A connected peer graph: with three pools, each one peered with both others.
        eventually(lambda: all(status(u)["peers"] == 2 for u in urls.values()))
        print(f"\n3 pools announced and fully peered {time.monotonic() - t0:.2f}s after they were started")

        # Nodes on any pool are found from any other.
        nodes = [node(tmp_path, f"n{name}", urls[name]) for name in ("a", "b", "c")]
        procs += [p for p, _ in nodes]
        keys = {k for _, k in nodes}
        for url in urls.values():
            assert query_peers(url) == keys

        # The main net crashes. The pools keep serving: a new node joins, queries still span pools.
        main.stop(signal.SIGKILL)
        for p in pools.values():
            p.wait_for(r"main net ws://\S+: .*retrying in")
        during = [node(tmp_path, f"late-{name}", urls[name]) for name in ("a", "b", "c")]
        procs += [p for p, _ in during]
        keys |= {k for _, k in during}
        assert query_peers(urls["a"]) == keys
        assert all(status(u)["peers"] == 2 and status(u)["nodes"] == 2 for u in urls.values())

        # Restarted on the same data dir and port, it lists every pool again, as re-announced after
        # the outage (two nodes each now), without anyone touching the pools.
        again = start("mainnet", "--name", "main", "--listen", main_url, "--data-dir", str(tmp_path / "main"))
        again.wait_for("ready: pool")
        _, took = eventually(lambda: {n: d.nodes for n, d in lookup(main_url).items()} == {"a": 2, "b": 2, "c": 2})
        print(f"LOOKUP listed all 3 re-announced pools {took:.2f}s after the main net restart")
        assert all(status(u)["peers"] == 2 for u in urls.values())

        for p in procs:
            if p.p.poll() is None:
                assert p.stop(signal.SIGTERM) == 0, p.output
        for p in procs:
            assert "Traceback" not in p.output, p.output
    finally:
        for p in procs:
            p.close()
