"""Two pools as separate processes, peered statically, driven through the CLI as a user would.

Timers are shortened through the documented environment overrides; nothing here reaches into a
process except over the protocol."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from procutil import Proc

# Short leases and quick redials, so that expiry and reconnection happen within the test.
ENV = {"GALAXYNODE_REGISTRY_MIN_TTL": "1", "GALAXYNODE_REGISTRY_EXPIRY_INTERVAL": "0.1",
       "GALAXYNODE_PEERS_RECONNECT_MIN": "0.1", "GALAXYNODE_PEERS_RECONNECT_MAX": "0.5",
       "GALAXYNODE_LOGGING_LEVEL": "info",
       # Only B lists A as a static peer: A accepts B as a peer under "any" (the default, "listed",
       # would serve B as a node: B is neither static on A nor listed on a main net).
       "GALAXYNODE_PEERS_ACCEPT": "any"}
URL = r"serving Gelato on (ws://\S+)"


def gn(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True,
                          timeout=timeout)


def pool(tmp_path, name: str, *args: str, listen: str = "ws://127.0.0.1:0") -> Proc:
    return Proc("run", "--name", name, "--listen", listen, "--data-dir", str(tmp_path / name), *args, env=ENV)


def eventually(check, timeout: float = 15.0, interval: float = 0.2):
    """check() until it returns something truthy; its last value otherwise fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            assert got, f"not within {timeout}s"
            return got
        time.sleep(interval)


def status(url: str) -> dict:
    r = gn("status", url, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def query(url: str, *args: str) -> list[dict]:
    r = gn("query", url, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def keygen(tmp_path, name: str) -> tuple[str, str]:
    path = tmp_path / f"{name}.key"
    r = gn("keygen", "--out", str(path))
    assert r.returncode == 0, r.stderr
    return str(path), r.stdout.split()[-1]


@pytest.fixture
def two_pools(tmp_path):
    """Pool A, and pool B with A as its static peer pinned to A's key: yields (A, url A, B, url B)."""
    with pool(tmp_path, "a") as a:
        url_a = a.wait_for(URL).group(1)
        key_a = status(url_a)["key"]
        with pool(tmp_path, "b", "--peer", f"{url_a}#{key_a}") as b:
            url_b = b.wait_for(URL).group(1)
            b.wait_for(f"peer {key_a} connected")
            yield a, url_a, b, url_b
            for p in (b, a):
                alive = p.p.poll() is None  # a test may have killed it on purpose
                assert p.stop(signal.SIGTERM) == 0 or not alive, p.output
                assert "Traceback" not in p.output, p.output


def test_two_peered_pools_share_queries_and_events(tmp_path, two_pools):
    a, url_a, b, url_b = two_pools
    assert status(url_a)["peers"] == 1 and status(url_b)["peers"] == 1
    key1, pub1 = keygen(tmp_path, "n1")
    key2, pub2 = keygen(tmp_path, "n2")
    with Proc("watch", url_b, "--peers", "--json", "node.*") as watch:
        watch.wait_for("watching node.*")
        with Proc("node", "join", url_b, "--key", key2, "--capability", "cpu", "--ttl", "2") as n2, \
             Proc("node", "join", url_a, "--key", key1, "--capability", "gpu", "--ttl", "2") as n1:
            n1.wait_for("joined")
            n2.wait_for("joined")
            run_two_pools_scenario(watch, n1, n2, url_a, url_b, pub1, pub2)
        assert "Traceback" not in watch.output


def run_two_pools_scenario(watch, n1, n2, url_a, url_b, pub1, pub2):
    # Each pool alone knows its own node; scope peers from either side finds both.
    assert [n["key"] for n in query(url_a)] == [pub1]
    for url in (url_a, url_b):
        both = query(url, "--scope", "peers")
        assert sorted(n["key"] for n in both) == sorted([pub1, pub2])
    assert [n["key"] for n in query(url_b, "--scope", "peers", "--capability", "gpu")] == [pub1]

    # The node on A joined, and later stops heartbeating (killed, no LEAVE): B's watcher sees
    # A's node.joined and then node.expired, relayed by the peering.
    watch.wait_for(r'"topic": "node.joined".*' + pub1.removeprefix("ed25519:"))
    n1.stop(signal.SIGKILL)
    line = watch.wait_for(r'\{"topic": "node.expired".*\}', timeout=15).group(0)
    ev = json.loads(line)
    assert ev["data"]["key"] in (pub1, pub1.removeprefix("ed25519:")) and ev["origin"] == status(url_a)["key"]
    assert query(url_a) == []
    assert [n["key"] for n in query(url_b, "--scope", "peers")] == [pub2]  # n2 still heartbeating
    assert n2.stop(signal.SIGTERM) == 0


def test_peer_reconnects_after_the_other_pool_is_killed_and_restarted(tmp_path, two_pools):
    a, url_a, b, url_b = two_pools
    key_a = status(url_a)["key"]
    a.stop(signal.SIGKILL)
    eventually(lambda: status(url_b)["peers"] == 0)
    assert status(url_b)["nodes"] == 0  # B keeps serving while its peer is down

    with pool(tmp_path, "a", listen=url_a) as a2:  # same port and data dir: same key
        a2.wait_for("ready: pool")
        assert status(url_a)["key"] == key_a
        eventually(lambda: status(url_b)["peers"] == 1 and status(url_a)["peers"] == 1)
        assert b.output.count(f"peer {key_a} connected") >= 1
        assert a2.stop(signal.SIGTERM) == 0, a2.output
