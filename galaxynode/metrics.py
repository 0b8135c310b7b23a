"""Prometheus metrics: a collector that reads the daemon's own counters at scrape time, served by a
small trio HTTP endpoint (GET /metrics, and /healthz, /readyz from galaxynode.health). Every metric
and endpoint is described in docs/metrics.md.

The collector, not prometheus_client Counter objects, because the frame path then only bumps the plain
ints and dicts the sessions keep anyway: building the metric families costs once per scrape, not once
per frame. prometheus_client is used for the exposition formats (text and OpenMetrics, by Accept).
Our own HTTP handler, not prometheus_client.start_http_server, because that runs a thread outside the
daemon's nursery; this is one more task, cancelled with the daemon like the others.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
from collections import Counter
from typing import Any, Awaitable, Callable, Iterator

import attrs
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from galaxynode import __version__
from galaxynode.container import Container
from galaxynode.gelato.errors import ErrorCode
from galaxynode.gelato.messages import ROLES
from galaxynode.health import Readiness
from galaxynode.net.server import HANDSHAKE_BUCKETS
from galaxynode.net.transport import format_address

log = logging.getLogger(__name__)

PLUGIN_STATES = ("pending", "running", "backoff", "finished", "failed", "stopped")
ANNOUNCE_STATES = ("connecting", "announced", "backoff")


def _error_labels(code: int) -> list[str]:
    try:
        return [str(code), ErrorCode(code).name.lower()]
    except ValueError:  # a peer's code we do not know (counted as -1)
        return ["unknown", "unknown"]


class DaemonCollector:
    """Reads the running daemon's services from its container at every scrape; services that are
    not there (no plugins, no [mainnet] url, a main net without peering) give no metrics."""

    def __init__(self, container: Container, *, network: str, role: str, name: str, key: str):
        self.container = container
        self.info = {"version": __version__, "network": network, "role": role, "name": name, "key": key}

    def collect(self) -> Iterator[Metric]:
        c = self.container
        yield InfoMetricFamily("galaxynode", "Pool identity and software version.", value=self.info)
        if "server" in c:
            yield from self._server(c.get("server"), c.get("peers") if "peers" in c else None)
        if "peers" in c:
            peers = c.get("peers").connected.values()
            directions = Counter(getattr(conn.handler, "direction", "inbound") for conn in peers)
            g = GaugeMetricFamily("galaxynode_peers_connected", "Peer pools with an active session.",
                                  labels=["direction"])
            for d in ("inbound", "outbound"):
                g.add_metric([d], directions[d])
            yield g
            manager = c.get("peers")
            g = GaugeMetricFamily("galaxynode_peers_standing", "Peer pools by standing (low: queries skip them).",
                                  labels=["standing"])
            for standing, n in manager.standing_counts().items():
                g.add_metric([standing], n)
            yield g
            st = manager.stats
            yield CounterMetricFamily("galaxynode_peer_queries_skipped", "Peer answers not waited for (low standing).",
                                      value=st.queries_skipped)
            yield CounterMetricFamily("galaxynode_peers_not_accepted",
                                      "Sessions claiming role pool that the peering policy served as nodes.",
                                      value=st.not_accepted)
            yield CounterMetricFamily("galaxynode_peers_evicted", "Peers that gave their slot to a better newcomer.",
                                      value=st.evicted)
            refused = CounterMetricFamily("galaxynode_peer_claims_refused",
                                          "Relayed events and query records dropped by attribution (records.md §6).",
                                          labels=["kind"])
            refused.add_metric(["event"], st.events_forged)
            refused.add_metric(["record"], st.records_refused)
            yield refused
            yield CounterMetricFamily("galaxynode_peer_records_filtered",
                                      "Peer query records outside the query's filter, dropped.", value=st.records_filtered)
            yield CounterMetricFamily("galaxynode_peer_queries_duplicate",
                                      "Peer QUERYs whose id was seen before: answered locally, not fanned out.",
                                      value=st.queries_duplicate)
        if "registry" in c:
            registry = c.get("registry")
            yield GaugeMetricFamily("galaxynode_registry_nodes", "Leases held (nodes; pools on a main net).",
                                    value=len(registry.table))
            yield CounterMetricFamily("galaxynode_leases_expired", "Leases that ran out without renewal.",
                                      value=registry.expired)
            yield CounterMetricFamily("galaxynode_registry_commit_failures",
                                      "Registry commits the store refused (e.g. disk full).",
                                      value=registry.commit_failures)
            yield CounterMetricFamily("galaxynode_registry_changes_refused",
                                      "Changes rolled back and answered unavailable because their commit failed.",
                                      value=registry.changes_refused)
        if "bus" in c:
            bus = c.get("bus")
            yield CounterMetricFamily("galaxynode_events_published", "Events published on the bus.",
                                      value=bus.published)
            yield CounterMetricFamily("galaxynode_events_dropped", "Events lost by subscribers that fell behind.",
                                      value=bus.dropped)
        if "plugins" in c:
            yield from self._plugins(c.get("plugins"))
        yield from self._task_failures(c)
        if "announcer" in c:
            yield from self._announcer(c.get("announcer"))
        if "metrics" in c:
            yield from self._http(c.get("metrics"))
        services = c.get("services") if "services" in c else None
        refused = getattr(services, "refused", None)
        if refused is not None:  # main net role
            yield CounterMetricFamily("galaxynode_mainnet_announces_refused", "ANNOUNCEs this main net refused.",
                                      value=refused)
        pacer = getattr(services, "pacer", None)
        if pacer is not None and "registry" in c and self.info["role"] == "pool":  # heartbeat pacing
            yield GaugeMetricFamily("galaxynode_heartbeat_interval_floor_seconds",
                                    "Floor of the heartbeat intervals granted now (before jitter): leases / max_heartbeats_per_s "
                                    "(above max_ttl/3 the budget is exceeded).",
                                    value=pacer.floor(len(c.get("registry").table)))
            yield CounterMetricFamily("galaxynode_joins_refused_overloaded",
                                      "JOINs of new keys refused overloaded (heartbeat budget spent).",
                                      value=pacer.refused_overloaded)
            yield CounterMetricFamily("galaxynode_heartbeats_refused_early",
                                      "HEARTBEATs (and re-JOINs of held leases) refused rate_limited: sooner than "
                                      "the interval asked (pacing).",
                                      value=pacer.refused_early)

    def _http(self, server: "MetricsServer") -> Iterator[Metric]:
        yield GaugeMetricFamily("galaxynode_http_streams", "Event streams (dashboard SSE) open now.",
                                value=server.streams)
        ended = CounterMetricFamily("galaxynode_http_streams_ended", "Event streams ended by the server, by reason "
                                    "(budget: the client did not read its stream_budget; full: over max_streams, "
                                    "refused).", labels=["reason"])
        ended.add_metric(["budget"], server.streams_dropped)
        ended.add_metric(["full"], server.streams_refused)
        yield ended

    def _task_failures(self, c: Container) -> Iterator[Metric]:
        """Background tasks' caught exceptions (galaxynode.resilience), by task, from every service
        that keeps them; a task that never failed has no sample."""
        counts: Counter[str] = Counter()
        for name in ("registry", "peers", "announcer"):
            failures = getattr(c.get(name), "task_failures", None) if name in c else None
            if failures is not None:
                counts.update(failures.counts)
        m = CounterMetricFamily("galaxynode_task_failures", "Exceptions caught in background tasks, which went on.",
                                labels=["task"])
        for task, n in sorted(counts.items()):
            m.add_metric([task], n)
        yield m

    def _server(self, server: Any, peers: Any) -> Iterator[Metric]:
        st, total = server.stats, server.session_stats()
        if peers is not None:  # sessions we dialled: their frames, bytes and errors count too
            total.add(peers.session_stats())
        frames_in = CounterMetricFamily("galaxynode_frames_received", "Session frames received, by type.",
                                        labels=["type"])
        for kind, n in sorted(total.frames_in_by_type.items()):
            frames_in.add_metric([kind], n)
        frames_in.add_metric(["undecoded"], total.frames_in - sum(total.frames_in_by_type.values()))
        yield frames_in
        frames_out = CounterMetricFamily("galaxynode_frames_sent", "Session frames sent, by type.", labels=["type"])
        for kind, n in sorted(total.frames_out_by_type.items()):
            frames_out.add_metric([kind], n)
        yield frames_out
        yield CounterMetricFamily("galaxynode_bytes_received", "Bytes of session frames received.",
                                  value=total.bytes_in)
        yield CounterMetricFamily("galaxynode_bytes_sent", "Bytes of session frames sent.", value=total.bytes_out)
        for direction, counts in (("sent", total.errors_sent_by_code), ("received", total.errors_received_by_code)):
            errors = CounterMetricFamily(f"galaxynode_errors_{direction}", f"ERROR frames {direction}, by code.",
                                         labels=["code", "name"])
            for code, n in sorted(counts.items()):
                errors.add_metric(_error_labels(code), n)
            yield errors
        handshakes = CounterMetricFamily("galaxynode_handshakes", "Gelato handshakes with clients, by result.",
                                         labels=["result"])
        handshakes.add_metric(["ok"], st.established)
        handshakes.add_metric(["failed"], st.handshake_failed)
        yield handshakes
        cumulative, buckets = 0, []
        for bound, n in zip((*HANDSHAKE_BUCKETS, float("inf")), st.handshake_buckets):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily("galaxynode_handshake_duration_seconds",
                                    "Time from accepting a connection to an established session.",
                                    buckets=buckets, sum_value=st.handshake_seconds)
        roles = Counter(conn.peer_hello.role for conn in server.connections.values())
        sessions = GaugeMetricFamily("galaxynode_sessions_connected", "Established sessions, by the peer's role.",
                                     labels=["role"])
        for role in ROLES:
            sessions.add_metric([role], roles[role])
        yield sessions
        yield CounterMetricFamily("galaxynode_connections_accepted", "WebSocket connections accepted.",
                                  value=st.accepted)
        refused = CounterMetricFamily("galaxynode_connections_refused", "Connections refused before the handshake.",
                                      labels=["reason"])
        refused.add_metric(["full"], st.refused_full)
        refused.add_metric(["banned"], st.refused_banned)
        refused.add_metric(["address"], st.refused_address)
        refused.add_metric(["pending"], st.closed_pending)
        refused.add_metric(["banned_address"], st.closed_banned)
        refused.add_metric(["upgrade_timeout"], st.upgrade_timeouts)
        yield refused
        yield CounterMetricFamily("galaxynode_tls_handshakes_failed", "TLS handshakes on our listeners that failed "
                                  "(untrusted certificate, plain HTTP on a TLS port, timeout, ...).",
                                  value=server.tls_log.failures)
        yield CounterMetricFamily("galaxynode_violations", "Sessions closed for protocol abuse.", value=st.violations)
        yield CounterMetricFamily("galaxynode_bans", "Keys and addresses temporarily banned.", value=st.bans)

    def _plugins(self, supervisor: Any) -> Iterator[Metric]:
        restarts = CounterMetricFamily("galaxynode_plugin_restarts", "Plugin restarts after a crash.",
                                       labels=["plugin"])
        crashes = CounterMetricFamily("galaxynode_plugin_crashes", "Plugin crashes.", labels=["plugin"])
        state = GaugeMetricFamily("galaxynode_plugin_state", "1 for the state each plugin is in.",
                                  labels=["plugin", "state"])
        for name, st in sorted(supervisor.stats.items()):
            restarts.add_metric([name], st.restarts)
            crashes.add_metric([name], st.crashes)
            for s in PLUGIN_STATES:
                state.add_metric([name, s], float(st.state == s))
        yield from (restarts, crashes, state)
        admissions = CounterMetricFamily("galaxynode_plugin_admissions", "Admission hook verdicts (failed: raised, "
                                         "timed out or not running; admission_default applied).",
                                         labels=["plugin", "result"])
        requests = CounterMetricFamily("galaxynode_plugin_requests", "x.<plugin>.* requests answered, by result.",
                                       labels=["plugin", "result"])
        for name, st in sorted(supervisor.stats.items()):
            for result, n in (("admitted", st.admitted), ("refused", st.refused), ("failed", st.admission_failed)):
                admissions.add_metric([name, result], n)
            requests.add_metric([name, "ok"], st.messages - st.message_errors)
            requests.add_metric([name, "error"], st.message_errors)
        yield from (admissions, requests)
        yield from supervisor.metrics.collect()  # the plugins' own: galaxynode_plugin_<short>_<name>

    def _announcer(self, a: Any) -> Iterator[Metric]:
        state = GaugeMetricFamily("galaxynode_mainnet_announce_state", "1 for the state of the main net session.",
                                  labels=["state"])
        for s in ANNOUNCE_STATES:
            state.add_metric([s], float(a.state == s))
        yield state
        yield GaugeMetricFamily("galaxynode_mainnet_last_announce_timestamp_seconds",
                                "When the main net last granted our descriptor a lease (0: never).",
                                value=(a.last_announced or 0) / 1000)
        yield GaugeMetricFamily("galaxynode_mainnet_lease_expiry_timestamp_seconds",
                                "When our descriptor's lease at the main net ends (0: no lease).",
                                value=(a.lease_expires or 0) / 1000)
        yield CounterMetricFamily("galaxynode_mainnet_announces", "Leases granted by the main net.", value=a.announces)
        yield CounterMetricFamily("galaxynode_mainnet_failures", "Main net sessions that failed or could not open.",
                                  value=a.failures)


def daemon_registry(container: Container, **info: str) -> CollectorRegistry:
    """A registry of its own per daemon (not prometheus_client's global one), so that several daemons
    in one process, as in the tests, do not collide."""
    registry = CollectorRegistry()
    registry.register(DaemonCollector(container, **info))
    ProcessCollector(registry=registry)
    return registry


def split_host_port(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9477' or '[::1]:9477' (as config.HostPort checked it) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def worker_listen(listen: str, worker: int | None) -> str:
    """Where worker `worker` of `[server] workers` serves metrics and the dashboard: the configured port plus
    its index (port 0 stays 0), so each worker answers for itself and Prometheus scrapes each one."""
    host, port = split_host_port(listen)
    return listen if worker is None or port == 0 else format_address(host, port + worker)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


@attrs.frozen
class Request:
    """A request head: method, path (without the query), query string, headers (lower-case names)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers (e.g. the dashboard's CSP)


@attrs.frozen
class EventStream:
    """A streaming answer (Server-Sent Events, text/event-stream): the server sends the head, then runs
    `produce(send)` for as long as the client stays. `send(chunk)` never waits: it queues the bytes (whole
    SSE messages) and a writer task puts them on the socket; past the server's `stream_budget` of unsent
    bytes the client is dropped (produce is cancelled), so a client that never reads costs a bounded amount
    and never holds up the producer, other clients or the other routes."""

    produce: Callable[[Callable[[bytes], None]], Awaitable[None]]
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[Request], "Response | EventStream"]

# Event streams: each is a long-lived connection that costs a task set, up to STREAM_BUDGET bytes of queued
# output and whatever its producer computes per second; 8 are plenty for the operators of one pool looking
# at its dashboard, and bound that cost at 8 x 256 KiB of queued output. Kernel send buffers are cut to
# STREAM_SNDBUF (Linux doubles it) so that memory outside our count stays small too.
MAX_STREAMS = 8
STREAM_BUDGET = 256 * 1024
STREAM_SNDBUF = 32 * 1024
HEARTBEAT = 15.0  # seconds between SSE comment lines, so proxies and browsers see a live connection


def healthz(request: Request) -> Response:
    """Liveness: the process is up and its event loop answers."""
    return Response(200, b"ok\n")


def readyz(readiness: Readiness) -> Route:
    """Readiness: 200 when every check is ok, else 503; the body names each check (JSON)."""
    def route(request: Request) -> Response:
        body = json.dumps(readiness.as_json(), sort_keys=True).encode() + b"\n"
        return Response(200 if readiness.ready else 503, body, "application/json")
    return route


class MetricsServer:
    """HTTP/1.x on `listen`: GET (or HEAD) of a path in `routes` (path -> handler), anything else a
    short error; one request per connection. /metrics gives the registry's exposition, /healthz
    liveness, /readyz (with a `readiness`) readiness; others add routes with `route()` before run.
    Bounded: request head size, the time a client may take (read and write together), and the
    number of clients at once (past it a connection is closed unanswered). Nothing a client sends
    can raise out of the handler. A route answering an EventStream keeps its connection instead: at most
    `max_streams` of those, each with `stream_budget` bytes of unsent output (see EventStream)."""

    def __init__(self, registry: CollectorRegistry, listen: str, *, max_request: int = 8192,
                 timeout: float = 5.0, max_clients: int = 16, readiness: Readiness | None = None,
                 max_streams: int = MAX_STREAMS, stream_budget: int = STREAM_BUDGET, heartbeat: float = HEARTBEAT):
        self.registry = registry
        self.host, self.port = split_host_port(listen)
        self.max_request = max_request
        self.timeout = timeout
        self.max_clients = max_clients
        self.max_streams = max_streams
        self.stream_budget = stream_budget
        self.heartbeat = heartbeat
        self.urls: list[str] = []
        self.served = 0
        self.streams = 0           # event streams open now (they do not count against max_clients)
        self.streams_dropped = 0   # streams whose client let more than stream_budget bytes pile up
        self.streams_refused = 0   # stream requests answered 503 at max_streams
        self._clients = 0
        self.routes: dict[str, Route] = {"/metrics": self._metrics, "/healthz": healthz}
        if readiness is not None:
            self.routes["/readyz"] = readyz(readiness)

    def route(self, path: str, handler: Route) -> None:
        """Serve GET/HEAD `path` with `handler` (which must not block: it runs on the event loop). A handler
        that returns an EventStream turns the connection into a stream (at most `max_streams` at once)."""
        self.routes[path] = handler

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (port 0 picks a free port), report the bound URLs, serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.urls = [f"http://{format_address(*lst.socket.getsockname()[:2])}/metrics" for lst in listeners]
        task_status.started(self.urls)
        await trio.serve_listeners(self._handle, listeners)  # closes the listeners when it ends

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self._clients >= self.max_clients:
            await trio.aclose_forcefully(stream)
            return
        self._clients += 1
        counted, answer = True, None
        try:
            async with stream:
                with trio.move_on_after(self.timeout):
                    head = await self._read_head(stream)
                    if head is None:
                        return
                    answer = self._respond(head)
                    if isinstance(answer, bytes):
                        await stream.send_all(answer)
                        await self._linger(stream)
                        return
                if isinstance(answer, EventStream):  # from here on bounded by max_streams, not the timeout
                    self._clients -= 1
                    counted = False
                    self.streams += 1
                    try:
                        await self._stream(stream, answer)
                    finally:
                        self.streams -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            if counted:
                self._clients -= 1

    async def _stream(self, stream: trio.SocketStream, es: EventStream) -> None:
        """Run one event stream: the producer, a writer that drains its queue, a reader that notices the
        client leaving, and heartbeat comments; any of them ending (or the budget) ends them all."""
        with contextlib.suppress(OSError, AttributeError):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        extra = "".join(f"{k}: {v}\r\n" for k, v in es.headers)
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n"
                f"X-Accel-Buffering: no\r\n{extra}Connection: close\r\n\r\n")
        async with trio.open_nursery() as nursery:
            out = _Outbox(self.stream_budget, nursery.cancel_scope)
            out.put(head.encode("latin-1") + b"retry: 5000\n\n")
            nursery.start_soon(_until_client_leaves, stream, nursery.cancel_scope, self.max_request)
            nursery.start_soon(_heartbeats, out, self.heartbeat)
            nursery.start_soon(_produce, es, out)
            await _write(stream, out)
            nursery.cancel_scope.cancel()
        if out.over_budget:
            self.streams_dropped += 1
            log.info("dropped an event stream: more than %d bytes unsent (a client that does not read)",
                     self.stream_budget)

    async def _read_head(self, stream: trio.SocketStream) -> bytes | None:
        """The request line and headers; b"" if too long; None if the client went away first."""
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > self.max_request:
                return b""
            chunk = await stream.receive_some(4096)
            if not chunk:
                return None
            data += chunk
        return data.split(b"\r\n\r\n", 1)[0]

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Half-close, then read what the client still sends (a bounded amount) until it closes:
        closing with unread input resets the connection, and the client may lose our answer."""
        await stream.send_eof()
        left = 4 * self.max_request
        while left > 0 and (chunk := await stream.receive_some(4096)):
            left -= len(chunk)

    def _respond(self, head: bytes) -> bytes | EventStream:
        if not head:
            return _response(431, b"request too large\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, b"bad request\n")
        method, (path, _, query) = parts[0], parts[1].partition("?")
        handler = self.routes.get(path)
        if handler is None:
            return _response(404, f"not found; try {', '.join(sorted(self.routes))}\n".encode())
        if method not in ("GET", "HEAD"):
            return _response(405, b"method not allowed\n", extra="Allow: GET, HEAD\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        try:
            r = handler(Request(method, path, query, headers))
        except Exception:
            log.exception("serving %s failed", path)
            return _response(500, b"internal error\n")
        if isinstance(r, EventStream):
            if self.streams >= self.max_streams:
                self.streams_refused += 1
                return _response(503, f"at most {self.max_streams} event streams at once\n".encode(),
                                 extra="Retry-After: 10\r\n")
            if method == "HEAD":
                return _response(200, b"", content_type="text/event-stream; charset=utf-8", head_only=True)
            return r
        extra = "".join(f"{k}: {v}\r\n" for k, v in r.headers)
        return _response(r.status, r.body, content_type=r.content_type, extra=extra, head_only=method == "HEAD")

    def _metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        try:
            body = encoder(self.registry)
        except Exception:
            log.exception("collecting metrics failed")
            return Response(500, b"collecting metrics failed\n")
        self.served += 1
        return Response(200, body, content_type)


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8", extra: str = "",
              head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


class _Outbox:
    """An event stream's queued output, counted in bytes until the socket took them; over `budget` the
    stream is cancelled (`over_budget`)."""

    def __init__(self, budget: int, scope: trio.CancelScope):
        self.budget = budget
        self.scope = scope
        self.chunks: collections.deque[bytes] = collections.deque()
        self.unsent = 0
        self.closed = False
        self.over_budget = False
        self._ready = trio.Event()

    def put(self, chunk: bytes) -> None:
        if self.closed:
            return
        self.chunks.append(chunk)
        self.unsent += len(chunk)
        self._ready.set()
        if self.unsent > self.budget:
            self.over_budget = self.closed = True
            self.scope.cancel()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self) -> bytes:
        """What is queued, joined (b"" once closed and drained); it stays counted until `sent`."""
        while not self.chunks:
            if self.closed:
                return b""
            self._ready = trio.Event()
            await self._ready.wait()
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


async def _write(stream: trio.SocketStream, out: _Outbox) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while data := await out.take():
            await stream.send_all(data)
            out.unsent -= len(data)


async def _produce(es: EventStream, out: _Outbox) -> None:
    try:
        await es.produce(out.put)
    finally:
        out.close()  # the writer sends what is queued, then the stream ends


async def _heartbeats(out: _Outbox, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        out.put(b": keep-alive\n\n")


async def _until_client_leaves(stream: trio.SocketStream, scope: trio.CancelScope, limit: int) -> None:
    """A stream's client sends nothing after its request: EOF (it left), an error, or more than `limit`
    bytes end the stream."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while limit > 0 and (chunk := await stream.receive_some(4096)):
            limit -= len(chunk)
    scope.cancel()
