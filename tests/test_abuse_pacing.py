"""Heartbeat pacing against a live pool process (issue 20): a node heartbeating far faster than its
LEASE asks is refused rate_limited and then banned while honest nodes keep their leases; a pool past
its heartbeat budget refuses new keys with overloaded + retry_after and keeps every lease it holds;
keep_joined heartbeats at the interval the pool asks for and waits out retry_after.

Bounds asserted: honest connect+JOIN latency during the heartbeat flood stays within 10x its quiet
value + 300 ms; no honest keep_joined node is disconnected or rejoins while an attacker is refused,
nor while the pool is at its budget.
"""
from __future__ import annotations

import pytest
import trio

from abuse import NETWORK, alive, assert_within, honest_latency, live_pool, refusal
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.net import RemoteError, SessionClosed
from galaxynode.nodeclient import JoinState, connect, keep_joined

ADMIN = Identity.generate()



class Honest:
    """keep_joined nodes in a nursery: every state they report, and whether all are joined."""

    def __init__(self, url: str, n: int, *, ttl: int):
        self.url, self.ttl = url, ttl
        self.keys = [Identity.generate() for _ in range(n)]
        self.states: list[JoinState] = []
        self.all_joined = trio.Event()

    def _on_event(self, st: JoinState) -> None:
        self.states.append(st)
        if sum(s.kind == "joined" for s in self.states) == len(self.keys):
            self.all_joined.set()

    async def start(self, nursery: trio.Nursery) -> None:
        """Start them in `nursery` and return once every one has joined."""
        for key in self.keys:
            nursery.start_soon(lambda k=key: keep_joined(self.url, k, network=NETWORK, ttl=self.ttl,
                                                         on_event=self._on_event, backoff_min=0.2))
        with trio.fail_after(20):
            await self.all_joined.wait()

    def troubles(self) -> list[JoinState]:
        return [s for s in self.states if s.kind != "joined"]

    async def listed(self) -> set[bytes]:
        async with connect(self.url, ADMIN, network=NETWORK) as c:
            return {n.key for n in await c.query(limit=1000)}


async def flood_heartbeats(url: str, attacker: Identity, renew: str = "heartbeat") -> ErrorCode | None:
    """JOIN, then renew back to back (HEARTBEAT, or JOIN again): the pool's refusal (None if it never came)."""
    try:
        with trio.fail_after(10):
            async with connect(url, attacker, network=NETWORK) as s:
                await s.join(ttl=30)
                for _ in range(50):
                    await (s.heartbeat() if renew == "heartbeat" else s.join(ttl=30))
    except (RemoteError, SessionClosed) as e:
        return refusal(e)
    return None


@pytest.mark.parametrize("renew", ["heartbeat", "join"])  # a re-JOIN renews too: the same obligation
def test_early_heartbeats_are_refused_then_banned_while_honest_nodes_keep_their_leases(tmp_path, renew):
    env = {"GALAXYNODE_ADMISSION_ADMINS": ADMIN.public_text, "GALAXYNODE_REGISTRY_MIN_TTL": "1"}
    with live_pool(tmp_path / "pool", env=env) as pool:
        async def main():
            honest = Honest(pool.url, 5, ttl=3)  # heartbeats about every second
            async with trio.open_nursery() as nursery:
                await honest.start(nursery)
                quiet = await honest_latency(pool.url)
                attacker = Identity.generate()
                for _ in range(3):  # violations_before_ban
                    assert await flood_heartbeats(pool.url, attacker, renew) is ErrorCode.RATE_LIMITED
                assert await flood_heartbeats(pool.url, attacker, renew) is ErrorCode.TEMPORARILY_BANNED
                assert_within(quiet, await honest_latency(pool.url), factor=10, slack=0.3)
                await trio.sleep(4)  # more than an honest lease (3 s): each was renewed meanwhile
                assert honest.troubles() == []
                assert {k.public for k in honest.keys} <= await honest.listed()
                async with connect(pool.url, ADMIN, network=NETWORK) as admin:
                    bans = await admin.admin("bans")
                assert [(b.get("key"), b["by"]) for b in bans] == [(attacker.public, "violations")]
                assert "rate_limited" in bans[0]["reason"]
                nursery.cancel_scope.cancel()
        trio.run(main)
        assert alive(pool)


def test_a_pool_past_its_budget_refuses_new_keys_overloaded_and_keeps_every_lease(tmp_path):
    """1 heartbeat/s and leases of at most 9 s: the budget holds 3 leases. A fourth key is refused
    overloaded with a retry_after (not fatal, no violation; keep_joined waits it out instead of giving
    up); a key that holds a lease joins again from a new session; the other leases outlive max_ttl."""
    env = {"GALAXYNODE_ADMISSION_ADMINS": ADMIN.public_text, "GALAXYNODE_REGISTRY_MAX_HEARTBEATS_PER_S": "1",
           "GALAXYNODE_REGISTRY_MIN_TTL": "1", "GALAXYNODE_REGISTRY_MAX_TTL": "9",
           "GALAXYNODE_REGISTRY_DEFAULT_TTL": "9"}
    with live_pool(tmp_path / "pool", env=env) as pool:
        async def main():
            honest = Honest(pool.url, 2, ttl=9)
            async with trio.open_nursery() as nursery:
                await honest.start(nursery)
                held, newcomer = Identity.generate(), Identity.generate()
                async with connect(pool.url, held, network=NETWORK) as s:  # the third lease: the budget is spent
                    lease = await s.join(ttl=9)
                assert lease.interval <= 3000 and lease.ttl == 9  # max_ttl/3 at most
                async with connect(pool.url, newcomer, network=NETWORK) as s:
                    for _ in range(5):
                        with pytest.raises(RemoteError) as e:
                            await s.join()
                        assert e.value.code is ErrorCode.OVERLOADED and 30_000 <= e.value.retry_after <= 60_000
                    await s.status()  # the session goes on
                late: list[JoinState] = []
                nursery.start_soon(lambda: keep_joined(pool.url, newcomer, network=NETWORK, on_event=late.append))
                async with connect(pool.url, held, network=NETWORK) as s:  # a held key is never refused
                    assert (await s.join(ttl=9)).interval <= 3000
                    await s.leave()
                await trio.sleep(10)  # more than max_ttl: the honest leases were renewed, not dropped
                assert [(s.kind, refusal(s.error)) for s in late] == [("disconnected", ErrorCode.OVERLOADED)]
                assert 30 <= late[0].retry_in <= 72  # retry_after (30..60 s) plus up to a fifth
                assert honest.troubles() == []
                assert await honest.listed() == {k.public for k in honest.keys}
                async with connect(pool.url, ADMIN, network=NETWORK) as admin:
                    assert await admin.admin("bans") == []  # overloaded is no violation
                nursery.cancel_scope.cancel()
        trio.run(main)
        assert alive(pool)


def test_keep_joined_heartbeats_at_the_interval_the_pool_asks_for(tmp_path):
    """1 heartbeat/s for 3 nodes asking ttl 3: the pool asks for about 3 s, not the 1 s of ttl/3. A
    node heartbeating at its asked ttl/3 would be refused rate_limited within seconds; keep_joined is not."""
    env = {"GALAXYNODE_REGISTRY_MAX_HEARTBEATS_PER_S": "1", "GALAXYNODE_REGISTRY_MIN_TTL": "1",
           "GALAXYNODE_ADMISSION_ADMINS": ADMIN.public_text}
    with live_pool(tmp_path / "pool", env=env) as pool:
        async def main():
            honest = Honest(pool.url, 3, ttl=3)
            async with trio.open_nursery() as nursery:
                await honest.start(nursery)
                await trio.sleep(8)
                assert honest.troubles() == []
                assert {k.public for k in honest.keys} <= await honest.listed()
                nursery.cancel_scope.cancel()
        trio.run(main)
        assert alive(pool)


def test_a_paced_node_costs_no_keepalive_pings_until_its_heartbeat_is_late(tmp_path):
    """Keepalive counts from when the next HEARTBEAT is due (messages §8.6): at 10,000 nodes paced past
    ping_interval the pool used to send ~500 PINGs/s whatever its heartbeat budget."""
    env = {"GALAXYNODE_REGISTRY_MIN_TTL": "1", "GALAXYNODE_LIMITS_PING_INTERVAL": "0.5",
           "GALAXYNODE_LIMITS_IDLE_TIMEOUT": "1.5"}
    with live_pool(tmp_path / "pool", env=env) as pool:
        async def main():
            async with connect(pool.url, Identity.generate(), network=NETWORK) as s:
                pings = lambda: s.conn.stats.frames_in_by_type.get("PING", 0)  # noqa: E731
                lease = await s.join(ttl=9)  # interval about 3 s: six ping_intervals, two idle_timeouts
                await trio.sleep(lease.interval / 1000 * 0.9)
                assert pings() == 0 and not s.closed
                lease = await s.heartbeat()
                await trio.sleep(lease.interval / 1000 * 0.9)
                assert pings() == 0 and not s.closed
                with trio.fail_after(lease.interval / 1000 + 10):  # late: the pool's keepalive takes over
                    while pings() == 0:
                        await trio.sleep(0.05)
                assert not s.closed  # the client answered, as any PING
                await s.heartbeat()
        trio.run(main)
        assert alive(pool)
