#!/usr/bin/env python3
"""What signed records cost (docs/gelato/records.md): sign and verify per record, a typical and a
fat node record and an event, beside bare Ed25519 on the same bytes; the signer's cache on
heartbeats (signatures per node per minute, naive vs coarse expiry); bytes added to a NodeRecord.

    .venv/bin/python scripts/bench_records.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_verify import median_rate  # noqa: E402

from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.identity import Identity, verify  # noqa: E402
from galaxynode.records import (EVENT, NODE, EventSeqs, NodeSeqs, RecordSigner, accept_event,  # noqa: E402
                                accept_node, sign)

NOW = 1_700_000_000_000
NET = "main"


def us_per_call(fn: Callable[[int], None], n: int, reps: int) -> float:
    """Median microseconds per call (reps is odd, so the median rate's inverse is the median time)."""
    return 1e6 / median_rate(fn, n, reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, reps = (300, 3) if args.quick else (3000, 5)
    origin, relay, me = Identity.generate(), Identity.generate(), Identity.generate()
    typical = dict(capabilities=("gpu", "cpu", "linux", "x86_64"), meta={"region": "eu-west", "version": "1.4.2",
                                                                           "owner": "lab-7"})
    fat = dict(capabilities=tuple(f"{i:02d}" + "c" * 62 for i in range(m.MAX_CAPABILITIES)),
               meta={f"{i:02d}" + "k" * 62: "v" * m.MAX_META_VALUE for i in range(m.MAX_META_ENTRIES)})
    rows = []
    for label, fields in (("typical node record", typical), ("fat node record", fat)):
        signer = RecordSigner(origin, network=NET)
        keys = [i.to_bytes(32, "big") for i in range(n)]
        signed = [signer.node(k, **fields, expires=NOW + 30_000, now=NOW) for k in keys]
        records = [m.NodeRecord(key=k, **fields, expires=NOW + 30_000, pool=origin.public) for k in keys]

        def do_sign(count: int, fields=fields) -> None:
            s = RecordSigner(origin, network=NET)
            for i in range(count):
                s.node(keys[i], **fields, expires=NOW + 30_000, now=NOW)

        def do_cached(count: int, signer=signer) -> None:
            for i in range(count):
                signer.node(keys[i], **fields, expires=NOW + 30_000 + 10_000, now=NOW + 10_000)

        def do_accept(count: int, signed=signed, records=records) -> None:
            seqs = NodeSeqs()
            for i in range(count):
                accept_node(records[i], signed[i], sender=relay.public, own=me.public, network=NET, now=NOW + 1,
                            seqs=seqs)

        def do_bare(count: int, signed=signed) -> None:
            for i in range(count):
                verify(origin.public, signed[i].sig, NODE.prefix + signed[i].record)

        size = len(signed[0].record)
        plain = len(msgpack.packb(records[0].to_body(), use_bin_type=True))
        rows.append((label, size, plain, us_per_call(do_sign, n, reps), us_per_call(do_cached, n, reps),
                     us_per_call(do_accept, n, reps), us_per_call(do_bare, n, reps)))

    signer = RecordSigner(origin, network=NET)
    data = {"key": "ab" * 32, "capabilities": ["gpu", "cpu"], "meta": {"region": "eu-west"}, "expires": NOW}
    evs = [signer.event("node.joined", i.to_bytes(16, "big"), NOW, data, now=NOW) for i in range(n)]
    msgs = [m.Event(topic="node.joined", event_id=i.to_bytes(16, "big"), origin=origin.public, ts=NOW, data=data,
                    hops=1) for i in range(n)]

    def ev_sign(count: int) -> None:
        s = RecordSigner(origin, network=NET)
        for i in range(count):
            s.event("node.joined", i.to_bytes(16, "big"), NOW, data, now=NOW)

    def ev_accept(count: int) -> None:
        seqs = EventSeqs()
        for i in range(count):
            accept_event(msgs[i], evs[i], sender=relay.public, own=me.public, network=NET, now=NOW + 1, seqs=seqs)

    def ev_dup(count: int) -> None:  # the same event again by another path: dropped before the verify
        seqs = EventSeqs()
        accept_event(msgs[0], evs[0], sender=relay.public, own=me.public, network=NET, now=NOW + 1, seqs=seqs)
        for _ in range(count):
            try:
                accept_event(msgs[0], evs[0], sender=relay.public, own=me.public, network=NET, now=NOW + 1, seqs=seqs)
            except Exception:
                pass

    def ev_bare(count: int) -> None:
        for i in range(count):
            verify(origin.public, evs[i].sig, EVENT.prefix + evs[i].record)

    ev_row = ("event (node.joined)", len(evs[0].record), None, us_per_call(ev_sign, n, reps), None,
              us_per_call(ev_accept, n, reps), us_per_call(ev_bare, n, reps))

    print(f"{'record':<22}{'bytes':>7}{'plain':>7}{'sign us':>9}{'cached us':>11}{'accept us':>11}"
          f"{'bare verify us':>16}{'accept/bare':>13}")
    for label, size, plain, s_us, c_us, a_us, b_us in [*rows, ev_row]:
        print(f"{label:<22}{size:>7}{plain if plain is not None else '-':>7}{s_us:>9.1f}"
              f"{(f'{c_us:.2f}' if c_us is not None else '-'):>11}{a_us:>11.1f}{b_us:>16.1f}{a_us / b_us:>13.2f}")
    print(f"duplicate event dropped before the verify: {us_per_call(ev_dup, n, reps):.1f} us")

    # Heartbeats: ttl 30 s, one every 10 s, 10 simulated minutes per node.
    for granularity in (60_000, 300_000):
        s = RecordSigner(origin, network=NET, granularity_ms=granularity)
        t = NOW
        beats = 0
        while t < NOW + 600_000:
            s.node(b"\x01" * 32, **typical, expires=t + 30_000, now=t)
            t += 10_000
            beats += 1
        print(f"granularity {granularity // 1000:>3} s: {s.signed / 10:.1f} signatures per node per minute "
              f"(naive, one per heartbeat: {beats / 10:.1f}; one per answer: per query and peer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
