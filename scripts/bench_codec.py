#!/usr/bin/env python3
"""Gelato codec throughput beside bare operations on the same bytes, measured in the same run.

Session frames (everything after the handshake) are what a pool decodes all day:
  Session.decode (parse, authenticate, sequence, header, body schema) vs bare msgpack unpack of the
  same frame and of the payload inside it (what any reader must parse at the least), and
  Session.encode vs bare msgpack pack of the same frame structure.
Signed frames (Ed25519; every frame in v1, only HELLO/READY/sessionless ERROR since v2):
  encode_frame vs bare Ed25519 sign (cryptography) and decode_frame vs bare Ed25519 verify (libsodium,
  what the codec verifies with; OpenSSL's verify beside it).
The bare Ed25519 verify rate is also the reference for comparing runs of different codec versions
(the same primitive on the same bytes, whatever the codec does).

Each figure is the median rate of several timed batches (time.perf_counter), interleaved across the
operations (A B C A B C ...) so that drift (frequency scaling, a noisy neighbour) hits them alike.

    .venv/bin/python scripts/bench_codec.py [--quick] [--reps N] [--batch N]

`bench(quick)` returns the summary rows for scripts/bench.py (metric, ours, baseline, ratio, target, met).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402
from nacl.bindings import crypto_sign_open  # noqa: E402

from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.codec import SIGN_PREFIX, decode_frame, encode_frame, now_ms  # noqa: E402
from galaxynode.gelato.handshake import Handshake  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402

TARGET_STEP1 = 0.80  # step 1: decode_frame >= 0.80 of bare verify
TARGET = 0.90  # issue 7: decode_frame >= 0.90 of bare verify (signed frames)


def session_pair(opener: Identity, answerer: Identity, network: str = "bench") -> tuple[Any, Any]:
    """(opener's Session, answerer's Session) after a real handshake in memory.

    The one place the benchmarks touch the handshake/codec API beyond Session.encode/decode (which
    every Gelato version keeps): a codec change only needs this function changed."""
    a = Handshake(opener, opener=True, network=network, role="node")
    b = Handshake(answerer, opener=False, network=network, role="pool")
    b.receive(a.receive(b.receive(a.initiate())))
    return a.session, b.session


def typical_message() -> m.Join:
    """A JOIN whose body encodes to about 200 bytes."""
    return m.Join(ttl=60, capabilities=("gpu", "cuda-12", "fp16", "storage", "relay"),
                  meta={"region": "eu-west-1", "zone": "b", "rack": "r12-07", "host": "worker-0042.example.net",
                        "version": "galaxynode/0.1.0", "owner": "team-compute", "site": "amsterdam-3",
                        "tier": "standard"})


def median_rate(fn: Callable[[], None], n: int, samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    samples.append(n / elapsed if elapsed > 0 else float("inf"))


def run(reps: int, batch: int) -> dict[str, float]:
    sender, receiver = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    msg = typical_message()
    ts = now_ms()
    signed_frame = encode_frame(sender, msg, ts=ts)
    _, payload, sig = msgpack.unpackb(signed_frame)
    signed = SIGN_PREFIX + payload
    public = Ed25519PublicKey.from_public_bytes(sender.public)
    raw_public = sender.public
    outgoing, incoming = session_pair(sender, receiver)
    stream = [outgoing.encode(msg) for _ in range(batch)]
    session_frame = stream[0]
    structure = msgpack.unpackb(session_frame)   # [version, payload bin, auth bin]

    def bare_unpack() -> None:  # the same session frame: outer array, then the payload map inside it
        for data in stream:
            msgpack.unpackb(msgpack.unpackb(data)[1])

    def bare_pack() -> None:
        for _ in range(batch):
            msgpack.packb(structure, use_bin_type=True)

    def session_decode() -> None:
        incoming.recv_seq = 0
        for data in stream:
            incoming.decode(data)

    def session_encode() -> None:
        for _ in range(batch):
            outgoing.encode(msg)

    def bare_sign() -> None:
        for _ in range(batch):
            sender.private.sign(signed)

    def bare_verify() -> None:  # the primitive the codec verifies with (libsodium), called directly
        for _ in range(batch):
            crypto_sign_open(sig + signed, raw_public)

    def openssl_verify() -> None:
        for _ in range(batch):
            public.verify(sig, signed)

    def codec_encode() -> None:
        for _ in range(batch):
            encode_frame(sender, msg)

    def codec_decode() -> None:
        for _ in range(batch):
            decode_frame(signed_frame, now=ts)

    ops = {"bare_unpack": bare_unpack, "session_decode": session_decode, "bare_pack": bare_pack,
           "session_encode": session_encode, "bare_sign": bare_sign, "encode": codec_encode,
           "bare_verify": bare_verify, "decode": codec_decode, "openssl_verify": openssl_verify}
    for fn in ops.values():  # warm-up: caches, allocator, branch predictors
        fn()
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(reps):
        for name, fn in ops.items():
            median_rate(fn, batch, samples[name])
    rates = {name: statistics.median(s) for name, s in samples.items()}
    rates["signed_size"] = len(signed_frame)
    rates["session_size"] = len(session_frame)
    rates["body_size"] = len(msgpack.packb(msg.to_body(), use_bin_type=True))
    return rates


# (label, bare op, codec op): the session rows first, the signed-frame rows after
ROWS = (("msgpack unpack | Session.decode", "bare_unpack", "session_decode"),
        ("msgpack pack   | Session.encode", "bare_pack", "session_encode"),
        ("sign           | encode_frame", "bare_sign", "encode"),
        ("verify         | decode_frame", "bare_verify", "decode"),
        ("OpenSSL verify | decode_frame", "openssl_verify", "decode"))


def report(r: dict[str, float], reps: int, batch: int) -> str:
    lines = [f"Gelato codec vs bare operations on the same bytes: session frame {r['session_size']:.0f} bytes, "
             f"signed frame {r['signed_size']:.0f} bytes, body {r['body_size']:.0f} bytes (a JOIN); "
             f"median of {reps} interleaved batches x {batch}",
             "",
             f"{'bare op        | codec op':<34} {'bare/s':>10} {'codec/s':>10} {'ratio':>7} {'overhead us':>12}",
             "-" * 76]
    for label, bare, codec in ROWS:
        b, c = r[bare], r[codec]
        lines.append(f"{label:<34} {b:>10,.0f} {c:>10,.0f} {c / b:>7.2f} {(1 / c - 1 / b) * 1e6:>12.1f}")
    lines.append("")
    lines.append(f"Session.decode (decode + authenticate) {r['session_decode']:,.0f}/s = "
                 f"{r['session_decode'] / r['bare_verify']:.2f} x the bare Ed25519 verify rate of this run "
                 f"({r['bare_verify']:,.0f}/s; the reference for comparing runs)")
    for target, which in ((TARGET_STEP1, "step 1"), (TARGET, "issue 7")):
        ratio = r["decode"] / r["bare_verify"]
        verdict = "met" if ratio >= target else "NOT met"
        lines.append(f"target decode_frame >= {target:.2f} x bare verify (signed frames): {ratio:.2f} "
                     f"({verdict}, {which})")
    return "\n".join(lines)


def sizes(quick: bool) -> tuple[int, int]:
    """(reps, batch) of a full or a quick run."""
    return (3, 500) if quick else (7, 3000)


def bench(quick: bool = False) -> list[dict]:
    """The codec's summary rows for scripts/bench.py."""
    reps, batch = sizes(quick)
    r = run(reps, batch)
    rows = []
    for bare, codec, what, target in (
            ("bare_unpack", "session_decode",
             "frame decode + authenticate/s (Session.decode) vs bare msgpack unpack of the same frame", None),
            ("bare_pack", "session_encode", "frame encode + authenticate/s (Session.encode) vs bare msgpack pack",
             None),
            ("bare_verify", "session_decode", "Session.decode/s vs bare Ed25519 verify (reference across runs)",
             None),
            ("bare_sign", "encode", "signed encode_frame/s vs bare Ed25519 sign", None),
            ("bare_verify", "decode", "signed decode_frame/s vs bare Ed25519 verify", TARGET)):
        ratio = r[codec] / r[bare]
        rows.append({"metric": what, "ours": f"{r[codec]:,.0f}", "baseline": f"{r[bare]:,.0f}",
                     "ratio": f"{ratio:.2f}", "target": f">= {target:.2f}" if target else "-",
                     "met": (ratio >= target) if target else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~2 s run (fewer, smaller batches)")
    ap.add_argument("--reps", type=int, help="timed batches per operation (default 7, quick 3)")
    ap.add_argument("--batch", type=int, help="operations per batch (default 3000, quick 500)")
    args = ap.parse_args(argv)
    reps, batch = sizes(args.quick)
    reps, batch = args.reps or reps, args.batch or batch
    if reps < 1 or batch < 1:
        ap.error("--reps and --batch must be positive")
    print(report(run(reps, batch), reps, batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
