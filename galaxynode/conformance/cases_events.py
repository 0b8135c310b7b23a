"""Events (messages §3.3, §5): SUBSCRIBE/UNSUBSCRIBE and EVENT pushes. On a pool the event is
another session's JOIN (node.joined); on a main net another session's ANNOUNCE (pool.announced)."""
from __future__ import annotations

from typing import Callable

import trio

from galaxynode.conformance.cases_discovery import descriptor, signed
from galaxynode.conformance.probe import CaseFailed, Link, Options, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode

QUIET = 0.5  # seconds an unsubscribed session is watched for events it should not get


def topics(opts: Options) -> tuple[str, str]:
    """(pattern, the topic our trigger makes happen)"""
    return ("node.*", "node.joined") if opts.role == "pool" else ("pool.*", "pool.announced")


async def trigger(opts: Options, other: Link) -> None:
    """Make the event happen from another session: a JOIN at a pool, an ANNOUNCE at a main net."""
    if opts.role == "pool":
        await other.call(m.Join(ttl=30), "LEASE")
    else:
        await other.call(m.Announce(descriptor=signed(descriptor(other.identity, opts), other.identity)), "LEASE")


def about(key: bytes) -> Callable[[Frame], bool]:
    """An EVENT whose data names `key` (hex or bytes)."""
    return lambda f: f.msg.data.get("key") in (key.hex(), key)


async def next_event(link: Link, want: Callable[[Frame], bool], seconds: float) -> Frame | None:
    """The first EVENT satisfying `want` within `seconds`, or None; other frames are skipped."""
    for f in list(link.pushed):
        if f.type == "EVENT" and want(f):
            link.pushed.remove(f)
            return f
    with trio.move_on_after(seconds):
        while True:
            got = await link.receive_or_close()
            if isinstance(got, int):
                raise CaseFailed("the session to stay open", f"it closed ({got})")
            if got.type == "PING":
                await link.send(link.frame(m.Pong(data=got.msg.data)))
            elif got.type == "EVENT" and want(got):
                return got
    return None


@case("events", "messages §3.3, §5", "SUBSCRIBE and UNSUBSCRIBE are answered with ACK; a pattern that cannot be "
                                     "parsed is invalid_body, not fatal")
async def subscribe_ack(opts: Options) -> None:
    pattern, _ = topics(opts)
    async with open_link(opts) as link:
        await link.call(m.Subscribe(topics=(pattern, "#")), "ACK")
        await link.refused(m.Subscribe(topics=("node..joined",)), ErrorCode.INVALID_BODY)
        await link.call(m.Unsubscribe(topics=(pattern, "#")), "ACK")
        await link.ping()


@case("events", "messages §3.3.3, §5", "a subscriber gets an EVENT when another session's JOIN (pool) or ANNOUNCE "
                                       "(main net) happens: topic, 16-byte event_id, origin = the endpoint's key")
async def event_arrives(opts: Options) -> None:
    pattern, topic = topics(opts)
    async with open_link(opts) as sub, open_link(opts, role="node" if opts.role == "pool" else "pool") as other:
        await sub.call(m.Subscribe(topics=(pattern,)), "ACK")
        await trigger(opts, other)
        ev = await next_event(sub, about(other.identity.public), opts.timeout / 2)
        if ev is None:
            raise CaseFailed(f"EVENT {topic} naming the other session's key", "no such EVENT")
        if ev.msg.topic != topic or ev.msg.origin != sub.session.peer_key:
            raise CaseFailed(f"topic {topic!r}, origin {sub.session.peer_key.hex()[:16]}..",
                             f"topic {ev.msg.topic!r}, origin {ev.msg.origin.hex()[:16]}..")


@case("events", "messages §3.3.2", "after UNSUBSCRIBE no more EVENTs of that pattern arrive", wait=lambda o: QUIET)
async def unsubscribe_stops(opts: Options) -> None:
    pattern, topic = topics(opts)
    async with open_link(opts) as sub, open_link(opts, role="node" if opts.role == "pool" else "pool") as other:
        await sub.call(m.Subscribe(topics=(pattern,)), "ACK")
        await sub.call(m.Unsubscribe(topics=(pattern,)), "ACK")
        await trigger(opts, other)
        ev = await next_event(sub, about(other.identity.public), QUIET)
        if ev is not None:
            raise CaseFailed("no EVENT after UNSUBSCRIBE", f"EVENT {ev.msg.topic}")
