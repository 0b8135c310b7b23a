"""Sans-IO Gelato handshake (HELLO / HELLO / READY) and the established session.

The opener sends HELLO; the answerer replies with its own HELLO echoing the opener's nonce;
the opener finishes with READY echoing the answerer's nonce. Handshake frames carry no sid/seq.
Afterwards every frame carries ``sid = SHA-256(opener_nonce || answerer_nonce || opener_key ||
answerer_key)`` and a per-direction ``seq`` starting at 0. The caller owns the clock (``now``)
and the handshake timeout; this module only judges bytes.

Handshake frames come from a peer nobody has authenticated yet, so they are decoded under
`codec.preauth_limits` (frame size `preauth_frame_size`, short arrays and maps, shallow nesting):
what an unauthenticated peer can make the decoder allocate is a small multiple of that frame size.
"""
from __future__ import annotations

import enum
import hashlib
import os
from typing import Any, Callable

import attrs

from galaxynode.gelato.codec import (DEFAULT_LIMITS, PREAUTH_FRAME_SIZE, Frame, Limits, decode_envelope,
                                     encode_frame, now_ms, parse_message, preauth_limits)
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import Hello, Ready
from galaxynode.identity import Identity

SUPPORTED_VERSIONS = (1,)


class State(enum.Enum):
    START = "start"
    HELLO_SENT = "hello_sent"        # opener, waiting for the answerer's HELLO
    AWAIT_READY = "await_ready"      # answerer, waiting for READY
    ESTABLISHED = "established"
    FAILED = "failed"


def derive_sid(opener_nonce: bytes, answerer_nonce: bytes, opener_key: bytes, answerer_key: bytes) -> bytes:
    return hashlib.sha256(opener_nonce + answerer_nonce + opener_key + answerer_key).digest()


@attrs.define
class Session:
    """An established session: stamps sid/seq on outgoing frames and enforces them on incoming."""

    identity: Identity
    peer_key: bytes
    peer_hello: Hello
    sid: bytes
    opener: bool
    limits: Limits = DEFAULT_LIMITS
    send_seq: int = 0
    recv_seq: int = 0

    def encode(self, msg: Any, *, ts: int | None = None) -> bytes:
        data = encode_frame(self.identity, msg, sid=self.sid, seq=self.send_seq, ts=ts, limits=self.limits)
        self.send_seq += 1
        return data

    def decode(self, data: Any, *, now: int | None = None) -> Frame:
        """Verify and sequence a frame. Envelope errors are fatal; a bad body (unknown type,
        invalid fields) is not, and its seq is still consumed."""
        frame = decode_envelope(data, self.limits, expected_key=self.peer_key, now=now)
        if frame.sid is None and frame.type == "ERROR" and self.recv_seq == 0:
            # The answerer refused our READY: its sessionless ERROR (signed by the peer) is its last word.
            return parse_message(frame)
        if frame.sid != self.sid:
            raise ProtocolError(ErrorCode.WRONG_SID, "frame does not belong to this session", frame.id)
        if frame.seq != self.recv_seq:
            what = "replayed" if frame.seq < self.recv_seq else "skipped"
            raise ProtocolError(ErrorCode.BAD_SEQUENCE,
                                f"{what} sequence number {frame.seq}, expected {self.recv_seq}", frame.id)
        self.recv_seq += 1
        return parse_message(frame)


