"""A read-only web dashboard on the metrics listener (issue 19): static pages shipped as package data and
JSON endpoints they poll. GET/HEAD only (the listener answers anything else 405); every response carries a
strict Content-Security-Policy, and the page renders data with textContent only, since names, meta and
capabilities are attacker-controlled."""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from galaxynode import __version__
from galaxynode.container import Container
from galaxynode.metrics import MetricsServer, Request, Response

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"))
_STATIC = {"/dashboard/": ("index.html", "text/html; charset=utf-8"),
           "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/dashboard/style.css": ("style.css", "text/css; charset=utf-8")}


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, sort_keys=True).encode() + b"\n", "application/json", HEADERS)


def _hex(key: bytes) -> str:
    return "ed25519:" + key.hex()


class Dashboard:
    """The routes; `info` holds what the overview shows that the container does not (network, key)."""

    def __init__(self, container: Container, *, network: str, key: str, readiness: Any = None):
        self.container = container
        self.network = network
        self.key = key
        self.readiness = readiness
        self.started = time.monotonic()

    def register(self, server: MetricsServer) -> None:
        for path, (name, ctype) in _STATIC.items():
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            server.route(path, lambda r, body=body, ctype=ctype: Response(200, body, ctype, HEADERS))
        server.route("/dashboard/api/overview", self.overview)
        server.route("/dashboard/api/nodes", self.nodes)

    def overview(self, request: Request) -> Response:
        c = self.container
        out: dict[str, Any] = {"key": self.key, "network": self.network, "version": __version__,
                               "uptime": round(time.monotonic() - self.started, 1)}
        try:
            from galaxynode.identity import format_stellar, parse_public_key
            out["stellar"] = format_stellar(parse_public_key(self.key))
        except Exception:  # older identity module or a key it cannot parse: the page omits the line
            pass
        out["nodes"] = len(c.get("registry").table) if "registry" in c else 0
        out["peers"] = len(c.get("peers").connected) if "peers" in c else 0
        out["events"] = c.get("bus").published if "bus" in c else 0
        if self.readiness is not None:
            out["ready"] = self.readiness.ready
            out["readiness"] = self.readiness.as_json()
        return _json(out)

    def nodes(self, request: Request) -> Response:
        if "registry" not in self.container:
            return _json({"nodes": [], "cursor": None})
        q = parse_qs(request.query)
        caps = [c for v in q.get("cap", []) for c in v.split(",") if c]
        meta = dict(m.partition("=")[::2] for v in q.get("meta", []) for m in v.split(",") if "=" in m)
        try:
            cursor = bytes.fromhex(q["cursor"][0]) if q.get("cursor") else None
            page, nxt = self.container.get("registry").table.query(capabilities=caps, meta=meta, cursor=cursor,
                                                                   limit=100)
        except (ValueError, TypeError) as e:
            return _json({"error": str(e)}, 400)
        now = time.time() * 1000
        rows = [{"key": _hex(e.key), "capabilities": list(e.capabilities), "meta": dict(e.meta),
                 "lease_left_s": max(0, round((e.expires - now) / 1000))} for e in page]
        return _json({"nodes": rows, "cursor": nxt.hex() if nxt else None})
