"""The trio Registry: durability before acknowledgement, group commit, failures, expiry, restart, events."""
from __future__ import annotations

import hashlib
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio
import trio.testing

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.registry import Admission, LeaseTable, Registry, SqliteStore, StoreError

T0 = 1_700_000_000_000


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


class Bus:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def publish(self, topic: str, data: dict) -> None:
        self.events.append((topic, data))

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]


class CountingStore(SqliteStore):
    """Counts transactions; fails them while ``fail`` is set."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.transactions = 0
        self.fail = False

    def apply(self, ops):
        if self.fail:
            raise StoreError("disk on fire")
        super().apply(ops)
        self.transactions += 1


def stored_keys(path) -> set[bytes]:
    with SqliteStore(path) as s:
        return {e.key for e in s.load()[0]}


class Clock:
    """Registry clock in ms following trio's (mock) clock."""

    def __call__(self) -> int:
        return T0 + int(trio.current_time() * 1000)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "reg.sqlite"


async def test_memory_mode_needs_no_run():
    bus = Bus()
    reg = Registry(LeaseTable(), bus=bus, clock=lambda: T0)
    e = await reg.join(k(1), capabilities=["gpu"], ttl=10)
    assert await reg.renew(k(1), ttl=20) == reg.get(k(1))
    assert reg.query(capabilities=["gpu"]) == ([reg.get(k(1))], None)
    assert await reg.leave(k(1)) is not None
    assert bus.topics() == ["node.joined", "node.left"]
    assert bus.events[0][1] == e.to_event()


async def test_join_is_durable_when_acknowledged(db):
    store = CountingStore(db)
    reg = Registry(LeaseTable(), store)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(1), capabilities=["gpu"], meta={"r": "eu"}, ttl=60)
        assert stored_keys(db) == {k(1)}  # a second connection sees it: committed
        await reg.renew(k(1), ttl=120)
        with SqliteStore(db) as s:
            assert s.load()[0][0].ttl == 120
        await reg.leave(k(1))
        assert stored_keys(db) == set()
        n.cancel_scope.cancel()
    store.close()


async def test_group_commit(db):
    store = CountingStore(db)
    reg = Registry(LeaseTable(), store)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        async with trio.open_nursery() as callers:
            for i in range(300):
                callers.start_soon(lambda i=i: reg.join(k(i), ttl=60))
        assert store.transactions < 300 / 4
        assert reg.commits == store.transactions
        assert len(stored_keys(db)) == 300
        # heartbeats from one node coalesce into one pending row write
        async with trio.open_nursery() as callers:
            for _ in range(50):
                callers.start_soon(lambda: reg.renew(k(0)))
        n.cancel_scope.cancel()
    store.close()


async def test_commit_interval_spaces_commits_under_load_only(db):
    store = CountingStore(db)
    reg = Registry(LeaseTable(), store, commit_interval=0.05)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        with trio.fail_after(5):  # idle: committed at once, not after the interval
            await reg.join(k(0), ttl=60)
        start = trio.current_time()

        async def node(i: int) -> None:
            await reg.join(k(i), ttl=60)
            for _ in range(5):
                await reg.renew(k(i))
        async with trio.open_nursery() as callers:
            for i in range(1, 21):
                callers.start_soon(node, i)
        took = trio.current_time() - start
        # 120 acknowledged writes, every one durable, in at most one commit per 50 ms
        assert store.transactions - 1 <= took / 0.05 + 1
        assert len(stored_keys(db)) == 21
        n.cancel_scope.cancel()
    store.close()


