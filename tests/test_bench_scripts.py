"""Smoke test of the session benchmark: it runs end to end and prints its table (no timing checks)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_session.py"


@pytest.mark.slow  # spawns four server processes; about 6 s
def test_bench_session_quick_prints_the_table(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--sessions", "20", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for needle in ("metric", "ours", "baseline", "ratio", "one-way msg/s", "req/rep msg/s", "vs trio-websocket",
                   "vs websockets", "verify-only", "handshake p50 ms", "handshake p99 ms", "20/20",
                   "pool server RSS KiB per session"):
        assert needle in out, needle
    assert "PASS" in out or "BELOW" in out
    assert "MISMATCH" not in out
    report = json.loads(out_json.read_text())
    assert report["results"]["sessions"]["alive_server"] == 20
    assert {row["metric"] for row in report["table"]} >= {"pool server RSS KiB per session"}



BENCH = SCRIPT.parent / "bench.py"


@pytest.mark.slow  # every benchmark, quick sizes: a real pool process for the heartbeats; about a minute
def test_bench_quick_prints_one_table_with_targets(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert [c.strip() for c in header.split("|")] == ["metric", "ours", "baseline", "ratio", "target", "met?"]
    for needle in ("[codec", "[registry", "[descriptors", "[session", "[heartbeats",
                   "codec decode_frame/s vs bare Ed25519 verify", "session one-way msg/s",
                   "pool server RSS KiB per session", "pool CPU % of one core", "EXTRAPOLATED", "targets met:"):
        assert needle in out, needle
    assert "FAILED" not in out
    report = json.loads(out_json.read_text())
    assert report["quick"] and not report["failed"]
    rows = [r for part in report["sections"] for r in part["rows"]]
    targets = [r for r in rows if r["met"] is not None]
    assert len(targets) >= 6  # codec x2, session x2 (+ counts), sessions held, KiB/session, heartbeat CPU
    assert {"metric", "ours", "baseline", "ratio", "target", "met"} <= set(rows[0])


@pytest.mark.slow  # a pool process and 200 simulated nodes; about 15 s
def test_bench_heartbeats_measures_the_pool_process(tmp_path: Path) -> None:
    out_json = tmp_path / "hb.json"
    script = SCRIPT.parent / "bench_heartbeats.py"
    done = subprocess.run([sys.executable, str(script), "--nodes", "200", "--interval", "1", "--window", "3",
                           "--warmup", "1", "--json", str(out_json)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out_json.read_text())
    assert r["joined"] == 200 and r["failures"] == 0 and r["heartbeat_errors"] == 0
    assert 150 <= r["heartbeats_per_s"] <= 250  # the load is what was asked for
    assert 0 < r["pool_cpu_pct"] < 200 and r["pool_exit"] == 0 and not r["pool_traceback"]
    assert "EXTRAPOLATED to 10,000 nodes" in done.stdout
