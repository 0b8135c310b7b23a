"""The pool daemon: wires config into kernel modules and owns the process lifecycle.

One trio root nursery; the kernel starts modules in dependency order (events -> registry ->
plugins -> network -> metrics) and stops them in reverse. SIGTERM/SIGINT stop gracefully within
`daemon.stop_timeout`; SIGHUP reloads the reloadable keys; sd_notify keeps systemd informed.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import signal
import ssl
import time
from typing import Any

import attrs
import trio

from galaxynode import __version__
from galaxynode.config import Config, ConfigError, apply_reloadable, diff_reloadable, load_config
from galaxynode.events import EventBus
from galaxynode.health import Readiness
from galaxynode.datadir import locked, private_dir, private_umask
from galaxynode.identity import Identity, load_or_create_key, warn_if_exposed
from galaxynode.logs import setup_logging
from galaxynode.descriptor import DescriptorBook, DescriptorIssuer
from galaxynode.mainnet import (Announcer, MainnetPolicy, MainnetServices, Reachability, discover_budget,
                                open_pool_registry)
from galaxynode.metrics import MetricsServer, daemon_registry, worker_listen
from galaxynode.modules import Kernel, Module, ModuleContext, StartupError, single_leaf
from galaxynode.net.connection import SessionLimits
from galaxynode.net.bans import Bans
from galaxynode.net.outbox import OutputBudget
from galaxynode.net.server import Server
from galaxynode.net.tls import TLSError, client_context, server_context
from galaxynode.nodeclient import DEFAULT_NETWORK
from galaxynode.peerpolicy import PeerPolicy
from galaxynode.peering import PeerManager
from galaxynode.plugins import PluginContext, PluginError, PluginSupervisor, make_api_context
from galaxynode.plugins import check_config as check_plugins, search_path as plugin_search_path
from galaxynode.pool import PoolInfo, PoolServices
from galaxynode.cluster import ClusterModule, open_member_registry
from galaxynode.registry import Admission, LeaseTable, Registry
from galaxynode.registry.pacing import Pacer
from galaxynode.systemd import Notifier

log = logging.getLogger("galaxynode.daemon")


@attrs.define
class Runtime:
    """What every module may need: the effective config and the pool identity."""

    config: Config
    identity: Identity
    started: float = attrs.field(factory=time.monotonic)
    # /readyz and sd_notify STATUS: modules set their checks (galaxynode.health; see expected_checks)
    readiness: Readiness = attrs.field(factory=Readiness)
    worker: int | None = None  # this process's index among its supervisor's workers (galaxynode.cluster)


def admission_from(config: Config) -> Admission:
    a = config.admission
    return Admission(mode=a.mode, allow=frozenset(a.allow), admins=frozenset(a.admins))


class EventsModule(Module):
    name = "events"
    provides = ("bus",)

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        ctx.container.register("bus", EventBus(origin=rt.identity.public,
                                               max_patterns=rt.config.limits.max_pool_subscriptions))


class RegistryModule(Module):
    """Pools register nodes; the main net registers pools (same lease logic, other table)."""

    name = "registry"
    requires = ("events",)
    provides = ("registry",)

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        rc, bus = rt.config.registry, ctx.container.get("bus")
        kw = dict(expiry_interval=rc.expiry_interval, commit_interval=rc.commit_interval,
                  backend=store_backend(rt.config))
        if rt.config.node.role == "mainnet":
            registry = await open_pool_registry(rt.config.data_path("mainnet.sqlite"), bus, **kw)
        else:
            # A page and its frame (header, signature, cursor) must fit the peer's max_frame_size too.
            page_bytes = min(rc.page_bytes, rt.config.limits.max_frame_size // 2)
            table = LeaseTable(min_ttl=rc.min_ttl, max_ttl=rc.max_ttl, default_ttl=rc.default_ttl,
                               page_max=rc.page_max, page_bytes=page_bytes, admission=admission_from(rt.config))
            if rc.backend == "postgresql":  # a cluster member: its replica loads the table (ClusterModule)
                registry = await open_member_registry(rt.config, table, bus)
            else:
                registry = await Registry.open(rt.config.data_path("registry.sqlite"), table, bus, **kw)
        ctx.container.register("registry", registry)
        await ctx.nursery.start(registry.run)


def store_backend(config: Config):
    """How the registry opens its store for a table name: None for SQLite in the data directory, else a
    PgStore on [registry] dsn (migrated at start-up)."""
    if config.registry.backend != "postgresql":
        return None
    from galaxynode.registry.pgstore import PgStore  # psycopg is an optional dependency
    return lambda table: PgStore(config.registry.dsn, table=table)


class ServicesModule(Module):
    """What the sessions are dispatched to: pool services, or the main net's."""

    name = "services"
    requires = ("events", "registry")
    provides = ("services",)

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        c = rt.config
        info = PoolInfo(rt.identity.public, c.node.name, c.network.id, role=c.node.role)
        registry, bus = ctx.container.get("registry"), ctx.container.get("bus")
        if c.node.role == "mainnet":
            policy, mc = mainnet_policy(c), c.mainnet
            reach = Reachability(rt.identity, network=c.network.id, policy=policy, limits=session_limits(c),
                                 ssl_context=client_ssl_context(c)) if mc.verify else None
            services = MainnetServices(info, registry, bus, policy=policy, reachability=reach)
        else:
            services = PoolServices(info, registry, bus,
                                    pacer=Pacer(c.registry.max_heartbeats_per_s, c.registry.max_ttl))
        ctx.container.register("services", services)


