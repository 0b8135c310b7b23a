"""The suite's client side: one WebSocket connection to the endpoint under test, driven by hand.

Cases must send what a well-behaved client never would (text messages, replays, frames of other
sessions, forged signatures and MACs), so this drives the sans-IO codec and Session directly over a
transport Channel instead of going through net.client.connect. The handshake and key schedule are
done here step by step (handshake §6), so a case can hold the derived keys and misuse them. Every
frame the endpoint sends back is decoded strictly, so a malformed, badly signed or badly MAC'd reply
fails the case that received it.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
import ssl
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Callable

import attrs
import msgpack

from galaxynode import __version__
from galaxynode.gelato import messages as m
from galaxynode.gelato import keys
from galaxynode.gelato.codec import (ID_LEN, VERSION, Frame, Limits, MacKey, decode_frame, encode_frame,
                                     mac_payload, now_ms, sign_payload)
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Session
from galaxynode.identity import Identity
from galaxynode.net.tls import client_context
from galaxynode.net.transport import Channel, ChannelClosed, open_channel

AGENT = f"galaxynode-conformance/{__version__}"
ANY = object()  # expect_error(re=ANY): do not check re


class CaseFailed(Exception):
    """The endpoint did not do what the spec requires: what was expected and what came back."""

    def __init__(self, expected: str, got: str):
        super().__init__(f"expected {expected}, got {got}")
        self.expected = expected
        self.got = got


class CaseInfo(Exception):
    """Nothing to judge: the endpoint does not do what the spec allows (a MAY), e.g. no rate limit."""


class CaseSkipped(Exception):
    """The case cannot run against this endpoint (missing vectors, a lease longer than we wait)."""


class Banned(Exception):
    """The endpoint refuses us with temporarily_banned: no later case can run."""


@attrs.frozen
class Options:
    url: str
    network: str
    role: str = "pool"
    timeout: float = 10.0             # per case (plus the case's own waiting)
    handshake_timeout: float = 12.0   # the endpoint must time a silent handshake out within this
    max_frame_size: int = 1024 * 1024  # the endpoint's; a frame one byte larger must be refused
    max_wait: float = 10.0            # longest lease or descriptor lifetime a case waits out
    flood: int = 5000                 # frames sent to look for a rate limit
    budget: float = 1000.0            # the endpoint's heartbeat budget, HEARTBEAT/s (limits §6)
    vectors: str | None = None        # protocol/vectors directory
    ca_file: str | None = None        # wss://: also trust the CA certificates in this PEM file (--ca)


@functools.lru_cache(maxsize=4)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """One context per CA file for the whole run (cases open hundreds of connections)."""
    return client_context(ca_file) if ca_file else None


def describe(frame: Frame | None) -> str:
    """A received frame in one line, for 'got: ...'."""
    if frame is None:
        return "nothing"
    if frame.type == "ERROR":
        e = frame.msg
        return f"ERROR {e.name} ({e.code}){': ' + e.message if e.message else ''}"
    return frame.type


def error_name(code: int) -> str:
    try:
        return f"{ErrorCode(code).name.lower()} ({code})"
    except ValueError:
        return str(code)


def raw_payload(payload: dict) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def sign(identity: Identity, payload: bytes) -> bytes:
    """A frame around hand-built payload bytes (no size check: oversized frames are a case too)."""
    return sign_payload(identity, payload, limits=_NO_LIMIT)


_NO_LIMIT = Limits(max_frame_size=1 << 62)


def maced(key: bytes, payload: bytes) -> bytes:
    """A session frame around hand-built payload bytes, MAC'd with `key` (no size check)."""
    return mac_payload(MacKey(key), payload, limits=_NO_LIMIT)


def frame_id(data: bytes) -> bytes:
    """The id of a frame we built ourselves (signed or session), without authenticating it."""
    _, payload, _ = msgpack.unpackb(data)
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)["id"]


@attrs.frozen
class Keys:
    """Our copy of a session's key schedule (handshake §6), computed here step by step."""

    shared: bytes
    sid: bytes
    k_oa: bytes   # opener -> answerer: what we (the opener) MAC with
    k_ao: bytes   # answerer -> opener: what the endpoint MACs with


