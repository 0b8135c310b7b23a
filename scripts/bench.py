#!/usr/bin/env python3
"""All of galaxynode's benchmarks in one go, summarised in ONE table against issue 16's targets.

Runs, in this order, each in this process through its script's `bench(quick)` function (each script
stays runnable on its own, with its own detailed report):

  codec       scripts/bench_codec.py       Session.decode/encode vs bare msgpack on the same frame;
                                           signed frames vs bare Ed25519 sign/verify
  registry    scripts/bench_registry.py    durable joins/renewals (group commit) vs raw SQLite, query latency
  descriptors (here)                       pool descriptor verify and DescriptorBook.offer vs bare verify
  events      scripts/bench_events.py      publish with 100k unrelated patterns vs an empty bus
  session     scripts/bench_session.py     session vs bare trio-websocket (one-way, request/reply against
                                           the durable registry), handshake latency, py-libp2p as a peer
                                           (the `bench` extra), concurrent sessions and memory per session
  heartbeats  scripts/bench_heartbeats.py  pool process CPU for N nodes heartbeating (real daemon)

Targets (issue 16, Gelato v2): session one-way >= 0.60 of bare trio-websocket; HEARTBEAT/LEASE
request/reply >= 0.55 of trio-websocket echo; 10,000 nodes heartbeating every 10 s <= 33% of one core
(verdict only when the load was delivered); handshake p50 <= 2.5x a trio-websocket connect; >= 3x
py-libp2p one-way and >= 2x its request/reply; 1,000 concurrent sessions with < 100 KiB each (issue 7).
Baselines are measured in the same run, on the same machine, interleaved with ours where they can be.

    .venv/bin/python scripts/bench.py [--quick] [--only codec,session,...] [--json PATH]

--quick is a CI smoke run (about a minute): smaller sizes, so the session and heartbeat rows measure
100 sessions and 1,000 nodes x 1 s instead of 1,000 sessions and 10,000 nodes x 10 s (labelled).
Exit status: 0 when every part ran (targets missed or not), 1 when a part failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_codec  # noqa: E402
import bench_events  # noqa: E402
import bench_heartbeats  # noqa: E402
import bench_registry  # noqa: E402
import bench_session  # noqa: E402

HEADER = ("metric", "ours", "baseline", "ratio", "target", "met?")


def bench_descriptors(quick: bool = False) -> list[dict]:
    """Pool descriptors (steps 4/5): verify_descriptor and DescriptorBook.offer of fresh records vs bare
    Ed25519 verify of the same bytes. Cheap: a few thousand signatures. Each pool in a /24 of its own,
    so the book's per-prefix quota ([mainnet] pools_per_prefix) admits them all."""
    from galaxynode.descriptor import Descriptor, DescriptorBook, SIGN_PREFIX, sign_descriptor, verify_descriptor
    from galaxynode.identity import Identity, verify

    n = 300 if quick else 2000
    now = int(time.time() * 1000)
    signed = []
    for i in range(n):
        ident = Identity.generate()
        desc = Descriptor(key=ident.public, name=f"pool-{i}", network="bench", endpoints=(f"ws://10.{i >> 8 & 255}.{i & 255}.1:7447",),
                          capabilities=("gpu", "storage"), nodes=i, issued=now, expires=now + 300_000, seq=now)
        signed.append((ident.public, sign_descriptor(ident, desc)))

    def timed(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return n / (time.perf_counter() - start)

    def bare() -> None:
        for key, s in signed:
            verify(key, s.sig, SIGN_PREFIX + s.record)

    def full() -> None:
        for _, s in signed:
            verify_descriptor(s, now=now, network="bench")

    def book() -> None:
        b = DescriptorBook(max_entries=n)
        for key, s in signed:  # each pool relayed by a source of its own (the book's per-source quota)
            b.offer(s, now=now, network="bench", source=key)

    samples: dict[str, list[float]] = {"bare": [], "verify": [], "offer": []}
    for _ in range(3 if quick else 5):
        for name, fn in (("bare", bare), ("verify", full), ("offer", book)):
            samples[name].append(timed(fn))
    rate = {k: statistics.median(v) for k, v in samples.items()}
    return [{"metric": f"descriptor {what}/s vs bare Ed25519 verify", "ours": f"{rate[k]:,.0f}",
             "baseline": f"{rate['bare']:,.0f}", "ratio": f"{rate[k] / rate['bare']:.2f}", "target": "-",
             "met": None}
            for k, what in (("verify", "verify_descriptor"), ("offer", "DescriptorBook.offer (new pools)"))]


PARTS: dict[str, Callable[[bool], list[dict]]] = {
    "codec": bench_codec.bench,
    "registry": bench_registry.bench,
    "descriptors": bench_descriptors,
    "events": bench_events.bench,
    "session": bench_session.bench,
    "heartbeats": bench_heartbeats.bench,
}


def cells(row: dict) -> tuple[str, ...]:
    met = row.get("met")
    return (row["metric"], row["ours"], row["baseline"], row["ratio"], row["target"],
            "-" if met is None else ("yes" if met else "NO"))


def format_table(sections: list[tuple[str, list[dict]]]) -> str:
    body = [(name, [cells(r) for r in rows]) for name, rows in sections]
    widths = [max([len(HEADER[i])] + [len(c[i]) for _, rows in body for c in rows]) for i in range(len(HEADER))]

    def line(c: tuple[str, ...]) -> str:
        return " | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))
    out = [line(HEADER), "-+-".join("-" * w for w in widths)]
    for name, rows in body:
        out.append(f"[{name}]")
        out.extend(line(c) for c in rows)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="CI smoke run: small sizes (about a minute on a quiet box)")
    ap.add_argument("--only", metavar="PARTS", help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--json", metavar="PATH", help="also write the table (and any failures) as JSON")
    args = ap.parse_args(argv)
    names = list(PARTS) if not args.only else [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    started = time.perf_counter()
    sections: list[tuple[str, list[dict]]] = []
    failed: dict[str, str] = {}
    for name in names:
        t = time.perf_counter()
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        try:
            rows = PARTS[name](args.quick)
        except Exception:
            failed[name] = traceback.format_exc()
            print(failed[name], file=sys.stderr)
            rows = [{"metric": f"{name}: FAILED (see stderr)", "ours": "-", "baseline": "-", "ratio": "-",
                     "target": "-", "met": False}]
        sections.append((f"{name}, {time.perf_counter() - t:.0f} s", rows))
    all_rows = [r for _, rows in sections for r in rows]
    judged = [r for r in all_rows if r.get("met") is not None]
    met = sum(bool(r["met"]) for r in judged)
    print(f"\ngalaxynode benchmarks{' (quick)' if args.quick else ''}: python {platform.python_version()}, "
          f"{os.cpu_count()} cpus, loopback; {time.perf_counter() - started:.0f} s in all\n")
    print(format_table(sections))
    print(f"\ntargets met: {met} of {len(judged)}" + (f"; FAILED parts: {', '.join(failed)}" if failed else ""))
    if args.quick:
        print("(quick: the session rows hold 100 sessions, the heartbeat rows run 1,000 nodes x 1 s and are "
              "extrapolated to 10,000 x 10 s; run without --quick for the real scale)")
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "sections": [
            {"part": n, "rows": rows} for n, rows in sections], "failed": failed}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
