"""The registry as a trio service: lease table in memory, SQLite behind it, events on the bus.

Memory is the truth and the store follows it. A change is applied to the table at once and marked dirty
(one pending op per key, so a burst of heartbeats from one node costs one row write); the caller then
waits until the writer task has committed the batch that holds its change. The writer commits everything
pending in one transaction, so concurrent joins share one fsync (group commit). The events of a change
are published once it is stored.

What was not stored is neither acknowledged nor visible: when a commit fails (disk full, I/O error) the
keys it touched, and those changed since (built on it), are read back from the store into memory, their
events are dropped and every waiter gets UNAVAILABLE (retry later). Nothing is retried on the callers'
behalf, so a failing disk costs one small transaction per ``retry_delay``, not a growing batch; reads keep
being served from memory, and the first commit that succeeds ends the episode. The log says it once when
it starts, then at most once per ``failure_log_interval``, then once when it ends.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType

import attrs
import trio

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.registry.leases import Entry, LeaseTable
from galaxynode.events import Event
from galaxynode.registry.store import Ban, Delete, KvDelete, KvPut, Op, SqliteStore, Store, Unban, Upsert
from galaxynode.resilience import TaskFailures

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _Batch:
    """The changes made since the last commit started, and the callers waiting for them."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: ProtocolError | None = None
        self.events: list[tuple[str, dict]] = []  # published once the batch is stored


class ChangesLost(Exception):
    """A change watch cannot go on without missing changes: take a new snapshot."""


class ChangeWatch:
    """The changes after a snapshot (Registry.watch): every node.* event published after it, in order,
    none of them already in the snapshot. The snapshot is memory, which runs ahead of the events (a
    change's events wait for its commit), so the events of batches pending at snapshot time are skipped;
    if such a batch fails, memory is put back under the snapshot and the watch is lost."""

    def __init__(self, registry: "Registry", queue_size: int):
        self._registry = registry
        self._send, self._recv = trio.open_memory_channel[Event](queue_size)
        self.skip: dict[_Batch, int] = {}  # pending batch -> how many of its events the snapshot holds
        self.lost: str | None = None

    def offer(self, event: Event, batch: "_Batch | None") -> None:
        if batch is not None and self.skip.get(batch, 0) > 0:
            self.skip[batch] -= 1
            return
        if self.lost is None:
            try:
                self._send.send_nowait(event)
            except trio.WouldBlock:
                self.lose(f"the consumer fell {self._send.statistics().max_buffer_size} changes behind")

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            self._send.close()

    def close(self) -> None:
        self._registry._watches.discard(self)
        self._send.close()
        self._recv.close()

    def __aiter__(self) -> "ChangeWatch":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise ChangesLost(self.lost or "the registry stopped") from None


@attrs.define
class _Failing:
    """A store failure episode: since when, how many changes were refused, when to log next."""

    since: float
    refused: int
    next_log: float
    window: int = 0


