"""A read-only web dashboard on the metrics listener (issue 19): static pages shipped as package data, JSON
endpoints under /dashboard/api/, and one Server-Sent Events stream (/dashboard/api/stream) with the overview
figures once a second and the bus events a client asked for.

GET/HEAD only (the listener answers anything else 405). Every response carries a strict
Content-Security-Policy; the page renders data with textContent only and the JSON escapes <, > and & as
well, since names, meta, capabilities and event data are attacker-controlled. With `[dashboard] token` set,
every /dashboard/api/ route wants `Authorization: Bearer <token>` (compared in constant time); the static
files carry no data and are served without it (a browser cannot add a header to a page load: the page
takes the token from its URL fragment and sends it with each request, docs/metrics.md).

Cost: one sampler task reads a few counters once a second (the heartbeat count walks the live sessions'
counters, about a millisecond per 10,000 sessions) and keeps the last HISTORY samples for the charts and
the last RECENT events for the events page; a stream reuses the overview encoded once per sample.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import time
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs

import trio

from galaxynode import __version__
from galaxynode.container import Container
from galaxynode.events import Event, TooManyPatterns, validate_pattern
from galaxynode.metrics import EventStream, MetricsServer, Request, Response

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"))
PAGES = ("", "nodes", "peers", "events", "bans", "pools")  # /dashboard/<page>: one HTML file, app.js shows the page
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
HISTORY = 300      # one-second samples kept for the charts: five minutes
RECENT = 200       # events kept for /dashboard/api/events (the events page's backlog)
MAX_TOPICS = 8     # topic patterns per stream (each counts against the bus-wide cap)
EVENT_QUEUE = 256  # events a stream's subscription holds before it drops the oldest (then the byte budget)
PAGE = 100         # rows per page of nodes and pools
DEFAULT_TOPICS = ("node.#", "peer.#", "pool.#")


def dumps(obj: Any) -> str:
    """JSON with <, > and & escaped too (\\u003c...): harmless even where a careless reader treats it as HTML;
    control characters (ANSI escapes) and newlines are escaped by json.dumps already, so an SSE data line
    never breaks."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, dumps(obj).encode() + b"\n", "application/json", HEADERS)


def _sse(name: str, obj: Any) -> bytes:
    return f"event: {name}\ndata: {dumps(obj)}\n\n".encode()


def _hex(key: bytes) -> str:
    return "ed25519:" + key.hex()


def plain(value: Any, depth: int = 0) -> Any:
    """Event data as JSON values: 32-byte values as ed25519:<hex> keys, other bytes as hex."""
    if isinstance(value, bytes):
        return _hex(value) if len(value) == 32 else value.hex()
    if depth > 16:
        return "..."
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _matches(patterns: list[tuple[str, ...]], topic: str) -> bool:
    """The bus's pattern rule (`*` one segment, `#` the rest) for one topic: filtering the recent events."""
    parts = topic.split(".")
    for p in patterns:
        rest = p[-1] == "#"
        body = p[:-1] if rest else p
        if (len(parts) >= len(body) if rest else len(parts) == len(body)) and \
                all(b in ("*", s) for b, s in zip(body, parts)):
            return True
    return False


def _patterns(request: Request, default: tuple[str, ...]) -> list[str]:
    """?topics=a.*,b.# (empty: none); ValueError names a bad one."""
    q = parse_qs(request.query, keep_blank_values=True)
    text = q["topics"][0] if "topics" in q else ",".join(default)
    patterns = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if len(patterns) > MAX_TOPICS:
        raise ValueError(f"at most {MAX_TOPICS} topic patterns")
    for p in patterns:
        validate_pattern(p)
    return patterns