class Link:
    """One connection to the endpoint; `session` is set once `handshake()` has run."""

    def __init__(self, channel: Channel, identity: Identity, opts: Options):
        self.ch = channel
        self.identity = identity
        self.opts = opts
        self.session: Session | None = None
        self.keys: Keys | None = None
        self.nonce = b""
        self.eph_secret, self.eph = b"", b""
        self.clock_offset = 0  # the endpoint's clock minus ours, from its signed HELLO's ts
        self.peer_hello: Frame | None = None
        self.pushed: list[Frame] = []  # EVENTs and other pushes seen while waiting for replies

    # --- sending -----------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        await self.ch.send(data)

    async def send_text(self, text: str) -> None:
        # The Channel interface sends binary messages only, on purpose; a probe needs text too.
        await self.ch._ws.send_message(text)

    def frame(self, msg: Any, **kw: Any) -> bytes:
        """A session frame for msg with the next seq (or a signed frame without a session)."""
        if self.session is None:
            return encode_frame(self.identity, msg, **kw)
        return self.session.encode(msg, **kw)

    def craft(self, msg_type: str, body: dict, *, identity: Identity | None = None, sender: bytes | None = None,
              seq: Any = ANY, ts: int | None = None, frame_id: bytes | None = None, extra: dict | None = None,
              signed: bool | None = None, key: bytes | None = None) -> tuple[bytes, bytes]:
        """A hand-built frame: (frame bytes, frame id). In a session a session frame (header type, id,
        seq; `seq` defaults to the next, None leaves it out) MAC'd with `key` (default: our send key);
        else, or with signed=True, a signed frame (type, id, ts, from) by `identity` naming `sender`.
        Does not advance the session's send seq: call `consume()`."""
        fid = frame_id or os.urandom(ID_LEN)
        if signed is None:
            signed = self.session is None
        if signed:
            identity = identity or self.identity
            payload: dict[str, Any] = {"type": msg_type, "id": fid, "ts": now_ms() if ts is None else ts,
                                       "from": sender if sender is not None else identity.public}
        else:
            assert self.session is not None and self.keys is not None
            payload = {"type": msg_type, "id": fid}
            if seq is not None:
                payload["seq"] = self.session.send_seq if seq is ANY else seq
        payload.update(extra or {})
        payload["body"] = body
        data = raw_payload(payload)
        if signed:
            return sign(identity, data), fid
        return maced(key if key is not None else self.keys.k_oa, data), fid

    def consume(self) -> None:
        assert self.session is not None
        self.session.send_seq += 1

    # --- receiving ---------------------------------------------------------------------------
    async def receive(self) -> Frame:
        """The next frame, strictly decoded and (in a session) sequenced. A ban (ERROR
        temporarily_banned: before the handshake, or right after it for a banned address or key)
        raises Banned: no later case could run."""
        data = await self.ch.receive()
        try:
            frame = self.session.decode(data) if self.session is not None else decode_frame(data)
        except ProtocolError as e:
            raise CaseFailed("a valid frame from the endpoint", f"one failing our decoder: {e}") from None
        if frame.type == "ERROR" and frame.msg.code == ErrorCode.TEMPORARILY_BANNED:
            raise Banned(frame.msg.message)
        return frame

    async def receive_or_close(self) -> Frame | int:
        """The next frame, or the close code if the endpoint closed instead."""
        try:
            return await self.receive()
        except ChannelClosed as e:
            return e.code

    async def reply(self, frame_id: bytes) -> Frame:
        """The frame answering frame_id (body `re`); PINGs are answered, pushes kept in `pushed`."""
        while True:
            got = await self.receive_or_close()
            if isinstance(got, int):
                raise CaseFailed("a reply", f"the connection closed (code {got})")
            if got.type == "PING":
                await self.send(self.frame(m.Pong(data=got.msg.data)))
                continue
            if getattr(got.msg, "re", None) == frame_id:
                return got
            if got.type == "ERROR" and got.msg.code in _FATAL:
                raise CaseFailed("a reply", describe(got))
            self.pushed.append(got)

    async def request(self, msg: Any) -> Frame:
        data = self.frame(msg)
        await self.send(data)
        return await self.reply(frame_id(data))

    async def call(self, msg: Any, reply_type: str) -> Any:
        """Request and require a reply of reply_type; returns its message."""
        got = await self.request(msg)
        if got.type != reply_type:
            raise CaseFailed(f"{reply_type} to {msg.TYPE}", describe(got))
        return got.msg

    async def refused(self, msg: Any, code: ErrorCode, *, also: tuple[ErrorCode, ...] = ()) -> Frame:
        """Request msg and require ERROR code (or one of `also`) with re = its id."""
        data = self.frame(msg)
        await self.send(data)
        fid = frame_id(data)
        return await self.expect_error(code, re=fid, also=also, closes=code.fatal, reply_to=fid)

    async def expect_error(self, code: ErrorCode, *, re: Any = ANY, closes: bool | None = None,
                           also: tuple[ErrorCode, ...] = (), reply_to: bytes | None = None) -> Frame:
        """The next frame must be ERROR `code` (errors §1): with its stable name, `re` as given
        (None: absent), and for a fatal code followed by the close (handshake §10.2)."""
        want = (code, *also)
        expected = " or ".join(f"ERROR {error_name(c)}" for c in want)
        while True:
            got = await self.receive_or_close()
            if isinstance(got, int):
                raise CaseFailed(expected, f"the connection closed (code {got}) without ERROR")
            if got.type == "PING":
                await self.send(self.frame(m.Pong(data=got.msg.data)))
                continue
            if reply_to is None or got.type == "ERROR" or getattr(got.msg, "re", None) == reply_to:
                break
            self.pushed.append(got)  # an EVENT or the like, not the answer
        if got.type != "ERROR" or got.msg.code not in want:
            raise CaseFailed(expected, describe(got))
        err = got.msg
        stable = ErrorCode(err.code).name.lower()
        if err.name != stable:
            raise CaseFailed(f"ERROR code {err.code} named {stable!r} (errors §4)", f"name {err.name!r}")
        if re is not ANY and err.re != re:
            raise CaseFailed(f"ERROR re = {re.hex() if re else 'absent'}",
                             f"re = {err.re.hex() if err.re else 'absent'}")
        if closes if closes is not None else ErrorCode(err.code).fatal:
            await self.expect_close(f"the close after ERROR {stable}")
        return got

    async def expect_close(self, what: str = "the close") -> int:
        """Nothing more may arrive; returns the close code."""
        got = await self.receive_or_close()
        if not isinstance(got, int):
            raise CaseFailed(what, describe(got))
        return got

    async def ping(self, data: bytes | None = None) -> None:
        """PING/PONG round trip: proves the session is alive and in step."""
        data = data if data is not None else os.urandom(8)
        frame = self.frame(m.Ping(data=data))
        await self.send(frame)
        while True:
            got = await self.receive_or_close()
            if isinstance(got, int):
                raise CaseFailed("PONG (the session to continue)", f"the connection closed (code {got})")
            if got.type == "PING":
                await self.send(self.frame(m.Pong(data=got.msg.data)))
            elif got.type == "PONG":
                if got.msg.data != data:
                    raise CaseFailed(f"PONG echoing {data.hex()}", f"PONG with {got.msg.data!r}")
                return
            elif got.type == "ERROR":
                raise CaseFailed("PONG (the session to continue)", describe(got))
            else:
                self.pushed.append(got)

    # --- handshake ---------------------------------------------------------------------------
    def hello(self, **kw: Any) -> tuple[bytes, bytes]:
        """Our opening HELLO (fields overridable) with a fresh nonce and ephemeral key: (frame, id)."""
        self.nonce = kw.pop("nonce", None) or os.urandom(32)
        self.eph_secret, self.eph = keys.ephemeral(kw.pop("eph_secret", None))
        fields = dict(network=self.opts.network, role="probe", nonce=self.nonce, eph=self.eph, versions=(VERSION,),
                      agent=AGENT)
        fields.update(kw)
        ts = fields.pop("ts", None)
        data = encode_frame(self.identity, m.Hello(**fields), ts=ts)
        return data, frame_id(data)

    async def answer(self) -> Frame:
        """The endpoint's answering HELLO; a refusal (ERROR) fails the case."""
        got = await self.receive_or_close()
        if isinstance(got, int):
            raise CaseFailed("the endpoint's HELLO", f"the connection closed (code {got})")
        if got.type != "HELLO":
            raise CaseFailed("the endpoint's HELLO", describe(got))
        self.peer_hello = got
        self.clock_offset = got.ts - now_ms()
        return got

    def peer_now(self) -> int:
        """The endpoint's clock now, as its HELLO showed it (session frames carry no ts, framing §3.6):
        good to the handshake's round trip, plenty for judging lease and descriptor times."""
        return now_ms() + self.clock_offset

    async def exchange_hellos(self, **kw: Any) -> Frame:
        """Send our opening HELLO (fields as for `hello`) and return the endpoint's answering HELLO."""
        data, _ = self.hello(**kw)
        await self.send(data)
        return await self.answer()

    async def handshake(self, role: str = "probe", **hello: Any) -> Session:
        """HELLO / HELLO / READY, then the key schedule. Deliberately lenient about the answer (case
        'handshake' checks it), so one defect does not fail every other case."""
        answer = await self.exchange_hellos(role=role, **hello)
        await self.send(encode_frame(self.identity, m.Ready(echo=answer.msg.nonce)))
        return self.establish(answer)

    def establish(self, answer: Frame) -> Session:
        """Derive the keys from the endpoint's answering HELLO, as handshake §6 writes them, and open
        the session (we are the opener: we MAC with k_oa, verify with k_ao)."""
        shared = keys.shared_secret(self.eph_secret, answer.msg.eph)
        sid = hashlib.sha256(self.nonce + answer.msg.nonce + self.identity.public + answer.sender
                             + self.eph + answer.msg.eph).digest()
        prk = hmac.digest(sid, shared, "sha256")
        k_oa = hmac.digest(prk, b"gelato/v2 opener->answerer\x01", "sha256")
        k_ao = hmac.digest(prk, b"gelato/v2 answerer->opener\x01", "sha256")
        self.keys = Keys(shared, sid, k_oa, k_ao)
        self.session = Session(self.identity, answer.sender, answer.msg, sid, True, MacKey(k_oa), MacKey(k_ao),
                               limits=Limits(max_frame_size=2 * self.opts.max_frame_size + 4096))
        return self.session


