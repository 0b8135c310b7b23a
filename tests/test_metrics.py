"""Prometheus metrics: in-process daemon runtimes (the real kernel and modules) scraped over HTTP on
loopback, the HTTP endpoint's handling of junk, and the daemon as a process."""
from __future__ import annotations

import gc
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from galaxynode.config import load_config
from galaxynode.daemon import POOL_MODULES, Runtime
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.metrics import MetricsServer
from galaxynode.modules import Kernel
from galaxynode import __version__
from galaxynode.net import RemoteError, SessionLimits, connect
from procutil import Proc

NET = "metrics-test"
POOLS = [Identity.from_seed(bytes([0x70 + i]) * 32) for i in range(2)]
NODE = Identity.from_seed(bytes([0x7A]) * 32)
LIMITS = SessionLimits(close_timeout=0.5, handshake_timeout=2.0)


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()  # a leaked socket shows up as a ResourceWarning (an error) here


@asynccontextmanager
async def pool(tmp_path, identity: Identity, *, metrics: bool = True, **overrides):
    """One daemon runtime in this process: the modules `galaxynode run` loads, its data in tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_config(env={}, overrides={
        "network.id": NET, "data.dir": str(tmp_path), "server.listen": ["ws://127.0.0.1:0"],
        "metrics.listen": "127.0.0.1:0" if metrics else "", "registry.min_ttl": 1,
        "registry.expiry_interval": 0.05, "daemon.watchdog": False, **overrides})
    kernel = Kernel([mod() for mod in POOL_MODULES], config=Runtime(config, identity), stop_timeout=2)
    async with kernel.run() as container:
        yield container


def metrics_address(container) -> tuple[str, int]:
    url = container.get("metrics").urls[0]
    host, _, port = url.removeprefix("http://").removesuffix("/metrics").rpartition(":")
    return host, int(port)


async def http(address: tuple[str, int], request: bytes, *, eof: bool = False) -> bytes:
    """Send raw bytes (then half-close if `eof`), read the whole response (the server closes after one)."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(request)
        if eof:
            await stream.send_eof()
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


