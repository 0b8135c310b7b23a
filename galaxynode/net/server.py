"""Accepting side: listeners, admission (connection slots per address, bans), one task per session.

Every connection runs in its own task; whatever goes wrong in one (a bad peer, a handler bug) is
contained there, logged, and never reaches the listener or the other sessions.
"""
from __future__ import annotations

import bisect
import logging
import ssl
from functools import partial
from typing import Callable, Sequence

import attrs
import trio

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity, format_public_key
from galaxynode.net.connection import (AGENT, DEFAULT_SESSION_LIMITS, Connection, ConnectionStats, Handler,
                                       RemoteError, SessionLimits, establish, is_violation, refuse)
from galaxynode.net.bans import Bans, address_group
from galaxynode.net.outbox import OutputBudget
from galaxynode.net.slots import Slot, Slots
from galaxynode.net import tls
from galaxynode.net.transport import Channel, ChannelClosed, format_address, parse_url, serve_channels

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the handshake latency histogram; loopback handshakes take ~2 ms.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@attrs.define
class ServerStats:
    accepted: int = 0            # WebSocket connections accepted
    refused_full: int = 0        # over max_connections
    refused_address: int = 0     # over max_connections_per_address (ERROR too_many_connections)
    closed_pending: int = 0      # closed unread at accept: over max_pending or max_pending_per_address
    closed_banned: int = 0       # closed unread at accept: a banned address (beyond its one flagged socket)
    upgrade_timeouts: int = 0    # TLS or the WebSocket upgrade not done by the handshake deadline (a violation)
    refused_banned: int = 0      # sessions of a banned key or address, refused after the handshake
    handshake_failed: int = 0
    established: int = 0
    violations: int = 0          # sessions we closed for misbehaviour
    bans: int = 0                # keys and addresses banned
    # Counters of the sessions that ended, plus ERRORs exchanged before a session existed
    # (refusals, failed handshakes); Server.session_stats() adds the live sessions.
    ended: ConnectionStats = attrs.Factory(ConnectionStats)
    # Established handshakes by duration: count per HANDSHAKE_BUCKETS bound (not cumulative), last is +Inf.
    handshake_buckets: list[int] = attrs.Factory(lambda: [0] * (len(HANDSHAKE_BUCKETS) + 1))
    handshake_seconds: float = 0.0

    def error_outside_session(self, error: ProtocolError) -> None:
        st = self.ended
        if isinstance(error, RemoteError):
            code = error.remote_code if error.remote_code == error.code else -1
            st.errors_received_by_code[code] = st.errors_received_by_code.get(code, 0) + 1
        else:
            st.errors_sent += 1
            st.errors_sent_by_code[int(error.code)] = st.errors_sent_by_code.get(int(error.code), 0) + 1


def reuse_port_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """Listeners on (host, port) with SO_REUSEPORT, as trio.open_tcp_listeners makes them otherwise
    (port 0 would give each process its own port: the supervisor resolves it first)."""
    import socket
    socks = []
    try:
        for family, type_, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(4096)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in socks]


