"""The WebSocket carrier on real loopback sockets: messages, subprotocol, limits, timeouts, TLS."""
from __future__ import annotations

import datetime
import gc
import ssl
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from galaxynode.gelato import messages as m
from galaxynode.identity import Identity
from galaxynode.net import Server, connect
from galaxynode.net.transport import (ChannelClosed, LimitExceeded, open_channel, parse_url, raise_single,
                                      serve_channels)

LIMIT = 64 * 1024


@pytest.fixture(autouse=True)
def collect_garbage():
    """Leaked sockets warn (ResourceWarning, an error here) only when collected: collect now."""
    yield
    gc.collect()


async def echo(channel):
    try:
        while True:
            msg = await channel.receive()
            if msg == b"close please":
                await channel.close(4000, "as you wish")
                return
            await channel.send(msg.encode() if isinstance(msg, str) else msg)
    except ChannelClosed:
        pass


@asynccontextmanager
async def serving(handler=echo, **kw):
    kw.setdefault("max_message_size", LIMIT)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_channels, handler, "127.0.0.1", 0, **kw))
        yield bound[0][1]
        nursery.cancel_scope.cancel()


def channel(port, *, scheme="ws", **kw):
    kw.setdefault("max_message_size", 4 * LIMIT)
    kw.setdefault("connect_timeout", 5)
    return open_channel(f"{scheme}://127.0.0.1:{port}/", **kw)


def test_parse_url():
    assert parse_url("ws://h:1/p?q=1") == (False, "h", 1, "/p?q=1")
    assert parse_url("wss://h") == (True, "h", 7447, "/")  # Gelato's port, not HTTPS's
    assert parse_url("ws://[::1]:5") == (False, "::1", 5, "/")
    for bad in ("http://h:1", "ws://:1", "ws://h:99999", "h:1"):
        with pytest.raises(ValueError):
            parse_url(bad)


async def test_binary_roundtrip_and_text_passed_up_as_str():
    async with serving() as port, channel(port) as ch:
        assert ch.remote == f"127.0.0.1:{port}" and ch.host == "127.0.0.1"
        for size in (0, 1, 5000, LIMIT):
            await ch.send(b"x" * size)
            assert await ch.receive() == b"x" * size
        await ch._ws.send_message("hi")  # the interface has no text send; the server echoes bytes
        assert await ch.receive() == b"hi"


async def test_server_sees_text_as_str():
    got = []

    async def record(ch):
        got.append(await ch.receive())

    async with serving(record) as port, channel(port) as ch:
        await ch._ws.send_message("text")
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
    assert got == ["text"]


async def test_close_code_and_reason_reach_the_peer():
    async with serving() as port, channel(port) as ch:
        await ch.send(b"close please")
        with pytest.raises(ChannelClosed) as e:
            await ch.receive()
        assert (e.value.code, e.value.reason) == (4000, "as you wish")
        assert ch.closed
        with pytest.raises(ChannelClosed):
            await ch.send(b"more")


async def test_oversized_message_closes_1009():
    async with serving() as port, channel(port) as ch:
        await ch.send(b"x" * (LIMIT + 100))
        with pytest.raises(ChannelClosed) as e:
            await ch.receive()
        assert e.value.code == 1009


async def test_client_limit_applies_to_what_it_receives():
    async with serving(max_message_size=4 * LIMIT) as port, channel(port, max_message_size=1000) as ch:
        await ch.send(b"x" * 2000)
        with pytest.raises(ChannelClosed) as e:
            await ch.receive()
        assert e.value.code == 1009


async def test_wrong_subprotocol_is_rejected():
    async with serving() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                                  b"Sec-WebSocket-Protocol: chat\r\n\r\n")
            reply = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some():
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")
        assert b"gelato.v1" in reply


