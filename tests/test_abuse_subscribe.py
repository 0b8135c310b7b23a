"""Issue 12 item 5 against a live pool: two sessions try to subscribe ~95k topic patterns.

Reported: with no cap, each SUBSCRIBE re-validating every pattern and every event scanning every
wildcard pattern, two sessions with ~95k patterns held the pool at 100% CPU for 30 s after they
stopped, and honest JOIN went from 5.5 ms to 0.65-1.8 s. Now patterns are capped per session
(limits.max_subscriptions, 64: `limit_exceeded`, not fatal) and per pool
(limits.max_pool_subscriptions, 65536: `unavailable`), added in place, and matched through a topic
trie. The frame and byte rate limits are raised in these tests so that the subscription defences,
not the rate limiter, are what stands between the attackers and the pool.

Attackers send SUBSCRIBE frames of 32 fresh wildcard patterns without waiting for the replies, for
at least 95k patterns and until the honest client has been measured under attack (from the moment
half of those patterns were sent); then they read every reply, and close once both have: a session's
patterns leave the pool-wide count when it closes, so one attacker closing while the other's
SUBSCRIBEs are still on their way would hand those the freed room (the cap bounds the patterns held at
once, not the ACKs ever sent). Bounds (both tests): honest connect+JOIN within 10 x quiet + 200 ms
during the attack and right after it; RSS growth under 120 MiB (65,536 patterns held: ~30 MiB
measured); and the pool idle again after the attackers stop: at most 0.4 s of CPU (utime+stime from
/proc/<pid>/stat) over the 2 s that begin 0.5 s after they closed.
"""
from __future__ import annotations

import time
from pathlib import Path

import trio

from abuse import NETWORK, alive, assert_within, honest_latency, live_pool, rss_mib
from bench_heartbeats import cpu_seconds
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.net.connection import SessionClosed
from galaxynode.nodeclient import connect

FACTOR, SLACK = 10, 0.2          # honest connect+JOIN bound: FACTOR x quiet + SLACK seconds
RSS_GROWTH_MIB = 120
IDLE_CPU, IDLE_WINDOW = 0.4, 2.0  # CPU seconds allowed over the window after the attack
ATTACK_PATTERNS = 95_000          # per attack, over the two sessions
# Raised so that the subscription caps are the defence under test, not the frame/byte rate limiter.
UNLIMITED_RATES = {"GALAXYNODE_LIMITS_FRAME_RATE": "100000", "GALAXYNODE_LIMITS_FRAME_BURST": "100000",
                   "GALAXYNODE_LIMITS_BYTE_RATE": str(64 * 2**20), "GALAXYNODE_LIMITS_BYTE_BURST": str(64 * 2**20)}
SHAPES = ("s{s}x{i}.*", "*.s{s}x{i}.#", "*.*.s{s}x{i}", "s{s}x{i}.*.*.#")  # none matches a real topic


class Attacker:
    """One session flooding SUBSCRIBE; counts the replies by kind, then holds its session (and so its
    patterns) until `release`."""

    def __init__(self, n: int):
        self.n = n
        self.sent = 0
        self.acks = 0
        self.errors: dict[int, int] = {}
        self.open_after = False
        self.answered = False
        self.ended = ""

    async def run(self, url: str, keep_going: trio.Event, release: trio.Event) -> None:
        try:
            await self._flood(url, keep_going, release)
        except SessionClosed as e:  # e.g. a pool too busy to read us (slow_reader): the test reports it
            self.ended = str(e)

    async def _flood(self, url: str, keep_going: trio.Event, release: trio.Event) -> None:
        async with connect(url, Identity.generate(), network=NETWORK, timeout=30) as client:
            conn, i = client.conn, 0
            while i < ATTACK_PATTERNS // 2 or not keep_going.is_set():
                topics = tuple(SHAPES[(i + j) % len(SHAPES)].format(s=self.n, i=i + j) for j in range(32))
                await conn.send(m.Subscribe(topics=topics))
                self.sent, i = self.sent + 1, i + 32
            with trio.fail_after(30):       # read every reply: ACKs and ERRORs answer requests in order
                while conn.stats.late_replies + sum(conn.stats.errors_received_by_code.values()) < self.sent:
                    await trio.sleep(0.02)
            self.acks = conn.stats.late_replies
            self.errors = dict(conn.stats.errors_received_by_code)
            self.answered = True
            await release.wait()
            self.open_after = (await client.status()).nodes >= 0 and not client.closed


