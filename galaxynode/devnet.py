"""`galaxynode devnet`: a main net, pools and simulated nodes on 127.0.0.1, with a live status table.

The daemons are child processes (`python -m galaxynode mainnet|run`), exactly what an operator runs,
so the devnet exercises the real start-up, discovery and shutdown paths. Each child gets its own
session (process group): Ctrl-C reaches only the devnet, which stops things in order: the simulated
nodes leave, then every daemon gets SIGTERM (SIGKILL past a bound). One trio nursery owns every task
and process, so nothing outlives the command.

Pools are started one after the other, each once the previous one is announced: a pool looks the
main net up right after announcing, so each new pool finds all the earlier ones and dials them, which
connects the peer graph without waiting for the next periodic LOOKUP.

Every daemon also serves its metrics listener, with the read-only dashboard, on a free loopback port;
its URL (http://127.0.0.1:PORT/dashboard/) is read from the daemon's log and shown with the others.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any, Callable

import attrs

DEFAULT_NETWORK = "galaxy-dev"
START_TIMEOUT = 30.0   # per daemon: listening (main net) or announced (pool)
STOP_BOUND = 15.0      # SIGTERM to SIGKILL; above the daemons' default daemon.stop_timeout (10 s)
REFRESH = 1.0          # seconds between status refreshes
SIM_TTL = 15              # seconds: a simulated node's lease; the pool asks for a HEARTBEAT every ttl/3
UPDATE_CHANCE = 0.5       # at each beat, a simulated node re-joins with new metadata this often instead
CAPABILITIES = ("cpu", "gpu", "storage", "relay")
REGIONS = ("eu", "us", "ap")
# Set by systemd for the devnet itself; a child must not claim to be the service.
CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


@attrs.frozen
class Options:
    """What `galaxynode devnet` runs (its flags)."""
    pools: int = 3
    nodes: int = 10
    base_port: int = 0             # main net on it, pools on the next ports; 0: random free ports
    network: str = DEFAULT_NETWORK
    duration: float | None = None  # stop after this many seconds; None: until SIGINT/SIGTERM
    keep: bool = False             # the data directory is kept (else the caller removes it)


class DevnetError(Exception):
    """A daemon of the devnet failed: exited, or did not start in time. One line."""


_SERVING = re.compile(r"serving Gelato on (ws://\S+)")
_READY = re.compile(r"ready: pool ")
_ANNOUNCED = re.compile(r"announced to the main net")
_METRICS = re.compile(r"serving metrics on (http://\S+?/)metrics\b")


# --- the daemons ---------------------------------------------------------------------------------

class Daemon:
    """One child process, what its log said, and its last STATUS (filled in by `monitor`)."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        import trio
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.url: str | None = None
        self.dashboard: str | None = None  # http://127.0.0.1:PORT/dashboard/, once the daemon serves it
        self.tail: deque[str] = deque(maxlen=20)
        self.ready = trio.Event()
        self.announced = trio.Event()
        self.proc: Any = None
        self.stopping = False
        self.status: Any = None  # StatusResult
        self.up = False
        self.monitored = False
        self.events = 0          # EVENTs received from it so far
        self.events_seen = 0     # ... at the previous refresh

    def last_line(self) -> str:
        lines = [line for line in self.tail if line.strip()]
        return lines[-1] if lines else "(no output)"

    def _scan(self, line: str) -> None:
        self.tail.append(line)
        if self.url is None and (match := _SERVING.search(line)):
            self.url = match.group(1)
        elif self.dashboard is None and (match := _METRICS.search(line)):
            self.dashboard = match.group(1) + "dashboard/"
        elif _READY.search(line):
            self.ready.set()
        elif _ANNOUNCED.search(line):
            self.announced.set()

    async def _read_log(self) -> None:
        """Copy the child's output to its log file and scan it, until the child closes it. Shielded:
        a child still writing while it stops must not block on a full pipe."""
        import trio
        with trio.CancelScope(shield=True), open(self.log_path, "ab") as log:
            buf = b""
            async with self.proc.stdout as stream:
                async for chunk in stream:
                    log.write(chunk)
                    log.flush()
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        self._scan(line.decode(errors="replace"))
            if buf:
                self._scan(buf.decode(errors="replace"))

    async def supervise(self, env: dict[str, str], *, task_status: Any) -> None:
        """Run the child until cancelled (then SIGTERM, SIGKILL past STOP_BOUND). Exiting on its
        own is an error: the devnet stops and says why."""
        import trio
        async with trio.open_nursery() as nursery:
            self.proc = await nursery.start(partial(
                trio.run_process, self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, check=False, env=env, start_new_session=True, deliver_cancel=_terminate))
            nursery.start_soon(self._read_log)
            task_status.started()
        if not self.stopping:
            raise DevnetError(f"{self.name} exited with code {self.proc.returncode}: {self.last_line()}")

    async def wait(self, event: Any, what: str) -> None:
        import trio
        try:
            with trio.fail_after(START_TIMEOUT):
                await event.wait()
        except trio.TooSlowError:
            raise DevnetError(f"{self.name} not {what} within {START_TIMEOUT:g}s: {self.last_line()}") from None


