"""Property test (issue 12): JOIN and update (re-JOIN) bodies with multi-byte strings at every length
limit, and one byte past it, run against a live pool and a live main net for the whole lease
lifecycle: join, heartbeat, update, query (by key, and by all capabilities and meta at once), a
descriptor rebuild and an announce that count the nodes, expiry, and the rebuild and announce after
it. What C1 missed: the crash came from the background rebuild, not from the JOIN's own reply.

Properties: a body within the bounds (counted in UTF-8 bytes) is accepted and read back exactly; one
past a bound is refused with invalid_body and the session goes on; the pool never logs a traceback or
a failed background task, and the descriptor it announces always verifies. Each example is one batch
of nodes held together (~15 s: it waits for two announces); the default run is one example, the slow
run more. Leases are 2 s (GALAXYNODE_REGISTRY_MIN_TTL=1) so expiry fits in the example.
"""
from __future__ import annotations

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abuse import NETWORK, alive, live_pool
from test_abuse_join import MainNet, announced, status
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.nodeclient import connect
from galaxynode.registry.service import wall_clock_ms

TTL = 2
ENV = {"GALAXYNODE_REGISTRY_MIN_TTL": "1", "GALAXYNODE_REGISTRY_EXPIRY_INTERVAL": "0.2"}
# One to four UTF-8 bytes each, a combining mark, and the terminal's favourite bytes.
CHARS = st.sampled_from(["\u00e9", "a", "Z", "-", "\u00fc", "\u20ac", "\u4e2d", "\U0001F600", "\u0301", "\x1b",
                         "\n", " "])
MULTI = st.sampled_from(["\u00e9", "\u20ac", "\u4e2d", "\U0001F600", "\u0301"])  # 2..4 bytes each


@st.composite
def exact(draw, n_bytes: int, tag: int, *, multi: bool = False) -> str:
    """A str of exactly n_bytes of UTF-8: a 2-digit tag (so that keys differ), then a drawn pattern
    of characters repeated, then ASCII padding where the next character would not fit. `multi`:
    multi-byte characters only, so that one byte past a bound is still within it in code points
    (what the old, character-counting bounds let through)."""
    if n_bytes == 0:
        return ""
    pattern = draw(st.lists(MULTI if multi else CHARS, min_size=1, max_size=6))
    out, size, i = [], 0, 0
    for ch in f"{tag:02d}"[:n_bytes]:
        out.append(ch)
        size += 1
    while size < n_bytes:
        ch = pattern[i % len(pattern)]
        i += 1
        ch = ch if size + len(ch.encode()) <= n_bytes else "a"
        out.append(ch)
        size += len(ch.encode())
    return "".join(out)


# (bound, lengths within it, one past it) in bytes; counts likewise.
CAP_LEN = (m.MAX_NAME, (1, m.MAX_NAME - 1, m.MAX_NAME), m.MAX_NAME + 1)
KEY_LEN = (m.MAX_NAME, (2, m.MAX_NAME), m.MAX_NAME + 1)
VALUE_LEN = (m.MAX_META_VALUE, (0, m.MAX_META_VALUE - 1, m.MAX_META_VALUE), m.MAX_META_VALUE + 1)
CAPS_N = ((0, 1, m.MAX_CAPABILITIES), m.MAX_CAPABILITIES + 1)
META_N = ((0, 1, m.MAX_META_ENTRIES), m.MAX_META_ENTRIES + 1)
DEFECTS = ("cap_len", "caps_count", "key_len", "value_len", "meta_count")


@st.composite
def body(draw, shape: str | None = None) -> tuple[list[str], dict[str, str], str | None]:
    """(capabilities, meta, defect): every string at a byte limit or next to it; defect names the one
    bound broken by one (byte or item), or None for a valid body. `shape`: "max" (every count and
    length at its bound), a defect, or None (drawn)."""
    defect = draw(st.one_of(st.none(), st.none(), st.sampled_from(DEFECTS))) if shape is None else (
        None if shape == "max" else shape)
    ncaps = CAPS_N[1] if defect == "caps_count" else draw(st.sampled_from(CAPS_N[0]))
    nmeta = META_N[1] if defect == "meta_count" else draw(st.sampled_from(META_N[0]))
    if shape == "max":
        ncaps, nmeta = CAPS_N[0][-1], META_N[0][-1]
    if defect == "cap_len" and not ncaps:
        ncaps = 1
    if defect in ("key_len", "value_len") and not nmeta:
        nmeta = 1
    def length(bounds: tuple) -> int:
        return bounds[0] if shape == "max" else draw(st.sampled_from(bounds[1]))

    caps = [draw(exact(length(CAP_LEN), i)) for i in range(ncaps)]
    meta = {draw(exact(length(KEY_LEN), i)): draw(exact(length(VALUE_LEN), i)) for i in range(nmeta)}
    if defect == "cap_len":
        caps[-1] = draw(exact(CAP_LEN[2], len(caps) - 1, multi=True))
    elif defect in ("key_len", "value_len"):
        key = next(iter(meta))
        value = meta.pop(key)
        if defect == "key_len":
            meta[draw(exact(KEY_LEN[2], 0, multi=True))] = value
        else:
            meta[key] = draw(exact(VALUE_LEN[2], 0, multi=True))
    return caps, meta, defect


