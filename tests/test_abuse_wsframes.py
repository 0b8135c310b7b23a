"""Issue 12 item 4: CPU exhaustion below the rate limiter (live pool, default settings).

Seen before: empty WebSocket continuation frames (6 M in 60 s on one connection) held the pool at
100% CPU and honest connect+JOIN went from 28 ms to 2.8-4.1 s; the session ended as idle_timeout,
not a violation. A PING flood did the same. Now the transport charges every WebSocket frame (data,
continuation, empty or not, PING, PONG, CLOSE) to the session's frame bucket (limits.frame_rate=200/s,
frame_burst=400; before READY a fixed 16 frames): past it the pool stops reading the socket, sends
ERROR rate_limited and closes, a violation.

The attacker is a raw WebSocket client (wsproto) from 127.0.0.8 that does a real Gelato handshake
(the project's sans-IO Handshake) and then floods, reconnecting with a fresh key each time; the
honest client is tests/abuse.py's, from 127.0.0.1. Bounds (2 shared cores): each flooding session
is closed with ERROR rate_limited within 5 s of its first flood frame; honest connect+JOIN while
the flood runs <= 10 x quiet + 200 ms; RSS growth < 40 MiB.
"""
from __future__ import annotations

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request

from galaxynode.gelato.codec import decode_frame
from galaxynode.gelato.errors import ErrorCode
from galaxynode.gelato.handshake import Handshake
from galaxynode.identity import Identity
from galaxynode.net.transport import SUBPROTOCOL, parse_url

from abuse import NETWORK, alive, assert_within, honest_latency, live_pool, rss_mib

ATTACKER = "127.0.0.8"
FACTOR, SLACK, RSS_MIB, CLOSED_WITHIN = 10.0, 0.2, 40.0, 5.0
CHUNK_FRAMES = 10_000   # frames per send_all (about 60 KB of empty masked frames)