async def _terminate(proc: Any) -> None:
    import trio
    proc.send_signal(signal.SIGTERM)
    await trio.sleep(STOP_BOUND)
    proc.kill()


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env["PYTHONUNBUFFERED"] = "1"
    # Each daemon's metrics listener, with its dashboard, on its own free loopback port.
    env["GALAXYNODE_METRICS_LISTEN"] = "127.0.0.1:0"
    env["GALAXYNODE_DASHBOARD_ENABLED"] = "true"
    # Every simulated node and pool connects from 127.0.0.1: one address may use all the slots.
    env.setdefault("GALAXYNODE_SERVER_MAX_CONNECTIONS_PER_ADDRESS", env.get("GALAXYNODE_SERVER_MAX_CONNECTIONS", "1024"))
    env.setdefault("GALAXYNODE_SERVER_MAX_PENDING_PER_ADDRESS", env.get("GALAXYNODE_SERVER_MAX_PENDING", "256"))
    # ... and all its pools announce from 127.0.0.1 and listen there (main net quotas, dial-backs).
    env.setdefault("GALAXYNODE_MAINNET_POOLS_PER_ADDRESS", "1024")
    env.setdefault("GALAXYNODE_MAINNET_POOLS_PER_PREFIX", "1024")
    env.setdefault("GALAXYNODE_MAINNET_ANNOUNCE_BURST", "1024")
    env.setdefault("GALAXYNODE_MAINNET_BOOK_PER_NETWORK", "1024")
    return env


def daemon_argv(command: str, name: str, *, port: int, data_dir: Path, network: str,
                mainnet: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "galaxynode", command, "--name", name, "--listen", f"ws://127.0.0.1:{port}",
            "--data-dir", str(data_dir), "--network", network, "--log-level", "info", "--log-format", "plain"]
    return argv + (["--mainnet", mainnet] if mainnet else [])


