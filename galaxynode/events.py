"""The event bus: dotted topics, wildcard subscriptions, bounded per-subscriber queues.

`publish` is synchronous and never waits: a subscriber that cannot keep up loses its oldest
events (counted) or is disconnected, by its own choice. Patterns: `*` matches one segment,
`#` or `**` as the last segment matches the rest (zero or more segments).

Why a trie: remote sessions choose their patterns, so a bus that scans every wildcard pattern
per event lets two sessions with ~95k patterns hold the pool at 100% CPU. Patterns live in a
radix trie of segments instead; publishing walks only the branches its topic can take (the
literal segment and `*` at each level, `#` where it ends a pattern), so an event costs
O(segments x matching branches) whatever the patterns of unrelated subscribers. Chains of
single-child nodes are stored as one edge, so a pattern of 64 one-letter segments costs one
node, not 64. Patterns are added and removed one by one (never by re-subscribing), and they are
counted: per subscription (`max_patterns` of `subscribe`) and on the whole bus (`max_patterns` of
EventBus, the pool-wide cap); past either, `TooManyPatterns` and nothing is added.
"""
from __future__ import annotations

import collections
import os
import re
import time
from typing import Any, Iterable, KeysView, Mapping

import attrs
import trio

_TOPIC = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_SEGMENT = re.compile(r"[a-z0-9_-]+")
MAX_TOPIC = 128
OVERFLOW_POLICIES = ("drop_oldest", "disconnect")
REST = "#"  # `**` is stored as its synonym `#`


def validate_topic(topic: str) -> None:
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC or not _TOPIC.match(topic):
        raise ValueError(f"invalid topic {topic!r}: dotted segments of [a-z0-9_-], at most {MAX_TOPIC} characters")


