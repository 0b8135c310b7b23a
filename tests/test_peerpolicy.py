"""Peering policy, grades, standing and eviction: galaxynode/peerpolicy.py sans-IO, then the policy in
a PeerManager (in-process pools over loopback, the helpers of test_peering)."""
from __future__ import annotations

import pytest
import trio

from galaxynode.descriptor import Descriptor
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode as EC
from galaxynode.net import RemoteError
from galaxynode.peering import StaticPeer
from galaxynode.peerpolicy import Grade, PeerPolicy, Standing
from test_peering import IDS, client, network, now_ms, peered, wait_for

A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))
NOW = 1_000_000


@pytest.mark.parametrize("accept, static, listed, other", [
    ("static", Grade.STATIC, Grade.NONE, Grade.NONE),
    ("listed", Grade.STATIC, Grade.LISTED, Grade.NONE),
    ("any", Grade.STATIC, Grade.LISTED, Grade.ANY),
])
def test_accept_modes_grade_static_listed_and_other_keys(accept, static, listed, other):
    p = PeerPolicy(accept, static_keys=[A])
    p.list(B, NOW + 10)
    assert (p.grade(A, NOW), p.grade(B, NOW), p.grade(C, NOW)) == (static, listed, other)


def test_a_listing_lasts_until_its_descriptor_expires_and_a_later_one_extends_it():
    p = PeerPolicy("listed")
    p.list(B, NOW + 10)
    p.list(B, NOW + 5)  # an older descriptor does not shorten it
    assert p.grade(B, NOW + 9) == Grade.LISTED
    assert p.grade(B, NOW + 10) == Grade.NONE
    p.list(C, NOW + 1)
    p.prune(NOW + 1)
    assert p.grade(C, NOW) == Grade.NONE


def test_static_keys_learned_later_are_static_whatever_the_mode():
    p = PeerPolicy("static")
    assert p.grade(D, NOW) == Grade.NONE
    p.add_static(D)
    assert p.grade(D, NOW) == Grade.STATIC


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        PeerPolicy("everyone")
    with pytest.raises(ValueError):
        PeerPolicy("any", max_misses=0)


def test_standing_drops_after_max_misses_in_a_row_and_one_answer_restores_it():
    p, st = PeerPolicy("any", max_misses=2), Standing(NOW)
    st.miss()
    assert not p.low(st)
    st.answer()
    st.miss()
    assert not p.low(st)  # not in a row
    st.miss()
    assert p.low(st) and st.missed_total == 3
    st.answer()
    assert not p.low(st) and st.answered == 2


def _low(since: int = NOW) -> Standing:
    st = Standing(since)
    st.miss()
    st.miss()
    return st


def test_a_newcomer_evicts_only_a_lower_grade_or_a_low_standing_peer_of_its_grade():
    p = PeerPolicy("any")
    good = Standing(NOW, answered=100)
    # Same grade, good standing: a long-lived well-behaved peer is not evictable by a newcomer.
    assert p.victim(Grade.ANY, [(A, Grade.ANY, good)]) is None
    # Same grade, low standing: evictable.
    assert p.victim(Grade.ANY, [(A, Grade.ANY, good), (B, Grade.ANY, _low())]) == B
    # A listed newcomer takes an unlisted (any) peer's slot, never a listed or static one's in good standing.
    assert p.victim(Grade.LISTED, [(A, Grade.LISTED, good), (B, Grade.ANY, Standing(NOW, answered=5))]) == B
    assert p.victim(Grade.LISTED, [(A, Grade.LISTED, good), (C, Grade.STATIC, _low())]) is None
    # Static peers are never evicted, not even by another static peer.
    assert p.victim(Grade.STATIC, [(C, Grade.STATIC, _low())]) is None


def test_eviction_prefers_low_standing_then_lowest_grade_then_fewest_answers_then_newest():
    p = PeerPolicy("any")
    incumbents = [(A, Grade.ANY, Standing(NOW, answered=3)), (B, Grade.LISTED, _low()),
                  (C, Grade.ANY, Standing(NOW + 5, answered=3)), (D, Grade.ANY, Standing(NOW, answered=9))]
    assert p.victim(Grade.STATIC, incumbents) == B          # low standing first
    assert p.victim(Grade.STATIC, incumbents[:1] + incumbents[2:]) == C  # then fewest answers, newest
    assert p.victim(Grade.STATIC, [incumbents[3]]) == D


# --- the policy in a PeerManager (in-process pools over loopback) ------------------------------------

def listing(key: bytes) -> Descriptor:
    now = now_ms()
    return Descriptor(key=key, name="listed", network="peer-test", endpoints=(), capabilities=(), nodes=0,
                      issued=now, expires=now + 60_000, seq=now)


