"""Issue 12 item 9: what a frame can make the msgpack decoder allocate.

msgpack's C unpacker builds a list of the *declared* length at every array/map header before it
has seen an element, and keeps up to ~1000 headers open: a 4 KB pre-auth frame of nested
`array16(10000)` headers used to cost ~82 MB and 50-125 ms. The codec now proves the payload is one
complete value (an allocation-free skip pass) whenever a lie could cost more than 256 KiB, caps
declared counts at the payload size, and judges handshake frames under `preauth_limits`.

Unit tests bound the peak allocation (tracemalloc) per frame; the live test floods a pool with such
frames before the handshake and asserts that honest nodes do not notice.
"""
from __future__ import annotations

import contextlib
import tracemalloc

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galaxynode.gelato import codec
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import (DEFAULT_LIMITS, PREAUTH_FRAME_SIZE, PREAUTH_MAX_ARRAY_LEN, Limits, MacKey,
                                     decode_frame, mac_payload, now_ms, preauth_limits, sign_payload)
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Handshake, Session
from galaxynode.identity import Identity
from galaxynode.net import ChannelClosed, open_channel

from abuse import alive, assert_within, honest_latency, live_pool, rss_mib

A, B = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
SID = b"\x5a" * 32
MK = MacKey(b"\x6b" * 32)  # A's send key, B's receive key
KiB, MiB = 1024, 1024 * 1024

# Container headers declaring the largest counts the default limits allow (and beyond, for array32).
HEADERS = {"array16": b"\xdc\x27\x10", "array32": b"\xdd\x00\x00\x27\x10", "map16": b"\xde\x03\xe8",
           "map32": b"\xdf\x00\x00\x03\xe8", "fixarray": b"\x9f", "fixmap": b"\x8f"}


