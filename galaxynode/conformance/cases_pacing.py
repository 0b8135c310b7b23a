"""Heartbeat pacing (messages §8): every LEASE says when to heartbeat next and grants at least three
such intervals; a pool holds a node that heartbeats much faster to it; and the intervals a pool asks
never add up to more heartbeats per second than its budget allows (--budget). Pool endpoints only."""
from __future__ import annotations

import math
from contextlib import AsyncExitStack

import trio

from galaxynode.conformance.cases_registry import TTL_LADDER, lookup
from galaxynode.conformance.probe import CaseFailed, CaseSkipped, Link, Options, describe, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode

POOL = ("pool",)
SESSIONS = 16    # joined sessions whose intervals case (b) adds up
FLOOD = 20       # HEARTBEATs sent back to back by case (a)


def check_lease(got: m.Lease, asked: int, what: str) -> m.Lease:
    """messages §8.1: interval present (the decoder checked its bounds), ttl >= max(asked, 3 intervals)."""
    need = max(asked, math.ceil(3 * got.interval / 1000))
    if got.ttl < need:
        raise CaseFailed(f"{what}: ttl >= max(asked {asked}, ceil(3 * interval {got.interval} ms / 1000)) = {need}",
                         f"ttl {got.ttl}")
    return got


async def shortest_join(link: Link, opts: Options) -> tuple[int, m.Lease]:
    """JOIN with the shortest ttl of TTL_LADDER the pool grants (bad_ttl: the next), at most --max-wait."""
    for ttl in (t for t in TTL_LADDER if t <= opts.max_wait):
        got = await link.request(m.Join(ttl=ttl))
        if got.type == "LEASE":
            return ttl, check_lease(got.msg, ttl, "LEASE to JOIN")
        if got.type != "ERROR" or got.msg.code != ErrorCode.BAD_TTL:
            raise CaseFailed("LEASE or ERROR bad_ttl", describe(got))
    raise CaseSkipped(f"the pool grants no lease of at most --max-wait {opts.max_wait:g}s")


async def after_half_intervals(leases: list[tuple[m.Lease, float]], opts: Options) -> None:
    """Sleep until half the interval of every (LEASE, when it arrived) has passed: the earliest a node
    may heartbeat again (messages §8.2)."""
    wait = max(received + lease.interval / 2000 for lease, received in leases) - trio.current_time()
    if wait > opts.max_wait:
        raise CaseSkipped(f"the pool asks intervals up to {max(lease.interval for lease, _ in leases) / 1000:g} s: "
                          "more than twice --max-wait")
    await trio.sleep(max(0.0, wait))


@case("registry", "messages §8.1", "LEASE carries interval, and ttl >= max(the ttl asked, ceil(3 * interval / 1000)) "
                                   "for JOIN and for a HEARTBEAT sent half an interval later", roles=POOL,
      wait=lambda o: o.max_wait)
async def lease_interval(opts: Options) -> str:
    async with open_link(opts, role="node") as link:
        ttl, joined = await shortest_join(link, opts)
        await after_half_intervals([(joined, trio.current_time())], opts)
        got = await link.request(m.Heartbeat(ttl=ttl))
        if got.type != "LEASE":
            raise CaseFailed("LEASE to a HEARTBEAT sent half an interval after the last LEASE", describe(got))
        renewed = check_lease(got.msg, ttl, "LEASE to HEARTBEAT")
        return (f"ttl {ttl} asked: JOIN interval {joined.interval} ms ttl {joined.ttl} s, HEARTBEAT interval "
                f"{renewed.interval} ms ttl {renewed.ttl} s")


@case("registry", "messages §8.4, errors §7", f"a node that ignores the interval ({FLOOD} HEARTBEATs back to back "
                  "after a JOIN) is refused with ERROR rate_limited and the close; the refused HEARTBEAT does not "
                  "renew the lease", roles=POOL)
async def early_heartbeats(opts: Options) -> str:
    async with open_link(opts, role="node") as link:
        last = await link.call(m.Join(ttl=30), "LEASE")
        for sent in range(1, FLOOD + 1):
            frame = link.frame(m.Heartbeat())
            await link.send(frame)
            got = await link.receive()
            if got.type == "LEASE":
                last = got.msg
                continue
            if got.type != "ERROR" or got.msg.code != ErrorCode.RATE_LIMITED:
                raise CaseFailed("LEASE, then ERROR rate_limited", describe(got))
            await link.expect_close("the close after ERROR rate_limited")
            break
        else:
            raise CaseFailed(f"ERROR rate_limited within {FLOOD} HEARTBEATs sent back to back (interval "
                             f"{last.interval} ms)", f"{FLOOD} LEASEs")
    async with open_link(opts, role="node") as other:
        rec = await lookup(other, link.identity.public)
    if rec is None or rec.expires != last.expires:
        raise CaseFailed(f"the lease as the last LEASE left it (expires {last.expires})",
                         f"{'no record' if rec is None else f'expires {rec.expires}'}")
    return f"rate_limited at HEARTBEAT {sent} (interval {last.interval} ms)"


@case("registry", "messages §8.3, limits §6", f"a pool never asks for more than its budget: {SESSIONS} sessions join "
                  "with the shortest ttl, heartbeat half an interval later, and the sum of 1/interval of those "
                  "LEASEs is <= --budget / 0.9", roles=POOL, wait=lambda o: o.max_wait)
async def within_budget(opts: Options) -> str:
    async with AsyncExitStack() as stack:
        links = [await stack.enter_async_context(open_link(opts, role="node")) for _ in range(SESSIONS)]
        ttl, first = await shortest_join(links[0], opts)
        leases = [(first, trio.current_time())]
        for link in links[1:]:
            leases.append((check_lease(await link.call(m.Join(ttl=ttl), "LEASE"), ttl, "LEASE to JOIN"),
                           trio.current_time()))
        # Every lease renewed once all are joined: the pool's N counts them all (messages §8.3).
        await after_half_intervals(leases, opts)
        asked = []
        for link in links:
            got = await link.request(m.Heartbeat())
            if got.type != "LEASE":
                raise CaseFailed("LEASE to a HEARTBEAT half an interval after the last LEASE", describe(got))
            asked.append(check_lease(got.msg, ttl, "LEASE to HEARTBEAT").interval)
    total = sum(1000 / i for i in asked)
    bound = opts.budget / 0.9
    unpaced = SESSIONS * 3 / ttl
    if total > bound * (1 + 1e-9):
        raise CaseFailed(f"sum of 1/interval <= {bound:.1f}/s (--budget {opts.budget:g} / 0.9)",
                         f"{total:.1f}/s (intervals {min(asked)}..{max(asked)} ms)")
    return (f"sum of 1/interval {total:.1f}/s <= {bound:.1f}/s; unpaced (ttl {ttl} / 3) it would be {unpaced:.1f}/s"
            + ("" if unpaced > bound else ": within the budget anyway, so this run shows little (a smaller budget "
                                          "would)"))
