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
                   "DURABLE SQLite registry", "IN-MEMORY registry", "handshake p50 ms", "handshake p99 ms",
                   "py-libp2p", "pool server RSS KiB per session"):
        assert needle in out, needle
    assert "MISMATCH" not in out
    report = json.loads(out_json.read_text())
    res = report["results"]
    assert res["sessions"]["alive_server"] == 20
    # interleaved: every client has a figure for every repetition
    assert len(res["pool"]["one_way"]) == len(res["trio_websocket"]["one_way"]) == 3
    assert len(res["pool"]["req_rep"]) == len(res["pool_memory"]["req_rep"]) == len(res["trio_websocket"]["req_rep"])
    rows = {row["metric"]: row for row in report["table"]}
    assert rows["concurrent sessions held 0.5s"]["ours"] == "20"
    if res["libp2p_skipped"] is None:
        assert len(res["libp2p"]["one_way"]) == 3
    else:  # one line says why
        assert any(m.startswith("py-libp2p peer baseline: skipped") for m in rows)


def test_heartbeat_verdict_needs_the_load_delivered() -> None:
    """No verdict on a pool's CPU when the load generator fell behind (issue 18 item 2)."""
    sys.path.insert(0, str(SCRIPT.parent))
    from bench_heartbeats import TARGET_CPU, delivered, rows_of

    def result(per_s: float) -> dict:
        rates = {"heartbeats_per_s": per_s, "expected_per_s": 1000.0}
        return {"nodes": 10_000, "interval": 10.0, **rates, "delivered": delivered(rates),
                "pool_cpu_pct": TARGET_CPU / 2, "extrapolated_pct": TARGET_CPU / 2,
                "at_target_scale": True, "us_per_heartbeat": 100.0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0,
                "failures": 0, "heartbeat_errors": 0, "joined": 10_000}
    (met,) = [r for r in rows_of(result(1000.0)) if r["met"] is not None and "CPU" in r["metric"]]
    assert met["met"] is True
    behind = rows_of(result(600.0))[0]
    assert behind["met"] is None and behind["ours"].startswith("not measured: 600 of 1,000")
    none = rows_of(result(0.0))[0]
    assert none["met"] is None and none["ours"].startswith("not measured: 0 of 1,000")



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
                   "frame decode + authenticate/s (Session.decode) vs bare msgpack unpack", "session one-way msg/s",
                   "pool server RSS KiB per session", "pool CPU % of one core", "EXTRAPOLATED", "targets met:"):
        assert needle in out, needle
    assert "FAILED" not in out
    report = json.loads(out_json.read_text())
    assert report["quick"] and not report["failed"]
    rows = [r for part in report["sections"] for r in part["rows"]]
    targets = [r for r in rows if r["met"] is not None]
    assert len(targets) >= 6  # codec, session x3 (+ counts), sessions held, KiB/session, heartbeat CPU
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
    assert r["delivered"] == (r["heartbeats_per_s"] >= 0.97 * 200)
    assert 0 < r["pool_cpu_pct"] < 200 and r["pool_exit"] == 0 and not r["pool_traceback"]
    assert "EXTRAPOLATED to 10,000 nodes" in done.stdout


@pytest.mark.slow  # a pool process, 200 nodes and a headless Chromium (skipped without one); about 30 s
def test_bench_dashboard_quick(tmp_path: Path) -> None:
    import shutil
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium/chromedriver not installed")
    out_json = tmp_path / "dash.json"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_dashboard.py"), "--quick", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out_json.read_text())
    assert r["joined"] == 200 and r["failures"] == 0 and r["heartbeat_errors"] == 0 and r["pool_exit"] == 0
    assert [w["mode"] for w in r["windows"]] == ["A", "B", "C"] and r["windows"][1]["page_live"]
    assert r["windows"][2]["streams_ok"] == 8 and r["summary"]["streams_pct"] is not None
    assert "dashboard cost, % of one core" in done.stdout and "never reads" in done.stdout