def lying_payload(header: bytes, size: int, *, wrapped: bool = False) -> bytes:
    """Nested container headers filling `size` bytes with nothing behind them; `wrapped` puts them
    under a key of the payload map, after a valid-looking prefix."""
    prefix = b"\x81\xa1x" if wrapped else b""
    return prefix + header * ((size - len(prefix)) // len(header))


def frame(payload: bytes, signer: Identity = A) -> bytes:
    return sign_payload(signer, payload, Limits(max_frame_size=1 << 62))


def peak_bytes(fn) -> tuple[int, ErrorCode | None]:
    """Peak traced allocation while fn runs, and the error code it raised (None: no error)."""
    tracemalloc.start()
    try:
        fn()
        code = None
    except ProtocolError as e:
        code = e.code
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, code


def answerer() -> Handshake:
    return Handshake(B, opener=False, network="t", role="pool")


# --- allocation bounds -----------------------------------------------------------------------------

@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("kind", sorted(HEADERS))
def test_preauth_lying_headers_allocate_under_512_kib(kind, wrapped):
    """Bound: a handshake frame of at most preauth_frame_size (4 KiB) makes the decoder allocate
    < 512 KiB at peak (before: ~82 MB and 50-125 ms for nested array16 headers)."""
    data = frame(lying_payload(HEADERS[kind], PREAUTH_FRAME_SIZE - 100, wrapped=wrapped))
    assert len(data) <= PREAUTH_FRAME_SIZE
    peak, code = peak_bytes(lambda: answerer().receive(data))
    assert code in (ErrorCode.MALFORMED_FRAME, ErrorCode.LIMIT_EXCEEDED)
    assert peak < 512 * KiB, f"{kind}: {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("size", [4 * KiB, 64 * KiB, MiB - 200])
@pytest.mark.parametrize("kind", ["array16", "array32", "map16", "map32"])
def test_session_lying_headers_allocate_a_few_frame_sizes(kind, size):
    """Bound: a session frame (MAC'd by the session's peer: keys are free) makes the decoder
    allocate < 5 x its size + 512 KiB at peak: copies of the payload (the outer split and the skip
    pass), never the declared counts (before: ~84 MB at any of these sizes)."""
    data = mac_payload(MK, lying_payload(HEADERS[kind], size, wrapped=True), Limits(max_frame_size=1 << 62))
    session = Session(B, A.public, None, SID, False, MacKey(b"\x00" * 32), MK)
    peak, code = peak_bytes(lambda: session.decode(data))
    assert code in (ErrorCode.MALFORMED_FRAME, ErrorCode.LIMIT_EXCEEDED)
    assert peak < 5 * len(data) + 512 * KiB, f"{kind} in {len(data)} bytes: {peak / MiB:.1f} MiB"


def test_complete_payload_allocates_linearly():
    """Bound (what remains): a complete payload allocates what it holds, at worst ~80 bytes per
    payload byte (empty maps, one byte each, are dicts); 64 KiB of them stay under 8 MiB."""
    payload = msgpack.packb({"type": "PING", "x": [[{} for _ in range(100)] for _ in range(650)]})
    assert 60 * KiB < len(payload) < 70 * KiB
    data = frame(payload)
    peak, code = peak_bytes(lambda: decode_frame(data))
    assert code is ErrorCode.BAD_KEY  # parsed completely, then judged
    assert peak < 8 * MiB


# --- the rule: structure before values ------------------------------------------------------------

def rejects(code: ErrorCode, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame(payload), limits)
    assert info.value.code is code, info.value


def test_a_declared_count_that_the_bytes_cannot_hold_is_malformed():
    rejects(ErrorCode.MALFORMED_FRAME, b"\x81\xa1x" + HEADERS["array16"] * 100)
    rejects(ErrorCode.MALFORMED_FRAME, b"\x81\xa1x" + HEADERS["map16"])
    # beyond max_array_len too: an incomplete payload is malformed whatever else it holds
    rejects(ErrorCode.MALFORMED_FRAME, b"\x81\xa1x\xdc\xff\xff\x01\x02\x03")


def test_structure_is_judged_before_limits_and_values():
    """framing F9: completeness first (no value is built before it), then left to right."""
    too_long = msgpack.packb("x" * 20)
    complete = b"\x82\xa1a" + too_long + b"\xa1b\xc0"
    rejects(ErrorCode.LIMIT_EXCEEDED, complete, Limits(max_str_len=8))
    rejects(ErrorCode.MALFORMED_FRAME, complete[:-1], Limits(max_str_len=8))          # truncated
    rejects(ErrorCode.MALFORMED_FRAME, complete + b"\xc0", Limits(max_str_len=8))     # trailing
    rejects(ErrorCode.MALFORMED_FRAME, b"\x82\xa1a\xa2\xff\xfe\xa1b", DEFAULT_LIMITS)  # bad UTF-8, truncated
    rejects(ErrorCode.LIMIT_EXCEEDED, b"\x81\xa1x" + b"\x91" * 2000 + b"\xc0")       # parser's stack


def test_counts_at_the_payload_size_are_still_accepted():
    """Capping declared counts at the payload size rejects nothing complete: an array of as many
    elements as the cap (one byte each) decodes."""
    for n in (1, 15, 16, 300, 5000):
        body = {"data": b"x", "pad": [None] * n}
        data = sign_payload(A, msgpack.packb({"type": "PING", "id": b"\x00" * 16, "ts": 1, "from": A.public,
                                              "body": body}, use_bin_type=True))
        assert decode_frame(data).msg == m.Ping(data=b"x")


payload_bytes = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda h, n, tail: h * n + tail, st.sampled_from(list(HEADERS.values())), st.integers(1, 200),
              st.binary(max_size=40)),
    st.builds(lambda cut, tail: msgpack.packb({"type": "PING", "x": [[1, "ab", {"k": b"v"}]] * 20})[:cut] + tail,
              st.integers(0, 400), st.binary(max_size=8)),
)


