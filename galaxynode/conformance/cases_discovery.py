"""Discovery (overview §5, signing §5, messages §3.4): a main net registers a pool's own signed
descriptor, relays it unaltered, and refuses forged, foreign, expired and older ones. Main net
endpoints only.

The descriptors name the announcing link's own listener (probe.LISTENING: a main net dials it back
and must find the link's key there, peering §7.10), else ws://127.0.0.1:9 (discard), and live at most
a few minutes, so a pool that discovers them from a shared main net only ever dials loopback.
"""
from __future__ import annotations

import os
from contextlib import AsyncExitStack

import attrs
import trio

from galaxynode.conformance.probe import (LISTENING, CaseFailed, CaseSkipped, Link, Options, answering, describe,
                                          open_link)
from galaxynode.conformance.runner import case
from galaxynode.descriptor import SIGN_PREFIX, Descriptor
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import SIGN_PREFIX as FRAME_PREFIX
from galaxynode.gelato.codec import now_ms
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity

MAINNET = ("mainnet",)
LIFETIME_MS = 5 * 60 * 1000
LIFETIME_LADDER = (2, 3, 5, 10, 15, 20, 30, 60)


def descriptor(identity: Identity, opts: Options, **fields: object) -> Descriptor:
    now = now_ms()
    base = Descriptor(key=identity.public, name=f"conformance-{os.urandom(6).hex()}", network=opts.network,
                      endpoints=(LISTENING.get(identity.public, "ws://127.0.0.1:9"),), capabilities=("conformance",),
                      nodes=0, issued=now,
                      expires=now + LIFETIME_MS, seq=now)
    return attrs.evolve(base, **fields)


def signed(desc: Descriptor, signer: Identity, record: bytes | None = None) -> m.SignedDescriptor:
    record = desc.encode() if record is None else record
    return m.SignedDescriptor(record=record, sig=signer.sign(SIGN_PREFIX + record))


async def lookup_name(link: Link, name: str) -> list[m.SignedDescriptor]:
    return list((await link.call(m.Lookup(name=name), "LOOKUP_RESULT")).descriptors)


async def announce(link: Link, sd: m.SignedDescriptor) -> m.Lease:
    return await link.call(m.Announce(descriptor=sd), "LEASE")


@case("discovery", "overview §5.1-§5.3, messages §3.4", "ANNOUNCE of the session's own descriptor gets a LEASE "
      "not outliving it; LOOKUP returns record and sig byte for byte", roles=MAINNET)
async def announce_lookup(opts: Options) -> None:
    async with open_link(opts, role="pool") as link:
        desc = descriptor(link.identity, opts)
        sd = signed(desc, link.identity)
        lease = await announce(link, sd)
        if lease.expires > desc.expires:
            raise CaseFailed(f"a lease ending by the descriptor's expiry {desc.expires}", f"{lease.expires}")
        found = await lookup_name(link, desc.name)
        if found != [sd]:
            raise CaseFailed("exactly the announced record and signature",
                             f"{len(found)} descriptors{', altered' if found else ''}")


async def _refused_announce(opts: Options, sd: m.SignedDescriptor, name: str, code: ErrorCode,
                            also: tuple[ErrorCode, ...] = (), link_identity: Identity | None = None) -> None:
    async with open_link(opts, link_identity, role="pool") as link:
        await link.refused(m.Announce(descriptor=sd), code, also=also)
        if await lookup_name(link, name):
            raise CaseFailed("LOOKUP not to list a refused descriptor", "it is listed")


@case("discovery", "overview §1, §5.1", "a validly signed descriptor of another "
      "key, announced over our session, is refused (forbidden or bad_descriptor)", roles=MAINNET)
async def foreign_descriptor(opts: Options) -> None:
    other = Identity.generate()
    desc = descriptor(other, opts)
    await _refused_announce(opts, signed(desc, other), desc.name, ErrorCode.FORBIDDEN, also=(ErrorCode.BAD_DESCRIPTOR,))


@case("discovery", "overview §5.3, signing §5", "a descriptor whose record was altered after signing is "
                                                "bad_descriptor", roles=MAINNET)
async def tampered_descriptor(opts: Options) -> None:
    me = Identity.generate()
    async with answering(me, opts):  # reachable: only the signature can refuse it
        desc = descriptor(me, opts)
        forged = attrs.evolve(desc, name=desc.name + "-x")
        sd = m.SignedDescriptor(record=forged.encode(), sig=signed(desc, me).sig)
        await _refused_announce(opts, sd, forged.name, ErrorCode.BAD_DESCRIPTOR, link_identity=me)


@case("discovery", "overview §5.3, signing §5", "a descriptor signed with the frame prefix instead of "
                                                "\"gelato/v1/descriptor\\0\" is bad_descriptor", roles=MAINNET)
async def wrong_prefix(opts: Options) -> None:
    me = Identity.generate()
    async with answering(me, opts):  # reachable: only the signature can refuse it
        desc = descriptor(me, opts)
        record = desc.encode()
        sd = m.SignedDescriptor(record=record, sig=me.sign(FRAME_PREFIX + record))
        await _refused_announce(opts, sd, desc.name, ErrorCode.BAD_DESCRIPTOR, link_identity=me)


