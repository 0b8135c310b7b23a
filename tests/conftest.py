"""Shared fixtures. Identities are fixed seeds (reproducible failures); all are session-scoped and
immutable, so hypothesis tests may use them too."""
from __future__ import annotations

import pytest

from galaxynode.gelato.handshake import Handshake, Session
from galaxynode.identity import Identity


def establish(opener: Identity, answerer: Identity, *, network: str = "test", **kw) -> tuple[Session, Session]:
    """Drive a full in-memory handshake; returns (opener's session, answerer's session).
    Extra keyword arguments go to both Handshake constructors."""
    a = Handshake(opener, opener=True, network=network, role="pool", **kw)
    b = Handshake(answerer, opener=False, network=network, role="pool", **kw)
    hello = a.initiate()
    ready = a.receive(b.receive(hello))
    assert b.receive(ready) is None
    assert a.session is not None and b.session is not None
    return a.session, b.session


@pytest.fixture(scope="session")
def identity_a() -> Identity:
    return Identity.from_seed(bytes([0xA1]) * 32)


@pytest.fixture(scope="session")
def identity_b() -> Identity:
    return Identity.from_seed(bytes([0xB2]) * 32)


@pytest.fixture(scope="session")
def identity_c() -> Identity:
    return Identity.from_seed(bytes([0xC3]) * 32)


@pytest.fixture(scope="session")
def session_pair():
    """Factory `session_pair(opener, answerer, **handshake_kw) -> (opener_session, answerer_session)`."""
    return establish
