#!/usr/bin/env python3
"""Gelato session throughput, handshake latency and concurrent sessions, with the baselines measured
in the same run: bare trio-websocket (with our carrier settings, and with the library's defaults) and,
when installed, py-libp2p (Noise + Yamux; the `bench` extra) as a peer; same message sizes.

Each server runs in a process of its own (this script with --serve KIND), the clients in this one;
loopback only. A server process (in a session of its own) answers each line on its stdin with one
JSON line and exits at EOF, so it goes away with us whatever happens to us, Ctrl-C and kill -9 included.
All clients live in one trio run and take turns repetition by repetition (ours, baseline, other
baseline, ours, ...; medians), so drift (a noisy neighbour, frequency scaling) hits them alike.

  one-way    PONG frames node -> pool, pipelined through one session; the pool's reader authenticates
             and drops unsolicited PONGs. Each repetition ends with a HEARTBEAT request, whose reply
             shows that every earlier frame was processed; the server's frame counter confirms the
             count. Baselines: same-size binary messages, then a marker that the server answers.
  req/rep    HEARTBEAT -> LEASE through the pool's handler and its DURABLE registry (SQLite in a temp
             directory, group commit as the daemon configures it: the real commit before each reply),
             `window` requests in flight. Baselines: echo of same-size messages, same window.
  handshake  connect + HELLO/HELLO/READY over sequential connections; baselines: TCP + WebSocket
             upgrade; a py-libp2p host dialling (TCP, multistream, Noise XX, Yamux; fewer dials).
  sessions   K sessions held against one fresh pool process; its VmRSS delta per session.

    .venv/bin/python scripts/bench_session.py [--quick] [--sessions K] [--json PATH]

`bench(quick)` returns the summary rows for scripts/bench.py (metric, ours, baseline, ratio, target, met).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator

import attrs
import trio
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galaxynode.config import RegistryConfig  # noqa: E402
from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.errors import ProtocolError  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402
from galaxynode.net import ChannelClosed, Server, SessionLimits, connect  # noqa: E402
from galaxynode.net.transport import _MESSAGE_QUEUE, _RECEIVE_BYTES  # noqa: E402
from galaxynode.pool import PoolInfo, PoolServices  # noqa: E402
from galaxynode.registry import LeaseTable, Registry  # noqa: E402

import bench_libp2p  # noqa: E402  (this folder: scripts/)
from bench_codec import session_pair  # noqa: E402
from bench_heartbeats import percentile, raise_fd_limit, rss_kib  # noqa: E402

NETWORK = "bench"
# issue 16's targets (Gelato v2), ratios to baselines measured in the same run
TARGET_ONE_WAY = 0.60     # session one-way frames/s / bare trio-websocket
TARGET_REQ_REP = 0.55     # HEARTBEAT/LEASE req/rep / trio-websocket echo
TARGET_HANDSHAKE = 2.5    # handshake p50 / trio-websocket connect p50, at most
TARGET_LIBP2P_ONE_WAY = 3.0   # ours / py-libp2p one-way, at least
TARGET_LIBP2P_REQ_REP = 2.0   # ours / py-libp2p request/reply, at least
TARGET_KIB_PER_SESSION = 100.0  # issue 7: 1,000 concurrent sessions with < 100 KiB each (pool server RSS)
FRAME_SIZE = 250          # aimed size of a one-way frame in bytes (PONG data is at most 64 bytes)
MAX_MESSAGE = 1024 * 1024
# trio-websocket as galaxynode's transport sets it up, client and server. The other baseline passes none of
# these: the library's defaults (today they differ in receive_buffer_size, 4 KiB instead of 64 KiB).
CARRIER = dict(message_queue_size=_MESSAGE_QUEUE, max_message_size=MAX_MESSAGE, receive_buffer_size=_RECEIVE_BYTES)
FD_HEADROOM = 256
# The default per-session rate limit (200 frames/s) would measure the limiter, not the session.
LIMITS = SessionLimits(frame_rate=1e9, frame_burst=10**9, byte_rate=1e12, byte_burst=10**12)
WARMUP_CONNECTS = 5


@attrs.frozen
class Config:
    n: int              # messages per repetition
    warmup: int         # messages before the first repetition (not measured)
    reps: int
    window: int         # requests in flight for req/rep and echo
    handshakes: int     # sequential connections for handshake latency
    libp2p_dials: int   # the same for py-libp2p (each dial takes about 250 ms of its own waiting)
    sessions: int       # concurrent sessions held
    hold: float         # seconds the sessions are held before they are counted
    parallel: int       # handshakes in flight while opening the sessions


FULL = Config(n=10_000, warmup=1_000, reps=5, window=64, handshakes=300, libp2p_dials=20, sessions=1000, hold=3.0,
              parallel=32)
QUICK = Config(n=2_000, warmup=200, reps=3, window=64, handshakes=50, libp2p_dials=4, sessions=100, hold=0.5,
               parallel=32)


def shares(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


# --- server processes -----------------------------------------------------------------------------

def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _trio_control(stats: Any) -> None:
    """Answer each line on stdin with stats() until EOF."""
    buf = b""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while chunk := await stdin.receive_some():
            *lines, buf = (buf + chunk).split(b"\n")
            for _ in lines:
                _reply(stats())


class _Unpaced:
    """A session bucket that allows every HEARTBEAT: req/rep sends them back to back to time the handler
    and the durable registry, which a paced pool refuses past a burst of two (galaxynode.registry.pacing)."""

    interval = None

    def allow(self, now: float) -> bool:
        return True

    def leased(self, interval_ms: int, now: float) -> None:
        pass


def unpaced(handler: Any) -> Any:
    handler.early = _Unpaced()
    return handler


async def serve_pool(max_sessions: int, durable: bool) -> None:
    identity = Identity.generate()
    rc = RegistryConfig()
    with tempfile.TemporaryDirectory(prefix="gn-bench-") as tmp:
        # As the daemon opens it: SQLite, group commit every commit_interval, a reply after the commit.
        registry = await Registry.open(Path(tmp) / "registry.sqlite" if durable else None, LeaseTable(), None,
                                       expiry_interval=rc.expiry_interval, commit_interval=rc.commit_interval)
        services = PoolServices(PoolInfo(identity.public, "bench", NETWORK), registry, None)
        server = Server(identity, network=NETWORK, limits=LIMITS, max_connections=max_sessions,
                        max_pending=max_sessions, handler_factory=lambda conn: unpaced(services.handler()))

        def stats() -> dict:
            conns = list(server.connections.values())
            # per session: the other sessions' keepalive PONGs must not count as one-way frames
            return {"sessions": len(conns), "frames_in": {c.peer_key.hex(): c.stats.frames_in for c in conns},
                    "commits": registry.commits, **attrs.asdict(server.stats)}

        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            urls = await nursery.start(server.run)
            _reply({"url": urls[0]})
            await _trio_control(stats)
            await server.shutdown()
            nursery.cancel_scope.cancel()


async def serve_trio_websocket(settings: dict[str, Any]) -> None:
    """Echo binary messages on /echo; elsewhere count them and answer a text marker with the count."""
    async def handler(request: Any) -> None:
        try:
            ws = await request.accept()
            echo, count = request.path == "/echo", 0
            while True:
                msg = await ws.get_message()
                if isinstance(msg, str):
                    await ws.send_message(str(count))
                    count = 0
                elif echo:
                    await ws.send_message(msg)
                else:
                    count += 1
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None, **settings))
        _reply({"url": f"ws://127.0.0.1:{server.port}"})
        await _trio_control(dict)
        nursery.cancel_scope.cancel()


async def serve_libp2p() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bench_libp2p.serve, lambda addr: _reply({"url": addr}))
        await _trio_control(dict)
        nursery.cancel_scope.cancel()


SERVERS = ("pool", "pool-memory", "trio-websocket", "trio-websocket-defaults", "libp2p")


def run_server(kind: str, max_sessions: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # we stop at EOF on stdin, whoever is interrupted
    raise_fd_limit(max_sessions + FD_HEADROOM)
    if kind in ("pool", "pool-memory"):
        trio.run(serve_pool, max_sessions, kind == "pool")
    elif kind == "trio-websocket":
        trio.run(serve_trio_websocket, CARRIER)
    elif kind == "trio-websocket-defaults":
        trio.run(serve_trio_websocket, {})
    else:
        trio.run(serve_libp2p)


class ServerProcess:
    """A --serve child: `url` once it listens, `stats()` on demand; closing its stdin ends it."""

    def __init__(self, kind: str, *, max_sessions: int = 64, stop_timeout: float = 20.0):
        self.kind = kind
        self.stop_timeout = stop_timeout
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--sessions", str(max_sessions)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            start_new_session=True)  # Ctrl-C is for us alone; we end the child by closing its stdin
        try:
            self.url: str = self._read()["url"]
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} server exited (status {self.proc.poll()})")
        return json.loads(line)

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            try:
                self.proc.stdin.close()
            except OSError:  # the child is gone already
                pass
            self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.kind} server did not stop; killing it", file=sys.stderr)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- clients: each has open(), one_way(n), req_rep(n) and connect() (seconds) ------------------------

@attrs.frozen
class Sizes:
    one_way: int        # PONG frame
    request: int        # HEARTBEAT frame
    pong: m.Pong        # padded to make one_way about FRAME_SIZE (as far as PONG's 64 data bytes allow)


def frame_sizes() -> Sizes:
    """Sizes of mid-session frames (a large seq, as after a while) as this codec version encodes them."""
    opener, _ = session_pair(Identity.generate(), Identity.generate())
    opener.send_seq = 1 << 20

    def size(msg: Any) -> int:
        return len(opener.encode(msg))
    pad = max(0, min(64, FRAME_SIZE - size(m.Pong(data=b""))))
    pong = m.Pong(data=os.urandom(pad))
    return Sizes(size(pong), size(m.Heartbeat()), pong)


class PoolClient:
    """Sessions with a pool process: one-way PONGs over the first, `window` HEARTBEATs in flight over
    `req_sessions` sessions (a session handles its requests in order: with a durable registry, one
    session holds its next request while the previous one's commit is under way), fresh handshakes."""

    def __init__(self, srv: ServerProcess, cfg: Config, sizes: Sizes, *, req_sessions: int = 1,
                 kinds: tuple[str, ...] = ("one_way", "req_rep", "handshake")):
        self.srv, self.cfg, self.sizes, self.req_sessions, self.kinds = srv, cfg, sizes, req_sessions, kinds
        self.verified: list[tuple[int, int]] = []   # (frames sent, frames the server counted)
        self.dials = cfg.handshakes if "handshake" in kinds else 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator["PoolClient"]:
        async with AsyncExitStack() as stack:
            self.conns, idents = [], [Identity.generate() for _ in range(self.req_sessions)]
            for ident in idents:
                conn = await stack.enter_async_context(connect(self.srv.url, ident, network=NETWORK, limits=LIMITS))
                await conn.request(m.Join(ttl=3600))
                self.conns.append(conn)
            self.conn, self.key = self.conns[0], idents[0].public.hex()   # one-way goes over the first
            yield self

    async def one_way(self, n: int) -> float:
        before = (await trio.to_thread.run_sync(self.srv.stats))["frames_in"][self.key]
        start = time.perf_counter()
        for _ in range(n):
            await self.conn.send(self.sizes.pong)
        await self.conn.request(m.Heartbeat())   # answered only after all n were processed
        elapsed = time.perf_counter() - start
        after = (await trio.to_thread.run_sync(self.srv.stats))["frames_in"][self.key]
        self.verified.append((n, after - before - 1))
        return elapsed

    async def req_rep(self, n: int) -> float:
        async def requester(conn: Any, count: int) -> None:
            for _ in range(count):
                await conn.request(m.Heartbeat())
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i, count in enumerate(shares(n, self.cfg.window)):
                nursery.start_soon(requester, self.conns[i % len(self.conns)], count)
        return time.perf_counter() - start

    async def connect(self) -> float:
        start = time.perf_counter()
        async with connect(self.srv.url, Identity.generate(), network=NETWORK, limits=LIMITS):
            return time.perf_counter() - start


class WebSocketClient:
    """The trio-websocket baselines: /sink (the server counts), /echo (windowed), connect latency."""

    def __init__(self, url: str, settings: dict[str, Any], cfg: Config, sizes: Sizes):
        self.url, self.settings, self.cfg = url, settings, cfg
        self.one, self.req = os.urandom(sizes.one_way), os.urandom(sizes.request)
        self.dials = cfg.handshakes
        self.kinds = ("one_way", "req_rep", "handshake")

    @asynccontextmanager
    async def open(self) -> AsyncIterator["WebSocketClient"]:
        async with open_websocket_url(self.url + "/sink", **self.settings) as sink, \
                open_websocket_url(self.url + "/echo", **self.settings) as echo:
            self.sink, self.echo = sink, echo
            yield self

    async def one_way(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await self.sink.send_message(self.one)
        await self.sink.send_message("done")
        counted = int(await self.sink.get_message())
        elapsed = time.perf_counter() - start
        assert counted == n, (counted, n)
        return elapsed

    async def req_rep(self, n: int) -> float:
        window = trio.Semaphore(self.cfg.window)

        async def sender() -> None:
            for _ in range(n):
                await window.acquire()
                await self.echo.send_message(self.req)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for _ in range(n):
                await self.echo.get_message()
                window.release()
        return time.perf_counter() - start

    async def connect(self) -> float:
        start = time.perf_counter()
        async with open_websocket_url(self.url + "/echo", **self.settings):
            return time.perf_counter() - start


async def interleaved(clients: dict[str, Any], cfg: Config) -> dict[str, dict[str, list[float]]]:
    """msgs/s per repetition (one_way, req_rep) and connect latencies (handshake, s) of every client,
    the clients taking turns within each repetition after a warm-up run each."""
    out: dict[str, dict[str, list[float]]] = {name: {"one_way": [], "req_rep": [], "handshake": []}
                                              for name in clients}
    async with AsyncExitStack() as stack:
        for c in clients.values():
            await stack.enter_async_context(c.open())
        for kind in ("one_way", "req_rep"):
            takers = {name: c for name, c in clients.items() if kind in c.kinds}
            for c in takers.values():
                await getattr(c, kind)(cfg.warmup)
            for _ in range(cfg.reps):
                for name, c in takers.items():
                    out[name][kind].append(cfg.n / await getattr(c, kind)(cfg.n))
        for i in range(WARMUP_CONNECTS + max(c.dials for c in clients.values())):
            for name, c in clients.items():
                if i < WARMUP_CONNECTS + c.dials:
                    took = await c.connect()
                    if i >= WARMUP_CONNECTS:
                        out[name]["handshake"].append(took)
    return out


async def hold_sessions(srv: ServerProcess, cfg: Config) -> dict:
    """Open cfg.sessions sessions (cfg.parallel handshakes at a time), hold them, count and measure."""
    for ident in [Identity.generate() for _ in range(8)]:  # warm the server's code paths first
        async with connect(srv.url, ident, network=NETWORK, limits=LIMITS):
            pass
    await trio.sleep(0.3)
    idents = [Identity.generate() for _ in range(cfg.sessions)]
    server_before, client_before = rss_kib(srv.pid), rss_kib(os.getpid())
    gate = trio.Semaphore(cfg.parallel)
    conns: list[Any] = []
    failures: list[str] = []
    settled, release = trio.Event(), trio.Event()

    def count(failure: str | None = None) -> None:
        if failure is not None:
            failures.append(failure)
        if len(conns) + len(failures) == cfg.sessions:
            settled.set()

    async def hold_one(ident: Identity) -> None:
        await gate.acquire()
        opening = True
        try:
            async with connect(srv.url, ident, network=NETWORK, limits=LIMITS) as conn:
                gate.release()
                opening = False
                conns.append(conn)
                count()
                await release.wait()
        except (ChannelClosed, ProtocolError) as e:
            if opening:
                count(str(e))
        finally:
            if opening:
                gate.release()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for ident in idents:
            nursery.start_soon(hold_one, ident)
        await settled.wait()
        open_seconds = time.perf_counter() - start
        await trio.sleep(cfg.hold)
        stats = await trio.to_thread.run_sync(srv.stats)
        server_after, client_after = rss_kib(srv.pid), rss_kib(os.getpid())
        alive = sum(not c.closed for c in conns)
        release.set()
    k = cfg.sessions
    return {"sessions": k, "opened": len(conns), "alive_client": alive, "alive_server": stats["sessions"],
            "failures": failures[:5], "open_seconds": open_seconds, "hold_seconds": cfg.hold,
            "server_rss_kib": [server_before, server_after], "client_rss_kib": [client_before, client_after],
            "server_kib_per_session": (server_after - server_before) / k,
            "client_kib_per_session": (client_after - client_before) / k}


# --- report -----------------------------------------------------------------------------------------

def rows_of(res: dict, sizes: Sizes) -> list[dict]:
    """The summary rows (metric, ours, baseline, ratio, target, met), issue 16's targets."""
    med = statistics.median
    pool, tw = res["pool"], res["trio_websocket"]
    rows = []

    def row(metric: str, ours: float, theirs: float, fmt: str, target: str = "-", met: bool | None = None,
            ratio_suffix: str = "") -> None:
        rows.append({"metric": metric, "ours": format(ours, fmt), "baseline": format(theirs, fmt),
                     "ratio": f"{ours / theirs:.2f}{ratio_suffix}", "target": target, "met": met})

    one, theirs = med(pool["one_way"]), med(tw["one_way"])
    row(f"session one-way msg/s ({sizes.one_way} B frames) vs trio-websocket", one, theirs, ",.0f",
        f">= {TARGET_ONE_WAY:.2f}", one / theirs >= TARGET_ONE_WAY)
    rr, theirs = med(pool["req_rep"]), med(tw["req_rep"])
    row(f"session req/rep msg/s (HEARTBEAT/LEASE {sizes.request} B, DURABLE SQLite registry, {res['window']} "
        f"sessions x 1 in flight) vs trio-websocket echo (window {res['window']})", rr, theirs, ",.0f",
        f">= {TARGET_REQ_REP:.2f}", rr / theirs >= TARGET_REQ_REP)
    mem = med(res["pool_memory"]["req_rep"])
    row(f"session req/rep msg/s (IN-MEMORY registry, no commit: as v1 measured it; 1 session, window "
        f"{res['window']}) vs trio-websocket echo", mem, theirs, ",.0f")
    row("session one-way msg/s vs trio-websocket with the library's default settings", one,
        med(res["trio_websocket_defaults"]["one_way"]), ",.0f")
    ours_p50, theirs_p50 = percentile(pool["handshake"], 50) * 1000, percentile(tw["handshake"], 50) * 1000
    row("handshake p50 ms vs trio-websocket connect", ours_p50, theirs_p50, ".2f", f"<= {TARGET_HANDSHAKE:g}x",
        ours_p50 / theirs_p50 <= TARGET_HANDSHAKE, "x")
    row("handshake p99 ms vs trio-websocket connect", percentile(pool["handshake"], 99) * 1000,
        percentile(tw["handshake"], 99) * 1000, ".2f", ratio_suffix="x")
    p2p = res.get("libp2p")
    if p2p is None:
        rows.append({"metric": f"py-libp2p peer baseline: skipped, {res['libp2p_skipped']}", "ours": "-",
                     "baseline": "-", "ratio": "-", "target": "-", "met": None})
    else:
        theirs = med(p2p["one_way"])
        row(f"session one-way msg/s vs py-libp2p one stream (Noise+Yamux, {sizes.one_way} B)", one, theirs,
            ",.0f", f">= {TARGET_LIBP2P_ONE_WAY:g}", one / theirs >= TARGET_LIBP2P_ONE_WAY)
        theirs = med(p2p["req_rep"])
        row(f"session req/rep msg/s vs py-libp2p echo ({sizes.request} B, window {res['window']})", rr, theirs,
            ",.0f", f">= {TARGET_LIBP2P_REQ_REP:g}", rr / theirs >= TARGET_LIBP2P_REQ_REP)
        row("handshake p50 ms vs py-libp2p host connect()", ours_p50, percentile(p2p["handshake"], 50) * 1000,
            ".2f", ratio_suffix="x")
    sent, counted = (sum(v[i] for v in res["verified"]) for i in (0, 1))
    rows.append({"metric": "session one-way frames counted by the pool (all authenticated)", "ours": f"{counted:,}",
                 "baseline": f"{sent:,} sent", "ratio": "-", "target": "all", "met": counted == sent})
    s = res["sessions"]
    held = s["alive_client"] == s["alive_server"] == s["sessions"]
    rows.append({"metric": f"concurrent sessions held {s['hold_seconds']:g}s", "ours": f"{s['alive_server']}",
                 "baseline": "-", "ratio": "-", "target": f"{s['sessions']}" + (" (1,000 in a full run)"
                                                                               if s["sessions"] < 1000 else ""),
                 "met": held})
    kib = s["server_kib_per_session"]
    rows.append({"metric": f"pool server RSS KiB per session ({s['sessions']} sessions)", "ours": f"{kib:.1f}",
                 "baseline": "-", "ratio": "-", "target": f"< {TARGET_KIB_PER_SESSION:g}",
                 "met": kib < TARGET_KIB_PER_SESSION})
    return rows


def print_table(rows: list[dict]) -> None:
    header = ("metric", "ours", "baseline", "ratio", "target", "met?")
    table = [header] + [(r["metric"], r["ours"], r["baseline"], r["ratio"], r["target"],
                         "-" if r["met"] is None else ("yes" if r["met"] else "NO")) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    for j, t in enumerate(table):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths))))
        if j == 0:
            print("-+-".join("-" * w for w in widths))