@case("discovery", "overview §5.2, §5.4", "an expired descriptor is bad_descriptor", roles=MAINNET)
async def expired_descriptor(opts: Options) -> None:
    me = Identity.generate()
    now = now_ms()
    desc = descriptor(me, opts, issued=now - 120_000, expires=now - 60_000)
    await _refused_announce(opts, signed(desc, me), desc.name, ErrorCode.BAD_DESCRIPTOR, link_identity=me)


@case("discovery", "overview §5.4", "a descriptor for another network is bad_descriptor", roles=MAINNET)
async def other_network(opts: Options) -> None:
    me = Identity.generate()
    desc = descriptor(me, opts, network=f"not-{opts.network}"[:64])
    await _refused_announce(opts, signed(desc, me), desc.name, ErrorCode.BAD_DESCRIPTOR, link_identity=me)


@case("discovery", "overview §5.2", "a higher seq replaces a lower one; an older seq afterwards is stale_descriptor "
                                    "and LOOKUP keeps the newer, unaltered", roles=MAINNET)
async def sequence(opts: Options) -> None:
    async with open_link(opts, role="pool") as link:
        me = link.identity
        first = descriptor(me, opts)
        newer = attrs.evolve(first, seq=first.seq + 10, nodes=1)
        older = attrs.evolve(first, seq=first.seq + 5, nodes=2)
        await announce(link, signed(first, me))
        await announce(link, signed(newer, me))
        if await lookup_name(link, first.name) != [signed(newer, me)]:
            raise CaseFailed("LOOKUP to return the newer descriptor", "something else")
        await link.refused(m.Announce(descriptor=signed(older, me)), ErrorCode.STALE_DESCRIPTOR)
        if await lookup_name(link, first.name) != [signed(newer, me)]:
            raise CaseFailed("LOOKUP to keep the newer descriptor after a stale one", "something else")


@case("discovery", "overview §5.2, messages §2.6", "a descriptor that expires leaves LOOKUP results (shortest lifetime "
      "the main net accepts, at most --max-wait)", roles=MAINNET, wait=lambda o: 2 * o.max_wait)
async def descriptor_expires(opts: Options) -> str:
    async with open_link(opts, role="pool") as link:
        me = link.identity
        for seconds in (s for s in LIFETIME_LADDER if s <= opts.max_wait):
            now = now_ms()
            desc = descriptor(me, opts, issued=now, expires=now + seconds * 1000, seq=now)
            got = await link.request(m.Announce(descriptor=signed(desc, me)))
            if got.type == "LEASE":
                break
            if got.type != "ERROR" or got.msg.code != ErrorCode.BAD_DESCRIPTOR:
                raise CaseFailed("LEASE or ERROR bad_descriptor", describe(got))
        else:
            raise CaseSkipped(f"the main net accepts no descriptor living at most --max-wait {opts.max_wait:g}s")
        lease = got.msg
        if lease.expires > desc.expires:
            raise CaseFailed(f"a lease ending by the descriptor's expiry {desc.expires}", f"{lease.expires}")
        ends = trio.current_time() + (lease.expires - link.peer_now()) / 1000  # by the main net's clock
        while True:  # the registration ends with the lease (which may be shorter than the descriptor)
            await trio.sleep(0.2)
            listed = bool(await lookup_name(link, desc.name))
            late = trio.current_time() - ends
            if not listed:
                if late < -1:
                    raise CaseFailed("the descriptor listed until its lease ends", f"gone {-late:.1f} s early")
                return f"lifetime {seconds} s, lease {lease.ttl} s; gone {max(late, 0):.1f} s after the lease"
            if late > opts.max_wait:
                raise CaseFailed("the descriptor gone once expired", f"still listed {late:.1f} s after its lease")


@case("discovery", "messages §3.4.2, §3.4.3", "LOOKUP pages with a cursor: limit 1 over three pools returns each "
                                              "once, unaltered, and the last page has no cursor", roles=MAINNET)
async def lookup_paging(opts: Options) -> None:
    cap = f"conformance-{os.urandom(6).hex()}"
    async with AsyncExitStack() as stack:
        links = [await stack.enter_async_context(open_link(opts, role="pool")) for _ in range(3)]
        want = []
        for link in links:
            sd = signed(descriptor(link.identity, opts, capabilities=(cap,)), link.identity)
            await announce(link, sd)
            want.append(sd)
        seen: list[m.SignedDescriptor] = []
        cursor = None
        for _ in range(len(want) + 2):
            r = await links[0].call(m.Lookup(capability=cap, limit=1, cursor=cursor), "LOOKUP_RESULT")
            if len(r.descriptors) > 1:
                raise CaseFailed("at most 1 descriptor per page with limit 1", f"{len(r.descriptors)}")
            seen += r.descriptors
            cursor = r.cursor
            if cursor is None:
                break
        key = lambda sd: sd.sig  # noqa: E731
        if cursor is not None or sorted(seen, key=key) != sorted(want, key=key):
            raise CaseFailed("the three descriptors once each, unaltered, then a page without cursor",
                             f"{len(seen)} descriptors ({len(set(map(key, seen)) & set(map(key, want)))} of ours),"
                             f" cursor {'still present' if cursor is not None else 'absent'}")
