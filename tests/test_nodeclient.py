"""The node client and the client CLI against a real in-process pool (Server + PoolServices +
in-memory Registry) on loopback."""
from __future__ import annotations

import argparse
import gc
import json
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack

import attrs
import pytest
import trio

from galaxynode.cli import client as cli_client
from galaxynode.cli import common as cli_common
from galaxynode.events import EventBus
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity, format_public_key, write_key
from galaxynode.net import ChannelClosed, RemoteError, Server, SessionClosed
from galaxynode.nodeclient import JoinState, backoff_delay, connect, keep_joined, overloaded_delay
from galaxynode.pool import PoolInfo, PoolServices
from galaxynode.registry import Admission, LeaseTable, Registry
from galaxynode.registry.pacing import Grant, Pacer

NET = "test-net"
POOL = Identity.from_seed(b"\x01" * 32)
ADMIN = Identity.from_seed(b"\x02" * 32)
NODES = [Identity.from_seed(bytes([0x10 + i]) * 32) for i in range(6)]


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


# --- a pool in the test's nursery --------------------------------------------------------------

@attrs.define
class Pool:
    url: str
    port: int
    server: Server
    registry: Registry
    bus: EventBus
    handlers: list
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self, graceful: bool = True) -> None:
        if graceful:
            await self.server.shutdown()
        self.scope.cancel()
        await self.done.wait()


async def start_pool(nursery: trio.Nursery, *, port: int = 0, admission: Admission = Admission(),
                     page_max: int = 1000) -> Pool:
    bus = EventBus(origin=POOL.public)
    registry = Registry(LeaseTable(min_ttl=1, default_ttl=5, page_max=page_max, admission=admission), None, bus)
    services = PoolServices(PoolInfo(POOL.public, "test-pool", NET), registry, bus)
    handlers: list = []

    def handler_factory(conn):
        handlers.append(services.handler())
        return handlers[-1]
    server = Server(POOL, network=NET, handler_factory=handler_factory, listen_urls=(f"ws://127.0.0.1:{port}",))
    done = trio.Event()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as n:
                    await n.start(registry.run)
                    urls = await n.start(server.run)
                    task_status.started((scope, urls[0]))
        finally:
            done.set()
    scope, url = await nursery.start(run)
    return Pool(url, int(url.rsplit(":", 1)[1]), server, registry, bus, handlers, scope, done)


async def eventually(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PoolClient --------------------------------------------------------------------------------

async def test_join_then_query_with_filters_and_paging(nursery):
    pool = await start_pool(nursery)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(pool.url, ident, network=NET)) for ident in NODES]
        for i, c in enumerate(clients):
            lease = await c.join(capabilities=["cpu"] + (["gpu"] if i % 2 else []),
                                 meta={"zone": "eu" if i < 3 else "us"}, ttl=30)
            assert lease.ttl >= 30 and lease.ttl * 1000 >= 3 * lease.interval and lease.expires > time.time() * 1000
        q = clients[0]
        assert q.peer_key == POOL.public
        everyone = sorted(n.public for n in NODES)
        assert [r.key for r in await q.query()] == everyone
        gpu = await q.query(capabilities=["gpu"])
        assert {r.key for r in gpu} == {NODES[i].public for i in (1, 3, 5)}
        assert all(r.capabilities == ("cpu", "gpu") for r in gpu)
        eu_gpu = await q.query(capabilities=["gpu"], meta={"zone": "eu"})
        assert [r.key for r in eu_gpu] == [NODES[1].public] and eu_gpu[0].meta == {"zone": "eu"}
        assert [r.key for r in await q.query(key=NODES[4].public)] == [NODES[4].public]
        assert await q.query(capabilities=["tpu"]) == []
        # Paging: pages of 2 cover everyone once, in key order; query() follows cursors to its limit.
        pages = [page async for page in q.query_pages(limit=2)]
        assert [len(p.nodes) for p in pages] == [2, 2, 2] and pages[-1].cursor is None
        assert [r.key for p in pages for r in p.nodes] == everyone
        assert [r.key for r in await q.query(limit=3)] == everyone[:3]
        with pytest.raises(ValueError):
            await q.query(limit=0)
        with pytest.raises(TypeError):
            await q.query(capabilities="gpu")  # would silently mean g, p, u


