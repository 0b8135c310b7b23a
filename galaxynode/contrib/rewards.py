"""rewards: uptime rewards ("staker rewards"). Per epoch, each node's lease-covered time from the
registry's snapshot + change stream; shares by uptime x stake weight; each finished epoch becomes a
report signed by the pool key (record kind `epoch`), kept in the plugin store, served as
`x.rewards.report {epoch}` and by `galaxynode rewards URL --epoch N`, and published on the bus as
event `x.rewards.epoch` {record, sig} (the stellar plugin pays from it).

The accounting is sans-IO (`Accounting`); the plugin only feeds it events and the clock and stores
what it returns. Restart safety: coverage is booked only when a lease ends or its epoch closes, so a
checkpoint just stores the state with its time; after a restart the leases still held go on from
their stored start (counted once), and leases that ended while nobody watched are closed at the
checkpoint's time (an undercount of at most one checkpoint interval, never an overcount)."""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import msgpack

from galaxynode import plugin
from galaxynode.plugin import Field, MessageError, Option

PPM = 1_000_000
ENDING = {"node.left", "node.kicked", "node.banned", "node.expired"}


class Accounting:
    """Lease-covered milliseconds per node per epoch (epoch N covers [N*length, (N+1)*length) ms since
    the Unix epoch). `open` maps a key to the ms its not yet booked coverage starts at; `totals` holds
    booked ms per unfinished epoch; `reported` is the first epoch not yet finished (earlier ones are
    closed for good: nothing more is booked into them)."""

    def __init__(self, length_ms: int, *, reported: int = 0):
        if length_ms <= 0:
            raise ValueError("epoch length must be positive")
        self.length = length_ms
        self.reported = reported
        self.open: dict[bytes, int] = {}
        self.weights: dict[bytes, int] = {}
        self.totals: dict[int, dict[bytes, int]] = {}
        self.clock = 0  # ms of the last checkpoint: what a restart knows to have been watched

    # --- feeding --------------------------------------------------------------------------------

    def _floor(self) -> int:
        return self.reported * self.length

    def _book(self, key: bytes, start: int, end: int) -> None:
        start = max(start, self._floor())
        while start < end:
            epoch = start // self.length
            stop = min(end, (epoch + 1) * self.length)
            per = self.totals.setdefault(epoch, {})
            per[key] = per.get(key, 0) + stop - start
            start = stop

    def joined(self, key: bytes, at: int, weight: int = 1) -> None:
        """A lease starts at `at` (a JOIN of a node that holds one already changes nothing)."""
        self.weights[key] = weight
        self.open.setdefault(key, max(at, self._floor()))

    def ended(self, key: bytes, at: int) -> None:
        """The lease ended at `at` (left/kicked/banned: when it happened; expired: its expiry). An
        expiry seen after its epoch closed (later than the grace) leaves that epoch as reported."""
        start = self.open.pop(key, None)
        if start is not None:
            self._book(key, start, at)

    def event(self, topic: str, data: Mapping[str, Any], ts: int, weight: int = 1) -> None:
        key = data["key"]
        if topic == "node.joined":
            self.joined(key, ts, weight)
        elif topic in ENDING:
            end = ts
            if topic == "node.expired" and isinstance(data.get("expires"), int):
                end = min(ts, data["expires"])
            self.ended(key, end)

    def resync(self, leases: Iterable[tuple[bytes, int, int]], now: int) -> None:
        """After a (re)snapshot: `leases` is (key, joined ms, weight) for every lease now. Leases that
        ended unseen are closed at the last checkpoint; a lease that started after its stored start
        (left and joined again unseen) restarts at its JOIN."""
        current = {}
        for key, joined, weight in leases:
            current[key] = joined
            self.weights[key] = weight
        for key in [k for k in self.open if k not in current]:
            self.ended(key, max(self.open[key], self.clock))
        for key, joined in current.items():
            start = self.open.get(key)
            if start is None or joined > start:
                self.open[key] = max(min(joined, now), self._floor())

    def book_until(self, now: int) -> None:
        """Book every open lease up to `now` (closing an epoch)."""
        for key, start in self.open.items():
            if now > start:
                self._book(key, start, now)
                self.open[key] = now

    def finished(self, now: int, grace_ms: int = 0) -> list[int]:
        """Close every epoch that ended at least `grace_ms` before `now` (late expiries are booked
        within the grace) and return their numbers; report each with `report` before the next call."""
        done = []
        while (self.reported + 1) * self.length + grace_ms <= now:
            self.book_until((self.reported + 1) * self.length)
            done.append(self.reported)
            self.reported += 1
        return done

    def report(self, epoch: int, stakes: Mapping[bytes, int] = {}) -> dict[str, Any]:
        """The epoch's body: nodes as [key, ms, weight, share in ppm], largest share first; the shares
        are ms x weight over the sum (rounded down; zero weight gets nothing)."""
        per = self.totals.get(epoch, {})
        rows = []
        for key, ms in per.items():
            weight = stakes.get(key, self.weights.get(key, 1))
            rows.append([key, ms, weight])
        total = sum(ms * w for _, ms, w in rows)
        for row in rows:
            row.append(row[1] * row[2] * PPM // total if total else 0)
        rows.sort(key=lambda r: (-r[3], r[0]))
        return {"epoch": epoch, "start": epoch * self.length, "end": (epoch + 1) * self.length,
                "total_ms": sum(r[1] for r in rows), "nodes": rows}

    def forget(self, epoch: int) -> None:
        self.totals.pop(epoch, None)
        live = set(self.open)
        self.weights = {k: w for k, w in self.weights.items() if k in live or any(k in t for t in self.totals.values())}

    # --- persistence ----------------------------------------------------------------------------

    def dump(self) -> bytes:
        return msgpack.packb({"length": self.length, "reported": self.reported, "clock": self.clock, "open": self.open,
                              "weights": self.weights, "totals": self.totals}, use_bin_type=True)

    @classmethod
    def load(cls, blob: bytes, length_ms: int) -> "Accounting":
        state = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        acc = cls(length_ms, reported=state["reported"])
        if state["length"] != length_ms:  # a new epoch length starts at the next boundary of the new one
            acc.reported = -(-state["reported"] * state["length"] // length_ms)
        acc.clock = state["clock"]
        acc.open = dict(state["open"])
        acc.weights = dict(state["weights"])
        acc.totals = {} if state["length"] != length_ms else {int(e): dict(t) for e, t in state["totals"].items()}
        return acc


def report_key(epoch: int) -> str:
    return f"report/{epoch:012d}"


class RewardsPlugin:
    """The shell around Accounting: snapshot + changes in, checkpoints and signed reports out."""

    name = "rewards"
    options = {
        "epoch": Option(int, 86400, min=1, max=366 * 86400, help="epoch length in seconds"),
        "checkpoint": Option(float, 10.0, min=0.01, max=3600.0, help="seconds between checkpoints"),
        "grace": Option(float, 60.0, min=0.0, max=86400.0,
                        help="seconds after an epoch's end before it is reported (late expiries)"),
        "stake_meta": Option(str, "", max=64, help="node meta field holding its stake (an integer); empty: none"),
        "stakes": Option(dict, {}, help="stake per key (ed25519:<hex> or G...): an integer weight"),
    }

    def __init__(self, ctx: plugin.PluginContext):
        from galaxynode.identity import parse_public_key
        self.ctx = ctx
        self.length = ctx.config["epoch"] * 1000
        try:
            self.stakes = {parse_public_key(k): int(v) for k, v in ctx.config["stakes"].items()}
        except (ValueError, TypeError) as e:
            raise plugin.PluginError(f"rewards: stakes: {e}") from None
        self.acc: Accounting | None = None
        self.reports = ctx.metrics.counter("reports", "Epoch reports signed.") if ctx.metrics else None
        self.nodes = ctx.metrics.gauge("open_leases", "Leases being counted.") if ctx.metrics else None
        ctx.messages.register("report", self.serve, body={"epoch": Field("uint")})
        ctx.every(ctx.config["checkpoint"], self.checkpoint)

    def weight(self, meta: Mapping[str, str]) -> int:
        field = self.ctx.config["stake_meta"]
        if not field:
            return 1
        try:
            return max(0, int(meta.get(field, "1")))
        except ValueError:
            return 0

    @staticmethod
    def now() -> int:
        return time.time_ns() // 1_000_000

    async def run(self) -> None:
        blob = await self.ctx.store.get("state")
        self.acc = Accounting.load(blob, self.length) if blob else Accounting(self.length,
                                                                                reported=self.now() // self.length)
        while True:
            try:
                with self.ctx.registry.snapshot_and_changes() as (nodes, changes):
                    self.acc.resync([(n.key, n.joined, self.weight(n.meta)) for n in nodes], self.now())
                    async for ev in changes:
                        self.acc.event(ev.topic, ev.data, ev.ts, self.weight(ev.data.get("meta") or {}))
            except plugin.ChangesLost:
                self.ctx.log.warning("rewards: change stream lost; taking a new snapshot")

    async def checkpoint(self) -> None:
        """Close finished epochs (sign and store their reports) and store the state with its time in
        one atomic write: a report and the state that no longer holds its epoch land together."""
        acc, now = self.acc, self.now()
        if acc is None:
            return
        puts = {}
        for epoch in acc.finished(now, int(self.ctx.config["grace"] * 1000)):
            signed = self.ctx.identity.sign_record("epoch", acc.report(epoch, self.stakes))
            puts[report_key(epoch)] = msgpack.packb({"record": signed.record, "sig": signed.sig}, use_bin_type=True)
            acc.forget(epoch)
            if self.reports:
                self.reports.inc()
        acc.clock = now
        puts["state"] = acc.dump()
        await self.ctx.store.write(puts=puts)
        for key, blob in puts.items():  # stored first: a subscriber (stellar payouts) may ask for it again
            if key.startswith("report/"):
                self.ctx.bus.publish("x.rewards.epoch", msgpack.unpackb(blob, raw=False))
        if self.nodes:
            self.nodes.set(len(acc.open))

    async def serve(self, request: plugin.Request) -> dict:
        blob = await self.ctx.store.get(report_key(request.body["epoch"]))
        if blob is None:
            raise MessageError("not_found", f"rewards: no report for epoch {request.body['epoch']}")
        return msgpack.unpackb(blob, raw=False)


def verify_report(reply: Mapping[str, Any], pool: bytes | None = None) -> dict[str, Any]:
    """The report's fields if it is signed by `pool` (any origin when None), else ValueError."""
    return plugin.verify_record(reply, plugin="rewards", kind="epoch", origin=pool)
