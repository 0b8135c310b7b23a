"""Sans-IO ban table: protocol abuse counted against the party that committed it.

Design. Stellar Core's BanManager is the model for the table (one list of bans that an operator
can see and lift: ADMIN `bans` / `unban`); Bitcoin Core's per-peer misbehaviour score is the model
for the counting (each violation scores against the identity that misbehaved, a threshold bans it).
Every violation scores one point: our violations are all clear protocol abuse (see
connection.is_violation), so weighting them would add a knob without a case that needs it.

Who is counted:
- once the Gelato handshake is done, the session's KEY. A key is what a node keeps between
  sessions, so a buggy or hostile client is stopped without locking out the other users that share
  its address (NAT, a university, a cloud egress, an admin on the same host).
- before that (malformed HELLO, bad signature, a handshake that never completes), the ADDRESS:
  nothing else is known yet. Addresses count per slots.address_group: IPv6 per /64, what one host
  or subscriber usually gets (rotating addresses inside a /64 does not dodge the ban).

A key ban is cheap to dodge with a fresh key, and that is accepted: fresh keys buy nothing an
address does not already have (per-address connection caps bound them), and counting in-session
abuse per address would again ban everyone behind one NAT. Admin keys (`exempt`) are never refused
by a ban, so an admin on a banned host can still log in, see the ban and lift it.

Memory is bounded: at most `max_entries` counters and `max_entries` bans per kind (key, address).
Counters and bans are kept apart so that a flood of one-off violations from many addresses evicts
other counters, never a ban; within each, the least recently touched entry is forgotten first.
The caller passes the clock (`now`, seconds, any monotonic origin): no sleeping in tests.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

import attrs

from galaxynode.net.slots import address_group  # the unit address bans and per-address caps share

S = TypeVar("S", str, bytes)

MAX_REASON = 200  # characters of the last violation kept as a ban's reason


@attrs.frozen
class Ban:
    """One entry of `Bans.list`: `subject` is a key (bytes) or an address group (str)."""

    kind: str           # "key" | "address"
    subject: bytes | str
    until: float        # on the caller's clock
    reason: str


@attrs.define
class _Count:
    violations: int
    first: float  # start of the counting window


class _Table(Generic[S]):
    """Counters and bans of one kind of subject, each bounded, least recently touched evicted."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.counts: dict[S, _Count] = {}
        self.bans: dict[S, tuple[float, str]] = {}  # subject -> (until, reason)

    def banned(self, subject: S, now: float) -> bool:
        ban = self.bans.get(subject)
        if ban is None:
            return False
        if now < ban[0]:
            return True
        del self.bans[subject]  # lapsed
        return False

    def count(self, subject: S, now: float, *, threshold: int, window: float, ban_seconds: float,
              reason: str) -> bool:
        if self.banned(subject, now):  # already refused; counting more would only extend it silently
            return False
        c = self.counts.pop(subject, None)
        if c is None or now - c.first > window:
            c = _Count(0, now)
        c.violations += 1
        if c.violations < threshold:
            _put(self.counts, subject, c, self.max_entries)
            return False
        _put(self.bans, subject, (now + ban_seconds, reason[:MAX_REASON]), self.max_entries)
        return True

    def lift(self, subject: S) -> bool:
        had = self.bans.pop(subject, None) is not None
        self.counts.pop(subject, None)
        return had

    def live(self, now: float) -> list[tuple[S, float, str]]:
        for subject in [s for s, (until, _) in self.bans.items() if until <= now]:
            del self.bans[subject]
        return [(s, until, reason) for s, (until, reason) in self.bans.items()]


def _put(d: dict, key, value, limit: int) -> None:
    d.pop(key, None)
    d[key] = value  # most recently touched last
    while len(d) > limit:
        del d[next(iter(d))]


class Bans:
    """`violations_before_ban` violations within `window` seconds ban the key (after the handshake)
    or the address group (before it) for `ban_seconds`. `exempt(key)` says which keys no ban
    refuses (the admins'; read at each check, so a config reload applies at once)."""

    def __init__(self, violations_before_ban: int = 3, ban_seconds: float = 300.0, *, window: float = 600.0,
                 max_entries: int = 10_000, exempt: Callable[[bytes], bool] = lambda key: False):
        if violations_before_ban < 1 or ban_seconds <= 0 or window <= 0 or max_entries < 1:
            raise ValueError("ban limits must be positive")
        self.violations_before_ban = violations_before_ban
        self.ban_seconds = ban_seconds
        self.window = window
        self.exempt = exempt
        self._keys: _Table[bytes] = _Table(max_entries)
        self._addresses: _Table[str] = _Table(max_entries)

    def __len__(self) -> int:
        """Bans in force or lapsed but not yet noticed (counters excluded)."""
        return len(self._keys.bans) + len(self._addresses.bans)

    def address_banned(self, host: str, now: float) -> bool:
        return self._addresses.banned(address_group(host), now)

    def key_banned(self, key: bytes, now: float) -> bool:
        return self._keys.banned(key, now)

    def record_violation(self, *, host: str, key: bytes | None, now: float, error: object) -> bool:
        """Count one violation against `key` (the handshake is done) or else `host`'s address
        group; True if that banned it just now. `error` (a ProtocolError or a description) becomes
        the ban's reason. The caller decides what is a violation (connection.is_violation)."""
        kw = dict(threshold=self.violations_before_ban, window=self.window, ban_seconds=self.ban_seconds,
                  reason=str(error))
        if key is not None:
            return self._keys.count(key, now, **kw)
        return self._addresses.count(address_group(host), now, **kw)

    def unban_key(self, key: bytes) -> bool:
        """Lift a key's ban and forget its violations; False if it was not banned."""
        return self._keys.lift(key)

    def unban_address(self, host: str) -> bool:
        """Lift the ban of `host`'s address group (any address in an IPv6 /64, or the `net/64`
        itself) and forget its violations; False if it was not banned."""
        return self._addresses.lift(address_group(host.removesuffix("/64")))

    def list(self, now: float) -> list[Ban]:
        """The bans in force: keys, then addresses, each oldest first."""
        return ([Ban("key", s, until, reason) for s, until, reason in self._keys.live(now)]
                + [Ban("address", s, until, reason) for s, until, reason in self._addresses.live(now)])
