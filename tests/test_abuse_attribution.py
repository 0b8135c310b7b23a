"""Attribution and bounded fan-out (issue 13 items 2 and 5) against live pool processes on loopback.

A fake peer (this process, through the project's own client API with role "pool") is accepted by a
victim pool that lists its key as a static peer (static peers are always accepted, whatever the
peering policy; honest pools list each other the same way, keys made beforehand, the dialled side
under a URL nothing listens on). It then asserts things about another pool:

- it relays `node.left` with another pool's key as origin (unsigned, and with a signature of its
  own): no subscriber on a third pool ever sees it, while the victim's own signed events still get
  there (before: the forged event reached them);
- it answers a cross-pool QUERY with a spoofed version of pool B's node record (capability `evil`,
  a later expiry), an invented node attributed to B and a node outside the query's filter: the
  result holds B's real record only (before: the spoofed record won the merge and the invented and
  unfiltered nodes came back);
- on a 5-pool full mesh a peers-scope QUERY causes at most 1 + [peers] query_budget (default 8)
  QUERYs across the mesh, counted from every pool's galaxynode_frames_received metric (before: 17).

The sans-IO merge (`peering._page`) is tested here too: a page ends where the first source's page
ended, at page_bytes, and never splits one node key's records across pages.
"""
from __future__ import annotations

import os
import re
import socket
import time
import urllib.request
from contextlib import ExitStack, aclosing

import attrs
import trio

from abuse import NETWORK, live_pool
from galaxynode import records
from galaxynode.gelato import messages as m
from galaxynode.identity import Identity, write_key
from galaxynode.net.client import connect as connect_session
from galaxynode.nodeclient import connect
from galaxynode.peering import _page

