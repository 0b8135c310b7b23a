"""The conformance suite: it passes our own endpoints (in-process and the real daemons), fails
deliberately broken ones on exactly the cases that check their defect, and its doc is current."""
from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from broken_endpoints import BROKEN, NETWORK, endpoint
from galaxynode.conformance.probe import Options
from galaxynode.conformance.runner import (GROUPS, Endpoint, all_cases, print_result, print_summary, report,
                                           run_suite, select)
from procutil import Proc

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


def options(url: str, role: str) -> Options:
    return Options(url=url, network=NETWORK, role=role, timeout=5, handshake_timeout=2,
                   max_frame_size=64 * 1024, max_wait=2, flood=1000)


def failed(results: dict) -> set[str]:
    return {i for i, r in results.items() if r.outcome != "pass"}


def quick(role: str, keep: set[str]) -> list:
    """Every case of role except those that wait (timeouts, expiry), unless they are in keep."""
    opts = options("ws://unused", role)
    return [c for c in select(all_cases(), role, None) if c.wait(opts) == 0 or c.id in keep]


@pytest.mark.parametrize("role", ["pool", "mainnet"])
async def test_correct_in_process_endpoint_passes(role):
    """The baseline for the broken ones (the real daemons below also run the waiting cases)."""
    async with endpoint(role) as url:
        results = {r.case.id: r for r in await run_suite(options(url, role), quick(role, set()))}
    assert len(results) > 50
    assert failed(results) == set(), {i: (results[i].expected, results[i].got) for i in failed(results)}


@pytest.mark.parametrize("name", sorted(BROKEN))
async def test_broken_endpoint_fails_exactly_the_right_cases(name, monkeypatch):
    role, breaker = BROKEN[name]
    expected = breaker(monkeypatch)
    async with endpoint(role) as url:
        results = {r.case.id: r for r in await run_suite(options(url, role), quick(role, expected))}
    details = {i: (r.outcome, r.expected, r.got) for i, r in results.items() if r.outcome != "pass"}
    assert failed(results) == expected, details
    assert all(results[i].outcome == "fail" and results[i].expected and results[i].got for i in expected)


async def test_a_ban_stops_the_run_with_one_line():
    """Pre-auth abuse is counted per address: a strict endpoint bans the suite; the run stops, no
    case is reported as failed for the ban, and the stop line names the setting to change."""
    from galaxynode.net import Bans
    async with endpoint("pool", bans=Bans(violations_before_ban=2, ban_seconds=60)) as url:
        opts = options(url, "pool")
        chosen = select(all_cases(), "pool", "*")
        results = await run_suite(opts, chosen)
    assert results.stopped is not None and len(results) < len(chosen)
    assert "\n" not in results.stopped and "limits.violations_before_ban" in results.stopped
    assert f"stopped at case {chosen[len(results)].id}: " in results.stopped
    assert not any("temporarily_banned" in r.got for r in results)
    data = report(opts, Endpoint(b"k" * 32, "pool", "x"), results)
    assert not data["passed"] and data["stopped"] == results.stopped


DAEMON_ENV = {"GALAXYNODE_LIMITS_VIOLATIONS_BEFORE_BAN": "1000",  # the suite is hostile on purpose
              "GALAXYNODE_LIMITS_HANDSHAKE_TIMEOUT": "1", "GALAXYNODE_REGISTRY_MIN_TTL": "1",
              "GALAXYNODE_REGISTRY_EXPIRY_INTERVAL": "0.1"}