def mainnet_policy(config: Config) -> MainnetPolicy:
    mc = config.mainnet
    return MainnetPolicy(verify=mc.verify, verify_timeout=mc.verify_timeout, verify_ttl=mc.verify_ttl,
                         verify_retry=mc.verify_retry, dials_per_target=mc.dials_per_target,
                         dial_window=mc.dial_window, max_verifications=mc.max_verifications,
                         pools_per_address=mc.pools_per_address, pools_per_prefix=mc.pools_per_prefix,
                         announce_rate=mc.announce_rate, announce_burst=mc.announce_burst)


class PluginsModule(Module):
    """The plugins (galaxynode.plugins): checked up front (a bad spec or section stops the start with
    one line), started before the network so their admission hooks and messages serve from the first
    session; the pool services ask them (services.plugins) on JOIN and for x.<plugin>.<name> types."""

    name = "plugins"
    requires = ("events", "registry", "services")

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        c = rt.config
        pc = c.plugins
        if not pc.enabled:
            return
        errors = check_plugins(c)
        if errors:
            raise PluginError("; ".join(str(e) for e in errors))
        container = ctx.container
        bus, registry = container.get("bus"), container.get("registry")

        def make_context(name: str) -> PluginContext:
            return make_api_context(name, config=pc.section(name), bus=bus, registry=registry,
                                    identity=rt.identity, network=c.network.id, data_dir=c.data_path())

        supervisor = PluginSupervisor(list(pc.enabled), make_context, max_restarts=pc.max_restarts,
                                      backoff_base=pc.backoff_base, backoff_max=pc.backoff_max, bus=bus,
                                      admission_timeout=pc.admission_timeout,
                                      admission_default=pc.admission_default, search=plugin_search_path(c))
        container.register("plugins", supervisor)
        container.get("services").plugins = supervisor
        await ctx.nursery.start(supervisor.run)


def session_limits(config: Config) -> SessionLimits:
    lc = config.limits
    return SessionLimits(codec=lc.codec_limits(), handshake_timeout=lc.handshake_timeout,
                         idle_timeout=lc.idle_timeout, ping_interval=lc.ping_interval, frame_rate=lc.frame_rate,
                         frame_burst=lc.frame_burst, pool_frame_rate=lc.pool_frame_rate,
                         pool_frame_burst=lc.pool_frame_burst, byte_rate=lc.byte_rate, byte_burst=lc.byte_burst,
                         send_queue=lc.send_queue, send_queue_bytes=lc.send_queue_bytes,
                         write_timeout=lc.write_timeout, preauth_frame_size=lc.preauth_frame_size,
                         max_subscriptions=lc.max_subscriptions)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listener's TLS context ([server] tls_cert, tls_key), None without; TLSError names the bad file."""
    if not config.server.tls_cert:
        return None
    warn_if_exposed(config.server.tls_key or config.server.tls_cert, "TLS key file")
    return server_context(config.server.tls_cert, config.server.tls_key)


