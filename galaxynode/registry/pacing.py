"""Heartbeat pacing (issue 20): how often each node should heartbeat so that the whole lease table
costs the pool at most `budget` heartbeats per second, and how one session is held to it.

Sans-IO: time (`now`, any monotonic seconds) and randomness (`rng`) come from the caller.

Per LEASE the pool grants (docs/gelato/limits.md):

    base     = asked ttl / 3                       (the node's own wish: three heartbeats per lease)
    floor    = N / budget                          (N = leases in the whole pool)
    interval = max(base, floor) * uniform(0.9, 1.1), at most max_ttl / 3
    ttl      = max(asked ttl, ceil(3 * interval))  (two heartbeats may be lost or late)

Every interval is then >= 0.9 * N / budget, so N leases each paced at the current N send at most
sum(1 / interval) <= budget / 0.9 heartbeats per second. When even max_ttl cannot spread them
(3 * floor > max_ttl), the budget cannot be met: new keys are refused with `overloaded` (and a
retry_after) while the leases already held get interval max_ttl / 3 and are never refused.
"""
from __future__ import annotations

import logging
import math
import random

import attrs

from galaxynode.gelato.messages import MAX_TTL_S

log = logging.getLogger(__name__)

SAFETY = 3  # a granted ttl covers this many intervals
JITTER = (0.9, 1.1)  # spreads nodes that joined together
RETRY_AFTER_MS = (30_000, 60_000)  # what an `overloaded` JOIN is told to wait
BURST = 2  # early heartbeats a session may send (a ttl change, a retry) before it is refused


@attrs.frozen
class Grant:
    """What one LEASE says: heartbeat again after `interval` ms; the lease lasts `ttl` s."""

    interval: int
    ttl: int


class Pacer:
    """The pool's budget and the grants it makes; also counts its refusals (for metrics)."""

    def __init__(self, budget: float, max_ttl: int, rng: random.Random | None = None):
        if budget <= 0 or max_ttl < 1:
            raise ValueError("need budget > 0 and max_ttl >= 1")
        self.budget = budget  # heartbeats/s for the whole table
        self.max_ttl = min(max_ttl, MAX_TTL_S)  # a LEASE cannot carry more
        self.max_interval = self.max_ttl * 1000 // SAFETY  # ms
        self.rng = rng or random.Random()
        self.refused_overloaded = 0  # JOINs of new keys refused with `overloaded`
        self.refused_early = 0  # HEARTBEATs refused with `rate_limited` (EarlyHeartbeats)
        self._over = False

    def floor(self, n: int) -> float:
        """The shortest interval (s) that keeps `n` leases within the budget."""
        return n / self.budget

    @property
    def capacity(self) -> int:
        """Leases the budget serves at the longest interval; one more is `overloaded`."""
        return math.floor(self.budget * self.max_ttl / SAFETY)

    def overloaded(self, n: int) -> bool:
        """Whether `n` leases exceed the budget even at max_ttl (then refuse keys that hold none)."""
        over = SAFETY * self.floor(n) > self.max_ttl
        if over != self._over:
            self._over = over
            if over:
                log.warning("heartbeat budget exceeded: %d leases need intervals of %.0f s at %g heartbeats/s, "
                            "leases last at most %d s; new keys are refused with 'overloaded'",
                            n, self.floor(n), self.budget, self.max_ttl)
            else:
                log.warning("heartbeat budget met again (%d leases); new keys are admitted", n)
        return over

    def grant(self, asked_ttl: int, n: int) -> Grant:
        """The interval and ttl for a lease that asked for `asked_ttl` s, with `n` leases in the pool
        (the one being granted included)."""
        self.overloaded(n)
        interval = max(asked_ttl / SAFETY, self.floor(n)) * self.rng.uniform(*JITTER)
        ms = min(max(1, math.ceil(interval * 1000)), self.max_interval)  # up: keeps the bound exact
        return Grant(interval=ms, ttl=max(asked_ttl, -(-SAFETY * ms // 1000)))

    def retry_after(self) -> int:
        """ms an `overloaded` JOIN must wait (jittered, so refused nodes do not return together)."""
        return round(self.rng.uniform(*RETRY_AFTER_MS))


class EarlyHeartbeats:
    """One session's obligation: no HEARTBEAT sooner than interval/2 after the last LEASE, enforced
    as a token bucket refilled at 2/interval with a burst of BURST. Per session, so a node that
    reconnects (to another worker, say) starts fresh; before the session's first LEASE anything goes."""

    def __init__(self) -> None:
        self.interval: float | None = None  # s, from the last LEASE sent on this session
        self._tokens = float(BURST)
        self._at = 0.0

    def _refill(self, now: float) -> None:
        if self.interval is not None:
            self._tokens = min(BURST, self._tokens + (now - self._at) * 2 / self.interval)
        self._at = now

    def leased(self, interval_ms: int, now: float) -> None:
        """A LEASE with `interval_ms` was sent: from now on the bucket refills at its rate."""
        self._refill(now)
        self.interval = interval_ms / 1000

    def allow(self, now: float) -> bool:
        """Whether a HEARTBEAT arriving at `now` is within the obligation (and take its token)."""
        if self.interval is None:
            return True
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
