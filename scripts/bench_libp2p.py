#!/usr/bin/env python3
"""py-libp2p as a peer baseline for scripts/bench_session.py: Noise + Yamux over TCP, on trio.

One stream, fixed-size messages (bench_session.FRAME_SIZE bytes): one-way (the server counts bytes
and answers a 1-byte ack when it has them all) and request/reply (the server echoes each message,
`window` of them in flight). Optional: `pip install -e .[bench]` (libp2p==0.8.1); `available()` says
why not when it is absent, and bench_session skips the row with that one line.

The server runs in a process of its own (bench_session.py --serve libp2p); the client lives in the
caller's trio run, so its one-way and request/reply runs interleave with ours (A B A B).
"""
from __future__ import annotations

import importlib.util
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import trio

PROTOCOL = "/galaxynode-bench/1.0.0"
ACK = b"\x01"


def available() -> str | None:
    """None if py-libp2p can be imported, else why not (one line)."""
    if importlib.util.find_spec("libp2p") is None:
        return "py-libp2p not installed (pip install -e .[bench])"
    return None


def _host() -> Any:
    """A host that speaks only Noise (security) and Yamux (muxer), as the issue's baseline."""
    from libp2p import create_yamux_muxer_option, new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE, Transport as NoiseTransport

    key_pair = create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519().private_key)
    return new_host(key_pair=key_pair, sec_opt={NOISE: noise}, muxer_opt=create_yamux_muxer_option())


async def _read_exactly(stream: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise EOFError("stream closed")
        buf += chunk
    return buf


async def serve(ready: Callable[[str], None], size: int) -> None:
    """Listen on 127.0.0.1; a stream whose first byte is b"s" is a sink (count, then ack every `n`
    bytes announced in an 8-byte header), b"e" an echo of `size`-byte messages."""
    import multiaddr

    host = _host()

    async def handler(stream: Any) -> None:
        try:
            kind = await _read_exactly(stream, 1)
            if kind == b"e":
                while True:
                    await stream.write(await _read_exactly(stream, size))
            else:
                while True:
                    want = int.from_bytes(await _read_exactly(stream, 8), "big")
                    got = 0
                    while got < want:
                        chunk = await stream.read(min(65536, want - got))
                        if not chunk:
                            return
                        got += len(chunk)
                    await stream.write(ACK)
        except Exception:  # the client went away: the stream's end, whichever way it shows
            pass

    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        host.set_stream_handler(PROTOCOL, handler)
        ready(str(host.get_addrs()[0]))
        await trio.sleep_forever()


class Client:
    """One connection, two streams (sink and echo), and fresh connections for the connect latency."""

    kinds = ("one_way", "req_rep", "handshake")  # what bench_session.interleaved measures with it

    def __init__(self, addr: str, size: int, window: int, dials: int):
        self.addr, self.size, self.window, self.dials = addr, size, window, dials
        self.message = bytes(size)

    @asynccontextmanager
    async def open(self) -> AsyncIterator["Client"]:
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        self.info = info_from_p2p_addr(multiaddr.Multiaddr(self.addr))
        host = _host()
        async with host.run(listen_addrs=[]):
            await host.connect(self.info)
            self.sink = await host.new_stream(self.info.peer_id, [PROTOCOL])
            await self.sink.write(b"s")
            self.echo = await host.new_stream(self.info.peer_id, [PROTOCOL])
            await self.echo.write(b"e")
            yield self

    async def one_way(self, n: int) -> float:
        start = time.perf_counter()
        await self.sink.write((n * self.size).to_bytes(8, "big"))
        for _ in range(n):
            await self.sink.write(self.message)
        if await _read_exactly(self.sink, 1) != ACK:
            raise RuntimeError("libp2p sink did not acknowledge")
        return time.perf_counter() - start

    async def req_rep(self, n: int) -> float:
        window = trio.Semaphore(self.window)

        async def sender() -> None:
            for _ in range(n):
                await window.acquire()
                await self.echo.write(self.message)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for _ in range(n):
                await _read_exactly(self.echo, self.size)
                window.release()
        return time.perf_counter() - start

    async def connect(self) -> float:
        """A fresh host dialling the server: TCP, multistream, Noise XX, Yamux (host start included)."""
        host = _host()
        start = time.perf_counter()
        async with host.run(listen_addrs=[]):
            await host.connect(self.info)
            took = time.perf_counter() - start
        return took