def client_ssl_context(config: Config) -> ssl.SSLContext | None:
    """What our dials to wss:// trust: the system's CAs, plus [tls] ca_file (None: the defaults)."""
    return client_context(config.tls.ca_file) if config.tls.ca_file else None


class NetworkModule(Module):
    """The Gelato server: sessions from nodes, peers and probes, dispatched to the pool services."""

    name = "network"
    requires = ("services",)
    provides = ("server",)

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        c = rt.config
        services, container = ctx.container.get("services"), ctx.container

        def handler_factory(conn):
            # Sessions from pools go to the peer manager once it runs (it starts after us).
            if "peers" in container:
                return container.get("peers").handler_factory(conn)
            return services.handler()

        self.server = Server(rt.identity, network=c.network.id, role=c.node.role, limits=session_limits(c),
                             max_connections=c.server.max_connections,
                             max_connections_per_address=c.server.max_connections_per_address,
                             max_pending=c.server.max_pending, max_pending_per_address=c.server.max_pending_per_address,
                             handler_factory=handler_factory,
                             bans=Bans(c.limits.violations_before_ban, c.limits.ban_seconds,
                                       window=c.limits.violation_window, exempt=services.registry.table.is_admin),
                             listen_urls=c.server.listen, ssl_context=ssl_context(c),
                             agent=f"galaxynode/{__version__}",
                             output_budget=OutputBudget(c.limits.send_queue_total_bytes),
                             reuse_port=rt.worker is not None)
        ctx.container.register("server", self.server)
        services.server = self.server  # ADMIN kick/ban close live sessions; bans/unban reach its ban table
        try:
            urls = await ctx.nursery.start(self.server.run)
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if not isinstance(leaf, OSError):
                raise
            raise OSError(f"cannot listen on {' '.join(c.server.listen)}: {leaf.strerror}") from None
        ctx.log.info("serving Gelato on %s", " ".join(urls))
        self.readiness = rt.readiness
        self.readiness.set("listening", True, " ".join(urls))

    async def stop(self) -> None:
        self.readiness.set("listening", False, "stopping")
        await self.server.shutdown()


