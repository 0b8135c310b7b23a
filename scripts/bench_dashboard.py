#!/usr/bin/env python3
"""What the dashboard costs a busy pool: pool CPU without and with the overview open in a browser.

A real pool process (`galaxynode run`, durable SQLite registry, metrics listener with the dashboard on
127.0.0.1:0) holds N nodes heartbeating, driven by this process with scripts/bench_heartbeats.py's
lean load generator (each node its own key and session, the real handshake and session frames,
replies peeked at, phases spread over the interval). Once every node has joined, one headless
Chromium (selenium, /usr/bin/chromium) alternates between about:blank (A: no dashboard) and the
pool's overview page, which keeps itself live (B: dashboard open), A B A B ... for --rounds pairs.
Over each window the pool's CPU (utime + stime, /proc/PID/stat) is read at both ends:

    dashboard cost = mean over pairs of (B - A), in % of one core (target: at most TARGET_PCT)

A pair counts only when the heartbeats answered in both its windows match the offered rate (a load
generator that falls behind makes the pool look cheap, one catching up after a stall makes it look
dear) within bench_heartbeats.RATE_TOLERANCE, or 3 standard deviations of the count's own noise when
that is wider (the pool jitters each interval by +-10%, so a window's count is nearly Poisson), and
B's page showed the pool's node count (the browser was really watching); the verdict needs
MIN_PAIRS such pairs. The A windows' spread is printed too: on a shared machine it is the noise
the cost is read against.

The heartbeat interval defaults to 60 s (ttl 180 s), not the 10 s of bench_heartbeats: 10,000 nodes
every 10 s take about half a core in the pool and more in this load generator, which leaves no room
on a 2-core machine for Chromium (and, shared with other work, even 30 s was often not delivered). What the open page costs does not depend on the heartbeat rate:
its stream carries the same figures once a second whatever the load. The dashboard's sampler behind
them runs whether a browser looks or not, so it is in A and B alike.

Then a client that opens the live stream (/dashboard/api/stream) and never reads: the pool's CPU and
RSS for as long as it stays connected, until the pool drops it (bounded like any other slow reader).

    .venv/bin/python scripts/bench_dashboard.py [--nodes N] [--interval S] [--window S] [--rounds R] [--json PATH]
    .venv/bin/python scripts/bench_dashboard.py --quick                      # tiny smoke run (~30 s)
    .venv/bin/python scripts/bench_dashboard.py --screenshot docs/dashboard.png  # devnet overview, 1280x800
"""
from __future__ import annotations

import argparse
import json
import math
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_heartbeats import (CLIENT_LIMITS, FD_HEADROOM, NETWORK, RATE_TOLERANCE, Node, PoolProcess,  # noqa: E402
                              cpu_seconds, peek, pool_env, raise_fd_limit, rss_kib)

from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.errors import ProtocolError  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402
from galaxynode.metrics import MAX_STREAMS  # noqa: E402
from galaxynode.net import ChannelClosed, establish, open_channel  # noqa: E402

TARGET_PCT = 5.0         # % of one core the open dashboard may add ("at most a few percent", issue 19)
SLOW_RSS_BOUND_KIB = 16 * 1024  # growth allowed over the slow-reader window (the A windows' own noise is MiBs)
STREAMS = MAX_STREAMS    # C windows: this many stream readers, the most a pool serves (the signal x 8)
MODES = {"A": "no dashboard", "B": "dashboard open", "C": f"{STREAMS} stream readers"}
MIN_PAIRS = 2            # A/B pairs with the load delivered that a verdict needs (fewer if fewer were run)
SETTLE = 3.0             # seconds after navigating before a window starts (page load, first fetches)
LONGER = "; longer than bench_heartbeats' 10 s so that the pool, this load generator and Chromium fit on 2 cores"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


# --- load ---------------------------------------------------------------------------------------

