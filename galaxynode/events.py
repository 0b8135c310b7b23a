"""The event bus: dotted topics, wildcard subscriptions, bounded per-subscriber queues.

`publish` is synchronous and never waits: a subscriber that cannot keep up loses its oldest
events (counted) or is disconnected, by its own choice. Patterns: `*` matches one segment,
`#` or `**` as the last segment matches the rest (zero or more segments).
"""
from __future__ import annotations

import collections
import os
import re
import time
from typing import Any, Iterable, Mapping

import attrs
import trio

_TOPIC = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
MAX_TOPIC = 128
OVERFLOW_POLICIES = ("drop_oldest", "disconnect")


def validate_topic(topic: str) -> None:
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC or not _TOPIC.match(topic):
        raise ValueError(f"invalid topic {topic!r}: dotted segments of [a-z0-9_-], at most {MAX_TOPIC} characters")


def validate_pattern(pattern: str) -> tuple[str, ...]:
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_TOPIC:
        raise ValueError(f"invalid pattern {pattern!r}")
    parts = tuple(pattern.split("."))
    for i, part in enumerate(parts):
        if part in ("#", "**"):
            if i != len(parts) - 1:
                raise ValueError(f"invalid pattern {pattern!r}: {part} only as the last segment")
        elif part != "*" and not re.fullmatch(r"[a-z0-9_-]+", part):
            raise ValueError(f"invalid pattern {pattern!r}: bad segment {part!r}")
    return parts


def _matches(parts: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    for i, p in enumerate(parts):
        if p in ("#", "**"):
            return True
        if i >= len(topic) or (p != "*" and p != topic[i]):
            return False
    return len(parts) == len(topic)


@attrs.frozen
class Event:
    topic: str
    data: Mapping[str, Any]
    id: bytes
    ts: int
    origin: bytes | None = None  # key of the pool where it happened; None: here
    hops: int = 0


class Subscription:
    """One subscriber's bounded queue. Iterate with `async for`; ends when closed."""

    def __init__(self, bus: "EventBus", patterns: tuple[tuple[str, ...], ...], queue_size: int, overflow: str):
        self._bus = bus
        self.patterns = patterns
        self.queue_size = queue_size
        self.overflow = overflow
        self._queue: collections.deque[Event] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.delivered = 0
        self.dropped = 0
        self.closed = False
        self.disconnected = False

    def _offer(self, event: Event) -> None:
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            self._bus.dropped += 1
            if self.overflow == "disconnect":
                self.disconnected = True
                self.close()
                return
            self._queue.popleft()
        self._queue.append(event)
        self._lot.unpark_all()

    async def receive(self) -> Event:
        while not self._queue:
            if self.closed:
                raise trio.EndOfChannel
            await self._lot.park()
        self.delivered += 1
        return self._queue.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._remove(self)
            self._lot.unpark_all()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Exact-topic subscriptions are found by dict lookup; wildcard ones are scanned (few)."""

    def __init__(self, *, queue_size: int = 1024, origin: bytes | None = None):
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self.queue_size = queue_size
        self.origin = origin
        self._exact: dict[str, set[Subscription]] = {}
        self._wild: set[Subscription] = set()
        self.published = 0
        self.dropped = 0

    validate_pattern = staticmethod(validate_pattern)

    @property
    def subscribers(self) -> int:
        return len(self._wild) + len({s for subs in self._exact.values() for s in subs})

    def subscribe(self, patterns: Iterable[str], *, queue_size: int | None = None,
                  overflow: str = "drop_oldest") -> Subscription:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}")
        parsed = tuple(validate_pattern(p) for p in patterns)
        if not parsed:
            raise ValueError("at least one pattern is needed")
        size = self.queue_size if queue_size is None else queue_size
        if size < 1:
            raise ValueError("queue_size must be positive")
        sub = Subscription(self, parsed, size, overflow)
        for parts in parsed:
            if any(p in ("*", "#", "**") for p in parts):
                self._wild.add(sub)
            else:
                self._exact.setdefault(".".join(parts), set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        self._wild.discard(sub)
        for parts in sub.patterns:
            topic = ".".join(parts)
            subs = self._exact.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._exact[topic]

    def publish(self, topic: str, data: Mapping[str, Any] | None = None, *, event_id: bytes | None = None,
                origin: bytes | None = None, ts: int | None = None, hops: int = 0) -> Event:
        validate_topic(topic)
        event = Event(topic, dict(data or {}), event_id or os.urandom(16),
                      ts if ts is not None else time.time_ns() // 1_000_000, origin, hops)
        self.published += 1
        targets = set(self._exact.get(topic, ()))
        if self._wild:
            split = tuple(topic.split("."))
            targets.update(s for s in self._wild if any(_matches(p, split) for p in s.patterns))
        for sub in targets:
            sub._offer(event)
        return event
