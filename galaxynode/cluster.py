"""One pool as several processes (``[server] workers``) and several hosts, on PostgreSQL.

Every daemon on the PostgreSQL backend is a member of its pool's cluster, whether it is one of N
workers on a host or alone on one of several hosts:

- **Replica**: each member keeps the whole lease table in memory and follows the change log
  (pgstore: one row per committed batch, ids visible in increasing order, NOTIFY with the id). It
  starts from a snapshot taken in the same transaction as the last id, then applies every row with
  a greater id: another member's ops, with their values, in the order they were committed (so memory
  ends where the store is), and its events, published on the local bus, so a subscriber hears every
  change of the pool whichever member made it. A member that lost the database catches up from its
  last id when it is back (events included), then takes a new snapshot (the stored state is the truth).
- **Election**: pool-wide duties (lease expiry; peering and the main-net announcement) run in one
  member, the holder of a session-level advisory lock; when its connection or process dies the lock
  is released and another member takes over within about a second. Expiry deletes rows with
  ``DELETE ... RETURNING`` so a lease expires once even if two members believed they led.
- **Supervisor** (``galaxynode run --workers N``): the parent process holds the data directory,
  resolves the listen ports, and runs N worker processes sharing them (SO_REUSEPORT); a worker that
  dies is restarted; SIGTERM stops them all within daemon.stop_timeout.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from galaxynode.modules import Module, ModuleContext
from galaxynode.registry.store import StoreError

log = logging.getLogger("galaxynode.cluster")

WORKER_ENV = "_GALAXYNODE_WORKER"  # a worker's settings from its supervisor (JSON); not a config variable
POLL_INTERVAL = 1.0  # seconds: the change log is read at least this often, NOTIFY or not
SYNC_TIMEOUT = 1.0  # seconds a query waits at most for the change log before it is served from memory
COALESCE = 0.005  # seconds a replica waits after a NOTIFY before reading, so one read takes a burst
ELECTION_INTERVAL = 1.0  # seconds between attempts at the leader lock, and between its liveness checks
RESTART_MIN, RESTART_MAX = 0.5, 30.0  # a dead worker's restart delay (doubling while it keeps dying)


def _lock_key(name: str) -> int:
    return zlib.crc32(f"galaxynode:{name}".encode()) - 2**31  # a signed int4 advisory lock key


class Replica:
    """Keeps ``registry`` (a Registry on a PgStore) in step with the pool's change log. ``open`` makes its
    own connections: one to read, one to LISTEN."""

    def __init__(self, registry: Any, dsn: str, *, table: str = "nodes", poll_interval: float = POLL_INTERVAL):
        from galaxynode.registry.pgstore import PgStore
        self.registry = registry
        self.dsn, self.table = dsn, table
        self.origin = registry.store.origin
        self.reader = PgStore(dsn, table=table, migrate_schema=False)
        self.poll_interval = poll_interval
        self.coalesce = COALESCE
        self.last = 0  # the last change id applied
        self.applied = 0  # changes of other members applied (for metrics)
        self.resyncs = 0  # snapshots taken after the first
        self._listen = None
        self._caught_up = time.monotonic()
        self._catching_up = trio.Lock()
        self._reads = 0  # catch-ups started (sync's tickets)
        self._read_done = 0  # the ticket of the last catch-up that completed
        self.failures = 0
        self.lost_since: float | None = None  # when the change log was lost (monotonic), None while following
        # Set by ClusterModule: ends this member's live session of a key that another member's admin
        # kicked or banned (the admin's own member closes it itself).
        self.end_session: Callable[[bytes, str], Awaitable[Any]] | None = None
        registry.resyncs_after_outage = True

    async def snapshot(self) -> None:
        """Replace memory with the stored state and follow the log from there."""
        reg = self.registry
        entries, bans, last = await trio.to_thread.run_sync(self.reader.snapshot)
        kv = await trio.to_thread.run_sync(self.reader.load_kv)
        reg.table.restore(entries, bans, reg.clock())
        if hasattr(reg, "kv"):
            reg.kv.clear()
            for plugin, name, value in kv:
                reg.kv.setdefault(plugin, {})[name] = value
        self.last = last
        self._caught_up = time.monotonic()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.snapshot()
            task_status.started()
            while True:
                try:
                    await self._follow()
                except StoreError as exc:
                    self._close_listen()
                    self.failures += 1
                    now = time.monotonic()
                    if self.lost_since is None:  # logged once, then once per failure_log_interval
                        self.lost_since, self._next_log = now, now + self.registry.failure_log_interval
                        self._refused = self.registry.changes_refused
                        self.registry.outage = "the pool cannot reach its database right now; retry later"
                        log.error("replica lost PostgreSQL (%s): serving reads from memory, refusing changes, "
                                  "retrying every %gs", exc, self.poll_interval)
                    elif now >= self._next_log:
                        refused, self._refused = self.registry.changes_refused - self._refused, \
                            self.registry.changes_refused
                        log.error("PostgreSQL still unreachable after %.0fs (%s); %d changes refused in the last %.0fs",
                                  now - self.lost_since, exc, refused, self.registry.failure_log_interval)
                        self._next_log = now + self.registry.failure_log_interval
                    await trio.sleep(self.poll_interval)
        finally:
            self._close_listen()
            self.reader.close()

    async def _follow(self) -> None:
        if self._listen is None:
            self._listen = await trio.to_thread.run_sync(self._open_listen)
            await self.catch_up()  # what was committed before LISTEN took effect, events included
            if self.lost_since is not None:
                # Memory kept the changes refused meanwhile, and what lapsed or was pruned is gone:
                # the stored state is the truth again.
                await self.snapshot()
                self.registry.store.reconnect_soon()  # its idle connection died with the server
                self.registry.outage = None  # changes are tried again
                self.resyncs += 1
                log.warning("replica has PostgreSQL again after %.1fs; memory resynchronised",
                            time.monotonic() - self.lost_since)
                self.lost_since = None
        while True:
            await trio.to_thread.run_sync(self._wait_notify)
            await trio.sleep(self.coalesce)  # let a burst of commits arrive: one read for all of them
            await self.catch_up()

    def _open_listen(self):
        import psycopg
        from galaxynode.registry.pgstore import _reason, connect
        conn = connect(self.dsn, autocommit=True)
        try:
            conn.execute(f"LISTEN {self.table}_changes")
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot LISTEN on {self.reader.path}: {_reason(exc)}") from exc
        return conn

    def _wait_notify(self) -> None:
        import psycopg
        from galaxynode.registry.pgstore import _reason
        try:
            for _ in self._listen.notifies(timeout=self.poll_interval, stop_after=1):
                pass
        except psycopg.Error as exc:
            raise StoreError(f"change notifications from {self.reader.path} stopped: {_reason(exc)}") from exc

    def _close_listen(self) -> None:
        if self._listen is not None:
            self._listen.close()
            self._listen = None

    async def catch_up(self) -> None:
        """Apply every change after ``last`` (one caller at a time: each change is applied once)."""
        async with self._catching_up:
            await self._catch_up()

    async def _catch_up(self) -> None:
        self._reads += 1
        ticket = self._reads
        while True:
            changes = await trio.to_thread.run_sync(self.reader.changes, self.last)
            for change in changes:
                if change.origin is None or change.origin != self.origin:
                    await self._apply(change)
                self.last = change.id
            self._caught_up = time.monotonic()
            if len(changes) < 1000:
                self._read_done = ticket
                return

    async def sync(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Read barrier (Registry.read_barrier): once it returns, memory holds every change committed
        anywhere in the pool before it was called, so a node that JOINed on one worker is in the next
        QUERY on any other. Concurrent callers share a catch-up that began after they arrived (at most
        two change-log reads for any burst of queries). Without the database, or past ``timeout``,
        memory is served as it is: a read never waits for an outage."""
        if self.lost_since is not None:
            return
        mine = self._reads
        with trio.move_on_after(timeout):
            try:
                async with self._catching_up:
                    if self._read_done <= mine:  # else a catch-up that began after us has completed
                        await self._catch_up()
            except StoreError:
                pass  # the follower notices and reports it

    async def _apply(self, change) -> None:
        """Another member's committed batch: its ops, applied in id order (the order they were committed
        in, so memory ends where the store is), and its events, published here."""
        from galaxynode.registry.store import Ban, Delete, KvDelete, KvPut, Unban, Upsert
        reg = self.registry
        keys, entries, ban_keys, bans = set(), {}, set(), {}
        for op in change.ops:
            if reg.pending(op.key):  # a change of ours is on its way: it commits later and stays stored
                continue
            if isinstance(op, (Upsert, Delete)):
                keys.add(op.key)
                if isinstance(op, Upsert):
                    entries[op.key] = op.entry
                else:
                    entries.pop(op.key, None)
            elif isinstance(op, (Ban, Unban)):
                ban_keys.add(op.key)
                if isinstance(op, Ban):
                    bans[op.key] = op.until
                else:
                    bans.pop(op.key, None)
            elif isinstance(op, (KvPut, KvDelete)) and hasattr(reg, "kv"):
                space = reg.kv.setdefault(op.plugin, {})
                if isinstance(op, KvPut):
                    space[op.name] = op.value
                else:
                    space.pop(op.name, None)
        if keys or ban_keys:
            reg._restore(keys, entries, ban_keys, bans)
        ended = []
        for topic, data in change.events:
            reg._announce(topic, data, None) if hasattr(reg, "_announce") else reg.bus.publish(topic, data)
            if topic in ("node.kicked", "node.banned") and isinstance(data.get("key"), bytes):
                ended.append((data["key"], topic))
        self.applied += 1
        if ended and self.end_session is not None:
            async with trio.open_nursery() as n:  # each close is bounded by the session's close_timeout
                for key, topic in ended:
                    n.start_soon(self.end_session, key, topic)


