"""Lease semantics of the sans-IO LeaseTable."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.registry import leases
from galaxynode.registry.leases import Admission, Entry, LeaseTable

T0 = 1_700_000_000_000


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def code_of(fn, *args, **kw) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kw)
    return info.value.code


# --- join / renew / leave ---------------------------------------------------------------------------

def test_join_creates_lease_with_absolute_expiry():
    t = LeaseTable(default_ttl=30)
    e = t.join(k(1), capabilities=["gpu", "gpu", "cpu"], meta={"region": "eu"}, now=T0)
    assert e == Entry(key=k(1), capabilities=("gpu", "cpu"), meta={"region": "eu"}, ttl=30,
                      expires=T0 + 30_000, joined=T0)
    assert t.get(k(1)) == e and len(t) == 1 and k(1) in t
    assert e.to_event() == {"key": k(1), "capabilities": ["gpu", "cpu"], "meta": {"region": "eu"},
                            "expires": T0 + 30_000}


def test_entry_meta_is_a_frozen_copy():
    meta = {"a": "1"}
    e = LeaseTable().join(k(1), meta=meta, now=T0)
    meta["a"] = "2"
    assert e.meta["a"] == "1"
    with pytest.raises(TypeError):
        e.meta["a"] = "3"  # type: ignore[index]


def test_rejoin_replaces_entry_and_index():
    t = LeaseTable()
    t.join(k(1), capabilities=["gpu"], meta={"r": "eu"}, ttl=10, now=T0)
    e = t.join(k(1), capabilities=["cpu"], ttl=20, now=T0 + 5)
    assert t.get(k(1)) == e and e.joined == T0 + 5 and e.expires == T0 + 5 + 20_000
    assert len(t) == 1
    assert t.query(capabilities=["gpu"])[0] == []
    assert t.query(meta={"r": "eu"})[0] == []
    assert t.query(capabilities=["cpu"])[0] == [e]
    assert t.expire(T0 + 10_000) == []  # the first lease's heap item is stale


def test_a_paced_grant_sets_the_expiry_and_the_lease_keeps_the_asked_ttl():
    """Pacing may grant more than asked; heartbeats without a ttl renew by the asked one, so grants
    do not ratchet up from one heartbeat to the next."""
    t = LeaseTable()
    e = t.join(k(1), ttl=10, granted=33, now=T0)
    assert (e.ttl, e.expires) == (10, T0 + 33_000)
    e = t.renew(k(1), granted=12, now=T0 + 1000)
    assert (e.ttl, e.expires) == (10, T0 + 13_000)
    assert t.renew(k(1), now=T0 + 2000).expires == T0 + 12_000  # no grant: the ttl


def test_ttl_bounds():
    t = LeaseTable(min_ttl=5, max_ttl=60, default_ttl=30)
    assert t.join(k(1), now=T0).ttl == 30
    assert t.join(k(2), ttl=5, now=T0).ttl == 5
    assert t.join(k(3), ttl=60, now=T0).ttl == 60
    for bad in (4, 61, 0, -1, "30", 30.0, True):
        assert code_of(t.join, k(4), ttl=bad, now=T0) == ErrorCode.BAD_TTL
    assert code_of(t.renew, k(1), ttl=61, now=T0) == ErrorCode.BAD_TTL
    assert k(4) not in t
    with pytest.raises(ValueError):
        LeaseTable(min_ttl=10, default_ttl=5)


def test_renew_extends_from_now_and_keeps_ttl_by_default():
    t = LeaseTable()
    t.join(k(1), ttl=10, capabilities=["x"], now=T0)
    e = t.renew(k(1), now=T0 + 8_000)
    assert (e.ttl, e.expires, e.joined, e.capabilities) == (10, T0 + 18_000, T0, ("x",))
    e = t.renew(k(1), ttl=20, now=T0 + 9_000)
    assert (e.ttl, e.expires) == (20, T0 + 29_000)
    assert t.expire(T0 + 18_000) == []
    assert t.expire(T0 + 29_000) == [e]


def test_renew_unknown_is_not_joined():
    assert code_of(LeaseTable().renew, k(1), now=T0) == ErrorCode.NOT_JOINED


def test_leave():
    t = LeaseTable()
    e = t.join(k(1), capabilities=["gpu"], now=T0)
    assert t.leave(k(1)) == e
    assert t.leave(k(1)) is None
    assert len(t) == 0 and t.query(capabilities=["gpu"]) == ([], None)
    assert t.next_expiry() is None and t.expire(T0 + 10**9) == []


@pytest.mark.parametrize("kw, code", [
    ({"key": b"short"}, ErrorCode.BAD_KEY),
    ({"key": "x" * 32}, ErrorCode.BAD_KEY),
    ({"capabilities": "gpu"}, ErrorCode.INVALID_BODY),
    ({"capabilities": ["ok", ""]}, ErrorCode.INVALID_BODY),
    ({"capabilities": [1]}, ErrorCode.INVALID_BODY),
    ({"meta": {"a": 1}}, ErrorCode.INVALID_BODY),
    ({"meta": ["a"]}, ErrorCode.INVALID_BODY),
])
def test_bad_join_input_is_a_typed_error(kw, code):
    t = LeaseTable()
    args = {"key": k(1), **kw}
    assert code_of(t.join, args.pop("key"), now=T0, **args) == code
    assert len(t) == 0


def test_max_entries():
    t = LeaseTable(max_entries=2)
    t.join(k(1), now=T0)
    t.join(k(2), now=T0)
    assert code_of(t.join, k(3), now=T0) == ErrorCode.UNAVAILABLE
    t.join(k(2), now=T0 + 1)  # re-join of a present key is fine


# --- admission, admins, bans ---------------------------------------------------------------------------

def test_allowlist_admission():
    t = LeaseTable(admission=Admission(mode="allowlist", allow={k(1)}, admins={k(9)}))
    t.join(k(1), now=T0)
    t.join(k(9), now=T0)  # admins are always admitted
    assert code_of(t.join, k(2), now=T0) == ErrorCode.NOT_ADMITTED
    assert t.is_admin(k(9)) and not t.is_admin(k(1))
    assert code_of(t.require_admin, k(1)) == ErrorCode.FORBIDDEN
    # the allowlist is reloadable; a removed key cannot renew
    t.admission = Admission(mode="allowlist", allow={k(2)})
    assert code_of(t.renew, k(1), now=T0 + 1) == ErrorCode.NOT_ADMITTED
    t.join(k(2), now=T0 + 1)


def test_open_admission_admits_anyone():
    assert Admission().admits(k(5))


def test_admission_validation():
    with pytest.raises(ValueError):
        Admission(mode="closed")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Admission(mode="allowlist", allow={b"short"})


def test_ban_drops_lease_and_blocks_join_until_lifted():
    t = LeaseTable()
    e = t.join(k(1), now=T0)
    assert t.ban(k(1), until=None, now=T0) == e
    assert k(1) not in t and t.is_banned(k(1), T0 + 10**12)
    assert code_of(t.join, k(1), now=T0) == ErrorCode.BANNED
    assert t.unban(k(1)) is True and t.unban(k(1)) is False
    t.join(k(1), now=T0)


def test_temporary_ban_lapses():
    t = LeaseTable()
    assert t.ban(k(1), until=T0 + 1000, now=T0) is None  # banning an absent key is allowed
    assert code_of(t.join, k(1), now=T0 + 999) == ErrorCode.BANNED
    assert not t.is_banned(k(1), T0 + 1000)
    t.join(k(1), now=T0 + 1000)
    assert t.bans() == {}


def test_ban_validation():
    t = LeaseTable()
    assert code_of(t.ban, k(1), until=T0, now=T0) == ErrorCode.INVALID_BODY
    assert code_of(t.ban, b"x", until=None, now=T0) == ErrorCode.BAD_KEY


def test_kick_allows_rejoin():
    t = LeaseTable()
    e = t.join(k(1), now=T0)
    assert t.kick(k(1)) == e and t.kick(k(1)) is None
    t.join(k(1), now=T0)


# --- expiry ------------------------------------------------------------------------------------------

def test_expiry_boundary_and_next_expiry():
    t = LeaseTable(min_ttl=1)
    a = t.join(k(1), ttl=1, now=T0)
    b = t.join(k(2), ttl=2, now=T0)
    assert t.next_expiry() == T0 + 1000
    assert t.expire(T0 + 999) == []
    assert t.expire(T0 + 1000) == [a]
    assert t.next_expiry() == T0 + 2000
    t.renew(k(2), ttl=5, now=T0 + 1500)
    assert t.next_expiry() == T0 + 6500  # stale item skipped
    assert t.expire(T0 + 6499) == [] and b.key in t


def test_expire_10000_leases():
    t = LeaseTable(min_ttl=1, max_ttl=100)
    for i in range(10_000):
        t.join(k(i), ttl=1 + i % 100, capabilities=[f"c{i % 7}"], now=T0)
    for i in range(0, 10_000, 3):  # a third renew, pushing a second heap item each
        t.renew(k(i), now=T0 + 500)
    gone: set[bytes] = set()
    for second in range(1, 102):
        now = T0 + second * 1000
        out = t.expire(now)
        assert all(e.expires <= now for e in out)
        assert not gone & {e.key for e in out}
        gone |= {e.key for e in out}
        assert len(gone) + len(t) == 10_000
    assert len(gone) == 10_000 and len(t) == 0 and t.next_expiry() is None
    assert t.query(capabilities=["c1"]) == ([], None)


def test_expire_tick_with_nothing_due_does_no_scan(monkeypatch):
    t = LeaseTable(min_ttl=1, max_ttl=1000)
    for i in range(10_000):
        t.join(k(i), ttl=10 + i % 900, now=T0)
    pops = 0
    real_pop = leases.heapq.heappop

    def counting_pop(heap):
        nonlocal pops
        pops += 1
        return real_pop(heap)

    monkeypatch.setattr(leases.heapq, "heappop", counting_pop)
    assert t.expire(T0 + 9_999) == []
    assert pops == 0
    # A tick at which some leases are due costs about as many pops as leases due (plus stale items).
    for i in range(100):
        t.renew(k(i), now=T0 + 1)  # each leaves one stale item behind
    out = t.expire(T0 + 10_000)  # ttl=10 leases: i % 900 == 0 -> 12 of them, but i=0 was renewed
    assert len(out) == 11
    assert pops <= len(out) + 100


def test_heap_stays_bounded_under_heartbeats():
    t = LeaseTable()
    for i in range(10):
        t.join(k(i), now=T0)
    for n in range(10_000):
        t.renew(k(n % 10), now=T0 + n)
    assert len(t._heap) <= 2 * len(t) + 65
    assert t.next_expiry() == min(e.expires for e in (t.get(k(i)) for i in range(10)))


# --- queries -----------------------------------------------------------------------------------------

def _table(n: int, **kw) -> LeaseTable:
    t = LeaseTable(**kw)
    for i in range(n):
        caps = ["all"] + (["even"] if i % 2 == 0 else []) + (["rare"] if i % 50 == 0 else [])
        t.join(k(i), capabilities=caps, meta={"mod3": str(i % 3)}, now=T0)
    return t


def _page_all(t: LeaseTable, limit: int, **filters) -> list[bytes]:
    out, cursor = [], None
    while True:
        page, cursor = t.query(limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        out += [e.key for e in page]
        if cursor is None:
            return out
        assert len(page) == limit  # a non-final page is full


def test_query_filters_are_anded_and_ordered_by_key():
    t = _table(300)
    keys = [k(i) for i in range(300)]
    assert _page_all(t, 1000) == sorted(keys)
    assert _page_all(t, 7, capabilities=["even"]) == sorted(k(i) for i in range(0, 300, 2))
    assert _page_all(t, 7, capabilities=["even", "rare"]) == sorted(k(i) for i in range(0, 300, 50))
    assert _page_all(t, 7, capabilities=["even"], meta={"mod3": "1"}) == sorted(
        k(i) for i in range(300) if i % 2 == 0 and i % 3 == 1)
    assert _page_all(t, 7, capabilities=["nope"]) == []
    assert _page_all(t, 7, meta={"mod3": "7"}) == []
    assert t.query(key=k(4), capabilities=["even"])[0] == [t.get(k(4))]
    assert t.query(key=k(5), capabilities=["even"])[0] == []
    assert t.query(key=k(1000)) == ([], None)


def test_query_limit_is_clamped():
    t = _table(50, page_max=10)
    page, cursor = t.query(limit=1000)
    assert len(page) == 10 and cursor == page[-1].key
    page, _ = t.query(limit=0)
    assert len(page) == 1


@pytest.mark.parametrize("cursor", [b"", b"x" * 31, b"x" * 33, "a" * 32])
def test_invalid_cursor(cursor):
    assert code_of(_table(3).query, cursor=cursor) == ErrorCode.BAD_CURSOR


def test_cursor_resumes_after_changes():
    t = _table(100)
    page1, cursor = t.query(capabilities=["even"], limit=10)
    last = page1[-1].key
    # churn: remove some already-returned and some upcoming keys, add new ones
    t.leave(page1[0].key)
    t.leave(last)  # the cursor's own key is gone; the position still holds
    later = sorted(k(i) for i in range(0, 100, 2) if k(i) > last)
    t.leave(later[0])
    for i in range(1000, 1040):
        t.join(k(i), capabilities=["even"], now=T0)
    rest = []
    while cursor is not None:
        page, cursor = t.query(capabilities=["even"], limit=10, cursor=cursor)
        rest += [e.key for e in page]
    assert rest == [e.key for e in t.query(capabilities=["even"], limit=1000)[0] if e.key > last]
    assert set(later[1:]) <= set(rest) and later[0] not in rest
    assert not set(rest) & {e.key for e in page1}


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(st.tuples(st.integers(0, 400), st.sets(st.sampled_from("abcd")), st.sampled_from("xyz")),
                   max_size=120),
    caps=st.sets(st.sampled_from("abcde"), max_size=2),
    meta=st.sampled_from([None, "x", "y"]),
    limit=st.integers(1, 30),
)
def test_query_matches_brute_force(nodes, caps, meta, limit):
    t = LeaseTable(page_max=25)
    for i, c, m in nodes:
        t.join(k(i), capabilities=sorted(c), meta={"m": m}, now=T0)
    filters = {"capabilities": sorted(caps), "meta": {} if meta is None else {"m": meta}}
    expect = sorted(e.key for e in (t.get(k(i)) for i, _, _ in nodes)
                    if set(caps) <= set(e.capabilities) and (meta is None or e.meta["m"] == meta))
    assert _page_all(t, min(limit, 25), **filters) == list(dict.fromkeys(expect))


# --- restore -----------------------------------------------------------------------------------------

def test_restore_keeps_remaining_time_and_drops_the_rest():
    src = LeaseTable(admission=Admission(mode="allowlist", allow={k(1), k(2), k(3), k(4)}))
    live = src.join(k(1), ttl=30, capabilities=["gpu"], now=T0)
    dead = src.join(k(2), ttl=5, now=T0)
    banned = src.join(k(3), ttl=30, now=T0)
    unlisted = src.join(k(4), ttl=30, now=T0)
    t = LeaseTable(admission=Admission(mode="allowlist", allow={k(1), k(2), k(3)}))
    dropped, lapsed = t.restore([live, dead, banned, unlisted], {k(3): None, k(8): T0 + 1}, now=T0 + 10_000)
    assert {e.key for e in dropped} == {k(2), k(3), k(4)}
    assert lapsed == [k(8)]
    assert len(t) == 1 and t.get(k(1)) == live and live.expires - (T0 + 10_000) == 20_000
    assert t.query(capabilities=["gpu"])[0] == [live]
    assert t.next_expiry() == live.expires and t.is_banned(k(3), T0 + 10_000)


def test_restore_drops_rows_outside_the_byte_bounds():
    """A row stored when bounds counted characters (32 capabilities of 62 two-byte characters)
    would be served in replies strict clients refuse and could not fit a descriptor: dropped."""
    src = LeaseTable()
    ok = src.join(k(1), ttl=30, capabilities=["gpu"], now=T0)
    fat = Entry(key=k(2), capabilities=tuple(f"{i:02d}" + "é" * 62 for i in range(32)), meta={},
                expires=T0 + 30_000, ttl=30, joined=T0)
    fat_meta = Entry(key=k(3), capabilities=(), meta={"m": "é" * 200}, expires=T0 + 30_000, ttl=30, joined=T0)
    t = LeaseTable()
    dropped, _ = t.restore([ok, fat, fat_meta], {}, now=T0)
    assert {e.key for e in dropped} == {k(2), k(3)} and len(t) == 1