async def test_garbage_http_and_silent_sockets_are_dropped():
    """Garbage is answered 400 and closed at once; a silent socket and a request that never ends are
    closed when the handshake deadline passes, and reported as upgrade timeouts (the caller's hook)."""
    timeouts: list[str] = []

    async def exchange(data: bytes) -> bytes:
        reply = b""
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(data)
            while chunk := await stream.receive_some():  # until the server hangs up
                reply += chunk
        return reply

    async with serving(handshake_timeout=0.2, on_upgrade_timeout=timeouts.append) as port:
        with trio.fail_after(30):  # sanity only: a socket the server never closes fails, not hangs
            assert (await exchange(b"\x00\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            assert timeouts == []
            assert await exchange(b"") == b""
            assert timeouts == ["127.0.0.1"]
            assert await exchange(b"GET / HTTP/1.1\r\nHost: x\r\n") == b""  # headers never end
            assert timeouts == ["127.0.0.1"] * 2


async def test_max_streams_closes_extra_sockets_at_once():
    async def hold(ch):
        await trio.sleep_forever()

    async with serving(hold, max_streams=1) as port, channel(port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            with trio.fail_after(5):
                assert await stream.receive_some() == b""


async def test_handler_exception_is_contained():
    async def boom(ch):
        raise RuntimeError("handler bug")

    async with serving(boom) as port:
        for _ in range(2):
            with pytest.raises(ChannelClosed):
                async with channel(port) as ch:
                    await ch.receive()


async def test_connect_refused_and_timeouts_raise_channel_closed():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener:  # accepts in the kernel backlog, never answers the upgrade
        with trio.fail_after(5), pytest.raises(ChannelClosed, match="timed out") as e:
            async with channel(port, connect_timeout=0.2):
                pass
        assert e.value.code == 1006
    with pytest.raises(ChannelClosed, match="cannot connect") as e:
        async with channel(port):
            pass
    assert e.value.code == 1006


async def test_server_hanging_up_during_upgrade_is_reported_at_once():
    async def hang_up(stream):
        await stream.receive_some()
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(2), pytest.raises(ChannelClosed, match="during the WebSocket upgrade"):
            async with channel(port, connect_timeout=30):
                pass
        nursery.cancel_scope.cancel()


async def test_body_exceptions_are_not_wrapped_in_groups():
    async with serving() as port:
        with pytest.raises(KeyError):
            async with channel(port):
                raise KeyError("mine")


async def test_server_closing_first_leaks_no_socket():
    async def close_at_once(ch):
        await ch.close(1000)

    async with serving(close_at_once) as port:
        for _ in range(3):
            async with channel(port) as ch:
                with pytest.raises(ChannelClosed):
                    await ch.receive()
    gc.collect()


def test_raise_single():
    with pytest.raises(ValueError):
        raise_single(ExceptionGroup("g", [ExceptionGroup("h", [ValueError()])]))
    with pytest.raises(ExceptionGroup):
        raise_single(ExceptionGroup("g", [ValueError(), KeyError()]))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (server context, client context)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return server, client


async def test_wss_roundtrip(tls):
    server_ctx, client_ctx = tls
    async with serving(ssl_context=server_ctx) as port:
        async with channel(port, scheme="wss", ssl_context=client_ctx) as ch:
            await ch.send(b"secret")
            assert await ch.receive() == b"secret"
        with pytest.raises(ChannelClosed, match="failed"):  # default context: self-signed is refused
            async with channel(port, scheme="wss"):
                pass


async def test_gelato_session_over_wss(tls, identity_a, identity_b):
    """The whole stack over TLS; a client that does not trust the certificate gets a typed error."""
    async def ack(conn, frame):
        return m.Ack(re=frame.id)
    server_ctx, client_ctx = tls
    server = Server(identity_a, network="t", listen_urls=("wss://127.0.0.1:0",), ssl_context=server_ctx,
                    handler_factory=lambda conn: ack)
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(server.run)
        assert url.startswith("wss://127.0.0.1:")
        async with connect(url, identity_b, network="t", ssl_context=client_ctx) as conn:
            assert conn.peer_key == identity_a.public
            assert (await conn.request(m.Status(), timeout=5)).type == "ACK"
        with pytest.raises(ChannelClosed):
            async with connect(url, Identity.generate(), network="t", connect_timeout=5):
                pass
        nursery.cancel_scope.cancel()


# --- frame guard: every WebSocket frame counts, pre-auth limits ----------------------------------

class Budget:
    def __init__(self, frames):
        self.left = frames

    def take(self, n, now):
        if n <= self.left:
            self.left -= n
            return True
        return False


async def receive_until_breach(ch, got, *, authenticate=False, budget=None):
    if authenticate:
        ch.authenticated()
    if budget is not None:
        ch.frame_budget = budget
    try:
        while True:
            got.append(await ch.receive())
    except LimitExceeded as e:
        got.append(e)
        await ch.close()  # the breach's close code by default


async def test_a_frame_budget_breach_stops_reading_and_closes_with_its_code():
    got = []
    async with serving(partial(receive_until_breach, got=got, authenticate=True, budget=Budget(5))) as port, \
            channel(port) as ch:
        for i in range(4):  # control frames count (unsolicited PONGs: nothing waits for an answer)
            await ch._ws.pong(b"%d" % i)
        with pytest.raises(ChannelClosed) as e:  # sending or then receiving
            for _ in range(5):
                await ch.send(b"m")
            await ch.receive()
        assert e.value.code == 1008
    *messages, breach = got
    assert breach.limit == "frame_rate" and messages == [b"m"]  # 5 frames: 4 PONGs, 1 message


async def test_preauth_frames_and_message_size():
    got = []
    async with serving(partial(receive_until_breach, got=got), preauth_frames=4) as port, channel(port) as ch:
        for _ in range(6):
            await ch.send(b"x")
        with pytest.raises(ChannelClosed):
            await ch.receive()
    assert got[:4] == [b"x"] * 4 and got[4].limit == "frame_rate"
    got.clear()
    async with serving(partial(receive_until_breach, got=got), preauth_message_size=100) as port, \
            channel(port) as ch:
        await ch.send(b"y" * 101)
        with pytest.raises(ChannelClosed) as e:
            await ch.receive()
        assert e.value.code == 1009
    assert got[0].limit == "frame_size"


async def test_preauth_size_holds_the_handshake_messages_only():
    """The answerer's peer sends HELLO and READY before the session: a session frame pipelined right
    behind them is held to the full size however the reads fall."""
    got = []

    async def two_then_authenticate(ch):
        got.extend([await ch.receive(), await ch.receive()])
        ch.authenticated()
        got.append(await ch.receive())
    async with serving(two_then_authenticate, preauth_message_size=100) as port, channel(port) as ch:
        await ch.send(b"a" * 100)
        await ch.send(b"b" * 100)
        await ch.send(b"c" * 5000)
        with trio.fail_after(5):
            while len(got) < 3:
                await trio.sleep(0.01)
    assert [len(x) for x in got] == [100, 100, 5000]
