"""Sans-IO rate limiting: a token bucket per session and a temporary ban list per remote host.

The caller passes the clock (`now`, in seconds, any monotonic origin) so that tests need no
sleeping and the same logic serves any event loop.
"""
from __future__ import annotations

import attrs


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, n: float, now: float) -> bool:
        """Spend n tokens if there are enough; a refused take spends nothing."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if n <= self.tokens:
            self.tokens -= n
            return True
        return False


@attrs.define
class _Record:
    violations: int = 0
    first: float = 0.0
    banned_until: float = 0.0


class BanList:
    """Counts misbehaviour per remote host; `violations_before_ban` violations within `window`
    seconds ban the host for `ban_seconds`. At most `max_hosts` hosts are remembered (oldest
    forgotten first), so a flood of addresses cannot grow it without bound."""

    def __init__(self, violations_before_ban: int = 3, ban_seconds: float = 300.0, *,
                 window: float = 600.0, max_hosts: int = 10_000):
        if violations_before_ban < 1 or ban_seconds <= 0 or window <= 0 or max_hosts < 1:
            raise ValueError("BanList limits must be positive")
        self.violations_before_ban = violations_before_ban
        self.ban_seconds = ban_seconds
        self.window = window
        self.max_hosts = max_hosts
        self._hosts: dict[str, _Record] = {}

    def __len__(self) -> int:
        return len(self._hosts)

    def record_violation(self, host: str, now: float) -> bool:
        """Count one violation; True if it got the host banned just now."""
        rec = self._hosts.pop(host, None)
        if rec is None or (now - rec.first > self.window and now >= rec.banned_until):
            rec = _Record(first=now, banned_until=rec.banned_until if rec else 0.0)
        rec.violations += 1
        banned = False
        if rec.violations >= self.violations_before_ban and now >= rec.banned_until:
            rec.banned_until = now + self.ban_seconds
            rec.violations = 0
            rec.first = now
            banned = True
        self._hosts[host] = rec  # re-insert: most recently active last
        self._prune()
        return banned

    def is_banned(self, host: str, now: float) -> bool:
        rec = self._hosts.get(host)
        return rec is not None and now < rec.banned_until

    def _prune(self) -> None:
        while len(self._hosts) > self.max_hosts:  # least recently active first
            del self._hosts[next(iter(self._hosts))]
