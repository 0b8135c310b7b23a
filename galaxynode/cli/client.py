"""Client commands of `galaxynode`: node join, query, status, watch, admin.

Heavy imports (trio, the network stack) happen inside the commands, so `galaxynode --help` stays
fast. Every failure to reach or talk to a pool becomes one CliError line, exit 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Awaitable, Callable, Sequence

from galaxynode.cli.common import (EXIT_USAGE, add_client_args, cli_error, connect_options, duration,
                                   format_table, iso, json_default, meta_pair, node_key, now_ms, positive,
                                   print_json, pub)
from galaxynode.logs import printable


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capability", action="append", default=[], metavar="X", help="capability (repeatable)")
    p.add_argument("--meta", action="append", default=[], type=meta_pair, metavar="K=V",
                   help="metadata pair (repeatable)")


def add_commands(sub: Any) -> None:
    """Add node/query/status/watch/admin to the `galaxynode` subcommand parser."""
    p = sub.add_parser("node", help="act as a node of a pool",
                       epilog="example: galaxynode node join ws://127.0.0.1:7447 --key node.key --capability gpu")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    j = nsub.add_parser("join", help="join a pool and stay joined (heartbeats, reconnects) until Ctrl-C",
                        description="Join a pool with this key and stay joined: heartbeats at a third of the "
                                    "lease, reconnects with backoff after a lost connection. Ctrl-C leaves (the "
                                    "lease ends at once). Exits 1 on a refusal that retrying cannot cure "
                                    "(banned, not admitted, wrong network, certificate refused).",
                        epilog="example: galaxynode node join wss://pool.example.org --key node.key "
                               "--capability gpu --meta region=eu")
    add_client_args(j)
    j.add_argument("--key", required=True, metavar="PATH", help="the node's private key file")
    _add_filters(j)
    j.add_argument("--ttl", type=positive(int), metavar="S", help="lease time in seconds (default: the pool's)")
    j.set_defaults(func=cmd_node_join)

    p = sub.add_parser("query", help="list nodes registered at a pool",
                       epilog="example: galaxynode query ws://127.0.0.1:7447 --capability gpu --meta region=eu "
                              "--scope peers --json")
    add_client_args(p)
    _add_filters(p)
    p.add_argument("--scope", choices=("local", "peers"), default="local", help="also ask peered pools (peers)")
    p.add_argument("--limit", type=positive(int), default=100, metavar="N", help="at most N nodes (default 100)")
    p.add_argument("--key", metavar="PATH", help="key file to connect with (default: a fresh key)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("status", help="show a pool's public status",
                       description="Show a pool's public status: its key, name, network, role, version, "
                                   "uptime, registered nodes and connected peers.",
                       epilog="example: galaxynode status wss://pool.example.org --ca /etc/galaxynode/ca.pem")
    add_client_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="print a pool's events as they happen, until Ctrl-C",
                       epilog="example: galaxynode watch ws://127.0.0.1:7447 'node.*' --peers --json")
    add_client_args(p)
    p.add_argument("topics", nargs="*", metavar="TOPIC", help="topic patterns: * one segment, # the rest (default #)")
    p.add_argument("--peers", action="store_true", help="include events relayed from peered pools")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("admin", help="administer a pool (needs an admin key)",
                       description="Administer a pool with a key listed in its [admission] admins.",
                       epilog="example: galaxynode admin ws://127.0.0.1:7447 --key admin.key ban "
                              "ed25519:<64 hex> --duration 3600")
    add_client_args(p)
    p.add_argument("--key", required=True, metavar="PATH", help="admin private key file")
    p.add_argument("action", choices=("kick", "ban", "unban", "peers", "nodes", "bans"),
                   help="kick: end a node's lease and session (it may join again); ban: that, and refuse the key "
                        "until unbanned; unban: lift a key's or (--address) an address's ban; bans: list the bans")
    p.add_argument("node", nargs="?", type=node_key, metavar="NODE_KEY", help="ed25519:<hex> (kick, ban, unban)")
    p.add_argument("--duration", type=_ban_seconds, metavar="S",
                   help=f"ban for S seconds, at most {_MAX_BAN} (10 years; default: permanently)")
    p.add_argument("--address", metavar="IP", help="unban: the address (or IPv6 /64) that `bans` lists")
    p.add_argument("--json", action="store_true", help="print JSON (peers, nodes, bans)")
    p.set_defaults(func=cmd_admin)


# --- running -----------------------------------------------------------------------------------

def _describe(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a failure to reach or talk to the pool; None for anything else (a bug)."""
    import trio

    from galaxynode.gelato.errors import ProtocolError
    from galaxynode.net import ChannelClosed, RemoteError, SessionClosed
    url = args.url
    if isinstance(exc, RemoteError):
        return f"{url}: refused: {exc.remote_name} ({exc.remote_code}): {_our_side(exc, args)}"
    if isinstance(exc, ProtocolError):
        return f"{url}: protocol error: {exc}"
    if isinstance(exc, ChannelClosed):
        return f"{url}: {exc.reason or exc}"
    if isinstance(exc, SessionClosed):
        return f"{url}: {exc}"
    if isinstance(exc, trio.TooSlowError):
        return f"{url}: no reply within {args.timeout:g}s"
    return None


