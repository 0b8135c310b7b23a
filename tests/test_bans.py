"""The ban table (sans-IO): who a violation counts against, windows, expiry, bounds, lifting; and
which errors are violations at all."""
from __future__ import annotations

import pytest

from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.net.bans import Ban, Bans, address_group
from galaxynode.net.connection import RemoteError, is_violation

K1, K2, ADMIN = b"\x01" * 32, b"\x02" * 32, b"\xaa" * 32
ABUSE = ProtocolError(ErrorCode.MALFORMED_FRAME, "garbage")


def hit(bans: Bans, now: float, *, host: str = "192.0.2.1", key: bytes | None = None) -> bool:
    return bans.record_violation(host=host, key=key, now=now, error=ABUSE)


def test_threshold_within_the_window_bans_for_ban_seconds():
    bans = Bans(violations_before_ban=3, ban_seconds=10, window=100)
    assert not hit(bans, 0) and not hit(bans, 1)
    assert not bans.address_banned("192.0.2.1", 1)
    assert hit(bans, 2)
    assert bans.address_banned("192.0.2.1", 2) and bans.address_banned("192.0.2.1", 11.9)
    assert not bans.address_banned("192.0.2.1", 12)
    assert not bans.address_banned("192.0.2.2", 5)  # the neighbour is not banned
    # outside the window counting starts over
    assert not hit(bans, 200) and not hit(bans, 250) and not hit(bans, 301) and not hit(bans, 302)
    assert hit(bans, 303)


def test_after_the_handshake_the_key_is_counted_not_the_address():
    bans = Bans(violations_before_ban=2, ban_seconds=10)
    assert not hit(bans, 0, key=K1) and hit(bans, 1, key=K1)
    assert bans.key_banned(K1, 1) and not bans.key_banned(K2, 1)
    assert not bans.address_banned("192.0.2.1", 1)  # everyone else behind that address is fine
    assert not hit(bans, 2, key=K2)  # another key starts from zero
    assert not hit(bans, 3, key=K1)  # while banned, more violations neither count nor extend
    assert not bans.key_banned(K1, 11)


def test_ipv6_counts_per_64():
    assert address_group("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_group("192.0.2.7") == "192.0.2.7" and address_group("?") == "?"
    bans = Bans(violations_before_ban=2, ban_seconds=10)
    assert not hit(bans, 0, host="2001:db8:1:2::1")
    assert hit(bans, 0, host="2001:db8:1:2::ffff")  # same /64: rotating the low bits does not help
    assert bans.address_banned("2001:db8:1:2:1:2:3:4", 1) and not bans.address_banned("2001:db8:1:3::1", 1)
    assert bans.unban_address("2001:db8:1:2::/64") and not bans.address_banned("2001:db8:1:2::1", 1)


def test_list_and_unban():
    bans = Bans(violations_before_ban=1, ban_seconds=10)
    hit(bans, 0, key=K1)
    hit(bans, 1, host="198.51.100.9")
    assert bans.list(5) == [Ban("key", K1, 10, str(ABUSE)), Ban("address", "198.51.100.9", 11, str(ABUSE))]
    assert bans.list(10.5) == [Ban("address", "198.51.100.9", 11, str(ABUSE))]  # lapsed entries go
    assert bans.unban_address("198.51.100.9") and not bans.unban_address("198.51.100.9")
    hit(bans, 20, key=K1)
    assert bans.unban_key(K1) and not bans.key_banned(K1, 21) and bans.list(21) == []


def test_unban_forgets_the_count_too():
    bans = Bans(violations_before_ban=2, ban_seconds=10)
    hit(bans, 0)
    assert not bans.unban_address("192.0.2.1")  # nothing banned, but the count is gone
    assert not hit(bans, 1)


def test_memory_is_bounded_and_a_flood_of_counters_never_evicts_a_ban():
    bans = Bans(violations_before_ban=2, ban_seconds=100, max_entries=3)
    hit(bans, 0, key=K1), hit(bans, 0, key=K1)
    for i in range(1000):  # one violation each from many addresses
        hit(bans, 1, host=f"10.0.{i // 256}.{i % 256}")
    assert bans.key_banned(K1, 2)
    assert len(bans._addresses.counts) == 3
    for i in range(5):  # bans themselves: the oldest is forgotten first
        hit(bans, 3, key=bytes([i]) * 32), hit(bans, 3, key=bytes([i]) * 32)
    assert len(bans._keys.bans) == 3 and not bans.key_banned(K1, 4) and bans.key_banned(bytes([4]) * 32, 4)


def test_reasons_are_bounded():
    bans = Bans(violations_before_ban=1)
    bans.record_violation(host="x", key=None, now=0, error="y" * 10_000)
    assert len(bans.list(0)[0].reason) == 200


def test_limits_must_be_positive():
    for bad in ({"violations_before_ban": 0}, {"ban_seconds": 0}, {"window": 0}, {"max_entries": 0}):
        with pytest.raises(ValueError):
            Bans(**bad)


# --- what counts -------------------------------------------------------------------------------

REFUSALS = (ErrorCode.NETWORK_MISMATCH, ErrorCode.NOT_ADMITTED, ErrorCode.BANNED, ErrorCode.TEMPORARILY_BANNED,
            ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.DUPLICATE_SESSION, ErrorCode.PINNED_KEY_MISMATCH,
            ErrorCode.SELF_CONNECTION, ErrorCode.KICKED, ErrorCode.IDLE_TIMEOUT,
            ErrorCode.SHUTTING_DOWN, ErrorCode.STALE_TIMESTAMP, ErrorCode.UNSUPPORTED_VERSION)
ABUSES = (ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.TEXT_FRAME, ErrorCode.LIMIT_EXCEEDED,
          ErrorCode.BAD_SIGNATURE, ErrorCode.BAD_KEY, ErrorCode.WRONG_SENDER, ErrorCode.BAD_MAC,
          ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.BAD_NONCE, ErrorCode.BAD_SEQUENCE, ErrorCode.HANDSHAKE_TIMEOUT,
          ErrorCode.RATE_LIMITED, ErrorCode.SLOW_READER)


@pytest.mark.parametrize("code", REFUSALS)
def test_refusals_and_ordinary_life_are_not_violations(code):
    assert not is_violation(ProtocolError(code))


@pytest.mark.parametrize("code", ABUSES)
def test_protocol_abuse_is_a_violation(code):
    assert is_violation(ProtocolError(code))
    assert not is_violation(RemoteError(m.Error(code=int(code), name=code.name.lower())))  # the peer's word


def test_non_fatal_rejections_are_not_violations():
    for code in ErrorCode:
        if not code.fatal:
            assert not is_violation(ProtocolError(code)), code
    assert not is_violation(None)