class Dashboard:
    """The routes and the sampler (`run`, a task of the metrics module). `key` is the pool key as text;
    `worker` this process's index among [server] workers (None: one process)."""

    def __init__(self, container: Container, *, network: str, key: str, role: str = "pool", name: str = "",
                 readiness: Any = None, token: str = "", worker: int | None = None):
        self.container = container
        self.network = network
        self.key = key
        self.role = role
        self.name = name
        self.readiness = readiness
        self.token = token.encode()
        self.worker = worker
        self.started = time.monotonic()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self.recent: collections.deque[Event] = collections.deque(maxlen=RECENT)
        self._last: tuple[float, int, int] | None = None  # (monotonic, events, heartbeats) at the last sample
        self._tick = trio.Event()  # set (and replaced) at every sample
        self._encoded: tuple[int, bytes] = (-1, b"")  # (sample count, the overview event) shared by streams
        self._samples = 0
        try:
            from galaxynode.identity import format_stellar, parse_public_key
            self.stellar = format_stellar(parse_public_key(key))
        except Exception:  # a key the identity module cannot parse: the page omits the line
            self.stellar = ""

    def register(self, server: MetricsServer) -> None:
        page = resources.files(__package__).joinpath("static", "index.html").read_bytes()
        for name in PAGES:
            server.route("/dashboard/" + name, lambda r: Response(200, page, "text/html; charset=utf-8", HEADERS))
        for name, ctype in _ASSETS.items():
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            server.route("/dashboard/" + name, lambda r, body=body, ctype=ctype: Response(200, body, ctype, HEADERS))
        for name in ("overview", "nodes", "peers", "events", "bans", "pools", "stream"):
            server.route("/dashboard/api/" + name, self._guard(getattr(self, "api_" + name)))

    def _guard(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        if not self.token:
            return handler

        def route(request: Request) -> Any:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # latin-1 gives back the bytes the client sent; compare_digest takes time independent of the content
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), self.token):
                return handler(request)
            return Response(401, b'{"error":"unauthorized: this dashboard wants Authorization: Bearer <token>"}\n',
                            "application/json", HEADERS + (("WWW-Authenticate", 'Bearer realm="galaxynode"'),))
        return route

    # --- the sampler ----------------------------------------------------------------------------------

    async def run(self, *, interval: float = 1.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Sample once per `interval` and keep the recent events, until cancelled."""
        bus = self.container.get("bus") if "bus" in self.container else None
        with bus.subscribe(["#"], queue_size=RECENT) if bus is not None else contextlib.nullcontext() as sub:
            async with trio.open_nursery() as nursery:
                if sub is not None:
                    nursery.start_soon(self._keep_recent, sub)
                self.sample()
                task_status.started()
                while True:
                    await trio.sleep(interval)
                    self.sample()

    async def _keep_recent(self, sub: Any) -> None:
        async for event in sub:
            self.recent.append(event)

    def _heartbeats(self) -> int:
        """HEARTBEATs received so far: the ended sessions' total plus the live ones' counters."""
        if "server" not in self.container:
            return 0
        server = self.container.get("server")
        n = server.stats.ended.frames_in_by_type.get("HEARTBEAT", 0)
        for conn in tuple(server.connections.values()):
            n += conn.stats.frames_in_by_type.get("HEARTBEAT", 0)
        return n

    def sample(self) -> None:
        c, now = self.container, time.monotonic()
        events = c.get("bus").published if "bus" in c else 0
        beats = self._heartbeats()
        if self._last is None:
            events_s = beats_s = 0.0
        else:
            dt = max(now - self._last[0], 1e-3)
            events_s, beats_s = (max(0, events - self._last[1]) / dt, max(0, beats - self._last[2]) / dt)
        self._last = (now, events, beats)
        self.history.append({"t": int(time.time()), "sessions": self._sessions(), "nodes": self._nodes(),
                             "events_s": round(events_s, 1), "heartbeats_s": round(beats_s, 1)})
        self._samples += 1
        self._tick.set()
        self._tick = trio.Event()

    def _sessions(self) -> int:
        return len(self.container.get("server").connections) if "server" in self.container else 0

    def _nodes(self) -> int:
        return len(self.container.get("registry").table) if "registry" in self.container else 0

    # --- JSON endpoints ---------------------------------------------------------------------------------

    def overview(self, *, history: bool = True) -> dict[str, Any]:
        c = self.container
        out: dict[str, Any] = {"key": self.key, "stellar": self.stellar, "network": self.network, "role": self.role,
                               "name": self.name, "version": __version__, "worker": self.worker,
                               "uptime": round(time.monotonic() - self.started, 1), "nodes": self._nodes(),
                               "sessions": self._sessions(),
                               "peers": len(c.get("peers").connected) if "peers" in c else 0,
                               "events": c.get("bus").published if "bus" in c else 0,
                               "sample": self.history[-1] if self.history else None}
        if history:
            out["history"] = list(self.history)
        if self.readiness is not None:
            out["ready"] = self.readiness.ready
            out["readiness"] = self.readiness.as_json()["checks"]
            out["not_ready"] = self.readiness.failing()
        return out

    def api_overview(self, request: Request) -> Response:
        return _json(self.overview())

    def _now_ms(self) -> int:
        return self.container.get("registry").clock() if "registry" in self.container else int(time.time() * 1000)

    def _page(self, request: Request, **filters: Any) -> tuple[list[Any], bytes | None]:
        q = parse_qs(request.query)
        cursor = bytes.fromhex(q["cursor"][0]) if q.get("cursor") else None
        return self.container.get("registry").table.query(cursor=cursor, limit=PAGE, **filters)

    def api_nodes(self, request: Request) -> Response:
        if "registry" not in self.container:
            return _json({"nodes": [], "cursor": None})
        q = parse_qs(request.query)
        caps = [c for v in q.get("cap", []) for c in v.split(",") if c]
        meta = dict(m.partition("=")[::2] for v in q.get("meta", []) for m in v.split(",") if "=" in m)
        try:
            page, nxt = self._page(request, capabilities=caps, meta=meta)
        except (ValueError, TypeError) as e:
            return _json({"error": str(e)}, 400)
        now = self._now_ms()
        here = self.container.get("server").connections if "server" in self.container else {}
        rows = []
        for e in page:
            row = {"key": _hex(e.key), "capabilities": list(e.capabilities), "meta": dict(e.meta),
                   "lease_left_s": max(0, round((e.expires - now) / 1000)), "session": e.key in here}
            if self.worker is not None:  # which worker holds the session: this one, or another (None)
                row["worker"] = self.worker if e.key in here else None
            rows.append(row)
        return _json({"nodes": rows, "cursor": nxt.hex() if nxt else None, "worker": self.worker})

    def api_pools(self, request: Request) -> Response:
        """The main net's registered pools, from the signed descriptors it stores (verified on ANNOUNCE)."""
        if self.role != "mainnet" or "registry" not in self.container:
            return _json({"error": "pools are listed by a main net only"}, 404)
        from galaxynode.descriptor import decode_record
        from galaxynode.gelato.errors import ProtocolError
        from galaxynode.mainnet import unpack_signed
        try:
            page, nxt = self._page(request)
        except (ValueError, TypeError) as e:
            return _json({"error": str(e)}, 400)
        now, rows = self._now_ms(), []
        for e in page:
            row: dict[str, Any] = {"key": _hex(e.key), "name": e.meta.get("name", ""),
                                   "network": e.meta.get("network", ""), "prefix": e.meta.get("prefix", ""),
                                   "capabilities": list(e.capabilities),
                                   "lease_left_s": max(0, round((e.expires - now) / 1000))}
            signed = unpack_signed(e.payload)
            with contextlib.suppress(ProtocolError, ValueError, TypeError):
                d = decode_record(signed.record) if signed is not None else None
                if d is not None:
                    row.update(endpoints=list(d.endpoints), nodes=d.nodes, seq=d.seq, expires=d.expires)
            rows.append(row)
        return _json({"pools": rows, "cursor": nxt.hex() if nxt else None})

    def api_peers(self, request: Request) -> Response:
        """ADMIN peers' view (state, direction, standing, last error) with each peer's descriptor."""
        if "peers" not in self.container:
            return _json({"peers": []})
        manager = self.container.get("peers")
        rows = []
        for p in manager.describe():
            row = plain(p)
            desc = manager.book.get(p["key"]) if manager.book is not None and p.get("key") else None
            if desc is not None:
                row["descriptor"] = {"name": desc.name, "endpoints": list(desc.endpoints), "nodes": desc.nodes,
                                     "capabilities": list(desc.capabilities), "seq": desc.seq,
                                     "expires": desc.expires}
            rows.append(row)
        return _json({"peers": rows})

    def api_bans(self, request: Request) -> Response:
        """ADMIN bans' view: admin bans of keys, violation bans of keys and addresses, with their expiry."""
        if "registry" not in self.container:
            return _json({"bans": []})
        from galaxynode.pool import _ban_items  # the one definition of "every ban in force"
        server = self.container.get("server") if "server" in self.container else None
        now, rows = self._now_ms(), []
        for item in _ban_items(self.container.get("registry"), server.bans if server is not None else None):
            kind = "key" if "key" in item else "address"
            until = item.get("until")
            rows.append({"kind": kind, "subject": plain(item[kind]), "by": item["by"],
                         "reason": item.get("reason", ""), "until": until,
                         "left_s": None if until is None else max(0, round((until - now) / 1000))})
        return _json({"bans": rows})

    def _event(self, ev: Event, lost: int = 0) -> dict[str, Any]:
        return {"id": ev.id.hex(), "topic": ev.topic, "ts": ev.ts, "origin": plain(ev.origin), "hops": ev.hops,
                "data": plain(ev.data), "lost": lost}

    def api_events(self, request: Request) -> Response:
        try:
            patterns = [validate_pattern(p) for p in _patterns(request, ("#",))]
        except ValueError as e:
            return _json({"error": str(e)}, 400)
        return _json({"events": [self._event(ev) for ev in self.recent if _matches(patterns, ev.topic)]})

    def api_stream(self, request: Request) -> Response | EventStream:
        """SSE: `event: overview` once a second (the first with the charts' history) unless ?overview=0,
        `event: event` for each bus event matching ?topics= (default node.#, peer.#, pool.#; empty: none)."""
        try:
            patterns = _patterns(request, DEFAULT_TOPICS)
        except ValueError as e:
            return _json({"error": str(e)}, 400)
        overview = parse_qs(request.query).get("overview", ["1"])[0] != "0"
        bus = self.container.get("bus") if "bus" in self.container else None

        async def produce(send: Callable[[bytes], None]) -> None:
            with contextlib.ExitStack() as stack:
                sub = None
                if patterns and bus is not None:
                    try:
                        sub = stack.enter_context(bus.subscribe(patterns, queue_size=EVENT_QUEUE,
                                                                max_patterns=MAX_TOPICS))
                    except TooManyPatterns as e:
                        send(_sse("error", {"error": str(e)}))
                        return
                async with trio.open_nursery() as nursery:
                    if overview:
                        nursery.start_soon(self._push_overview, send)
                    if sub is not None:
                        nursery.start_soon(self._push_events, sub, send)

        return EventStream(produce, HEADERS)

    async def _push_overview(self, send: Callable[[bytes], None]) -> None:
        send(_sse("overview", self.overview()))
        while True:
            await self._tick.wait()
            if self._encoded[0] != self._samples:  # encoded once per sample, whatever the number of streams
                self._encoded = (self._samples, _sse("overview", self.overview(history=False)))
            send(self._encoded[1])

    async def _push_events(self, sub: Any, send: Callable[[bytes], None]) -> None:
        async for ev in sub:
            send(_sse("event", self._event(ev, sub.dropped)))