def test_our_pool_and_main_net_pass_every_case(tmp_path):
    """CI: the real daemons, as processes, through the CLI; JSON reports and exit codes."""
    with Proc("run", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "pool"), "--network", "ci",
              env=DAEMON_ENV) as pool, \
            Proc("mainnet", "--listen", "ws://127.0.0.1:0", "--data-dir", str(tmp_path / "main"),
                 "--network", "ci", env=DAEMON_ENV) as main:
        runs, url_of = {}, {}
        for name, daemon in (("pool", pool), ("mainnet", main)):
            url = url_of[name] = daemon.wait_for(r"serving Gelato on (ws://\S+)").group(1)
            runs[name] = subprocess.Popen(
                [sys.executable, "-m", "galaxynode", "conformance", url, "--network", "ci", "--handshake-timeout",
                 "3", "--max-wait", "3", "--json", str(tmp_path / f"{name}.json")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, proc in runs.items():
            out, _ = proc.communicate(timeout=60)
            report = json.loads((tmp_path / f"{name}.json").read_text())
            assert report["role"] == name
            bad = [(c["id"], c["outcome"], c["expected"], c["got"]) for c in report["cases"] if c["outcome"] != "pass"]
            assert bad == [] and proc.returncode == 0, out
            assert report["passed"] and f"{len(report['cases'])} cases: {len(report['cases'])} pass" in out
        # Failures make exit 1: a pool is no main net.
        p = subprocess.run([sys.executable, "-m", "galaxynode", "conformance", url_of["pool"], "--network", "ci",
                            "--role", "mainnet", "--cases", "9.1"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "9.1    FAIL" in p.stdout and "expected: LEASE to ANNOUNCE" in p.stdout
        assert pool.stop() == 0 and main.stop() == 0
        assert "Traceback" not in pool.output + main.output


def test_unreachable_endpoint_is_one_line_and_exit_1():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "galaxynode", "conformance", f"ws://127.0.0.1:{port}", "--timeout", "2"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and f"cannot reach ws://127.0.0.1:{port}" in p.stderr


async def test_human_report_shows_expected_and_got(monkeypatch):
    from broken_endpoints import break_replay
    break_replay(monkeypatch)
    async with endpoint("pool") as url:
        opts = options(url, "pool")
        results = await run_suite(opts, select(all_cases(), "pool", "4.1,4.2"))
    out = io.StringIO()
    for r in results:
        print_result(r, out)
    print_summary(results, out)
    text = out.getvalue()
    assert "4.1    FAIL" in text and "expected: ERROR bad_sequence (3005)" in text and "4.2    pass" in text
    assert text.endswith("2 cases: 1 pass, 1 fail\n")
    data = report(opts, Endpoint(b"k" * 32, "pool", "x"), results)
    assert not data["passed"] and data["cases"][0]["outcome"] == "fail" and data["cases"][0]["got"]


def test_cases_are_well_formed():
    cases = all_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    docs = {p.stem for p in (ROOT / "docs" / "gelato").glob("*.md")}
    for c in cases:
        assert c.group in GROUPS and c.level in ("MUST", "SHOULD", "MAY")
        cited = {word for word in c.section.replace(",", " ").split() if word.isalpha() and word.islower()}
        assert cited and cited <= docs, (c.id, c.section)


def test_doc_lists_every_case():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_conformance_doc.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_doc_names_the_cases_each_broken_endpoint_fails():
    """conformance.md §5 is written by hand: its case lists are the ones the broken endpoints expect."""
    text = (ROOT / "docs" / "gelato" / "conformance.md").read_text(encoding="utf-8")
    section = text[text.index("## 5. The suite can fail"):]
    documented = [frozenset(x.strip() for x in row.rsplit("|", 2)[1].split(","))
                  for row in section.splitlines() if row.startswith("| ") and row[2:3] != "-" and "cases that" not in row]
    expected = []
    for _, breaker in BROKEN.values():
        with pytest.MonkeyPatch.context() as mp:
            expected.append(frozenset(breaker(mp)))
    assert sorted(documented, key=sorted) == sorted(expected, key=sorted)


# --- heartbeat pacing (messages §8): the cases are meaningful only against a small budget ----------

PACING_BUDGET = 20  # HEARTBEAT/s: 16 sessions at ttl 1 would ask 48/s unpaced


def pacing_cases() -> list:
    return [c for c in all_cases() if c.fn.__module__.endswith(".cases_pacing")]


async def run_pacing(monkeypatch) -> dict:
    import attrs

    from galaxynode import pool
    monkeypatch.setattr(pool, "DEFAULT_HEARTBEATS_PER_S", PACING_BUDGET)  # the in-process pool's budget
    async with endpoint("pool") as url:
        opts = attrs.evolve(options(url, "pool"), budget=PACING_BUDGET)
        return {r.case.fn.__name__: r for r in await run_suite(opts, pacing_cases())}


async def test_pacing_cases_pass_a_pool_with_a_small_budget(monkeypatch):
    results = await run_pacing(monkeypatch)
    assert set(results) == {"lease_interval", "early_heartbeats", "within_budget"}
    assert all(r.outcome == "pass" for r in results.values()), {n: (r.expected, r.got) for n, r in results.items()}
    assert "would be 48.0/s" in results["within_budget"].note  # unpaced, over the bound: the check bites
    assert "rate_limited at HEARTBEAT 3 " in results["early_heartbeats"].note  # a burst of 2 (messages §8.4)


async def test_a_pool_that_ignores_its_budget_fails_the_budget_case(monkeypatch):
    from galaxynode.registry.pacing import Pacer
    monkeypatch.setattr(Pacer, "floor", lambda self, n: 0.0)
    results = await run_pacing(monkeypatch)
    assert {n for n, r in results.items() if r.outcome != "pass"} == {"within_budget"}
    assert results["within_budget"].outcome == "fail" and "/s (intervals" in results["within_budget"].got


async def test_a_pool_that_serves_early_heartbeats_fails_the_early_case(monkeypatch):
    from galaxynode.registry.pacing import EarlyHeartbeats
    monkeypatch.setattr(EarlyHeartbeats, "allow", lambda self, now: True)
    results = await run_pacing(monkeypatch)
    assert {n for n, r in results.items() if r.outcome != "pass"} == {"early_heartbeats"}
    assert "ERROR rate_limited within 20 HEARTBEATs" in results["early_heartbeats"].expected
