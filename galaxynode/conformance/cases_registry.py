"""Registry semantics (messages §2.6, §2.7, §3.2): a node registers, renews and removes only itself;
leases run out; queries filter and page. Pool endpoints only."""
from __future__ import annotations

import os
from contextlib import AsyncExitStack

import trio

from galaxynode.conformance.probe import CaseFailed, CaseSkipped, Link, Options, describe, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode

POOL = ("pool",)
TTL_LADDER = (1, 2, 3, 5, 10, 15, 20, 30, 60)


def tag() -> str:
    """A capability nobody else has, so cases do not see each other's nodes."""
    return f"conformance-{os.urandom(6).hex()}"


async def lookup(link: Link, key: bytes) -> m.NodeRecord | None:
    r = await link.call(m.Query(key=key), "QUERY_RESULT")
    found = [n for n in r.nodes if n.key == key]
    if len(r.nodes) != len(found):
        raise CaseFailed(f"only the node {key.hex()[:16]}.. for QUERY key=", f"{len(r.nodes)} records")
    return found[0] if found else None


async def keys_of(link: Link, **query: object) -> list[bytes]:
    r = await link.call(m.Query(**query), "QUERY_RESULT")
    return [n.key for n in r.nodes]


async def lease(link: Link, msg: m.Join | m.Heartbeat, ttl: int) -> m.Lease:
    """Request a lease and check it: at least `ttl` seconds (heartbeat pacing may grant more), expiring
    its granted ttl from when the endpoint granted it, judged by the endpoint's own clock (as its HELLO
    showed it), so clock skew between us does not matter."""
    got = await link.request(msg)
    if got.type != "LEASE":
        raise CaseFailed(f"LEASE to {msg.TYPE}", describe(got))
    granted = got.msg
    if granted.ttl < ttl:
        raise CaseFailed(f"LEASE ttl >= {ttl}", f"ttl {granted.ttl}")
    off = granted.expires - (link.peer_now() + granted.ttl * 1000)
    if not -2000 <= off <= 1000:
        raise CaseFailed(f"LEASE expires {granted.ttl} s after it was granted", f"{off / 1000:+.1f} s off")
    return granted


@case("registry", "messages §2.6, §3.2.1", "JOIN is answered with LEASE once registered; QUERY key= then finds the "
                                           "node with its capabilities, metadata and expiry", roles=POOL)
async def join_then_query(opts: Options) -> None:
    async with open_link(opts, role="node") as link:
        caps, meta = (tag(), "gpu"), {"zone": "conformance", "é": "ü"}
        joined = await lease(link, m.Join(ttl=30, capabilities=caps, meta=meta), 30)
        rec = await lookup(link, link.identity.public)
        if rec is None:
            raise CaseFailed("QUERY to find the node that just joined", "no record")
        if set(rec.capabilities) != set(caps) or dict(rec.meta) != meta or rec.expires != joined.expires:
            raise CaseFailed(f"capabilities {list(caps)}, meta {meta}, expires {joined.expires}",
                             f"capabilities {list(rec.capabilities)}, meta {dict(rec.meta)}, expires {rec.expires}")


@case("registry", "messages §2.6, §3.2.2", "HEARTBEAT extends the lease from now; QUERY shows the new expiry",
      roles=POOL)
async def heartbeat_extends(opts: Options) -> None:
    async with open_link(opts, role="node") as link:
        joined = await lease(link, m.Join(ttl=30), 30)
        await trio.sleep(0.05)
        renewed = await lease(link, m.Heartbeat(), 30)
        # Granted from now: its start (expires - ttl) is later than the JOIN's (paced ttls may differ).
        if renewed.expires - renewed.ttl * 1000 <= joined.expires - joined.ttl * 1000:
            raise CaseFailed(f"a lease granted after {joined.expires - joined.ttl * 1000} (ms)",
                             f"granted at {renewed.expires - renewed.ttl * 1000}")
        rec = await lookup(link, link.identity.public)
        if rec is None or rec.expires != renewed.expires:
            raise CaseFailed(f"QUERY to show expires {renewed.expires}", f"{rec.expires if rec else 'no record'}")