class Load:
    """`nodes` heartbeating nodes until `stop()`; `answered` counts the LEASEs that came back.

    Each node asks for a ttl of 3 intervals, so the pool's heartbeat pacing grants about that interval
    (x U(0.9, 1.1), longer if its budget needs it), and heartbeats at the interval each LEASE names, as
    a real node must; `offered_per_s` is what the nodes' current intervals add up to."""

    def __init__(self, url: str, nodes: int, interval: float, parallel: int = 64):
        self.url, self.nodes, self.interval = url, nodes, interval
        self.ttl = math.ceil(3 * interval)
        self.intervals = [interval] * nodes  # each node's current interval (its last LEASE's)
        self.joined = self.answered = 0
        self.failures: list[str] = []
        self.errors: list[str] = []
        self.all_joined, self._go = trio.Event(), trio.Event()
        self._released = False
        self._waits: dict[int, trio.CancelScope] = {}  # nodes waiting for their next beat
        self._gate = trio.Semaphore(parallel)
        self._t0 = 0.0

    def _failed(self, what: str) -> None:
        self.failures.append(what)
        if self.joined + len(self.failures) >= self.nodes:
            self.all_joined.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(self.nodes):
                nursery.start_soon(self._node, i)
            await self.all_joined.wait()
            self._t0 = trio.current_time() + 0.5
            self._go.set()

    def _follow(self, i: int, lease: dict) -> None:
        self.intervals[i] = lease["interval"] / 1000

    @property
    def offered_per_s(self) -> float:
        return sum(1 / iv for iv in self.intervals)

    def stop(self) -> None:
        self._released = True
        for wait in list(self._waits.values()):
            wait.cancel()

    async def _node(self, i: int) -> None:
        await self._gate.acquire()
        opening = True
        try:
            async with open_channel(self.url, max_message_size=1 << 20, connect_timeout=30) as ch:
                node = Node(ch, await establish(ch, Identity.generate(), opener=True, network=NETWORK, role="node",
                                                limits=CLIENT_LIMITS))
                kind, body = await node.request(m.Join(ttl=self.ttl))
                self._gate.release()
                opening = False
                if kind != "LEASE":
                    return self._failed(f"JOIN answered with {kind} {body}")
                self.joined += 1
                if self.joined + len(self.failures) >= self.nodes:
                    self.all_joined.set()
                self._follow(i, body)
                await self._go.wait()
                at = self._t0 + i / self.nodes * self.interval  # phases spread evenly over the interval
                while True:
                    with trio.CancelScope(deadline=at) as wait:
                        self._waits[i] = wait
                        if self._released:
                            wait.cancel()
                        while True:  # between beats, answer the pool's keepalive PINGs (idle past ping_interval)
                            kind, body = peek(await ch.receive())
                            if kind == "PING":
                                with trio.CancelScope(shield=True):  # a frame half sent would break the session
                                    await ch.send(node.session.encode(m.Pong(data=body.get("data", b""))))
                    del self._waits[i]
                    if self._released:
                        break
                    sent = trio.current_time()
                    kind, body = await node.request(m.Heartbeat())
                    if kind == "LEASE":
                        self.answered += 1
                        self._follow(i, body)
                    elif len(self.errors) < 1000:
                        self.errors.append(f"{kind} {body}")
                    at = max(at + self.intervals[i], sent + 0.6 * self.intervals[i])  # never early after a late one
                await ch.send(node.session.encode(m.Goodbye(reason="bench over")))
        except (ChannelClosed, ProtocolError, trio.TooSlowError, ValueError, KeyError, TypeError) as e:
            self._failed(f"{type(e).__name__}: {e}")
        finally:
            if opening:
                self._gate.release()

    async def window(self, pid: int, seconds: float) -> dict[str, Any]:
        """The pool's CPU and RSS, and the heartbeats answered, over `seconds`."""
        start = self.mark(pid)
        await trio.sleep(seconds)
        return self.since(pid, start)

    def mark(self, pid: int) -> tuple[Any, ...]:
        return (self.answered, cpu_seconds(pid), rss_kib(pid), time.perf_counter(),
                resource.getrusage(resource.RUSAGE_SELF))

    def since(self, pid: int, start: tuple[Any, ...]) -> dict[str, Any]:
        """The pool's CPU and RSS, and the heartbeats answered, from `start` (a mark()) until now."""
        n0, c0, r0, w0, u0 = start
        n1, c1, r1, w1, u1 = self.mark(pid)
        wall = w1 - w0
        rate, offered = (n1 - n0) / wall, self.offered_per_s
        # Within the tolerance both ways: a load generator catching up after a stall loads the pool more.
        return {"seconds": wall, "pool_cpu_pct": 100 * (c1 - c0) / wall, "hb_per_s": rate, "offered_per_s": offered,
                "delivered": as_offered(rate, offered, wall), "rss_kib": [r0, r1],
                "loadgen_cpu_pct": 100 * (u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime) / wall}


def as_offered(rate: float, offered: float, seconds: float) -> bool:
    """Whether `rate` matches `offered` within RATE_TOLERANCE or 3 sigma of a Poisson count, if wider."""
    expected = offered * seconds
    return abs(rate - offered) * seconds <= max(RATE_TOLERANCE * expected, 3 * math.sqrt(max(expected, 1)))