async def scrape(container) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    response = await http(metrics_address(container), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def until(container, check, timeout: float = 10.0) -> dict:
    """Scrape until check(samples) holds (counters of a closing session settle on the server's side)."""
    with trio.fail_after(timeout):
        while True:
            samples = await scrape(container)
            if check(samples):
                return samples
            await trio.sleep(0.02)


async def test_handshake_join_and_bad_frame_are_counted(tmp_path):
    async with pool(tmp_path, POOLS[0]) as container:
        before = await scrape(container)
        assert value(before, "galaxynode_info", network=NET, role="pool", name="galaxynode",
                     key=POOLS[0].public_text, version=__version__) == 1
        assert value(before, "galaxynode_handshakes_total", result="ok") == 0
        assert value(before, "galaxynode_registry_nodes") == 0
        url = container.get("server").bound_urls[0]
        async with connect(url, NODE, network=NET, limits=LIMITS) as conn:
            live = await scrape(container)
            assert value(live, "galaxynode_sessions_connected", role="node") == 1
            assert (await conn.request(m.Join(ttl=1), timeout=5)).type == "LEASE"
            await conn.send(m.Error(code=int(ErrorCode.INTERNAL), name="internal", message="just saying"))
            await conn.send(m.Error(code=64999, name="private", message="a code we do not know"))
            assert (await conn.request(m.Heartbeat(), timeout=5)).type == "LEASE"  # the ERRORs are in
            # one lease, the default budget of 1000 heartbeats/s: pacing asks for no less than 1 ms
            assert value(await scrape(container), "galaxynode_heartbeat_interval_floor_seconds") == 0.001
            await conn.channel.send(b"\x93\x01junk")  # not a frame: MALFORMED_FRAME, fatal
            await conn.wait_closed()
        assert conn.remote_error is not None and conn.remote_error.code == ErrorCode.MALFORMED_FRAME
        after = await until(container, lambda s: value(s, "galaxynode_leases_expired_total") == 1
                            and value(s, "galaxynode_sessions_connected", role="node") == 0)
    assert value(after, "galaxynode_handshakes_total", result="ok") == 1
    assert value(after, "galaxynode_handshakes_total", result="failed") == 0
    assert value(after, "galaxynode_registry_commit_failures_total") == 0
    assert value(after, "galaxynode_registry_changes_refused_total") == 0
    assert value(after, "galaxynode_handshake_duration_seconds_count") == 1
    assert value(after, "galaxynode_handshake_duration_seconds_bucket", le="+Inf") == 1
    # behaviour, not speed: a handshake that completed took no longer than the pool allows one
    assert 0 < value(after, "galaxynode_handshake_duration_seconds_sum") <= load_config(env={}).limits.handshake_timeout
    assert value(after, "galaxynode_frames_received_total", type="JOIN") == 1
    assert value(after, "galaxynode_frames_received_total", type="ERROR") == 2
    assert value(after, "galaxynode_frames_received_total", type="undecoded") == 1
    assert value(after, "galaxynode_frames_received_total", type="HEARTBEAT") == 1
    assert value(after, "galaxynode_frames_sent_total", type="LEASE") == 2
    assert value(after, "galaxynode_frames_sent_total", type="ERROR") == 1
    assert value(after, "galaxynode_errors_sent_total", code="1000", name="malformed_frame") == 1
    assert value(after, "galaxynode_errors_received_total", code="9000", name="internal") == 1
    assert value(after, "galaxynode_errors_received_total", code="unknown", name="unknown") == 1
    assert value(after, "galaxynode_violations_total") == 1
    assert value(after, "galaxynode_joins_refused_overloaded_total") == 0
    assert value(after, "galaxynode_heartbeats_refused_early_total") == 0
    assert value(after, "galaxynode_bytes_received_total") > value(before, "galaxynode_bytes_received_total")
    assert value(after, "galaxynode_connections_accepted_total") == 1
    assert value(after, "galaxynode_registry_nodes") == 0  # joined, then expired
    assert value(after, "galaxynode_events_published_total") >= 2  # node.joined, node.expired
    assert value(after, "galaxynode_peers_connected", direction="inbound") == 0


async def test_refusals_and_failed_handshakes_are_counted(tmp_path):
    async with pool(tmp_path, POOLS[0]) as container:
        url = container.get("server").bound_urls[0]
        with pytest.raises(RemoteError) as refused:
            async with connect(url, NODE, network="another-network", limits=LIMITS):
                pass
        assert refused.value.code == ErrorCode.NETWORK_MISMATCH
        samples = await until(container, lambda s: value(s, "galaxynode_handshakes_total", result="failed") == 1)
    assert value(samples, "galaxynode_errors_sent_total", code="3002", name="network_mismatch") == 1
    assert value(samples, "galaxynode_handshakes_total", result="ok") == 0
    assert value(samples, "galaxynode_handshake_duration_seconds_count") == 0


async def test_two_runtimes_in_one_process_have_their_own_metrics_and_see_their_peer(tmp_path):
    async with pool(tmp_path / "a", POOLS[0], **{"peers.accept": "any"}) as a:  # b is static on b's side only
        url_a = a.get("server").bound_urls[0]
        peer = {"url": url_a, "key": POOLS[0].public_text}
        async with pool(tmp_path / "b", POOLS[1], **{"peers.static": [peer]}) as b:
            sa = await until(a, lambda s: value(s, "galaxynode_peers_connected", direction="inbound") == 1)
            sb = await until(b, lambda s: value(s, "galaxynode_peers_connected", direction="outbound") == 1)
            assert value(sa, "galaxynode_sessions_connected", role="pool") == 1
            assert value(sa, "galaxynode_handshakes_total", result="ok") == 1
            assert value(sa, "galaxynode_peer_claims_refused_total", kind="event") == 0
            assert value(sa, "galaxynode_peer_queries_duplicate_total") == 0
            # b dialled out: its server saw no handshake, and its registry is its own
            assert value(sb, "galaxynode_handshakes_total", result="ok") == 0
            assert value(sb, "galaxynode_info", network=NET, role="pool", name="galaxynode",
                         key=POOLS[1].public_text, version=__version__) == 1
            assert "galaxynode_mainnet_announce_state" not in {n for n, _ in sb}
            # ... but the frames of the session it dialled are counted (it sends its descriptor first)
            sb = await until(b, lambda s: value(s, "galaxynode_frames_sent_total", type="DESCRIPTORS") > 0)
            assert value(sb, "galaxynode_bytes_sent_total") > 0


async def flaky_plugin(ctx) -> None:
    """Crashes on its first run in a data dir, then idles: one plugin restart to count."""
    marker = Path(ctx.data_dir, "flaky-plugin-crashed")
    if not marker.exists():
        marker.touch()
        raise RuntimeError("first run crashes")
    await trio.sleep_forever()


async def test_mainnet_announce_and_plugin_restarts(tmp_path):
    async with pool(tmp_path / "mainnet", POOLS[0], **{"node.role": "mainnet"}) as mainnet:
        url = mainnet.get("server").bound_urls[0]
        async with pool(tmp_path / "pool", POOLS[1], **{"mainnet.url": url, "plugins.enabled": [
                "test_metrics:flaky_plugin"], "plugins.backoff_base": 0.01}) as p:
            samples = await until(p, lambda s: value(s, "galaxynode_mainnet_announce_state", state="announced") == 1
                                  and value(s, "galaxynode_plugin_state", plugin="test_metrics",
                                            state="running") == 1)
            assert abs(value(samples, "galaxynode_mainnet_last_announce_timestamp_seconds") - time.time()) < 60
            assert value(samples, "galaxynode_mainnet_lease_expiry_timestamp_seconds") > time.time()
            assert value(samples, "galaxynode_mainnet_announces_total") >= 1
            assert value(samples, "galaxynode_mainnet_announce_state", state="backoff") == 0
            assert value(samples, "galaxynode_plugin_restarts_total", plugin="test_metrics") == 1
            assert value(samples, "galaxynode_plugin_crashes_total", plugin="test_metrics") == 1
            on_mainnet = await until(mainnet, lambda s: value(s, "galaxynode_registry_nodes") == 1)
    assert value(on_mainnet, "galaxynode_sessions_connected", role="pool") == 1
    assert value(on_mainnet, "galaxynode_mainnet_announces_refused_total") == 0
    assert value(on_mainnet, "galaxynode_info", network=NET, role="mainnet", name="galaxynode",
                 key=POOLS[0].public_text, version=__version__) == 1


async def test_http_endpoint_answers_junk_cleanly_and_keeps_serving(tmp_path):
    async with pool(tmp_path, POOLS[0]) as container:
        address = metrics_address(container)
        assert (await http(address, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        post = await http(address, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post
        assert (await http(address, b"junk\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await http(address, b"\x00\xff\xfe GET\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await http(address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)).startswith(b"HTTP/1.1 431 ")
        assert await http(address, b"GET /metr", eof=True) == b""  # the client gave up half-way: no answer
        head = await http(address, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        openmetrics = await http(address, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n")
        assert b"application/openmetrics-text" in openmetrics.split(b"\r\n\r\n")[0]
        assert openmetrics.rstrip().endswith(b"# EOF")
        assert value(await scrape(container), "galaxynode_registry_nodes") == 0


async def test_slow_and_excess_clients_are_cut_off():
    server = MetricsServer(CollectorRegistry(), "127.0.0.1:0", timeout=0.3, max_clients=2)
    async with trio.open_nursery() as nursery:
        host_port = (await nursery.start(server.run))[0].removeprefix("http://").removesuffix("/metrics")
        address = (host_port.rpartition(":")[0], int(host_port.rpartition(":")[2]))
        idle = [await trio.open_tcp_stream(*address) for _ in range(2)]
        await trio.sleep(0.05)
        async with await trio.open_tcp_stream(*address) as excess:  # over max_clients: closed unanswered
            with trio.fail_after(3):
                assert await excess.receive_some(100) == b""
        with trio.fail_after(3):  # idle clients are dropped after the timeout
            for stream in idle:
                assert await stream.receive_some(100) == b""
                await stream.aclose()
        assert (await http(address, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        assert server.served == 1
        nursery.cancel_scope.cancel()


def own_listening_ports() -> set[int]:
    """TCP ports this process listens on (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
async def test_disabled_metrics_listen_nowhere(tmp_path):
    async with pool(tmp_path, POOLS[0], metrics=False) as container:
        assert "metrics" not in container
        gelato_port = int(container.get("server").bound_urls[0].rpartition(":")[2])
        assert own_listening_ports() == {gelato_port}


def test_daemon_process_serves_metrics_and_stops_cleanly(tmp_path):
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
              env={"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}) as d:
        url = d.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/metrics)").group(1)
        d.wait_for("ready: pool")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert b"galaxynode_handshakes_total" in response.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.removesuffix("metrics") + "nothing", timeout=10)
        missing.value.close()
        assert missing.value.code == 404
        assert d.stop(signal.SIGTERM) == 0
        assert "Traceback" not in d.output


def test_metrics_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"), "--log-level", "warning",
                  env={"GALAXYNODE_METRICS_LISTEN": f"127.0.0.1:{port}"}) as d:
            assert d.wait() == 1
            assert d.output.strip().count("\n") == 0
            assert f"cannot listen on 127.0.0.1:{port} for metrics: Address already in use" in d.output
