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