# --- browser ------------------------------------------------------------------------------------

def open_browser(user_dir: Path, width: int = 1280, height: int = 800) -> Any:
    """One headless Chromium under selenium (the flags of tests/test_dashboard_browser.py)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={user_dir}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def shows_nodes(driver: Any, timeout: float) -> bool:
    """Whether the overview shows a node count above 0 within `timeout` seconds: it got live data
    (the #v-nodes field of the page, which tests/test_dashboard_browser.py reads too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = driver.execute_script("const e = document.getElementById('v-nodes'); return e ? e.textContent : ''")
        if text.strip().isdigit() and int(text) > 0:
            return True
        time.sleep(0.25)
    return False


# --- the slow SSE reader --------------------------------------------------------------------------

def stream_request(base: str) -> tuple[tuple[str, int], bytes]:
    host, port = re.match(r"http://([^:/]+):(\d+)/", base).groups()
    return (host, int(port)), (f"GET /dashboard/api/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
                               f"Accept: text/event-stream\r\n\r\n").encode()


def stream_status(base: str) -> str:
    """The status line /dashboard/api/stream answers with ('' if none within 5 s)."""
    addr, request = stream_request(base)
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(request)
        try:
            return s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError:
            return ""


def stalled_stream(base: str) -> socket.socket:
    """A stream client with a tiny receive buffer that never reads."""
    addr, request = stream_request(base)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(addr)
    s.sendall(request)
    return s


def stream_metrics(base: str) -> dict[str, float]:
    """The pool's stream gauges from /metrics: open streams, streams ended for not reading."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with direct.open(base + "metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name, key in (("galaxynode_http_streams", "open"),
                      ('galaxynode_http_streams_ended_total{reason="budget"}', "dropped")):
        if found := re.search(rf"^{re.escape(name)} (\S+)$", text, re.M):
            out[key] = float(found.group(1))
    return out


def drain(s: socket.socket, timeout: float = 5.0) -> tuple[int, bool]:
    """(bytes waiting for the stalled client, whether the pool had closed the stream)."""
    total, closed = 0, False
    s.settimeout(timeout)
    try:
        while chunk := s.recv(65536):
            total += len(chunk)
            s.settimeout(0.2)
        closed = True
    except OSError:  # timeout: still open
        pass
    return total, closed


async def read_streams(base: str, n: int, got: list[int], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """`n` stream clients that read all they get (what `n` open overview pages receive), until
    cancelled; `got[0]` counts their bytes, `got[1]` the ones the pool answered 200."""
    addr, request = stream_request(base)

    async def one() -> None:
        async with await trio.open_tcp_stream(*addr) as s:
            await s.send_all(request)
            first = True
            while chunk := await s.receive_some(65536):
                got[0] += len(chunk)
                if first and chunk.startswith(b"HTTP/1.1 200"):
                    got[1] += 1
                first = False

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        task_status.started()


# --- the measurement ------------------------------------------------------------------------------

async def measure_pool(pool: PoolProcess, base: str, driver: Any, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(pool.url, args.nodes, args.interval)
    res: dict[str, Any] = {"nodes": args.nodes, "interval": args.interval, "windows": []}
    page = base + "dashboard/"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run)
        started = time.perf_counter()
        await load.all_joined.wait()
        res["setup_seconds"] = time.perf_counter() - started
        res["joined"] = load.joined
        print(f"{load.joined:,}/{args.nodes:,} nodes joined in {res['setup_seconds']:.0f} s; "
              f"warming up {args.warmup:g} s", flush=True)
        await trio.sleep(0.5 + args.warmup)
        for r in range(args.rounds):
            for mode in ("A", "B", "C"):
                url = page if mode == "B" else "about:blank"
                await trio.to_thread.run_sync(driver.get, url)
                live = None
                if mode == "B":  # the overview shows the pool's node count once it is live
                    live = await trio.to_thread.run_sync(shows_nodes, driver, 20.0)
                async with trio.open_nursery() as readers:
                    got = [0, 0]
                    if mode == "C":
                        await readers.start(read_streams, base, STREAMS, got)
                    await trio.sleep(SETTLE)
                    w = await load.window(pool.pid, args.window)
                    readers.cancel_scope.cancel()
                w.update(round=r + 1, mode=mode, page_live=live)
                if mode == "C":
                    w.update(streams_ok=got[1], stream_bytes_per_s=got[0] / (SETTLE + w["seconds"]) / STREAMS)
                res["windows"].append(w)
                print(f"  round {r + 1} {mode} ({MODES[mode]}): pool "
                      f"{w['pool_cpu_pct']:.1f}% of a core, {w['hb_per_s']:,.0f}/{w['offered_per_s']:,.0f} "
                      f"HEARTBEAT/s{'' if w['delivered'] else ' NOT as offered'}"
                      f"{'' if live is not False else ', page NOT showing the node count'}", flush=True)
        await trio.to_thread.run_sync(driver.get, "about:blank")
        res["stream_status"] = await trio.to_thread.run_sync(stream_status, base)
        if res["stream_status"].split(" ")[1:2] == ["200"]:
            res["slow_reader"] = await slow_reader(load, pool.pid, base, args.slow_max)
        load.stop()
    res["heartbeat_errors"], res["error_samples"] = len(load.errors), load.errors[:5]
    res["failures"], res["failure_samples"] = len(load.failures), load.failures[:5]
    return res


async def slow_reader(load: Load, pid: int, base: str, max_wait: float) -> dict[str, Any]:
    """One stream client that never reads, until the pool drops the stream (its stream_budget of unsent
    bytes) or `max_wait` passes: the pool's CPU over all that time (against the A windows) and RSS."""
    s = await trio.to_thread.run_sync(stalled_stream, base)
    try:
        opened = trio.current_time()
        await trio.sleep(SETTLE)
        start, peak, dropped = load.mark(pid), 0, None
        while (now := trio.current_time()) - opened < max_wait:
            gauges = await trio.to_thread.run_sync(stream_metrics, base)
            if gauges.get("open") == 0:
                dropped = now - opened
                break
            peak = max(peak, rss_kib(pid))
            await trio.sleep(1.0)
        w = load.since(pid, start)
        w["dropped_after_s"], w["rss_peak_kib"] = dropped, max(peak, w["rss_kib"][1])
        w["gauges"] = await trio.to_thread.run_sync(stream_metrics, base)
        w["backlog_bytes"], w["closed_by_pool"] = await trio.to_thread.run_sync(drain, s)
    finally:
        s.close()
    w["stalled_s"] = trio.current_time() - opened
    return w


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """The cost over the A/B pairs that count: both windows got the offered load, and B's page was live."""
    a = [w for w in res["windows"] if w["mode"] == "A"]
    b = [w for w in res["windows"] if w["mode"] == "B"]
    pairs = [(x, y) for x, y in zip(a, b) if x["delivered"] and y["delivered"] and y["page_live"]]
    need = min(MIN_PAIRS, len(a))
    s: dict[str, Any] = {"pairs": len(a), "pairs_counted": len(pairs), "pairs_needed": need,
                         "verdict_ok": len(pairs) >= need and res["joined"] == res["nodes"],
                         "a_range_pct": [min(x["pool_cpu_pct"] for x in a), max(x["pool_cpu_pct"] for x in a)]}
    counted = pairs or list(zip(a, b))  # figures from every pair when none counts (no verdict then)
    s["without_pct"] = statistics.mean(x["pool_cpu_pct"] for x, _ in counted)
    s["with_pct"] = statistics.mean(y["pool_cpu_pct"] for _, y in counted)
    s["pairs_pct"] = [y["pool_cpu_pct"] - x["pool_cpu_pct"] for x, y in counted]
    s["cost_pct"] = s["with_pct"] - s["without_pct"]
    s["met"] = s["cost_pct"] <= TARGET_PCT if s["verdict_ok"] else None
    c = [w for w in res["windows"] if w["mode"] == "C"]
    if c:
        c_pairs = [(x, z) for x, z in zip(a, c) if x["delivered"] and z["delivered"] and z["streams_ok"] == STREAMS]
        s["streams_pairs_counted"] = len(c_pairs)
        s["streams_pct"] = statistics.mean(z["pool_cpu_pct"] - x["pool_cpu_pct"] for x, z in c_pairs) \
            if c_pairs else None
        s["stream_bytes_per_s"] = statistics.mean(z["stream_bytes_per_s"] for z in c)
    if sr := res.get("slow_reader"):
        sr["cost_pct"] = sr["pool_cpu_pct"] - s["without_pct"]
        sr["rss_growth_kib"] = max(sr["rss_peak_kib"], sr["rss_kib"][1]) - sr["rss_kib"][0]
        sr["bounded"] = (sr["rss_growth_kib"] <= SLOW_RSS_BOUND_KIB and sr["cost_pct"] <= TARGET_PCT
                         if sr["delivered"] else None)
    return s


def report(res: dict[str, Any]) -> None:
    s = res["summary"]
    print(f"\nDashboard cost: pool = `galaxynode run` process, {res['nodes']:,} nodes heartbeating every "
          f"{res['interval']:g} s (ttl {math.ceil(3 * res['interval'])} s{LONGER if res['interval'] > 10 else ''}), "
          f"{len(res['windows'])} windows of {res['window']:g} s "
          f"interleaved A B C A B C; A: Chromium on about:blank, B: Chromium on the pool's overview, C: A plus "
          f"{STREAMS} stream readers (the most a pool serves: the signal of one open page x {STREAMS})\n")
    verdict = ("met" if s["met"] else "NOT met") if s["verdict_ok"] else \
        f"no verdict: {s['pairs_counted']} of {s['pairs']} pairs had the load delivered and the page live"
    rows = [("pool CPU % of one core, dashboard open (B) vs not (A)", f"{s['with_pct']:.1f}", f"{s['without_pct']:.1f}",
             f"{s['with_pct'] / s['without_pct']:.2f}x" if s["without_pct"] else "-"),
            (f"dashboard cost, % of one core (B - A over the {s['pairs_counted']} of {s['pairs']} pairs with the "
             "load delivered; each: " + ", ".join(f"{d:+.1f}" for d in s["pairs_pct"]) + ")", f"{s['cost_pct']:+.1f}",
             f"<= {TARGET_PCT:g}", verdict)]
    if s.get("streams_pct") is not None:
        rows.append((f"{STREAMS} live streams read in full (C) - A, % of one core, over {s['streams_pairs_counted']} "
                     f"pairs; per stream", f"{s['streams_pct']:+.1f}", f"{s['streams_pct'] / STREAMS:+.2f}", "-"))
    sr = res.get("slow_reader")
    if sr:
        rows.append((f"pool CPU % of one core while one stream client never reads ({sr['seconds']:.0f} s"
                     f"{', load NOT as offered' if not sr['delivered'] else ''}) vs A", f"{sr['pool_cpu_pct']:.1f}",
                     f"{s['without_pct']:.1f}", f"{sr['cost_pct']:+.1f}"))
        rows.append((f"pool RSS MiB with it connected (start -> peak -> end, {sr['stalled_s']:.0f} s)",
                     f"{sr['rss_kib'][0] / 1024:.0f} -> {sr['rss_peak_kib'] / 1024:.0f} -> {sr['rss_kib'][1] / 1024:.0f}",
                     f"<= +{SLOW_RSS_BOUND_KIB // 1024}",
                     "bounded" if sr["bounded"] else ("NOT bounded" if sr["bounded"] is False else "no verdict")))
    header = ("metric", "ours", "baseline/target", "ratio/verdict")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for j, r in enumerate([header, *rows]):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("-+-".join("-" * w for w in widths))
    if sr:
        dropped = (f"the pool dropped it after {sr['dropped_after_s']:.0f} s (streams ended for not reading: "
                   f"{sr['gauges'].get('dropped', 0):.0f})" if sr["dropped_after_s"] is not None
                   else f"not dropped within {sr['stalled_s']:.0f} s (--slow-max)")
        print(f"\nstream client that never reads (4 KiB receive buffer): {dropped}; {sr['backlog_bytes']:,} bytes were "
              f"waiting in its socket; {'closed' if sr['closed_by_pool'] else 'still open'} when it finally read")
    else:
        print(f"\nno stream client that never reads: /dashboard/api/stream answered {res['stream_status']!r}")
    if s.get("stream_bytes_per_s") is not None:
        print(f"one overview stream carries {s['stream_bytes_per_s']:,.0f} bytes/s")
    print(f"A windows (no dashboard) ranged {s['a_range_pct'][0]:.1f}-{s['a_range_pct'][1]:.1f}% of a core: "
          f"the noise of a shared machine, against which the cost is read")
    a_rss = [w["rss_kib"][1] - w["rss_kib"][0] for w in res["windows"]]
    print(f"pool RSS change per window (KiB): {', '.join(f'{x:+,}' for x in a_rss)}; load generator "
          f"{statistics.mean(w['loadgen_cpu_pct'] for w in res['windows']):.0f}% of a core; "
          f"{res['heartbeat_errors']} heartbeat errors; pool exit status {res['pool_exit']}")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_fd_limit(args.nodes + FD_HEADROOM)
    if limit < args.nodes + FD_HEADROOM:
        raise SystemExit(f"bench_dashboard: fd limit {limit} is too low for {args.nodes:,} nodes")
    with tempfile.TemporaryDirectory(prefix="gn-dash-") as tmp:
        env = {**pool_env(args.nodes), "GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0", "GALAXYNODE_DASHBOARD_ENABLED": "true"}
        with PoolProcess(Path(tmp) / "pool", env=env) as pool:
            base = pool.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/)metrics").group(1)
            driver = open_browser(Path(tmp) / "chrome")
            try:
                res = trio.run(measure_pool, pool, base, driver, args)
            finally:
                driver.quit()
            res["pool_exit"] = pool.stop(signal.SIGTERM)
            res["pool_traceback"] = "Traceback" in pool.output
    res["window"] = args.window
    res["summary"] = summarise(res)
    return res


