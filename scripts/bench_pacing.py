#!/usr/bin/env python3
"""Heartbeat pacing (issue 20): offered more heartbeats than it can serve, does a pool ask for fewer
and stay responsive? Measured beside the same pool with pacing off, in the same run.

The pool is a real process (`python -m galaxynode run`, bench_heartbeats.PoolProcess: durable SQLite
registry, metrics listener on), `[registry] max_heartbeats_per_s` = the budget (default 1,000). The
load: N nodes (default 5,000), each with its own key and session, asking ttl = 3 s, so heartbeats
every 1 s (5,000 HEARTBEAT/s offered, about 2.5x what one pool process serves on this machine). Each
node does what galaxynode.nodeclient.keep_joined does: JOIN, sleep the LEASE's `interval` (ttl/3
when a LEASE has none), HEARTBEAT, and again; on `not_joined` (its lease ran out) it joins again, on
`overloaded` it waits `retry_after`, when the session ends it reconnects. Nodes are lean
(bench_heartbeats.Node: real handshake and session frames, replies peeked at, not verified) and run
in one or more load-generator processes (--loadgens; each binds its own 127.0.0.x).

Two runs, one after the other: "paced" (the budget) and "baseline" (max_heartbeats_per_s =
1,000,000: pacing effectively off, every node heartbeats at its ttl/3). For each:

- served HEARTBEAT/s per window, a window being the interval the pool should ask at full N
  (max(ttl/3, N/budget)), counted from the moment the last node had joined (t = 0);
- after convergence (from t = 2 windows on): served HEARTBEAT/s, heartbeat latency p50/p99, pool CPU;
- leases lost: the pool's galaxynode_leases_expired_total over the run, and the nodes' rejoins after
  `not_joined`; JOINs refused `overloaded`; the sum over nodes of 1/interval asked at the end
  (the pool's own ask: at most budget/0.9, messages §8).

Verdicts count only when the load was delivered: a load generator that falls behind sends its
heartbeats late, which flatters the pool. Each heartbeat's lag (when it was sent minus when the
LEASE said, `interval` after the previous reply) is recorded, and so is how late each generator's
event loop wakes up (a 100 ms sleep probe: a lagging generator adds its lag to every latency it
measures). A run is "delivered" when, after convergence, the mean send lag is within RATE_TOLERANCE
of the mean interval (the rate offered is then within 3% of the rate asked) and the generators' loop
lag p99 is at most MAX_LOOP_LAG_MS; else its rows say "not measured".

--capacity K adds how many nodes one pool process holds at a 10 s asked interval (ttl 30 s): K nodes
join and heartbeat as asked; reported: joined, refused, the interval and rate asked, pool RSS per node.
The pool refuses JOINs only past budget * max_ttl / 3 leases (1,200,000 at the defaults), far beyond
what this box holds, so the refusal itself is shown at a small scale (--refusal: budget 20, max_ttl
30 s: 200 leases) with the same code.

    .venv/bin/python scripts/bench_pacing.py [--quick] [--nodes N] [--ttl S] [--budget B] [--duration S]
                                             [--loadgens K] [--capacity K] [--refusal] [--json PATH]

--quick: 400 nodes asking ttl 3 s against a budget of 100/s, 16 s after the last join; under a minute.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import queue
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_heartbeats import (CLIENT_LIMITS, FD_HEADROOM, NETWORK, Node, PoolProcess, cpu_seconds,  # noqa: E402
                              peek, percentile, pool_env, rss_kib, thread_cpu_seconds)
from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.errors import ErrorCode, ProtocolError  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402
from galaxynode.net import ChannelClosed, establish, open_channel  # noqa: E402

DEFAULT_BUDGET = 1000       # [registry] max_heartbeats_per_s default (galaxynode/config.py)
PACING_OFF = 1_000_000      # the setting's maximum: the floor N/budget is then 5 ms at 5,000 nodes
RATE_TOLERANCE = 0.03       # as bench_heartbeats: mean send lag within 3% of the interval, or no verdict
BAND = (0.9, 1 / 0.9)       # converged: served rate within these factors of the budget
TARGET_P99_MS = 250.0       # issue 20
SETUP_TIMEOUT = 300.0       # seconds for every node to have joined once
CAPACITY_TTL = 30           # a 10 s asked interval
TICK = 0.1                  # s: the load generator's loop-lag probe
MAX_LOOP_LAG_MS = 100.0     # p99 of that lag past which a generator's latencies are not believed
REFUSAL = {"budget": 20, "max_ttl": 30, "nodes": 250}   # refuses past 20 * 30 / 3 = 200 leases


# --- load generator (a child process) ------------------------------------------------------------

class PacedNode(Node):
    """bench_heartbeats.Node that also answers the pool's PINGs while it waits for the next beat
    (with intervals past the pool's ping_interval, 20 s, a silent node would be closed idle)."""

    async def idle_until(self, deadline: float) -> None:
        while True:
            data = None
            with trio.move_on_at(deadline):
                data = await self.ch.receive()  # trio-websocket: cancel-safe
            if data is None:
                return
            kind, body = peek(data)
            if kind == "PING":  # outside the deadline's scope: an encoded frame must be sent (its seq is taken)
                await self.ch.send(self.session.encode(m.Pong(data=body.get("data", b""))))


class Load:
    """One load generator's nodes and what they saw. Times are wall clock (time.time()), so that
    the parent can merge several generators."""

    def __init__(self, nodes: int, ttl: int, parallel: int, local: str | None, first: int = 0):
        self.nodes, self.ttl, self.local, self.first = nodes, ttl, local, first
        self.gate = trio.Semaphore(parallel)
        self.stop_at = math.inf
        self.stopped = trio.Event()
        self.joined = 0
        self.all_joined = trio.Event()
        self.beats: list[tuple[float, float, float, float, int]] = []  # (reply at, latency ms, lag ms, interval ms, node)
        self.asked: dict[int, float] = {}                         # node -> last interval asked, ms
        self.rejoins = self.overloaded = self.reconnects = self.rate_limited = self.other = 0
        self.retry_after: list[int] = []
        self.samples: list[str] = []
        self.offset = time.time() - trio.current_time()
        self.loop_lag: list[tuple[float, float]] = []  # (wall time, ms late)

    def wall(self, t: float) -> float:
        return t + self.offset

    def note(self, what: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(what)

    def interval_of(self, body: dict) -> float:
        """The LEASE's interval in seconds (ttl/3 from a pool that sends none)."""
        ms = body.get("interval")
        return (ms if ms is not None else body.get("ttl", self.ttl) * 1000 / 3) / 1000

    async def join(self, n: PacedNode, i: int, release: Any = lambda: None) -> float | None:
        """JOIN until a LEASE (waiting retry_after on overloaded, after `release()` of the handshake
        gate); its interval, or None to reconnect."""
        while True:
            kind, body = await n.request(m.Join(ttl=self.ttl))
            if kind == "LEASE":
                self.asked[i] = 1000 * self.interval_of(body)
                return self.interval_of(body)
            if kind == "ERROR" and body.get("code") == ErrorCode.OVERLOADED:
                self.overloaded += 1
                wait = body.get("retry_after", 30_000) / 1000
                self.retry_after.append(body.get("retry_after", -1))
                release()
                await n.idle_until(min(trio.current_time() + wait * random.uniform(1.0, 1.2), self.stop_at))
                if trio.current_time() >= self.stop_at:
                    return None
                continue
            self.other += 1
            self.note(f"JOIN: {kind} {body}")
            return None

    async def node(self, i: int) -> None:
        ident = Identity.generate()
        first = True
        while trio.current_time() < self.stop_at:
            await self.gate.acquire()
            opening = True

            def release() -> None:
                nonlocal opening
                if opening:
                    opening = False
                    self.gate.release()
            try:
                async with open_channel(self.url, max_message_size=1 << 20, connect_timeout=60,
                                        local_address=self.local) as ch:
                    n = PacedNode(ch, await establish(ch, ident, opener=True, network=NETWORK, role="node",
                                                      limits=CLIENT_LIMITS))
                    interval = await self.join(n, i, release)
                    release()
                    if interval is None:
                        return
                    if first:
                        first = False
                        self.joined += 1
                        if self.joined == self.nodes:
                            self.all_joined.set()
                    await self.beat(n, i, interval)
            except (ChannelClosed, ProtocolError, trio.TooSlowError, OSError, ValueError, KeyError, TypeError) as e:
                self.note(f"{type(e).__name__}: {e}")
            finally:
                release()
            if trio.current_time() < self.stop_at:
                self.reconnects += 1
                await trio.sleep(random.uniform(0.5, 1.5))  # keep_joined's backoff, roughly

    async def beat(self, n: PacedNode, i: int, interval: float) -> None:
        """Heartbeat as asked until stop_at; returns to reconnect."""
        while True:
            due = trio.current_time() + interval
            await n.idle_until(min(due, self.stop_at))
            if trio.current_time() >= self.stop_at:
                await n.ch.send(n.session.encode(m.Goodbye(reason="bench over")))
                return
            sent = trio.current_time()
            kind, body = await n.request(m.Heartbeat())
            got = trio.current_time()
            if kind == "LEASE":
                self.beats.append((self.wall(got), 1000 * (got - sent), 1000 * (sent - due), 1000 * interval,
                                   self.first + i))
                interval = self.interval_of(body)
                self.asked[i] = 1000 * interval
                continue
            code = body.get("code") if kind == "ERROR" else None
            if code == ErrorCode.NOT_JOINED:  # the lease ran out: lost
                self.rejoins += 1
                interval = await self.join(n, i)
                if interval is None:
                    return
                continue
            if code == ErrorCode.RATE_LIMITED:
                self.rate_limited += 1
            else:
                self.other += 1
            self.note(f"HEARTBEAT: {kind} {body}")
            return

    async def read_stop(self) -> None:
        """The parent writes `stop <wall time>` on stdin once every generator has joined."""
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        async with stdin:
            while b"\n" not in buf:
                data = await stdin.receive_some(1024)
                if not data:
                    break
                buf += data
        words = buf.decode().split()
        stop = float(words[1]) if len(words) == 2 and words[0] == "stop" else time.time()
        self.stop_at = stop - self.offset
        self.stopped.set()

    async def watch_loop(self) -> None:
        """How late this generator's event loop wakes up (a sleep of TICK, every TICK): a generator
        that lags delays its heartbeats and adds its lag to the latencies it measures."""
        while True:
            due = trio.current_time() + TICK
            await trio.sleep_until(due)
            self.loop_lag.append((self.wall(due), 1000 * (trio.current_time() - due)))

    async def run(self, url: str, setup_timeout: float) -> dict[str, Any]:
        self.url = url
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.read_stop)
            nursery.start_soon(self.watch_loop)
            for i in range(self.nodes):
                nursery.start_soon(self.node, i)
            with trio.move_on_after(setup_timeout):
                await self.all_joined.wait()
            # The sessions live until the end: out of the collector's way (a full collection over
            # 10,000 sessions stalls this loop for seconds). The pool under test is left as it is.
            gc.freeze()
            print(f"joined {time.time():.3f} {self.joined}", flush=True)
            await self.stopped.wait()
            await trio.sleep_until(self.stop_at + 2)  # the last replies, then GOODBYEs
            nursery.cancel_scope.cancel()
        return {"joined": self.joined, "beats": self.beats, "asked_per_s": sum(1000 / v for v in self.asked.values()),
                "asked_ms": sorted(self.asked.values()), "rejoins": self.rejoins, "overloaded": self.overloaded,
                "retry_after_ms": self.retry_after, "reconnects": self.reconnects,
                "rate_limited": self.rate_limited, "other_errors": self.other, "samples": self.samples,
                "loop_lag": self.loop_lag}


def loadgen_main(args: argparse.Namespace) -> int:
    load = None

    async def main() -> dict[str, Any]:
        nonlocal load
        load = Load(args.nodes, args.ttl, args.parallel, args.local, args.first)
        return await load.run(args.url, args.setup_timeout)
    from galaxynode.config import DaemonConfig
    from galaxynode.daemon import _gc_threshold
    with _gc_threshold(DaemonConfig().gc_threshold):  # as the pool: no full collections walking every session
        result = trio.run(main)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --- the parent: pool process, generators, measures ---------------------------------------------

def raise_fd_limits(need: int) -> int:
    """Soft (and, where allowed, hard) RLIMIT_NOFILE up to `need`; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scrape(url: str, name: str) -> float:
    """One sample of a metric from the pool's Prometheus endpoint (0 when absent, NaN when the pool
    did not answer within 60 s: a scrape is slow at tens of thousands of sessions on a busy box)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            text = r.read().decode()
    except OSError:
        return math.nan
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