class Election:
    """Who runs the pool-wide duties: the member holding the advisory lock ``{table}_leader``."""

    def __init__(self, dsn: str, *, table: str = "nodes", interval: float = ELECTION_INTERVAL):
        self.dsn, self.interval = dsn, interval
        self.key = _lock_key(f"{table}:leader")
        self.leader = False
        self.terms = 0  # times this member became the leader
        self._changed = trio.Event()

    def _set(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            self.terms += leader
            log.info("this member %s the pool-wide duties (lease expiry, peering, main net)",
                     "now runs" if leader else "no longer runs")
            self._changed.set()
            self._changed = trio.Event()

    async def run(self) -> None:
        import psycopg
        from galaxynode.registry.pgstore import connect
        conn = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await trio.to_thread.run_sync(lambda: connect(self.dsn, autocommit=True))
                    if self.leader:  # still holding it: is the session (and so the lock) alive?
                        await trio.to_thread.run_sync(conn.execute, "SELECT 1")
                    else:
                        got = await trio.to_thread.run_sync(
                            lambda: conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0])
                        self._set(bool(got))
                except (StoreError, psycopg.Error) as exc:
                    self._set(False)
                    if conn is not None:
                        conn.close()
                        conn = None
                    log.debug("election: %s", exc)
                await trio.sleep(self.interval)
        finally:
            self._set(False)
            if conn is not None:
                conn.close()

    async def while_leader(self, duty: Callable[[], Awaitable[None]]) -> None:
        """Run ``duty`` whenever this member leads; cancel it the moment it does not."""
        while True:
            while not self.leader:
                await self._changed.wait()
            with trio.CancelScope() as scope:
                async def watch() -> None:
                    while self.leader:
                        await self._changed.wait()
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    await duty()
                    nursery.cancel_scope.cancel()


