"""Errors (errors §1-§6, framing §5 M1/M2): non-fatal errors keep the session in step, ERRORs
are never answered with ERRORs, and requests an endpoint does not serve are refused cleanly."""
from __future__ import annotations

import os

import msgpack

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import Options, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode


async def _non_fatal(opts: Options, step: str, code: ErrorCode) -> str:
    """Each vector of `step` re-wrapped into one session: ERROR code with re, seq consumed (a PING
    with the next seq still gets its PONG). HELLO and READY bodies are left out: as session frames
    they are unexpected_message (S4), before their body is looked at."""
    found = []
    for v in vectors.load(opts, "invalid")["vectors"]:
        if v["step"] == step:
            payload = msgpack.unpackb(bytes.fromhex(v["input"]["binary"]))[1]
            if msgpack.unpackb(payload, raw=False, strict_map_key=False).get("type") not in ("HELLO", "READY"):
                found.append((v, payload))
    async with open_link(opts) as link:
        for v, payload in found:
            data, fid = vectors.rewrap(link, payload)
            await link.send(data)
            await link.expect_error(code, re=fid, closes=False)
            await link.ping()
    return f"{len(found)} vectors: {', '.join(v['name'] for v, _ in found)}"


@case("errors", "handshake §7.3, framing §5 M1", "an unknown type in a session is unknown_type with re, not fatal, "
                                                 "and its seq is consumed (M1 vectors re-wrapped)")
async def unknown_type(opts: Options) -> str:
    return await _non_fatal(opts, "M1", ErrorCode.UNKNOWN_TYPE)


@case("errors", "handshake §7.3, messages §1, framing §5 M2", "a body breaking its schema is invalid_body with re, "
                                                              "not fatal, seq consumed (M2 vectors re-wrapped)")
async def invalid_body(opts: Options) -> str:
    return await _non_fatal(opts, "M2", ErrorCode.INVALID_BODY)


@case("errors", "errors §1.4, §6", "a received ERROR is never answered with ERROR, whatever its code (an unknown "
                                   "one included)")
async def error_not_answered(opts: Options) -> None:
    async with open_link(opts) as link:
        await link.send(link.frame(m.Error(code=6999, name="future_code", message="from the conformance suite",
                                           re=os.urandom(16))))
        await link.send(link.frame(m.Error(code=int(ErrorCode.NOT_FOUND), name="not_found", re=os.urandom(16))))
        await link.ping()  # the next frame must be the PONG


@case("errors", "messages §2.5", "a valid request the endpoint does not serve is not_supported, not fatal "
                                 "(pool: ANNOUNCE; main net: JOIN and ADMIN)")
async def not_supported(opts: Options) -> None:
    if opts.role == "pool":
        requests = [m.Announce(descriptor=m.SignedDescriptor(record=b"\x80", sig=bytes(64)))]
    else:
        requests = [m.Join(), m.Admin(action="nodes")]
    async with open_link(opts) as link:
        for msg in requests:
            await link.refused(msg, ErrorCode.NOT_SUPPORTED)
        await link.ping()


@case("errors", "messages §2.6, errors §4", "ADMIN from a key that is not an admin key is forbidden, not fatal",
      roles=("pool",))
async def admin_forbidden(opts: Options) -> None:
    async with open_link(opts) as link:
        await link.refused(m.Admin(action="kick", key=os.urandom(32)), ErrorCode.FORBIDDEN)
        await link.ping()