def verdict(payload: bytes) -> object:
    try:
        return decode_frame(frame(payload), Limits(max_str_len=64, max_array_len=50, max_map_len=20)).msg
    except ProtocolError as e:
        return e.code


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_bytes)
def test_the_skip_pass_changes_no_verdict(payload):
    """Whether the allocation-free pass runs first only changes what a lie costs, never the answer."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_SMALL_PAYLOAD", 0)
        mp.setattr(codec, "_LIE_BUDGET", -1)
        always = verdict(payload)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_SMALL_PAYLOAD", 1 << 30)
        never = verdict(payload)
    assert always == never


# --- pre-auth bounds ---------------------------------------------------------------------------------

def hello_frame(**extra) -> bytes:
    body = m.Hello(network="t", role="node", nonce=b"\x07" * 32, eph=b"\x09" * 32, versions=(2,)).to_body()
    payload = {"type": "HELLO", "id": b"\x00" * 16, "ts": now_ms(), "from": A.public, "body": {**body, **extra}}
    return sign_payload(A, msgpack.packb(payload, use_bin_type=True), Limits(max_frame_size=1 << 62))


def test_preauth_limits_are_tighter_and_never_looser():
    p = preauth_limits(DEFAULT_LIMITS, 4096)
    assert (p.max_frame_size, p.max_str_len, p.max_bin_len) == (4096, 4096, 4096)
    assert (p.max_array_len, p.max_map_len, p.max_depth) == (32, 32, 4)
    assert p.ts_window_ms == DEFAULT_LIMITS.ts_window_ms
    tight = Limits(max_frame_size=1024, max_str_len=100, max_bin_len=2000, max_array_len=8, max_map_len=8,
                   max_depth=2)
    p = preauth_limits(tight, 4096)
    assert (p.max_frame_size, p.max_str_len, p.max_bin_len) == (1024, 100, 2000)
    assert (p.max_array_len, p.max_map_len, p.max_depth) == (8, 8, 2)


@pytest.mark.parametrize("extra, code", [
    ({"x": list(range(PREAUTH_MAX_ARRAY_LEN + 1))}, ErrorCode.LIMIT_EXCEEDED),
    ({f"k{i}": 0 for i in range(30)}, ErrorCode.LIMIT_EXCEEDED),    # body map of 34 entries
    ({"x": [[[[1]]]]}, ErrorCode.LIMIT_EXCEEDED),                    # depth 5
    ({"x": b"\x00" * PREAUTH_FRAME_SIZE}, ErrorCode.FRAME_TOO_LARGE),
])
def test_handshake_frames_get_the_preauth_bounds(extra, code):
    """Unknown HELLO fields are ignored, but within the pre-auth bounds; the same body in a session
    frame is within the session's."""
    hs = answerer()
    with pytest.raises(ProtocolError) as info:
        hs.receive(hello_frame(**extra))
    assert info.value.code is code
    assert decode_frame(hello_frame(**extra)).msg.network == "t"


def test_handshake_accepts_a_hello_at_the_preauth_bounds():
    hello = hello_frame(x=list(range(PREAUTH_MAX_ARRAY_LEN)), y=[[[1]]])
    assert answerer().receive(hello) is not None  # our HELLO in reply
    small = Handshake(B, opener=False, network="t", role="pool", preauth_frame_size=len(hello) - 1)
    with pytest.raises(ProtocolError) as info:
        small.receive(hello)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


# --- against a live pool -----------------------------------------------------------------------------

ATTACK_SECONDS = 6.0
ATTACKERS = 4
PACE = 0.025  # seconds between frames per attacker: ~160 nasty frames/s in all


async def flood(url: str, data: bytes, until: float, sent: list[int]) -> None:
    """Pre-auth: connect from 127.0.0.2, send the nasty frame as the first message, wait for the
    pool's ERROR and close; again until `until`."""
    while trio.current_time() < until:
        with contextlib.suppress(ChannelClosed):
            async with open_channel(url, max_message_size=MiB, connect_timeout=5,
                                    local_address="127.0.0.2") as channel:
                await channel.send(data)
                sent[0] += 1
                with trio.move_on_after(5):
                    while True:
                        await channel.receive()
        await trio.sleep(PACE)


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def test_preauth_nested_header_flood_live(tmp_path):
    """A flood of 4 KiB pre-auth frames of nested array16(10000) headers from one address (about
    160/s; bans off so every frame reaches the decoder) keeps honest connect+JOIN within
    10 x quiet + 200 ms, and the pool's peak RSS (VmHWM) within 40 MiB of its quiet value.
    Without the bound each frame cost ~80 MB and 50-125 ms: the peak RSS grew by >= 80 MiB."""
    env = {"GALAXYNODE_LIMITS_VIOLATIONS_BEFORE_BAN": "1000"}
    nasty = frame(lying_payload(HEADERS["array16"], PREAUTH_FRAME_SIZE - 100, wrapped=True))
    with live_pool(tmp_path, env=env) as pool:
        quiet = await honest_latency(pool.url, n=5)
        hwm_quiet = vm_hwm_mib(pool.proc.pid)
        sent = [0]
        async with trio.open_nursery() as nursery:
            until = trio.current_time() + ATTACK_SECONDS
            for _ in range(ATTACKERS):
                nursery.start_soon(flood, pool.url, nasty, until, sent)
            await trio.sleep(1.0)
            loaded = await honest_latency(pool.url, n=5)
        assert alive(pool)
        grew = vm_hwm_mib(pool.proc.pid) - hwm_quiet
        print(f"quiet {quiet * 1000:.1f} ms, loaded {loaded * 1000:.1f} ms, {sent[0]} nasty frames, "
              f"peak RSS +{grew:.1f} MiB, RSS now {rss_mib(pool):.1f} MiB")
        assert sent[0] >= 50, "the attack did not run"
        assert_within(quiet, loaded, factor=10, slack=0.2)
        assert grew < 40, f"peak RSS grew by {grew:.1f} MiB"
