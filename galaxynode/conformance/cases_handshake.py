"""Handshake (handshake §2-§8): the endpoint's answering HELLO, the sid, and every way an opener's
handshake must be refused (handshake §5 H1-H9, F22) or time out."""
from __future__ import annotations

import os

import trio

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import CaseFailed, Link, Options, open_link, refused_frame
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import DEFAULT_LIMITS, decode_frame, encode_frame, now_ms
from galaxynode.gelato.errors import ErrorCode


@case("handshake", "handshake §2.1, §3.2, §4.1", "the answering HELLO is signed, has no sid, names our network, "
                                                "offers version 1, a fresh nonce and echoes our nonce (H9)")
async def answering_hello(opts: Options) -> None:
    async with open_link(opts, handshake=False) as link:
        answer = await link.exchange_hellos()
        msg = answer.msg
        if answer.sid is not None or answer.seq is not None:
            raise CaseFailed("a HELLO without sid and seq", f"sid {answer.sid!r}, seq {answer.seq!r}")
        if msg.echo != link.nonce:
            raise CaseFailed(f"echo = our nonce {link.nonce.hex()}", f"echo = {msg.echo.hex() if msg.echo else 'absent'}")
        if msg.network != opts.network:
            raise CaseFailed(f"network {opts.network!r}", f"network {msg.network!r}")
        if 1 not in msg.versions:
            raise CaseFailed("versions containing 1", f"versions {list(msg.versions)}")
        if msg.nonce == link.nonce:
            raise CaseFailed("a nonce of its own", "our nonce")
        skew = answer.ts - now_ms()
        if abs(skew) > DEFAULT_LIMITS.ts_window_ms:
            raise CaseFailed("ts within 120 s of our clock (handshake §4.2)", f"{skew} ms off")


@case("handshake", "handshake §6, §7.1", "both sides derive the same sid; the endpoint's session frames carry it "
                                         "and number from seq 0")
async def sid_and_seq(opts: Options) -> None:
    async with open_link(opts) as link:
        for _ in range(3):  # Session.decode checks sid and seq 0, 1, 2 of the PONGs
            await link.ping()


async def _refused_hello(opts: Options, code: ErrorCode, **hello: object) -> None:
    await refused_frame(opts, code, lambda link: link.hello(**hello), after="connect", closes=True)


@case("handshake", "handshake §5 H4", "a HELLO for another network is network_mismatch (vector hs/network)")
async def network_mismatch(opts: Options) -> None:
    await _refused_hello(opts, ErrorCode.NETWORK_MISMATCH, network=f"not-{opts.network}"[:64])


@case("handshake", "handshake §5 H7", "a HELLO without a common version is no_common_version (vector hs/versions)")
async def no_common_version(opts: Options) -> None:
    await _refused_hello(opts, ErrorCode.NO_COMMON_VERSION, versions=(2, 7))


@case("handshake", "handshake §5 H9", "an opening HELLO carrying echo is bad_nonce (vector hs/open-with-echo)")
async def open_with_echo(opts: Options) -> None:
    await _refused_hello(opts, ErrorCode.BAD_NONCE, echo=os.urandom(32))


@case("handshake", "handshake §5 M2, §8.1", "a HELLO with an invalid body ends the handshake with invalid_body "
                                            "(vector hs/bad-role)")
async def hello_bad_body(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.INVALID_BODY, lambda link: link.craft(
        "HELLO", {"network": opts.network, "role": "wizard", "nonce": os.urandom(32), "versions": [1]}),
        after="connect", closes=True)


@case("handshake", "handshake §4.3 H2", "a PING, or an unknown type, instead of HELLO is unexpected_message "
                                        "(vectors hs/ping, hs/unknown-type)")
async def not_hello(opts: Options) -> None:
    for msg_type, body in (("PING", {}), ("NOT_A_TYPE", {})):
        await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE, lambda link: link.craft(msg_type, body),
                            after="connect", closes=True)


@case("handshake", "handshake §4.1 H2", "a HELLO carrying sid and seq is unexpected_message (vector hs/hello-with-sid)")
async def hello_with_sid(opts: Options) -> None:
    body = m.Hello(network=opts.network, role="probe", nonce=os.urandom(32), versions=(1,)).to_body()
    await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE,
                        lambda link: link.craft("HELLO", body, sid=os.urandom(32), seq=0),
                        after="connect", closes=True)


@case("handshake", "handshake §4.3 H2", "a second HELLO instead of READY is unexpected_message "
                                        "(vector hs/second-hello)")
async def second_hello(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.UNEXPECTED_MESSAGE, lambda link: link.hello(), after="hello",
                        closes=True)


@case("handshake", "handshake §3.4 H3", "a READY that does not echo the answerer's nonce is bad_nonce "
                                        "(vector hs/ready-wrong-echo)")
async def ready_wrong_echo(opts: Options) -> None:
    def ready(link: Link) -> tuple[bytes, bytes]:
        frame = encode_frame(link.identity, m.Ready(echo=os.urandom(32)))
        return frame, decode_frame(frame).id
    await refused_frame(opts, ErrorCode.BAD_NONCE, ready, after="hello", closes=True)


@case("handshake", "handshake §4.2 F22", "a HELLO outside the time window is stale_timestamp: the recorded "
                                         "handshake.json HELLO cannot be replayed, nor a fresh one 10 min off")
async def stale_hello(opts: Options) -> str:
    recorded = bytes.fromhex(vectors.load(opts, "handshake")["frames"][0]["frame"])
    await refused_frame(opts, ErrorCode.STALE_TIMESTAMP, lambda link: (recorded, decode_frame(recorded).id),
                        after="connect", closes=True)
    for off in (-600_000, 600_000):
        await _refused_hello(opts, ErrorCode.STALE_TIMESTAMP, ts=now_ms() + off)
    return "recorded HELLO, -10 min, +10 min"


async def _times_out(opts: Options, send_hello: bool) -> str:
    async with open_link(opts, handshake=False) as link:
        started = trio.current_time()
        if send_hello:
            await link.exchange_hellos()
        try:
            with trio.fail_after(opts.handshake_timeout):
                await link.expect_error(ErrorCode.HANDSHAKE_TIMEOUT, re=None, closes=True)
        except trio.TooSlowError:
            raise CaseFailed(f"ERROR handshake_timeout within {opts.handshake_timeout:g}s", "nothing") from None
        return f"timed out after {trio.current_time() - started:.1f}s"


@case("handshake", "handshake §8.2, limits §3", "a silent opener gets ERROR handshake_timeout and the close "
                                                "within --handshake-timeout", wait=lambda o: o.handshake_timeout)
async def silent_opener(opts: Options) -> str:
    return await _times_out(opts, send_hello=False)


@case("handshake", "handshake §8.2", "an opener that never sends READY gets ERROR handshake_timeout within "
                                     "--handshake-timeout", wait=lambda o: o.handshake_timeout)
async def no_ready(opts: Options) -> str:
    return await _times_out(opts, send_hello=True)