class Handshake:
    """One side of the handshake. Feed received frames to `receive`; send what it returns."""

    def __init__(self, identity: Identity, *, opener: bool, network: str, role: str,
                 pinned_key: bytes | None = None, agent: str = "", features: tuple[str, ...] = (),
                 listen: tuple[str, ...] = (), versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 limits: Limits = DEFAULT_LIMITS, clock: Callable[[], int] = now_ms,
                 nonce: bytes | None = None, preauth_frame_size: int = PREAUTH_FRAME_SIZE):
        self.identity = identity
        self.opener = opener
        self.network = network
        self.role = role
        self.pinned_key = pinned_key
        self.agent, self.features, self.listen, self.versions = agent, features, listen, versions
        self.limits = limits  # the session's; handshake frames are judged by the tighter preauth_limits
        self.preauth_limits = preauth_limits(limits, preauth_frame_size)
        self.clock = clock
        self.nonce = nonce if nonce is not None else os.urandom(32)
        self.state = State.START
        self.peer_hello: Hello | None = None
        self.peer_key: bytes | None = None
        self.session: Session | None = None

    def _hello(self, echo: bytes | None) -> bytes:
        msg = Hello(network=self.network, role=self.role, nonce=self.nonce, versions=self.versions,
                    features=self.features, agent=self.agent, listen=self.listen, echo=echo)
        return encode_frame(self.identity, msg, ts=self.clock(), limits=self.limits)

    def initiate(self) -> bytes:
        """Opener only: the first HELLO."""
        if not self.opener or self.state is not State.START:
            raise RuntimeError("initiate() is for an opener that has not started")
        self.state = State.HELLO_SENT
        return self._hello(None)

    def receive(self, data: Any) -> bytes | None:
        """Process one frame from the peer; returns a frame to send, if any. Any ProtocolError
        ends the handshake (state FAILED), even one whose code is non-fatal within a session."""
        try:
            return self._receive(data)
        except ProtocolError:
            self.state = State.FAILED
            raise

    def _receive(self, data: Any) -> bytes | None:
        if self.state in (State.ESTABLISHED, State.FAILED) or (self.opener and self.state is State.START):
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"no handshake frame expected in state {self.state.value}")
        frame = decode_envelope(data, self.preauth_limits, expected_key=self.peer_key, now=self.clock())
        expected = "READY" if self.state is State.AWAIT_READY else "HELLO"
        if frame.type != expected or frame.sid is not None:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"expected {expected} without sid during the handshake, got {frame.type}", frame.id)
        msg = parse_message(frame).msg
        if self.state is State.AWAIT_READY:
            if msg.echo != self.nonce:
                raise ProtocolError(ErrorCode.BAD_NONCE, "READY does not echo our nonce", frame.id)
            return self._establish(opener_nonce=self.peer_hello.nonce, answerer_nonce=self.nonce)
        self._check_hello(frame, msg)
        if self.opener:
            if msg.echo != self.nonce:
                raise ProtocolError(ErrorCode.BAD_NONCE, "HELLO does not echo our nonce", frame.id)
            reply = encode_frame(self.identity, Ready(echo=msg.nonce), ts=self.clock(), limits=self.limits)
            self._establish(opener_nonce=self.nonce, answerer_nonce=msg.nonce)
            return reply
        if msg.echo is not None:
            raise ProtocolError(ErrorCode.BAD_NONCE, "an opening HELLO must not carry echo", frame.id)
        self.state = State.AWAIT_READY
        return self._hello(msg.nonce)

    def _check_hello(self, frame: Frame, msg: Hello) -> None:
        if msg.network != self.network:
            raise ProtocolError(ErrorCode.NETWORK_MISMATCH,
                                f"peer is on network {msg.network!r}, we are on {self.network!r}", frame.id)
        if frame.sender == self.identity.public:
            raise ProtocolError(ErrorCode.SELF_CONNECTION, "peer has our own key", frame.id)
        if self.pinned_key is not None and frame.sender != self.pinned_key:
            raise ProtocolError(ErrorCode.PINNED_KEY_MISMATCH, "peer key does not match the pinned key", frame.id)
        if not set(msg.versions) & set(self.versions):
            raise ProtocolError(ErrorCode.NO_COMMON_VERSION,
                                f"peer speaks {list(msg.versions)}, we speak {list(self.versions)}", frame.id)
        if msg.nonce == self.nonce:
            raise ProtocolError(ErrorCode.BAD_NONCE, "peer reused our nonce", frame.id)
        self.peer_hello, self.peer_key = msg, frame.sender

    def _establish(self, *, opener_nonce: bytes, answerer_nonce: bytes) -> None:
        keys = (self.identity.public, self.peer_key) if self.opener else (self.peer_key, self.identity.public)
        sid = derive_sid(opener_nonce, answerer_nonce, *keys)
        self.session = Session(self.identity, self.peer_key, self.peer_hello, sid, self.opener, self.limits)
        self.state = State.ESTABLISHED
        return None

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED
