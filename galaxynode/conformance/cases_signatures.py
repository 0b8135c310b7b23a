"""Signatures (signing §2, §4): which key verifies which frame, and that nothing unsigned or signed
by a third key gets in, before or after the handshake."""
from __future__ import annotations

from functools import partial

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import Link, Options, refused_frame
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
    def corrupt(link: Link) -> tuple[bytes, None]:
        data = bytearray(link.frame(m.Status()))
        data[-1] ^= 1  # the signature is the last 64 bytes
        return bytes(data), None
    await refused_frame(opts, ErrorCode.BAD_SIGNATURE, corrupt, with_re=False)


@case("signatures", "signing §4.2, framing §5 F8", "a session frame signed by a third key (its own 'from', the "
                                                   "live sid and seq) is bad_signature (vector session/third-key)")
async def third_key(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.BAD_SIGNATURE,
                        lambda link: link.craft("STATUS", {}, identity=Identity.generate()), with_re=False)


@case("signatures", "signing §4.2, framing §5 F13", "a session frame signed by the session key but naming another "
                                                    "'from' is wrong_sender (vector session/lying-from)")
async def lying_from(opts: Options) -> None:
    await refused_frame(opts, ErrorCode.WRONG_SENDER,
                        lambda link: link.craft("STATUS", {}, sender=Identity.generate().public), with_re=False)


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
