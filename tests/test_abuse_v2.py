"""Issue 16 against a live pool process (default settings): Gelato v2 end to end.

An honest node joins over a MAC'd session; a peer offering only version 1 (in a v2 HELLO, or as a v1
frame altogether) is refused with unsupported_version naming what we speak, and that refusal is no
violation; a forged MAC, a frame of another session and a HELLO inside a live session are fatal
(bad_mac, bad_mac, unexpected_message) and leave honest nodes served.
"""
from __future__ import annotations

import msgpack
import pytest
import trio

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import decode_frame
from galaxynode.gelato.errors import ErrorCode
from galaxynode.gelato.handshake import Handshake
from galaxynode.identity import Identity
from galaxynode.net import ChannelClosed, establish, open_channel

from abuse import NETWORK, alive, honest_latency, live_pool


async def refusal(ch, session=None) -> tuple[m.Error, str]:
    """The ERROR the pool sends, and the reason of its WebSocket close."""
    with trio.fail_after(10):
        data = await ch.receive()
        frame = session.decode(data) if session is not None else decode_frame(data)
        assert frame.type == "ERROR", frame
        with pytest.raises(ChannelClosed) as closed:
            await ch.receive()
    return frame.msg, closed.value.reason


@pytest.fixture
def pool(tmp_path):
    with live_pool(tmp_path) as p:
        yield p


async def test_v2_against_a_live_pool(pool):
    url = pool.url
    assert await honest_latency(url, n=2) > 0  # JOIN/LEAVE over a v2 session

    async with open_channel(url, max_message_size=2**20, connect_timeout=10) as ch:  # a HELLO offering [1] only
        await ch.send(Handshake(Identity.generate(), opener=True, network=NETWORK, role="node",
                                versions=(1,)).initiate())
        error, reason = await refusal(ch)
        assert error.code == ErrorCode.UNSUPPORTED_VERSION and "we speak [2]" in error.message

    async with open_channel(url, max_message_size=2**20, connect_timeout=10) as ch:  # a v1 client's HELLO: [1, payload, signature]
        ident = Identity.generate()
        hello = msgpack.unpackb(Handshake(ident, opener=True, network=NETWORK, role="node").initiate())[1]
        await ch.send(msgpack.packb([1, hello, ident.sign(b"gelato/v1\0" + hello)]))
        error, reason = await refusal(ch)
        assert error.code == ErrorCode.UNSUPPORTED_VERSION
        assert "frame version 1 not supported; we speak [2]" in reason  # readable without a v2 decoder

    for attack in ("forged-mac", "other-session", "hello-in-session"):
        async with open_channel(url, max_message_size=2**20, connect_timeout=10) as ch, open_channel(url, max_message_size=2**20, connect_timeout=10) as ch2:
            session = await establish(ch, Identity.generate(), opener=True, network=NETWORK, role="node")
            if attack == "forged-mac":
                data = bytearray(session.encode(m.Status()))
                data[-1] ^= 1
                await ch.send(bytes(data))
                want = ErrorCode.BAD_MAC
            elif attack == "other-session":
                other = await establish(ch2, Identity.generate(), opener=True, network=NETWORK, role="node")
                await ch.send(other.encode(m.Status()))
                want = ErrorCode.BAD_MAC
            else:
                await ch.send(Handshake(session.identity, opener=True, network=NETWORK, role="node").initiate())
                want = ErrorCode.UNEXPECTED_MESSAGE
            error, _ = await refusal(ch, session)
            assert error.code == want, (attack, error)

    assert alive(pool)
    assert await honest_latency(url, n=2) > 0
