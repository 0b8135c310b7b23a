"""In-process Gelato endpoints built from galaxynode's own classes, each with one deliberate defect,
so the conformance suite can be shown to fail the right case. Defects are patched in with pytest's
monkeypatch (class attributes, module globals), never by flags in production code.

`endpoint(role)` serves a correct pool or main net on 127.0.0.1; each `break_*` function installs one
defect and returns the ids of the cases that must catch it.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from galaxynode import mainnet, pool
from galaxynode.events import EventBus
from galaxynode.gelato import codec, handshake
from galaxynode.gelato.codec import Limits
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.net import Bans, Server, SessionLimits
from galaxynode.pool import PoolInfo, PoolServices
from galaxynode.registry import LeaseTable, Registry

NETWORK = "conformance-test"
# Fast timeouts and a small frame limit keep a whole suite run short; no bans unless asked for.
LIMITS = SessionLimits(handshake_timeout=1.0, close_timeout=0.5, codec=Limits(max_frame_size=64 * 1024),
                       frame_rate=100, frame_burst=100, byte_burst=64 * 1024)


@asynccontextmanager
async def endpoint(role: str = "pool", bans: Bans | None = None) -> AsyncIterator[str]:
    """A pool (in-memory registry, 1 s minimum lease) or a main net; yields its ws:// URL."""
    identity = Identity.generate()
    bus = EventBus(origin=identity.public)
    if role == "pool":
        registry = Registry(LeaseTable(min_ttl=1, default_ttl=30), None, bus, expiry_interval=0.05)
        services = PoolServices(PoolInfo(identity.public, "broken", NETWORK), registry, bus)
    else:
        registry = await mainnet.open_pool_registry(None, bus, expiry_interval=0.05)
        policy = mainnet.MainnetPolicy(verify_timeout=2.0)  # announced pools are dialled back (peering §7.10)
        services = mainnet.MainnetServices(PoolInfo(identity.public, "broken", NETWORK, role="mainnet"),
                                           registry, bus, policy=policy,
                                           reachability=mainnet.Reachability(identity, network=NETWORK, policy=policy,
                                                                             limits=LIMITS))
    server = Server(identity, network=NETWORK, role=role, limits=LIMITS, bans=bans,
                    handler_factory=lambda conn: services.handler())
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        urls = await nursery.start(server.run)
        yield urls[0]
        nursery.cancel_scope.cancel()


# --- defects -------------------------------------------------------------------------------------

def break_signatures(monkeypatch) -> set[str]:
    """Signed frames are never signature-checked (the suite's own decoder shares the function:
    harmless, the endpoint's frames are genuine). Third-key frames (a signed frame in a session, a
    READY) then fail later, as wrong_sender."""
    monkeypatch.setattr(codec, "verify", lambda key, sig, data: True)
    return {"2.1", "2.6", "2.8"}


class _ReplayingSession(handshake.Session):
    def decode(self, data):
        try:
            frame = codec.decode_session_envelope(data, self.recv_key, self.limits)
        except ProtocolError:
            return super().decode(data)
        if frame.seq < self.recv_seq:
            return codec.parse_message(frame)  # a replay: accepted as if new
        return super().decode(data)


def break_replay(monkeypatch) -> set[str]:
    """Frames with an old seq are accepted again (the answerer's Session comes from handshake.py)."""
    monkeypatch.setattr(handshake, "Session", _ReplayingSession)
    return {"4.1"}


def break_nonce(monkeypatch) -> set[str]:
    """The answering HELLO echoes a random nonce instead of the opener's."""
    original = handshake.Handshake._hello

    def _hello(self, echo):
        return original(self, os.urandom(32) if echo is not None else None)
    monkeypatch.setattr(handshake.Handshake, "_hello", _hello)
    return {"3.1"}


def break_expiry(monkeypatch) -> set[str]:
    """Leases never run out."""
    monkeypatch.setattr(Registry, "expire", lambda self: [])
    return {"7.6"}


class _WrongMacCodeSession(handshake.Session):
    def decode(self, data):
        try:
            return super().decode(data)
        except ProtocolError as e:
            if e.code is ErrorCode.BAD_MAC:
                raise ProtocolError(ErrorCode.BAD_SEQUENCE, e.message, e.ref) from None
            raise


def break_error_code(monkeypatch) -> set[str]:
    """A frame whose MAC fails (corrupted, tampered, the other direction's, reflected, another
    session's, under stale keys) is reported as bad_sequence instead of bad_mac."""
    monkeypatch.setattr(handshake, "Session", _WrongMacCodeSession)
    return {"2.2", "2.3", "2.4", "2.5", "3.4", "4.4"}


def break_join_identity(monkeypatch) -> set[str]:
    """JOIN registers the key named in the body, when there is one, instead of the session's."""
    async def join(self, conn, frame):
        key = frame.body.get("key", conn.peer_key)
        e = await self.s.registry.join(key, capabilities=frame.msg.capabilities, meta=frame.msg.meta,
                                       ttl=frame.msg.ttl)
        return pool.m.Lease(re=frame.id, ttl=e.ttl, expires=e.expires, interval=e.ttl * 1000 // 3)
    monkeypatch.setattr(pool.SessionHandler, "join", join)
    return {"7.10"}


def break_descriptor_signatures(monkeypatch) -> set[str]:
    """The main net registers descriptors without checking their signature."""
    def verify_descriptor(signed, *, now, network=None, **kw):
        desc = mainnet.decode_record(signed.record)
        mainnet_check_current(desc, now=now, network=network)
        return desc
    monkeypatch.setattr(mainnet, "verify_descriptor", verify_descriptor)
    return {"9.3", "9.4"}


def mainnet_check_current(desc, *, now, network) -> None:
    from galaxynode.descriptor import MAX_LIFETIME_MS, MAX_SKEW_MS, _check_current
    _check_current(desc, now=now, network=network, max_lifetime_ms=MAX_LIFETIME_MS, max_skew_ms=MAX_SKEW_MS)


BROKEN = {"signatures": ("pool", break_signatures), "replay": ("pool", break_replay),
          "nonce": ("pool", break_nonce), "expiry": ("pool", break_expiry),
          "error-code": ("pool", break_error_code), "join-identity": ("pool", break_join_identity),
          "descriptor-signatures": ("mainnet", break_descriptor_signatures)}
