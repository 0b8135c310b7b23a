#!/usr/bin/env python3
"""Event bus: publish cost with 0 vs 100k unrelated patterns, and memory per pattern.

Issue 12 item 5: with a bus that scanned every wildcard pattern per event, ~95k patterns of two
hostile sessions made every event (every JOIN) cost the pool tens of milliseconds. Here the same
topic (`node.joined`, one matching subscriber) is published on an empty bus (the baseline) and on
a bus holding N patterns of other subscribers (64 per subscription, as a session may hold: exact,
`*` and `#` patterns, none matching); the ratio of the two rates should stay near 1. Also measured:
SUBSCRIBE-sized additions (32 patterns) into the loaded bus, and the memory per pattern of 128-
character patterns (64 one-letter segments, the costliest shape) at the pool-wide cap.

    .venv/bin/python scripts/bench_events.py [--quick] [--patterns N] [--events FILE]

--events FILE measures another implementation of galaxynode/events.py (e.g. the one before the trie:
`git show 8a7bfbc:galaxynode/events.py > /tmp/old_events.py`). `bench(quick)` returns the summary
rows for scripts/bench.py.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galaxynode import events as default_events  # noqa: E402

PER_SUBSCRIPTION = 64
TOPIC = "node.joined"


def load(path: str | None) -> ModuleType:
    if path is None:
        return default_events
    spec = importlib.util.spec_from_file_location("bench_events_impl", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unrelated(n: int) -> list[str]:
    """n patterns that never match TOPIC: exact, one-segment wildcards and rest wildcards."""
    shapes = ("u{i}.joined", "u{i}.*", "*.u{i}", "u{i}.#", "*.*.u{i}", "node.u{i}", "node.*.u{i}", "*.v{i}.#")
    return [shapes[i % len(shapes)].format(i=i) for i in range(n)]


def loaded_bus(ev: ModuleType, n: int):
    bus = ev.EventBus(queue_size=16)
    patterns = unrelated(n)
    subs = [bus.subscribe(patterns[i:i + PER_SUBSCRIPTION]) for i in range(0, n, PER_SUBSCRIPTION)]
    return bus, subs


def publish_rate(bus, count: int, repeats: int) -> float:
    """Events/s of publish(TOPIC) with one matching subscriber (median of repeats)."""
    with bus.subscribe(["node.*"], queue_size=16):
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(count):
                bus.publish(TOPIC, {"key": "00"})
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def subscribe_rate(ev: ModuleType, bus, rounds: int) -> float:
    """Patterns/s added as SUBSCRIBE does it: 32 new patterns into one live subscription (the trie
    bus adds in place; a bus without `add` is measured re-subscribing everything, as its pool did)."""
    fresh = [f"w{i}.*" for i in range(32 * rounds)]
    start = time.perf_counter()
    sub = bus.subscribe(fresh[:32])
    for r in range(1, rounds):
        chunk = fresh[32 * r:32 * (r + 1)]
        if hasattr(sub, "add"):
            sub.add(chunk)
        else:
            held = list(sub.patterns)
            sub.close()
            sub = bus.subscribe([".".join(p) for p in held] + chunk)
    took = time.perf_counter() - start
    sub.close()
    return 32 * rounds / took


def bytes_per_pattern(ev: ModuleType, n: int) -> float:
    """Traced allocation per pattern for n distinct 128-character patterns of 64 segments."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bus = ev.EventBus()
    tail = ".".join("abcdefghijklmnopqrstuvwxyz"[j % 26] for j in range(62))
    subs = [bus.subscribe([f"{i:x}.{tail}"[:128] for i in range(k, min(n, k + PER_SUBSCRIPTION))])
            for k in range(0, n, PER_SUBSCRIPTION)]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    for s in subs:
        s.close()
    return used / n


def measure(quick: bool = False, patterns: int | None = None, events_file: str | None = None) -> dict:
    ev = load(events_file)
    n = patterns or (20_000 if quick else 100_000)
    count, repeats = (2_000, 3) if quick else (10_000, 5)
    empty = publish_rate(ev.EventBus(queue_size=16), count, repeats)
    bus, subs = loaded_bus(ev, n)
    loaded = publish_rate(bus, max(20, count // 50) if not hasattr(bus, "_trie") else count, repeats)
    adds = subscribe_rate(ev, bus, 20 if quick else 100)
    for s in subs:
        s.close()
    mem_n = 8_192 if quick else 65_536
    return {"implementation": events_file or "galaxynode.events", "patterns": n, "empty": empty,
            "loaded": loaded, "ratio": loaded / empty, "subscribe": adds, "mem_patterns": mem_n,
            "bytes_per_pattern": bytes_per_pattern(ev, mem_n)}


def bench(quick: bool = False) -> list[dict]:
    r = measure(quick)
    return [
        {"metric": f"publish/s with {r['patterns']:,} unrelated patterns vs empty bus", "ours": f"{r['loaded']:,.0f}",
         "baseline": f"{r['empty']:,.0f}", "ratio": f"{r['ratio']:.2f}", "target": ">= 0.5",
         "met": r["ratio"] >= 0.5},
        {"metric": f"pattern memory, {r['mem_patterns']:,} x 128 chars (bytes each)",
         "ours": f"{r['bytes_per_pattern']:,.0f}", "baseline": "-", "ratio": "-", "target": "-", "met": None},
    ]


def report(r: dict) -> None:
    print(f"event bus: {r['implementation']}")
    print(f"  publish {TOPIC}, empty bus:                   {r['empty']:>12,.0f} /s  (baseline)")
    print(f"  publish {TOPIC}, {r['patterns']:,} unrelated patterns: {r['loaded']:>12,.0f} /s  "
          f"ratio {r['ratio']:.3f}")
    print(f"  SUBSCRIBE-sized additions into that bus:     {r['subscribe']:>12,.0f} patterns/s")
    print(f"  memory, {r['mem_patterns']:,} distinct 128-char patterns:  {r['bytes_per_pattern']:>8,.0f} bytes each "
          f"({r['bytes_per_pattern'] * r['mem_patterns'] / 2**20:.0f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k patterns, fewer events (a few seconds)")
    ap.add_argument("--patterns", type=int, help="unrelated patterns on the loaded bus (default 100000)")
    ap.add_argument("--events", metavar="FILE", help="another events.py to measure (e.g. the one before the trie)")
    args = ap.parse_args()
    report(measure(args.quick, args.patterns, args.events))


if __name__ == "__main__":
    main()