def _our_side(exc: Any, args: argparse.Namespace) -> str:
    """The pool's words, from where the user sits: a pool's network_mismatch says "peer is on network
    <ours>, we are on <its>"; here the peer is us."""
    import re

    from galaxynode.gelato.errors import ErrorCode
    said = re.fullmatch(r"peer is on network (.+), we are on (.+)", exc.message or "")
    if exc.remote_code != ErrorCode.NETWORK_MISMATCH or said is None:
        return exc.message
    theirs = said.group(2)
    flag = theirs[1:-1] if len(theirs) > 1 and theirs[0] == theirs[-1] == "'" else theirs  # a repr()
    return f"the pool is on network {theirs}, not {said.group(1)} (use --network {flag})"


def _run(args: argparse.Namespace, main: Callable[[], Awaitable[int]]) -> int:
    import trio
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:  # a lone failure inside a nursery
        leaves = list(_leaves(group))
        line = _describe(leaves[0], args) if len(leaves) == 1 else None
        if line is None:
            raise
        raise cli_error(line) from None
    except Exception as e:
        line = _describe(e, args)
        if line is None:
            raise
        raise cli_error(line) from None


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


async def _until_signalled(main: Callable[[], Awaitable[None]],
                           stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run main until it returns or SIGINT/SIGTERM arrives: a clean exit, by `stop()` (which
    must make main return) or else by cancelling main."""
    import signal

    import trio

    from galaxynode.net.transport import raise_single
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    async for _ in signals:
                        if stop is None:
                            nursery.cancel_scope.cancel()
                        else:
                            await stop()
                        return
                nursery.start_soon(on_signal)
                await main()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_single(group)


def _connect(args: argparse.Namespace, key: Any, role: str = "node"):
    from galaxynode.nodeclient import connect
    return connect(args.url, key, role=role, **connect_options(args))


def _ephemeral_or(path: str | None):
    from galaxynode.identity import Identity, load_key
    return load_key(path) if path else Identity.generate()


# --- output ------------------------------------------------------------------------------------

def node_json(rec: Any) -> dict:
    return {"key": pub(rec.key), "capabilities": list(rec.capabilities), "meta": dict(rec.meta),
            "expires": rec.expires, "pool": pub(rec.pool)}


def nodes_table(records: Sequence[Any], now_ms: int) -> str:
    with_pool = any(r.pool is not None for r in records)
    headers = ["KEY", "CAPABILITIES", "META", "EXPIRES"] + (["POOL"] if with_pool else [])
    rows = []
    for r in records:
        left = (r.expires - now_ms) / 1000
        row = [pub(r.key), ",".join(r.capabilities) or "-",
               ",".join(f"{k}={v}" for k, v in sorted(r.meta.items())) or "-",
               f"in {duration(left)}" if left > 0 else "expired"]
        if with_pool:
            row.append(pub(r.pool) or "(this pool)")
        rows.append(row)
    return format_table(rows, headers)


_KEY_FIELDS = frozenset({"key", "origin", "pool"})  # event data fields that hold a 32-byte public key
_TIME_FIELDS = frozenset({"expires", "until"})      # ... and those that hold a time in epoch ms


def event_data(data: Any, *, human: bool) -> Any:
    """Event data as people read it: keys as ed25519:<hex> (bytes on the wire); for `human`, also
    times as ISO 8601 rather than epoch ms (--json keeps the numbers)."""
    if not isinstance(data, dict):
        return data
    out = {}
    for name, value in data.items():
        if name in _KEY_FIELDS and isinstance(value, (bytes, bytearray)) and len(value) == 32:
            value = pub(bytes(value))
        elif human and name in _TIME_FIELDS and type(value) is int and 0 <= value < 2**53:
            value = iso(value)
        out[name] = value
    return out


def event_line(ev: Any, pool_key: bytes, *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"topic": ev.topic, "event_id": ev.event_id.hex(), "origin": pub(ev.origin),
                           "ts": ev.ts, "data": event_data(ev.data, human=False), "hops": ev.hops},
                          default=json_default)
    data = json.dumps(event_data(ev.data, human=True), default=json_default, sort_keys=True)
    line = f"{iso(ev.ts)} {printable(ev.topic)} {data}"
    return line if ev.origin == pool_key else f"{line} (from {pub(ev.origin)})"


# --- commands ----------------------------------------------------------------------------------

def cmd_node_join(args: argparse.Namespace) -> int:
    from galaxynode.identity import load_key
    from galaxynode.nodeclient import JoinState, keep_joined
    identity = load_key(args.key)

    def report(st: JoinState) -> None:
        if st.kind == "disconnected":
            why = _describe(st.error, args) or f"{args.url}: {st.error}"
            print(f"galaxynode: {printable(why)}; retrying in {st.retry_in:.1f}s", file=sys.stderr, flush=True)
        else:
            print(f"{st.kind} {args.url} as {identity.public_text} (pool {pub(st.pool_key)}, lease {st.lease.ttl}s)",
                  flush=True)

    async def main() -> int:
        await _until_signalled(lambda: keep_joined(
            args.url, identity, capabilities=args.capability, meta=dict(args.meta), ttl=args.ttl,
            on_event=report, **connect_options(args)))
        return 0
    return _run(args, main)


def cmd_query(args: argparse.Namespace) -> int:
    from galaxynode.gelato.messages import MAX_PAGE
    from galaxynode.nodeclient import gather
    identity = _ephemeral_or(args.key)

    async def main() -> int:
        async with _connect(args, identity) as pool:
            pages = pool.query_pages(capabilities=args.capability, meta=dict(args.meta),
                                     limit=min(args.limit, MAX_PAGE), scope=args.scope)
            nodes, partial = await gather(pages, args.limit)
        if partial:
            print("galaxynode: warning: some peered pools did not answer; the list may be incomplete",
                  file=sys.stderr)
        if args.json:
            print_json([node_json(r) for r in nodes])
        elif nodes:
            print(nodes_table(nodes, now_ms()))
        else:
            print("no matching nodes")
        return 0
    return _run(args, main)


def cmd_status(args: argparse.Namespace) -> int:
    from galaxynode.identity import Identity

    async def main() -> int:
        async with _connect(args, Identity.generate(), role="probe") as pool:
            st = await pool.status()
        out = {"key": pub(st.key), "name": st.name, "network": st.network, "role": st.role,
               "version": st.version, "uptime": st.uptime, "nodes": st.nodes, "peers": st.peers}
        if args.json:
            print_json(out)
        else:
            out["uptime"] = duration(st.uptime)
            print(format_table([(f"{k}:", str(v)) for k, v in out.items()]))
        return 0
    return _run(args, main)


def cmd_watch(args: argparse.Namespace) -> int:
    from galaxynode.identity import Identity

    async def print_events(pool: Any) -> None:
        reported = 0
        async for ev in pool.events():  # ends when pool.close() is called
            print(event_line(ev, pool.peer_key, as_json=args.json), flush=True)
            if pool.events_dropped > reported:
                print(f"galaxynode: warning: {pool.events_dropped - reported} events dropped (output too slow)",
                      file=sys.stderr, flush=True)
                reported = pool.events_dropped

    async def main() -> int:
        async with _connect(args, Identity.generate(), role="probe") as pool:
            topics = args.topics or ["#"]
            await pool.subscribe(topics, peers=args.peers)
            print(f"galaxynode: watching {' '.join(topics)} on {args.url}{' and its peers' if args.peers else ''}"
                  " (Ctrl-C to stop)", file=sys.stderr, flush=True)
            await _until_signalled(lambda: print_events(pool), stop=pool.close)
        return 0
    return _run(args, main)


def cmd_admin(args: argparse.Namespace) -> int:
    from galaxynode.gelato.errors import ProtocolError
    from galaxynode.gelato.messages import NodeRecord
    from galaxynode.identity import load_key
    targeted = args.action in ("kick", "ban", "unban")
    if args.address is not None and args.action != "unban":
        raise cli_error("--address only applies to unban", EXIT_USAGE)
    if args.action == "unban" and (args.node is None) == (args.address is None):
        raise cli_error("admin unban needs NODE_KEY or --address (one of them)", EXIT_USAGE)
    if targeted and args.node is None and args.address is None:
        raise cli_error(f"admin {args.action} needs NODE_KEY", EXIT_USAGE)
    if not targeted and args.node is not None:
        raise cli_error(f"admin {args.action} takes no NODE_KEY", EXIT_USAGE)
    if args.duration is not None and args.action != "ban":
        raise cli_error("--duration only applies to ban", EXIT_USAGE)
    identity = load_key(args.key)

    async def main() -> int:
        async with _connect(args, identity) as pool:
            items = await pool.admin(args.action, key=args.node, duration=args.duration, address=args.address)
        if targeted:
            what = {"kick": "kicked", "ban": "banned", "unban": "unbanned"}[args.action]
            until = f" for {args.duration}s" if args.duration else " permanently" if args.action == "ban" else ""
            print(f"{what} {pub(args.node) if args.node is not None else args.address}{until}")
        elif args.action == "bans":
            bans = [ban_json(item) for item in items]
            if args.json:
                print_json(bans)
            else:
                print(bans_table(bans, now_ms()) if bans else "no bans")
        elif args.action == "nodes":
            try:
                nodes = [NodeRecord.from_body(item) for item in items]
            except ProtocolError as e:  # the pool sent records that do not fit the schema
                raise cli_error(f"{args.url}: bad ADMIN nodes reply: {e}") from None
            if args.json:
                print_json([node_json(r) for r in nodes])
            else:
                print(nodes_table(nodes, now_ms()) if nodes else "no nodes")
        else:
            peers = [{**item, "key": _peer_key(item.get("key"))} for item in items]
            if args.json:
                print_json(peers)
            elif peers:
                cols = ("key", "state", "direction", "url", "name")
                print(format_table([[str(p.get(c) or "-") for c in cols] for p in peers], [c.upper() for c in cols]))
            else:
                print("no peers")
        return 0
    return _run(args, main)


_MAX_BAN = 10 * 365 * 86_400  # = gelato.messages.Admin.MAX_DURATION, which the pool enforces


def _ban_seconds(text: str) -> int:
    """--duration: 1..10 years in seconds, refused here rather than by the pool."""
    n = positive(int)(text)
    if n > _MAX_BAN:
        raise argparse.ArgumentTypeError(f"at most {_MAX_BAN} seconds (10 years); omit it for a permanent ban")
    return n


def ban_json(item: dict) -> dict:
    """One ADMIN bans item for people: a key as ed25519:<hex>, an address as text."""
    key = item.get("key")
    return {"key": pub(key) if isinstance(key, bytes) else None, "address": item.get("address"),
            "by": item.get("by"), "until": item.get("until"), "reason": item.get("reason")}


def bans_table(bans: Sequence[dict], now_ms: int) -> str:
    rows = []
    for b in bans:
        until = b["until"]
        left = "permanent" if not isinstance(until, int) else f"in {duration(max(0, until - now_ms) / 1000)}"
        rows.append([str(b["key"] or b["address"]), str(b["by"] or "-"), left, str(b["reason"] or "-")])
    return format_table(rows, ["KEY OR ADDRESS", "BY", "EXPIRES", "REASON"])


def _peer_key(value: Any) -> Any:
    """Peer items carry keys as hex (or bytes); show them like every other key."""
    if isinstance(value, bytes) and len(value) == 32:
        return pub(value)
    if isinstance(value, str) and len(value) == 64:
        try:
            return pub(bytes.fromhex(value))
        except ValueError:
            pass
    return value or None
