"""Sans-IO rate limiting: a token bucket (per session, per pool). Bans are in bans.py.

The caller passes the clock (`now`, in seconds, any monotonic origin) so that tests need no
sleeping and the same logic serves any event loop.
"""
from __future__ import annotations


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