class Generator:
    """A load-generator child process: its stdout is read by a thread into a queue."""

    def __init__(self, url: str, nodes: int, ttl: int, parallel: int, local: str, setup_timeout: float, first: int):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--loadgen", url, "--nodes", str(nodes), "--ttl", str(ttl),
             "--parallel", str(parallel), "--local", local, "--setup-timeout", str(setup_timeout),
             "--first", str(first)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.joined_at: float | None = None
        self.joined = 0
        self.result: dict[str, Any] | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def poll(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line.startswith("joined "):
                _, at, count = line.split()
                self.joined_at, self.joined = float(at), int(count)
            elif line.startswith("RESULT "):
                self.result = json.loads(line[7:])

    def stop_at(self, when: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"stop {when:.3f}\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(5)
        self.poll()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def run_load(*, nodes: int, ttl: int, budget: int, duration: float, loadgens: int, parallel: int,
             max_ttl: int | None = None, setup_timeout: float = SETUP_TIMEOUT) -> dict[str, Any]:
    """A pool process at `budget`, `nodes` nodes asking `ttl` in `loadgens` processes until
    `duration` seconds after the last one joined; the raw figures (see analyse)."""
    env = {**pool_env(nodes), "GALAXYNODE_REGISTRY_MIN_TTL": "1", "GALAXYNODE_LIMITS_VIOLATIONS_BEFORE_BAN": "1000",
           "GALAXYNODE_REGISTRY_MAX_HEARTBEATS_PER_S": str(budget), "GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}
    if max_ttl is not None:
        env["GALAXYNODE_REGISTRY_MAX_TTL"] = str(max_ttl)
    shares = [nodes // loadgens + (g < nodes % loadgens) for g in range(loadgens)]
    with tempfile.TemporaryDirectory(prefix="gn-pace-") as tmp, PoolProcess(Path(tmp) / "pool", env=env) as pool:
        metrics = pool.wait_for(r"serving metrics on (http://\S+/metrics)").group(1)
        expired_before = scrape(metrics, "galaxynode_leases_expired_total")
        started = time.time()
        gens = [Generator(pool.url, share, ttl, max(1, parallel // loadgens), f"127.0.0.{2 + g}", setup_timeout,
                          sum(shares[:g])) for g, share in enumerate(shares) if share]
        cpu: list[tuple[float, float]] = []
        gen_cpu: list[tuple[float, float]] = []  # all generators together
        main_cpu: list[tuple[float, float]] = []  # the pool's event-loop thread
        stop_at = expired_at_stop = None
        rss_at_stop = 0
        try:
            while True:
                now = time.time()
                cpu.append((now, cpu_seconds(pool.pid)))
                main_cpu.append((now, thread_cpu_seconds(pool.pid).get(pool.pid, 0.0)))
                gen_cpu.append((now, sum(cpu_seconds(g.proc.pid) for g in gens if g.proc.poll() is None)))
                for g in gens:
                    g.poll()
                if stop_at is None and all(g.joined_at is not None for g in gens):
                    stop_at = max(g.joined_at for g in gens) + duration
                    for g in gens:
                        g.stop_at(stop_at)
                if stop_at is not None and now >= stop_at - 0.5:
                    expired_at_stop = scrape(metrics, "galaxynode_leases_expired_total")
                    rss_at_stop = rss_kib(pool.pid)
                    break
                if any(g.proc.poll() is not None for g in gens) or not pool.alive():
                    break
                time.sleep(0.5)
        finally:
            for g in gens:
                if g.proc.poll() is None and stop_at is None:
                    g.stop_at(time.time())
            for g in gens:
                g.finish(60)
        exit_status = pool.stop(signal.SIGTERM)
        output = pool.output
    results = [g.result for g in gens]
    if stop_at is None or any(r is None for r in results):
        raise RuntimeError(f"a load generator failed (exit {[g.proc.returncode for g in gens]}); pool output:\n"
                           f"{output[-2000:]}")
    joined_at = max(g.joined_at for g in gens)  # type: ignore[type-var]
    return {"nodes": nodes, "ttl": ttl, "budget": budget, "loadgens": len(gens), "started": started,
            "all_joined_at": joined_at, "stop_at": stop_at, "cpu": cpu, "gen_cpu": gen_cpu, "main_cpu": main_cpu, "rss_kib": rss_at_stop,
            "joined": sum(r["joined"] for r in results),
            "beats": sorted(b for r in results for b in r["beats"]),
            "asked_per_s": sum(r["asked_per_s"] for r in results),
            "asked_ms": sorted(x for r in results for x in r["asked_ms"]),
            "leases_expired": (expired_at_stop or 0) - expired_before,
            **{k: sum(r[k] for r in results) for k in ("rejoins", "overloaded", "reconnects", "rate_limited",
                                                         "other_errors")},
            "retry_after_ms": [x for r in results for x in r["retry_after_ms"]],
            "samples": [s for r in results for s in r["samples"]][:5],
            "loop_lag": sorted(x for r in results for x in r["loop_lag"]),
            "pool_exit": exit_status, "pool_traceback": "Traceback" in output}


def analyse(r: dict[str, Any], window: float) -> dict[str, Any]:
    """Windows of `window` seconds from the last join, convergence (every window from t = 2 windows
    on within BAND of the target), latency after convergence, delivered or not."""
    t0, stop = r["all_joined_at"], r["stop_at"]
    beats = r["beats"]
    series = []
    k = -math.floor((t0 - r["started"]) / window)
    while t0 + (k + 1) * window <= stop + 1e-9:
        lo, hi = t0 + k * window, t0 + (k + 1) * window
        n = sum(1 for b in beats if lo <= b[0] < hi)
        series.append({"from_s": k * window, "per_s": n / window, "cpu_pct": cpu_pct(r["cpu"], lo, hi)})
        k += 1
    conv_from = t0 + 2 * window
    post = [b for b in beats if conv_from <= b[0] < stop]
    span = max(1e-9, stop - conv_from)
    served = len(post) / span
    lat = [b[1] for b in post]
    lag, asked = [b[2] for b in post], [b[3] for b in post]
    mean_interval = sum(asked) / len(asked) if asked else math.nan
    mean_lag = sum(lag) / len(lag) if lag else math.nan
    loop = [x[1] for x in r["loop_lag"] if conv_from <= x[0] < stop]
    target = min(r["budget"], r["nodes"] * 3 / r["ttl"])
    after = [w for w in series if w["from_s"] >= 2 * window - 1e-9]
    return {"window_s": window, "series": series, "served_per_s": served, "target_per_s": target,
            "converged": bool(after) and all(BAND[0] * target <= w["per_s"] <= BAND[1] * target for w in after),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=math.nan),
            "mean_interval_ms": mean_interval, "mean_lag_ms": mean_lag, "p99_lag_ms": percentile(lag, 99),
            "loop_lag_p99_ms": percentile(loop, 99), "loop_lag_max_ms": max(loop, default=math.nan),
            "delivered": bool(post) and mean_lag <= RATE_TOLERANCE * mean_interval
            and percentile(loop, 99) <= MAX_LOOP_LAG_MS,
            "cpu_pct": cpu_pct(r["cpu"], conv_from, stop), "beats_after": len(post),
            "gen_cpu_pct": cpu_pct(r.get("gen_cpu", []), conv_from, stop),
            "main_cpu_pct": cpu_pct(r.get("main_cpu", []), conv_from, stop),
            "silent_nodes": r["joined"] - len({b[4] for b in post})}


def cpu_pct(samples: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Pool CPU % of one core between two wall times, from the nearest samples inside."""
    inside = [s for s in samples if lo <= s[0] <= hi]
    if len(inside) < 2:
        return math.nan
    (t1, c1), (t2, c2) = inside[0], inside[-1]
    return 100 * (c2 - c1) / (t2 - t1) if t2 > t1 else math.nan


def print_run(name: str, r: dict[str, Any], a: dict[str, Any]) -> None:
    print(f"\n[{name}] {r['nodes']:,} nodes asking ttl {r['ttl']} s, max_heartbeats_per_s {r['budget']:,}, "
          f"{r['loadgens']} load generator(s); joined {r['joined']:,} in {r['all_joined_at'] - r['started']:.1f} s; "
          f"window = {a['window_s']:g} s")
    print("  window from t (s)  served HEARTBEAT/s  pool CPU %   (t = 0: the last node joined)")
    for w in a["series"]:
        print(f"  {w['from_s']:>17.1f}  {w['per_s']:>18,.0f}  {w['cpu_pct']:>10.0f}")
    print(f"  after convergence (t >= {2 * a['window_s']:g} s): {a['served_per_s']:,.0f} HEARTBEAT/s served "
          f"(target {a['target_per_s']:,.0f}: {'in' if a['converged'] else 'NOT in'} band "
          f"{BAND[0]:.2f}..{BAND[1]:.2f} in every window); latency p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, "
          f"max {a['max_ms']:.0f} ms; pool CPU {a['cpu_pct']:.0f}% (event-loop thread {a['main_cpu_pct']:.0f}%)")
    print(f"  asked at the end: sum of 1/interval = {r['asked_per_s']:,.0f}/s (bound budget/0.9 = "
          f"{r['budget'] / 0.9:,.0f}); intervals {percentile(r['asked_ms'], 1) / 1000:.2f}.."
          f"{percentile(r['asked_ms'], 100) / 1000:.2f} s")
    print(f"  load generator: mean send lag {a['mean_lag_ms']:.1f} ms (p99 {a['p99_lag_ms']:.0f} ms) of a mean "
          f"interval {a['mean_interval_ms']:.0f} ms, event-loop lag p99 {a['loop_lag_p99_ms']:.0f} ms (max "
          f"{a['loop_lag_max_ms']:.0f}), CPU {a['gen_cpu_pct']:.0f}% of a core: "
          f"{'delivered' if a['delivered'] else 'NOT delivered, no verdict'}; "
          f"{a['silent_nodes']} joined nodes got no LEASE after convergence")
    print(f"  leases lost: {r['leases_expired']:.0f} expired (pool metric), {r['rejoins']} rejoins after not_joined; "
          f"JOINs refused overloaded {r['overloaded']}; reconnects {r['reconnects']}; rate_limited "
          f"{r['rate_limited']}; other errors {r['other_errors']}{' ' + str(r['samples']) if r['samples'] else ''}")
    print(f"  pool RSS {r['rss_kib'] / 1024:.0f} MiB ({r['rss_kib'] / max(1, r['joined']):.1f} KiB per node); "
          f"exit status {r['pool_exit']}{', TRACEBACK in its output' if r['pool_traceback'] else ''}")


def rows_of(paced: dict, pa: dict, base: dict, ba: dict) -> list[dict]:
    """The summary table: ours (paced) beside the baseline (pacing off), same run."""
    ok = pa["delivered"]

    def fig(a: dict, text: str) -> str:
        return text if a["delivered"] else "not measured"
    rows = [
        {"metric": f"served HEARTBEAT/s after 2 windows, {paced['nodes']:,} nodes asking {paced['ttl'] / 3:g} s "
                   f"(budget {paced['budget']:,})",
         "ours": fig(pa, f"{pa['served_per_s']:,.0f}"), "baseline": fig(ba, f"{ba['served_per_s']:,.0f}"),
         "ratio": "-", "target": f"budget +-{100 * (1 - BAND[0]):.0f}%",
         "met": pa["converged"] if ok else None},
        {"metric": "heartbeat latency p99 ms after convergence",
         "ours": fig(pa, f"{pa['p99_ms']:.0f}"), "baseline": fig(ba, f"{ba['p99_ms']:.0f}"),
         "ratio": f"{ba['p99_ms'] / pa['p99_ms']:.1f}x lower" if ok and ba["delivered"] and pa["p99_ms"] > 0 else "-",
         "target": f"< {TARGET_P99_MS:g}", "met": pa["p99_ms"] < TARGET_P99_MS if ok else None},
        {"metric": "heartbeat latency p50 ms after convergence",
         "ours": fig(pa, f"{pa['p50_ms']:.1f}"), "baseline": fig(ba, f"{ba['p50_ms']:.1f}"), "ratio": "-",
         "target": "-", "met": None},
        {"metric": "leases lost (expired + rejoins)",
         "ours": f"{paced['leases_expired']:.0f} + {paced['rejoins']}",
         "baseline": f"{base['leases_expired']:.0f} + {base['rejoins']}", "ratio": "-", "target": "0",
         "met": None if math.isnan(paced["leases_expired"]) else paced["leases_expired"] == 0 and paced["rejoins"] == 0},
        {"metric": "sum of 1/interval asked at the end, per s (bound budget/0.9)",
         "ours": f"{paced['asked_per_s']:,.0f}", "baseline": f"{base['asked_per_s']:,.0f}", "ratio": "-",
         "target": f"<= {paced['budget'] / 0.9:,.0f}", "met": paced["asked_per_s"] <= paced["budget"] / 0.9},
    ]
    return rows


def print_table(rows: list[dict]) -> None:
    header = ("metric", "ours", "baseline", "ratio", "target", "met?")
    table = [header] + [(x["metric"], x["ours"], x["baseline"], x["ratio"], x["target"],
                         "-" if x["met"] is None else ("yes" if x["met"] else "NO")) for x in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    print()
    for j, t in enumerate(table):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths))))
        if j == 0:
            print("-+-".join("-" * w for w in widths))


def capacity(nodes: int, loadgens: int, parallel: int, duration: float | None) -> dict[str, Any]:
    """`nodes` nodes asking a 10 s interval against the default budget and max_ttl."""
    window = max(CAPACITY_TTL / 3, nodes / DEFAULT_BUDGET)
    r = run_load(nodes=nodes, ttl=CAPACITY_TTL, budget=DEFAULT_BUDGET, duration=duration or 3 * window,
                 loadgens=loadgens, parallel=parallel)
    return r | {"analysis": analyse(r, window)}


def print_capacity(r: dict[str, Any]) -> None:
    a = r["analysis"]
    print(f"\n[capacity] {r['nodes']:,} nodes asking a 10 s interval (ttl {CAPACITY_TTL} s), budget "
          f"{r['budget']:,}/s, max_ttl 3600 s: {r['joined']:,} joined in {r['all_joined_at'] - r['started']:.0f} s, "
          f"{r['overloaded']} JOINs refused overloaded (theory: none below {r['budget'] * 3600 // 3:,} leases)")
    print(f"  asked: intervals {percentile(r['asked_ms'], 1) / 1000:.1f}..{percentile(r['asked_ms'], 100) / 1000:.1f} s "
          f"(N/budget = {r['nodes'] / r['budget']:.1f} s), sum of 1/interval {r['asked_per_s']:,.0f}/s; served "
          f"{a['served_per_s']:,.0f} HEARTBEAT/s; latency p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms; pool CPU "
          f"{a['cpu_pct']:.0f}% (event-loop thread {a['main_cpu_pct']:.0f}%); load generators: loop lag p99 {a['loop_lag_p99_ms']:.0f} ms, CPU "
          f"{a['gen_cpu_pct']:.0f}%: {'delivered' if a['delivered'] else 'NOT delivered, no verdict'}")
    print(f"  leases lost {r['leases_expired']:.0f} + {r['rejoins']} rejoins; pool RSS {r['rss_kib'] / 1024:.0f} MiB = "
          f"{r['rss_kib'] / max(1, r['joined']):.1f} KiB per joined node (session included)")


def refusal() -> dict[str, Any]:
    """The refusal point at a small scale: budget 20/s, max_ttl 30 s, 250 nodes asking ttl 30."""
    r = run_load(nodes=REFUSAL["nodes"], ttl=CAPACITY_TTL, budget=REFUSAL["budget"], duration=3,
                 loadgens=1, parallel=32, max_ttl=REFUSAL["max_ttl"], setup_timeout=20)
    return r


def print_refusal(r: dict[str, Any]) -> None:
    theory = REFUSAL["budget"] * REFUSAL["max_ttl"] // 3
    ra = r["retry_after_ms"]
    print(f"\n[refusal point] budget {REFUSAL['budget']}/s, max_ttl {REFUSAL['max_ttl']} s (JOINs refused past "
          f"budget * max_ttl / 3 = {theory} leases): {REFUSAL['nodes']} nodes -> {r['joined']} joined, "
          f"{r['overloaded']} JOINs refused overloaded, retry_after {min(ra, default=0) / 1000:.1f}.."
          f"{max(ra, default=0) / 1000:.1f} s; intervals asked up to {percentile(r['asked_ms'], 100) / 1000:.1f} s "
          f"(max_ttl/3 = {REFUSAL['max_ttl'] / 3:g} s); leases lost {r['leases_expired']:.0f}")


def slim(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in ("beats", "cpu", "gen_cpu", "main_cpu", "asked_ms", "loop_lag")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 nodes, budget 100/s, 16 s after the last join")
    ap.add_argument("--nodes", type=int, help="simulated nodes (default 5,000; quick 400)")
    ap.add_argument("--ttl", type=int, default=3, help="ttl the nodes ask, seconds (default 3: 1 s intervals)")
    ap.add_argument("--budget", type=int, help=f"max_heartbeats_per_s of the paced run (default {DEFAULT_BUDGET:,}; "
                                               "quick 100)")
    ap.add_argument("--duration", type=float, help="seconds measured after the last node joined (default 6 windows)")
    ap.add_argument("--loadgens", type=int, default=1, help="load-generator processes (default 1)")
    ap.add_argument("--parallel", type=int, default=64, help="handshakes in flight at once, in all (default 64)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the pacing-off run")
    ap.add_argument("--no-main", action="store_true", help="skip the paced and baseline runs (with --capacity, "
                                                          "--refusal)")
    ap.add_argument("--capacity", type=int, default=0, metavar="K",
                    help="also hold K nodes at a 10 s asked interval (default budget and max_ttl)")
    ap.add_argument("--refusal", action="store_true", help="also show the refusal point at a small scale")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)  # a load-generator child
    ap.add_argument("--local", help=argparse.SUPPRESS)
    ap.add_argument("--setup-timeout", type=float, default=SETUP_TIMEOUT, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        args.url = args.loadgen
        return loadgen_main(args)
    nodes = args.nodes or (400 if args.quick else 5_000)
    budget = args.budget or (100 if args.quick else DEFAULT_BUDGET)
    if nodes < 1 or args.ttl < 1 or budget < 1 or args.loadgens < 1:
        ap.error("--nodes, --ttl, --budget and --loadgens must be positive")
    window = max(args.ttl / 3, nodes / budget)
    duration = args.duration or (4 * window if args.quick else 6 * window)
    limit = raise_fd_limits(max(nodes, args.capacity) + FD_HEADROOM * 4)
    if max(nodes, args.capacity) > limit - FD_HEADROOM:
        # One socket per node in the pool process: past its fd limit the pool cannot accept, and the
        # sessions it holds suffer too (measured: 20,000 sessions at a limit of 20,000).
        print(f"fd limit {limit}: at most {limit - FD_HEADROOM:,} nodes per pool process here", file=sys.stderr)
        nodes, args.capacity = min(nodes, limit - FD_HEADROOM), min(args.capacity, limit - FD_HEADROOM)
    print(f"load on this machine at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
          f"({os.cpu_count()} cores)")
    common = dict(nodes=nodes, ttl=args.ttl, duration=duration, loadgens=args.loadgens, parallel=args.parallel)
    out: dict[str, Any] = {}
    ok = True
    if not args.no_main:
        paced = run_load(budget=budget, **common)
        pa = analyse(paced, window)
        print_run("paced", paced, pa)
        out["paced"] = slim(paced) | {"analysis": pa}
        ok = paced["pool_exit"] == 0 and not paced["pool_traceback"]
    if not args.no_main and not args.no_baseline:
        base = run_load(budget=PACING_OFF, **common)
        ba = analyse(base, window)
        print_run("baseline: pacing off", base, ba)
        out["baseline"] = slim(base) | {"analysis": ba}
        rows = rows_of(paced, pa, base, ba)
        print_table(rows)
        out["table"] = rows
        ok = ok and base["pool_exit"] == 0 and not base["pool_traceback"]
    if args.refusal:
        rf = refusal()
        print_refusal(rf)
        out["refusal"] = slim(rf)
    if args.capacity:
        cap = capacity(args.capacity, args.loadgens, args.parallel, None)
        print_capacity(cap)
        out["capacity"] = slim(cap)
    print(f"load on this machine at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