async def test_query_follows_cursors_past_the_pools_page_size(nursery):
    pool = await start_pool(nursery, page_max=2)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(pool.url, ident, network=NET)) for ident in NODES[:5]]
        for c in clients:
            await c.join()
        assert len(await clients[0].query(limit=100)) == 5
        assert len(await clients[0].query(limit=3)) == 3


async def test_heartbeat_extends_and_leave_removes(nursery):
    pool = await start_pool(nursery)
    me = NODES[0].public
    async with connect(pool.url, NODES[0], network=NET) as c:
        lease = await c.join(ttl=5)
        await trio.sleep(0.02)
        longer = await c.heartbeat(ttl=20)
        assert longer.ttl >= 20 and longer.expires > lease.expires
        assert pool.registry.get(me).expires == longer.expires
        same = await c.heartbeat()
        assert 20 <= same.ttl <= 22  # renewed by the ttl asked (20), paced: interval <= 1.1 * 20/3 s
        await c.leave()
        assert pool.registry.get(me) is None
        with pytest.raises(RemoteError) as err:
            await c.heartbeat()
        assert err.value.code is ErrorCode.NOT_JOINED
        with pytest.raises(RemoteError) as err:
            await c.join(ttl=999_999 // 100)  # above the pool's max_ttl
        assert err.value.code is ErrorCode.BAD_TTL


async def test_status(nursery):
    pool = await start_pool(nursery)
    async with connect(pool.url, NODES[0], network=NET) as c:
        await c.join()
        st = await c.status()
    assert (st.key, st.name, st.network, st.role, st.nodes, st.peers) == (POOL.public, "test-pool", NET, "pool", 1, 0)


async def test_subscribe_receives_events_of_other_nodes(nursery):
    pool = await start_pool(nursery)
    async with connect(pool.url, NODES[0], network=NET) as watcher, \
            connect(pool.url, NODES[1], network=NET) as node:
        await watcher.subscribe(["node.joined"])
        events = watcher.events()
        await node.join(capabilities=["gpu"])
        with trio.fail_after(5):
            ev = await events.__anext__()
        assert ev.topic == "node.joined" and ev.data["key"] == NODES[1].public
        assert ev.data["capabilities"] == ["gpu"]
        # Swap patterns: the next event we see is the leave, not the re-join in between.
        await watcher.unsubscribe(["node.joined"])
        await watcher.subscribe(["node.left"])
        await node.join()
        await node.leave()
        with trio.fail_after(5):
            ev = await events.__anext__()
        assert ev.topic == "node.left"
        await events.aclose()
        with pytest.raises(RemoteError) as err:
            await watcher.subscribe(["bad pattern!"])
        assert err.value.code is ErrorCode.INVALID_BODY


async def test_event_buffer_drops_oldest_and_ends_with_the_session(nursery):
    pool = await start_pool(nursery)
    async with connect(pool.url, NODES[0], network=NET, event_buffer=2) as c:
        await c.subscribe(["test.*"])
        for i in range(5):
            pool.bus.publish(f"test.e{i}", {"i": i})
        await eventually(lambda: c.events_dropped == 3)
        await pool.stop()
        got = []
        with pytest.raises(SessionClosed):
            async for ev in c.events():
                got.append(ev.data["i"])
        assert got == [3, 4]
    # Closing locally ends the iteration quietly.
    pool = await start_pool(nursery)
    async with connect(pool.url, NODES[0], network=NET) as c:
        await c.close()
        assert [ev async for ev in c.events()] == []


async def test_admin_forbidden_without_admin_key_and_kick_ban_with_it(nursery):
    pool = await start_pool(nursery, admission=Admission(admins=frozenset({ADMIN.public})))
    victim = NODES[1].public
    async with connect(pool.url, NODES[0], network=NET) as plain, \
            connect(pool.url, ADMIN, network=NET) as admin:
        async with connect(pool.url, NODES[1], network=NET) as node:
            await node.join(capabilities=["gpu"])
            for action in ("nodes", "peers", "kick"):
                with pytest.raises(RemoteError) as err:
                    await plain.admin(action, key=victim)
                assert err.value.code is ErrorCode.FORBIDDEN
            items = await admin.admin("nodes")
            assert [m.NodeRecord.from_body(i).key for i in items] == [victim]
            assert await admin.admin("peers") == []
            assert await admin.admin("kick", key=victim) == []
            assert pool.registry.get(victim) is None
            with pytest.raises(RemoteError) as err:
                await admin.admin("kick", key=victim)
            assert err.value.code is ErrorCode.NOT_FOUND
            await node.join()  # a kicked node may come back
            await admin.admin("ban", key=victim, duration=60)
            assert pool.registry.get(victim) is None
            with pytest.raises(RemoteError) as err:
                await node.join()
            assert err.value.code is ErrorCode.BANNED
        await admin.admin("unban", key=victim)
        async with connect(pool.url, NODES[1], network=NET) as node:
            await node.join()


async def test_connect_failures_are_typed(nursery):
    with pytest.raises(ChannelClosed):
        async with connect(f"ws://127.0.0.1:{closed_port()}", NODES[0], network=NET, timeout=2):
            pass
    pool = await start_pool(nursery)
    with pytest.raises(RemoteError) as err:
        async with connect(pool.url, NODES[0], network="other-net"):
            pass
    assert err.value.code is ErrorCode.NETWORK_MISMATCH


async def test_connect_accepts_a_key_file(nursery, tmp_path):
    path = tmp_path / "node.key"
    write_key(NODES[2], path)
    pool = await start_pool(nursery)
    async with connect(pool.url, str(path), network=NET) as c:
        await c.join()
    assert pool.registry.get(NODES[2].public) is not None


# --- keep_joined -------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.states: list[JoinState] = []

    def __call__(self, st: JoinState) -> None:
        self.states.append(st)

    def kinds(self) -> list[str]:
        return [s.kind for s in self.states]

    async def wait_for(self, kind: str, count: int = 1) -> JoinState:
        await eventually(lambda: self.kinds().count(kind) >= count)
        return [s for s in self.states if s.kind == kind][count - 1]


async def test_keep_joined_reconnects_after_a_pool_restart_and_leaves_on_cancel(nursery):
    pool = await start_pool(nursery)
    me = NODES[0].public
    rec = Recorder()
    async with trio.open_nursery() as keeper:
        keeper.start_soon(lambda: keep_joined(pool.url, NODES[0], capabilities=["gpu"], meta={"zone": "eu"}, ttl=3,
                                              network=NET, on_event=rec, backoff_min=0.05, backoff_max=0.2))
        joined = await rec.wait_for("joined")
        assert joined.lease.ttl >= 3 and joined.pool_key == POOL.public
        assert pool.registry.get(me).capabilities == ("gpu",)

        await pool.stop()
        lost = await rec.wait_for("disconnected")
        assert isinstance(lost.error, (SessionClosed, ChannelClosed, RemoteError)) and lost.retry_in <= 0.2
        await rec.wait_for("disconnected", 2)  # the port is closed now: refused, backing off
        pool = await start_pool(nursery, port=pool.port)  # a fresh registry: only a rejoin puts us there
        await rec.wait_for("rejoined")
        entry = pool.registry.get(me)
        assert entry.capabilities == ("gpu",) and dict(entry.meta) == {"zone": "eu"}
        keeper.cancel_scope.cancel()
    assert pool.registry.get(me) is None


async def test_keep_joined_heartbeats_at_the_lease_interval_not_at_ttl_thirds(nursery, monkeypatch):
    """A pool asking for a heartbeat every 200 ms on a 60 s lease gets them (ttl/3 would be 20 s), and
    none sooner than the session's bucket allows: the session is never refused."""
    monkeypatch.setattr(Pacer, "grant", lambda self, asked, n: Grant(interval=200, ttl=60))
    pool = await start_pool(nursery)
    renewals: list[int] = []
    renew = pool.registry.renew

    async def counted(key, **kw):
        renewals.append(kw.get("granted"))
        return await renew(key, **kw)
    monkeypatch.setattr(pool.registry, "renew", counted)
    rec = Recorder()
    async with trio.open_nursery() as keeper:
        keeper.start_soon(lambda: keep_joined(pool.url, NODES[0], ttl=60, network=NET, on_event=rec))
        await rec.wait_for("joined")
        await eventually(lambda: len(renewals) >= 3)
        keeper.cancel_scope.cancel()
    assert rec.kinds() == ["joined"] and renewals[:3] == [60] * 3


def test_overloaded_delay_waits_retry_after_plus_up_to_a_fifth():
    import random
    delays = [overloaded_delay(40_000, 30.0, random.Random(i)) for i in range(100)]
    assert all(40 <= d <= 48 for d in delays) and len(set(delays)) > 50
    assert overloaded_delay(None, 30.0) == 30.0  # a pool that sent no retry_after: the longest backoff


async def test_keep_joined_heartbeats_and_rejoins_after_a_kick(nursery):
    pool = await start_pool(nursery)
    me = NODES[0].public
    rec = Recorder()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: keep_joined(pool.url, NODES[0], ttl=1, network=NET, on_event=rec))
        await rec.wait_for("joined")
        first = pool.registry.get(me).expires
        await eventually(lambda: pool.registry.get(me) is not None and pool.registry.get(me).expires > first)
        await pool.registry.kick(me)
        await rec.wait_for("rejoined")
        assert pool.registry.get(me) is not None
        assert "disconnected" not in rec.kinds()  # same session throughout
        n.cancel_scope.cancel()
    assert pool.registry.get(me) is None


async def test_keep_joined_gives_up_on_permanent_refusals(nursery):
    pool = await start_pool(nursery, admission=Admission(mode="allowlist"))
    with pytest.raises(RemoteError) as err:
        await keep_joined(pool.url, NODES[0], network=NET, backoff_min=0.01, backoff_max=0.01)
    assert err.value.code is ErrorCode.NOT_ADMITTED
    with pytest.raises(ValueError):
        await keep_joined(pool.url, NODES[0], network=NET, backoff_min=2, backoff_max=1)


def test_backoff_grows_to_the_cap_with_jitter():
    import random
    rng = random.Random(7)
    for attempt, base in [(0, 1), (1, 2), (3, 8), (5, 30), (500, 30)]:
        for _ in range(20):
            assert base / 2 <= backoff_delay(attempt, 1, 30, rng) <= base
    assert len({backoff_delay(2, 1, 30, rng) for _ in range(10)}) > 1


# --- CLI ---------------------------------------------------------------------------------------

GN = [sys.executable, "-m", "galaxynode"]


async def gn(*args: str) -> subprocess.CompletedProcess:
    with trio.fail_after(20):
        r = await trio.run_process([*GN, *args], capture_stdout=True, capture_stderr=True, check=False)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


class Lines:
    """Reads a child's stdout line by line."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self, timeout: float = 10.0) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self.buf:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(self.buf.decode())
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


async def test_cli_query_json_and_table(nursery, tmp_path):
    pool = await start_pool(nursery)
    async with connect(pool.url, NODES[0], network=NET) as a, connect(pool.url, NODES[1], network=NET) as b:
        await a.join(capabilities=["gpu"], meta={"zone": "eu"})
        await b.join(capabilities=["cpu"])
        r = await gn("query", pool.url, "--network", NET, "--json", "--capability", "gpu", "--meta", "zone=eu")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out == [{"key": NODES[0].public_text, "capabilities": ["gpu"], "meta": {"zone": "eu"},
                        "expires": pool.registry.get(NODES[0].public).expires, "pool": None}]
        key = tmp_path / "q.key"
        write_key(NODES[5], key)
        r = await gn("query", pool.url, "--network", NET, "--key", str(key), "--limit", "1")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["KEY", "CAPABILITIES", "META", "EXPIRES"] and len(lines) == 2
        first = min(NODES[:2], key=lambda i: i.public)
        assert lines[1].startswith(first.public_text)


async def test_cli_status_json(nursery):
    pool = await start_pool(nursery)
    r = await gn("status", pool.url, "--network", NET, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["key"] == POOL.public_text and st["name"] == "test-pool" and st["nodes"] == 0


async def test_cli_admin(nursery, tmp_path):
    pool = await start_pool(nursery, admission=Admission(admins=frozenset({ADMIN.public})))
    admin_key, plain_key = tmp_path / "admin.key", tmp_path / "plain.key"
    write_key(ADMIN, admin_key)
    write_key(NODES[0], plain_key)
    async with connect(pool.url, NODES[1], network=NET) as node:
        await node.join()
        victim = NODES[1].public_text
        r = await gn("admin", pool.url, "--network", NET, "--key", str(plain_key), "kick", victim)
        assert r.returncode == 1 and "forbidden" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        r = await gn("admin", pool.url, "--network", NET, "--key", str(admin_key), "nodes", "--json")
        assert r.returncode == 0, r.stderr
        assert [n["key"] for n in json.loads(r.stdout)] == [victim]
        r = await gn("admin", pool.url, "--network", NET, "--key", str(admin_key), "kick", victim)
        assert r.returncode == 0 and r.stdout == f"kicked {victim}\n", r.stderr
        assert pool.registry.get(NODES[1].public) is None
        r = await gn("admin", pool.url, "--network", NET, "--key", str(admin_key), "kick")
        assert r.returncode == 2 and "needs NODE_KEY" in r.stderr


async def test_cli_node_join_until_sigterm_then_leaves(nursery, tmp_path):
    pool = await start_pool(nursery)
    key = tmp_path / "node.key"
    write_key(NODES[3], key)
    async with trio.open_nursery() as n:
        proc = await n.start(lambda task_status: trio.run_process(
            [*GN, "node", "join", pool.url, "--network", NET, "--key", str(key), "--capability", "gpu",
             "--meta", "zone=eu", "--ttl", "5"], stdout=subprocess.PIPE, check=False, task_status=task_status))
        line = await Lines(proc.stdout).next()
        assert line.startswith(f"joined {pool.url} as {NODES[3].public_text}") and re.search(r"lease [56]s", line)
        assert pool.registry.get(NODES[3].public).capabilities == ("gpu",)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
        assert proc.returncode == 0
    assert pool.registry.get(NODES[3].public) is None


async def test_cli_watch_prints_events_until_interrupted(nursery):
    pool = await start_pool(nursery)
    async with trio.open_nursery() as n:
        proc = await n.start(lambda task_status: trio.run_process(
            [*GN, "watch", pool.url, "node.*", "--network", NET, "--json"], stdout=subprocess.PIPE,
            check=False, task_status=task_status))
        await eventually(lambda: any(h.patterns for h in pool.handlers), timeout=10)
        async with connect(pool.url, NODES[4], network=NET) as node:
            await node.join()
        ev = json.loads(await Lines(proc.stdout).next())
        assert ev["topic"] == "node.joined" and ev["data"]["key"] == NODES[4].public_text
        assert ev["origin"] == POOL.public_text
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await proc.wait()
        assert proc.returncode == 0


async def test_cli_failures_are_one_line():
    r = await gn("query", f"ws://127.0.0.1:{closed_port()}", "--timeout", "2")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "cannot connect" in r.stderr, r.stderr
    r = await gn("status", "http://127.0.0.1:1")
    assert r.returncode == 2 and "scheme must be ws or wss" in r.stderr


def test_cli_output_helpers():
    rec = m.NodeRecord(key=NODES[0].public, capabilities=("a", "b"), meta={"z": "1"}, expires=61_000,
                       pool=POOL.public)
    table = cli_client.nodes_table([rec], now_ms=0).splitlines()
    assert table[0].split() == ["KEY", "CAPABILITIES", "META", "EXPIRES", "POOL"]
    assert table[1].split() == [NODES[0].public_text, "a,b", "z=1", "in", "1m01s", format_public_key(POOL.public)]
    ev = m.Event(topic="node.joined", event_id=b"\0" * 16, origin=ADMIN.public, ts=0, data={"k": b"\xff"})
    assert cli_client.event_line(ev, POOL.public, as_json=False) == \
        f'1970-01-01T00:00:00.000Z node.joined {{"k": "ff"}} (from {ADMIN.public_text})'
    assert json.loads(cli_client.event_line(ev, POOL.public, as_json=True))["data"] == {"k": "ff"}
    assert cli_common.meta_pair("a=b=c") == ("a", "b=c")
    with pytest.raises(argparse.ArgumentTypeError):
        cli_common.meta_pair("novalue")
