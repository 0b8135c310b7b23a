"""The dashboard over HTTP: every JSON endpoint, the token, [dashboard] enabled = false, escaping of
attacker-controlled strings, and the SSE stream (events arrive; a client that never reads is dropped at its
byte budget while another keeps streaming; the stream cap). In-process daemon runtimes (the real kernel and
modules), and one daemon process."""

from __future__ import annotations

import gc
import json
import signal
import socket
import urllib.error
import urllib.request
from contextlib import asynccontextmanager

import pytest
import trio

from galaxynode.config import load_config
from galaxynode.daemon import CORE_MODULES, POOL_MODULES, Runtime
from galaxynode.dashboard import CSP
from galaxynode.identity import Identity
from galaxynode.metrics import worker_listen
from galaxynode.modules import Kernel
from galaxynode.net import SessionLimits
from galaxynode.nodeclient import connect
from procutil import Proc

NET = "dash-test"
POOL = Identity.from_seed(bytes([0x5D]) * 32)
LIMITS = SessionLimits(close_timeout=0.5, handshake_timeout=5.0)
EVIL = "<script>alert(1)</script>\x1b[31mred\x1b[0m\n\ndata: forged"


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()  # a leaked socket shows up as a ResourceWarning (an error) here


def runtime(tmp_path, identity: Identity, *, role: str = "pool", **overrides) -> Kernel:
    """The modules `galaxynode run` (or `mainnet`) loads, in this process, data in tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_config(env={}, overrides={
        "network.id": NET, "data.dir": str(tmp_path), "server.listen": ["ws://127.0.0.1:0"], "node.role": role,
        "daemon.watchdog": False, **overrides})
    modules = CORE_MODULES if role == "mainnet" else POOL_MODULES
    return Kernel([mod() for mod in modules], config=Runtime(config, identity), stop_timeout=2)


@asynccontextmanager
async def daemon(tmp_path, *, role: str = "pool", **overrides):
    """One daemon runtime with a metrics listener; yields (container, (host, port))."""
    async with runtime(tmp_path, POOL, role=role, **{"metrics.listen": "127.0.0.1:0", **overrides}).run() as container:
        url = container.get("metrics").urls[0]
        host, _, port = url.removeprefix("http://").removesuffix("/metrics").rpartition(":")
        yield container, (host, int(port))


async def get(address, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET (the server closes after its answer): status, headers (lower-case), body."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}, body


async def api(address, name: str, **headers: str) -> dict:
    status, _, body = await get(address, "/dashboard/api/" + name, headers)
    assert status == 200, body
    return json.loads(body)


class SSE:
    """A stream client: `events()` parses what arrived (name, data) as it comes."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buffer = b""
        self.status = 0

    @classmethod
    async def open(cls, address, query: str = "", *, rcvbuf: int | None = None, headers: str = "") -> "SSE":
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the receive window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(address)
        self = cls(trio.SocketStream(sock))
        await self.stream.send_all(f"GET /dashboard/api/stream{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        return self

    async def head(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(head.split()[1]) if head else 0
        return self.status

    async def next(self) -> tuple[str, dict]:
        while True:
            while b"\n\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError
                self.buffer += chunk
            block, _, self.buffer = self.buffer.partition(b"\n\n")
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
                          and not line.startswith(":"))
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])

    async def until(self, name: str, check=lambda d: True, timeout: float = 20) -> dict:
        with trio.fail_after(timeout):
            while True:
                event, data = await self.next()
                if event == name and check(data):
                    return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_every_endpoint_escapes_and_shows_live_state(tmp_path):
    async with daemon(tmp_path) as (container, address):
        for page in ("", "nodes", "peers", "events", "bans", "app.js", "style.css"):
            status, headers, _ = await get(address, "/dashboard/" + page)
            assert status == 200 and headers["content-security-policy"] == CSP
            assert headers["x-content-type-options"] == "nosniff"
        o = await api(address, "overview")
        assert o["key"] == POOL.public_text and o["role"] == "pool" and o["network"] == NET
        assert o["nodes"] == 0 and o["ready"] is True and o["not_ready"] == {} and o["history"]
        url = container.get("server").bound_urls[0]
        async with connect(url, Identity.generate(), network=NET, limits=LIMITS) as node:
            lease = await node.join(capabilities=["gpu"], meta={"note": EVIL}, ttl=60)
            status, _, raw = await get(address, "/dashboard/api/nodes?cap=gpu")
            assert status == 200 and b"<" not in raw and b"\x1b" not in raw and b"\\u003cscript" in raw
            (row,) = json.loads(raw)["nodes"]
            assert row["meta"] == {"note": EVIL} and row["capabilities"] == ["gpu"] and row["session"] is True
            assert 0 < row["lease_left_s"] <= lease.ttl
            assert (await api(address, "nodes?meta=note=other"))["nodes"] == []
            assert (await get(address, "/dashboard/api/nodes?cursor=zz"))[0] == 400
            o = await api(address, "overview")
            assert o["nodes"] == 1 and o["sessions"] == 1
            events = (await api(address, "events?topics=node.*"))["events"]
            assert [e["topic"] for e in events] == ["node.joined"] and events[0]["data"]["meta"] == {"note": EVIL}
            assert events[0]["data"]["key"] == node.peer_key.hex() or events[0]["data"]["key"].startswith("ed25519:")
            assert (await api(address, "events?topics=peer.*"))["events"] == []
            assert (await get(address, "/dashboard/api/events?topics=a..b"))[0] == 400
        registry, server = container.get("registry"), container.get("server")
        banned = Identity.generate()
        await registry.ban(banned.public, until=registry.clock() + 600_000)
        for _ in range(server.bans.violations_before_ban):
            server.bans.record_violation(host="192.0.2.7", key=None, now=trio.current_time(), error="junk")
        bans = (await api(address, "bans"))["bans"]
        assert {(b["kind"], b["subject"], b["by"]) for b in bans} == {
            ("key", banned.public_text, "admin"), ("address", "192.0.2.7", "violations")}
        assert all(0 < b["left_s"] <= 600 for b in bans)
        assert (await api(address, "peers")) == {"peers": []}
        assert (await get(address, "/dashboard/api/pools"))[0] == 404  # a pool lists no pools


async def test_peers_page_shows_a_connected_peer_with_its_descriptor(tmp_path):
    async with daemon(tmp_path / "a", **{"peers.accept": "any"}) as (a, address):
        url = a.get("server").bound_urls[0]
        other = Identity.from_seed(bytes([0x5E]) * 32)
        async with runtime(tmp_path / "b", other, **{"peers.static": [{"url": url, "key": POOL.public_text}],
                                                      "node.name": "bee"}).run():
            with trio.fail_after(20):
                while not (peers := (await api(address, "peers"))["peers"]) or "descriptor" not in peers[0]:
                    await trio.sleep(0.1)
    (peer,) = peers
    assert peer["key"] == other.public_text and peer["state"] == "connected" and peer["direction"] == "inbound"
    assert peer["standing"] == "good" and peer["descriptor"]["name"] == "bee"


async def test_main_net_lists_its_pools(tmp_path):
    async with daemon(tmp_path / "m", role="mainnet", **{"mainnet.verify": False}) as (m, address):
        mainnet_url = m.get("server").bound_urls[0]
        assert (await api(address, "overview"))["role"] == "mainnet"
        assert (await get(address, "/dashboard/pools"))[0] == 200
        async with runtime(tmp_path / "p", Identity.generate(), **{"mainnet.url": mainnet_url,
                                                                   "node.name": "<b>pool</b>"}).run() as p:
            with trio.fail_after(20):
                while not (pools := (await api(address, "pools"))["pools"]):
                    await trio.sleep(0.1)
            (pool,) = pools
            assert pool["name"] == "<b>pool</b>" and pool["network"] == NET and pool["lease_left_s"] > 0
            assert pool["endpoints"] == p.get("server").bound_urls and pool["seq"] > 0


async def test_token_guards_every_api_route_in_constant_time_compare(tmp_path):
    async with daemon(tmp_path, **{"dashboard.token": "s3cret-token"}) as (_, address):
        for name in ("overview", "nodes", "peers", "events", "bans", "pools", "stream"):
            status, headers, _ = await get(address, "/dashboard/api/" + name)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert (await get(address, "/dashboard/api/" + name, {"Authorization": "Bearer s3cret-tokeX"}))[0] == 401
            assert (await get(address, "/dashboard/api/" + name, {"Authorization": "Basic s3cret-token"}))[0] == 401
        assert (await api(address, "overview", Authorization="Bearer s3cret-token"))["nodes"] == 0
        assert (await get(address, "/dashboard/"))[0] == 200  # the page itself carries no data
        sse = await SSE.open(address, headers="Authorization: Bearer s3cret-token\r\n")
        with trio.fail_after(10):
            assert await sse.head() == 200
        await sse.until("overview")
        await sse.aclose()


async def test_disabled_dashboard_serves_nothing(tmp_path):
    async with daemon(tmp_path, **{"dashboard.enabled": False}) as (_, address):
        for path in ("/dashboard/", "/dashboard/app.js", "/dashboard/api/overview", "/dashboard/api/stream"):
            assert (await get(address, path))[0] == 404
        assert (await get(address, "/metrics"))[0] == 200


