"""Sans-IO parts of the poisoning and flooding defences (issue 13 items 3 and 4): dial budgets,
verdict cache, announce rate, LOOKUP order, descriptor seq bound, descriptor book quotas/eviction,
and the main net's per-address and per-prefix quotas (with a stub dial-back)."""
from __future__ import annotations

from collections import Counter

import pytest
import trio

from galaxynode.descriptor import (MAX_SKEW_MS, Descriptor, DescriptorBook, network_prefix, sign_descriptor,
                                   verify_descriptor)
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.mainnet import (MainnetPolicy, MainnetServices, RateBuckets, TargetBudget, Verdicts, dial_target,
                                discover_budget, open_pool_registry, remote_host, sample_order)
from galaxynode.pool import PoolInfo
from galaxynode.registry.leases import Entry
from galaxynode.registry.service import wall_clock_ms

NOW = 1_800_000_000_000
NET = "defences"


def desc(identity: Identity, *, host: str = "10.0.0.1", seq: int = 1, now: int = NOW, **kw) -> Descriptor:
    fields = dict(key=identity.public, name="p", network=NET, endpoints=(f"ws://{host}:7447/",), capabilities=(),
                  nodes=0, issued=now, expires=now + 3_600_000, seq=seq)
    fields.update(kw)
    return Descriptor(**fields)


def signed(identity: Identity | None = None, **kw):
    identity = identity or Identity.generate()
    return identity, sign_descriptor(identity, desc(identity, **kw))


# --- addresses, targets ------------------------------------------------------------------------