_FATAL = frozenset(int(c) for c in ErrorCode if c.fatal)


# A main net dials an announced pool's first endpoint back and lists it only if the announcing key
# answers there (peering §7.10). So a role-pool link to a main net answers at a listener of its own,
# with its key, on `listen_host` (loopback: the suite and the main net on one host); descriptors of
# that key name its URL (cases_discovery.descriptor).
LISTEN_HOST = "127.0.0.1"
LISTENING: dict[bytes, str] = {}


@asynccontextmanager
async def answering(identity: Identity, opts: Options) -> AsyncIterator[str]:
    """A Gelato listener with `identity`'s key for the duration of the block; yields its URL."""
    import trio
    from galaxynode.net.server import Server
    server = Server(identity, network=opts.network, role="pool", listen_urls=(f"ws://{LISTEN_HOST}:0",))
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(server.run))[0]
        LISTENING[identity.public] = url
        try:
            yield url
        finally:
            LISTENING.pop(identity.public, None)
            await server.shutdown()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_link(opts: Options, identity: Identity | None = None, *, handshake: bool = True,
                    role: str = "probe") -> AsyncIterator[Link]:
    """A connection with a fresh key (unless given), after the handshake unless handshake=False.
    A role-pool link to a main net also answers at its own listener (LISTENING)."""
    identity = identity or Identity.generate()
    async with AsyncExitStack() as stack:
        if role == "pool" and opts.role == "mainnet" and identity.public not in LISTENING:
            await stack.enter_async_context(answering(identity, opts))
        ch = await stack.enter_async_context(open_channel(opts.url, max_message_size=opts.max_frame_size * 2 + 4096,
                                                          connect_timeout=opts.timeout, close_timeout=1.0,
                                                          ssl_context=_ssl_context(opts.ca_file)))
        link = Link(ch, identity, opts)
        if handshake:
            await link.handshake(role)
        yield link



STAGES = ("connect", "hello", "handshake")


async def refused_frame(opts: Options, code: ErrorCode, build: Callable[[Link], tuple[bytes, bytes | None]], *,
                        after: str = "handshake", with_re: bool = True, closes: bool | None = None) -> Frame:
    """The shape of many cases: a fresh link brought to a stage, one frame sent, ERROR `code` required.
    `after`: "connect" (the frame is the first one sent), "hello" (our HELLO is sent and the endpoint's
    answer taken, in `link.peer_hello`) or "handshake" (inside a session). `build(link)` returns the
    frame and its id; the ERROR must carry that id as `re`, or no `re` at all if with_re=False.
    `closes` as for `Link.expect_error`."""
    assert after in STAGES, after
    async with open_link(opts, handshake=after == "handshake") as link:
        if after == "hello":
            await link.exchange_hellos()
        frame, fid = build(link)
        await link.send(frame)
        return await link.expect_error(code, re=fid if with_re else None, closes=closes)
