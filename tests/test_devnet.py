"""`galaxynode devnet` run headless as a user would: a real process with real child processes."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from procutil import Proc

from galaxynode.cli.devnet import plain_line, table


def devnet(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxynode", "devnet", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (the devnet's children all do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_devnet_headless_for_a_few_seconds(tmp_path):
    data = tmp_path / "devnet"
    r = devnet("--pools", "3", "--nodes", "6", "--duration", "4", "--json", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "stopped" in r.stderr
    snaps = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(snaps) >= 3  # one per second
    for s in snaps:
        assert [p["name"] for p in s["pools"]] == ["pool-1", "pool-2", "pool-3"]
        assert all(p["url"].startswith("ws://127.0.0.1:") for p in s["pools"])
        assert s["mainnet"]["url"].startswith("ws://127.0.0.1:")
        dashboards = [s["mainnet"]["dashboard"]] + [p["dashboard"] for p in s["pools"]]
        assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard/", u) for u in dashboards), dashboards
        assert len(set(dashboards)) == 4

    def converged(s: dict) -> bool:
        pools = s["pools"]
        return (all(p["up"] and p["peers"] >= 1 for p in pools) and sum(p["nodes"] for p in pools) == 6
                and s["mainnet"]["pools"] == 3 and s["nodes"] == {"simulated": 6, "joined": 6})
    assert any(converged(s) for s in snaps), r.stdout
    assert converged(snaps[-1]), snaps[-1]
    assert [p["nodes"] for p in snaps[-1]["pools"]] == [2, 2, 2]  # spread evenly
    assert len({p["key"] for p in snaps[-1]["pools"]}) == 3

    assert processes_using(data) == []
    for name in ("mainnet", "pool-1", "pool-2", "pool-3"):
        log = (data / f"{name}.log").read_text()
        assert "received SIGTERM" in log and "stopped" in log and "Traceback" not in log, log
        # Every node and probe session ended with GOODBYE (1000) before the pool was told to stop. (Sessions
        # between daemons may close "going away" first: the daemons get SIGTERM at the same time.)
        before_stop = log.split("received SIGTERM")[0]
        roles = dict(re.findall(r"session with (ed25519:\w+) \((\w+), ", before_stop))
        closed = [(roles.get(key), code) for key, code in re.findall(r"session with (ed25519:\w+) closed \((\d+)",
                                                                      before_stop)]
        assert all(code == "1000" for role, code in closed if role in ("node", "probe")), log
        if name != "mainnet":
            assert ("node", "1000") in closed, log


def get(url: str) -> tuple[int, str, str]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with direct.open(url, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


def test_devnet_plain_output_until_sigint(tmp_path):
    data = tmp_path / "devnet"
    with Proc("devnet", "--pools", "2", "--nodes", "3", "--data-dir", str(data)) as d:
        d.wait_for(r"pool-1 up peers=1 nodes=\d+ .*pool-2 up peers=1 .*nodes joined=3/3", timeout=40)
        # Every daemon's dashboard URL is printed once it is up, and serves the page and its data.
        urls = dict(re.findall(r"devnet: (main net|pool-\d) ws://\S+ dashboard (http://127\.0\.0\.1:\d+/dashboard/)",
                               d.output))
        assert set(urls) == {"main net", "pool-1", "pool-2"}, d.output
        for url in urls.values():
            status, ctype, page = get(url)
            assert status == 200 and ctype.startswith("text/html") and "galaxynode dashboard" in page
        status, _, body = get(urls["pool-1"] + "api/overview")
        assert status == 200 and json.loads(body)["network"] == "galaxy-dev"
        assert d.stop(signal.SIGINT, timeout=40) == 0, d.output
        assert "SIGINT: stopping" in d.output and "devnet: stopped" in d.output
        assert "Traceback" not in d.output
    assert processes_using(data) == []


def test_devnet_child_failure_is_one_line_and_exit_1(tmp_path):
    data = tmp_path / "devnet"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = devnet("--pools", "2", "--nodes", "1", "--base-port", str(port - 1), "--data-dir", str(data))
    assert r.returncode == 1, r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("galaxynode:")]
    assert len(error) == 1 and "exited with code 1" in error[0] and "Address already in use" in error[0], r.stderr
    assert "Traceback" not in r.stderr
    assert processes_using(data) == []


def test_devnet_usage_errors(tmp_path):
    r = devnet("--pools", "0")
    assert r.returncode == 2 and "--pools" in r.stderr
    r = devnet("--pools", "3", "--base-port", "65534", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and r.stderr.strip() == "galaxynode: --base-port 65534 leaves no room for 3 pools"


def test_status_formats():
    snap = {"t": 3.0, "mainnet": {"name": "mainnet", "url": "ws://127.0.0.1:1", "key": None, "up": True,
                                  "events_per_s": 0.5, "pools": 2, "dashboard": "http://127.0.0.1:4/dashboard/"},
            "pools": [{"name": "pool-1", "url": "ws://127.0.0.1:2", "key": "ab", "up": True, "peers": 1, "nodes": 2,
                       "events_per_s": 1.5, "dashboard": "http://127.0.0.1:5/dashboard/"},
                      {"name": "pool-2", "url": "ws://127.0.0.1:3", "key": None, "up": False, "peers": None,
                       "nodes": None, "events_per_s": 0.0, "dashboard": None}],
            "nodes": {"simulated": 3, "joined": 2}}
    assert plain_line(snap) == ("t=3s mainnet up pools=2 ev/s=0.5 | pool-1 up peers=1 nodes=2 ev/s=1.5 | "
                                "pool-2 down peers=- nodes=- ev/s=0 | nodes joined=2/3")
    lines = table(snap, "footer").splitlines()
    assert lines[0] == "galaxynode devnet: 2 pools, 2/3 simulated nodes joined, up 3s"
    assert lines[2].split() == ["NAME", "URL", "STATE", "PEERS", "NODES", "EVENTS/S", "DASHBOARD"]
    assert lines[3].split() == ["mainnet", "ws://127.0.0.1:1", "up", "-", "2", "pools", "0.5",
                                "http://127.0.0.1:4/dashboard/"]
    assert lines[4].split() == ["pool-1", "ws://127.0.0.1:2", "up", "1", "2", "1.5", "http://127.0.0.1:5/dashboard/"]
    assert lines[5].split() == ["pool-2", "ws://127.0.0.1:3", "down", "-", "-", "0.0", "-"]
    assert lines[-1] == "footer"