class PeeringModule(Module):
    """Static and discovered peers, descriptor exchange, and (with [mainnet] url) the announcer."""

    name = "peering"
    requires = ("network",)
    provides = ("peers",)  # and "announcer" when [mainnet] url is set

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        c = rt.config
        services, server = ctx.container.get("services"), ctx.container.get("server")
        registry, bus = ctx.container.get("registry"), ctx.container.get("bus")
        issuer = DescriptorIssuer(rt.identity, name=c.node.name, network=c.network.id,
                                  endpoints=server.bound_urls, ttl_ms=c.mainnet.descriptor_ttl * 1000)
        book = DescriptorBook(max_per_source=c.mainnet.book_per_peer, max_per_network=c.mainnet.book_per_network,
                              pinned=[p.key for p in c.peers.static if p.key is not None])
        peers = PeerManager(rt.identity, network=c.network.id, registry=registry, bus=bus,
                            pool_handler=services.handler, limits=session_limits(c),
                            static=[(p.url, p.key) for p in c.peers.static], max_peers=c.limits.max_peers,
                            reconnect_min=c.peers.reconnect_min, reconnect_max=c.peers.reconnect_max,
                            issuer=issuer, book=book, listen=server.bound_urls, ssl_context=client_ssl_context(c),
                            policy=PeerPolicy(c.peers.accept, max_misses=c.peers.max_misses),
                            max_inbound=c.peers.max_inbound, max_outbound=c.peers.max_outbound,
                            target=c.peers.target, query_budget=c.peers.query_budget)
        peers.discover_budget = discover_budget(c.mainnet.discover_dials, give_up_after=peers.give_up_after)
        if "plugins" in ctx.container and ctx.container.get("plugins").admitters:  # asked on peer acceptance too
            peers.admission = ctx.container.get("plugins").admit
        services.peers = peers
        ctx.container.register("peers", peers)
        announcer = None
        cluster = ctx.container.get("cluster") if "cluster" in ctx.container else None
        if c.mainnet.url:
            announcer = Announcer(rt.identity, issuer, mainnet_url=c.mainnet.url, network=c.network.id,
                                  limits=session_limits(c), registry=registry, book=book,
                                  book_path=c.data_path("descriptors.bin"),
                                  announce_interval=c.mainnet.announce_interval,
                                  backoff_min=min(1.0, c.peers.reconnect_min),
                                  backoff_max=c.peers.reconnect_max, on_descriptors=peers.discover,
                                  ssl_context=client_ssl_context(c))
            if cluster is not None:  # it runs in the elected member only: the cluster samples its state
                cluster.announcer = announcer
            else:
                ctx.container.register("announcer", announcer)
            peers.on_unlisted = announcer.lookup_soon  # a pool listed since our last LOOKUP is promoted
        if cluster is not None:
            # What reaches out (static peers, discovery, the main net) runs in the elected member only,
            # so peers and the main net see one pool; every member serves the peers that dial in.
            ctx.nursery.start_soon(cluster.election.while_leader, lambda: _reach_out(peers, announcer))
            return
        await ctx.nursery.start(peers.run)
        if announcer is not None:
            await ctx.nursery.start(announcer.run)
            ctx.log.info("announcing to main net %s", c.mainnet.url)


async def _reach_out(peers: PeerManager, announcer: Announcer | None) -> None:
    """A cluster leader's outbound peering and announcing, until cancelled (leadership lost)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(peers.run)
        if announcer is not None:
            await nursery.start(announcer.run)
            log.info("announcing to main net %s", announcer.mainnet_url)


class MetricsModule(Module):
    """Prometheus /metrics on [metrics] listen (nothing listens when it is empty); read at scrape
    time from the other modules' services, so it needs none of them to start first but the server."""

    name = "metrics"
    requires = ("network",)
    provides = ("metrics",)

    async def start(self, ctx: ModuleContext) -> None:
        rt: Runtime = ctx.config
        c = rt.config
        if not c.metrics.listen:
            return
        registry = daemon_registry(ctx.container, network=c.network.id, role=c.node.role, name=c.node.name,
                                   key=rt.identity.public_text)
        metrics_listen = worker_listen(c.metrics.listen, rt.worker)  # workers: port + index
        server = MetricsServer(registry, metrics_listen, readiness=rt.readiness)
        ctx.container.register("metrics", server)
        if c.dashboard.enabled:  # off: nothing under /dashboard/ (404)
            from galaxynode.dashboard import Dashboard  # noqa: PLC0415 (dashboard imports metrics)
            dashboard = Dashboard(ctx.container, network=c.network.id, key=rt.identity.public_text, role=c.node.role,
                                  name=c.node.name, readiness=rt.readiness, token=c.dashboard.token, worker=rt.worker)
            dashboard.register(server)
            await ctx.nursery.start(dashboard.run)
        try:
            urls = await ctx.nursery.start(server.run)
        except OSError as e:
            raise OSError(f"cannot listen on {metrics_listen} for metrics: {e.strerror}") from None
        ctx.log.info("serving metrics on %s", " ".join(urls))


CORE_MODULES: tuple[type[Module], ...] = (EventsModule, RegistryModule, ClusterModule, ServicesModule, PluginsModule, NetworkModule,
                                          MetricsModule)
POOL_MODULES: tuple[type[Module], ...] = CORE_MODULES + (PeeringModule,)


