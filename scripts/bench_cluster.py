#!/usr/bin/env python3
"""The pool as several processes on PostgreSQL (galaxynode.cluster), against its baselines from the same run.

1. Heartbeats/s within a p99 bound: a pool process (`run`, `run --workers 2`, each on PostgreSQL; and
   `run` on SQLite) gets open-loop heartbeat load at rising rates (bench_heartbeats.drive: real sessions,
   replies peeked at); the highest rate delivered (>= 95 %) with p99 under --p99-ms is the pool's number.
   Ratios: 2 workers / 1 worker (PostgreSQL), PostgreSQL / SQLite (1 worker). The load generator runs on
   the same machine: on 2 cores it takes one, which caps what a second worker can add (said in the output).
2. Query by capability over 100,000 leases, p50, as a worker serves it: from the memory its replica
   loaded from PostgreSQL (snapshot time printed too).
3. Event latency between workers, p99: a JOIN acknowledged by member A until member B publishes its
   node.joined (change log + NOTIFY + read-back; the subscriber's WebSocket adds the usual send).

    .venv/bin/python scripts/bench_cluster.py [--quick] [--dsn DSN] [--p99-ms 200]

DSN default: $GALAXYNODE_TEST_PG or postgresql://postgres@127.0.0.1:5432/test; the bench works in a
schema of its own, dropped at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_heartbeats import PoolProcess, cpu_seconds, drive, percentile, pool_env, raise_fd_limit  # noqa: E402
from galaxynode.cluster import Replica  # noqa: E402
from galaxynode.registry import LeaseTable, Registry  # noqa: E402
from galaxynode.registry.leases import Entry  # noqa: E402
from galaxynode.registry.pgstore import PgStore  # noqa: E402
from galaxynode.registry.store import Upsert  # noqa: E402

NETWORK = "bench-heartbeats"


def schema_dsn(dsn: str, schema: str) -> str:
    from psycopg.conninfo import make_conninfo
    return make_conninfo(dsn, options=f"-c search_path={schema}")


class Schema:
    """A fresh schema for one measurement, dropped afterwards."""

    def __init__(self, dsn: str):
        self.admin, self.name = dsn, "bench_" + uuid.uuid4().hex[:12]

    def __enter__(self) -> str:
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {self.name}")
        return schema_dsn(self.admin, self.name)

    def __exit__(self, *exc) -> None:
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {self.name} CASCADE")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (a supervisor's workers), live ones."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for kid in kids:
            try:
                total += cpu_seconds(int(kid))
            except FileNotFoundError:
                pass
    return total


def ramp(label: str, env: dict, args: tuple, rates: list[int], nodes: int, window: float, p99_ms: float) -> dict:
    """The highest rate (heartbeats/s) delivered within the p99 bound, and every step's numbers."""
    best, steps = 0.0, []
    with tempfile.TemporaryDirectory() as d, PoolProcess(d, env={**pool_env(nodes), **env}, args=args) as pool:
        if "--workers" in args:
            first = pool.wait_for(r"ready: pool").end()
            pool.wait_for(r"ready: pool", start=first)
        for rate in rates:
            cpu0, t0 = tree_cpu(pool.pid), time.perf_counter()
            r = trio.run(lambda: drive(pool.url, pool.pid, nodes=nodes, interval=nodes / rate, warmup=1.0,
                                       window=window))
            cpu_pct = 100 * (tree_cpu(pool.pid) - cpu0) / (time.perf_counter() - t0)
            ok = r["failures"] == 0 and r["heartbeats_per_s"] >= 0.95 * rate and r["latency_p99_ms"] <= p99_ms
            steps.append((rate, r["heartbeats_per_s"], r["latency_p50_ms"], r["latency_p99_ms"], ok))
            print(f"  {label:<22} offered {rate:>5}/s: delivered {r['heartbeats_per_s']:7.0f}/s, "
                  f"p50 {r['latency_p50_ms']:6.1f} ms, p99 {r['latency_p99_ms']:7.1f} ms, pool CPU {cpu_pct:5.1f}% "
                  f"of a core (all processes, set-up included) {'ok' if ok else 'OVER'}",
                  flush=True)
            if not ok:
                break
            best = r["heartbeats_per_s"]
    return {"label": label, "best": best, "steps": steps}