async def test_commit_failure_is_refused_and_rolled_back(db):
    """What was not stored is neither acknowledged (UNAVAILABLE, retryable) nor visible (memory is put
    back to the stored state, the event is dropped), and it is not retried behind the caller's back."""
    store, bus = CountingStore(db), Bus()
    reg = Registry(LeaseTable(), store, bus, retry_delay=0.01)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(2), capabilities=["old"], ttl=60)
        store.fail = True
        with pytest.raises(ProtocolError) as info:
            await reg.join(k(1), ttl=60)
        assert info.value.code == ErrorCode.UNAVAILABLE
        with pytest.raises(ProtocolError):
            await reg.join(k(2), capabilities=["new"], ttl=60)
        with pytest.raises(ProtocolError):
            await reg.leave(k(2))
        assert reg.get(k(1)) is None and reg.get(k(2)).capabilities == ("old",)
        assert bus.topics() == ["node.joined"]
        store.fail = False
        await reg.flush()
        assert stored_keys(db) == {k(2)}
        await reg.join(k(1), ttl=60)  # space is back: changes are stored again
        assert stored_keys(db) == {k(1), k(2)}
        assert reg.commit_failures == 3 and reg.changes_refused == 3
        n.cancel_scope.cancel()
    store.close()


async def test_failed_retry_does_not_resurrect_a_newer_change(db):
    store = CountingStore(db)
    reg = Registry(LeaseTable(), store, retry_delay=0.01)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        store.fail = True
        with pytest.raises(ProtocolError):
            await reg.join(k(1), ttl=60)
        store.fail = False
        await reg.leave(k(1))  # supersedes the failed upsert
        assert stored_keys(db) == set() and reg.get(k(1)) is None
        n.cancel_scope.cancel()
    store.close()


async def test_state_errors(db):
    store = CountingStore(db)
    reg = Registry(LeaseTable(), store)
    with pytest.raises(ProtocolError) as info:
        await reg.join(k(1))
    assert info.value.code == ErrorCode.UNAVAILABLE
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(2))
        n.cancel_scope.cancel()
    with pytest.raises(ProtocolError) as info:
        await reg.join(k(3))
    assert info.value.code == ErrorCode.SHUTTING_DOWN
    with pytest.raises(RuntimeError):
        await reg.run()
    store.close()


async def test_expiry_loop_publishes_and_deletes(db, mock_clock):
    bus = Bus()
    reg = await Registry.open(db, LeaseTable(min_ttl=1), bus, clock=Clock(), expiry_interval=10)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await trio.testing.wait_all_tasks_blocked()  # the loop sleeps expiry_interval on an empty table
        await reg.join(k(1), ttl=2)  # ... and is woken to sleep until this lease ends instead
        await reg.join(k(2), ttl=60)
        mock_clock.jump(1.999)
        await trio.testing.wait_all_tasks_blocked()
        assert reg.get(k(1)) is not None
        mock_clock.jump(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert reg.get(k(1)) is None
        assert bus.topics() == ["node.joined", "node.joined", "node.expired"]
        assert bus.events[-1][1]["key"] == k(1)
        await reg.flush()
        assert stored_keys(db) == {k(2)}
        n.cancel_scope.cancel()


async def test_renewal_events_are_optional():
    bus = Bus()
    reg = Registry(LeaseTable(), bus=bus, publish_renewals=True, clock=lambda: T0)
    await reg.join(k(1))
    await reg.renew(k(1))
    assert bus.topics() == ["node.joined", "node.renewed"]


async def test_admin_actions(db):
    bus = Bus()
    admin = k(100)
    table = LeaseTable(admission=Admission(mode="allowlist", allow={k(1), k(2)}, admins={admin}))
    reg = await Registry.open(db, table, bus, clock=lambda: T0)
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(1))
        await reg.join(k(2))
        for action in (reg.kick(k(1), by=k(2)), reg.ban(k(1), by=k(2)), reg.unban(k(1), by=k(2))):
            with pytest.raises(ProtocolError) as info:
                await action
            assert info.value.code == ErrorCode.FORBIDDEN
        assert (await reg.kick(k(1), by=admin)).key == k(1)
        assert await reg.kick(k(1), by=admin) is None
        await reg.join(k(1))  # kicked, not banned
        await reg.ban(k(1), until=T0 + 60_000, by=admin)
        await reg.ban(k(3), by=admin)  # not joined: still banned
        with pytest.raises(ProtocolError) as info:
            await reg.join(k(1))
        assert info.value.code == ErrorCode.BANNED
        with pytest.raises(ProtocolError) as info:
            await reg.join(k(4))
        assert info.value.code == ErrorCode.NOT_ADMITTED
        assert stored_keys(db) == {k(2)}
        with SqliteStore(db) as s:
            assert s.load()[1] == {k(1): T0 + 60_000, k(3): None}
        assert await reg.unban(k(3), by=admin) is True
        assert await reg.unban(k(3), by=admin) is False
        n.cancel_scope.cancel()
    assert bus.topics() == ["node.joined", "node.joined", "node.kicked", "node.joined", "node.banned",
                            "node.banned"]
    assert bus.events[4][1]["until"] == T0 + 60_000 and bus.events[4][1]["key"] == k(1)
    assert bus.events[5][1] == {"key": k(3), "capabilities": [], "meta": {}, "expires": None, "until": None}
    with SqliteStore(db) as s:
        assert s.load()[1] == {k(1): T0 + 60_000}


