"""The event bus's topic trie and pattern caps (issue 12 item 5), and the pool session's use of them.

The trie must match exactly what the old linear matcher matched: `_matches` below is that matcher,
kept verbatim as the oracle, and hypothesis drives both with random patterns, topics and
add/remove sequences. Caps are checked by behaviour: what is refused, that nothing is half-added,
and that closing a subscription gives its patterns back to the bus."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from galaxynode.events import EventBus, TooManyPatterns, validate_pattern
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.net.connection import SessionClosed
from galaxynode.pool import PoolInfo, PoolServices


def _matches(parts: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    """The bus's matcher before the trie (a scan over every wildcard pattern): the oracle."""
    for i, p in enumerate(parts):
        if p in ("#", "**"):
            return True
        if i >= len(topic) or (p != "*" and p != topic[i]):
            return False
    return len(parts) == len(topic)


# Few distinct segments, so that patterns share prefixes, split and merge edges, and collide.
SEGMENT = st.sampled_from(["a", "b", "cc"])
TOPICS = st.lists(SEGMENT, min_size=1, max_size=6).map(".".join)
PATTERNS = st.builds(lambda body, tail: ".".join(body + tail),
                     st.lists(st.sampled_from(["a", "b", "cc", "*"]), min_size=0, max_size=6),
                     st.sampled_from([[], [], ["#"], ["**"]])).filter(bool)


def offered(bus: EventBus, topic: str) -> set:
    return bus._trie.match(tuple(topic.split(".")))


def check_trie(bus: EventBus) -> None:
    """No node is empty and unary (prune and merge left nothing behind) and every edge is keyed by
    its first segment; so the trie never holds more than about two nodes per live pattern."""
    stack = [(bus._trie.root, True)]
    while stack:
        node, root = stack.pop()
        kids = node.children or {}
        if not root:
            assert node.here or node.rest or len(kids) >= 2, node.label
        for key, child in kids.items():
            assert child.label and child.label[0] == key
            stack.append((child, False))
    assert bus._trie.nodes() <= 2 * bus.patterns + 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(PATTERNS, min_size=1, max_size=4), min_size=1, max_size=8), st.lists(TOPICS, max_size=12))
def test_trie_matches_what_the_old_matcher_matched(subscriptions, topics):
    bus = EventBus()
    subs = [bus.subscribe(patterns) for patterns in subscriptions]
    for topic in topics + ["a", "a.b", "cc.cc.cc"]:
        split = tuple(topic.split("."))
        want = {s for s, patterns in zip(subs, subscriptions)
                if any(_matches(tuple(p.split(".")), split) for p in patterns)}
        assert offered(bus, topic) == want, topic
    check_trie(bus)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), PATTERNS, st.integers(0, 99)), max_size=40),
       st.lists(TOPICS, max_size=10))
def test_trie_stays_exact_through_add_and_remove(ops, topics):
    """Random add/remove on four live subscriptions (half the removals of a pattern held): matching
    equals the oracle over what each holds, counts add up, and removing everything leaves the root."""
    bus = EventBus()
    subs = [bus.subscribe(["zz"]) for _ in range(4)]
    held: list[set[tuple[str, ...]]] = [{("zz",)} for _ in subs]
    for i, add, pattern, pick in ops:
        if not add and pick % 2:
            pattern = ".".join(sorted(held[i])[pick % len(held[i])]) if held[i] else pattern
        parts = validate_pattern(pattern)
        if add:
            assert subs[i].add([pattern]) == (parts not in held[i])
            held[i].add(parts)
        else:
            assert subs[i].remove([pattern]) == (parts in held[i])
            held[i].discard(parts)
        check_trie(bus)
    assert bus.patterns == sum(map(len, held))
    assert [set(s.patterns) for s in subs] == held
    for topic in topics + ["zz"]:
        split = tuple(topic.split("."))
        want = {s for s, h in zip(subs, held) if any(_matches(p, split) for p in h)}
        assert offered(bus, topic) == want, topic
    for s, h in zip(subs, held):
        for p in h:
            s.remove([".".join(p)])
            check_trie(bus)
    assert bus.patterns == 0 and bus._trie.nodes() == 1
    for s in subs:
        s.close()
    assert bus.subscribers == 0


def test_long_distinct_patterns_cost_one_node_each():
    """Edges hold chains of segments: 1,000 patterns of 60 segments that differ in the first one
    need ~1,000 nodes, not 60,000 (memory an attacker could otherwise multiply by 64)."""
    bus = EventBus()
    sub = bus.subscribe([f"p{i}." + ".".join(["x"] * 59) for i in range(1000)])
    assert bus._trie.nodes() == 1001
    sub.close()
    assert bus._trie.nodes() == 1


def test_synonyms_and_duplicates_count_once():
    bus = EventBus()
    sub = bus.subscribe(["a.#", "a.**", "a.#", "b"])
    assert sorted(sub.patterns) == [("a", "#"), ("b",)] and bus.patterns == 2
    assert sub.add(["a.**", "b", "c"]) == 1 and bus.patterns == 3
    assert sub.remove(["a.**", "nope", "Bad Pattern!"]) == 1 and bus.patterns == 2