def reload_tls(config: Config, container) -> None:
    """SIGHUP re-reads [server] tls_cert and tls_key (the same paths: a renewed certificate) into the
    listener's context; handshakes from then on use them, sessions already open keep theirs. A pair
    that does not load keeps the running one (logged)."""
    server = container.get("server") if "server" in container else None
    ctx = getattr(server, "ssl_context", None)
    if ctx is None or not config.server.tls_cert:
        return
    try:
        server_context(config.server.tls_cert, config.server.tls_key)  # checked first: names the bad file
        ctx.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    except (TLSError, ssl.SSLError) as e:
        log.error("reload: keeping the running TLS certificate: %s", e)
        return
    log.info("reload: TLS certificate %s re-read", config.server.tls_cert)


def reload_config(rt: Runtime, container, path: str | None, overrides: dict) -> None:
    """SIGHUP: apply reloadable keys, warn about the ones that need a restart. A bad file keeps
    the running config."""
    try:
        new = load_config(path, overrides=overrides)
        changed, restart = diff_reloadable(rt.config, new)
        merged = apply_reloadable(rt.config, new)
    except ConfigError as e:
        log.error("reload failed, keeping the running config: %s", e)
        return
    if restart:
        log.warning("changes to %s need a restart; not applied", ", ".join(sorted(restart)))
    if not changed:
        log.info("reload: nothing to change")
        return
    rt.config = merged
    setup_logging(merged.logging.level, merged.logging.format)
    container.get("registry").table.admission = admission_from(merged)
    if "server" in container:  # new sessions get the new limits
        container.get("server").limits = session_limits(merged)
    log.info("reloaded: %s", ", ".join(sorted(changed)))


def next_step(config: Config, container) -> str:
    """The end of the ready line: the command that shows this daemon answering, for an operator who
    has just started it (a wildcard listen address as loopback, which reaches it from this host)."""
    server = container.get("server") if "server" in container else None
    if server is None or not server.bound_urls:
        return ""
    url = server.bound_urls[0].replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    network = "" if config.network.id == DEFAULT_NETWORK else f" --network {config.network.id}"
    return f"; next: galaxynode status {url}{network}"


def expected_checks(config: Config) -> list[str]:
    """The readiness checks a pool with this config must pass before any is sampled (galaxynode.health):
    listening, the registry loaded and storing changes, announced when [mainnet] url is set. Each
    plugin's check ("plugin.<name>") appears with the plugin, before the first sample."""
    names = ["listening", "registry"]
    if config.node.role == "pool" and config.mainnet.url:
        names.append("mainnet")
    return names


class ReadinessSampler:
    """Sets the checks that follow a service's own state (sampled, so the services need not know
    about readiness): the registry, the announcer, the plugins."""

    def __init__(self, readiness: Readiness):
        self.readiness = readiness
        self._commits = self._failures = 0
        self._writable = True

    def __call__(self, container: Any) -> None:
        r = self.readiness
        if "registry" in container:
            r.set("registry", *self._registry(container.get("registry")))
        if "announcer" in container:
            a = container.get("announcer")
            r.set("mainnet", a.state == "announced",
                  "announced" if a.state == "announced" else a.last_error or "not announced yet")
        if "plugins" in container:
            for name, st in container.get("plugins").stats.items():
                r.set(f"plugin.{name}", *_plugin_check(st))

    def _registry(self, registry: Any) -> tuple[bool, str]:
        """Storing changes: refused commits since the last sample and none that went through mean the
        store refuses changes now; no commit either way keeps the last verdict."""
        commits, failures = registry.commits, registry.commit_failures
        failing = failures > self._failures and commits == self._commits
        if commits > self._commits or failing:
            self._writable = not failing
        self._commits, self._failures = commits, failures
        if not self._writable:
            return False, "cannot store changes (see the log; changes are refused with 'unavailable')"
        return True, f"{len(registry.table)} leases"


def _plugin_check(st: Any) -> tuple[bool, str]:
    if st.state in ("running", "finished"):
        return True, st.state
    if st.state == "backoff":
        return False, f"restarting after a crash ({st.failures} in a row): {st.last_error}"
    if st.state == "failed":
        return False, f"gave up: {st.last_error}"
    return False, "not started" if st.state == "pending" else st.state