async def until_cancelled(body: Callable[..., Any], stop: Callable[[], Any], *, task_status: Any = None) -> None:
    """Run `body` in a shielded scope; once cancelled, await `stop()` (which should close the
    session cleanly), then cancel `body`. Why: a session's clean close needs its reader task, and
    plain cancellation stops the reader first, so the closing handshake waits out its timeout."""
    import trio
    scope = trio.CancelScope(shield=True)

    async def shielded(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await body(task_status=task_status)

    async with trio.open_nursery() as nursery:
        if task_status is None:
            nursery.start_soon(shielded)
        else:
            task_status.started(await nursery.start(shielded))
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await stop()
            scope.cancel()


async def monitor(d: Daemon, network: str, *, task_status: Any) -> None:
    """STATUS every half refresh and a count of the daemon's own events, over one probe session;
    reconnects if the session is lost. Reports started once first subscribed, so that the
    nodes' first joins are counted."""
    import trio
    from galaxynode.identity import Identity
    from galaxynode.nodeclient import CONNECTION_ERRORS, connect
    client: Any = None

    async def count(pool: Any) -> None:
        async for _ in pool.events():
            d.events += 1

    async def body(*, task_status: Any) -> None:
        nonlocal client
        while True:
            try:
                async with connect(d.url, Identity.generate(), network=network, role="probe", timeout=5) as client:
                    await client.subscribe(["#"])
                    if not d.monitored:
                        d.monitored = True
                        task_status.started()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(count, client)
                        while True:
                            d.status, d.up = await client.status(), True
                            await trio.sleep(REFRESH / 2)  # at most half a refresh old when shown
            except CONNECTION_ERRORS:
                d.up = False
            client = None
            await trio.sleep(REFRESH)

    async def stop() -> None:
        if client is not None:
            try:
                await client.unsubscribe(["#"])  # the pool stops pushing before the session ends
                await client.close()
            except CONNECTION_ERRORS:
                pass

    await until_cancelled(body, stop, task_status=task_status)


# --- simulated nodes -----------------------------------------------------------------------------

class SimNode:
    """A node that joins a pool and renews its lease at the interval each LEASE asks for: by a
    HEARTBEAT, or (UPDATE_CHANCE) by a re-join with a new `load`, as a real node would update what it
    advertises; the re-joins make events to watch, the heartbeats fill the dashboards' chart.

    Cancelling it gives the lease up first (LEAVE, GOODBYE; bounded), as keep_joined does."""

    def __init__(self, index: int, url: str, network: str, rng: random.Random):
        from galaxynode.identity import Identity
        self.identity = Identity.generate()
        self.url = url
        self.network = network
        self.rng = rng
        self.capabilities = sorted({"cpu", CAPABILITIES[index % len(CAPABILITIES)]})
        self.meta = {"region": REGIONS[index % len(REGIONS)], "sim": "devnet"}
        self.client: Any = None
        self.joined = False

    def _join_args(self) -> dict[str, Any]:
        return {"capabilities": self.capabilities, "meta": {**self.meta, "load": f"{self.rng.random():.2f}"},
                "ttl": SIM_TTL}

    async def run(self) -> None:
        await until_cancelled(self._loop, self._leave)

    async def _loop(self, *, task_status: Any) -> None:
        import trio
        from galaxynode.nodeclient import CONNECTION_ERRORS, backoff_delay, connect
        attempt = 0
        while True:
            try:
                async with connect(self.url, self.identity, network=self.network, timeout=5) as pool:
                    self.client = pool
                    lease = await pool.join(**self._join_args())
                    self.joined, attempt = True, 0
                    while True:
                        await trio.sleep(lease.interval / 1000)
                        if self.rng.random() < UPDATE_CHANCE:
                            lease = await pool.join(**self._join_args())
                        else:
                            lease = await pool.heartbeat()
            except CONNECTION_ERRORS:
                pass
            finally:
                self.client, self.joined = None, False
            await trio.sleep(backoff_delay(attempt, 0.5, 5.0, self.rng))
            attempt += 1

    async def _leave(self) -> None:
        from galaxynode.nodeclient import CONNECTION_ERRORS
        client, joined = self.client, self.joined
        if client is None:
            return
        try:
            if joined:
                await client.leave()
            await client.close()
        except CONNECTION_ERRORS:
            pass


# --- output --------------------------------------------------------------------------------------

def snapshot(mainnet: Daemon, pools: list[Daemon], nodes: list[SimNode], elapsed: float, dt: float) -> dict:
    """The status of everything as one JSON-able dict; advances the events/s windows."""
    from galaxynode.identity import format_public_key
    def rate(d: Daemon) -> float:
        r = (d.events - d.events_seen) / dt if dt > 0 else 0.0
        d.events_seen = d.events
        return round(r, 1)

    def of(d: Daemon) -> dict:
        st = d.status
        return {"name": d.name, "url": d.url, "dashboard": d.dashboard, "key": format_public_key(st.key) if st else None, "up": d.up,
                "peers": st.peers if st else None, "nodes": st.nodes if st else None, "events_per_s": rate(d)}

    main = of(mainnet)
    main["pools"] = main.pop("nodes")  # the main net registers pools
    del main["peers"]
    return {"t": round(elapsed, 1), "mainnet": main, "pools": [of(p) for p in pools],
            "nodes": {"simulated": len(nodes), "joined": sum(n.joined for n in nodes)}}


def note(message: str) -> None:
    from galaxynode.logs import printable  # daemons' log lines may quote what remote parties sent
    print(f"devnet: {printable(message)}", file=sys.stderr, flush=True)


# --- the command ---------------------------------------------------------------------------------

async def show_until(stop: Any, show: Callable[[dict], None], mainnet: Daemon, pools: list[Daemon],
                     nodes: list[SimNode], duration: float | None) -> None:
    """A refresh every REFRESH seconds until `stop` is set or `duration` has passed."""
    import trio
    started = last = trio.current_time()
    end = started + duration + 0.1 if duration else float("inf")  # +0.1: the refresh at `duration` is shown
    while True:
        with trio.move_on_at(min(last + REFRESH, end)):
            await stop.wait()
        now = trio.current_time()
        if stop.is_set() or now >= end:
            return
        show(snapshot(mainnet, pools, nodes, now - started, now - last))
        last = now


def until_text(opts: Options) -> str:
    return f"stops after {opts.duration:g}s" if opts.duration else "Ctrl-C to stop"


async def run_devnet(opts: Options, root: Path, show: Callable[[dict], None]) -> int:
    """Start the devnet in `root`, `show` a snapshot() every REFRESH seconds, stop everything on
    SIGINT/SIGTERM or after opts.duration. 1 if a daemon stopped uncleanly. Raises DevnetError."""
    import trio
    env = child_env()

    def port(i: int) -> int:
        return opts.base_port + i if opts.base_port else 0

    mainnet = Daemon("mainnet", daemon_argv("mainnet", "mainnet", port=port(0), data_dir=root / "mainnet",
                                            network=opts.network), root / "mainnet.log")
    pools: list[Daemon] = []
    nodes: list[SimNode] = []
    daemons = [mainnet]
    until = until_text(opts)
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as procs:
            with trio.CancelScope() as starting:
                async def on_signal() -> None:
                    async for signum in signals:
                        note(f"{signal.Signals(signum).name}: stopping")
                        stop.set()
                        starting.cancel()  # only interrupts the start-up; later, `stop` ends the display
                        return
                procs.start_soon(on_signal)

                note(f"starting a main net and {opts.pools} pools on 127.0.0.1 (data and logs in {root})")
                await procs.start(mainnet.supervise, env)
                await mainnet.wait(mainnet.ready, "listening")
                note(f"main net {mainnet.url} dashboard {mainnet.dashboard}")
                for i in range(1, opts.pools + 1):
                    name = f"pool-{i}"
                    pool = Daemon(name, daemon_argv("run", name, port=port(i), data_dir=root / name,
                                                    network=opts.network, mainnet=mainnet.url), root / f"{name}.log")
                    pools.append(pool)
                    daemons.append(pool)
                    await procs.start(pool.supervise, env)
                    await pool.wait(pool.announced, "announced to the main net")
                    note(f"{name} {pool.url} dashboard {pool.dashboard}")
            if not stop.is_set():
                rng = random.Random()
                nodes = [SimNode(i, pools[i % len(pools)].url, opts.network, rng) for i in range(opts.nodes)]
                # Stopped in this order: the nodes leave, then the monitors close, then the daemons stop.
                async with trio.open_nursery() as watching:
                    for d in daemons:
                        await watching.start(monitor, d, opts.network)
                    async with trio.open_nursery() as simulating:
                        for n in nodes:
                            simulating.start_soon(n.run)
                        note(f"{len(nodes)} simulated nodes joining; {until}")
                        await show_until(stop, show, mainnet, pools, nodes, opts.duration)
                        simulating.cancel_scope.cancel()
                    watching.cancel_scope.cancel()
            for d in daemons:
                d.stopping = True
            procs.cancel_scope.cancel()
    unclean = [d for d in daemons if d.proc is not None and d.proc.returncode != 0]
    for d in unclean:
        note(f"warning: {d.name} stopped with code {d.proc.returncode}: {d.last_line()}")
    note("stopped" + (f"; logs kept in {root}" if opts.keep else ""))
    return 1 if unclean else 0