async def attack(url: str) -> tuple[list[Attacker], float, float]:
    """(attackers, honest latency under attack, seconds of attack). The attackers close only once
    every one has been answered (see the module docstring)."""
    attackers, measured, answered = [Attacker(0), Attacker(1)], trio.Event(), trio.Event()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for a in attackers:
            nursery.start_soon(a.run, url, measured, answered)
        while not all(a.sent * 32 >= ATTACK_PATTERNS // 4 or a.ended for a in attackers):  # half of it in
            await trio.sleep(0.05)
        loaded = await honest_latency(url)
        measured.set()
        while not all(a.answered or a.ended for a in attackers):
            await trio.sleep(0.05)
        answered.set()
    return attackers, loaded, time.perf_counter() - started


def idle_cpu(pid: int) -> float:
    time.sleep(0.5)
    start = cpu_seconds(pid)
    time.sleep(IDLE_WINDOW)
    return cpu_seconds(pid) - start


async def attacked_pool(tmp_path: Path, env: dict[str, str]) -> list[Attacker]:
    """Runs the attack on a live pool and asserts the bounds of the module docstring; returns the
    attackers for the test's own checks of what they were answered."""
    with live_pool(tmp_path, env=env) as pool:
        quiet = await honest_latency(pool.url)
        rss0 = rss_mib(pool)
        attackers, loaded, took = await attack(pool.url)
        rss1, idle = rss_mib(pool), idle_cpu(pool.pid)
        after = await honest_latency(pool.url)
        assert alive(pool)
    report = (f"quiet {quiet * 1000:.1f} ms, under attack {loaded * 1000:.1f} ms, after {after * 1000:.1f} ms; "
              f"{sum(a.sent for a in attackers)} SUBSCRIBEs in {took:.1f} s; RSS {rss0:.0f} -> {rss1:.0f} MiB; "
              f"CPU after {idle:.2f} s / {IDLE_WINDOW:g} s; answers "
              f"{[(a.acks, a.errors, a.ended) for a in attackers]}")
    print(report)
    assert_within(quiet, loaded, factor=FACTOR, slack=SLACK)
    assert_within(quiet, after, factor=FACTOR, slack=SLACK)
    assert rss1 - rss0 < RSS_GROWTH_MIB, report
    assert idle <= IDLE_CPU, report
    for a in attackers:
        assert a.sent * 32 >= ATTACK_PATTERNS // 2 and a.open_after, report  # refusals were not fatal
    return attackers


async def test_subscribe_flood_is_capped_per_session(tmp_path: Path):
    """Default caps: each attacker gets its first 64 patterns (2 SUBSCRIBEs), every later SUBSCRIBE
    is answered limit_exceeded and the session stays open. Bounds in the module docstring."""
    for a in await attacked_pool(tmp_path, UNLIMITED_RATES):
        assert a.acks == 2 and a.errors == {int(ErrorCode.LIMIT_EXCEEDED): a.sent - 2}, (a.acks, a.errors)


async def test_subscribe_flood_fills_the_pool_cap_and_events_stay_cheap(tmp_path: Path):
    """Per-session cap raised to its maximum (100,000): the two attackers fill the pool-wide cap
    (65,536 patterns: 2,048 ACKs, as both hold theirs until both are answered), every later SUBSCRIBE
    is answered unavailable, and each honest JOIN's events are matched against a bus holding 65,536
    patterns, which the trie makes no dearer than an empty one. Bounds in the module docstring."""
    attackers = await attacked_pool(tmp_path, {**UNLIMITED_RATES, "GALAXYNODE_LIMITS_MAX_SUBSCRIPTIONS": "100000"})
    assert sum(a.acks for a in attackers) == 65_536 // 32
    for a in attackers:
        assert a.errors == {int(ErrorCode.UNAVAILABLE): a.sent - a.acks}, (a.acks, a.errors)
