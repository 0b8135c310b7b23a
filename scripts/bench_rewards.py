"""Rewards accounting cost: 10,000 nodes over one epoch with churn (every node leaves and rejoins
--churn times, a fifth of them expire, checkpoints every 10 s of pool time), then the epoch is closed
and reported. Prints the cost of the epoch's accounting beside a baseline from the same run: a plain
dict update per event (the least any accounting must do), as a ratio.

    .venv/bin/python scripts/bench_rewards.py [--nodes 10000] [--churn 5]
"""
from __future__ import annotations

import argparse
import os
import random
import time

from galaxynode.contrib.rewards import Accounting

EPOCH = 3_600_000  # one hour of pool time


def events(nodes: int, churn: int, seed: int = 1) -> list[tuple[str, dict, int]]:
    rnd = random.Random(seed)
    out = []
    for key in (os.urandom(32) for _ in range(nodes)):
        t = rnd.randrange(0, EPOCH // 10)
        for _ in range(churn):
            out.append(("node.joined", {"key": key}, t))
            joined, t = t, t + rnd.randrange(1, EPOCH // (churn + 1))
            if rnd.random() < 0.2:  # swept up to half a second after its lease ran out
                out.append(("node.expired", {"key": key, "expires": max(joined, t - 500)}, t))
            else:
                out.append(("node.left", {"key": key}, t))
            t += rnd.randrange(1, 60_000)
    out.sort(key=lambda e: e[2])
    return out


def ours(evs: list) -> tuple[float, int]:
    start = time.perf_counter()
    acc, next_checkpoint = Accounting(EPOCH, reported=1), EPOCH + 10_000
    for topic, data, ts in evs:
        ts += EPOCH
        while ts >= next_checkpoint:
            acc.clock = next_checkpoint  # a checkpoint's accounting; its store write is timed apart below
            next_checkpoint += 10_000
        acc.event(topic, data, ts)
    acc.finished(2 * EPOCH)
    report = acc.report(1)
    return time.perf_counter() - start, len(report["nodes"])


def checkpoint_cost(nodes: int) -> float:
    """One checkpoint's serialisation with `nodes` open leases and their epoch totals."""
    acc = Accounting(EPOCH, reported=1)
    for i in range(nodes):
        key = os.urandom(32)
        acc.joined(key, EPOCH + i)
        acc.ended(key, EPOCH + i + 5)
        acc.joined(key, EPOCH + i + 10)
    start = time.perf_counter()
    blob = acc.dump()
    return time.perf_counter() - start, len(blob)


def baseline(evs: list) -> float:
    start = time.perf_counter()
    open_, total = {}, {}
    for topic, data, ts in evs:
        if topic == "node.joined":
            open_[data["key"]] = ts
        else:
            k = data["key"]
            total[k] = total.get(k, 0) + ts - open_.pop(k)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--churn", type=int, default=5)
    args = p.parse_args()
    evs = events(args.nodes, args.churn)
    base = min(baseline(evs) for _ in range(3))
    runs = [ours(evs) for _ in range(3)]
    cost, reported = min(r[0] for r in runs), runs[0][1]
    dump, size = min(checkpoint_cost(args.nodes) for _ in range(3))
    print(f"{args.nodes} nodes, {len(evs)} events in a one-hour epoch, {reported} nodes with coverage reported")
    print(f"epoch accounting (events + close + report): {cost * 1000:.1f} ms")
    print(f"one checkpoint's state ({size / 1e6:.2f} MB): {dump * 1000:.1f} ms")
    print(f"baseline (one dict update per event, no epochs/checkpoints): {base * 1000:.1f} ms  ratio {cost / base:.1f}x")


if __name__ == "__main__":
    main()