async def _sample_readiness(sample: ReadinessSampler, container: Any, interval: float = 1.0) -> None:
    while True:
        sample(container)
        await trio.sleep(interval)


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.notify(WATCHDOG=1)
        await trio.sleep(interval)


@contextlib.contextmanager
def _gc_threshold(young: int) -> Any:
    """Sessions hold a few hundred objects each; with Python's young threshold (700) what lives
    one heartbeat is promoted, and the full collections that follow walk every session (seconds
    at 10,000 nodes). A larger young generation lets per-request objects die young. Restored on
    exit: tests run daemons in-process."""
    before = gc.get_threshold()
    if young:
        gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def run_daemon(config: Config, *, config_path: str | None = None, overrides: dict | None = None,
                     modules: tuple[type[Module], ...] | None = None, worker: int | None = None) -> int:
    """Run until SIGTERM/SIGINT. The data dir is locked (a second daemon on it stops with
    DataDirInUse naming the first one's pid) and private (0700, files 0600) for the whole run; a
    ``worker`` of galaxynode.cluster's supervisor leaves the lock to its supervisor, which holds it."""
    data_dir = private_dir(config.data.dir)
    with (contextlib.nullcontext() if worker is not None else locked(data_dir)), private_umask():
        identity, created = load_or_create_key(config.key_path)
        if created:
            log.info("generated pool key %s at %s", identity.public_text, config.key_path)
        rt = Runtime(config, identity, readiness=Readiness(*expected_checks(config)), worker=worker)
        if modules is None:
            modules = CORE_MODULES if config.node.role == "mainnet" else POOL_MODULES
        kernel = Kernel([m() for m in modules], config=rt, stop_timeout=config.daemon.stop_timeout)
        await _run_kernel(config, rt, identity, kernel, config_path, overrides)
    log.info("stopped")
    return 0


async def _run_kernel(config: Config, rt: Runtime, identity: Identity, kernel: Kernel, config_path: str | None,
                      overrides: dict | None) -> None:
    with _gc_threshold(config.daemon.gc_threshold), Notifier.from_env() as notifier, \
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            await _serve(config, rt, identity, kernel, notifier, signals, config_path, overrides)
        except BaseExceptionGroup as group:  # the root nursery wraps a start-up failure
            leaf = single_leaf(group)
            if isinstance(leaf, StartupError):
                raise leaf from None
            raise


async def _serve(config: Config, rt: Runtime, identity: Identity, kernel: Kernel, notifier: Notifier, signals: Any,
                 config_path: str | None, overrides: dict | None) -> None:
    async with trio.open_nursery() as root:
        interval = Notifier.watchdog_interval() if config.daemon.watchdog else None
        if interval and notifier.enabled:
            root.start_soon(_watchdog, notifier, interval)
        async with kernel.run() as container, trio.open_nursery() as health:
            registry = container.get("registry")
            status = f"serving {len(registry.table)} nodes on network {config.network.id}"
            readiness, sample = rt.readiness, ReadinessSampler(rt.readiness)
            sample(container)
            health.start_soon(_sample_readiness, sample, container)
            notifier.notify(READY=1, STATUS=readiness.summary())  # start-up is done; STATUS says if we serve
            readiness.on_change(lambda r: notifier.notify(STATUS=r.summary()))
            log.info("ready: pool %s (%s), %s, version %s%s", config.node.name, identity.public_text,
                     status, __version__, next_step(config, container))
            async for signum in signals:
                if signum == signal.SIGHUP:
                    notifier.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
                    reload_config(rt, container, config_path, overrides or {})
                    reload_tls(rt.config, container)
                    notifier.notify(READY=1, STATUS=readiness.summary())
                    continue
                log.info("received %s, stopping (bound %.1fs)", signal.Signals(signum).name,
                         config.daemon.stop_timeout)
                notifier.notify(STOPPING=1, STATUS="stopping")
                break
            health.cancel_scope.cancel()
        root.cancel_scope.cancel()