# --- the screenshot -------------------------------------------------------------------------------

def screenshot(path: Path, pools: int, nodes: int, settle: float) -> None:
    """Start a devnet, let the overview's charts fill for `settle` seconds, and save pool-1's
    overview at 1280x800."""
    with tempfile.TemporaryDirectory(prefix="gn-shot-") as tmp:
        log = Path(tmp) / "devnet.log"
        with open(log, "wb") as out:
            devnet = subprocess.Popen([sys.executable, "-m", "galaxynode", "devnet", "--pools", str(pools), "--nodes",
                                       str(nodes), "--data-dir", str(Path(tmp) / "data")],
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 90
            while not (match := re.search(r"pool-1 ws://\S+ dashboard (http://\S+)", log.read_text())) or \
                    "simulated nodes joining" not in log.read_text():
                if devnet.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench_dashboard: the devnet did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
            driver = open_browser(Path(tmp) / "chrome")
            try:
                driver.get(match.group(1))
                inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
                driver.set_window_size(2 * 1280 - inner[0], 2 * 800 - inner[1])  # the page itself at 1280x800
                print(f"devnet up; {match.group(1)} open, screenshot in {settle:g} s", flush=True)
                time.sleep(settle)
                path.parent.mkdir(parents=True, exist_ok=True)
                if not driver.save_screenshot(str(path)):
                    raise SystemExit(f"bench_dashboard: no screenshot written to {path}")
            finally:
                driver.quit()
        finally:
            devnet.send_signal(signal.SIGINT)
            try:
                devnet.wait(60)
            except subprocess.TimeoutExpired:
                devnet.kill()
                devnet.wait()
    print(f"screenshot: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 nodes every 2 s, 1 round of 3 s windows")
    ap.add_argument("--nodes", type=int, help="heartbeating nodes (default 10,000)")
    ap.add_argument("--interval", type=float, help="seconds between a node's heartbeats (default 60)")
    ap.add_argument("--window", type=float, help="seconds per measuring window (default 20)")
    ap.add_argument("--rounds", type=int, help="A/B pairs (default 5)")
    ap.add_argument("--slow-max", type=float, help="seconds the never-reading stream client waits to be dropped "
                                                    "(default 600; quick 10)")
    ap.add_argument("--warmup", type=float, help="seconds of heartbeating before the first window (default: interval)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--screenshot", metavar="PATH", help="instead: save a devnet pool's overview (1280x800) to PATH")
    ap.add_argument("--settle", type=float, default=60.0, help="--screenshot: seconds the charts fill first (60)")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it cleanly even when started with `&`
    if not (CHROMIUM and CHROMEDRIVER):
        print("bench_dashboard: chromium/chromedriver not installed: skipped", file=sys.stderr)
        return 0
    if args.screenshot:
        screenshot(Path(args.screenshot), pools=3, nodes=24, settle=args.settle)
        return 0
    args.nodes = args.nodes or (200 if args.quick else 10_000)
    args.interval = args.interval or (2.0 if args.quick else 60.0)
    args.window = args.window or (3.0 if args.quick else 20.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.slow_max = args.slow_max if args.slow_max is not None else (10.0 if args.quick else 600.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else args.interval)
    if args.nodes < 1 or args.interval <= 0 or args.window <= 0 or args.rounds < 1:
        ap.error("--nodes, --interval, --window and --rounds must be positive")
    res = run_bench(args)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    ok = not res["failures"] and res["heartbeat_errors"] == 0 and res["pool_exit"] == 0 and not res["pool_traceback"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