def validate_pattern(pattern: str) -> tuple[str, ...]:
    """The pattern's segments, `**` returned as `#` (one spelling per pattern, so a subscription
    holding `a.#` also holds `a.**`); ValueError if it cannot be parsed."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_TOPIC:
        raise ValueError(f"invalid pattern {pattern!r}")
    parts = pattern.split(".")
    for i, part in enumerate(parts):
        if part in ("#", "**"):
            if i != len(parts) - 1:
                raise ValueError(f"invalid pattern {pattern!r}: {part} only as the last segment")
            parts[i] = REST
        elif part != "*" and not _SEGMENT.fullmatch(part):
            raise ValueError(f"invalid pattern {pattern!r}: bad segment {part!r}")
    return tuple(parts)


class TooManyPatterns(Exception):
    """Adding the patterns would pass a cap; nothing was added. `pool`: the bus-wide cap (else
    the subscription's own)."""

    def __init__(self, message: str, *, pool: bool):
        super().__init__(message)
        self.pool = pool


@attrs.frozen
class Event:
    topic: str
    data: Mapping[str, Any]
    id: bytes
    ts: int
    origin: bytes | None = None  # key of the pool where it happened; None: here
    hops: int = 0
    signed: Any = None  # the origin's SignedRecord (relayed events), forwarded unaltered to peers


class _Node:
    """A trie node. `label` is the edge from the parent (one or more segments; the parent's
    `children` key is label[0]); `here` holds the subscriptions whose pattern ends at this node,
    `rest` those whose pattern continues with `#`. Containers exist only when non-empty."""

    __slots__ = ("label", "children", "here", "rest")

    def __init__(self, label: tuple[str, ...]):
        self.label = label
        self.children: dict[str, _Node] | None = None
        self.here: set[Subscription] | None = None
        self.rest: set[Subscription] | None = None

    def holds(self, rest: bool) -> set["Subscription"]:
        if rest:
            if self.rest is None:
                self.rest = set()
            return self.rest
        if self.here is None:
            self.here = set()
        return self.here


class _Trie:
    """Patterns (canonical segment tuples) -> subscriptions, matched against topics."""

    def __init__(self) -> None:
        self.root = _Node(())

    @staticmethod
    def _split(parts: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        return (parts[:-1], True) if parts[-1] == REST else (parts, False)

    def add(self, parts: tuple[str, ...], sub: "Subscription") -> None:
        body, rest = self._split(parts)
        node, i = self.root, 0
        while i < len(body):
            if node.children is None:
                node.children = {}
            child = node.children.get(body[i])
            if child is None:
                child = node.children[body[i]] = _Node(body[i:])
                node = child
                break
            label = child.label
            k = 1
            while k < len(label) and i + k < len(body) and label[k] == body[i + k]:
                k += 1
            if k < len(label):  # the pattern leaves (or ends inside) this edge: split it at k
                mid = _Node(label[:k])
                child.label = label[k:]
                mid.children = {label[k]: child}
                node.children[body[i]] = child = mid
            node, i = child, i + k
        node.holds(rest).add(sub)

    def remove(self, parts: tuple[str, ...], sub: "Subscription") -> None:
        body, rest = self._split(parts)
        path = [self.root]
        i = 0
        while i < len(body):
            children = path[-1].children
            child = children.get(body[i]) if children else None
            if child is None or body[i:i + len(child.label)] != child.label:
                return
            path.append(child)
            i += len(child.label)
        node = path[-1]
        subs = node.rest if rest else node.here
        if not subs or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            if rest:
                node.rest = None
            else:
                node.here = None
        # Prune: drop empty leaves, then merge an empty node with its only child, so that nodes
        # never outnumber what the live patterns need (subscribe/unsubscribe churn leaves nothing).
        while len(path) > 1:
            node, parent = path.pop(), path[-1]
            if node.here or node.rest:
                return
            assert parent.children is not None
            if not node.children:
                del parent.children[node.label[0]]
                if not parent.children:
                    parent.children = None
                continue
            if len(node.children) == 1:
                (only,) = node.children.values()
                only.label = node.label + only.label
                parent.children[node.label[0]] = only
            return

    def match(self, topic: tuple[str, ...]) -> set["Subscription"]:
        out: set[Subscription] = set()
        end = len(topic)
        stack = [(self.root, 0)]
        while stack:
            node, i = stack.pop()
            if node.rest:
                out |= node.rest
            if i == end:
                if node.here:
                    out |= node.here
                continue
            children = node.children
            if not children:
                continue
            for key in (topic[i], "*"):
                child = children.get(key)
                if child is None:
                    continue
                label = child.label
                j = i + len(label)
                if j > end:
                    continue
                for k in range(1, len(label)):
                    seg = label[k]
                    if seg != "*" and seg != topic[i + k]:
                        break
                else:
                    stack.append((child, j))
        return out

    def nodes(self) -> int:
        """How many nodes the trie holds (for tests and memory accounting)."""
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += 1
            if node.children:
                stack.extend(node.children.values())
        return count


class Subscription:
    """One subscriber's bounded queue and its patterns. Iterate with `async for`; ends when closed.
    `add` and `remove` change the patterns in place; `patterns` is a read-only view of them."""

    def __init__(self, bus: "EventBus", queue_size: int, overflow: str, max_patterns: int | None):
        self._bus = bus
        self._patterns: dict[tuple[str, ...], None] = {}
        self.max_patterns = max_patterns
        self.queue_size = queue_size
        self.overflow = overflow
        self._queue: collections.deque[Event] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.delivered = 0
        self.dropped = 0
        self.closed = False
        self.disconnected = False

    @property
    def patterns(self) -> KeysView[tuple[str, ...]]:
        """The patterns held, as canonical segment tuples (see validate_pattern)."""
        return self._patterns.keys()

    def add(self, patterns: Iterable[str]) -> int:
        """Add patterns (those already held count once); returns how many were new. All or
        nothing: ValueError for a malformed pattern, TooManyPatterns past a cap."""
        return self._bus._add(self, patterns)

    def remove(self, patterns: Iterable[str]) -> int:
        """Remove patterns; ones not held (malformed ones included) are ignored. Returns how many went."""
        return self._bus._discard(self, patterns)

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
    """Subscriptions indexed by a topic trie. `max_patterns` bounds the patterns of all
    subscriptions together (None: unbounded); `patterns` is how many are held now."""

    def __init__(self, *, queue_size: int = 1024, origin: bytes | None = None, max_patterns: int | None = None):
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        if max_patterns is not None and max_patterns < 1:
            raise ValueError("max_patterns must be positive")
        self.queue_size = queue_size
        self.origin = origin
        self.max_patterns = max_patterns
        self.patterns = 0
        self._trie = _Trie()
        self._open: set[Subscription] = set()
        self.published = 0
        self.dropped = 0

    validate_pattern = staticmethod(validate_pattern)

    @property
    def subscribers(self) -> int:
        return len(self._open)

    def subscribe(self, patterns: Iterable[str], *, queue_size: int | None = None,
                  overflow: str = "drop_oldest", max_patterns: int | None = None) -> Subscription:
        """A new subscription holding `patterns` (at least one); `max_patterns` bounds what it may
        ever hold (None: only the bus-wide cap). Raises as Subscription.add does."""
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}")
        size = self.queue_size if queue_size is None else queue_size
        if size < 1:
            raise ValueError("queue_size must be positive")
        if max_patterns is not None and max_patterns < 1:
            raise ValueError("max_patterns must be positive")
        sub = Subscription(self, size, overflow, max_patterns)
        if not self._add(sub, patterns):
            raise ValueError("at least one pattern is needed")
        self._open.add(sub)
        return sub

    def _add(self, sub: Subscription, patterns: Iterable[str]) -> int:
        if sub.closed:
            raise trio.ClosedResourceError("the subscription is closed")
        if isinstance(patterns, str):
            raise TypeError("patterns must be an iterable of strings, not one string")
        held = sub._patterns
        new = dict.fromkeys(p for p in map(validate_pattern, patterns) if p not in held)
        if sub.max_patterns is not None and len(held) + len(new) > sub.max_patterns:
            raise TooManyPatterns(f"{len(held)} patterns held, {len(new)} new: more than {sub.max_patterns} "
                                  "per subscription", pool=False)
        if self.max_patterns is not None and self.patterns + len(new) > self.max_patterns:
            raise TooManyPatterns(f"the bus holds {self.patterns} patterns, at most {self.max_patterns}", pool=True)
        for parts in new:
            held[parts] = None
            self._trie.add(parts, sub)
        self.patterns += len(new)
        return len(new)

    def _discard(self, sub: Subscription, patterns: Iterable[str]) -> int:
        if isinstance(patterns, str):
            raise TypeError("patterns must be an iterable of strings, not one string")
        gone = 0
        for p in patterns:
            try:
                parts = validate_pattern(p)
            except ValueError:
                continue
            if parts in sub._patterns:
                del sub._patterns[parts]
                self._trie.remove(parts, sub)
                gone += 1
        self.patterns -= gone
        return gone

    def _remove(self, sub: Subscription) -> None:
        self._open.discard(sub)
        for parts in sub._patterns:
            self._trie.remove(parts, sub)
        self.patterns -= len(sub._patterns)
        sub._patterns.clear()

    def publish(self, topic: str, data: Mapping[str, Any] | None = None, *, event_id: bytes | None = None,
                origin: bytes | None = None, ts: int | None = None, hops: int = 0, signed: Any = None) -> Event:
        validate_topic(topic)
        event = Event(topic, dict(data or {}), event_id or os.urandom(16),
                      ts if ts is not None else time.time_ns() // 1_000_000, origin, hops, signed)
        self.published += 1
        for sub in self._trie.match(tuple(topic.split("."))):
            sub._offer(event)
        return event