ENV = {"GALAXYNODE_PEERS_RECONNECT_MIN": "0.1", "GALAXYNODE_PEERS_RECONNECT_MAX": "0.5",
       "GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}
BUDGET = 8  # [peers] query_budget default


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_url() -> str:
    """A loopback URL nothing listens on: a static peer entry that only names the fake's key."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}"


def peer(url: str, key: bytes) -> tuple[str, str]:
    return ("--peer", f"{url}#ed25519:{key.hex()}")


def keyed(tmp_path, name: str) -> tuple[Identity, tuple[str, str]]:
    """A pool key made beforehand, so that the other pools can list it: (identity, --key args)."""
    identity = Identity.generate()
    write_key(identity, tmp_path / f"{name}.key")
    return identity, ("--key", str(tmp_path / f"{name}.key"))


async def status(url: str) -> m.StatusResult:
    async with connect(url, Identity.generate(), network=NETWORK) as c:
        return await c.status()


async def wait_peers(url: str, n: int, timeout: float = 10.0) -> bytes:
    """Until the pool at url has n peers; returns its key."""
    with trio.fail_after(timeout):
        while (st := await status(url)).peers < n:
            await trio.sleep(0.1)
    return st.key


def forged_signature(by: Identity, kind: records.Kind, claim) -> m.SignedRecord:
    """A record claiming another origin, signed with the wrong key (what a relay can make)."""
    record = records._encode(claim)
    return m.SignedRecord(record=record, sig=by.sign(kind.prefix + record))


class FakePeer:
    """The fake pool's side of its session: ACKs the victim's SUBSCRIBE, answers its QUERYs with
    `answer(query)`, and records them."""

    def __init__(self, answer=lambda q: ()):
        self.answer = answer
        self.queries: list[m.Query] = []
        self.subscribed = trio.Event()

    async def __call__(self, conn, frame):
        if frame.type == "SUBSCRIBE":
            self.subscribed.set()
            return m.Ack(re=frame.id)
        if frame.type == "QUERY":
            self.queries.append(frame.msg)
            return m.QueryResult(re=frame.id, nodes=tuple(self.answer(frame.msg)))
        return None


async def test_forged_origin_event_never_reaches_a_third_pool(tmp_path):
    """A fake peer of pool A relays node.left with pool B's key as origin, unsigned and signed by
    itself, and sends an unsigned event of its own: a subscriber on pool C (peered with A) sees
    none of them, and does see A's own node.joined (signed by A, verified by C)."""
    fake, b, honest = Identity.generate(), Identity.generate(), Identity.generate()
    (ida, key_args_a), (idc, key_args_c) = keyed(tmp_path, "a"), keyed(tmp_path, "c")
    with ExitStack() as stack:
        a = stack.enter_context(live_pool(tmp_path / "a", env=ENV, name="a", args=(
            *key_args_a, *peer(dead_url(), fake.public), *peer(dead_url(), idc.public))))
        key_a = ida.public
        c = stack.enter_context(live_pool(tmp_path / "c", env=ENV, args=(*key_args_c, *peer(a.url, key_a)), name="c"))
        await wait_peers(a.url, 1)
        async with connect(c.url, Identity.generate(), network=NETWORK) as sub:
            await sub.subscribe(["node.#"], peers=True)
            handler = FakePeer()
            async with connect_session(a.url, fake, network=NETWORK, role="pool", handler=handler) as conn:
                with trio.fail_after(10):
                    await handler.subscribed.wait()
                victim = os.urandom(32).hex()

                def event(origin: bytes, **kw) -> m.Event:
                    return m.Event(topic="node.left", event_id=os.urandom(16), origin=origin, ts=now_ms(),
                                   data={"key": victim}, **kw)

                unsigned = event(b.public)
                claim = records.EventClaim(origin=b.public, network=NETWORK, seq=now_ms(), topic="node.left",
                                           event_id=os.urandom(16), ts=now_ms(), data={"key": victim})
                self_signed = m.Event(topic="node.left", event_id=claim.event_id, origin=b.public, ts=claim.ts,
                                      data={"key": victim}, signed=forged_signature(fake, records.EVENT, claim))
                for ev in (unsigned, self_signed, event(fake.public)):
                    await conn.send(ev)
                await conn.request(m.Status(), timeout=10)  # A handled the events before this answer
                async with connect(a.url, honest, network=NETWORK) as node:
                    await node.join(capabilities=["honest"])
                seen = []
                with trio.fail_after(10):
                    async with aclosing(sub.events()) as events:
                        async for ev in events:
                            seen.append(ev)
                            if ev.topic == "node.joined" and ev.data.get("key") in (honest.public.hex(),
                                                                                     honest.public):
                                break
    assert not [ev for ev in seen if ev.origin in (b.public, fake.public)], seen
    assert not [ev for ev in seen if ev.data.get("key") == victim]
    assert seen[-1].origin == key_a and seen[-1].signed is not None


async def test_spoofed_and_invented_records_do_not_come_back(tmp_path):
    """Pool A peers with pool B and with a fake. Node N is joined at B with capability `good`. The
    fake answers A's peer QUERY with: B's record of N with `evil` added and a later expiry
    (unsigned, and signed by the fake), an invented node attributed to B, and a node of its own
    outside the query's filter. A client's peers-scope QUERY at A for `good` gets B's real record of
    N and nothing the fake made up about B or outside the filter."""
    fake, node, invented, outside = (Identity.generate() for _ in range(4))
    (ida, key_args_a), (idb, key_args_b) = keyed(tmp_path, "a"), keyed(tmp_path, "b")
    with ExitStack() as stack:
        b = stack.enter_context(live_pool(tmp_path / "b", env=ENV, name="b",
                                          args=(*key_args_b, *peer(dead_url(), ida.public))))
        key_b = idb.public
        a = stack.enter_context(live_pool(tmp_path / "a", env=ENV, name="a", args=(
            *key_args_a, *peer(b.url, key_b), *peer(dead_url(), fake.public))))
        await wait_peers(a.url, 1)

        def answer(q: m.Query):
            far = now_ms() + 36_000_000
            claim = records.NodeClaim(origin=key_b, network=NETWORK, seq=now_ms(), issued=now_ms(), expires=far,
                                      key=node.public, capabilities=("good", "evil"))
            spoofed = m.NodeRecord(key=node.public, capabilities=("good", "evil"), expires=far, pool=key_b)
            return (spoofed, attrs.evolve(spoofed, signed=forged_signature(fake, records.NODE, claim)),
                    m.NodeRecord(key=invented.public, capabilities=("good",), expires=far, pool=key_b),
                    m.NodeRecord(key=outside.public, capabilities=("other",), expires=far))

        handler = FakePeer(answer)
        async with connect(b.url, node, network=NETWORK) as at_b, \
                connect_session(a.url, fake, network=NETWORK, role="pool", handler=handler):
            await at_b.join(capabilities=["good"], meta={"where": "b"})
            await wait_peers(a.url, 2)
            async with connect(a.url, Identity.generate(), network=NETWORK) as client:
                found = await client.query(capabilities=["good"], scope="peers", hops=1)
    assert handler.queries, "the fake was never asked"
    asked = handler.queries[0]
    assert asked.hops == 0 and asked.qid is not None and asked.budget is not None and asked.budget <= BUDGET - 2
    assert [(n.key, n.pool, n.capabilities, dict(n.meta)) for n in found] == [
        (node.public, key_b, ("good",), {"where": "b"})], found
    assert found[0].signed is not None  # B's own signature, forwarded by A


def _queries_received(metrics_url: str) -> int:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    got = re.search(r'^galaxynode_frames_received_total\{type="QUERY"\} (\S+)$', text, re.M)
    return int(float(got.group(1))) if got else 0


async def test_fan_out_budget_bounds_amplification_on_a_5_pool_mesh(tmp_path):
    """Five pools, fully meshed. A client's peers-scope QUERY (hops 2) at one of them causes at
    most 1 + query_budget = 9 QUERYs across the mesh (before: 1 + 4 + 4 x 3 = 17; at 32 peers
    1 + 32 + 32 x 31 = 1,025), and still returns every pool's node."""
    made = [keyed(tmp_path, f"p{i}") for i in range(5)]
    keys = [identity.public for identity, _ in made]
    with ExitStack() as stack:
        pools = []
        for i in range(5):  # each dials those started before it and names the later ones' keys
            args = (*made[i][1], *(x for j in range(5) if j != i
                                   for x in peer(pools[j].url if j < i else dead_url(), keys[j])))
            pools.append(stack.enter_context(live_pool(tmp_path / f"p{i}", env=ENV, args=args, name=f"p{i}")))
        for p in pools:
            await wait_peers(p.url, 4, timeout=15)
        metrics = [p.wait_for(r"serving metrics on (http://\S+/metrics)").group(1) for p in pools]
        nodes = [Identity.generate() for _ in pools]
        async with connect(pools[0].url, nodes[0], network=NETWORK) as n0, \
                connect(pools[1].url, nodes[1], network=NETWORK) as n1, \
                connect(pools[2].url, nodes[2], network=NETWORK) as n2, \
                connect(pools[3].url, nodes[3], network=NETWORK) as n3, \
                connect(pools[4].url, nodes[4], network=NETWORK) as n4:
            for c in (n0, n1, n2, n3, n4):
                await c.join(capabilities=["mesh"])
            before = sum(map(_queries_received, metrics))
            rounds = 5
            async with connect(pools[0].url, Identity.generate(), network=NETWORK) as client:
                for _ in range(rounds):
                    found = await client.query(capabilities=["mesh"], scope="peers", hops=2)
                    assert {(n.key, n.pool) for n in found} == {(n.public, k) for n, k in zip(nodes, keys)}
            after = sum(map(_queries_received, metrics))
    amplification = (after - before) / rounds
    assert amplification <= 1 + BUDGET, f"{amplification:g} QUERYs per QUERY"


# --- the merged page (sans-IO) -------------------------------------------------------------------

def _rec(key: int, pool: int, meta_bytes: int = 0) -> m.NodeRecord:
    return m.NodeRecord(key=bytes([key]) * 32, expires=1, pool=bytes([pool]) * 32,
                        meta={"m": "x" * meta_bytes} if meta_bytes else {})


def _found(*recs: m.NodeRecord) -> dict:
    return {(r.pool, r.key): (0, r) for r in recs}


def test_merged_page_ends_where_the_first_source_ended():
    """A source whose page ended at key 3 knows nothing past it: keys 5 and 7 of the other source
    wait for the next page, and the cursor is the last key kept."""
    q = m.Query(limit=10)
    page = _page(b"r" * 16, q, _found(_rec(1, 1), _rec(3, 1), _rec(2, 2), _rec(5, 2), _rec(7, 2)),
                 [bytes([3]) * 32], 10, 1 << 20, False)
    assert [n.key[0] for n in page.nodes] == [1, 2, 3] and page.cursor == bytes([3]) * 32


def test_merged_page_is_cut_by_bytes_and_keeps_a_node_key_whole():
    """page_bytes cuts the page; the records of one node key held by two pools stay together."""
    q = m.Query(limit=10)
    recs = [_rec(1, 1, 200), _rec(2, 1, 200), _rec(2, 2, 200), _rec(3, 1, 200)]
    page = _page(b"r" * 16, q, _found(*recs), [], 10, 700, False)
    assert [(n.key[0], n.pool[0]) for n in page.nodes] == [(1, 1)] and page.cursor == bytes([1]) * 32
    page = _page(b"r" * 16, q, _found(*recs), [], 3, 1 << 20, False)
    assert [(n.key[0], n.pool[0]) for n in page.nodes] == [(1, 1), (2, 1), (2, 2)]
    assert page.cursor == bytes([2]) * 32
    assert _page(b"r" * 16, q, _found(*recs), [], 10, 1 << 20, False).cursor is None


async def test_conformance_attribution_cases_pass_on_a_pool_that_accepts_any_peer(tmp_path):
    """The attribution cases (galaxynode/conformance/cases_attribution.py) pass against our pool;
    the two that need the probe as a peer run only under [peers] accept = "any"."""
    from galaxynode.conformance.probe import Options
    from galaxynode.conformance.runner import all_cases, run_suite
    cases = [c for c in all_cases() if c.fn.__module__.endswith("cases_attribution")]
    with live_pool(tmp_path / "p", env={"GALAXYNODE_PEERS_ACCEPT": "any"}) as p:
        results = await run_suite(Options(url=p.url, network=NETWORK, role="pool"), cases)
    assert [(r.case.fn.__name__, r.outcome) for r in results] == [(c.fn.__name__, "pass") for c in cases], \
        [(r.expected, r.got, r.note) for r in results]
