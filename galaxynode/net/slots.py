"""Sans-IO connection slots: who may take a socket, counted per remote address before any byte is read.

One address must not take every slot of a pool: raw sockets that never finish the upgrade, or a
thousand full sessions with fresh keys, used to lock everyone else out. So every accepted socket is
charged to its address group (an IPv4 address; for IPv6 the /64, what one host usually owns; an
IPv4-mapped IPv6 address counts as the IPv4 address it maps) as *pending* until its Gelato handshake
is done, and as a connection until it closes. Pending sockets are capped per address and in total
(they cost the most and prove the least); past those caps a socket is closed unread. Past the
per-address connection cap the socket is still upgraded, within the pending caps, only so that an
honest client learns why (ERROR too_many_connections). Loopback is not special: a load test from one
host raises the caps in its own configuration.

A banned address gets one pending socket at a time, flagged, so that an admin key on that host can
still log in and lift the ban (the server refuses every other key after the handshake); the rest of
its sockets are closed unread.
"""
from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=4096)
def address_group(host: str) -> str:
    """The unit per-address limits and address bans apply to: the IPv4 address, or for IPv6 its /64
    (`2001:db8:1:2::/64`); an IPv4-mapped IPv6 address is its IPv4 address. Anything that is not an
    IP address (a Unix socket name, "?") is its own group."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class Slot:
    """One admitted socket. `over_cap`: its address already holds max_per_address connections, so it
    is only let in to be told ERROR too_many_connections; `banned`: its address is banned and this is
    the one socket it may have pending (for an admin key)."""

    __slots__ = ("group", "over_cap", "banned", "pending", "_slots")

    def __init__(self, slots: Slots, group: str, *, over_cap: bool, banned: bool):
        self._slots: Slots | None = slots
        self.group = group
        self.over_cap = over_cap
        self.banned = banned
        self.pending = True

    def __repr__(self) -> str:
        state = "pending" if self.pending else ("closed" if self._slots is None else "established")
        return f"<Slot {self.group} {state}{' over_cap' if self.over_cap else ''}{' banned' if self.banned else ''}>"

    def established(self) -> None:
        """The Gelato handshake is done: no longer pending (still a connection of its address)."""
        if self.pending and self._slots is not None:
            self._slots._unpend(self)

    def release(self) -> None:
        """The socket is closed. Idempotent."""
        slots, self._slots = self._slots, None
        if slots is None:
            return
        if self.pending:
            slots._unpend(self)
        if not self.over_cap:
            slots._dec(slots._connections, self.group)


class Slots:
    """Counts sockets per address group: connections (pending or established) and pending ones, and
    pending ones in total. `accept()` decides at accept time; the Slot it returns is moved on by
    `established()` and given back by `release()`. Memory is one dict entry per address group with a
    live socket."""

    def __init__(self, *, max_per_address: int, max_pending: int, max_pending_per_address: int):
        if min(max_per_address, max_pending, max_pending_per_address) < 1:
            raise ValueError("slot limits must be positive")
        self.max_per_address = max_per_address
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.pending = 0
        self._connections: dict[str, int] = {}   # group -> sockets that count as its connections
        self._pending: dict[str, int] = {}       # group -> pending sockets
        self._banned_pending: set[str] = set()   # banned groups that have their one socket pending

    def connections(self, host: str) -> int:
        return self._connections.get(address_group(host), 0)

    def pending_of(self, host: str) -> int:
        return self._pending.get(address_group(host), 0)

    def accept(self, host: str, *, banned: bool = False) -> Slot | None:
        """A slot for a socket just accepted from `host`, or None: close it unread (pending caps
        reached, or a banned address that already has its one socket pending)."""
        group = address_group(host)
        if self.pending >= self.max_pending or self._pending.get(group, 0) >= self.max_pending_per_address:
            return None
        if banned:
            if group in self._banned_pending:
                return None
            self._banned_pending.add(group)
        over_cap = self._connections.get(group, 0) >= self.max_per_address
        slot = Slot(self, group, over_cap=over_cap, banned=banned)
        self.pending += 1
        self._pending[group] = self._pending.get(group, 0) + 1
        if not over_cap:
            self._connections[group] = self._connections.get(group, 0) + 1
        return slot

    def _unpend(self, slot: Slot) -> None:
        slot.pending = False
        self.pending -= 1
        self._dec(self._pending, slot.group)
        if slot.banned:
            self._banned_pending.discard(slot.group)

    @staticmethod
    def _dec(counts: dict[str, int], group: str) -> None:
        left = counts[group] - 1
        if left:
            counts[group] = left
        else:
            del counts[group]
