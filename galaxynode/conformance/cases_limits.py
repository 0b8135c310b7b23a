"""Limits (limits §1, §3; overview §3.3; handshake §9.3): the frame size bound, exactly, and the
rate limit a receiver may enforce."""
from __future__ import annotations

import os

import trio

from galaxynode.conformance.probe import CaseFailed, CaseInfo, Link, Options, describe, open_link
from galaxynode.conformance.runner import case
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.net.transport import ChannelClosed


def _ping_of_size(link: Link, size: int, data: bytes) -> bytes:
    """A valid session PING of exactly `size` bytes, padded with an unknown body key."""
    pad = max(0, size - 200)
    for _ in range(3):
        frame, _ = link.craft("PING", {"data": data, "pad": b"\0" * pad})
        if len(frame) == size:
            return frame
        pad += size - len(frame)
    raise AssertionError(f"cannot build a frame of {size} bytes")


@case("limits", "limits §1, framing §4.1", "a frame of exactly --max-frame-size bytes is accepted")
async def at_max_frame_size(opts: Options) -> None:
    async with open_link(opts) as link:
        data = os.urandom(8)
        await link.send(_ping_of_size(link, opts.max_frame_size, data))
        link.consume()
        got = await link.receive()
        if got.type != "PONG" or got.msg.data != data:
            raise CaseFailed(f"PONG to a PING of {opts.max_frame_size} bytes", describe(got))


@case("limits", "overview §3.3, framing §5 F2", "a frame one byte over --max-frame-size is refused: close 1009, "
                                                "or ERROR frame_too_large and the close")
async def over_max_frame_size(opts: Options) -> str:
    async with open_link(opts) as link:
        try:
            await link.send(_ping_of_size(link, opts.max_frame_size + 1, b""))
        except ChannelClosed:
            pass  # closed while we were still sending: the close code tells
        got = await link.receive_or_close()
        if isinstance(got, int):
            if got != 1009:
                raise CaseFailed("close code 1009 (message too big)", f"close code {got}")
            return "WebSocket close 1009"
        if got.type != "ERROR" or got.msg.code != ErrorCode.FRAME_TOO_LARGE:
            raise CaseFailed("close 1009 or ERROR frame_too_large", describe(got))
        await link.expect_close("the close after ERROR frame_too_large")
        return "ERROR frame_too_large"


@case("limits", "handshake §9.3, limits §3", "a flood of --flood PINGs is either served or ended with ERROR "
                                             "rate_limited and the close (informational if no limit is met)",
      level="MAY", wait=lambda o: o.flood / 200)  # a busy endpoint answers at its own pace (200 PINGs/s here)
async def flood(opts: Options) -> str:
    async with open_link(opts) as link:
        pongs = 0
        error = None
        closed = None

        async def read() -> None:
            nonlocal pongs, error, closed
            while True:
                got = await link.receive_or_close()
                if isinstance(got, int):
                    closed = got
                    return
                if got.type == "PONG":
                    pongs += 1
                    if pongs == opts.flood:
                        return
                elif got.type == "ERROR":
                    error = got
                    sending.cancel()  # an endpoint that stops reading would leave our send blocked
                else:
                    raise CaseFailed("PONG or ERROR rate_limited", describe(got))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.CancelScope() as sending:
                try:
                    for _ in range(opts.flood):
                        await link.send(link.frame(m.Ping()))
                        if closed is not None:
                            break
                except ChannelClosed:
                    pass
    if error is None and closed is None:
        raise CaseInfo(f"no rate limit met: {pongs} PINGs answered")
    if error is None or error.msg.code != ErrorCode.RATE_LIMITED:
        raise CaseFailed("ERROR rate_limited before the close", describe(error) if error else f"close {closed}")
    if closed is None:
        raise CaseFailed("the close after ERROR rate_limited", "the session went on")
    return f"rate_limited after {pongs} PONGs"
