#!/usr/bin/env python3
"""Where the Ed25519 verify throughput is: library, threads, batching. Evidence for issue 7's "make it fast".

Measured here, one process, same 250-byte message:
  * verifies/s inline with cryptography (what galaxynode.identity.verify uses) and with PyNaCl (libsodium),
    if installed (`pip install pynacl`; measurement only, not a dependency);
  * 2 OS threads verifying concurrently (the GIL is released during verify) vs 1;
  * inside trio: a stream of frames verified inline on the event loop, vs one trio.to_thread.run_sync per
    frame, vs batches of B frames handed to 2 worker threads (CapacityLimiter(2)) — the shape a session
    reader could take (verify a batch of received frames off the loop, then process them in order).

    .venv/bin/python scripts/bench_verify.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galaxynode.identity import Identity, verify  # noqa: E402

MSG_BYTES = 250


def median_rate(fn: Callable[[int], None], n: int, reps: int) -> float:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(n)
        out.append(n / (time.perf_counter() - start))
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, reps = (1000, 3) if args.quick else (5000, 5)
    ident = Identity.generate()
    msgs = [os.urandom(MSG_BYTES) for _ in range(64)]
    sigs = [ident.sign(x) for x in msgs]
    work = list(zip(msgs, sigs))
    key = ident.public
    rows: list[tuple[str, float, str]] = []

    def crypt(k: int) -> None:
        for i in range(k):
            msg, sig = work[i & 63]
            verify(key, sig, msg)
    base = median_rate(crypt, n, reps)
    rows.append(("cryptography verify, inline, 1 thread", base, "1.00"))

    try:
        from nacl.signing import VerifyKey
    except ImportError:
        VerifyKey = None
    if VerifyKey is not None:
        vk = VerifyKey(key)

        def nacl(k: int) -> None:
            for i in range(k):
                msg, sig = work[i & 63]
                vk.verify(msg, sig)
        r = median_rate(nacl, n, reps)
        rows.append(("PyNaCl (libsodium) verify, inline, 1 thread", r, f"{r / base:.2f}"))

        def nacl_raw(k: int) -> None:
            from nacl.bindings import crypto_sign_open
            for i in range(k):
                msg, sig = work[i & 63]
                crypto_sign_open(sig + msg, key)
        r = median_rate(nacl_raw, n, reps)
        rows.append(("PyNaCl crypto_sign_open (no VerifyKey wrapper)", r, f"{r / base:.2f}"))

    def threads(fn: Callable[[int], None], count: int) -> Callable[[int], None]:
        def run(k: int) -> None:
            ts = [threading.Thread(target=fn, args=(k // count,)) for _ in range(count)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        return run
    r = median_rate(threads(crypt, 2), n, reps)
    rows.append(("cryptography verify, 2 OS threads", r, f"{r / base:.2f}"))

    async def stream(mode: str, batch: int, k: int) -> None:
        limiter = trio.CapacityLimiter(2)
        if mode == "inline":
            for i in range(k):
                msg, sig = work[i & 63]
                verify(key, sig, msg)
                if i % batch == 0:
                    await trio.lowlevel.checkpoint()
        elif mode == "thread-each":
            for i in range(k):
                msg, sig = work[i & 63]
                await trio.to_thread.run_sync(verify, key, sig, msg, limiter=limiter)
        else:  # batches to 2 workers, two batches in flight so both cores are busy
            def check(items: list[tuple[bytes, bytes]]) -> None:
                for msg, sig in items:
                    verify(key, sig, msg)
            chunks = [[work[(s + j) & 63] for j in range(min(batch, k - s))] for s in range(0, k, batch)]
            in_flight = trio.Semaphore(2)  # two batches at a time: both cores busy
            async with trio.open_nursery() as nursery:
                for chunk in chunks:
                    await in_flight.acquire()

                    async def one(c: list = chunk) -> None:
                        try:
                            await trio.to_thread.run_sync(check, c, limiter=limiter)
                        finally:
                            in_flight.release()
                    nursery.start_soon(one)

    def in_trio(mode: str, batch: int) -> Callable[[int], None]:
        return lambda k: trio.run(stream, mode, batch, k)
    r_inline = median_rate(in_trio("inline", 32), n, reps)
    rows.append(("trio: inline on the event loop", r_inline, f"{r_inline / base:.2f}"))
    r = median_rate(in_trio("thread-each", 1), n // 4, reps)
    rows.append(("trio: trio.to_thread per frame (CapacityLimiter 2)", r, f"{r / base:.2f}"))
    for b in (8, 32, 128):
        r = median_rate(in_trio("batch", b), n, reps)
        rows.append((f"trio: batches of {b} on 2 worker threads", r, f"{r / base:.2f}"))

    print(f"Ed25519 verify of {MSG_BYTES}-byte messages, {os.cpu_count()} cpus, median of {reps} x {n}\n")
    w = max(len(r[0]) for r in rows)
    print(f"{'what':<{w}} | {'verifies/s':>10} | {'x inline cryptography':>21}")
    print(f"{'-' * w}-+-{'-' * 10}-+-{'-' * 21}")
    for what, rate, ratio in rows:
        print(f"{what:<{w}} | {rate:>10,.0f} | {ratio:>21}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