def _paced_run(lag_ms: float, budget: int = 20) -> dict:
    """A synthetic bench_pacing run: 100 nodes asked every 5 s (budget 20/s), each beat `lag_ms` late."""
    beats = [(10 + k * 5 + i / 20, 5.0, lag_ms, 5000.0, i) for i in range(100) for k in range(6)]
    return {"nodes": 100, "ttl": 3, "budget": budget, "started": 0.0, "all_joined_at": 10.0, "stop_at": 40.0,
            "beats": beats, "cpu": [(t, 0.1 * t) for t in range(41)], "joined": 100, "asked_per_s": 20.0,
            "loop_lag": [(t / 10, 1.0) for t in range(400)],
            "leases_expired": 0, "rejoins": 0}


def test_pacing_verdict_needs_the_load_delivered() -> None:
    """bench_pacing judges convergence and latency only when the load generator sent on time and its
    event loop kept up (else its latencies would be its own)."""
    sys.path.insert(0, str(SCRIPT.parent))
    from bench_pacing import analyse, rows_of
    on_time, late = _paced_run(1.0), _paced_run(500.0)  # 500 ms of a 5 s interval: 10% fewer heartbeats offered
    a, b = analyse(on_time, 5.0), analyse(late, 5.0)
    assert a["delivered"] and a["converged"] and a["served_per_s"] == 20.0 and a["silent_nodes"] == 0
    assert not b["delivered"]
    stalled = _paced_run(1.0) | {"loop_lag": [(t / 10, 1.0 if t % 10 else 900.0) for t in range(400)]}
    assert not analyse(stalled, 5.0)["delivered"]  # a 900 ms stall every second: its p99 lag
    served, p99 = rows_of(late, b, on_time, a)[:2]
    assert served["ours"] == p99["ours"] == "not measured" and served["met"] is None and p99["met"] is None
    served, p99 = rows_of(on_time, a, late, b)[:2]
    assert served["met"] is True and p99["met"] is True and served["baseline"] == "not measured"


def test_dashboard_verdict_needs_the_load_as_offered() -> None:
    """No dashboard verdict from windows whose load fell behind or caught up after a stall."""
    sys.path.insert(0, str(SCRIPT.parent))
    from bench_dashboard import as_offered, summarise
    assert as_offered(1000.0, 1000.0, 20) and as_offered(975.0, 1000.0, 20)
    assert not as_offered(900.0, 1000.0, 20) and not as_offered(1100.0, 1000.0, 20)  # behind / catching up
    assert as_offered(175.0, 167.0, 20)  # 3,500 vs 3,340 beats: within 3 sigma of a Poisson count

    def window(mode: str, cpu: float, rate: float) -> dict:
        return {"mode": mode, "pool_cpu_pct": cpu, "delivered": as_offered(rate, 1000.0, 20), "page_live": True}
    res = {"nodes": 10, "joined": 10, "windows": [window("A", 20, 1000), window("B", 21, 1000),
                                                  window("A", 30, 1300), window("B", 22, 1000),
                                                  window("A", 20, 1000), window("B", 22, 1000)]}
    s = summarise(res)
    assert s["verdict_ok"] and s["pairs_counted"] == 2 and s["pairs_pct"] == [1, 2] and s["met"]
    res["windows"][5] = window("B", 10, 500)
    s = summarise(res)
    assert not s["verdict_ok"] and s["met"] is None


@pytest.mark.slow  # two pool processes and 200 simulated nodes each; about 40 s
def test_bench_pacing_quick_runs_paced_and_baseline(tmp_path: Path) -> None:
    out_json = tmp_path / "pacing.json"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_pacing.py"), "--quick", "--nodes", "200",
                           "--json", str(out_json)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out_json.read_text())
    for run in ("paced", "baseline"):
        assert r[run]["joined"] == 200 and r[run]["pool_exit"] == 0 and not r[run]["pool_traceback"]
        assert r[run]["rate_limited"] == 0 and r[run]["other_errors"] == 0
    assert r["paced"]["budget"] == 100 and r["paced"]["asked_per_s"] <= 100 / 0.9  # the pool's own ask
    assert r["baseline"]["asked_per_s"] > 150  # pacing off: 200 nodes at ttl/3 = 1 s
    assert [row["metric"].split(",")[0] for row in r["table"]][:2] == ["served HEARTBEAT/s after 2 windows",
                                                                        "heartbeat latency p99 ms after convergence"]
