"""`galaxynode run --workers 2` on PostgreSQL, as processes: both workers serve one pool (every query
sees every lease, every subscriber every event, whichever worker a session landed on); SIGTERM stops
them all; a worker killed with -9 is restarted, its nodes reconnect to the other and keep their leases
and no acknowledged JOIN is lost; SQLite with more than one worker is refused with one line."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psycopg
import pytest
import trio

from galaxynode.identity import Identity
from galaxynode.nodeclient import connect, keep_joined
from tests.pg import pg_dsn, pg_server  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abuse import NETWORK, live_pool  # noqa: E402
from procutil import Proc  # noqa: E402


def children(pid: int) -> list[int]:
    """Live child processes of pid (trio starts them from a worker thread: every task's list counts)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return [c for c in sorted(out) if not gone(c)]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def cluster(tmp_path, pg_dsn):
    env = {"GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": pg_dsn,
           "GALAXYNODE_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "1000", "GALAXYNODE_SERVER_MAX_PENDING_PER_ADDRESS": "256",
           "GALAXYNODE_REGISTRY_EXPIRY_INTERVAL": "0.2"}
    with live_pool(tmp_path / "data", env=env, args=("--workers", "2")) as pool:
        first = pool.wait_for(r"ready: pool").end()
        pool.wait_for(r"ready: pool", start=first)
        assert len(children(pool.pid)) == 2
        yield pool


async def _keys(url: str) -> set[bytes]:
    async with connect(url, Identity.generate(), network=NETWORK) as s:
        return {r.key for r in await s.query(limit=1000)}


def test_two_workers_serve_one_pool(cluster):
    nodes = [Identity.generate() for _ in range(8)]

    async def main():
        url = cluster.url
        async with trio.open_nursery() as n:
            subs = []
            for _ in range(4):  # on whichever workers the kernel gives them
                s = await n.start(_subscriber, url)
                subs.append(s)
            for me in nodes:
                async with connect(url, me, network=NETWORK) as s:
                    await s.join(capabilities=["w"], ttl=600)
            for _ in range(6):  # fresh sessions, spread over the workers: each sees the whole pool
                assert await _keys(url) == {me.public for me in nodes}
            with trio.fail_after(10):
                for seen in subs:
                    while {me.public for me in nodes} - seen:
                        await trio.sleep(0.02)
            n.cancel_scope.cancel()
    trio.run(main)


async def _subscriber(url: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    seen: set[bytes] = set()
    async with connect(url, Identity.generate(), network=NETWORK) as s:
        await s.subscribe(["node.joined"])
        task_status.started(seen)
        async for ev in s.events():
            seen.add(ev.data["key"])


def test_sigterm_stops_every_worker(cluster):
    kids = children(cluster.pid)
    assert cluster.stop(signal.SIGTERM, timeout=20) == 0
    deadline = time.monotonic() + 5
    while not all(map(gone, kids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, kids))


def test_workers_stop_when_their_supervisor_is_killed(cluster):
    kids = children(cluster.pid)
    os.kill(cluster.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while not all(map(gone, kids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, kids))


def test_kill9_of_a_worker_loses_no_lease(cluster, pg_dsn):
    kill9(cluster, pg_dsn, 16)


@pytest.mark.slow  # 200 nodes renewing every 2 s while a worker dies: about 30 s
def test_kill9_of_a_worker_under_load_loses_no_lease(cluster, pg_dsn):
    kill9(cluster, pg_dsn, 200)


def kill9(cluster, pg_dsn, count: int) -> None:
    nodes = [Identity.generate() for _ in range(count)]
    keys = {me.public for me in nodes}

    async def main():
        url = cluster.url
        async with trio.open_nursery() as n:
            for me in nodes:
                n.start_soon(lambda me=me: keep_joined(url, me, capabilities=["k"], ttl=6, network=NETWORK,
                                                       backoff_min=0.05, backoff_max=0.5))
            with trio.fail_after(15 + count / 10):
                while await _keys(url) != keys:
                    await trio.sleep(0.1)
            with psycopg.connect(pg_dsn) as conn:  # every acknowledged JOIN is committed
                assert {bytes(k) for k, in conn.execute("SELECT key FROM nodes")} == keys
            victim = children(cluster.pid)[0]
            mark = len(cluster.output)
            os.kill(victim, signal.SIGKILL)
            await trio.to_thread.run_sync(lambda: cluster.wait_for(r"worker \d \(pid \d+\) exited", start=mark))
            await trio.to_thread.run_sync(lambda: cluster.wait_for(r"ready: pool", start=mark, timeout=30))
            # Two lease periods later: the killed worker's nodes renewed elsewhere, nobody expired.
            await trio.sleep(12)
            assert await _keys(url) == keys
            with psycopg.connect(pg_dsn) as conn:
                assert {bytes(k) for k, in conn.execute("SELECT key FROM nodes")} == keys
                expired = conn.execute("SELECT count(*) FROM nodes_changes WHERE events <> '\\x90'::bytea "
                                       "AND origin = ''::bytea").fetchone()[0]
            assert expired == 0
            n.cancel_scope.cancel()
    trio.run(main)
    assert len(children(cluster.pid)) == 2


def test_sqlite_with_workers_is_refused_in_one_line(tmp_path):
    with Proc("run", "--workers", "2", "--data-dir", str(tmp_path), "--listen", "ws://127.0.0.1:0") as p:
        assert p.wait() == 2
    assert p.output.strip().splitlines() == [
        'galaxynode: config: server.workers: more than 1 worker needs [registry] backend = "postgresql" '
        '(a SQLite registry belongs to one process) (got 2 from the command line)']


def test_one_worker_reaches_out_for_the_pool(tmp_path, pg_dsn):
    """Peering and the main-net announcement run in the elected worker only: the main net and peers
    see one pool, not one per worker."""
    env = {"GALAXYNODE_REGISTRY_BACKEND": "postgresql", "GALAXYNODE_REGISTRY_DSN": pg_dsn}
    with live_pool(tmp_path / "data", env=env, args=("--workers", "2", "--mainnet", "ws://127.0.0.1:9")) as pool:
        first = pool.wait_for(r"ready: pool").end()
        pool.wait_for(r"ready: pool", start=first)
        pool.wait_for(r"announcing to main net")
        time.sleep(1.5)  # an election round more: still one
        assert pool.output.count("now runs the pool-wide duties") == 1
        assert pool.output.count("announcing to main net") == 1


def test_sighup_reaches_every_worker(cluster):
    mark = len(cluster.output)
    os.kill(cluster.pid, signal.SIGHUP)
    first = cluster.wait_for(r"reload", start=mark).end()
    cluster.wait_for(r"reload", start=first)
    assert cluster.alive() and len(children(cluster.pid)) == 2
