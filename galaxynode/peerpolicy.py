"""Who may peer, which peer keeps a slot, and a peer's standing (sans-IO; peering.py does the I/O).

A role in HELLO is a claim, not a credential: anyone can make a key and say "pool". The policy
decides which keys are served as peers (peer frame bucket, DESCRIPTORS, EVENT relay, cross-pool
QUERY); a key it does not accept is served as a node. Keys are graded, and the grade decides who
may take whose slot when the slots are full:

- STATIC: a configured peer (its pinned key, or the key last learned at its URL); always accepted.
- LISTED: listed on the configured main net (a descriptor it handed us that verified into our book,
  until that descriptor expires); accepted under `accept = "listed"` (the default) and "any".
- ANY: any other key; accepted under `accept = "any"` only.

Standing: a peer that does not answer a request within its deadline takes a miss; `max_misses` in a
row and it has low standing, so queries stop waiting for it (skip it, mark the answer partial)
instead of paying the full timeout each time. One answer in time restores it. A newcomer may evict
only a non-static peer of a lower grade, or of its own grade with low standing: long-lived peers
that answer are never pushed out by newcomers, however many arrive.
"""
from __future__ import annotations

import enum
from typing import Iterable

import attrs

ACCEPT_MODES = ("static", "listed", "any")


class Grade(enum.IntEnum):
    NONE = 0     # not accepted as a peer: served as a node
    ANY = 1
    LISTED = 2
    STATIC = 3


@attrs.define
class Standing:
    """What a peer did with our requests (queries, subscriptions), and since when it is connected."""

    since: int                # ms (the manager's clock) when the session became active
    answered: int = 0         # requests answered in time
    missed: int = 0           # requests not answered in time, in a row
    missed_total: int = 0
    skipped: int = 0          # queries that did not wait for it while its standing was low

    def answer(self) -> None:
        self.answered += 1
        self.missed = 0

    def miss(self) -> None:
        self.missed += 1
        self.missed_total += 1


class PeerPolicy:
    """Sans-IO: the accept mode, the static and listed keys, standing and eviction decisions.
    Times are ms of the caller's clock."""

    def __init__(self, accept: str = "listed", *, static_keys: Iterable[bytes] = (), max_misses: int = 2):
        if accept not in ACCEPT_MODES:
            raise ValueError(f"accept must be one of {', '.join(ACCEPT_MODES)}")
        if max_misses < 1:
            raise ValueError("max_misses must be at least 1")
        self.accept = accept
        self.max_misses = max_misses
        self._static: set[bytes] = set(static_keys)
        self._listed: dict[bytes, int] = {}  # key -> expiry (ms) of the descriptor the main net listed

    def add_static(self, key: bytes) -> None:
        """A static peer's key, pinned or learned at its URL."""
        self._static.add(key)

    def list(self, key: bytes, expires: int) -> None:
        """The main net listed `key` with a descriptor (verified into our book) valid until `expires`."""
        if expires > self._listed.get(key, 0):
            self._listed[key] = expires

    def prune(self, now: int) -> None:
        for key in [k for k, exp in self._listed.items() if exp <= now]:
            del self._listed[key]

    def grade(self, key: bytes, now: int) -> Grade:
        """The grade `key` is accepted with, NONE if the policy does not accept it as a peer."""
        if key in self._static:
            return Grade.STATIC
        exp = self._listed.get(key)
        if exp is not None and exp > now:
            return Grade.LISTED if self.accept != "static" else Grade.NONE
        if exp is not None:
            del self._listed[key]
        return Grade.ANY if self.accept == "any" else Grade.NONE

    def low(self, standing: Standing) -> bool:
        return standing.missed >= self.max_misses

    def victim(self, grade: Grade, incumbents: Iterable[tuple[bytes, Grade, Standing]]) -> bytes | None:
        """Which incumbent a newcomer of `grade` may evict when the slots are full, or None.

        Only a non-static incumbent of a lower grade, or of the same grade with low standing. Of
        those: low standing first, then the lowest grade, the fewest answers, the newest."""
        best: tuple | None = None
        for key, g, st in incumbents:
            low = self.low(st)
            if g >= Grade.STATIC or not (g < grade or (g == grade and low)):
                continue
            rank = (low is False, g, st.answered, -st.since, key)
            if best is None or rank < best:
                best = rank
        return best[-1] if best is not None else None