async def _join(node, caps: list[str], meta: dict[str, str], defect: str | None) -> bool:
    """JOIN (or update); True if accepted. A body past a bound must be refused with invalid_body."""
    try:
        await node.join(capabilities=caps, meta=meta, ttl=TTL)
    except ProtocolError as e:
        assert defect is not None and e.code == ErrorCode.INVALID_BODY, (defect, e)
        return False
    assert defect is None, f"a body with {defect} one past its bound was accepted"
    return True


async def lifecycle(url: str, main_url: str, bodies: list[tuple]) -> None:
    accepted: list[bytes] = []
    async with trio.open_nursery() as nursery:
        holders = []
        for first, update in bodies:
            me = Identity.generate()
            node = await nursery.start(_open, url, me)
            holders.append(node)
            joined = await _join(node, *first)
            if joined:
                await node.heartbeat()
            updated = await _join(node, *update)
            current = update if updated else first if joined else None
            if current is None:
                continue
            caps, meta, _ = current
            [record] = await node.query(key=me.public)
            assert record.capabilities == tuple(dict.fromkeys(caps)) and record.meta == meta
            found = await node.query(capabilities=caps, meta=meta, limit=m.MAX_PAGE)
            assert me.public in {r.key for r in found}
            accepted.append(me.public)
            nursery.start_soon(_heartbeat, node)
        st = await status(url)
        assert st.nodes == len(accepted)
        # A rebuild and an announce with these nodes: the main net lists a descriptor that verifies.
        desc = await announced(main_url, st.key, after=wall_clock_ms())
        assert desc.nodes == len(accepted)
        nursery.cancel_scope.cancel()  # sessions close without LEAVE: the leases run out
    with trio.fail_after(TTL + 5):
        while (await status(url)).nodes:
            await trio.sleep(0.2)
    desc = await announced(main_url, st.key, after=wall_clock_ms())  # the rebuild after expiry
    assert desc.nodes == 0


async def _open(url: str, me: Identity, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with connect(url, me, network=NETWORK) as node:
        task_status.started(node)
        await trio.sleep_forever()


async def _heartbeat(node) -> None:
    while True:
        await trio.sleep(TTL / 3)
        await node.heartbeat()


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-join")
    with MainNet(tmp / "main") as main, live_pool(tmp / "pool", env=ENV, args=("--mainnet", main.url)) as pool:
        pool.wait_for("announced to the main net")
        yield main, pool
        assert alive(pool) and alive(main)
        for proc in (pool, main):
            assert "Traceback" not in proc.output and "background task" not in proc.output, proc.output[-4000:]


# One node per shape (joins with it, then updates with a drawn body), plus two drawn ones: even the
# first, simplest example (Hypothesis tries it first) puts every bound and every defect on the wire.
SHAPES = ("max", "max", *DEFECTS, None, None)
BATCH = st.tuples(*(st.tuples(body(shape), body()) for shape in SHAPES))
COMMON = dict(deadline=None, derandomize=False, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@settings(max_examples=1, **COMMON)
@given(bodies=BATCH)
def test_join_bodies_at_every_byte_limit_through_a_lease_lifecycle(pools, bodies):
    main, pool = pools
    trio.run(lifecycle, pool.url, main.url, bodies)
    assert alive(pool)


@pytest.mark.slow
@settings(max_examples=8, **COMMON)
@given(bodies=BATCH)
def test_join_bodies_at_every_byte_limit_through_a_lease_lifecycle_long(pools, bodies):
    main, pool = pools
    trio.run(lifecycle, pool.url, main.url, bodies)
    assert alive(pool)
