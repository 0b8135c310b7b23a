"""`galaxynode rewards URL --epoch N [--json]` (a galaxynode.commands entry point): fetch a pool's
signed epoch report, check its signature, print it."""
from __future__ import annotations

import argparse

from galaxynode.cli.common import add_client_args, cli_error, iso, print_json, pub


def add(subparsers) -> None:
    p = subparsers.add_parser("rewards", help="show a pool's signed uptime-rewards report for an epoch",
                              epilog="example: galaxynode rewards ws://127.0.0.1:7447 --epoch 20480 --json")
    add_client_args(p)
    p.add_argument("--epoch", type=int, required=True, metavar="N", help="epoch number")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from galaxynode import plugin
    from galaxynode.cli.client import _connect, _run
    from galaxynode.contrib.rewards import verify_report
    from galaxynode.identity import Identity, format_stellar

    if args.epoch < 0:
        raise cli_error("--epoch: must be >= 0", 2)

    async def main() -> int:
        async with _connect(args, Identity.generate()) as pool:
            reply = await plugin.call(pool, "rewards", "report", {"epoch": args.epoch}, timeout=args.timeout)
            origin = pool.peer_key  # the key the session authenticated: a report signed by another is refused
        try:
            report = verify_report(reply, origin)
        except ValueError as e:
            raise cli_error(f"{args.url}: epoch {args.epoch}: report does not verify: {e}") from None
        nodes = [{"key": pub(k), "stellar": format_stellar(k), "ms": ms, "weight": w, "share_ppm": ppm}
                 for k, ms, w, ppm in report["nodes"]]
        if args.json:
            print_json({"epoch": report["epoch"], "pool": pub(report["origin"]), "network": report["network"],
                        "start": report["start"], "end": report["end"], "total_ms": report["total_ms"],
                        "nodes": nodes})
            return 0
        print(f"epoch {report['epoch']} of pool {pub(report['origin'])}: {iso(report['start'])} .. "
              f"{iso(report['end'])}, {len(nodes)} nodes, {report['total_ms'] / 1000:.3f} node-seconds")
        for n in nodes:
            print(f"{n['share_ppm'] / 10_000:9.4f}%  {n['ms'] / 1000:12.3f}s  weight {n['weight']:<6} {n['key']}")
        return 0
    return _run(args, main)