def measure(cfg: Config) -> tuple[Config, Sizes, dict]:
    """Run every part of the benchmark; returns the config actually used (the session count may be
    lowered to fit the fd limit), the frame sizes and the raw results."""
    limit = raise_fd_limit(cfg.sessions + FD_HEADROOM)
    if limit < cfg.sessions + FD_HEADROOM:
        cfg = attrs.evolve(cfg, sessions=max(1, limit - FD_HEADROOM))
        print(f"fd limit {limit}: holding only {cfg.sessions} sessions", file=sys.stderr)
    sizes = frame_sizes()
    res: dict[str, Any] = {"window": cfg.window}
    skipped = bench_libp2p.available()
    with ServerProcess("pool", max_sessions=cfg.window + 64) as pool_srv, ServerProcess("pool-memory") as mem_srv, \
            ServerProcess("trio-websocket") as tw_srv, ServerProcess("trio-websocket-defaults") as twd_srv:
        pool = PoolClient(pool_srv, cfg, sizes, req_sessions=cfg.window)
        clients: dict[str, Any] = {"pool": pool,
                                   "pool_memory": PoolClient(mem_srv, cfg, sizes, kinds=("req_rep",)),
                                   "trio_websocket": WebSocketClient(tw_srv.url, CARRIER, cfg, sizes),
                                   "trio_websocket_defaults": WebSocketClient(twd_srv.url, {}, cfg, sizes)}
        p2p_srv = None if skipped else ServerProcess("libp2p")
        try:
            if p2p_srv is not None:
                clients["libp2p"] = bench_libp2p.Client(p2p_srv.url, sizes.one_way, sizes.request, cfg.window,
                                                        cfg.libp2p_dials)
            res.update(trio.run(interleaved, clients, cfg))
        finally:
            if p2p_srv is not None:
                p2p_srv.close()
        res["verified"] = pool.verified
        stats = pool_srv.stats()
        res["server_violations"], res["server_handshake_failed"] = stats["violations"], stats["handshake_failed"]
        res["durable_commits"] = stats["commits"]   # HEARTBEATs per commit = req/rep requests / this
    res["libp2p_skipped"] = skipped
    with ServerProcess("pool", max_sessions=cfg.sessions + cfg.parallel) as srv:
        res["sessions"] = trio.run(hold_sessions, srv, cfg)
    return cfg, sizes, res


