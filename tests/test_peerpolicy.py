"""Peering policy, grades, standing and eviction (galaxynode/peerpolicy.py, sans-IO)."""
from __future__ import annotations

import pytest

from galaxynode.peerpolicy import Grade, PeerPolicy, Standing

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
