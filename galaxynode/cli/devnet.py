"""`galaxynode devnet`: the command and its screen; the devnet itself is galaxynode.devnet."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from galaxynode.cli.common import DEFAULT_NETWORK, EXIT_USAGE, CliError, format_table, int_in, seconds


def add_commands(sub: Any) -> None:
    """Add `devnet` to the `galaxynode` subcommand parser."""
    p = sub.add_parser("devnet", help="run a main net, pools and simulated nodes on 127.0.0.1 with a live status table",
                       description="Start a main net, N pools that find and peer with each other through it, "
                                   "and M simulated nodes spread over the pools, all on 127.0.0.1; show their "
                                   "status every second until Ctrl-C (or --duration), then stop everything.",
                       epilog="example: galaxynode devnet --pools 5 --nodes 40 --duration 30")
    p.add_argument("--pools", type=int_in(1, 64), default=3, metavar="N", help="number of pools (default 3)")
    p.add_argument("--nodes", type=int_in(0, 10_000), default=10, metavar="M",
                   help="simulated nodes, spread over the pools (default 10)")
    p.add_argument("--base-port", type=int_in(0, 65535), default=0, metavar="PORT",
                   help="main net on PORT, pools on PORT+1.. (default 0: random free ports)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="keep keys, databases and logs here (default: a temporary directory, removed at exit)")
    p.add_argument("--network", default=DEFAULT_NETWORK, metavar="ID", help=f"network id (default {DEFAULT_NETWORK})")
    p.add_argument("--duration", type=seconds, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print one JSON object per refresh instead of a table")
    p.set_defaults(func=cmd_devnet)


def cmd_devnet(args: argparse.Namespace) -> int:
    import trio

    from galaxynode.devnet import DevnetError, Options, run_devnet, until_text
    if args.base_port and args.base_port + args.pools > 65535:
        raise CliError(f"--base-port {args.base_port} leaves no room for {args.pools} pools", EXIT_USAGE)
    temp = args.data_dir is None
    root = Path(tempfile.mkdtemp(prefix="galaxynode-devnet-") if temp else args.data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    opts = Options(pools=args.pools, nodes=args.nodes, base_port=args.base_port, network=args.network,
                   duration=args.duration, keep=not temp)
    where = f"data and logs in {root}" + ("" if opts.keep else " (removed at exit)")
    screen = Screen(sys.stdout, as_json=args.json, footer=f"{where}; {until_text(opts)}")
    try:
        return trio.run(run_devnet, opts, root, screen.show)
    except BaseExceptionGroup as group:
        error = _first(group, DevnetError)
        if error is None:
            raise
        raise CliError(str(error)) from None
    except DevnetError as e:
        raise CliError(str(e)) from None
    finally:
        if temp:
            shutil.rmtree(root, ignore_errors=True)


def _first(exc: BaseException, kind: type[Exception]) -> Exception | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            if (found := _first(e, kind)) is not None:
                return found
    return None


# --- output --------------------------------------------------------------------------------------

def _v(value: Any) -> str:
    return "-" if value is None else str(value)


def plain_line(snap: dict) -> str:
    """One line per refresh, for logs and pipes."""
    m = snap["mainnet"]
    parts = [f"t={snap['t']:g}s mainnet {'up' if m['up'] else 'down'} pools={_v(m['pools'])} "
             f"ev/s={m['events_per_s']:g}"]
    for p in snap["pools"]:
        parts.append(f"{p['name']} {'up' if p['up'] else 'down'} peers={_v(p['peers'])} nodes={_v(p['nodes'])} "
                     f"ev/s={p['events_per_s']:g}")
    parts.append(f"nodes joined={snap['nodes']['joined']}/{snap['nodes']['simulated']}")
    return " | ".join(parts)


def table(snap: dict, footer: str) -> str:
    """The full-screen view for a terminal."""
    m = snap["mainnet"]
    rows = [[m["name"], _v(m["url"]), "up" if m["up"] else "down", "-", f"{_v(m['pools'])} pools",
             f"{m['events_per_s']:.1f}", _v(m.get("dashboard"))]]
    rows += [[p["name"], _v(p["url"]), "up" if p["up"] else "down", _v(p["peers"]), _v(p["nodes"]),
              f"{p['events_per_s']:.1f}", _v(p.get("dashboard"))] for p in snap["pools"]]
    n = snap["nodes"]
    return "\n".join([
        f"galaxynode devnet: {len(snap['pools'])} pools, {n['joined']}/{n['simulated']} simulated nodes joined, "
        f"up {snap['t']:.0f}s",
        "",
        format_table(rows, ["NAME", "URL", "STATE", "PEERS", "NODES", "EVENTS/S", "DASHBOARD"]),
        "",
        footer,
    ])


class Screen:
    """Where refreshes go: a redrawn table on a terminal, else a line (or JSON object) each."""

    def __init__(self, out: TextIO, *, as_json: bool, footer: str):
        self.out = out
        self.as_json = as_json
        self.footer = footer
        self.tty = out.isatty() and not as_json

    def show(self, snap: dict) -> None:
        if self.as_json:
            text = json.dumps(snap)
        elif self.tty:
            text = "\x1b[H\x1b[2J" + table(snap, self.footer)
        else:
            text = plain_line(snap)
        print(text, file=self.out, flush=True)
