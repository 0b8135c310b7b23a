"""`galaxynode rewards URL --epoch N [--json]` (a galaxynode.commands entry point): fetch a pool's
signed epoch report, check its signature, print it. Library code never imports galaxynode.cli, so
this command prints its own one-line errors (`galaxynode: ...`, exit 1)."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone


def add(subparsers) -> None:
    p = subparsers.add_parser("rewards", help="show a pool's signed uptime-rewards report for an epoch",
                              epilog="example: galaxynode rewards ws://127.0.0.1:7447 --epoch 20480 --json")
    p.add_argument("url", metavar="URL", help="pool endpoint, e.g. ws://127.0.0.1:7447")
    p.add_argument("--epoch", type=int, required=True, metavar="N", help="epoch number (>= 0)")
    p.add_argument("--network", default="galaxy-dev", metavar="ID", help="network id (default galaxy-dev)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="reply deadline (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run(args: argparse.Namespace) -> int:
    import trio

    from galaxynode import plugin
    from galaxynode.contrib.rewards import verify_report
    from galaxynode.identity import Identity, format_public_key, format_stellar
    from galaxynode.nodeclient import connect

    if args.epoch < 0:
        print("galaxynode: --epoch: must be >= 0", file=sys.stderr)
        return 2

    async def fetch() -> tuple[dict, bytes]:
        async with connect(args.url, Identity.generate(), network=args.network, timeout=args.timeout) as pool:
            reply = await plugin.call(pool, "rewards", "report", {"epoch": args.epoch}, timeout=args.timeout)
            return reply, pool.peer_key  # the key the session authenticated: a report signed by another fails

    try:
        reply, origin = trio.run(fetch)
        report = verify_report(reply, origin)
    except Exception as e:  # one line, never a traceback: unreachable pool, refusal, bad signature
        leaves = e.exceptions if isinstance(e, BaseExceptionGroup) else [e]
        text = "; ".join(getattr(x, "message", None) or str(x) or type(x).__name__ for x in leaves)
        print(f"galaxynode: {args.url}: epoch {args.epoch}: {' '.join(text.split())}", file=sys.stderr)
        return 1
    nodes = [{"key": format_public_key(k), "stellar": format_stellar(k), "ms": ms, "weight": w, "share_ppm": ppm}
             for k, ms, w, ppm in report["nodes"]]
    if args.json:
        print(json.dumps({"epoch": report["epoch"], "pool": format_public_key(report["origin"]),
                          "network": report["network"], "start": report["start"], "end": report["end"],
                          "total_ms": report["total_ms"], "nodes": nodes}, indent=2))
        return 0
    print(f"epoch {report['epoch']} of pool {format_public_key(report['origin'])}: {_iso(report['start'])} .. "
          f"{_iso(report['end'])}, {len(nodes)} nodes, {report['total_ms'] / 1000:.3f} node-seconds")
    for n in nodes:
        print(f"{n['share_ppm'] / 10_000:9.4f}%  {n['ms'] / 1000:12.3f}s  weight {n['weight']:<6} {n['key']}")
    return 0