class Registry:
    """Durable node registry. Start ``run`` in a nursery; with ``store=None`` it lives in memory only."""

    def __init__(self, table: LeaseTable, store: Store | None = None, bus=None, *,
                 expiry_interval: float = 1.0, clock: Callable[[], int] | None = None,
                 publish_renewals: bool = False, retry_delay: float = 1.0, owns_store: bool = False,
                 commit_interval: float = 0.0, failure_log_interval: float = 60.0, expire_locally: bool = True):
        self.table = table
        # False in a cluster member (galaxynode.cluster): the elected member expires leases for the pool.
        self.expire_locally = expire_locally
        self._inflight_keys: frozenset = frozenset()  # the keys of the commit under way (pending())
        # Set by a cluster member, whose replica puts memory back to the stored state once an unreachable
        # store answers again: a commit that fails for want of the store then leaves memory as it is
        # (reads go on being served) and later changes are refused untried until the replica clears
        # ``outage`` (their callers get UNAVAILABLE at once; memory never holds what was refused).
        self.resyncs_after_outage = False
        self.outage: str | None = None
        self.store = store
        self.bus = bus
        self.expiry_interval = expiry_interval
        self.clock = clock or wall_clock_ms
        self.publish_renewals = publish_renewals
        self.retry_delay = retry_delay
        # Under load, at most one commit per commit_interval: changes arriving meanwhile share it.
        # An idle registry commits at once, so this only adds latency when it buys throughput.
        self.commit_interval = commit_interval
        self._last_commit = -math.inf
        self._owns_store = owns_store
        self._entry_ops: dict[bytes, Op] = {}
        self._ban_ops: dict[bytes, Op] = {}
        self._batch = _Batch()
        self._inflight: _Batch | None = None
        self._wake_at = 0  # when the expiry loop wakes next (ms); 0 = not sleeping yet
        self._reschedule = trio.Event()
        self._dirty = trio.Event()
        self._state = "new"  # new -> running -> stopped
        self.commits = 0  # transactions committed (for metrics)
        self.commit_failures = 0  # transactions the store refused (for metrics)
        self.changes_refused = 0  # changes rolled back and answered UNAVAILABLE (for metrics)
        self.failure_log_interval = failure_log_interval
        self._failing: _Failing | None = None
        self.expired = 0  # leases that ran out, here or while we were down (for metrics)
        self.task_failures = TaskFailures(log)  # the expiry loop's failed ticks (for metrics)
        self.kv: dict[str, dict[str, bytes]] = {}  # plugin -> name -> value (galaxynode.plugin Store)
        self._kv_ops: dict[tuple[str, str], Op] = {}
        self._watches: set[ChangeWatch] = set()
        # Set by a cluster member (Replica.sync): what `consistent` waits for.
        self.read_barrier: Callable[[], Awaitable[None]] | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike | None, table: LeaseTable | None = None, bus=None, *,
                   store_table: str = "nodes", backend: Callable[[str], Store] | None = None,
                   **kwargs) -> "Registry":
        """Load the registry from the SQLite file at ``path``, or from ``backend(store_table)`` (e.g. a
        PgStore), or neither: in memory. Leases keep their absolute expiry, so each comes back with the
        time it had left; leases that ran out while we were down are expired now."""
        table = LeaseTable() if table is None else table
        if path is None and backend is None:
            return cls(table, None, bus, **kwargs)
        opener = backend or (lambda name: SqliteStore(path, table=name))
        store = await trio.to_thread.run_sync(opener, store_table)
        reg = cls(table, store, bus, owns_store=True, **kwargs)
        try:
            entries, bans = await trio.to_thread.run_sync(store.load)
            if hasattr(store, "load_kv"):
                for plugin, name, value in await trio.to_thread.run_sync(store.load_kv):
                    reg.kv.setdefault(plugin, {})[name] = value
            dropped, lapsed = table.restore(entries, bans, reg.clock())
            for e in dropped:
                reg._write(Delete(e.key))
            for k in lapsed:
                reg._write(Unban(k))
            await trio.to_thread.run_sync(store.apply, reg._take_ops())
        except BaseException:
            store.close()
            raise
        reg.expired += len(dropped)
        for e in dropped:
            reg._publish("node.expired", e, stored=True)
        log.info("registry loaded from %s: %d leases, %d expired while down", store.path, len(table), len(dropped))
        return reg

    # --- changes (each returns once durable) ---------------------------------------------------------

    async def join(self, key: bytes, *, capabilities: Iterable[str] = (),
                   meta: Mapping[str, str] = MappingProxyType({}), ttl: int | None = None,
                   payload: bytes | None = None, granted: int | None = None) -> Entry:
        """See LeaseTable.join (`granted`: the seconds heartbeat pacing grants, default ttl)."""
        self._check_open()
        entry = self.table.join(key, capabilities=capabilities, meta=meta, ttl=ttl, now=self.clock(),
                                payload=payload, granted=granted)
        self._write(Upsert(entry))
        self._schedule(entry)
        self._publish("node.joined", entry)
        await self._durable()
        return entry

    async def renew(self, key: bytes, *, ttl: int | None = None, granted: int | None = None) -> Entry:
        self._check_open()
        entry = self.table.renew(key, ttl=ttl, now=self.clock(), granted=granted)
        self._write(Upsert(entry))
        self._schedule(entry)
        if self.publish_renewals:
            self._publish("node.renewed", entry)
        await self._durable()
        return entry

    async def leave(self, key: bytes) -> Entry | None:
        return await self._remove(key, self.table.leave, "node.left")

    async def kick(self, key: bytes, *, by: bytes | None = None) -> Entry | None:
        """Remove a lease; ``by`` (the requesting session's key), when given, must be an admin."""
        if by is not None:
            self.table.require_admin(by)
        return await self._remove(key, self.table.kick, "node.kicked")

    async def ban(self, key: bytes, *, until: int | None = None, by: bytes | None = None) -> Entry | None:
        """Ban ``key`` until ``until`` (ms since epoch; None = permanently) and drop its lease."""
        self._check_open()
        if by is not None:
            self.table.require_admin(by)
        entry = self.table.ban(key, until=until, now=self.clock())
        self._write(Ban(key, until))
        if entry is not None:
            self._write(Delete(key))
        data = entry.to_event() if entry else {"key": key, "capabilities": [], "meta": {}, "expires": None}
        self._emit("node.banned", {**data, "until": until})
        await self._durable()
        return entry

    async def unban(self, key: bytes, *, by: bytes | None = None) -> bool:
        self._check_open()
        if by is not None:
            self.table.require_admin(by)
        found = self.table.unban(key)
        if found:
            self._write(Unban(key))
            await self._durable()
        return found

    async def kv_write(self, plugin: str, puts: Mapping[str, bytes] = MappingProxyType({}),
                       deletes: Iterable[str] = ()) -> None:
        """Change a plugin's key-value space; returns once durable (all of it in one transaction)."""
        self._check_open()
        space = self.kv.setdefault(plugin, {})
        for name, value in puts.items():
            space[name] = value
            self._write(KvPut(plugin, name, value))
        for name in deletes:
            space.pop(name, None)
            self._write(KvDelete(plugin, name))
        await self._durable()

    def watch(self, queue_size: int = 4096) -> tuple[list[Entry], ChangeWatch]:
        """Every lease now, and the changes from exactly there (see ChangeWatch). Close the watch."""
        w = ChangeWatch(self, queue_size)
        pending = self._entry_ops or self._ban_ops or self._kv_ops
        for batch, dirty in ((self._inflight, True), (self._batch, bool(pending))):
            if batch is not None and not batch.done.is_set() and (dirty or batch.events):
                w.skip[batch] = len(batch.events)
        self._watches.add(w)
        return list(self.table._entries.values()), w

    async def consistent(self) -> None:
        """Before a read a node may compare with its own writes: a cluster member first catches up
        with changes acknowledged by the other members; alone, memory already holds them."""
        if self.read_barrier is not None:
            await self.read_barrier()

    def query(self, **filters) -> tuple[list[Entry], bytes | None]:
        """See LeaseTable.query."""
        return self.table.query(**filters)

    def get(self, key: bytes) -> Entry | None:
        return self.table.get(key)

    def expire(self) -> list[Entry]:
        """Drop leases that ran out (their deletion is written with the next batch)."""
        expired = self.table.expire(self.clock())
        self.expired += len(expired)
        for e in expired:
            self._write(Delete(e.key))
            self._publish("node.expired", e, stored=True)  # a fact of time: stored or not, it is over
        if expired:
            self._dirty.set()
        return expired

    async def flush(self) -> None:
        """Wait until every change made so far (expiries included) is durable."""
        if self.store is None:
            return
        if self._entry_ops or self._ban_ops or self._kv_ops:
            self._check_open()
            await self._durable()  # commits after any batch in flight
        elif self._inflight is not None and not self._inflight.done.is_set():
            inflight = self._inflight
            await inflight.done.wait()
            if inflight.error is not None:
                raise inflight.error

    # --- tasks ------------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer and the expiry loop until cancelled; pending changes are flushed on the way out."""
        if self._state != "new":
            raise RuntimeError("Registry.run can only be started once")
        self._state = "running"
        try:
            async with trio.open_nursery() as nursery:
                if self.store is not None:
                    nursery.start_soon(self._writer)
                if self.expire_locally:
                    nursery.start_soon(self._expiry_loop)
                task_status.started()
        finally:
            self._state = "stopped"
            with trio.CancelScope(shield=True):
                await self._final_flush()
            if self._owns_store and self.store is not None:
                self.store.close()

    def close(self) -> None:
        """Release the store if ``run`` never ran (run closes it otherwise)."""
        self._state = "stopped"
        if self._owns_store and self.store is not None:
            self.store.close()

    async def _expiry_loop(self) -> None:
        """Expire due leases; a tick that fails is logged once and counted, and the loop waits its
        interval (never spins) and goes on: expiry must outlive whatever a lease holds."""
        while True:
            self._wake_at = self.clock() + int(self.expiry_interval * 1000)
            with self.task_failures.guard("registry.expiry"):
                self.expire()
                nxt = self.table.next_expiry()
                if nxt is not None:
                    self._wake_at = min(nxt, self.clock() + int(self.expiry_interval * 1000))
            now = self.clock()
            self._reschedule = trio.Event()
            with trio.move_on_after(max(0, self._wake_at - now) / 1000):
                await self._reschedule.wait()

    def _schedule(self, entry: Entry) -> None:
        """Wake the expiry loop early if this lease ends before the loop's next wake-up."""
        if entry.expires < self._wake_at:
            self._reschedule.set()

    async def _writer(self) -> None:
        while True:
            await self._dirty.wait()
            await trio.sleep_until(self._last_commit + self.commit_interval)
            ok = await self._commit()
            self._last_commit = trio.current_time()
            if not ok:
                await trio.sleep(self.retry_delay)

    async def _commit(self) -> bool:
        """Commit everything pending as one transaction and wake its waiters. False if it failed."""
        self._dirty = trio.Event()
        batch, self._batch = self._batch, _Batch()
        ops = self._take_ops()
        if not ops:
            self._release(batch)
            return True
        self._inflight = batch
        try:
            # Shielded: once ops are taken they must reach the store and their waiters must hear back.
            with trio.CancelScope(shield=True):
                self._inflight_keys = frozenset(op.key for op in ops)
                # A store that logs changes for other processes (PgStore) logs the events with them.
                logged = (batch.events,) if getattr(self.store, "logs_events", False) else ()
                try:
                    await trio.to_thread.run_sync(self.store.apply, ops, *logged)
                finally:
                    self._inflight_keys = frozenset()
        except Exception as exc:
            self._roll_back(ops, batch, exc)
            return False
        self.commits += 1
        if self._failing is not None:
            f, self._failing = self._failing, None
            log.warning("registry stores changes again after %.1fs; %d changes were refused meanwhile",
                        trio.current_time() - f.since, f.refused)
        self._release(batch)
        return True

    def _release(self, batch: _Batch) -> None:
        """The batch is stored: its events become visible, then its callers hear back."""
        for topic, data in batch.events:
            self._announce(topic, data, batch)
        for w in self._watches:
            w.skip.pop(batch, None)
        batch.done.set()

    def _roll_back(self, ops: list[Op], batch: _Batch, exc: Exception) -> None:
        """The store refused ``ops``. Refuse them and every change made since (those were built on them),
        and put memory back to what is stored for each key they touch."""
        ops = [*ops, *self._take_ops()]
        later, self._batch = self._batch, _Batch()
        error = ProtocolError(ErrorCode.UNAVAILABLE, "the pool cannot store changes right now; retry later")
        for b in (batch, later):
            b.error = error
            b.done.set()
            for w in self._watches:
                if w.skip.pop(b, None) is not None:
                    w.lose("the store refused changes the snapshot held")
        if self.resyncs_after_outage and not getattr(self.store, "reachable", True):
            self.outage = "the pool cannot reach its database right now; retry later"
            self._report_failure(exc, len(ops))
            return
        bans = {op.key for op in ops if isinstance(op, (Ban, Unban))}
        leases = {op.key for op in ops if isinstance(op, (Upsert, Delete))}
        self._restore_kv({op.key for op in ops if isinstance(op, (KvPut, KvDelete))})
        try:
            # On the event loop, between commits: nothing can change these keys while they are read.
            entries, stored_bans = self.store.read(leases, bans)
        except Exception as read_exc:  # cannot tell what is stored: show none of these leases
            log.error("registry cannot read back the %d keys of a failed commit: %s", len(leases), read_exc)
            entries, stored_bans = {}, {k: until for k, until in self.table.bans().items() if k in bans}
        self._restore(leases, entries, bans, stored_bans)
        self._report_failure(exc, len(ops))

    def _restore_kv(self, keys: set[tuple[str, str]]) -> None:
        """Put plugin values back to what is stored (unreadable: forget them, as leases are)."""
        if not keys:
            return
        try:
            stored = self.store.read_kv(keys)
        except Exception as read_exc:
            log.error("registry cannot read back %d plugin keys of a failed commit: %s", len(keys), read_exc)
            stored = {}
        for plugin, name in keys:
            value = stored.get((plugin, name))
            if value is None:
                self.kv.get(plugin, {}).pop(name, None)
            else:
                self.kv.setdefault(plugin, {})[name] = value

    def _restore(self, leases: set[bytes], entries: Mapping[bytes, Entry], bans: set[bytes],
                 stored_bans: Mapping[bytes, int | None]) -> None:
        table, now = self.table, self.clock()
        for key in bans:
            until = stored_bans.get(key, 0)
            if key in stored_bans and (until is None or until > now):
                leases.add(key)  # ban() drops the lease: put back whatever is stored below
                table.ban(key, until=until, now=now)
            else:
                table.unban(key)
        for key in leases:
            entry = entries.get(key)
            if entry is None or entry.expires <= now or table.is_banned(key, now):
                table.kick(key)
            else:
                table._put(entry)  # the stored lease as it was: expiry, ttl and joined time included

    def _report_failure(self, exc: Exception, refused: int) -> None:
        """Log a failing store once when it starts and then once per failure_log_interval."""
        self.commit_failures += 1
        self.changes_refused += refused
        now = trio.current_time()
        f = self._failing
        if f is None:
            self._failing = _Failing(now, refused, now + self.failure_log_interval)
            log.error("registry cannot store changes (%s); refusing them with 'unavailable' until it can "
                      "(retrying every %gs)", exc, self.retry_delay)
            return
        f.refused += refused
        f.window += refused
        if now >= f.next_log:
            log.error("registry still cannot store changes after %.0fs (%s); %d refused in the last %.0fs",
                      now - f.since, exc, f.window, self.failure_log_interval)
            f.window, f.next_log = 0, now + self.failure_log_interval

    async def _final_flush(self) -> None:
        # Bounded by the store's busy timeout; a commit in a thread cannot be interrupted anyway.
        if self.store is not None and (self._entry_ops or self._ban_ops or self._kv_ops):
            if not await self._commit():
                log.error("registry stopped with changes not stored (their callers were told)")
        # Anyone still waiting (the flush failed) is told, never left hanging.
        if not self._batch.done.is_set():
            self._batch.error = ProtocolError(ErrorCode.SHUTTING_DOWN, "registry stopped before storing this change")
            self._batch.done.set()

    # --- helpers ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.store is None:
            return  # memory only: nothing to wait for
        if self._state == "new":
            raise ProtocolError(ErrorCode.UNAVAILABLE, "registry not running yet")
        if self._state == "stopped":
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "registry stopped")
        if self.outage is not None:
            self.changes_refused += 1
            raise ProtocolError(ErrorCode.UNAVAILABLE, self.outage)

    async def _durable(self) -> None:
        if self.store is None:
            return
        batch = self._batch
        self._dirty.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def _remove(self, key: bytes, remove: Callable[[bytes], Entry | None], topic: str) -> Entry | None:
        self._check_open()
        entry = remove(key)
        if entry is not None:
            self._write(Delete(key))
            self._publish(topic, entry)
            await self._durable()
        return entry

    def _write(self, op: Op, *, replace: bool = True) -> None:
        """Mark op's key dirty; only the latest op per key (and per kind: lease, ban) is written."""
        if self.store is None:
            return
        pending = (self._ban_ops if isinstance(op, (Ban, Unban)) else
                   self._kv_ops if isinstance(op, (KvPut, KvDelete)) else self._entry_ops)
        if replace:
            pending[op.key] = op
        else:
            pending.setdefault(op.key, op)

    def pending(self, key: bytes | tuple[str, str]) -> bool:
        """Whether a change of ``key`` (a lease, a ban or a plugin pair) made here is not yet committed."""
        return (key in self._entry_ops or key in self._ban_ops or key in self._kv_ops
                or key in self._inflight_keys)

    def _take_ops(self) -> list[Op]:
        ops = [*self._entry_ops.values(), *self._ban_ops.values(), *self._kv_ops.values()]
        self._entry_ops, self._ban_ops, self._kv_ops = {}, {}, {}
        return ops

    def _publish(self, topic: str, entry: Entry, *, stored: bool = False) -> None:
        self._emit(topic, entry.to_event(), stored=stored)

    def _emit(self, topic: str, data: dict, *, stored: bool = False) -> None:
        """Publish now if the change needs no commit (or is one already), else once its batch is stored."""
        if self.bus is None and not self._watches:
            return
        if stored or self.store is None:
            self._announce(topic, data, None)
        else:
            self._batch.events.append((topic, data))

    def _announce(self, topic: str, data: dict, batch: _Batch | None) -> None:
        """Publish a stored change on the bus and hand the same Event to the change watches."""
        if self.bus is not None:
            event = self.bus.publish(topic, data)
        else:
            event = Event(topic, dict(data), os.urandom(16), wall_clock_ms())
        for w in tuple(self._watches):
            w.offer(event, batch)