async def test_an_unlisted_pool_is_served_as_a_node_until_the_main_net_lists_it(recording_bus):
    """Pool 1 dials pool 0 (accept = listed): a node session (node bucket, DESCRIPTORS forbidden) until
    pool 0's main net lists pool 1; then the same session becomes the peer session, bucket upgraded."""
    asked = []
    async with network(recording_bus, 2, static={1: [0]}, kw={0: {"policy": PeerPolicy("listed")}}) as net:
        a, b = net.pools
        a.manager.on_unlisted = lambda: asked.append(1)
        await wait_for(lambda: a.manager.stats.not_accepted == 1)
        assert asked == [1] and b.key not in a.manager.connected
        [item] = [p for p in a.manager.describe() if p["key"] == b.key]
        assert item["state"] == "not accepted"
        [conn] = [c for c in a.server.connections.values() if c.peer_key == b.key]
        assert not conn.peer_frames
        a.manager.discover([listing(b.key)])
        await wait_for(lambda: peered(a, b))
        assert a.manager.connected[b.key] is conn and conn.peer_frames
        assert a.manager.describe()[0]["grade"] == "listed"


async def test_a_static_peer_takes_the_slot_of_a_peer_of_lower_grade(recording_bus):
    """Pool 0 keeps 1 inbound slot (accept = any); an unlisted pool holds it; pool 0's static peer
    (pool 1, pinned, dialling in) takes it: the unlisted one is closed with too_many_connections."""
    async with network(recording_bus, 2, static={}, start=False,
                       kw={0: {"policy": PeerPolicy("any", static_keys=[IDS[1].public]), "max_inbound": 1}}) as net:
        a, b = net.pools
        await net.start(0)
        async with client(a, IDS[3], role="pool", handler=_answer) as fake:
            await wait_for(lambda: IDS[3].public in a.manager.connected)
            b.manager.static.append(StaticPeer(a.url, a.key))  # pool 1 dials pool 0 from now on
            await net.start(1)
            await wait_for(lambda: b.key in a.manager.connected)
            await fake.wait_closed()
            assert fake.remote_error is not None and fake.remote_error.code == EC.TOO_MANY_CONNECTIONS
        assert list(a.manager.connected) == [b.key] and a.manager.stats.evicted == 1


async def _answer(conn, frame):
    if frame.type == "SUBSCRIBE":
        return m.Ack(re=frame.id)
    return None


async def test_a_low_standing_peer_is_skipped_then_restored(recording_bus):
    """A peer that misses max_misses (1) queries is skipped (partial at once); a probe answered restores it."""
    async with network(recording_bus, 2, static={0: [1]}, kw={0: {"policy": PeerPolicy("any", max_misses=1)}},
                       query_timeout=0.3) as net:
        a, b = net.pools
        await wait_for(lambda: peered(a, b))
        s = a.manager._peers[b.key]
        await wait_for(lambda: s.standing.answered >= 1)  # its answer to our SUBSCRIBE
        s.standing.miss()  # as if a query had timed out
        async with client(a, IDS[3]) as conn:
            started = trio.current_time()
            r = (await conn.request(m.Query(scope="peers"), timeout=5)).msg
            assert r.partial and trio.current_time() - started < 0.25
            await wait_for(lambda: not a.manager.policy.low(s.standing))  # the probe was answered
            r = (await conn.request(m.Query(scope="peers"), timeout=5)).msg
            assert not r.partial
        assert a.manager.stats.queries_skipped == 1 and s.standing.skipped == 1


async def test_role_claims_are_no_peer_credentials(recording_bus):
    async with network(recording_bus, 1, kw={0: {"policy": PeerPolicy("static")}}) as net:
        [a] = net.pools
        for role in ("pool", "mainnet"):
            async with client(a, IDS[2], role=role) as conn:
                try:
                    await conn.request(m.Descriptors(descriptors=()), timeout=5)
                    raise AssertionError("DESCRIPTORS taken")
                except RemoteError as e:
                    assert e.code == EC.FORBIDDEN
                assert conn.peer_frames  # the claimer dialled a pool: it takes the pool's pushes as a pool's
                [server_side] = a.server.connections.values()
                assert not server_side.peer_frames  # but the pool does not take the claim
        assert a.manager.connected == {}


def test_max_peers_zero_means_no_peering():
    """`[limits] max_peers = 0` is documented as "no peering": the pool starts, with no slot for anyone."""
    from galaxynode.peering import PeerManager
    mgr = PeerManager(IDS[0], network="t", registry=None, bus=None, pool_handler=lambda: None,
                      max_peers=0, max_inbound=0, max_outbound=0, target=0)
    assert mgr.max_peers == 0