def test_subscription_cap_refuses_the_whole_addition():
    bus = EventBus()
    sub = bus.subscribe(["a", "b"], max_patterns=4)
    with pytest.raises(TooManyPatterns) as refused:
        sub.add(["c", "d", "e"])
    assert not refused.value.pool
    assert set(sub.patterns) == {("a",), ("b",)} and bus.patterns == 2   # nothing half-added
    assert sub.add(["a", "c", "d"]) == 2                                 # held ones are free
    sub.remove(["a"])
    assert sub.add(["e"]) == 1
    with pytest.raises(TooManyPatterns):
        bus.subscribe(["x", "y", "z"], max_patterns=2)
    assert bus.subscribers == 1 and bus.patterns == 4


def test_bus_cap_counts_every_subscription_and_closing_gives_back():
    bus = EventBus(max_patterns=5)
    one = bus.subscribe(["a", "b", "c"])
    two = bus.subscribe(["a", "b"])                 # the same pattern in two subscriptions: two entries
    with pytest.raises(TooManyPatterns) as refused:
        two.add(["z"])
    assert refused.value.pool and bus.patterns == 5
    with pytest.raises(TooManyPatterns):
        bus.subscribe(["q"])
    one.close()
    assert bus.patterns == 2
    assert two.add(["z", "y", "x"]) == 3
    two.close()
    assert bus.patterns == 0 and bus.subscribers == 0


def test_adding_patterns_keeps_the_subscription_and_its_queue():
    bus = EventBus()
    sub = bus.subscribe(["a"])
    bus.publish("a", {"n": 1})
    sub.add(["b.*"])
    bus.publish("b.c", {"n": 2})
    sub.remove(["a"])
    bus.publish("a", {"n": 3})
    assert [e.data["n"] for e in sub._queue] == [1, 2]


def test_add_after_close_and_bad_arguments_raise():
    bus = EventBus()
    sub = bus.subscribe(["a"])
    with pytest.raises(ValueError):
        sub.add(["ok", "not ok"])
    assert set(sub.patterns) == {("a",)}
    with pytest.raises(TypeError):
        sub.add("abc")
    sub.close()
    assert sub.remove(["a"]) == 0
    with pytest.raises(trio.ClosedResourceError):
        sub.add(["b"])
    with pytest.raises(ValueError):
        EventBus(max_patterns=0)


# --- the pool session: one subscription changed in place, capped per session and per pool -------

def session(bus: EventBus, max_subscriptions: int = 4):
    services = PoolServices(PoolInfo(b"p" * 32, "pool", "net"), None, bus)
    sent: list = []

    async def send(msg):
        sent.append(msg)
    conn = SimpleNamespace(limits=SimpleNamespace(max_subscriptions=max_subscriptions), send=send)
    return services.handler(), conn, sent


def request(*topics: str, kind=m.Subscribe) -> SimpleNamespace:
    return SimpleNamespace(msg=kind(topics=topics), id=b"r" * 16)


async def test_session_cap_is_limit_exceeded_and_not_fatal():
    bus = EventBus()
    handler, conn, sent = session(bus, max_subscriptions=4)
    assert isinstance(await handler.subscribe(conn, request("a", "b", "b", "c.#")), m.Ack)
    sub = handler.sub
    assert isinstance(await handler.subscribe(conn, request("c.**", "a")), m.Ack)  # nothing new
    refused = await handler.subscribe(conn, request("d", "e"))
    assert isinstance(refused, m.Error) and refused.code == ErrorCode.LIMIT_EXCEEDED and refused.re == b"r" * 16
    assert handler.sub is sub and bus.patterns == 3                    # same subscription, unchanged
    await handler.unsubscribe(conn, request("a", "zzz", kind=m.Unsubscribe))
    assert isinstance(await handler.subscribe(conn, request("d", "e")), m.Ack)
    with pytest.raises(ProtocolError) as bad:
        await handler.subscribe(conn, request("x", "Bad!"))
    assert bad.value.code == ErrorCode.INVALID_BODY and not bad.value.fatal
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler.run, conn)
        await trio.testing.wait_all_tasks_blocked()
        bus.publish("c.x", {})
        bus.publish("a", {})                                           # unsubscribed
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [e.topic for e in sent] == ["c.x"]
    assert sub.closed and bus.patterns == 0 and bus.subscribers == 0  # the session gave its patterns back
    with pytest.raises(SessionClosed):                                # and cannot take new ones
        await handler.subscribe(conn, request("f"))
    assert bus.patterns == 0


async def test_pool_cap_is_unavailable():
    bus = EventBus(max_patterns=5)
    first, conn, _ = session(bus)
    second, _, _ = session(bus)
    await first.subscribe(conn, request("a", "b", "c", "d"))
    with pytest.raises(ProtocolError) as full:
        await second.subscribe(conn, request("a", "b"))
    assert full.value.code == ErrorCode.UNAVAILABLE and not full.value.fatal and second.sub is None
    assert isinstance(await second.subscribe(conn, request("a")), m.Ack)
