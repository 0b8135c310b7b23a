"""Bans that hit the right party, against a live pool process with default settings (only an admin
key configured): refusals are not violations, in-session abuse bans the key and pre-auth abuse the
address, an admin on a banned host still gets in to list and lift the ban, kick and ban end the
node's session with an ERROR it sees, absurd ban durations are refused, and the conformance suite
either completes or stops at the first ban with one line.

Bounds asserted: the honest client's connect+JOIN latency after a key was banned stays within
10x its quiet value + 300 ms (the key ban must not touch other clients of the same address), and
the pool's RSS grows by less than 30 MiB over each test.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from abuse import NETWORK, alive, assert_within, honest_join, honest_latency, live_pool, refusal, rss_mib
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity, write_key
from galaxynode.net import ChannelClosed, RemoteError, SessionClosed, establish, open_channel
from galaxynode.nodeclient import JoinState, connect, keep_joined

ADMIN = Identity.generate()
ENV = {"GALAXYNODE_ADMISSION_ADMINS": ADMIN.public_text}
RSS_GROWTH_MIB = 30



async def refused_with(url: str, identity: Identity, *, network: str = NETWORK) -> ErrorCode | None:
    """Connect and JOIN; the pool's ERROR code if it refused, None if the JOIN went through."""
    try:
        with trio.fail_after(10):
            async with connect(url, identity, network=network) as pool:
                await pool.join()
                await pool.leave()
    except (RemoteError, SessionClosed) as e:
        return refusal(e)
    return None


async def until_closed(ch) -> None:
    """Read (and drop) what the pool sends until it closes the channel."""
    with trio.fail_after(5):
        try:
            while True:
                await ch.receive()
        except ChannelClosed:
            pass


async def replay_frame(url: str, identity: Identity) -> None:
    """In-session abuse: the same signed frame twice (bad_sequence), via the session API."""
    async with open_channel(url, max_message_size=1 << 20, connect_timeout=5) as ch:
        session = await establish(ch, identity, opener=True, network=NETWORK, role="node")
        data = session.encode(m.Status())
        await ch.send(data)
        await ch.send(data)
        await until_closed(ch)


async def garbage_before_handshake(url: str) -> None:
    """Pre-auth abuse: bytes that are no frame, as the first message."""
    async with open_channel(url, max_message_size=1 << 20, connect_timeout=5) as ch:
        await ch.send(b"\xc1 not msgpack")
        await until_closed(ch)


async def admin_bans(url: str) -> list[dict]:
    async with connect(url, ADMIN, network=NETWORK) as admin:
        return await admin.admin("bans")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxynode", *args], capture_output=True, text=True, timeout=60)


def test_refusals_are_not_violations(tmp_path):
    """Wrong --network and a banned key retrying, many times, ban nobody: the same address still joins."""
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        rss0 = rss_mib(pool)

        async def main():
            for _ in range(5):
                assert await refused_with(pool.url, Identity.generate(), network="other-net") is ErrorCode.NETWORK_MISMATCH
            victim = Identity.generate()
            async with connect(pool.url, ADMIN, network=NETWORK) as admin:
                await admin.admin("ban", key=victim.public, duration=600)
            for _ in range(5):
                assert await refused_with(pool.url, victim) is ErrorCode.BANNED
            assert await refused_with(pool.url, Identity.generate()) is None
            assert [b for b in await admin_bans(pool.url) if b.get("by") == "violations"] == []
        trio.run(main)
        assert alive(pool) and rss_mib(pool) - rss0 < RSS_GROWTH_MIB


def test_in_session_abuse_bans_the_key_not_the_address(tmp_path):
    """3 sessions closed for bad_sequence ban that key (temporarily_banned after its handshake);
    fresh keys from the same address keep joining within 10x + 300 ms of the quiet latency."""
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        rss0 = rss_mib(pool)

        async def main():
            quiet = await honest_latency(pool.url)
            abuser = Identity.generate()
            for _ in range(3):
                await replay_frame(pool.url, abuser)
            assert await refused_with(pool.url, abuser) is ErrorCode.TEMPORARILY_BANNED
            loaded = await honest_latency(pool.url)
            assert_within(quiet, loaded, factor=10, slack=0.3)
            bans = await admin_bans(pool.url)
            assert [(b.get("key"), b["by"]) for b in bans] == [(abuser.public, "violations")]
            assert "bad_sequence" in bans[0]["reason"] and bans[0]["until"] > 0
            async with connect(pool.url, ADMIN, network=NETWORK) as admin:
                await admin.admin("unban", key=abuser.public)
            assert await refused_with(pool.url, abuser) is None
        trio.run(main)
        assert alive(pool) and rss_mib(pool) - rss0 < RSS_GROWTH_MIB


def test_preauth_abuse_bans_the_address_and_an_admin_there_lifts_it(tmp_path):
    """3 connections sending garbage before the handshake ban 127.0.0.1; the admin, from that same
    address, still gets in, sees the ban with `admin bans` and lifts it with `admin unban --address`."""
    key_file = tmp_path / "admin.key"
    write_key(ADMIN, key_file)
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        rss0 = rss_mib(pool)

        async def attack():
            for _ in range(3):
                await garbage_before_handshake(pool.url)
            assert await refused_with(pool.url, Identity.generate()) is ErrorCode.TEMPORARILY_BANNED
        trio.run(attack)
        common = (pool.url, "--network", NETWORK, "--key", str(key_file))
        listed = cli("admin", *common, "bans")
        assert listed.returncode == 0, listed.stderr
        assert "127.0.0.1" in listed.stdout and "violations" in listed.stdout and "malformed_frame" in listed.stdout
        lifted = cli("admin", *common, "unban", "--address", "127.0.0.1")
        assert lifted.returncode == 0 and "unbanned 127.0.0.1" in lifted.stdout, lifted.stderr
        assert cli("admin", *common, "bans").stdout.strip() == "no bans"
        trio.run(honest_join, pool.url)
        assert alive(pool) and rss_mib(pool) - rss0 < RSS_GROWTH_MIB


