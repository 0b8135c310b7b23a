"""Signatures (signing §2, §4): which key verifies which frame, and that nothing unsigned or signed
by a third key gets in, before or after the handshake."""
from __future__ import annotations

from functools import partial

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import Options, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity

case("signatures", "signing §4.1, framing §5 F12",
     "a first frame whose signature does not verify with its 'from' is bad_signature "
     "(invalid.json F12 vectors)")(partial(vectors.reject_first_frames, step="F12"))


@case("signatures", "signing §4.2, framing §5 F8", "a session frame with a corrupted signature is bad_signature, "
                                                   "without re")
async def corrupted(opts: Options) -> None:
    async with open_link(opts) as link:
        data = bytearray(link.frame(m.Status()))
        data[-1] ^= 1  # the signature is the last 64 bytes
        await link.send(bytes(data))
        await link.expect_error(ErrorCode.BAD_SIGNATURE, re=None)


@case("signatures", "signing §4.2, framing §5 F8", "a session frame signed by a third key (its own 'from', the "
                                                   "live sid and seq) is bad_signature (vector session/third-key)")
async def third_key(opts: Options) -> None:
    async with open_link(opts) as link:
        frame, _ = link.craft("STATUS", {}, identity=Identity.generate())
        await link.send(frame)
        await link.expect_error(ErrorCode.BAD_SIGNATURE, re=None)


@case("signatures", "signing §4.2, framing §5 F13", "a session frame signed by the session key but naming another "
                                                    "'from' is wrong_sender (vector session/lying-from)")
async def lying_from(opts: Options) -> None:
    async with open_link(opts) as link:
        frame, _ = link.craft("STATUS", {}, sender=Identity.generate().public)
        await link.send(frame)
        await link.expect_error(ErrorCode.WRONG_SENDER, re=None)


@case("signatures", "handshake §3.4, framing §5 F8", "a READY signed by another key than the HELLO's is "
                                                     "bad_signature (vector hs/ready-other-key)")
async def ready_other_key(opts: Options) -> None:
    async with open_link(opts, handshake=False) as link:
        hello, _ = link.hello()
        await link.send(hello)
        answer = await link.answer()
        frame, _ = link.craft("READY", {"echo": answer.msg.nonce}, identity=Identity.generate())
        await link.send(frame)
        await link.expect_error(ErrorCode.BAD_SIGNATURE, re=None)


@case("signatures", "handshake §3.4, framing §5 F13", "a READY signed by the opener's key but naming another "
                                                      "'from' is wrong_sender (vector hs/ready-lying-from)")
async def ready_lying_from(opts: Options) -> None:
    async with open_link(opts, handshake=False) as link:
        hello, _ = link.hello()
        await link.send(hello)
        answer = await link.answer()
        frame, _ = link.craft("READY", {"echo": answer.msg.nonce}, sender=Identity.generate().public)
        await link.send(frame)
        await link.expect_error(ErrorCode.WRONG_SENDER, re=None)