class RawWebSocket:
    """A WebSocket client that can send any frame (wsproto over a trio TCP stream)."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[bytes] = []
        self.close_code: int | None = None
        self._parts: list[bytes] = []

    @classmethod
    async def open(cls, url: str) -> "RawWebSocket":
        _, host, port, resource = parse_url(url)
        raw = cls(await trio.open_tcp_stream(host, port, local_address=ATTACKER))
        try:  # cancelled mid-upgrade (the attacker loop is cancelled at any point): no socket left open
            await raw.stream.send_all(raw.ws.send(Request(host=f"{host}:{port}", target=resource,
                                                          subprotocols=[SUBPROTOCOL])))
            while not any(isinstance(e, AcceptConnection) for e in await raw._pump()):
                pass
        except BaseException:
            await trio.aclose_forcefully(raw.stream)
            raise
        return raw

    async def _pump(self) -> list:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        events = list(self.ws.events())
        for e in events:
            if isinstance(e, BytesMessage):
                self._parts.append(e.data)
                if e.message_finished:
                    self.messages.append(b"".join(self._parts))
                    self._parts = []
            elif isinstance(e, CloseConnection) and self.close_code is None:  # (EOF after it: 1006)
                self.close_code = e.code
        if not data:
            raise EOFError
        return events

    async def send_message(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def receive_message(self) -> bytes:
        while not self.messages:
            await self._pump()
        return self.messages.pop(0)

    async def handshake(self) -> Handshake:
        hs = Handshake(Identity.generate(), opener=True, network=NETWORK, role="node")
        await self.send_message(hs.initiate())
        ready = hs.receive(await self.receive_message())
        assert ready is not None and hs.established
        await self.send_message(ready)
        return hs

    async def read_until_closed(self) -> None:
        try:
            while True:
                await self._pump()
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


_CHUNKS: dict[str, bytes] = {}  # made once: masks may repeat, and the test process has the honest client to run


def empty_continuations(ws: WSConnection, n: int) -> tuple[bytes, bytes]:
    """An unfinished binary message, then n empty continuation frames (to repeat)."""
    first = ws.send(BytesMessage(data=b"", message_finished=False))
    if "continuations" not in _CHUNKS:
        _CHUNKS["continuations"] = b"".join(ws.send(BytesMessage(data=b"", message_finished=False)) for _ in range(n))
    return first, _CHUNKS["continuations"]


def empty_pings(ws: WSConnection, n: int) -> tuple[bytes, bytes]:
    if "pings" not in _CHUNKS:
        _CHUNKS["pings"] = b"".join(ws.send(Ping(payload=b"")) for _ in range(n))
    return b"", _CHUNKS["pings"]


async def flood_once(url: str, frames, *, handshake: bool = True) -> tuple[float, int | None, list[int]]:
    """One attacking connection: (handshake), then frames until the pool closes it. Returns the
    seconds from the first flood frame to the close, the close code, and the ERROR codes seen."""
    raw = await RawWebSocket.open(url)
    async with raw.stream:
        hs = await raw.handshake() if handshake else None
        before = len(raw.messages)
        first, chunk = frames(raw.ws, CHUNK_FRAMES)
        started = trio.current_time()
        with trio.move_on_after(30):  # the flood without the defence: bounded here
            async with trio.open_nursery() as nursery:
                async def flood() -> None:
                    try:
                        await raw.stream.send_all(first)
                        while True:
                            await raw.stream.send_all(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                nursery.start_soon(flood)
                await raw.read_until_closed()
                nursery.cancel_scope.cancel()
        took = trio.current_time() - started
    decode = hs.session.decode if hs is not None else decode_frame
    errors = []
    for data in raw.messages[before:]:
        frame = decode(data)
        if frame.type == "ERROR":
            errors.append(frame.msg.code)
    return took, raw.close_code, errors


async def attack_while_honest(url: str, frames) -> tuple[float, list[tuple[float, int | None, list[int]]]]:
    """Flooding connections one after another (fresh keys) while the honest client measures."""
    rounds = []
    async with trio.open_nursery() as nursery:
        async def attacker() -> None:
            while True:
                rounds.append(await flood_once(url, frames))
        nursery.start_soon(attacker)
        await trio.sleep(0.5)  # the flood is on
        loaded = await honest_latency(url)
        nursery.cancel_scope.cancel()
    return loaded, rounds


@pytest.mark.parametrize("frames", [empty_continuations, empty_pings], ids=["continuations", "pings"])
async def test_frame_floods_are_rate_limited_violations(tmp_path, frames):
    """A flood of empty continuation frames / of PINGs on an established session: closed with
    ERROR rate_limited (close 1008) within 5 s of its first frame; honest connect+JOIN meanwhile
    <= 10 x quiet + 200 ms; RSS growth < 40 MiB. (Before: 100% CPU, honest 28 ms -> 2.8-4.1 s,
    ended by idle_timeout after 60 s.)"""
    with live_pool(tmp_path) as pool:
        quiet = await honest_latency(pool.url)
        rss0 = rss_mib(pool)
        loaded, rounds = await attack_while_honest(pool.url, frames)
        grown = rss_mib(pool) - rss0
        assert alive(pool)
    print(f"\n{frames.__name__}: honest quiet {quiet * 1000:.1f} ms, under attack {loaded * 1000:.1f} ms; "
          f"{len(rounds)} flooding sessions, closed after {[round(t, 2) for t, _, _ in rounds]} s; "
          f"RSS +{grown:.1f} MiB")
    assert rounds, "no flooding session ended while the honest client measured"
    for took, code, errors in rounds:
        assert errors == [ErrorCode.RATE_LIMITED] and code == 1008
        assert took < CLOSED_WITHIN
    assert_within(quiet, loaded, factor=FACTOR, slack=SLACK)
    assert grown < RSS_MIB, f"RSS grew {grown:.1f} MiB"


async def test_preauth_frames_are_a_fixed_allowance(tmp_path):
    """Before the handshake a peer has 16 WebSocket frames in all (transport.PREAUTH_FRAMES): a PING
    flood instead of HELLO gets ERROR rate_limited and close at once."""
    with live_pool(tmp_path) as pool:
        took, code, errors = await flood_once(pool.url, empty_pings, handshake=False)
        assert alive(pool)
    assert errors == [ErrorCode.RATE_LIMITED] and code == 1008
    assert took < CLOSED_WITHIN