def test_kick_and_ban_end_the_session_with_an_error_the_node_sees(tmp_path):
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        async def main():
            node = Identity.generate()
            async with connect(pool.url, ADMIN, network=NETWORK) as admin:
                for action, code in (("kick", ErrorCode.KICKED), ("ban", ErrorCode.BANNED)):
                    async with connect(pool.url, node, network=NETWORK) as session:
                        await session.join()
                        await admin.admin(action, key=node.public)
                        with trio.fail_after(5):
                            await session.wait_closed()
                        assert refusal(session.closed_error()) is code
                    if action == "kick":  # a kicked node may come straight back
                        assert await refused_with(pool.url, node) is None
                with pytest.raises(RemoteError) as e:  # nothing left to kick
                    await admin.admin("kick", key=node.public)
                assert e.value.code is ErrorCode.NOT_FOUND
        trio.run(main)


def test_keep_joined_rejoins_after_a_kick_and_stops_when_banned(tmp_path):
    """A kicked node comes back after its backoff (no hot loop: one rejoin per kick); a banned one
    stops with the pool's `banned` instead of retrying."""
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        async def main():
            node = Identity.generate()
            states: list[JoinState] = []
            joined = trio.Event()

            def on_event(st: JoinState) -> None:
                states.append(st)
                if st.kind in ("joined", "rejoined"):
                    joined.set()
            ended: list[BaseException] = []

            async def keeper():
                try:
                    await keep_joined(pool.url, node, network=NETWORK, on_event=on_event, backoff_min=0.2,
                                      backoff_max=2.0)
                except RemoteError as e:
                    ended.append(e)
            with trio.fail_after(20):
                async with connect(pool.url, ADMIN, network=NETWORK) as admin, trio.open_nursery() as nursery:
                    nursery.start_soon(keeper)
                    for _ in range(2):
                        await joined.wait()
                        joined = trio.Event()
                        await admin.admin("kick", key=node.public)
                    await joined.wait()
                    await admin.admin("ban", key=node.public)  # keep_joined must end by itself
            assert [e.code for e in ended] == [ErrorCode.BANNED]
            kinds = [st.kind for st in states]
            assert kinds == ["joined", "disconnected", "rejoined", "disconnected", "rejoined"], kinds
            delays = [st.retry_in for st in states if st.kind == "disconnected"]
            assert all(refusal(st.error) is ErrorCode.KICKED for st in states if st.kind == "disconnected")
            assert 0.2 <= delays[0] <= 0.4 and 0.4 <= delays[1] <= 0.8  # backoff doubles per kick in a row
        trio.run(main)


def test_absurd_ban_durations_are_refused_and_later_joins_work(tmp_path):
    """ADMIN ban for 10^16 s used to poison the store: every later JOIN/HEARTBEAT was `internal`."""
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        async def main():
            node = Identity.generate()
            async with connect(pool.url, ADMIN, network=NETWORK) as admin, \
                    connect(pool.url, node, network=NETWORK) as session:
                await session.join()
                for duration in (10 ** 16, m.Admin.MAX_DURATION + 1, 0):
                    with pytest.raises(RemoteError) as e:
                        await admin.admin("ban", key=node.public, duration=duration)
                    assert e.value.code is ErrorCode.INVALID_BODY
                await session.heartbeat()
                async with connect(pool.url, node, network=NETWORK) as again:  # (renewals are paced per session)
                    await again.join()
                    other = Identity.generate()
                    await admin.admin("ban", key=other.public, duration=m.Admin.MAX_DURATION)  # the longest allowed
                    [ban] = [b for b in await admin.admin("bans") if b.get("key") == other.public]
                    assert ban["by"] == "admin" and ban["until"] > (10 * 365 - 1) * 86_400_000
                    await again.heartbeat()
        trio.run(main)
        assert "Traceback" not in pool.output


def test_conformance_against_a_default_pool_completes_or_stops_with_one_line(tmp_path):
    """Against default ban settings the suite stops at the first ban with exactly one stderr line
    naming limits.violations_before_ban, reports no case as FAIL because of it; then the admin on
    the same host lists the ban and lifts it, and honest nodes join again."""
    key_file = tmp_path / "admin.key"
    write_key(ADMIN, key_file)
    with live_pool(tmp_path / "pool", env=ENV) as pool:
        run = cli("conformance", pool.url, "--network", NETWORK, "--handshake-timeout", "8", "--max-wait", "3")
        if run.returncode != 0:
            assert run.stderr.count("\n") == 1 and "limits.violations_before_ban" in run.stderr, run.stderr
            assert " FAIL " not in run.stdout and "temporarily_banned" not in run.stdout, run.stdout
        else:
            assert run.stderr == ""
        common = (pool.url, "--network", NETWORK, "--key", str(key_file))
        listed = cli("admin", *common, "bans", "--json")
        assert listed.returncode == 0, listed.stderr
        if run.returncode != 0:
            assert "127.0.0.1" in listed.stdout
            assert cli("admin", *common, "unban", "--address", "127.0.0.1").returncode == 0
        trio.run(honest_join, pool.url)