async def expire_leases(registry: Any, store: Any, interval: float) -> None:
    """The leader's duty: delete what ran out, once for the pool; the replicas (ours too) hear it."""
    while True:
        with registry.task_failures.guard("cluster.expiry"):
            try:
                expired = await trio.to_thread.run_sync(store.expire_due, registry.clock())
                registry.expired += len(expired)
            except StoreError as exc:  # the database is away: the replica says so; expiry waits for it
                log.debug("lease expiry: %s", exc)
        await trio.sleep(interval)


async def open_member_registry(config: Any, table: Any, bus: Any) -> Any:
    """A pool's Registry on [registry] dsn as a cluster member: not loaded here (ClusterModule's replica
    takes the snapshot) and not expiring leases itself (the elected member does, for the pool)."""
    from galaxynode.registry import Registry
    from galaxynode.registry.pgstore import PgStore
    rc = config.registry
    store = await trio.to_thread.run_sync(lambda: PgStore(rc.dsn, table="nodes", origin=os.urandom(8)))
    return Registry(table, store, bus, owns_store=True, expire_locally=False, expiry_interval=rc.expiry_interval,
                    commit_interval=rc.commit_interval)


async def _end_session(container: Any, key: bytes, topic: str) -> None:
    """A kick or ban made on another member reaches the node's session here as it would there."""
    from galaxynode.gelato.errors import ErrorCode, ProtocolError
    from galaxynode.pool import end_session
    kicked = topic == "node.kicked"
    await end_session(container.get("server") if "server" in container else None, None, key,
                      ProtocolError(ErrorCode.KICKED if kicked else ErrorCode.BANNED,
                                    f"{'kicked' if kicked else 'banned'} by an administrator"))


