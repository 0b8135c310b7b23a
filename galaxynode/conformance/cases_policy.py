"""Peering policy (peering §9): a role in HELLO is a claim. A pool serves a session whose key its
policy does not accept as a peer as a node: peering pushes (DESCRIPTORS, EVENT) are refused, the
session goes on. Pool endpoints only; the probe's fresh key is neither static nor listed, so a pool
with `accept = "any"` fails these cases by design (it accepts anyone as a peer)."""
from __future__ import annotations

import os

from galaxynode.conformance.cases_discovery import descriptor, signed
from galaxynode.conformance.probe import CaseFailed, Options, describe, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import now_ms
from galaxynode.gelato.errors import ErrorCode

POOL = ("pool",)
# A pool without peering at all does not serve the peering pushes (not_supported): also a refusal.
REFUSED = (ErrorCode.FORBIDDEN, ErrorCode.NOT_SUPPORTED)


async def _served_as_node(link) -> None:
    got = await link.request(m.Status())
    if got.type != "STATUS_RESULT":
        raise CaseFailed("STATUS_RESULT after the refusal (the session goes on, served as a node)", describe(got))


@case("peering", "peering §9.1, §9.2", "an unlisted key saying role pool is no peer: its DESCRIPTORS (a valid "
                                        "descriptor of its own) is refused, non-fatal, and the session goes on",
      roles=POOL)
async def unlisted_pool_descriptors(opts: Options) -> None:
    async with open_link(opts, role="pool") as link:
        own = signed(descriptor(link.identity, opts), link.identity)
        await link.refused(m.Descriptors(descriptors=(own,)), REFUSED[0], also=REFUSED[1:])
        await _served_as_node(link)


@case("peering", "peering §9.1, §9.2", "an unlisted key saying role pool is no peer: an EVENT it pushes is "
                                        "refused, non-fatal, and the session goes on", roles=POOL)
async def unlisted_pool_event(opts: Options) -> None:
    async with open_link(opts, role="pool") as link:
        ev = m.Event(topic="node.left", event_id=os.urandom(16), origin=link.identity.public, ts=now_ms(),
                     data={"key": os.urandom(32).hex()})
        await link.refused(ev, REFUSED[0], also=REFUSED[1:])
        await _served_as_node(link)