@case("registry", "messages §2.6, §3.2.4", "LEAVE is answered with ACK and removes the node; a HEARTBEAT after it "
                                           "is not_joined", roles=POOL)
async def leave_removes(opts: Options) -> None:
    async with open_link(opts, role="node") as link:
        await link.call(m.Join(ttl=30), "LEASE")
        await link.call(m.Leave(), "ACK")
        if await lookup(link, link.identity.public) is not None:
            raise CaseFailed("no record after LEAVE", "the node is still listed")
        await link.refused(m.Heartbeat(), ErrorCode.NOT_JOINED)
        await link.ping()


@case("registry", "messages §2.6, errors §4", "HEARTBEAT from a key that holds no lease is not_joined, not fatal",
      roles=POOL)
async def heartbeat_not_joined(opts: Options) -> None:
    async with open_link(opts, role="node") as link:
        await link.refused(m.Heartbeat(), ErrorCode.NOT_JOINED)
        await link.ping()


@case("registry", "messages §2.6, errors §4", "JOIN with ttl 0 (outside any pool's bounds) is bad_ttl, not fatal",
      roles=POOL)
async def bad_ttl(opts: Options) -> None:
    async with open_link(opts, role="node") as link:
        await link.refused(m.Join(ttl=0), ErrorCode.BAD_TTL)
        await link.ping()


@case("registry", "messages §2.7, overview §1", "a lease that is not renewed expires: the node leaves QUERY results "
                  "(shortest ttl the pool grants, at most --max-wait)", roles=POOL, wait=lambda o: 2 * o.max_wait)
async def lease_expires(opts: Options) -> str:
    async with open_link(opts, role="node") as link:
        me = link.identity.public
        for ttl in (t for t in TTL_LADDER if t <= opts.max_wait):
            got = await link.request(m.Join(ttl=ttl))
            if got.type == "LEASE":
                break
            if got.type != "ERROR" or got.msg.code != ErrorCode.BAD_TTL:
                raise CaseFailed("LEASE or ERROR bad_ttl", describe(got))
        else:
            raise CaseSkipped(f"the pool grants no lease of at most --max-wait {opts.max_wait:g}s")
        ends = trio.current_time() + (got.msg.expires - link.peer_now()) / 1000  # by the endpoint's clock
        if await lookup(link, me) is None:
            raise CaseFailed("the node listed right after JOIN", "no record")
        while True:
            await trio.sleep(0.2)
            listed = await lookup(link, me) is not None
            late = trio.current_time() - ends
            if not listed:
                if late < -1:
                    raise CaseFailed(f"the node listed until its lease ends (ttl {ttl} s)",
                                     f"gone {-late:.1f} s early")
                return f"ttl {ttl} s; gone {max(late, 0):.1f} s after expiry"
            if late > opts.max_wait:
                raise CaseFailed(f"the node gone once its lease of {ttl} s ran out",
                                 f"still listed {late:.1f} s after expiry")


@case("registry", "messages §2.7, §3.2.5", "QUERY returns only nodes having every requested capability and every "
                                           "requested metadata entry", roles=POOL)
async def filters(opts: Options) -> None:
    t = tag()
    async with open_link(opts, role="node") as a, open_link(opts, role="node") as b:
        ka, kb = a.identity.public, b.identity.public
        await a.call(m.Join(capabilities=(t, t + "-x"), meta={"zone": t}), "LEASE")
        await b.call(m.Join(capabilities=(t,), meta={"zone": "elsewhere"}), "LEASE")
        cases = [({"capabilities": (t,)}, {ka, kb}), ({"capabilities": (t, t + "-x")}, {ka}),
                 ({"capabilities": (t,), "meta": {"zone": t}}, {ka}),
                 ({"capabilities": (t,), "meta": {"zone": "nowhere"}}, set()),
                 ({"capabilities": (t + "-y",)}, set())]
        for query, want in cases:
            got = set(await keys_of(a, **query))
            if got != want:
                names = {ka: "A", kb: "B"}
                raise CaseFailed(f"QUERY {query} -> {sorted(names[k] for k in want)}",
                                 f"{sorted(names.get(k, k.hex()[:8]) for k in got)}")