class ClusterModule(Module):
    """On the PostgreSQL backend: the replica (started before anyone is served), the election and the
    leader's lease expiry. Registers ``cluster`` (this module) in the container."""

    name = "cluster"
    requires = ("registry",)
    provides = ("cluster",)

    replica: Replica | None = None
    election: Election | None = None
    announcer: Any = None  # set by the peering module: its state is the "mainnet" check of the leader

    async def start(self, ctx: ModuleContext) -> None:
        config = ctx.config.config
        if config.registry.backend != "postgresql" or config.node.role != "pool":
            return
        registry = ctx.container.get("registry")
        table = registry.store._t
        self.replica = Replica(registry, config.registry.dsn, table=table)
        self.election = Election(config.registry.dsn, table=table)
        await ctx.nursery.start(self.replica.run)
        registry.read_barrier = self.replica.sync
        self.replica.end_session = lambda key, topic: _end_session(ctx.container, key, topic)
        ctx.nursery.start_soon(self.election.run)
        ctx.nursery.start_soon(self.election.while_leader,
                               lambda: expire_leases(registry, self.replica.reader, config.registry.expiry_interval))
        ctx.container.register("cluster", self)
        readiness = ctx.config.readiness
        readiness.expect("backend")
        ctx.nursery.start_soon(self._sample, readiness, registry, bool(config.mainnet.url))

    async def _sample(self, readiness: Any, registry: Any, mainnet: bool, interval: float = 0.5) -> None:
        """Readiness "backend": PostgreSQL reachable (change log followed, commits going through); and
        "mainnet" on a member that does not lead: the elected member announces for the pool."""
        replica = self.replica
        while True:
            if replica.lost_since is not None:
                readiness.set("backend", False, f"PostgreSQL unreachable for {time.monotonic() - replica.lost_since:.0f}s: "
                                                "reads served from memory, changes refused")
            elif getattr(registry, "_failing", None) is not None:
                readiness.set("backend", False, "PostgreSQL refuses changes")
            else:
                readiness.set("backend", True, f"PostgreSQL {replica.reader.path}")
            if mainnet:
                a = self.announcer
                if self.election.leader and a is not None:
                    readiness.set("mainnet", a.state == "announced", f"main net: {a.state}")
                else:
                    readiness.set("mainnet", True, "announced by the elected member")
            await trio.sleep(interval)


# --- supervisor (the parent of --workers N) ----------------------------------------------------------

def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT (every socket on the port needs it), not listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    """Runs ``workers`` worker processes and keeps them running until SIGTERM/SIGINT."""

    def __init__(self, config: Any, *, config_path: str | None, overrides: dict, workers: int):
        self.config, self.config_path, self.overrides = config, config_path, dict(overrides)
        self.workers = workers
        self.procs: dict[int, trio.Process] = {}
        self.restarts = 0
        self._stopping = False
        self._sockets: list[socket.socket] = []

    def _resolve_listen(self) -> list[str]:
        """The listen URLs with port 0 replaced by a port we hold (bound with SO_REUSEPORT, never listening)
        so every worker, restarted ones too, binds the same port."""
        from galaxynode.net.transport import format_address, parse_url
        urls = []
        for url in self.config.server.listen:
            secure, host, port, _ = parse_url(url)
            sock = reuse_port_socket(host or "0.0.0.0", port)
            self._sockets.append(sock)
            urls.append(f"{'wss' if secure else 'ws'}://{format_address(host, sock.getsockname()[1])}")
        return urls

    def _spawn_args(self, index: int, listen: list[str]) -> tuple[list[str], dict]:
        overrides = {**self.overrides, "server.listen": listen, "server.workers": 1}
        env = {**os.environ, WORKER_ENV: json.dumps({"index": index, "config_path": self.config_path,
                                                     "overrides": overrides, "supervisor": os.getpid()})}
        return [sys.executable, "-m", "galaxynode.cluster"], env

    async def run(self) -> int:
        listen = self._resolve_listen()
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    for i in range(self.workers):
                        nursery.start_soon(self._keep, i, listen)
                    log.info("supervising %d workers on %s", self.workers, " ".join(listen))
                    async for signum in signals:
                        if signum == signal.SIGHUP:  # reload: each worker re-reads the config
                            for p in list(self.procs.values()):
                                if p.returncode is None:
                                    p.send_signal(signal.SIGHUP)
                            continue
                        log.info("received %s, stopping %d workers (bound %.1fs)", signal.Signals(signum).name,
                                 len(self.procs), self.config.daemon.stop_timeout)
                        break
                    await self._stop_all()
                    nursery.cancel_scope.cancel()
        finally:
            for sock in self._sockets:
                sock.close()
        return 0

    async def _keep(self, index: int, listen: list[str]) -> None:
        """Run worker ``index``; restart it when it dies (sooner when it had been up a while)."""
        delay = RESTART_MIN
        while True:
            argv, env = self._spawn_args(index, listen)
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(argv, env=env, stdin=subprocess.DEVNULL)
            self.procs[index] = proc
            try:
                status = await proc.wait()
            finally:
                if proc.returncode is None:  # we are being cancelled: _stop_all saw to it
                    with trio.CancelScope(shield=True):
                        await proc.wait()
                self.procs.pop(index, None)
            if self._stopping:
                return
            if trio.current_time() - started > 60:
                delay = RESTART_MIN
            log.error("worker %d (pid %d) exited with status %s; restarting in %.1fs", index, proc.pid, status, delay)
            self.restarts += 1
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _stop_all(self) -> None:
        self._stopping = True
        procs = list(self.procs.values())
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.config.daemon.stop_timeout):
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                log.error("worker pid %d did not stop within %.1fs; killed", p.pid, self.config.daemon.stop_timeout)
                p.kill()
                await p.wait()


def supervise(config: Any, *, config_path: str | None, overrides: dict) -> int:
    """``galaxynode run --workers N`` (N > 1): hold the data directory, make sure the key and the schema
    exist (so workers do not race to create them), then run the workers until SIGTERM."""
    from galaxynode.datadir import locked, private_dir, private_umask
    from galaxynode.identity import load_or_create_key
    from galaxynode.registry.pgstore import migrate
    data_dir = private_dir(config.data.dir)
    with locked(data_dir), private_umask():
        identity, created = load_or_create_key(config.key_path)
        if created:
            log.info("generated pool key %s at %s", identity.public_text, config.key_path)
        migrate(config.registry.dsn, "pools" if config.node.role == "mainnet" else "nodes")
        return trio.run(Supervisor(config, config_path=config_path, overrides=overrides,
                                   workers=config.server.workers).run)


async def _die_with_parent(supervisor: int, interval: float = 0.5) -> None:
    """SIGTERM this worker when its supervisor is gone (killed with -9 too): no orphan keeps serving.
    Polled: PR_SET_PDEATHSIG would fire when the *thread* that spawned us ends (trio spawns from its
    thread cache), not the process."""
    while os.getppid() == supervisor:
        await trio.sleep(interval)
    log.error("supervisor (pid %d) is gone; stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """A worker process (started by Supervisor with WORKER_ENV): the daemon, minus the data-dir lock its
    supervisor holds, listening with SO_REUSEPORT."""
    from galaxynode.config import load_config
    from galaxynode.daemon import run_daemon
    from galaxynode.logs import setup_logging
    spec = json.loads(os.environ.pop(WORKER_ENV))
    config = load_config(spec["config_path"], overrides=spec["overrides"])
    setup_logging(config.logging.level, config.logging.format)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_die_with_parent, spec["supervisor"])
            code = await run_daemon(config, config_path=spec["config_path"], overrides=spec["overrides"],
                                    worker=spec["index"])
            nursery.cancel_scope.cancel()
        return code
    return trio.run(main)


if __name__ == "__main__":
    sys.exit(worker_main())
