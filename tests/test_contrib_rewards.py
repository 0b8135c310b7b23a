"""rewards: the sans-IO accounting (unit + hypothesis), the plugin in a daemon process across an
expiry and a pool restart, and `galaxynode rewards`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio
from hypothesis import given, settings, strategies as st

from galaxynode import plugin
from galaxynode.contrib.rewards import PPM, Accounting
from galaxynode.identity import Identity, format_public_key, format_stellar
from galaxynode.nodeclient import connect

from abuse import NETWORK, live_pool

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32

def test_coverage_is_split_at_epoch_boundaries_and_ends_on_every_kind_of_end():
    acc = Accounting(1000)
    acc.joined(A, 500)
    acc.joined(B, 200)
    acc.joined(C, 0)
    acc.event("node.expired", {"key": A, "expires": 1700}, 2300)  # swept late: counted to its expiry
    acc.event("node.kicked", {"key": B}, 900)
    acc.event("node.banned", {"key": C, "until": 9999}, 1200)
    assert acc.totals == {0: {A: 500, B: 700, C: 1000}, 1: {A: 700, C: 200}}
    assert acc.finished(2000) == [0, 1]
    report = acc.report(0)
    assert [r[:2] for r in report["nodes"]] == [[C, 1000], [B, 700], [A, 500]]
    assert sum(r[3] for r in report["nodes"]) <= PPM and report["total_ms"] == 2200

def test_an_expiry_seen_within_the_grace_counts_to_the_lease_end_and_a_later_one_changes_nothing():
    acc = Accounting(1000)
    acc.joined(A, 0)
    acc.joined(B, 0)
    assert acc.finished(1100, grace_ms=200) == []
    acc.event("node.expired", {"key": A, "expires": 600}, 1100)
    assert acc.finished(1200, grace_ms=200) == [0]
    acc.event("node.expired", {"key": B, "expires": 700}, 1300)  # too late: epoch 0 is reported
    assert acc.report(0)["nodes"][0][:2] == [B, 1000] and acc.report(0)["nodes"][1][:2] == [A, 600]
    assert acc.totals.get(1, {}) == {}

def test_stake_weights_from_meta_and_config():
    acc = Accounting(1000)
    acc.joined(A, 0, weight=3)
    acc.joined(B, 0)
    acc.finished(1000)
    assert {r[0]: r[3] for r in acc.report(0)["nodes"]} == {A: 750_000, B: 250_000}
    assert {r[0]: r[3] for r in acc.report(0, {A: 0})["nodes"]} == {A: 0, B: PPM}

def test_restart_from_a_checkpoint_counts_nothing_twice():
    acc = Accounting(1000)
    acc.joined(A, 0)
    acc.joined(B, 100)
    acc.clock = 400
    saved = acc.dump()
    # after the checkpoint (unseen): B left, C joined; the pool restarts and re-snapshots at 700
    again = Accounting.load(saved, 1000)
    again.resync([(A, 0, 1), (C, 600, 1)], 700)
    again.finished(1000)
    assert again.report(0)["nodes"] == [[A, 1000, 1, 1_000_000 * 1000 // 1700], [C, 400, 1, 1_000_000 * 400 // 1700],
                                        [B, 300, 1, 1_000_000 * 300 // 1700]]

def test_a_finished_epoch_takes_no_more_coverage():
    acc = Accounting(1000)
    acc.joined(A, 0)
    assert acc.finished(1500) == [0]
    acc.forget(0)
    acc.event("node.left", {"key": A}, 1200)
    acc.joined(B, 300)  # a JOIN seen late never reaches into a closed epoch
    acc.ended(B, 1400)
    assert acc.totals == {1: {A: 200, B: 400}}

@st.composite
def histories(draw):
    keys = [bytes([i]) * 32 for i in range(4)]
    steps, t = [], 0
    for _ in range(draw(st.integers(0, 40))):
        t += draw(st.integers(0, 700))
        steps.append((t, draw(st.sampled_from(["join", "end", "checkpoint", "restart"])), draw(st.sampled_from(keys))))
    return steps

@given(histories(), st.integers(100, 2000))
@settings(max_examples=300, deadline=None)
def test_total_coverage_is_exactly_the_time_leases_were_held(steps, length):
    """Whatever the order of joins, ends, checkpoints and restarts (a restart re-snapshots the
    leases held then), every epoch holds exactly the held time inside it: nothing twice, nothing lost
    (ends here happen while watched, so a restart loses nothing)."""
    acc, held, truth = Accounting(length), {}, {}

    def credit(key, a, b):
        while a < b:
            e, stop = a // length, min(b, (a // length + 1) * length)
            truth.setdefault(e, {}).setdefault(key, 0)
            truth[e][key] += stop - a
            a = stop

    for t, what, key in steps:
        if what == "join" and key not in held:
            held[key] = t
            acc.event("node.joined", {"key": key}, t)
        elif what == "end" and key in held:
            credit(key, held.pop(key), t)
            acc.event("node.left", {"key": key}, t)
        elif what == "checkpoint":
            acc.clock = t
        elif what == "restart":
            acc.clock = t
            acc = Accounting.load(acc.dump(), length)
            acc.resync([(k, j, 1) for k, j in held.items()], t)
    end = steps[-1][0] if steps else 0
    for key in list(held):
        credit(key, held.pop(key), end)
    acc.book_until(end)
    got = {e: t for e, t in acc.totals.items() if t}
    assert got == {e: t for e, t in truth.items() if any(t.values())}

# --- end to end: a daemon process, real nodes, an expiry and a pool restart ---------------------------

CONFIG = """[plugins]
enabled = ["rewards"]