def k(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def query_bench(dsn: str, n: int, repeats: int) -> dict:
    """Load n leases (10 % with capability "gpu") into PostgreSQL, take a replica's snapshot, query."""
    now = int(time.time() * 1000)
    with PgStore(dsn) as store:
        for i in range(0, n, 5000):
            store.apply([Upsert(Entry(key=k(j), capabilities=("gpu",) if j % 10 == 0 else ("cpu",),
                                      meta={"region": "eu"}, ttl=600, expires=now + 600_000, joined=now))
                         for j in range(i, min(n, i + 5000))])

    async def main() -> dict:
        store = PgStore(dsn, origin=os.urandom(8))
        reg = Registry(LeaseTable(max_entries=max(n, 250_000)), store, None, owns_store=True, expire_locally=False)
        replica = Replica(reg, dsn)
        t0 = time.perf_counter()
        await replica.snapshot()
        snap = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            page, _ = reg.query(capabilities=["gpu"], limit=100)
            times.append(time.perf_counter() - t)
        assert len(page) == 100 and len(reg.table) == n
        replica.reader.close()
        store.close()
        return {"n": n, "snapshot_s": snap, "p50_ms": percentile(times, 50) * 1000,
                "p99_ms": percentile(times, 99) * 1000}
    return trio.run(main)


def event_bench(dsn: str, count: int) -> dict:
    """JOIN acknowledged on member A -> node.joined published on member B."""
    async def main() -> dict:
        arrived: dict[bytes, float] = {}

        class Bus:
            def __init__(self, record: bool):
                self.record = record

            def publish(self, topic, data):
                if self.record:
                    arrived[data["key"]] = time.perf_counter()

        members = []
        async with trio.open_nursery() as n:
            for record in (False, True):
                store = PgStore(dsn, origin=os.urandom(8))
                reg = Registry(LeaseTable(), store, Bus(record), owns_store=True, expire_locally=False)
                await n.start(reg.run)
                await n.start(Replica(reg, dsn).run)
                members.append(reg)
            a = members[0]
            acked = {}
            for i in range(count):
                await a.join(k(10**6 + i), ttl=600)
                acked[k(10**6 + i)] = time.perf_counter()
                await trio.sleep(0.01)
            with trio.fail_after(30):
                while len(arrived) < count:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
        lat = [arrived[key] - t for key, t in acked.items()]
        return {"count": count, "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}
    return trio.run(main)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, shorter windows, 20,000 leases")
    ap.add_argument("--dsn", default=os.environ.get("GALAXYNODE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--p99-ms", type=float, default=200.0, help="the heartbeat p99 bound (default 200)")
    a = ap.parse_args()
    raise_fd_limit(4096)
    nodes, window = (400, 4.0) if a.quick else (1000, 8.0)
    rates = [250, 500, 1000, 1500, 2000] if a.quick else [250, 500, 1000, 1500, 2000, 2500, 3000, 4000]
    print(f"heartbeats/s with p99 <= {a.p99_ms:g} ms ({nodes} nodes, open loop, {window:g} s windows; "
          f"load generator on the same {os.cpu_count()}-core machine)", flush=True)
    results = {}
    for label, backend, workers in (("sqlite, 1 worker", "sqlite", 1), ("postgresql, 1 worker", "postgresql", 1),
                                    ("postgresql, 2 workers", "postgresql", 2)):
        with Schema(a.dsn) as dsn:
            env = {"GALAXYNODE_REGISTRY_BACKEND": backend, "GALAXYNODE_REGISTRY_DSN": dsn,
                   }
            args = ("--workers", str(workers)) if workers > 1 else ()
            results[label] = ramp(label, env, args, rates, nodes, window, a.p99_ms)
    one, two, lite = (results[x]["best"] for x in ("postgresql, 1 worker", "postgresql, 2 workers", "sqlite, 1 worker"))
    print(f"\n2 workers / 1 worker (PostgreSQL): {two:.0f} / {one:.0f} = {two / one if one else float('nan'):.2f}x "
          "(target >= 1.6x)")
    print(f"PostgreSQL / SQLite (1 worker):    {one:.0f} / {lite:.0f} = {one / lite if lite else float('nan'):.2f}x "
          "(target >= 0.8x)")
    n = 20_000 if a.quick else 100_000
    with Schema(a.dsn) as dsn:
        q = query_bench(dsn, n, 200)
    print(f"query by capability over {q['n']:,} leases (limit 100, 10 % match), from a worker's memory: "
          f"p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms (target p50 < 5 ms); replica snapshot "
          f"{q['snapshot_s']:.1f} s")
    with Schema(a.dsn) as dsn:
        e = event_bench(dsn, 100 if a.quick else 300)
    print(f"event latency member A (JOIN acknowledged) -> member B (published), {e['count']} events: "
          f"p50 {e['p50_ms']:.1f} ms, p99 {e['p99_ms']:.1f} ms (target p99 < 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
