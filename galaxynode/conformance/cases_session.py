"""Session and replay (handshake §7, §9, §10): the session keys and seq bind every frame to one
connection, one direction and one position in it; PING, STATUS and GOODBYE behave as specified."""
from __future__ import annotations

import os

from galaxynode.conformance.probe import CaseFailed, Options, describe, frame_id, open_link, refused_frame
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import encode_frame
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity


@case("session", "handshake §7.2 S2", "a replayed frame is bad_sequence, with re, and ends the session "
                                      "(vector session/replay)")
async def replay(opts: Options) -> None:
    async with open_link(opts) as link:
        data = link.frame(m.Status())
        await link.send(data)
        got = await link.reply(frame_id(data))
        if got.type != "STATUS_RESULT":
            raise CaseFailed("STATUS_RESULT to the first STATUS", describe(got))
        await link.send(data)
        await link.expect_error(ErrorCode.BAD_SEQUENCE, re=frame_id(data))


@case("session", "handshake §7.2 S2, §7.5", "a skipped seq is bad_sequence and ends the session (vector session/skip)")
async def skipped(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.BAD_SEQUENCE, lambda link: link.craft("STATUS", {}, seq=1))


@case("session", "framing §5 F25", "a session frame without seq is malformed_frame, with re "
                                   "(vector session/seq-missing)")
async def no_seq(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.MALFORMED_FRAME, lambda link: link.craft("STATUS", {}, seq=None))


@case("session", "handshake §6, §10.3, security §2.2", "a frame of an earlier session of the same key, replayed "
                                                       "into a new session at the seq it expects, is bad_mac "
                                                       "(vector session/other-session)")
async def cross_session_replay(opts: Options) -> None:
    me = Identity.generate()
    async with open_link(opts, me) as first:
        old = first.frame(m.Status())
        await first.send(old)
        await first.reply(frame_id(old))
        await first.send(first.frame(m.Goodbye(reason="done")))
        await first.expect_close()
    async with open_link(opts, me) as second:
        await second.send(old)  # seq 0 is what the new session expects: only the key gives it away
        await second.expect_error(ErrorCode.BAD_MAC, re=None)


@case("session", "handshake §7.4, framing §5 S3", "a signed HELLO or READY inside a live session is "
                                                  "unexpected_message with re, and ends it (vectors session/hello, "
                                                  "session/ready)")
async def handshake_frame_in_session(opts: Options) -> str:
    for msg in (m.Hello(network=opts.network, role="probe", nonce=os.urandom(32), eph=os.urandom(32), versions=(2,)),
                m.Ready(echo=os.urandom(32))):
        async with open_link(opts) as link:
            data = encode_frame(link.identity, msg)
            await link.send(data)
            await link.expect_error(ErrorCode.UNEXPECTED_MESSAGE, re=frame_id(data))
    return "HELLO, READY"


@case("session", "handshake §7.4, framing §5 S4", "a session frame of type HELLO is unexpected_message with re "
                                                  "(vector session/hello-type)")
async def hello_as_session_frame(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE, lambda link: link.craft("HELLO", {
        "network": opts.network, "role": "probe", "nonce": os.urandom(32), "eph": os.urandom(32), "versions": [2]}))


@case("session", "handshake §9.2, messages §2.3", "PING is answered with PONG echoing its data; several PINGs in "
                                                  "flight are told apart by data")
async def ping_pong(opts: Options) -> None:
    async with open_link(opts) as link:
        datas = [os.urandom(8) for _ in range(3)]
        for d in datas:
            await link.send(link.frame(m.Ping(data=d)))
        got = []
        while len(got) < len(datas):
            frame = await link.receive()
            if frame.type != "PONG":
                raise CaseFailed("PONG", describe(frame))
            got.append(frame.msg.data)
        if sorted(got) != sorted(datas):
            raise CaseFailed(f"PONGs echoing {[d.hex() for d in datas]}", f"{[(d or b'').hex() for d in got]}")


@case("session", "handshake §10.1", "after GOODBYE the endpoint closes the connection and sends nothing more")
async def goodbye(opts: Options) -> None:
    async with open_link(opts) as link:
        await link.ping()
        await link.send(link.frame(m.Goodbye(reason="conformance")))
        await link.expect_close("the close after our GOODBYE")


@case("session", "messages §3.6", "STATUS is answered with STATUS_RESULT naming the endpoint's own key, network "
                                  "and role")
async def status(opts: Options) -> None:
    async with open_link(opts) as link:
        r = await link.call(m.Status(), "STATUS_RESULT")
        if r.key != link.session.peer_key:
            raise CaseFailed("key = the key of the endpoint's HELLO", r.key.hex())
        if r.network != opts.network or r.role != opts.role:
            raise CaseFailed(f"network {opts.network!r}, role {opts.role!r}", f"network {r.network!r}, role {r.role!r}")
