"""Sans-IO Gelato handshake (HELLO / HELLO / READY) and the established session.

The opener sends HELLO; the answerer replies with its own HELLO echoing the opener's nonce;
the opener finishes with READY echoing the answerer's nonce. These three are Ed25519-signed
frames; each HELLO carries a fresh ephemeral X25519 key. Both sides then derive one MAC key per
direction (keys.py), and every later frame is a session frame: MAC'd under the sender's key, with
a per-direction ``seq`` starting at 0 that must be exactly the next one. The caller owns the clock
(``now``) and the handshake timeout; this module only judges bytes.

Handshake frames come from a peer nobody has authenticated yet, so they are decoded under
`codec.preauth_limits` (frame size `preauth_frame_size`, short arrays and maps, shallow nesting):
what an unauthenticated peer can make the decoder allocate is a small multiple of that frame size.
"""
from __future__ import annotations

import enum
import os
from typing import Any, Callable

import attrs

from galaxynode.gelato.codec import (DEFAULT_LIMITS, HANDSHAKE_TYPES, MAC_LEN, PREAUTH_FRAME_SIZE,
                                     SUPPORTED_VERSIONS, Frame, Limits, MacKey, decode_envelope,
                                     encode_frame, encode_session_frame, now_ms, open_session, open_signed,
                                     parse_message, preauth_limits, split_frame)
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.keys import derive_keys, derive_sid, ephemeral, shared_secret
from galaxynode.gelato.messages import Hello, Ready
from galaxynode.identity import Identity

__all__ = ["SUPPORTED_VERSIONS", "State", "Session", "Handshake", "derive_sid", "derive_keys"]


class State(enum.Enum):
    START = "start"
    HELLO_SENT = "hello_sent"        # opener, waiting for the answerer's HELLO
    AWAIT_READY = "await_ready"      # answerer, waiting for READY
    ESTABLISHED = "established"
    FAILED = "failed"


@attrs.define
class Session:
    """An established session: MACs and numbers outgoing frames, authenticates and sequences
    incoming ones. `sid` is never sent: it salted the keys."""

    identity: Identity
    peer_key: bytes
    peer_hello: Hello
    sid: bytes
    opener: bool
    send_key: MacKey
    recv_key: MacKey
    limits: Limits = DEFAULT_LIMITS
    send_seq: int = 0
    recv_seq: int = 0

    def frame(self, msg: Any, *, frame_id: bytes | None = None) -> bytes:
        """Encode a frame at the current send_seq without taking it (the caller takes it)."""
        return encode_session_frame(self.send_key, msg, seq=self.send_seq, frame_id=frame_id, limits=self.limits)

    def encode(self, msg: Any, *, frame_id: bytes | None = None) -> bytes:
        data = self.frame(msg, frame_id=frame_id)
        self.send_seq += 1
        return data

    def decode(self, data: Any) -> Frame:
        """Authenticate and sequence a frame. Envelope errors are fatal; a bad body (unknown type,
        invalid fields) is not, and its seq is still consumed."""
        payload, auth = split_frame(data, self.limits)
        if len(auth) != MAC_LEN:
            # A signed frame: only the answerer's refusal of our READY (a sessionless ERROR, its
            # last word) can be one, and only before any session frame from it.
            frame = open_signed(payload, auth, len(data), self.limits, expected_key=self.peer_key)
            if frame.type == "ERROR" and self.recv_seq == 0:
                return parse_message(frame)
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"a signed {frame.type} inside a session", frame.id)
        frame = open_session(payload, auth, len(data), self.recv_key, self.limits, sender=self.peer_key, sid=self.sid)
        if frame.seq != self.recv_seq:
            what = "replayed" if frame.seq < self.recv_seq else "skipped"
            raise ProtocolError(ErrorCode.BAD_SEQUENCE,
                                f"{what} sequence number {frame.seq}, expected {self.recv_seq}", frame.id)
        if frame.type in HANDSHAKE_TYPES:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{frame.type} inside a session", frame.id)
        self.recv_seq += 1
        return parse_message(frame)


class Handshake:
    """One side of the handshake. Feed received frames to `receive`; send what it returns."""

    def __init__(self, identity: Identity, *, opener: bool, network: str, role: str,
                 pinned_key: bytes | None = None, agent: str = "", features: tuple[str, ...] = (),
                 listen: tuple[str, ...] = (), versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 limits: Limits = DEFAULT_LIMITS, clock: Callable[[], int] = now_ms,
                 nonce: bytes | None = None, eph_secret: bytes | None = None,
                 preauth_frame_size: int = PREAUTH_FRAME_SIZE):
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
        # Fixed only in test vectors; dropped once the session keys are derived.
        self._eph_secret, self.eph = ephemeral(eph_secret)
        self.state = State.START
        self.peer_hello: Hello | None = None
        self.peer_key: bytes | None = None
        self.session: Session | None = None

    def _hello(self, echo: bytes | None) -> bytes:
        msg = Hello(network=self.network, role=self.role, nonce=self.nonce, eph=self.eph, versions=self.versions,
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
        if frame.type != expected:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"expected {expected} during the handshake, got {frame.type}", frame.id)
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
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"peer offers {list(msg.versions)}, we speak {list(self.versions)}", frame.id)
        if msg.nonce == self.nonce:
            raise ProtocolError(ErrorCode.BAD_NONCE, "peer reused our nonce", frame.id)
        if msg.eph == self.eph:
            raise ProtocolError(ErrorCode.BAD_KEY, "peer reused our ephemeral key", frame.id)
        self.peer_hello, self.peer_key = msg, frame.sender

    def _establish(self, *, opener_nonce: bytes, answerer_nonce: bytes) -> None:
        assert self.peer_key is not None and self.peer_hello is not None and self._eph_secret is not None
        shared = shared_secret(self._eph_secret, self.peer_hello.eph)
        self._eph_secret = None
        own, peer = (self.identity.public, self.eph), (self.peer_key, self.peer_hello.eph)
        (opener_key, opener_eph), (answerer_key, answerer_eph) = (own, peer) if self.opener else (peer, own)
        sid = derive_sid(opener_nonce, answerer_nonce, opener_key, answerer_key, opener_eph, answerer_eph)
        k_oa, k_ao = derive_keys(shared, sid)
        send, recv = (k_oa, k_ao) if self.opener else (k_ao, k_oa)
        self.session = Session(self.identity, self.peer_key, self.peer_hello, sid, self.opener,
                               MacKey(send), MacKey(recv), self.limits)
        self.state = State.ESTABLISHED
        return None

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED
