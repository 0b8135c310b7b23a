#!/usr/bin/env python3
"""What plugin admission hooks cost a JOIN: JOIN rate and pool CPU per JOIN with 0, 1 and 3 trivial
hooks (each `async def admit(...): return Admit()`), as ratios to no hook, all measured in this run.

Two measurements:
- wire: a pool process (`python -m galaxynode run`, durable SQLite registry in a temp dir, frame rate
  limits raised) with the hooks enabled as dotted-path plugins from this file; this process keeps
  `--sessions` node sessions JOINing back to back (a re-JOIN replaces the lease, so every JOIN is a
  full admission + durable registry write) for `--seconds`. Reported: JOINs/s and the pool's CPU
  microseconds per JOIN (utime + stime from /proc). The pool runs are interleaved (0, 1, 3, 0, 1, 3,
  ...) over `--rounds` so drift on a shared machine hits every variant alike; the median is shown.
- in-process: `PluginSupervisor.admit` alone, per call, for 0, 1 and 3 hooks.

    .venv/bin/python scripts/bench_plugins.py [--quick] [--sessions N] [--seconds S] [--rounds R]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_heartbeats import PoolProcess, cpu_seconds  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402
from galaxynode.nodeclient import connect  # noqa: E402
from galaxynode.plugin import Admit, AdmissionRequest, PluginContext  # noqa: E402

NETWORK = "bench-plugins"
VARIANTS = (0, 1, 3)


class TrivialA:
    name = "trivial_a"

    async def admit(self, request):
        return Admit()


class TrivialB(TrivialA):
    name = "trivial_b"


class TrivialC(TrivialA):
    name = "trivial_c"


HOOKS = {0: [], 1: ["bench_plugins:TrivialA"], 3: ["bench_plugins:TrivialA", "bench_plugins:TrivialB",
                                                 "bench_plugins:TrivialC"]}


async def drive(url: str, pid: int, sessions: int, seconds: float) -> tuple[float, float]:
    """(JOINs/s, pool CPU us per JOIN) over `seconds` of `sessions` back-to-back JOIN loops."""
    count = [0]
    async with trio.open_nursery() as nursery:
        ready = []
        go, done = trio.Event(), trio.Event()

        async def node() -> None:
            async with connect(url, Identity.generate(), network=NETWORK) as pool:
                await pool.join(capabilities=["bench"])  # warm: session and first lease exist
                ready.append(1)
                await go.wait()
                while not done.is_set():
                    await pool.join(capabilities=["bench"])
                    count[0] += 1

        for _ in range(sessions):
            nursery.start_soon(node)
        while len(ready) < sessions:
            await trio.sleep(0.01)
        cpu0, t0, n0 = cpu_seconds(pid), time.perf_counter(), count[0]
        go.set()
        await trio.sleep(seconds)
        cpu1, t1, n1 = cpu_seconds(pid), time.perf_counter(), count[0]
        done.set()
    joins = n1 - n0
    return joins / (t1 - t0), (cpu1 - cpu0) / max(joins, 1) * 1e6


def wire(hooks: int, sessions: int, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "galaxynode.toml")
        enabled = ", ".join(f'"{spec}"' for spec in HOOKS[hooks])
        config.write_text(f'[plugins]\nenabled = [{enabled}]\npath = ["{HERE}"]\n')
        env = {"GALAXYNODE_LIMITS_FRAME_RATE": "100000", "GALAXYNODE_LIMITS_FRAME_BURST": "100000"}
        pool = PoolProcess(Path(tmp, "data"), env=env, network=NETWORK, name="bench-plugins",
                           args=("--config", str(config)))
        try:
            return trio.run(drive, pool.url, pool.pid, sessions, seconds)
        finally:
            pool.stop()
            pool.close()


def in_process(hooks: int, n: int) -> float:
    """Microseconds per PluginSupervisor.admit call."""
    from galaxynode.plugins import PluginSupervisor

    async def run() -> float:
        sup = PluginSupervisor(HOOKS[hooks], lambda name: PluginContext(name=name), search=[HERE])
        request = AdmissionRequest(key=b"\x01" * 32, capabilities=("bench",), meta={})
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            t0 = time.perf_counter()
            for _ in range(n):
                await sup.admit(request)
            took = time.perf_counter() - t0
            nursery.cancel_scope.cancel()
        return took / n * 1e6

    return trio.run(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 2 s per variant")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds, rounds = (2.0, 1) if args.quick else (args.seconds, args.rounds)
    runs: dict[int, list[tuple[float, float]]] = {h: [] for h in VARIANTS}
    for _ in range(rounds):
        for hooks in VARIANTS:
            runs[hooks].append(wire(hooks, args.sessions, seconds))
    calls = {h: min(in_process(h, 20_000) for _ in range(3)) for h in VARIANTS}
    rate = {h: statistics.median(r for r, _ in runs[h]) for h in VARIANTS}
    cpu = {h: statistics.median(c for _, c in runs[h]) for h in VARIANTS}
    print(f"JOIN through a pool process: {args.sessions} sessions, {seconds:g} s x {rounds} round(s) per variant "
          "(median); baseline = no hook, same run")
    print(f"{'admission hooks':<18} {'JOINs/s':>9} {'ratio':>7} {'pool CPU us/JOIN':>17} {'ratio':>7} "
          f"{'admit() us/call':>16}")
    for h in VARIANTS:
        print(f"{h:<18} {rate[h]:>9,.0f} {rate[h] / rate[0]:>7.3f} {cpu[h]:>17,.0f} {cpu[h] / cpu[0]:>7.3f} "
              f"{calls[h]:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
