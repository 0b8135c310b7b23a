"""The server under abuse, on real loopback sockets. In every test a well-behaved client is
connected throughout and keeps getting its replies while others misbehave."""
from __future__ import annotations

import gc
from contextlib import asynccontextmanager

import msgpack
import pytest
import trio

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Limits, decode_frame, encode_frame
from galaxynode.gelato.errors import ErrorCode
from galaxynode.gelato.handshake import Handshake
from galaxynode.identity import Identity
from galaxynode.net import (Bans, ChannelClosed, RemoteError, Server, SessionClosed, SessionLimits, connect, establish,
                            open_channel)

NET = "test"
SERVER_LIMITS = SessionLimits(handshake_timeout=1.0, close_timeout=0.5, frame_rate=100, frame_burst=20,
                              pool_frame_rate=100, pool_frame_burst=300,
                              codec=Limits(max_frame_size=8192), byte_rate=20_000, byte_burst=16_384)
CLIENT_LIMITS = SessionLimits(close_timeout=0.5, codec=Limits(max_frame_size=8192), byte_burst=16_384)


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


async def handler(conn, frame):
    return m.Ack(re=frame.id)


@asynccontextmanager
async def pool(identity, good_identity, **kw):
    """A running Server plus a well-behaved client chatting with it the whole time:
    yields (server, url). On exit, checks the good client was served throughout."""
    kw.setdefault("limits", SERVER_LIMITS)
    kw.setdefault("handler_factory", lambda conn: handler)
    server = Server(identity, network=NET, **kw)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(server.run)
        async with connect(urls[0], good_identity, network=NET, limits=CLIENT_LIMITS) as good:
            served = 0

            async def chatter():
                nonlocal served
                while True:
                    assert (await good.request(m.Status(), timeout=5)).type == "ACK"
                    served += 1
                    await trio.sleep(0.01)
            async with trio.open_nursery() as chat:
                chat.start_soon(chatter)
                yield server, urls[0]
                before = served
                with trio.fail_after(5):
                    while served < before + 3:
                        await trio.sleep(0.01)
                chat.cancel_scope.cancel()
            assert not good.closed and good.remote_error is None
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw(url, identity=None, role="probe"):
    """A bare channel, after a real handshake when identity is given: yields (channel, session)."""
    async with open_channel(url, max_message_size=2**22, connect_timeout=5) as ch:
        session = None
        if identity is not None:
            session = await establish(ch, identity, opener=True, network=NET, role=role, limits=CLIENT_LIMITS)
        yield ch, session


async def drain(ch, session):
    """Everything the server sends until it closes: (frames, close code)."""
    frames = []
    with trio.fail_after(5):
        try:
            while True:
                data = await ch.receive()
                frames.append(session.decode(data) if session else decode_frame(data))
        except ChannelClosed as e:
            return frames, e.code


async def eventually(predicate):
    """Server-side bookkeeping finishes after the client has seen the close."""
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.01)


def errors(frames):
    return [ErrorCode(f.msg.code) for f in frames if f.type == "ERROR"]


# --- abuse -------------------------------------------------------------------------------------

async def test_text_frame_gets_error_1003_and_close(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url), raw(url, identity_c) as (ch, session):
        await ch._ws.send_message("hello")  # the Channel interface cannot send text on purpose
        frames, code = await drain(ch, session)
        assert errors(frames) == [ErrorCode.TEXT_FRAME] and code == 1003


async def test_oversized_message_closes_1009(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url), raw(url, identity_c) as (ch, session):
        await ch.send(b"\x93" + b"x" * 9000)
        frames, code = await drain(ch, session)
        assert code == 1009


async def test_garbage_gets_malformed_and_close(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url):
        async with raw(url, identity_c) as (ch, session):
            await ch.send(b"\xc1 not msgpack")
            frames, code = await drain(ch, session)
            assert errors(frames) == [ErrorCode.MALFORMED_FRAME] and code == 1008
        async with raw(url) as (ch, _):  # before the handshake, too
            await ch.send(b"\x00\x01\x02")
            frames, code = await drain(ch, None)
            assert errors(frames) == [ErrorCode.MALFORMED_FRAME] and code == 1008
        await eventually(lambda: server.stats.violations == 2)


async def test_forged_mac_and_foreign_key_are_fatal(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url):
        async with raw(url, identity_c) as (ch, session):
            data = bytearray(session.encode(m.Status()))
            data[-1] ^= 1  # the MAC is the last 16 bytes
            await ch.send(bytes(data))
            frames, code = await drain(ch, session)
            assert errors(frames) == [ErrorCode.BAD_MAC] and code == 1008
        async with raw(url, identity_c) as (ch, session):  # a frame MAC'd for another live session
            async with raw(url, Identity.generate()) as (_, other):
                await ch.send(other.encode(m.Status()))
                frames, code = await drain(ch, session)
                assert errors(frames) == [ErrorCode.BAD_MAC]
        async with raw(url, identity_c) as (ch, session):  # a frame signed by another key inside the session
            await ch.send(encode_frame(identity_b, m.Status()))
            frames, code = await drain(ch, session)
            assert errors(frames) == [ErrorCode.BAD_SIGNATURE]
        await eventually(lambda: server.stats.violations == 3)


