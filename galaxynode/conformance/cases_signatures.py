"""Authentication (signing §4, framing §8, security §1-§3): which key verifies which frame; nothing
unsigned, signed by a third key, or MAC'd with the wrong key gets in, before or after the handshake."""
from __future__ import annotations

from functools import partial

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import Link, Options, open_link, refused_frame
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity

case("signatures", "signing §4.1, framing §5 F12",
     "a first frame whose signature does not verify with its 'from' is bad_signature "
     "(invalid.json F12 vectors)")(partial(vectors.reject_first_frames, step="F12"))


@case("signatures", "framing §8.2, framing §5 F24", "a session frame with a corrupted MAC is bad_mac, without re, "
                                                    "and ends the session (vector session/bad-mac)")
async def bad_mac(opts: Options) -> None:
    def corrupt(link: Link) -> tuple[bytes, None]:
        data = bytearray(link.frame(m.Status()))
        data[-1] ^= 1  # the MAC is the last 16 bytes
        return bytes(data), None
    await refused_frame(opts, ErrorCode.BAD_MAC, corrupt, with_re=False)


@case("signatures", "framing §8.2, framing §5 F24", "a session frame whose payload was changed after MACing is "
                                                    "bad_mac (vector session/tampered)")
async def tampered(opts: Options) -> None:
    def tamper(link: Link) -> tuple[bytes, None]:
        data = link.frame(m.Ping(data=b"conformance-aaaa"))
        return data.replace(b"conformance-aaaa", b"conformance-bbbb"), None
    await refused_frame(opts, ErrorCode.BAD_MAC, tamper, with_re=False)


@case("signatures", "handshake §6.2, security §3, framing §5 F24", "a session frame MAC'd with the other "
                                                                   "direction's key (k_ao) is bad_mac "
                                                                   "(vector session/other-direction)")
async def other_direction(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.BAD_MAC, lambda link: link.craft("STATUS", {}, key=link.keys.k_ao),
                        with_re=False)


@case("signatures", "security §3, framing §5 F24", "a frame the endpoint sent, reflected back to it at the seq it "
                                                   "expects, is bad_mac (vector session/reflected)")
async def reflected(opts: Options) -> None:
    async with open_link(opts) as link:
        data = link.frame(m.Ping(data=b"reflect"))
        await link.send(data)
        pong = await link.ch.receive()  # the endpoint's PONG, seq 0, MAC'd with k_ao
        link.session.decode(pong)
        await link.send(pong)           # checked with k_oa: the MAC fails before the seq is looked at
        await link.expect_error(ErrorCode.BAD_MAC, re=None)


@case("signatures", "signing §4.2, framing §5 F8", "a signed frame from a third key inside a session is "
                                                   "bad_signature, without re (vector session/third-key)")
async def third_key(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.BAD_SIGNATURE,
                        lambda link: link.craft("STATUS", {}, identity=Identity.generate(), signed=True),
                        with_re=False)


@case("signatures", "signing §4.2, framing §5 F13", "a signed frame by the session's key naming another 'from' is "
                                                    "wrong_sender (vector session/lying-from)")
async def lying_from(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.WRONG_SENDER,
                        lambda link: link.craft("STATUS", {}, sender=Identity.generate().public, signed=True),
                        with_re=False)


def _echo(link: Link) -> dict:
    """A READY body echoing the endpoint's answering HELLO."""
    assert link.peer_hello is not None
    return {"echo": link.peer_hello.msg.nonce}


@case("signatures", "handshake §3.4, framing §5 F8", "a READY signed by another key than the HELLO's is "
                                                     "bad_signature (vector hs/ready-other-key)")
async def ready_other_key(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.BAD_SIGNATURE,
                        lambda link: link.craft("READY", _echo(link), identity=Identity.generate()),
                        after="hello", with_re=False)


@case("signatures", "handshake §3.4, framing §5 F13", "a READY signed by the opener's key but naming another "
                                                      "'from' is wrong_sender (vector hs/ready-lying-from)")
async def ready_lying_from(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.WRONG_SENDER,
                        lambda link: link.craft("READY", _echo(link), sender=Identity.generate().public),
                        after="hello", with_re=False)
