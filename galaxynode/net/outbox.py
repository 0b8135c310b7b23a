"""Output flow control: a session's queued output is bounded in encoded bytes, per session and
per process (Stellar Core's outbound queue limits and "drop peers whose queue does not drain").

Why bytes and not frames: a reply may be 1 MiB, so a queue of 256 frames let 20 sessions that
never read hold a gigabyte. A Connection encodes (stamps seq, MACs) each frame as it queues it,
so what is counted is exactly what will be written; the bytes are given back once the writer has
handed the frame to the transport. The frame count stays bounded too (each queued frame also
costs a Python object).

`OutputBudget` is one per process, shared by every session (the server's and the ones this
process dials); `Outbox` is one session's queue. Neither decides what to do when full: the
Connection makes `send()` wait, `send_nowait()` drop, and closes a session whose writer makes no
progress for write_timeout (slow_reader), which is what frees a budget held by a peer that does
not read.
"""
from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

MiB = 1024 * 1024
DEFAULT_TOTAL_BYTES = 256 * MiB   # [limits] send_queue_total_bytes

T = TypeVar("T")


class OutputBudget:
    """Bytes queued for output by all sessions of a process, at most `limit`."""

    def __init__(self, limit: int = DEFAULT_TOTAL_BYTES):
        if limit <= 0:
            raise ValueError("the output budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lot = trio.lowlevel.ParkingLot()  # senders waiting for any session to free bytes

    def fits(self, n: int) -> bool:
        return self.used + n <= self.limit

    def _take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def _give(self, n: int) -> None:
        self.used -= n
        self._lot.unpark_all()


class Outbox(Generic[T]):
    """One session's queued frames: at most `max_frames` of them and `max_bytes` bytes, and what
    the shared `budget` has left. Items are (size, payload); a taken item stays counted until
    `done()` (it is still in memory while the transport writes it)."""

    def __init__(self, max_frames: int, max_bytes: int, budget: OutputBudget | None = None):
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("max_frames and max_bytes must be positive")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.budget = budget
        self.bytes = 0            # queued and in flight
        self.closed = False       # no more puts; the writer drains what is left
        self._items: deque[tuple[int, T]] = deque()
        self._released = False
        self._room = trio.lowlevel.ParkingLot()    # senders waiting for this session to drain
        self._ready = trio.lowlevel.ParkingLot()   # the writer waiting for a frame

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, n: int) -> bool:
        """Whether an n-byte frame may be queued now."""
        return (len(self._items) < self.max_frames and self.bytes + n <= self.max_bytes
                and (self.budget is None or self.budget.fits(n)))

    def full(self) -> bool:
        """No room for any frame (lets send_nowait drop before paying for an encoding)."""
        return not self.fits(1)

    def put(self, n: int, item: T) -> None:
        """Queue an n-byte item; only after fits(n) said yes (nothing in between may checkpoint)."""
        assert not self.closed and self.fits(n)
        self._items.append((n, item))
        self.bytes += n
        if self.budget is not None:
            self.budget._take(n)
        self._ready.unpark_all()

    async def wait_room(self, n: int) -> None:
        """Park until something that may make room for n bytes happens (the caller checks again)."""
        if self.closed:
            return
        own = len(self._items) < self.max_frames and self.bytes + n <= self.max_bytes
        if own and self.budget is not None:
            await self.budget._lot.park()     # only the process-wide budget is short
        else:
            await self._room.park()

    async def get(self) -> tuple[int, T] | None:
        """The next item for the writer, or None once closed and drained."""
        while not self._items:
            if self.closed:
                return None
            await self._ready.park()
        return self._items.popleft()

    def take_ready(self, max_bytes: int) -> list[tuple[int, T]]:
        """Items queued right now, in order, up to about max_bytes (the writer's batch after get())."""
        items, total = [], 0
        while self._items and total < max_bytes:
            item = self._items.popleft()
            total += item[0]
            items.append(item)
        return items

    def done(self, n: int) -> None:
        """The writer has handed an item of n bytes to the transport: its bytes are free."""
        if self._released:
            return
        self.bytes -= n
        if self.budget is not None:
            self.budget._give(n)
        self._room.unpark_all()

    def close(self) -> None:
        """Refuse further puts; wake the writer (to drain and stop) and every waiting sender."""
        self.closed = True
        self._ready.unpark_all()
        self._room.unpark_all()
        if self.budget is not None:
            self.budget._lot.unpark_all()  # a sender of ours may wait there; the others check again

    def release(self) -> None:
        """The session is over: drop what is queued and give all its bytes back (idempotent)."""
        self.close()
        if self._released:
            return
        self._released = True
        self._items.clear()
        if self.budget is not None and self.bytes:
            self.budget._give(self.bytes)
        self.bytes = 0