async def test_hello_inside_a_live_session_is_unexpected_message(identity_a, identity_b, identity_c):
    """Issue 14 item 7: a HELLO (or READY) inside a session is one error, unexpected_message, fatal."""
    async with pool(identity_a, identity_b) as (server, url), raw(url, identity_c) as (ch, session):
        await ch.send(Handshake(identity_c, opener=True, network=NET, role="probe").initiate())
        frames, code = await drain(ch, session)
        assert errors(frames) == [ErrorCode.UNEXPECTED_MESSAGE] and code == 1008


async def test_a_peer_offering_only_v1_is_refused_with_unsupported_version(identity_a, identity_b, identity_c):
    """Issue 16 item 2: v1 is dropped but the negotiation is real. A HELLO offering [1] only, and a
    v1 frame altogether, are refused with unsupported_version naming what we speak; neither is abuse.
    A v1 client cannot read our v2 ERROR, so the WebSocket close reason says it too."""
    async with pool(identity_a, identity_b) as (server, url):
        async with raw(url) as (ch, _):
            await ch.send(Handshake(identity_c, opener=True, network=NET, role="node", versions=(1,)).initiate())
            frames, code = await drain(ch, None)
            assert errors(frames) == [ErrorCode.UNSUPPORTED_VERSION]
            assert "peer offers [1], we speak [2]" in frames[0].msg.message
        async with raw(url) as (ch, _):
            hello = msgpack.unpackb(Handshake(identity_c, opener=True, network=NET, role="node").initiate())[1]
            await ch.send(msgpack.packb([1, hello, identity_c.sign(b"gelato/v1\0" + hello)]))  # a v1 HELLO
            with trio.fail_after(5):
                error = decode_frame(await ch.receive())
                assert error.msg.code == ErrorCode.UNSUPPORTED_VERSION
                assert "frame version 1 not supported; we speak [2]" in error.msg.message
                with pytest.raises(ChannelClosed) as closed:
                    await ch.receive()
            assert "we speak [2]" in closed.value.reason
        await eventually(lambda: server.stats.handshake_failed == 2)
        assert server.stats.violations == 0


async def test_replayed_frame_is_fatal(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url), raw(url, identity_c) as (ch, session):
        data = session.encode(m.Status())
        await ch.send(data)
        await ch.send(data)
        frames, code = await drain(ch, session)
        assert [f.type for f in frames] == ["ACK", "ERROR"]
        assert errors(frames) == [ErrorCode.BAD_SEQUENCE] and frames[1].msg.re is not None and code == 1008


async def test_unfinished_handshake_times_out(identity_a, identity_b):
    async with pool(identity_a, identity_b) as (server, url), raw(url) as (ch, _):
        frames, code = await drain(ch, None)
        assert errors(frames) == [ErrorCode.HANDSHAKE_TIMEOUT] and code == 1008
        await eventually(lambda: server.stats.handshake_failed == 1)


async def test_flooding_is_rate_limited_then_banned(identity_a, identity_b, identity_c):
    """In-session abuse bans the key, not the address: another key from the same host still gets in."""
    bans = Bans(violations_before_ban=2, ban_seconds=60)
    async with pool(identity_a, identity_b, bans=bans) as (server, url):
        for round in range(2):
            async with raw(url, identity_c) as (ch, session):
                try:
                    for _ in range(200):
                        await ch.send(session.encode(m.Status()))
                except ChannelClosed:
                    pass
                frames, code = await drain(ch, session)
                assert errors(frames) == [ErrorCode.RATE_LIMITED] and code == 1008
                assert 15 <= len(frames) - 1 <= 200
                await eventually(lambda: server.stats.violations == round + 1)
        assert server.stats.bans == 1 and bans.key_banned(identity_c.public, trio.current_time())
        async with connect(url, identity_c, network=NET, limits=CLIENT_LIMITS) as conn:
            with pytest.raises(SessionClosed) as e:
                await conn.request(m.Status(), timeout=5)
        assert isinstance(e.value.error, RemoteError) and e.value.error.code is ErrorCode.TEMPORARILY_BANNED
        assert server.stats.refused_banned == 1
        async with connect(url, Identity.generate(), network=NET, limits=CLIENT_LIMITS) as conn:
            assert (await conn.request(m.Status(), timeout=5)).type == "ACK"


async def test_a_pool_role_claim_alone_gets_the_node_frame_bucket(identity_a, identity_b, identity_c):
    """HELLO role "pool" is a claim (peering §9.2): without the peering policy's grant, frame_burst."""
    async with pool(identity_a, identity_b) as (server, url):
        async with raw(url, identity_c, role="pool") as (ch, session):
            try:
                for _ in range(60):  # over frame_burst 20
                    await ch.send(session.encode(m.Status()))
            except ChannelClosed:
                pass
            frames, code = await drain(ch, session)
            assert errors(frames) == [ErrorCode.RATE_LIMITED]