def test_network_prefix_and_targets():
    assert network_prefix("192.0.2.77") == "192.0.2.0/24"
    assert network_prefix("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert network_prefix("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert network_prefix("[2001:db8:1:2::5]") == "2001:db8:1::/48"
    assert network_prefix("Pool.Example") == "pool.example"
    assert remote_host("127.0.0.1:5000") == "127.0.0.1" and remote_host("[::1]:5000") == "::1"
    # URLs that differ only in path or case hit the same host:port
    assert dial_target("ws://Victim.example:7447/a") == dial_target("ws://victim.example/b?x") == "victim.example:7447"
    assert dial_target("wss://v.example/") == "v.example:7447"


def test_target_budget_slides():
    b = TargetBudget(3, 10.0)
    assert [b.allow("v:1", t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert b.allow("w:1", 3)  # per target
    assert not b.allow("v:1", 9.9) and b.allow("v:1", 10.5)  # the use at 0 aged out
    assert b.used("v:1", 10.5) == 3


def test_target_budget_bounded_memory():
    b = TargetBudget(1, 10.0, max_targets=2)
    assert b.allow("a", 0) and b.allow("b", 0) and not b.allow("c", 0)  # refused, nobody dialled
    assert b.allow("c", 11)  # old targets aged out


def test_discover_budget_counts_dials():
    """6 dials an hour with 3 dials per take-up: a target is taken up twice an hour."""
    b = discover_budget(6, give_up_after=3)
    assert [b.allow("v:80", t) for t in (0, 1, 2)] == [True, True, False]
    assert b.allow("v:80", 3601)


def test_rate_buckets():
    r = RateBuckets(1.0, 3)
    assert [r.take("a", 0) for _ in range(4)] == [True, True, True, False]
    assert r.take("b", 0)
    assert not r.take("a", 0.5) and r.take("a", 1.6)


def test_verdicts_expire():
    v = Verdicts(ok_ttl=100, fail_ttl=10, max_size=2)
    k = b"k" * 32
    assert v.get("u", k, 0) is None
    v.put("u", k, None, 0)
    v.put("x", k, "refused", 0)
    assert v.get("u", k, 50) == (True, None) and v.get("x", k, 5) == (False, "refused")
    assert v.get("x", k, 11) is None and v.get("u", k, 101) is None
    v.put("y", k, None, 0)
    v.put("z", k, None, 0)
    assert len(v._cache) == 2  # LRU-bounded


# --- LOOKUP order -------------------------------------------------------------------------------

def entry(i: int, prefix: str) -> Entry:
    return Entry(key=i.to_bytes(32, "big"), capabilities=(), meta={"prefix": prefix}, expires=1, ttl=1, joined=0)


def test_sample_order_spreads_prefixes_and_is_random():
    """1,000 pools from one /24 and 5 from 5 others: the first 6 places hold every prefix."""
    entries = [entry(i, "10.0.0.0/24") for i in range(1000)] + [entry(1000 + i, f"10.0.{i + 1}.0/24") for i in range(5)]
    first = sample_order(entries, b"s" * 8)
    assert len({e.key for e in first}) == 1005
    assert len({e.meta["prefix"] for e in first[:6]}) == 6
    assert sample_order(entries, b"s" * 8) == first  # a seed fixes the order (paging)
    assert [e.key for e in sample_order(entries, b"t" * 8)[:20]] != [e.key for e in first[:20]]
    assert first[0].key != min(e.key for e in entries) or sample_order(entries, b"u" * 8)[0].key != first[0].key


# --- seq bound ------------------------------------------------------------------------------------

def test_seq_far_in_the_future_is_refused_so_the_key_can_still_update():
    ident, locked = signed(seq=2**64 - 1)
    with pytest.raises(ProtocolError) as info:
        verify_descriptor(locked, now=NOW)
    assert info.value.code == ErrorCode.BAD_DESCRIPTOR and "seq" in info.value.message
    book = DescriptorBook()
    with pytest.raises(ProtocolError):
        book.offer(locked, now=NOW)
    _, ok = signed(ident, seq=NOW + MAX_SKEW_MS)  # at the bound: accepted
    assert book.offer(ok, now=NOW).seq == NOW + MAX_SKEW_MS
    _, newer = signed(ident, seq=NOW + MAX_SKEW_MS + 1, now=NOW + 1)
    assert book.offer(newer, now=NOW + 1).seq == NOW + MAX_SKEW_MS + 1


# --- the descriptor book ----------------------------------------------------------------------------

def test_book_quota_per_source_and_per_network():
    book = DescriptorBook(max_entries=100, max_per_source=5, max_per_network=8)
    codes = Counter()
    for i in range(20):
        try:
            book.offer(signed(host=f"10.{i % 2}.0.{i}")[1], now=NOW, source="evil")
            codes["ok"] += 1
        except ProtocolError as e:
            codes[e.code] += 1
    assert codes == {"ok": 5, ErrorCode.UNAVAILABLE: 15}
    for i in range(20):  # many sources, one network
        try:
            book.offer(signed(host=f"10.9.9.{i}")[1], now=NOW, source=f"peer-{i}")
        except ProtocolError as e:
            assert e.code == ErrorCode.UNAVAILABLE and "10.9.9.0/24" in e.message
    assert sum(d.endpoints[0].startswith("ws://10.9.9.") for d in book.all(NOW)) == 8
    # verified descriptors do not count against either quota
    for i in range(10):
        book.offer(signed(host="10.9.9.200")[1], now=NOW, source="evil", verified=True)
    assert len(book) == 5 + 8 + 10


def test_book_full_keeps_verified_and_pinned_and_evicts_stale_relayed():
    static = Identity.generate()
    book = DescriptorBook(max_entries=10, max_per_source=6, max_per_network=100, pinned=[static.public])
    for i in range(6):
        book.offer(signed(host=f"10.0.0.{i}")[1], now=NOW + i, source="a")
    for i in range(4):
        book.offer(signed(host=f"10.0.1.{i}")[1], now=NOW + 10 + i, source="b", verified=True)
    assert len(book) == 10
    real, real_sd = signed(host="192.0.2.1")
    book.offer(real_sd, now=NOW + 20, source=real.public, verified=True)  # a peer's own descriptor fits
    assert book.get(real.public) is not None and book.evicted == 1
    _, junk = signed(host="10.0.2.1")
    book.offer(junk, now=NOW + 21, source="c")  # relayed evicts only older relayed
    assert book.evicted == 2
    assert sum(book.verified(d.key) for d in book.all(NOW + 30)) == 5
    for _ in range(5):  # relayed junk from more sources never evicts a verified pool
        try:
            book.offer(signed(host="10.0.3.1")[1], now=NOW + 22, source="d")
        except ProtocolError as e:
            assert e.code == ErrorCode.UNAVAILABLE
    assert sum(book.verified(d.key) for d in book.all(NOW + 30)) == 5
    _, pinned_sd = signed(static, host="198.51.100.1")
    book.offer(pinned_sd, now=NOW + 23, source="d")  # a static peer's always fits, even relayed
    assert book.get(static.public) is not None and len(book) == 10


def test_book_upgrades_and_persists_the_verified_mark(tmp_path):
    book = DescriptorBook(max_per_source=2)
    a, a_sd = signed(host="10.0.0.1")
    book.offer(a_sd, now=NOW, source="x")
    assert not book.verified(a.public)
    book.offer(a_sd, now=NOW, source="mainnet", verified=True)  # the same bytes from the main net
    assert book.verified(a.public)
    b, b_sd = signed(host="10.0.0.2")
    book.offer(b_sd, now=NOW, source="x")
    book.to_disk(tmp_path / "book")
    again = DescriptorBook.from_disk(tmp_path / "book", NOW, max_per_source=2)
    assert again.verified(a.public) and not again.verified(b.public) and len(again) == 2


# --- main net quotas (the dial-back stubbed) --------------------------------------------------------

class Stub:
    """Reachability that proves whatever is announced, without dialling."""

    def __init__(self, policy: MainnetPolicy):
        self.policy, self.checked = policy, []

    def known(self, url: str, key: bytes) -> bool:
        return (url, key) in self.checked

    async def check(self, url: str, key: bytes) -> None:
        self.checked.append((url, key))


async def test_mainnet_quotas_per_address_and_prefix_and_announce_rate(recording_bus):
    policy = MainnetPolicy(pools_per_address=3, pools_per_prefix=5, announce_rate=0.001, announce_burst=100)
    registry = await open_pool_registry(None, recording_bus())
    now = [0.0]
    main = Identity.generate()
    s = MainnetServices(PoolInfo(main.public, "main", NET, role="mainnet"), registry, None, policy=policy,
                        reachability=Stub(policy), clock=lambda: now[0])

    async def announce(remote: str, identity: Identity | None = None) -> bool:
        identity = identity or Identity.generate()
        d = desc(identity, now=wall_clock_ms(), seq=wall_clock_ms())
        try:
            await s.announce(identity.public, sign_descriptor(identity, d), remote)
            return True
        except ProtocolError as e:
            assert e.code == ErrorCode.UNAVAILABLE, e
            return False

    assert [await announce("192.0.2.1:1000") for _ in range(4)] == [True] * 3 + [False]
    assert [await announce(f"192.0.2.{i}:1000") for i in (2, 3, 4)] == [True, True, False]  # /24 full
    assert await announce("198.51.100.1:5")
    kept = Identity.generate()
    assert await announce("203.0.113.1:1", kept)
    assert await announce("203.0.113.1:1", kept)  # a refresh of a listed, proven claim is free
    # the announce rate: burst 100 taken, then 0.001/s
    s2 = MainnetServices(PoolInfo(main.public, "main", NET, role="mainnet"), registry, None,
                         policy=MainnetPolicy(announce_rate=1.0, announce_burst=2, pools_per_address=100),
                         reachability=Stub(policy), clock=lambda: now[0])
    s = s2
    assert [await announce("203.0.113.9:1") for _ in range(3)] == [True, True, False]
    now[0] += 1.0
    assert await announce("203.0.113.9:1")


async def test_lookup_pages_a_random_order_with_an_opaque_cursor(recording_bus):
    registry = await open_pool_registry(None, recording_bus())
    main = Identity.generate()
    s = MainnetServices(PoolInfo(main.public, "main", NET, role="mainnet"), registry, None)
    ids = [Identity.generate() for _ in range(12)]
    for i, ident in enumerate(ids):
        d = desc(ident, now=wall_clock_ms(), seq=wall_clock_ms())
        await s.announce(ident.public, sign_descriptor(ident, d), f"10.0.{i % 3}.1:1")
    seen, cursor = [], None
    while True:
        page, cursor = s.lookup(m.Lookup(limit=5, cursor=cursor))
        seen += [verify_descriptor(p, now=wall_clock_ms()).key for p in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(i.public for i in ids)
    firsts = {s.lookup(m.Lookup(limit=1))[0][0].record for _ in range(40)}
    assert len(firsts) > 3  # not key order: the first place varies
    with pytest.raises(ProtocolError) as info:
        s.lookup(m.Lookup(cursor=b"nope"))
    assert info.value.code == ErrorCode.BAD_CURSOR
