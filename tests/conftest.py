"""Shared fixtures. Identities are fixed seeds (reproducible failures); all are session-scoped and
immutable, so hypothesis tests may use them too."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import pytest

from galaxynode.events import Event, EventBus, Subscription, validate_pattern
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


class RecordingBus(EventBus):
    """The real EventBus (matching, bounded queues, topic checks), which also keeps every event it
    published (`history`) and every subscription it made, for tests to assert on."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.history: list[Event] = []
        self._subscriptions: list[Subscription] = []

    def publish(self, topic: str, data: Mapping[str, Any] | None = None, **kw: Any) -> Event:
        event = super().publish(topic, data, **kw)
        self.history.append(event)
        return event

    def subscribe(self, patterns: Iterable[str], **kw: Any) -> Subscription:
        sub = super().subscribe(patterns, **kw)
        self._subscriptions.append(sub)
        return sub

    def topics(self, prefix: str = "") -> list[str]:
        """The topics published so far, in order, that start with prefix."""
        return [e.topic for e in self.history if e.topic.startswith(prefix)]

    def subscribed(self, pattern: str) -> int:
        """How many open subscriptions include exactly this pattern."""
        parts = validate_pattern(pattern)
        return sum(parts in s.patterns for s in self._subscriptions if not s.closed)


@pytest.fixture(scope="session")
def recording_bus():
    """Factory `recording_bus(**EventBus_kw) -> RecordingBus`: a real EventBus that records what it published."""
    return RecordingBus