def _granting(conn):
    """A handler factory standing in for the peering policy: every session is an accepted peer."""
    conn.grant_peer_frames()
    return handler


async def test_accepted_peer_sessions_get_the_pool_frame_bucket(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b, handler_factory=_granting) as (server, url):
        async with raw(url, identity_c, role="pool") as (ch, session):
            for _ in range(60):  # over frame_burst 20, within pool_frame_burst 300 (and the byte burst)
                await ch.send(session.encode(m.Status()))
            with trio.fail_after(5):
                for _ in range(60):
                    got = session.decode(await ch.receive())
                    assert got.type == "ACK", got.msg
        async with raw(url, identity_c, role="pool") as (ch, session):
            try:
                for _ in range(400):
                    await ch.send(session.encode(m.Status()))
            except ChannelClosed:
                pass
            frames, code = await drain(ch, session)
            assert errors(frames) == [ErrorCode.RATE_LIMITED]


async def test_byte_flood_is_rate_limited(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url), raw(url, identity_c) as (ch, session):
        big = m.Event(topic="t", event_id=bytes(16), origin=bytes(32), ts=0, data={"x": "y" * 7000})
        try:
            for _ in range(5):  # 5 x 7 KB within a 16 KB burst at 20 KB/s
                await ch.send(session.encode(big))
        except ChannelClosed:
            pass
        frames, code = await drain(ch, session)
        assert errors(frames) == [ErrorCode.RATE_LIMITED]


async def test_max_connections(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b, max_connections=2) as (server, url):
        async with connect(url, identity_c, network=NET, limits=CLIENT_LIMITS):
            assert server.active == 2
            with pytest.raises(RemoteError) as e:
                async with connect(url, Identity.from_seed(b"d" * 32), network=NET, limits=CLIENT_LIMITS):
                    pass
            assert e.value.code is ErrorCode.TOO_MANY_CONNECTIONS
            assert server.stats.refused_full == 1 and server.stats.violations == 0
        await eventually(lambda: server.active == 1)
        async with connect(url, identity_c, network=NET, limits=CLIENT_LIMITS) as conn:
            assert (await conn.request(m.Status(), timeout=5)).type == "ACK"


async def test_many_abusers_at_once(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b, max_connections=100) as (server, url):
        async def abuse(kind):
            async with raw(url, None if kind == "silent" else Identity.generate()) as (ch, session):
                if kind == "garbage":
                    await ch.send(b"\xc1")
                elif kind == "text":
                    await ch._ws.send_message("x")
                await drain(ch, session)
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(abuse, ("garbage", "text", "silent")[i % 3])
        await eventually(lambda: server.stats.violations == 30)


async def test_second_session_with_same_key_replaces_first(identity_a, identity_b, identity_c):
    async with pool(identity_a, identity_b) as (server, url):
        async with connect(url, identity_c, network=NET, limits=CLIENT_LIMITS) as first:
            async with connect(url, identity_c, network=NET, limits=CLIENT_LIMITS) as second:
                with trio.fail_after(5):
                    await first.wait_closed()
                assert first.remote_error.code is ErrorCode.DUPLICATE_SESSION
                assert (await second.request(m.Status(), timeout=5)).type == "ACK"
                assert server.connections[identity_c.public].session.sid == second.session.sid


async def test_failing_handler_factory_is_contained(identity_a, identity_b, identity_c):
    def factory(conn):
        if conn.peer_key == identity_c.public:
            raise RuntimeError("factory bug")
        return handler

    async with pool(identity_a, identity_b, handler_factory=factory) as (server, url):
        async with connect(url, identity_c, network=NET, limits=CLIENT_LIMITS) as conn:
            with pytest.raises(SessionClosed):
                await conn.request(m.Status(), timeout=5)


async def test_shutdown_says_so_and_stops(identity_a, identity_b):
    server = Server(identity_a, network=NET, limits=SERVER_LIMITS, handler_factory=lambda c: handler)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(server.run)
        async with connect(urls[0], identity_b, network=NET, limits=CLIENT_LIMITS) as conn:
            await eventually(lambda: list(server.connections) == [identity_b.public])
            with trio.fail_after(5):
                await server.shutdown()
                await conn.wait_closed()
            assert conn.remote_error.code is ErrorCode.SHUTTING_DOWN
    assert server.connections == {} and server.active == 0


def test_wss_needs_a_context(identity_a):
    with pytest.raises(ValueError, match="ssl_context"):
        Server(identity_a, network=NET, listen_urls=["wss://127.0.0.1:0"])
    with pytest.raises(ValueError):
        Server(identity_a, network=NET, listen_urls=["http://x"])
