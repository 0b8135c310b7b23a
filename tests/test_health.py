"""Health: the Readiness checks, and /healthz, /readyz and sd_notify STATUS of a live pool process
(ready; not ready while the main net is unreachable; not ready once a plugin gave up)."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path


from galaxynode.health import Readiness
from procutil import Proc

TESTS = str(Path(__file__).resolve().parent)


def test_readiness_checks():
    changes = []
    r = Readiness("listening", "registry")
    r.on_change(lambda rd: changes.append(rd.summary()))
    assert not r.ready
    assert r.summary() == "not ready: listening (not checked yet); registry (not checked yet)"
    r.set("listening", True, "ws://127.0.0.1:1")
    r.set("registry", True, "0 leases")
    assert r.ready and r.summary() == "ready"
    r.set("registry", True, "0 leases")  # no change, no notification
    r.expect("backend")
    r.set("backend", False, "connection refused")
    assert r.failing() == {"backend": "connection refused"}
    assert r.as_json() == {"ready": False, "checks": {
        "backend": {"ok": False, "reason": "connection refused"},
        "listening": {"ok": True, "reason": "ws://127.0.0.1:1"},
        "registry": {"ok": True, "reason": "0 leases"}}}
    r.discard("backend")
    assert r.ready
    assert changes == ["not ready: registry (not checked yet)", "ready", "not ready: backend (not checked yet)",
                       "not ready: backend (connection refused)", "ready"]
    assert not Readiness().ready  # nothing checked: not ready


async def gives_up(ctx) -> None:
    """A plugin that crashes at once (with max_restarts = 0 the supervisor gives up on it)."""
    raise RuntimeError("audit sink unreachable")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def run_pool(tmp_path, *args: str, env: dict | None = None) -> Proc:
    return Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "d"), *args,
                env={"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0", "PYTHONPATH": TESTS, **(env or {})})


def base_url(d: Proc) -> str:
    return d.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/)metrics").group(1)


def test_healthz_and_readyz_of_a_ready_pool(tmp_path):
    with run_pool(tmp_path) as d:
        url = base_url(d)
        d.wait_for("ready: pool")
        assert get(url + "healthz") == (200, b"ok\n")
        status, body = get(url + "readyz")
        assert status == 200, body
        checks = json.loads(body)
        assert checks["ready"] is True and set(checks["checks"]) == {"listening", "registry"}
        assert checks["checks"]["listening"]["reason"].startswith("ws://127.0.0.1:")
        assert d.stop() == 0


def _readyz_until(url: str, predicate, d: Proc, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(url + "readyz")
        doc = json.loads(body)
        if predicate(status, doc):
            return doc
        assert time.monotonic() < deadline, json.dumps(doc)
        time.sleep(0.1)


def test_not_ready_names_the_unreachable_main_net_and_the_plugin_that_gave_up(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        port = closed.getsockname()[1]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(20)
        with sock, run_pool(tmp_path, env={"GALAXYNODE_MAINNET_URL": f"ws://127.0.0.1:{port}",
                                           "GALAXYNODE_PLUGINS_ENABLED": "test_health:gives_up",
                                           "GALAXYNODE_PLUGINS_MAX_RESTARTS": "0",
                                           "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}) as d:
            url = base_url(d)
            plugin = "plugin.test_health"
            doc = _readyz_until(url, lambda s, doc: s == 503 and "gave up" in doc["checks"].get(plugin, {}).get(
                "reason", "") and "cannot connect" in doc["checks"]["mainnet"]["reason"], d)
            assert doc["checks"][plugin]["reason"].startswith("gave up: ")  # and why (the plugin's error)
            assert doc["checks"]["listening"]["ok"] and doc["checks"]["registry"]["ok"]
            assert get(url + "healthz")[0] == 200  # alive all the same
            statuses = []
            while not any(b"plugin.test_health (gave up" in m and b"mainnet (" in m for m in statuses):
                statuses.append(sock.recv(4096))
            assert any(b"READY=1" in m for m in statuses)
            assert all(b"STATUS=not ready: " in m for m in statuses if b"STATUS=" in m and b"stopping" not in m)
            assert d.stop() == 0



async def test_routes_are_a_table_others_can_add_to():
    import trio
    from prometheus_client import CollectorRegistry
    from galaxynode.metrics import MetricsServer, Response
    readiness = Readiness("listening")
    server = MetricsServer(CollectorRegistry(), "127.0.0.1:0", readiness=readiness)
    server.route("/hello", lambda request: Response(200, f"hello {request.query}\n".encode()))

    async def fetch(path: str) -> bytes:
        async with await trio.open_tcp_stream(host, port) as s:
            await s.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := await s.receive_some(65536):
                data += chunk
            return data

    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(server.run)
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])
        assert (await fetch("/hello?x=1")).endswith(b"\r\n\r\nhello x=1\n")
        not_ready = await fetch("/readyz")
        assert not_ready.startswith(b"HTTP/1.1 503 Service Unavailable") and b"application/json" in not_ready
        readiness.set("listening", True)
        assert (await fetch("/readyz")).startswith(b"HTTP/1.1 200 OK")
        assert b"try /healthz, /hello, /metrics, /readyz" in await fetch("/nope")
        nursery.cancel_scope.cancel()


def test_sampler_follows_the_registry_commits_and_plugin_states():
    """A store that refuses commits makes the registry check fail until a commit goes through."""
    from types import SimpleNamespace as NS
    from galaxynode.daemon import ReadinessSampler
    registry = NS(commits=0, commit_failures=0, table=[])
    plugins = NS(stats={"audit": NS(state="running", failures=0, last_error=None)})

    class Container(dict):  # what the sampler uses of galaxynode.container.Container: `in` and get()
        get = dict.__getitem__
    c = Container(registry=registry, plugins=plugins)
    r = Readiness("registry")
    sample = ReadinessSampler(r)
    sample(c)
    assert r.ready
    registry.commit_failures = 2  # refused, and nothing stored since
    sample(c)
    assert r.failing() == {"registry": "cannot store changes (see the log; changes are refused with 'unavailable')"}
    sample(c)  # nothing new: still failing
    assert not r.ready
    registry.commits = 1
    sample(c)
    assert r.ready
    plugins.stats["audit"] = NS(state="backoff", failures=2, last_error="OSError: disk full")
    sample(c)
    assert r.failing() == {"plugin.audit": "restarting after a crash (2 in a row): OSError: disk full"}
