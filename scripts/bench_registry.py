#!/usr/bin/env python3
"""Registry throughput and query latency, with the baselines measured in the same run.

Durable joins and heartbeats go through Registry on SQLite (WAL, synchronous=FULL) in a temp dir, with
concurrent callers so group commit can share fsyncs. Baselines: the same calls on LeaseTable alone (memory)
and on Registry without a store, and raw SQLite with one commit per row. Query latency is measured on a
table of 100k nodes with capability/meta filters, first pages and full paging.

    .venv/bin/python scripts/bench_registry.py [--quick]

`bench(quick)` returns the summary rows for scripts/bench.py.
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galaxynode.registry import LeaseTable, Registry  # noqa: E402

T0 = 1_700_000_000_000


def keys(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_table(n: int) -> tuple[float, float]:
    t = LeaseTable()
    ks = keys(n)
    start = time.perf_counter()
    for k in ks:
        t.join(k, capabilities=("gpu",), meta={"region": "eu"}, ttl=60, now=T0)
    joins = rate(n, time.perf_counter() - start)
    start = time.perf_counter()
    for i, k in enumerate(ks):
        t.renew(k, now=T0 + i)
    return joins, rate(n, time.perf_counter() - start)


def bench_raw_sqlite(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (key BLOB PRIMARY KEY, capabilities TEXT, meta TEXT, ttl INTEGER, "
                     "expires INTEGER, joined INTEGER, payload BLOB) WITHOUT ROWID")
        ks = keys(n)
        start = time.perf_counter()
        for k in ks:  # autocommit: one transaction (one fsync) per row
            conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (k, '["gpu"]', '{"region": "eu"}', 60, T0, T0, None))
        return rate(n, time.perf_counter() - start)
    finally:
        conn.close()


async def bench_registry(path: Path | None, n: int, callers: int) -> dict:
    """joins/s and heartbeats/s with ``callers`` concurrent tasks; commits counts transactions."""
    ks = keys(n)
    share = [ks[i::callers] for i in range(callers)]
    reg = await Registry.open(path, LeaseTable())
    out = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)

        async def phase(name, op):
            async def worker(mine):
                for k in mine:
                    await op(k)
            before = reg.commits
            start = time.perf_counter()
            async with trio.open_nursery() as inner:
                for mine in share:
                    inner.start_soon(worker, mine)
            out[name] = rate(n, time.perf_counter() - start)
            out[name + "_commits"] = reg.commits - before

        await phase("join", lambda k: reg.join(k, capabilities=("gpu",), meta={"region": "eu"}, ttl=60))
        await phase("renew", lambda k: reg.renew(k))
        nursery.cancel_scope.cancel()
    return out


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def bench_query(n: int, repeats: int) -> list[tuple[str, float, float, int]]:
    """(what, p50 us, p99 us, results per query or pages)."""
    rnd = random.Random(1)
    t = LeaseTable()
    for i in range(n):
        caps = ["node"]
        if rnd.random() < 0.10:
            caps.append("gpu")
        if rnd.random() < 0.001:
            caps.append("rare")
        t.join(os.urandom(32), capabilities=caps, meta={"region": f"r{i % 8}"}, ttl=60, now=T0)
    rows = []

    def first_page(label, **filters):
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            page, _ = t.query(limit=100, **filters)
            samples.append((time.perf_counter() - start) * 1e6)
        rows.append((f"first page (100) {label}", pct(samples, 50), pct(samples, 99), len(page)))

    first_page("no filter")
    first_page("cap=node (100%)", capabilities=["node"])
    first_page("cap=gpu (10%)", capabilities=["gpu"])
    first_page("cap=rare (0.1%)", capabilities=["rare"])
    first_page("cap=gpu & region (1.25%)", capabilities=["gpu"], meta={"region": "r3"})
    first_page("no match", capabilities=["gpu", "rare"], meta={"region": "none"})

    for label, filters in (("cap=gpu", {"capabilities": ["gpu"]}), ("no filter", {})):
        samples, cursor, pages = [], None, 0
        while True:
            start = time.perf_counter()
            _, cursor = t.query(limit=100, cursor=cursor, **filters)
            samples.append((time.perf_counter() - start) * 1e6)
            pages += 1
            if cursor is None:
                break
        rows.append((f"page through all, {label} (per page)", pct(samples, 50), pct(samples, 99), pages))
    return rows


async def measure(quick: bool) -> dict:
    """Every figure of the benchmark (sizes per `quick`)."""
    n_sqlite = 300 if quick else 3_000
    n_reg = 2_000 if quick else 20_000
    n_query = 10_000 if quick else 100_000
    table_join, table_renew = bench_table(n_reg)  # same size as the Registry runs
    with tempfile.TemporaryDirectory() as tmp:
        raw = bench_raw_sqlite(Path(tmp) / "raw.sqlite", n_sqlite)
        mem = await bench_registry(None, n_reg, 64)
        durable = {}
        for callers in (1, 8, 64, 512):
            if callers <= n_reg:
                durable[callers] = await bench_registry(Path(tmp) / f"reg{callers}.sqlite",
                                                        n_reg if callers > 1 else n_sqlite, callers)
    return {"quick": quick, "n_sqlite": n_sqlite, "n_reg": n_reg, "n_query": n_query, "raw": raw,
            "table_join": table_join, "table_renew": table_renew, "mem": mem, "durable": durable,
            "query": bench_query(n_query, 50 if quick else 300)}


def report(r: dict) -> None:
    quick, raw, table_join, table_renew = r["quick"], r["raw"], r["table_join"], r["table_renew"]
    n_sqlite, n_reg, mem, durable = r["n_sqlite"], r["n_reg"], r["mem"], r["durable"]
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, sqlite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} cpus{' (quick)' if quick else ''}")
    print()
    print(f"{'what':<48} {'ops/s':>10} {'x raw sqlite':>13} {'x LeaseTable':>13} {'ops/commit':>11}")

    def row(what, rate_, base_table, per_commit=None):
        extra = f"{per_commit:>11.1f}" if per_commit else f"{'':>11}"
        print(f"{what:<48} {rate_:>10,.0f} {rate_ / raw:>13.2f} {rate_ / base_table:>13.4f} {extra}")

    row("raw sqlite, 1 row per commit (WAL, FULL)", raw, table_join, 1.0)
    row("LeaseTable.join (memory)", table_join, table_join)
    row("LeaseTable.renew (memory)", table_renew, table_renew)
    row("Registry.join, no store, 64 callers", mem["join"], table_join)
    row("Registry.renew, no store, 64 callers", mem["renew"], table_renew)
    for callers, d in durable.items():
        n = n_reg if callers > 1 else n_sqlite
        row(f"Registry.join durable, {callers} callers", d["join"], table_join, n / max(1, d["join_commits"]))
        row(f"Registry.renew durable, {callers} callers", d["renew"], table_renew, n / max(1, d["renew_commits"]))

    print()
    print(f"query latency, {r['n_query']:,} nodes ({'quick' if quick else 'full'})")
    print(f"{'what':<48} {'p50 us':>10} {'p99 us':>10} {'results/pages':>14}")
    for what, p50, p99, count in r["query"]:
        print(f"{what:<48} {p50:>10.1f} {p99:>10.1f} {count:>14}")


def bench(quick: bool = False) -> list[dict]:
    """The registry's summary rows for scripts/bench.py (no targets of its own in issue 7)."""
    r = trio.run(measure, quick)
    raw, rows = r["raw"], []
    for callers in (64, 512):
        d = r["durable"].get(callers)
        if d is None:
            continue
        for op in ("join", "renew"):
            per_commit = (r["n_reg"]) / max(1, d[op + "_commits"])
            rows.append({"metric": f"registry {op}/s durable, {callers} callers ({per_commit:.0f}/commit) "
                                   f"vs raw sqlite 1 row/commit",
                         "ours": f"{d[op]:,.0f}", "baseline": f"{raw:,.0f}", "ratio": f"{d[op] / raw:.2f}",
                         "target": "-", "met": None})
    for op, base in (("join", "table_join"), ("renew", "table_renew")):
        rows.append({"metric": f"registry {op}/s in memory, 64 callers vs LeaseTable alone",
                     "ours": f"{r['mem'][op]:,.0f}", "baseline": f"{r[base]:,.0f}",
                     "ratio": f"{r['mem'][op] / r[base]:.2f}", "target": "-", "met": None})
    for what, p50, p99, count in r["query"]:
        if what.startswith("first page (100) cap=gpu & region"):
            rows.append({"metric": f"registry query p99 us, {r['n_query']:,} nodes, {what}",
                         "ours": f"{p99:.1f}", "baseline": "-", "ratio": "-", "target": "-", "met": None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    report(trio.run(measure, parser.parse_args().quick))


if __name__ == "__main__":
    main()