async def test_stream_carries_overview_and_events(tmp_path):
    async with daemon(tmp_path) as (container, address):
        assert (await get(address, "/dashboard/api/stream?topics=a..b"))[0] == 400
        sse = await SSE.open(address, "?topics=node.*")
        with trio.fail_after(10):
            assert await sse.head() == 200
        first = await sse.until("overview")
        assert first["history"] and first["nodes"] == 0
        url = container.get("server").bound_urls[0]
        async with connect(url, Identity.generate(), network=NET, limits=LIMITS) as node:
            await node.join(meta={"note": EVIL}, ttl=60)
            joined = await sse.until("event", lambda d: d["topic"] == "node.joined")
            assert joined["data"]["meta"]["note"] == EVIL
            await sse.until("overview", lambda d: d["nodes"] == 1 and d["sample"]["nodes"] == 1)
        await sse.aclose()


async def test_a_client_that_never_reads_is_dropped_at_its_budget_while_another_streams(tmp_path):
    async with daemon(tmp_path) as (container, address):
        metrics, bus = container.get("metrics"), container.get("bus")
        metrics.stream_budget = 16 * 1024
        stuck = await SSE.open(address, "?topics=node.test&overview=0", rcvbuf=4096)
        reader = await SSE.open(address, "?topics=node.test&overview=0")
        with trio.fail_after(10):
            assert await reader.head() == 200
            while metrics.streams < 2:
                await trio.sleep(0.01)
        seen = 0

        async def read() -> None:
            nonlocal seen
            while True:
                seen = (await reader.until("event"))["data"]["n"]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            n = 0
            with trio.fail_after(60):
                while metrics.streams_dropped == 0:
                    n += 1
                    bus.publish("node.test", {"n": n, "pad": "x" * 1000})
                    await trio.sleep(0.002)
                assert metrics.streams == 1  # the stuck one went; the reader is still there
                for _ in range(20):
                    n += 1
                    bus.publish("node.test", {"n": n, "pad": "x" * 1000})
                    await trio.sleep(0.005)
                while seen < n:  # the reader got everything, the last events after the drop included
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert metrics.streams_dropped == 1 and metrics.streams == 1
        with trio.fail_after(10):  # the stuck client finds its stream closed once it reads
            with pytest.raises((EOFError, trio.BrokenResourceError)):
                while True:
                    await stuck.next()
        await stuck.aclose()
        await reader.aclose()
        status, _, body = await get(address, "/metrics")
        assert b'galaxynode_http_streams_ended_total{reason="budget"} 1.0' in body


async def test_stream_cap_refuses_the_next_stream_and_frees_its_slot(tmp_path):
    async with daemon(tmp_path) as (container, address):
        metrics = container.get("metrics")
        metrics.max_streams = 2
        streams = [await SSE.open(address, "?topics=") for _ in range(2)]
        with trio.fail_after(10):
            for s in streams:
                assert await s.head() == 200
        status, headers, _ = await get(address, "/dashboard/api/stream")
        assert status == 503 and headers["retry-after"] == "10" and metrics.streams_refused == 1
        assert (await api(address, "overview"))["nodes"] == 0  # other routes still answer
        await streams.pop().aclose()
        with trio.fail_after(10):
            while metrics.streams > 1:
                await trio.sleep(0.01)
        again = await SSE.open(address)
        with trio.fail_after(10):
            assert await again.head() == 200
        await again.until("overview")
        for s in (*streams, again):
            await s.aclose()


def test_each_worker_serves_its_dashboard_on_its_own_port():
    assert worker_listen("127.0.0.1:9101", None) == "127.0.0.1:9101"
    assert worker_listen("127.0.0.1:9101", 2) == "127.0.0.1:9103"
    assert worker_listen("[::1]:9101", 1) == "[::1]:9102"
    assert worker_listen("127.0.0.1:0", 3) == "127.0.0.1:0"


def test_dashboard_in_a_daemon_process(tmp_path):
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
              env={"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0", "GALAXYNODE_DASHBOARD_TOKEN": "tok"}) as d:
        url = d.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/)metrics").group(1) + "dashboard/"
        d.wait_for("ready: pool")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Security-Policy"] == CSP and b"app.js" in r.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "api/overview", timeout=10)
        refused.value.close()
        assert refused.value.code == 401
        request = urllib.request.Request(url + "api/overview", headers={"Authorization": "Bearer tok"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert json.loads(r.read())["ready"] is True
        with pytest.raises(urllib.error.HTTPError) as post:
            urllib.request.urlopen(urllib.request.Request(url + "api/overview", data=b"x", method="POST"), timeout=10)
        post.value.close()
        assert post.value.code == 405
        assert d.stop(signal.SIGTERM) == 0
        assert "Traceback" not in d.output