@case("registry", "messages §2.7, §3.2.6", "QUERY pages with a cursor: limit 1 over three nodes returns each once, "
                                           "and the last page has no cursor", roles=POOL)
async def paging(opts: Options) -> None:
    t = tag()
    async with AsyncExitStack() as stack:
        links = [await stack.enter_async_context(open_link(opts, role="node")) for _ in range(3)]
        for link in links:
            await link.call(m.Join(capabilities=(t,)), "LEASE")
        want = {link.identity.public for link in links}
        seen: list[bytes] = []
        cursor = None
        for _ in range(len(want) + 2):
            r = await links[0].call(m.Query(capabilities=(t,), limit=1, cursor=cursor), "QUERY_RESULT")
            if len(r.nodes) > 1:
                raise CaseFailed("at most 1 node per page with limit 1", f"{len(r.nodes)}")
            seen += [n.key for n in r.nodes]
            cursor = r.cursor
            if cursor is None:
                break
        if cursor is not None or sorted(seen) != sorted(want):
            raise CaseFailed("the three nodes once each, then a page without cursor",
                             f"{len(seen)} records ({len(set(seen) & want)} of ours), cursor "
                             f"{'still present' if cursor is not None else 'absent'}")


@case("registry", "messages §2.6, errors §4", "QUERY with a cursor the pool did not issue is bad_cursor, not fatal",
      roles=POOL)
async def bad_cursor(opts: Options) -> None:
    async with open_link(opts, role="node") as link:
        await link.refused(m.Query(cursor=b"bad"), ErrorCode.BAD_CURSOR)
        await link.ping()


@case("registry", "overview §1, messages §2.7", "JOIN always registers the session's key: a body naming another key "
                                                "(an unknown field) registers only the sender", roles=POOL)
async def join_as_someone_else(opts: Options) -> None:
    victim = os.urandom(32)
    async with open_link(opts, role="node") as link:
        frame, fid = link.craft("JOIN", {"ttl": 30, "capabilities": [tag()], "meta": {}, "key": victim,
                                         "node": victim})
        link.consume()
        await link.send(frame)
        got = await link.reply(fid)
        if got.type != "LEASE":
            raise CaseFailed("LEASE (the unknown field ignored)", describe(got))
        if await lookup(link, victim) is not None:
            raise CaseFailed("no record for the key named in the body", "the other key is registered")
        if await lookup(link, link.identity.public) is None:
            raise CaseFailed("a record for the session's own key", "none")


@case("registry", "overview §1, messages §2.7", "LEAVE and HEARTBEAT from another session never touch a node's lease",
      roles=POOL)
async def others_cannot_touch(opts: Options) -> None:
    async with open_link(opts, role="node") as a, open_link(opts, role="node") as b:
        joined = await a.call(m.Join(ttl=30), "LEASE")
        got = await b.request(m.Leave())
        if got.type not in ("ACK", "ERROR"):
            raise CaseFailed("ACK or ERROR to a LEAVE without lease", describe(got))
        await b.refused(m.Heartbeat(ttl=60), ErrorCode.NOT_JOINED)
        rec = await lookup(b, a.identity.public)
        if rec is None:
            raise CaseFailed("A still registered after B's LEAVE", "A is gone")
        if rec.expires != joined.expires:
            raise CaseFailed(f"A's expiry unchanged ({joined.expires})", f"{rec.expires}")
