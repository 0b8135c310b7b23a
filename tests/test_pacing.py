"""Heartbeat pacing (galaxynode.registry.pacing), sans-IO: the grants keep a pool within its budget,
ttls cover three intervals, overload refuses only new keys, and the per-session bucket refuses only
heartbeats sent faster than asked. Through the pool's handler (no sockets): LEASE fields and counters."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from galaxynode.events import EventBus
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.pool import PoolInfo, PoolServices
from galaxynode.registry import LeaseTable, Registry
from galaxynode.registry.pacing import BURST, EarlyHeartbeats, Grant, Pacer


def test_an_idle_pool_grants_a_third_of_the_asked_ttl_jittered():
    pacer = Pacer(1000, 3600, random.Random(1))
    grants = [pacer.grant(30, 1) for _ in range(200)]
    assert all(9000 <= g.interval <= 11_000 and 30 <= g.ttl <= 33 for g in grants)
    assert all(g.ttl * 1000 >= 3 * g.interval for g in grants)
    assert len({g.interval for g in grants}) > 100  # spread, not one synchronised beat


def test_a_full_pool_stretches_intervals_to_its_floor():
    pacer = Pacer(10, 3600, random.Random(2))  # 10 heartbeats/s
    g = pacer.grant(3, 100)  # 100 leases: floor 10 s, far above the asked 1 s
    assert 9000 <= g.interval <= 11_000 and g.ttl == math.ceil(3 * g.interval / 1000)
    assert pacer.floor(100) == 10


def test_overload_refuses_only_past_capacity_and_caps_held_leases_at_max_ttl():
    pacer = Pacer(10, 30, random.Random(3))
    assert pacer.capacity == 100  # budget * max_ttl / 3
    assert not pacer.overloaded(100) and pacer.overloaded(101)
    assert pacer.grant(5, 500) == Grant(interval=10_000, ttl=30)  # existing leases: max_ttl/3, never more
    assert 30_000 <= pacer.retry_after() <= 60_000


def test_max_ttl_is_bounded_by_what_a_lease_can_carry():
    pacer = Pacer(1, 604_800, random.Random(4))
    g = pacer.grant(60, 10**6)
    assert g.interval == m.MAX_INTERVAL_MS and g.ttl == m.MAX_TTL_S


def test_bad_budgets_are_refused():
    for budget, max_ttl in ((0, 10), (-1, 10), (10, 0)):
        with pytest.raises(ValueError):
            Pacer(budget, max_ttl)


@settings(max_examples=300, deadline=None)
@given(budget=st.integers(1, 1_000_000), max_ttl=st.integers(1, 604_800), seed=st.integers(0, 2**32),
       asked=st.lists(st.integers(1, 86_400), min_size=1, max_size=50), n=st.integers(1, 10**7))
def test_leases_paced_at_the_same_n_stay_within_budget_over_0_9(budget, max_ttl, seed, asked, n):
    """N leases, each granted at N: sum(1/interval) <= budget / 0.9, unless even max_ttl cannot
    spread them (overloaded); every grant is a valid LEASE whose ttl covers three intervals."""
    pacer = Pacer(budget, max_ttl, random.Random(seed))
    grants = [pacer.grant(min(a, pacer.max_ttl), n) for a in asked]
    for a, g in zip(asked, grants):
        assert 1 <= g.interval <= m.MAX_INTERVAL_MS
        assert min(a, pacer.max_ttl) <= g.ttl <= pacer.max_ttl
        assert g.ttl * 1000 >= 3 * g.interval
    if not pacer.overloaded(n):
        # n leases each paced like these: the rate of the slowest-paced bound holds for every one
        rate = n * max(1000 / g.interval for g in grants)
        assert rate <= budget / 0.9 * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(intervals=st.lists(st.integers(1, 100_000), min_size=1, max_size=40), seed=st.integers(0, 2**32))
def test_a_node_that_waits_half_an_interval_is_never_refused(intervals, seed):
    rng, bucket, now = random.Random(seed), EarlyHeartbeats(), 0.0
    bucket.leased(intervals[0], now)
    for interval in intervals[1:]:
        now += bucket.interval / 2 * rng.uniform(1.0, 3.0)
        assert bucket.allow(now)
        bucket.leased(interval, now)


def test_a_session_heartbeating_fast_is_refused_after_its_burst():
    bucket = EarlyHeartbeats()
    assert all(bucket.allow(0.0) for _ in range(5))  # no LEASE on this session yet: nothing asked
    bucket.leased(10_000, 0.0)
    assert [bucket.allow(0.0) for _ in range(BURST + 1)] == [True] * BURST + [False]
    assert not bucket.allow(4.9) and bucket.allow(5.0)  # a token per interval/2
    bucket.leased(2_000, 5.0)  # a new interval: refills at its rate from now
    assert bucket.allow(6.0) and not bucket.allow(6.0)


# --- through the pool's handler ----------------------------------------------------------------

class _Conn:
    def __init__(self, key: bytes):
        self.peer_key = key
        self.remote = "127.0.0.1"

    def quiet_for(self, seconds: float) -> None:
        pass


def _frame(msg) -> Frame:
    return Frame(type=msg.TYPE, id=bytes(16), ts=None, sender=b"", sid=None, seq=0, body=msg.to_body(), size=0,
                 msg=msg)


async def _services(budget: float, max_ttl: int, keys: int = 0) -> PoolServices:
    reg = Registry(LeaseTable(min_ttl=1, max_ttl=max_ttl, default_ttl=min(30, max_ttl)), None, EventBus())
    for i in range(keys):
        await reg.join(i.to_bytes(32, "big"), ttl=max_ttl)
    return PoolServices(PoolInfo(b"p" * 32, "pool", "net"), reg, None, pacer=Pacer(budget, max_ttl, random.Random(5)))


async def test_join_and_heartbeat_leases_carry_the_paced_interval():
    s = await _services(budget=1, max_ttl=3600, keys=9)  # the 10th lease: floor 10 s
    h, conn = s.handler(), _Conn(b"n" * 32)
    lease = await h.join(conn, _frame(m.Join(ttl=3)))
    assert 9000 <= lease.interval <= 11_000 and lease.ttl * 1000 >= 3 * lease.interval
    entry = s.registry.get(conn.peer_key)
    assert entry.ttl == 3 and entry.expires == lease.expires  # the lease keeps the asked ttl, lasts the granted
    renewed = await h.heartbeat(conn, _frame(m.Heartbeat()))
    assert 9000 <= renewed.interval <= 11_000 and s.registry.get(conn.peer_key).ttl == 3


async def test_an_overloaded_pool_refuses_new_keys_and_keeps_renewing_held_ones():
    s = await _services(budget=1, max_ttl=30, keys=10)  # capacity 10, all taken
    held, new = _Conn((0).to_bytes(32, "big")), _Conn(b"n" * 32)
    with pytest.raises(ProtocolError) as e:
        await s.handler().join(new, _frame(m.Join(ttl=30)))
    assert e.value.code is ErrorCode.OVERLOADED and not e.value.fatal and 30_000 <= e.value.retry_after <= 60_000
    assert s.pacer.refused_overloaded == 1 and s.registry.get(new.peer_key) is None
    h = s.handler()
    assert (await h.join(held, _frame(m.Join(ttl=30)))).interval == 10_000  # a held key may re-join
    assert (await h.heartbeat(held, _frame(m.Heartbeat()))).interval == 10_000


async def test_an_early_heartbeat_is_rate_limited_and_renews_nothing():
    s = await _services(budget=1000, max_ttl=3600)
    h, conn = s.handler(), _Conn(b"n" * 32)
    await h.join(conn, _frame(m.Join(ttl=30)))
    for _ in range(BURST):
        await h.heartbeat(conn, _frame(m.Heartbeat()))
    before = s.registry.get(conn.peer_key)
    with pytest.raises(ProtocolError) as e:
        await h.heartbeat(conn, _frame(m.Heartbeat()))
    assert e.value.code is ErrorCode.RATE_LIMITED and s.pacer.refused_early == 1
    assert s.registry.get(conn.peer_key) == before
    # a new session of the same key starts with a fresh bucket
    assert (await s.handler().heartbeat(conn, _frame(m.Heartbeat()))).ttl >= 30
