"""Attribution and bounded fan-out (records.md §5, §6, §8; peering §4). Pool endpoints only.

What any probe can check: a relayed claim about another origin without its signature is refused,
and a pool signs what it tells pools about itself. What needs the probe to be the endpoint's peer
(its answers to the endpoint's QUERY are what is judged) is judged only when the endpoint accepts it
as one (galaxynode: [peers] accept = "any"); otherwise there is nothing to judge and the case passes
with a note saying so (a pool that does not peer with strangers relays nothing of theirs).
"""
from __future__ import annotations

import os
from typing import Callable

import trio

from galaxynode import records
from galaxynode.conformance.cases_events import next_event
from galaxynode.conformance.probe import CaseFailed, Link, Options, describe, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame, now_ms
from galaxynode.gelato.errors import ErrorCode

POOL = ("pool",)
QUIET = 0.5  # seconds a subscriber is watched for an event it must not get
CAP = "conformance-attribution"


def _verify(kind: records.Kind, signed: m.SignedRecord | None, *, origin: bytes, opts: Options, what: str,
            carried: dict) -> None:
    if signed is None:
        raise CaseFailed(f"{what} with `signed` (records.md §8.2)", "no `signed`")
    try:
        records.verify_record(kind, signed, origin=origin, network=opts.network, now=now_ms(), carried=carried)
    except records.RecordError as e:
        raise CaseFailed(f"{what}: a signed record that verifies (records.md §5)", e.message) from None


@case("peering", "records §6.2, §6.5", "an EVENT claiming another pool as origin without that pool's "
                                                "signed record is refused (forbidden, not fatal) and reaches no "
                                                "subscriber", roles=POOL)
async def forged_origin_event(opts: Options) -> None:
    other = os.urandom(32)
    victim = os.urandom(32).hex()
    async with open_link(opts) as sub, open_link(opts, role="pool") as link:
        await sub.call(m.Subscribe(topics=("node.#",), peers=True), "ACK")
        ev = m.Event(topic="node.left", event_id=os.urandom(16), origin=other, ts=now_ms(), data={"key": victim})
        await link.refused(ev, ErrorCode.FORBIDDEN, also=(ErrorCode.NOT_SUPPORTED,))
        await link.ping()
        got = await next_event(sub, lambda f: f.msg.origin == other or f.msg.data.get("key") == victim, QUIET)
        if got is not None:
            raise CaseFailed("no subscriber gets the forged event", describe(got))


@case("peering", "records §8.2, §5", "to a pool session a pool answers QUERY with its own records signed "
                                         "(node-record prefix, origin its key) and pushes its own events signed",
      roles=POOL)
async def own_claims_signed(opts: Options) -> str | None:
    async with open_link(opts, role="pool") as link, open_link(opts, role="node") as node:
        await link.call(m.Subscribe(topics=("node.joined",)), "ACK")
        await node.call(m.Join(capabilities=(CAP,), ttl=30), "LEASE")
        origin = link.session.peer_key
        ev = await next_event(link, lambda f: f.msg.data.get("key") in (node.identity.public.hex(),
                                                                        node.identity.public), opts.timeout / 2)
        if ev is None:
            raise CaseFailed("EVENT node.joined for our JOIN", "none")
        result = await link.call(m.Query(key=node.identity.public), "QUERY_RESULT")
        if len(result.nodes) != 1:
            raise CaseFailed("QUERY for our node: one record", f"{len(result.nodes)} records")
        n = result.nodes[0]
        if ev.msg.signed is None and n.signed is None:
            return "not judged: the endpoint signs nothing (a pool that does not peer need not)"
        _verify(records.EVENT, ev.msg.signed, origin=origin, opts=opts, what="EVENT node.joined",
                carried={"topic": ev.msg.topic, "event_id": ev.msg.event_id, "ts": ev.msg.ts})
        _verify(records.NODE, n.signed, origin=origin, opts=opts, what="our node's record",
                carried={"key": n.key, "capabilities": tuple(n.capabilities), "meta": dict(n.meta)})
        return None


NOT_PEER = "not judged: the endpoint did not ask the probe (not accepted as its peer by its policy)"


async def _as_peer(opts: Options, answer: Callable[[Link, m.Query], tuple[m.NodeRecord, ...]],
                   query: m.Query) -> tuple[m.Query, m.QueryResult] | None:
    """The probe as the endpoint's peer answers the endpoint's peer QUERY with `answer`, while
    another session sends `query` (scope peers): (what the probe was asked, what came back), or
    None when the endpoint did not ask the probe."""
    asked: list[m.Query] = []
    async with open_link(opts, role="pool") as peer, open_link(opts) as client:
        async def serve() -> None:
            while True:
                got = peer.pushed.pop(0) if peer.pushed else await peer.receive_or_close()
                if isinstance(got, int):
                    return
                f: Frame = got
                if f.type == "PING":
                    await peer.send(peer.frame(m.Pong(data=f.msg.data)))
                elif f.type == "SUBSCRIBE":
                    await peer.send(peer.frame(m.Ack(re=f.id)))
                elif f.type == "QUERY":
                    asked.append(f.msg)
                    await peer.send(peer.frame(m.QueryResult(re=f.id, nodes=answer(peer, f.msg))))

        await peer.ping()  # the endpoint has taken the session in (as a peer or not)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            result = await client.call(query, "QUERY_RESULT")
            nursery.cancel_scope.cancel()
    return (asked[0], result) if asked else None


@case("peering", "records §6.2, §6.4", "a peer's record attributed to another pool without that pool's "
                                                "signed record is dropped from a peers-scope answer, and so is a "
                                                "record outside the query's filter", roles=POOL)
async def foreign_record_unsigned(opts: Options) -> str | None:
    foreign, outside, own = os.urandom(32), os.urandom(32), os.urandom(32)

    def answer(peer: Link, q: m.Query) -> tuple[m.NodeRecord, ...]:
        far = now_ms() + 60_000
        return (m.NodeRecord(key=foreign, capabilities=(CAP,), expires=far, pool=os.urandom(32)),
                m.NodeRecord(key=outside, capabilities=("other",), expires=far),
                m.NodeRecord(key=own, capabilities=(CAP,), expires=far))

    got = await _as_peer(opts, answer, m.Query(capabilities=(CAP,), scope="peers", hops=1))
    if got is None:
        return NOT_PEER
    result = got[1]
    keys = {n.key for n in result.nodes}
    if foreign in keys or outside in keys:
        raise CaseFailed("neither the unsigned foreign record nor the one outside the filter",
                         ", ".join(k for k, x in (("foreign", foreign), ("outside", outside)) if x in keys))
    if own not in keys:
        raise CaseFailed("the peer's own record (its own word) in the answer", "missing")


@case("peering", "peering §4", "a peers-scope QUERY reaches a peer with hops - 1, a budget below the one "
                               "given, and a 16-byte query id", roles=POOL)
async def fan_out_budget(opts: Options) -> str | None:
    got = await _as_peer(opts, lambda peer, q: (), m.Query(scope="peers", hops=2, budget=3, limit=1))
    if got is None:
        return NOT_PEER
    asked = got[0]
    if asked.hops > 1 or asked.budget is None or asked.budget > 2 or asked.qid is None:
        raise CaseFailed("hops <= 1, budget <= 2 and a qid", f"hops {asked.hops}, budget {asked.budget}, "
                                                             f"qid {asked.qid.hex() if asked.qid else None}")