class Server:
    """Serves Gelato on `listen_urls` (ws:// or wss://host:port; port 0 picks a free port).

    `handler_factory(conn)` returns the handler for one established session (see Connection).
    At accept, before reading a byte (net/slots.py): past `max_pending` sockets not yet through
    the handshake, or `max_pending_per_address` from one address (IPv6: /64), a new socket is
    closed unread, and so is a banned address's (but one at a time, flagged, so that an admin
    there can lift the ban). At most `max_connections` sessions in all and
    `max_connections_per_address` from one address (both including those still in the
    handshake); past those a client gets ERROR too_many_connections. The handshake (TLS, upgrade,
    HELLO/READY) must be done within limits.handshake_timeout of the accept; missing it is a
    violation of the address. Protocol abuse is counted against the session's key, or the
    address before the handshake (see net/bans.py); a banned key or address is refused with ERROR
    temporarily_banned after the handshake, admin keys excepted. A second session with the same key replaces
    the first (ERROR duplicate_session on the old one)."""

    def __init__(self, identity: Identity, *, network: str, role: str = "pool",
                 limits: SessionLimits = DEFAULT_SESSION_LIMITS, max_connections: int = 1000,
                 max_connections_per_address: int | None = None, max_pending: int = 64,
                 max_pending_per_address: int | None = None, handler_factory: Callable[[Connection], Handler] | None = None,
                 bans: Bans | None = None, listen_urls: Sequence[str] = ("ws://127.0.0.1:0",),
                 ssl_context: ssl.SSLContext | None = None, agent: str = AGENT,
                 output_budget: OutputBudget | None = None, reuse_port: bool = False):
        if max_connections < 1 or max_pending < 1:
            raise ValueError("max_connections and max_pending must be positive")
        self._listen = []
        for url in listen_urls:
            secure, host, port, _ = parse_url(url)
            if secure and ssl_context is None:
                raise ValueError(f"{url}: wss needs an ssl_context (certificate and key)")
            self._listen.append((secure, host, port))
        self.identity = identity
        self.network = network
        self.role = role
        self.limits = limits
        self.max_connections = max_connections
        self.max_pending = max_pending
        # None: no cap of its own (the total applies)
        self.slots = Slots(max_per_address=max_connections_per_address or max_connections, max_pending=max_pending,
                           max_pending_per_address=max_pending_per_address or max_pending)
        self.handler_factory = handler_factory
        self.bans = bans
        self.ssl_context = ssl_context
        self.agent = agent
        self.output_budget = output_budget or OutputBudget()  # queued output bytes of all sessions (outbox.py)
        # Several processes serve the same ports ([server] workers): each listens with SO_REUSEPORT
        # and the kernel spreads new connections among them.
        self.reuse_port = reuse_port
        self.connections: dict[bytes, Connection] = {}
        self.stats = ServerStats()
        # Failed TLS handshakes on our listeners: logged (rate limited) and counted (metrics).
        self.tls_log = tls.HandshakeLog(logging.getLogger("galaxynode.net.transport"))
        self._live: set[Connection] = set()  # established sessions still running (even if replaced)
        self.bound_urls: list[str] = []
        self._active = 0            # sessions admitted: in the handshake or established
        self._shutting_down = False
        self._scope: trio.CancelScope | None = None

    @property
    def active(self) -> int:
        return self._active

    def session_stats(self) -> ConnectionStats:
        """Counters of every session so far, the live ones included (for a metrics scrape)."""
        return ConnectionStats.total(self.stats.ended, self._live)

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled (or shutdown()); reports the bound URLs once listening."""
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                urls = []
                for secure, host, port in self._listen:
                    listeners = reuse_port_listeners(host, port) if self.reuse_port else None
                    bound = await nursery.start(partial(
                        serve_channels, self._serve, host, port, listeners=listeners,
                        max_message_size=self.limits.codec.max_frame_size,
                        preauth_message_size=self.limits.preauth_frame_size,
                        ssl_context=self.ssl_context if secure else None,
                        handshake_timeout=self.limits.handshake_timeout, close_timeout=self.limits.close_timeout,
                        max_streams=self.max_connections + self.max_pending,
                        admit=self._admit, on_upgrade_timeout=self._upgrade_timeout, tls_log=self.tls_log))
                    urls += [f"{'wss' if secure else 'ws'}://{format_address(h, p)}" for h, p in bound]
                self.bound_urls = urls
                log.info("listening on %s", ", ".join(urls))
                task_status.started(urls)

    async def shutdown(self) -> None:
        """Close every session with ERROR shutting_down (each bounded by close_timeout), then stop."""
        self._shutting_down = True
        async with trio.open_nursery() as nursery:
            for conn in list(self.connections.values()):
                nursery.start_soon(conn.close, ProtocolError(ErrorCode.SHUTTING_DOWN, "server shutting down"))
        if self._scope is not None:
            self._scope.cancel()

    def _violation(self, host: str, key: bytes | None, error: ProtocolError | None) -> None:
        """Count a session we closed for protocol abuse: against its key once the handshake is
        done (key not None), else against its address."""
        if not is_violation(error):
            return
        self.stats.violations += 1
        if self.bans is not None and self.bans.record_violation(host=host, key=key, now=trio.current_time(),
                                                                error=error):
            self.stats.bans += 1
            who = f"key {format_public_key(key)}" if key is not None else f"address {address_group(host)}"
            log.warning("banned %s for %gs after repeated violations (last: %s)", who, self.bans.ban_seconds, error)

    def _ban_refusal(self, channel: Channel, key: bytes) -> ProtocolError | None:
        """Why an authenticated session must end at once: its key or its address is banned. Admin
        keys are never refused, so an admin on a banned host can still see and lift the ban."""
        bans = self.bans
        if bans is None or bans.exempt(key):
            return None
        now = trio.current_time()
        if bans.key_banned(key, now):
            return ProtocolError(ErrorCode.TEMPORARILY_BANNED, "this key is banned for a while after repeated "
                                                               "protocol violations")
        # The transport flags a banned address at accept time; asked here when it did not.
        banned = getattr(channel, "address_banned", None)
        if banned is None:
            banned = bans.address_banned(channel.host, now)
        if banned:
            return ProtocolError(ErrorCode.TEMPORARILY_BANNED, "this address is banned for a while after repeated "
                                                               "protocol violations")
        return None

    def _admit(self, host: str) -> Slot | None:
        """At accept, before any byte is read: a slot, or None to close the socket unread."""
        banned = self.bans is not None and self.bans.address_banned(host, trio.current_time())
        slot = self.slots.accept(host, banned=banned)
        if slot is None:
            if banned:
                self.stats.closed_banned += 1
            else:
                self.stats.closed_pending += 1
        return slot

    def _upgrade_timeout(self, host: str) -> None:
        self.stats.upgrade_timeouts += 1
        self._violation(host, None, ProtocolError(
            ErrorCode.HANDSHAKE_TIMEOUT, f"TLS and WebSocket upgrade not done within {self.limits.handshake_timeout:g}s"))

    async def _serve(self, channel: Channel) -> None:
        self.stats.accepted += 1
        slot = channel.admission
        assert isinstance(slot, Slot)
        if slot.banned:
            channel.address_banned = True  # only an admin key gets past the handshake (_ban_refusal)
        refusal = None
        if self._shutting_down:
            refusal = ProtocolError(ErrorCode.SHUTTING_DOWN, "server shutting down")
        elif self._active >= self.max_connections:
            self.stats.refused_full += 1
            refusal = ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, f"at most {self.max_connections} connections")
        elif slot.over_cap:
            self.stats.refused_address += 1
            refusal = ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS,
                                    f"at most {self.slots.max_per_address} connections from one address")
        if refusal is not None:
            self.stats.error_outside_session(refusal)
            await refuse(channel, self.identity, refusal, limits=self.limits)
            return
        self._active += 1
        try:
            await self._session(channel)
        except ChannelClosed as e:
            log.debug("%s went away: %s", channel.remote, e)
        except Exception:
            log.exception("session with %s failed", channel.remote)
        finally:
            self._active -= 1

    async def _session(self, channel: Channel) -> None:
        started = trio.current_time()
        try:
            session = await establish(channel, self.identity, opener=False, network=self.network, role=self.role,
                                      limits=self.limits, listen=self.bound_urls, agent=self.agent,
                                      on_error=partial(self._violation, channel.host, None))
        except ProtocolError as e:
            self.stats.handshake_failed += 1
            self.stats.error_outside_session(e)
            log.info("handshake with %s failed: %s", channel.remote, e)
            return
        channel.admission.established()  # type: ignore[union-attr]  # a Slot (_serve)
        conn = Connection(channel, session, limits=self.limits, budget=self.output_budget)
        key = conn.peer_key
        conn.on_error = partial(self._violation, channel.host, key)
        refusal = self._ban_refusal(channel, key)
        if refusal is not None:
            self.stats.refused_banned += 1
            log.info("refused %s (%s): %s", format_public_key(key), channel.remote, refusal.message)
            await conn.close(refusal)
            self.stats.ended.add(conn.stats)
            return
        if self.handler_factory is not None:
            conn.handler = self.handler_factory(conn)
        old = self.connections.get(key)
        self.connections[key] = conn
        self._live.add(conn)
        self.stats.established += 1
        took = trio.current_time() - started
        self.stats.handshake_buckets[bisect.bisect_left(HANDSHAKE_BUCKETS, took)] += 1
        self.stats.handshake_seconds += took
        log.info("session with %s (%s, %s) established", format_public_key(key), session.peer_hello.role,
                 channel.remote)
        try:
            if old is not None:
                await old.close(ProtocolError(ErrorCode.DUPLICATE_SESSION, "replaced by a newer session"))
            await conn.run()
        finally:
            if self.connections.get(key) is conn:
                del self.connections[key]
            self._live.discard(conn)
            self.stats.ended.add(conn.stats)
            log.info("session with %s closed (%s %s)", format_public_key(key), conn.close_code,
                     conn.local_error or conn.remote_error or conn.close_reason)

