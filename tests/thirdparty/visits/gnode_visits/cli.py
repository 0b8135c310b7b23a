"""`galaxynode visits URL`: say hello to a pool's visits plugin (a galaxynode.commands entry point)."""
from __future__ import annotations

import argparse


def add(subparsers) -> None:
    p = subparsers.add_parser("visits", help="say hello to a pool's visits plugin",
                              epilog="example: galaxynode visits ws://127.0.0.1:7447 --key node.key")
    p.add_argument("url", help="the pool's ws:// URL")
    p.add_argument("--key", required=True, help="this node's key file (galaxynode keygen)")
    p.add_argument("--network", default="galaxy-dev", help="network id")
    p.add_argument("--name", default="cli", help="the name to greet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import trio

    from galaxynode import plugin
    from galaxynode.nodeclient import connect

    async def hello() -> dict:
        async with connect(args.url, args.key, network=args.network) as pool:
            return await plugin.call(pool, "visits", "hello", {"name": args.name})

    reply = trio.run(hello)
    print(f"{reply['text']} (visit {reply['visits']})")
    return 0
