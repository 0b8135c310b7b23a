"""Connection slots per address (sans-IO): grouping of addresses, pending and connection caps,
the one flagged socket of a banned address."""
from __future__ import annotations

import pytest

from galaxynode.net.slots import Slots, address_group


@pytest.mark.parametrize("host, group", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),                    # IPv4-mapped IPv6 is the IPv4 address
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),                         # a zone does not make a new host
    ("127.0.0.1", "127.0.0.1"),                            # loopback is not special
    ("::1", "::/64"),
    ("?", "?"),
])
def test_address_group(host, group):
    assert address_group(host) == group


def test_ipv6_hosts_of_one_64_share_the_caps():
    slots = Slots(max_per_address=10, max_pending=10, max_pending_per_address=2)
    assert slots.accept("2001:db8::1") and slots.accept("2001:db8::ffff:1")
    assert slots.accept("2001:db8:0:0:1::9") is None       # same /64
    assert slots.accept("2001:db8:0:1::1") is not None      # the next /64


def test_pending_caps_per_address_and_in_total():
    slots = Slots(max_per_address=100, max_pending=3, max_pending_per_address=2)
    a1, a2 = slots.accept("10.0.0.1"), slots.accept("10.0.0.1")
    assert a1 and a2 and slots.accept("10.0.0.1") is None
    b1 = slots.accept("10.0.0.2")
    assert b1 and slots.pending == 3
    assert slots.accept("10.0.0.3") is None                 # the total
    a1.established()
    assert slots.pending == 2 and slots.pending_of("10.0.0.1") == 1
    assert slots.accept("10.0.0.3") is not None
    assert slots.accept("10.0.0.1") is None                 # total full again


def test_established_sockets_free_their_pending_slot_but_count_as_connections():
    slots = Slots(max_per_address=3, max_pending=10, max_pending_per_address=1)
    held = []
    for _ in range(3):
        slot = slots.accept("10.0.0.1")
        assert slot is not None and not slot.over_cap
        slot.established()
        held.append(slot)
    assert slots.connections("10.0.0.1") == 3 and slots.pending == 0
    over = slots.accept("10.0.0.1")
    assert over is not None and over.over_cap               # let in only to be told too_many_connections
    assert slots.connections("10.0.0.1") == 3               # and it is not one of its connections
    over.release()
    held.pop().release()
    again = slots.accept("10.0.0.1")
    assert again is not None and not again.over_cap


def test_release_is_idempotent_and_forgets_empty_addresses():
    slots = Slots(max_per_address=2, max_pending=2, max_pending_per_address=2)
    slot = slots.accept("10.0.0.1")
    slot.release()
    slot.release()
    slot.established()  # after release: no effect
    assert slots.pending == 0 and slots.connections("10.0.0.1") == 0
    assert not slots._connections and not slots._pending


def test_a_banned_address_gets_one_flagged_socket_at_a_time():
    slots = Slots(max_per_address=10, max_pending=10, max_pending_per_address=5)
    first = slots.accept("10.0.0.1", banned=True)
    assert first is not None and first.banned
    assert slots.accept("10.0.0.1", banned=True) is None    # the rest is closed unread
    assert slots.accept("10.0.0.2") is not None             # other addresses are not affected
    first.established()                                     # (an admin key) no longer pending
    second = slots.accept("10.0.0.1", banned=True)
    assert second is not None and second.banned
    second.release()
    assert slots.accept("10.0.0.1", banned=True) is not None


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        Slots(max_per_address=1, max_pending=0, max_pending_per_address=1)
