"""Main net poisoning rules (peering §7.6, §7.10): a seq past the clock is refused so a key can
never be locked out of its own entry, and a pool is listed only where its key answers. Main net
endpoints only; the answering listeners are on probe.LISTEN_HOST (loopback)."""
from __future__ import annotations

import attrs

from galaxynode.conformance.cases_discovery import MAINNET, announce, descriptor, lookup_name, signed
from galaxynode.conformance.probe import CaseFailed, Options, answering, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity

TOP_SEQ = 2**64 - 1


@case("discovery", "peering §7.6, §7.8", "a descriptor with seq 2^64 - 1 (past now + 120 s) is bad_descriptor and "
                                         "not listed; the key then registers a current one", roles=MAINNET)
async def seq_past_the_clock(opts: Options) -> None:
    async with open_link(opts, role="pool") as link:
        me = link.identity
        top = attrs.evolve(descriptor(me, opts), seq=TOP_SEQ)
        await link.refused(m.Announce(descriptor=signed(top, me)), ErrorCode.BAD_DESCRIPTOR)
        if await lookup_name(link, top.name):
            raise CaseFailed("LOOKUP not to list the refused descriptor", "it is listed")
        current = descriptor(me, opts, name=top.name)
        await announce(link, signed(current, me))
        if await lookup_name(link, top.name) != [signed(current, me)]:
            raise CaseFailed("the current descriptor listed after the refused one", "something else")


@case("discovery", "peering §7.10.1", "a descriptor whose first endpoint answers with another key is "
                                      "bad_descriptor and not listed (proof of reachability)", roles=MAINNET)
async def endpoint_of_another_key(opts: Options) -> None:
    other = Identity.generate()
    async with answering(other, opts) as url, open_link(opts, role="pool") as link:
        me = link.identity
        desc = descriptor(me, opts, endpoints=(url,))
        await link.refused(m.Announce(descriptor=signed(desc, me)), ErrorCode.BAD_DESCRIPTOR)
        if await lookup_name(link, desc.name):
            raise CaseFailed("LOOKUP not to list a pool whose endpoint answers with another key", "it is listed")