def bench(quick: bool = False, sessions: int | None = None) -> list[dict]:
    """The session benchmark's summary rows for scripts/bench.py, with issue 16's targets."""
    cfg = QUICK if quick else FULL
    if sessions:
        cfg = attrs.evolve(cfg, sessions=sessions)
    cfg, sizes, res = measure(cfg)
    return rows_of(res, sizes)


def run(cfg: Config, json_path: str | None) -> int:
    started = time.perf_counter()
    cfg, sizes, res = measure(cfg)
    rows = rows_of(res, sizes)
    bad = [v for v in res["verified"] if v[0] != v[1]]
    print(f"\nGelato session benchmark: {cfg.n} msgs x {cfg.reps} reps, interleaved (medians), window {cfg.window}, "
          f"{cfg.handshakes} handshakes, {cfg.sessions} sessions; servers and client in separate processes, "
          f"127.0.0.1\n")
    print_table(rows)
    print(f"\nserver-counted one-way frames: {sum(v[1] for v in res['verified'])} of "
          f"{sum(v[0] for v in res['verified'])} sent"
          f"{'' if not bad else ' MISMATCH ' + str(bad)}; total {time.perf_counter() - started:.1f} s")
    if json_path:
        out = {"config": attrs.asdict(cfg), "frame_bytes": {"one_way": sizes.one_way, "request": sizes.request},
               "results": res, "table": rows}
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")
    held = res["sessions"]
    return 0 if not bad and held["alive_server"] == held["alive_client"] == held["sessions"] else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run, under ~30 s")
    ap.add_argument("--sessions", type=int, help="concurrent sessions to hold (default 1000; --quick 100)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)  # internal: run one server
    args = ap.parse_args()
    if args.sessions is not None and args.sessions < 1:
        ap.error("--sessions must be positive")
    if args.serve:
        run_server(args.serve, args.sessions or 64)
        return 0
    cfg = QUICK if args.quick else FULL
    if args.sessions:
        cfg = attrs.evolve(cfg, sessions=args.sessions)
    try:
        return run(cfg, args.json)
    except BaseException as e:
        # Ctrl-C lands in whichever trio task runs, so it may arrive inside an exception group.
        if not isinstance(e, KeyboardInterrupt) and not (
                isinstance(e, BaseExceptionGroup) and e.subgroup(KeyboardInterrupt) is not None):
            raise
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
