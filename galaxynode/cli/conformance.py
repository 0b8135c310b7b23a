"""`galaxynode conformance URL`: the Gelato conformance suite (galaxynode.conformance) against a
live pool or main net, case by case (list: docs/gelato/conformance.md, `--list`).

Heavy imports happen inside the command, so `galaxynode --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from galaxynode.cli.common import DEFAULT_NETWORK, EXIT_USAGE, CliError, add_ca_arg, positive, pub, url


def add_commands(sub: Any) -> None:
    """Add `conformance` to the `galaxynode` subcommand parser."""
    p = sub.add_parser("conformance", help="check a Gelato endpoint against the spec, case by case",
                       description="Run the Gelato conformance cases against a live pool or main net. Exit 0 "
                                   "when no case fails, 1 otherwise (or when the endpoint cannot be reached). "
                                   "Hostile cases are protocol violations: an endpoint that bans after a few "
                                   "stops the run, with one line naming the setting (galaxynode: "
                                   "GALAXYNODE_LIMITS_VIOLATIONS_BEFORE_BAN=1000).",
                       epilog="example: galaxynode conformance ws://127.0.0.1:7447 --cases '3.*,registry' "
                              "--json report.json")
    p.add_argument("url", type=url, nargs="?", metavar="URL", help="the endpoint, ws://host:port")
    p.add_argument("--role", choices=("pool", "mainnet"), help="what the endpoint is (default: the role of its HELLO)")
    p.add_argument("--network", default=DEFAULT_NETWORK, metavar="ID",
                   help=f"the endpoint's network id (default {DEFAULT_NETWORK})")
    p.add_argument("--cases", metavar="PATTERN", help="comma-separated globs on case ids or groups, e.g. '3.*,registry'")
    p.add_argument("--json", metavar="PATH", help="also write a JSON report to PATH ('-': stdout, no summary)")
    p.add_argument("--timeout", type=positive(float), default=10.0, metavar="S",
                   help="bound of each case, on top of the waiting it declares (default 10)")
    p.add_argument("--handshake-timeout", type=positive(float), default=12.0, metavar="S",
                   help="a silent opener must get ERROR handshake_timeout within S seconds (default 12: the "
                        "spec's 10 s default and some slack)")
    p.add_argument("--max-frame-size", type=positive(int), default=1024 * 1024, metavar="BYTES",
                   help="the endpoint's max_frame_size (default 1048576)")
    p.add_argument("--max-wait", type=positive(float), default=10.0, metavar="S",
                   help="longest lease or descriptor lifetime the expiry cases wait out, and then the longest "
                        "they wait for it to be gone (default 10)")
    p.add_argument("--flood", type=positive(int), default=5000, metavar="N",
                   help="PINGs sent to look for a rate limit (default 5000)")
    p.add_argument("--budget", type=positive(float), default=1000.0, metavar="N",
                   help="the endpoint's heartbeat budget in HEARTBEAT/s (galaxynode: registry.max_heartbeats_per_s; "
                        "default 1000): the intervals its LEASEs ask must not add up to more than N / 0.9")
    p.add_argument("--vectors", metavar="DIR", help="protocol/vectors directory (default: the source tree's, else those installed with the package)")
    add_ca_arg(p)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.set_defaults(func=cmd_conformance)


def cmd_conformance(args: argparse.Namespace) -> int:
    import attrs
    import trio

    from galaxynode.conformance.probe import Options
    from galaxynode.conformance.runner import (Unreachable, all_cases, preflight, print_result, print_summary,
                                               report, run_suite, select, write_json)
    cases = all_cases()
    if args.list:
        for c in select(cases, args.role, args.cases):
            print(f"{c.id:<6} {c.level:<6} {'/'.join(c.roles):<12} {c.title} [{c.section}]")
        return 0
    if args.url is None:
        raise CliError("a URL is required (or --list)", EXIT_USAGE)
    opts = Options(url=args.url, network=args.network, role=args.role or "pool", timeout=args.timeout,
                   handshake_timeout=args.handshake_timeout, max_frame_size=args.max_frame_size,
                   max_wait=args.max_wait, flood=args.flood, budget=args.budget, vectors=args.vectors,
                   ca_file=args.ca)
    quiet = args.json == "-"
    out = sys.stdout

    async def main() -> tuple[Any, list]:
        nonlocal opts
        endpoint = await preflight(opts)
        if args.role is None:
            if endpoint.role not in ("pool", "mainnet"):
                raise Unreachable(f"{opts.url} says it is a {endpoint.role!r}; pass --role pool or --role mainnet")
            opts = attrs.evolve(opts, role=endpoint.role)
        chosen = select(cases, opts.role, args.cases)
        if not chosen:
            raise CliError(f"no case matches {args.cases!r} for role {opts.role}", EXIT_USAGE)
        if not quiet:
            print(f"Gelato conformance of {opts.url}: {opts.role} {pub(endpoint.key)} "
                  f"({endpoint.agent or 'no agent'}), network {opts.network}, {len(chosen)} cases", file=out)
        group = None

        def progress(r: Any) -> None:
            nonlocal group
            if quiet:
                return
            if r.case.group != group:
                group = r.case.group
                print(group, file=out)
            print_result(r, out)
            out.flush()
        return endpoint, await run_suite(opts, chosen, progress=progress)

    try:
        endpoint, results = trio.run(main)
    except Unreachable as e:
        raise CliError(str(e), 1) from None
    data = report(opts, endpoint, results)
    if quiet:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        print_summary(results, out)
        if args.json:
            write_json(args.json, data)
    if results.stopped:
        raise CliError(results.stopped, 1)
    return 0 if data["passed"] else 1