[plugins.rewards]
epoch = 2
checkpoint = 0.1
grace = 0.5
stake_meta = "stake"
"""
ENV = {"GALAXYNODE_REGISTRY_MIN_TTL": "1", "GALAXYNODE_REGISTRY_EXPIRY_INTERVAL": "0.05"}

async def report(url: str, epoch: int) -> dict | None:
    from galaxynode.contrib.rewards import verify_report
    from galaxynode.net.connection import RemoteError
    async with connect(url, Identity.generate(), network=NETWORK) as pool:
        try:
            reply = await plugin.call(pool, "rewards", "report", {"epoch": epoch})
        except RemoteError as e:
            assert e.message == f"rewards: no report for epoch {epoch}"
            return None
        return verify_report(reply, pool.peer_key)

async def wait_report(url: str, epoch: int) -> dict:
    with trio.fail_after(30):
        while (got := await report(url, epoch)) is None:
            await trio.sleep(0.2)
    return got

def shares(rep: dict) -> dict[bytes, list]:
    return {k: [ms, w, ppm] for k, ms, w, ppm in rep["nodes"]}

async def test_rewards_across_an_expiry_and_a_pool_restart(tmp_path):
    config = tmp_path / "galaxynode.toml"
    config.write_text(CONFIG)
    data, brief, steady = tmp_path / "data", Identity.generate(), Identity.generate()
    with live_pool(data, env=ENV, args=("--config", str(config))) as pool:
        async with connect(pool.url, steady, network=NETWORK) as node:
            await node.join(ttl=600, meta={"stake": "3"})
        async with connect(pool.url, brief, network=NETWORK) as node:
            brief_lease = await node.join(ttl=1)  # never renewed: expires after the 1 or 2 s granted (paced)
        rep = await wait_report(pool.url, (await _now_epoch()) + 1)
        assert pool.stop() == 0
    with live_pool(data, env=ENV, args=("--config", str(config))) as pool:
        last = await wait_report(pool.url, rep["epoch"] + 2)  # an epoch that spans no restart: compare
        reports = [await report(pool.url, e) for e in range(rep["epoch"] - 3, last["epoch"] + 1)]
        result = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "galaxynode", "rewards", pool.url, "--network", NETWORK,
             "--epoch", str(last["epoch"]), "--json"], capture_output=True, text=True, timeout=60))
        missing = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "galaxynode", "rewards", pool.url, "--network", NETWORK, "--epoch", "1"],
            capture_output=True, text=True, timeout=60))
    reports = [r for r in reports if r is not None]
    # the node whose lease expired: covered for its lease, in total, once
    brief_ms = sum(shares(r).get(brief.public, [0])[0] for r in reports)
    assert brief_lease.ttl * 1000 - 50 <= brief_ms <= brief_lease.ttl * 1000, brief_ms
    # the steady node: every whole epoch after its JOIN fully covered, the restart's included, never more
    covered = [shares(r)[steady.public] for r in reports if steady.public in shares(r)]
    assert all(ms <= 2000 for ms, _, _ in covered)
    assert [ms for ms, _, _ in covered[1:]] == [2000] * (len(covered) - 1) and len(covered) >= 3
    assert {w for _, w, _ in covered} == {3}
    assert all(r["origin"] == last["origin"] and r["network"] == NETWORK for r in reports)
    assert result.returncode == 0, result.stderr
    assert missing.returncode == 1 and missing.stderr == (
        f"galaxynode: {pool.url}: epoch 1: rewards: no report for epoch 1\n")
    out = json.loads(result.stdout)
    assert out["epoch"] == last["epoch"] and out["pool"] == format_public_key(last["origin"])
    assert out["nodes"] == [{"key": format_public_key(steady.public), "stellar": format_stellar(steady.public),
                             "ms": 2000, "weight": 3, "share_ppm": 1_000_000}]

async def _now_epoch() -> int:
    import time
    return time.time_ns() // 1_000_000 // 2000