async def test_restart_restores_remaining_time(db):
    now = [T0]
    reg = await Registry.open(db, LeaseTable(), clock=lambda: now[0])
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(1), ttl=600, capabilities=["gpu"], meta={"r": "eu"})
        await reg.join(k(2), ttl=10)
        await reg.ban(k(3), until=T0 + 50_000)
        n.cancel_scope.cancel()
    now[0] = T0 + 100_000  # down for 100 s
    bus = Bus()
    reg = await Registry.open(db, LeaseTable(), bus, clock=lambda: now[0])
    try:
        e = reg.get(k(1))
        assert e.expires - now[0] == 500_000 and e.capabilities == ("gpu",) and e.meta == {"r": "eu"}
        assert reg.get(k(2)) is None and len(reg.table) == 1
        assert bus.topics() == ["node.expired"]
        assert not reg.table.is_banned(k(3), now[0])
    finally:
        reg.close()
    with SqliteStore(db) as s:  # what expired while down was deleted at load
        entries, bans = s.load()
    assert [x.key for x in entries] == [k(1)] and bans == {}


async def test_pending_changes_are_flushed_on_shutdown(db):
    now = [T0]
    reg = await Registry.open(db, LeaseTable(min_ttl=1), clock=lambda: now[0])
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(k(1), ttl=1)
        now[0] += 1000
        assert reg.expire() and reg.get(k(1)) is None  # its deletion is pending, not yet written
        n.cancel_scope.cancel()
    assert stored_keys(db) == set()


# --- kill mid-write --------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import hashlib, sys, trio
    from galaxynode.registry import LeaseTable, Registry

    async def main(path):
        reg = await Registry.open(path, LeaseTable())
        async def joiner(w):
            i = 0
            while True:
                key = hashlib.sha256(b"%d-%d" % (w, i)).digest()
                await reg.join(key, capabilities=["x"], meta={"w": str(w)}, ttl=3600)
                sys.stdout.write(key.hex() + "\\n")
                sys.stdout.flush()
                i += 1
        async with trio.open_nursery() as n:
            await n.start(reg.run)
            for w in range(8):
                n.start_soon(joiner, w)

    trio.run(main, sys.argv[1])
""")


def test_kill_mid_write_loses_no_acknowledged_join(db):
    acked_target = 400
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    buf = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while buf.count(b"\n") < acked_target:
                assert time.monotonic() < deadline, "too few joins acknowledged in time"
                if sel.select(0.5):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    assert chunk, "writer died: " + proc.stderr.read().decode()
                    buf += chunk
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        buf += proc.stdout.read()  # lines already written before the kill were acknowledged too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    acked = {bytes.fromhex(line.decode()) for line in buf.split(b"\n")[:-1]}  # drop a possibly partial last line
    assert len(acked) >= acked_target
    assert acked <= stored_keys(db)
