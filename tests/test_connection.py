"""Gelato sessions over real loopback sockets: handshake, requests, keepalive, errors, limits."""
from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from functools import partial

import attrs
import msgpack
import pytest
import trio

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Limits, decode_frame, mac_payload, now_ms
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.net.client import connect
from galaxynode.net.connection import (Connection, RemoteError, SessionClosed, SessionLimits, establish,
                                       is_violation)
from galaxynode.net.outbox import Outbox, OutputBudget
from galaxynode.net.ratelimit import TokenBucket
from galaxynode.net.transport import Channel, ChannelClosed, open_channel, serve_channels

NET = "test"
FAST = SessionLimits(handshake_timeout=2, close_timeout=0.5)


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


async def handler(conn, frame):
    """STATUS -> ACK; QUERY -> non-fatal error; LEAVE -> fatal error; ADMIN -> handler bug;
    HEARTBEAT -> reply too large to encode; LOOKUP -> slow; JOIN -> asks the peer a question first."""
    if frame.type == "STATUS":
        return m.Ack(re=frame.id)
    if frame.type == "QUERY":
        raise ProtocolError(ErrorCode.NOT_FOUND, "nothing here")
    if frame.type == "LEAVE":
        raise ProtocolError(ErrorCode.BANNED, "go away")
    if frame.type == "ADMIN":
        raise RuntimeError("handler bug")
    if frame.type == "HEARTBEAT":
        return m.AdminResult(re=frame.id, items=tuple({"x": "y" * 60_000} for _ in range(30)))
    if frame.type == "LOOKUP":
        await trio.sleep(0.2)
        return m.Ack(re=frame.id)
    if frame.type == "JOIN":
        await conn.request(m.Status(), timeout=5)
        return m.Ack(re=frame.id)
    return None


@asynccontextmanager
async def session_server(identity, *, limits=FAST, handler=handler, budget=None):
    """Answering side built from the parts (no Server): yields (url, established connections)."""
    conns: list[Connection] = []

    async def serve(channel):
        try:
            session = await establish(channel, identity, opener=False, network=NET, role="pool", limits=limits)
        except (ProtocolError, ChannelClosed):
            return
        conn = Connection(channel, session, limits=limits, handler=handler, budget=budget)
        conns.append(conn)
        await conn.run()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_channels, serve, "127.0.0.1", 0,
                                            max_message_size=limits.codec.max_frame_size,
                                            handshake_timeout=limits.handshake_timeout))
        yield f"ws://127.0.0.1:{bound[0][1]}", conns
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# --- sans-IO pieces ----------------------------------------------------------------------------

def test_token_bucket():
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(b.take(1, 0.0) for _ in range(5))
    assert not b.take(1, 0.0)
    assert b.take(1, 0.1)          # 0.1 s refills one token
    assert not b.take(1, 0.1)
    assert not b.take(6, 100.0)    # never more than burst
    assert b.take(5, 100.0)
    assert not b.take(1, 50.0)     # the clock going backwards refills nothing
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


def test_session_limits_are_validated():
    with pytest.raises(ValueError):
        SessionLimits(idle_timeout=0)
    with pytest.raises(ValueError):
        SessionLimits(ping_interval=10, idle_timeout=5)
    with pytest.raises(ValueError):
        SessionLimits(byte_burst=1000)  # below max_frame_size


def test_violations():
    assert is_violation(ProtocolError(ErrorCode.BAD_SIGNATURE))
    assert is_violation(ProtocolError(ErrorCode.RATE_LIMITED))
    assert not is_violation(ProtocolError(ErrorCode.IDLE_TIMEOUT))
    assert not is_violation(ProtocolError(ErrorCode.NOT_FOUND))  # not fatal
    assert not is_violation(RemoteError(m.Error(code=2000, name="bad_signature")))
    assert not is_violation(None)


# --- over the wire -----------------------------------------------------------------------------

async def test_handshake_and_request_reply(identity_a, identity_b):
    async with session_server(identity_a) as (url, conns):
        async with connect(url, identity_b, network=NET, limits=FAST, pinned_key=identity_a.public,
                           listen=("ws://node.example:1",)) as conn:
            assert conn.peer_key == identity_a.public
            assert conn.peer_hello.role == "pool"
            reply = await conn.request(m.Status(), timeout=5)
            assert reply.type == "ACK" and reply.msg.re != b""
            server = conns[0]
            assert server.peer_key == identity_b.public and server.session.sid == conn.session.sid
            assert server.peer_hello.listen == ("ws://node.example:1",)
            assert server.remote == conn.channel.local
        await wait_for(lambda: server.closed)
        assert server.close_code == 1000 and server.local_error is None


async def test_many_concurrent_requests_keep_seq_order(identity_a, identity_b):
    async with session_server(identity_a) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST) as conn:
        replies = []

        async def ask():
            replies.append(await conn.request(m.Status(), timeout=10))
        async with trio.open_nursery() as nursery:
            for _ in range(300):  # more than the send queue holds
                nursery.start_soon(ask)
        assert len(replies) == 300
        assert conn.session.send_seq == 300 and conns[0].session.recv_seq == 300
        assert conns[0].stats.errors_sent == 0


async def test_handler_errors_become_error_frames(identity_a, identity_b):
    async with session_server(identity_a) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST) as conn:
        with pytest.raises(RemoteError) as e:
            await conn.request(m.Query(), timeout=5)
        assert e.value.code is ErrorCode.NOT_FOUND and e.value.message == "nothing here"
        with pytest.raises(RemoteError) as e:
            await conn.request(m.Admin(action="peers"), timeout=5)  # handler bug: logged, ERROR internal
        assert e.value.code is ErrorCode.INTERNAL
        with pytest.raises(RemoteError) as e:
            await conn.request(m.Heartbeat(), timeout=5)  # reply over the frame limit
        assert e.value.code is ErrorCode.INTERNAL
        assert (await conn.request(m.Status(), timeout=5)).type == "ACK"  # the session lives on
        with pytest.raises(RemoteError) as e:
            await conn.request(m.Leave(), timeout=5)  # fatal: ERROR, then the session closes
        assert e.value.code is ErrorCode.BANNED
        await wait_for(lambda: conn.closed)
        with pytest.raises(SessionClosed) as closed:
            await conn.send(m.Status())
        assert closed.value.code == 1008


async def test_handler_may_ask_the_peer_while_handling(identity_a, identity_b):
    async def client_handler(conn, frame):
        return m.Ack(re=frame.id)

    async with session_server(identity_a) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST, handler=client_handler) as conn:
        assert (await conn.request(m.Join(), timeout=5)).type == "ACK"


async def test_unknown_type_is_answered_and_not_fatal(identity_a, identity_b):
    async with session_server(identity_a) as (url, conns), \
            open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        session = await establish(ch, identity_b, opener=True, network=NET, role="probe", limits=FAST)
        payload = msgpack.packb({"type": "FUTURE", "id": b"i" * 16, "seq": session.send_seq, "body": {}})
        session.send_seq += 1
        await ch.send(mac_payload(session.send_key, payload))
        with trio.fail_after(5):
            error = session.decode(await ch.receive())
            assert error.type == "ERROR" and error.msg.code == ErrorCode.UNKNOWN_TYPE and error.msg.re == b"i" * 16
            await ch.send(session.encode(m.Status()))
            assert session.decode(await ch.receive()).type == "ACK"


async def test_ping_is_answered_and_keepalive_pings(identity_a, identity_b):
    lively = attrs.evolve(FAST, ping_interval=0.05, idle_timeout=5)
    async with session_server(identity_a) as (url, conns), \
            connect(url, identity_b, network=NET, limits=lively) as conn:
        await trio.sleep(0.3)
        assert conn.stats.pings_sent >= 2
        assert not conn.closed and not conns[0].closed
        assert conns[0].stats.frames_out >= 2  # its PONGs
    async with session_server(identity_a) as (url, conns), \
            open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        session = await establish(ch, identity_b, opener=True, network=NET, role="probe", limits=FAST)
        await ch.send(session.encode(m.Ping(data=b"echo me")))
        with trio.fail_after(5):
            pong = session.decode(await ch.receive())
        assert pong.type == "PONG" and pong.msg.data == b"echo me"


async def test_idle_peer_is_pinged_then_closed(identity_a, identity_b):
    short = attrs.evolve(FAST, ping_interval=0.1, idle_timeout=0.3)
    async with session_server(identity_a, limits=short) as (url, conns), \
            open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        session = await establish(ch, identity_b, opener=True, network=NET, role="probe", limits=FAST)
        frames = []
        with trio.fail_after(5), pytest.raises(ChannelClosed):
            while True:
                frames.append(session.decode(await ch.receive()))
        assert [f.type for f in frames][:1] == ["PING"]
        assert frames[-1].type == "ERROR" and frames[-1].msg.code == ErrorCode.IDLE_TIMEOUT
        assert conns[0].local_error.code is ErrorCode.IDLE_TIMEOUT


async def test_a_peer_answering_pings_stays_connected(identity_a, identity_b):
    short = attrs.evolve(FAST, ping_interval=0.05, idle_timeout=0.2)
    async with session_server(identity_a, limits=short) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST) as conn:
        await trio.sleep(0.6)
        assert not conn.closed
        assert (await conn.request(m.Status(), timeout=5)).type == "ACK"


async def test_request_timeout_and_send_nowait_drops(identity_a, identity_b):
    async def silent(conn, frame):
        return None

    async with session_server(identity_a, handler=silent) as (url, conns), \
            connect(url, identity_b, network=NET, limits=attrs.evolve(FAST, send_queue=2)) as conn:
        with pytest.raises(trio.TooSlowError):
            await conn.request(m.Status(), timeout=0.1)
        results = [conn.send_nowait(m.Status()) for _ in range(10)]  # no checkpoint: the writer cannot drain
        sent = results.count(True)  # the queue, plus one handed straight to the waiting writer
        assert sent in (2, 3) and results == [True] * sent + [False] * (10 - sent)
        assert conn.stats.dropped == 10 - sent


async def test_late_reply_is_dropped_not_dispatched(identity_a, identity_b):
    seen = []

    async def client_handler(conn, frame):
        seen.append(frame.type)

    async with session_server(identity_a) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST, handler=client_handler) as conn:
        with pytest.raises(trio.TooSlowError):
            await conn.request(m.Lookup(), timeout=0.05)
        await wait_for(lambda: conn.stats.late_replies == 1)
        assert seen == [] and not conn.closed


async def test_closing_fails_pending_requests(identity_a, identity_b):
    async def never(conn, frame):
        await trio.sleep_forever()

    async with session_server(identity_a, handler=never) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST) as conn:
        async with trio.open_nursery() as nursery:
            async def ask():
                with pytest.raises(SessionClosed):
                    await conn.request(m.Status(), timeout=10)
            nursery.start_soon(ask)
            await wait_for(lambda: conns and conns[0].stats.frames_in)
            await conns[0].close(ProtocolError(ErrorCode.SHUTTING_DOWN, "bye"))
        assert conn.remote_error.code is ErrorCode.SHUTTING_DOWN


async def test_handler_run_task_pushes_events(identity_a, identity_b):
    class Pusher:
        async def __call__(self, conn, frame):
            return m.Ack(re=frame.id)

        async def run(self, conn):
            for i in range(3):
                await conn.send(m.Event(topic="t", event_id=bytes(16), origin=identity_a.public, ts=i))

    got = []

    async def on_event(conn, frame):
        got.append(frame.msg.ts)

    async with session_server(identity_a, handler=Pusher()) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST, handler=on_event):
        await wait_for(lambda: len(got) == 3)
    assert got == [0, 1, 2]


async def test_handshake_failures_reach_both_sides(identity_a, identity_b, identity_c):
    async with session_server(identity_a) as (url, conns):
        with pytest.raises(RemoteError) as e:
            async with connect(url, identity_b, network="other", limits=FAST):
                pass
        assert e.value.code is ErrorCode.NETWORK_MISMATCH
        with pytest.raises(ProtocolError) as e:
            async with connect(url, identity_b, network=NET, limits=FAST, pinned_key=identity_c.public):
                pass
        assert e.value.code is ErrorCode.PINNED_KEY_MISMATCH and not isinstance(e.value, RemoteError)
        with pytest.raises(RemoteError) as e:
            async with connect(url, identity_a, network=NET, limits=FAST):
                pass
        assert e.value.code is ErrorCode.SELF_CONNECTION
        assert conns == []


async def test_handshake_timeout_sends_error(identity_a):
    async with session_server(identity_a, limits=attrs.evolve(FAST, handshake_timeout=0.2)) as (url, conns), \
            open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        with trio.fail_after(5):
            frame = decode_frame(await ch.receive())
            assert frame.type == "ERROR" and frame.msg.code == ErrorCode.HANDSHAKE_TIMEOUT
            assert frame.sid is None and frame.sender == identity_a.public
            with pytest.raises(ChannelClosed) as e:
                await ch.receive()
            assert e.value.code == 1008


async def test_establish_over_a_dead_channel_raises_channel_closed(identity_a, identity_b):
    async def hang_up(channel):
        await channel.close()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_channels, hang_up, "127.0.0.1", 0, max_message_size=2**20))
        with pytest.raises(ChannelClosed):
            async with connect(f"ws://127.0.0.1:{bound[0][1]}", identity_b, network=NET, limits=FAST):
                pass
        nursery.cancel_scope.cancel()


async def test_codec_limits_apply_to_the_session(identity_a, identity_b):
    small = attrs.evolve(FAST, codec=Limits(max_frame_size=2048), byte_burst=4096)
    async with session_server(identity_a, limits=small) as (url, conns), \
            connect(url, identity_b, network=NET, limits=small) as conn:
        with pytest.raises(ProtocolError) as e:  # our own frame: refused before it is sent
            await conn.request(m.Event(topic="t", event_id=bytes(16), origin=bytes(32), ts=0,
                                       data={"x": "y" * 4000}), timeout=5)
        assert e.value.code is ErrorCode.FRAME_TOO_LARGE
        assert (await conn.request(m.Status(), timeout=5)).type == "ACK"


async def test_peer_that_stops_reading_is_closed_as_slow_reader(identity_a, identity_b):
    """A peer that asks for 23 MB of replies and never reads: the pool holds at most
    send_queue_bytes of them (not 256 frames of 60 KB) and closes it with slow_reader."""
    async def bulky(conn, frame):
        return m.AdminResult(re=frame.id, items=({"x": "y" * 60_000},))

    stalling = attrs.evolve(FAST, write_timeout=0.3, send_queue_bytes=1 << 20)
    budget = OutputBudget(8 << 20)
    async with session_server(identity_a, limits=stalling, handler=bulky, budget=budget) as (url, conns), \
            open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        session = await establish(ch, identity_b, opener=True, network=NET, role="probe", limits=FAST)
        with trio.fail_after(10):
            try:
                for _ in range(380):  # ~23 MB of replies that are never read
                    await ch.send(session.encode(m.Status()))
            except ChannelClosed:
                pass
            await wait_for(lambda: conns[0].closed)
            await conns[0].wait_closed()
        assert conns[0].close_code == 1008 and conns[0].local_error.code is ErrorCode.SLOW_READER
        assert 0 < budget.peak <= stalling.send_queue_bytes   # in flight included
        assert budget.used == 0                                # all given back on close


# --- output bytes (outbox.py) ------------------------------------------------------------------

async def test_queued_frames_go_out_in_batched_writes_in_order(identity_a, identity_b, monkeypatch):
    """The writer hands what is queued to the channel in one write (Channel.send_many): fewer system
    calls for a busy session, the same frames in the same order (the peer checks every seq)."""
    batches = []
    send_many = Channel.send_many

    async def counting(self, frames):
        batches.append(len(frames))
        await send_many(self, frames)
    monkeypatch.setattr(Channel, "send_many", counting)
    async with session_server(identity_a) as (url, conns), \
            connect(url, identity_b, network=NET, limits=FAST) as conn:
        for i in range(100):
            assert conn.send_nowait(m.Ping(data=i.to_bytes(2, "big")))
        assert (await conn.request(m.Status(), timeout=10)).type == "ACK"  # answered after all 100
        assert conns[0].session.recv_seq == 101 and conns[0].stats.errors_sent == 0
        assert conn.stats.frames_out == 101 and batches and max(batches) > 1


async def test_send_many_on_a_closed_channel_raises_channel_closed(identity_a, identity_b):
    async with session_server(identity_a) as (url, conns), \
            open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        await establish(ch, identity_b, opener=True, network=NET, role="node", limits=FAST)
        await wait_for(lambda: conns)
        await conns[0].close()
        with trio.fail_after(5), pytest.raises(ChannelClosed):
            while True:  # the close reaches our reader after a moment
                await ch.send_many([b"x", b"y"])
                await trio.sleep(0.01)


def test_outbox_take_ready_takes_what_is_queued_up_to_a_byte_bound():
    box = Outbox(10, 1000)
    for i in range(5):
        box.put(100, i)
    assert box.take_ready(250) == [(100, 0), (100, 1), (100, 2)]  # stops once past the bound
    assert box.take_ready(10_000) == [(100, 3), (100, 4)] and box.take_ready(10) == []
    assert box.bytes == 500  # counted until done()


def test_outbox_bounds_frames_bytes_and_the_shared_budget():
    budget = OutputBudget(250)
    a, b = Outbox(3, 200, budget), Outbox(3, 200, budget)
    assert a.fits(200) and not a.fits(201)
    a.put(150, "a1")
    assert not a.fits(51) and a.fits(50)
    b.put(90, "b1")                       # the budget (250) now binds before b's own bound (200)
    assert budget.used == 240 and not b.fits(11) and b.fits(10)
    a.put(10, "a2")
    assert b.full() and a.full()          # the budget is spent: no frame fits
    c = Outbox(1, 1000)
    c.put(1000, "c1")
    assert c.full()                       # one frame max
    a.done(150)                           # the writer handed a1 over: its bytes are free again
    assert budget.used == 100 and a.bytes == 10 and b.fits(100)
    a.release()
    assert budget.used == 90 and a.bytes == 0 and a.closed
    a.done(10)                            # a late done() after release gives nothing back twice
    assert budget.used == 90
    b.release()
    assert budget.used == 0 and budget.peak == 250
    with pytest.raises(ValueError):
        OutputBudget(0)


@asynccontextmanager
async def idle_connection(url, identity, limits, budget):
    """A Connection that is never run(): nothing drains its queue, so what it holds is what it took."""
    async with open_channel(url, max_message_size=2**20, connect_timeout=5) as ch:
        session = await establish(ch, identity, opener=True, network=NET, role="node", limits=limits)
        conn = Connection(ch, session, limits=limits, budget=budget)
        try:
            yield conn
        finally:
            await conn.close()


def _event(size):
    return m.Event(topic="t", event_id=bytes(16), origin=bytes(32), ts=0, data={"x": "y" * size})


async def test_queued_output_is_bounded_in_encoded_bytes(identity_a, identity_b):
    """send_nowait() drops once the session's queued bytes would pass send_queue_bytes (though far
    fewer frames than send_queue are queued); the count is the frames' encoded size."""
    limits = attrs.evolve(FAST, send_queue_bytes=100_000, send_queue=256)
    budget = OutputBudget(10 << 20)
    async with session_server(identity_a) as (url, _), idle_connection(url, identity_b, limits, budget) as conn:
        results = [conn.send_nowait(_event(10_000)) for _ in range(20)]
        queued = results.count(True)
        assert results == [True] * queued + [False] * (20 - queued)
        assert queued == 9 and conn.stats.dropped == 11       # 9 x ~10.2 KB <= 100 KB < 10 x
        assert budget.used == conn._outbox.bytes and 9 * 10_000 < budget.used <= 100_000
        assert conn.send_nowait(m.Ping())                     # a small frame still fits
        await conn.close()
        assert budget.used == 0


async def test_send_waits_for_the_process_budget_and_resumes_when_it_is_freed(identity_a, identity_b, identity_c):
    """Two sessions share one OutputBudget: when one holds it all, the other's send() waits
    (backpressure, not a drop) and goes on as soon as the first gives its bytes back."""
    limits = attrs.evolve(FAST, send_queue_bytes=200_000)
    budget = OutputBudget(150_000)
    sent = []
    async with session_server(identity_a) as (url, _), \
            idle_connection(url, identity_b, limits, budget) as hog, \
            idle_connection(url, identity_c, limits, budget) as other:
        while hog.send_nowait(_event(20_000)):
            pass
        assert budget.used > 130_000 and hog.stats.dropped == 1
        assert not other.send_nowait(_event(20_000)) and other.stats.dropped == 1

        async def send_one():
            await other.send(_event(20_000))
            sent.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_one)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == []                     # waiting, not dropped
            await hog.close()                     # its queued bytes go back to the budget
            await trio.testing.wait_all_tasks_blocked()
            assert sent == [True]
        assert budget.used == other._outbox.bytes > 20_000


async def test_a_reply_waits_for_room_in_its_own_queue(identity_a, identity_b):
    """send() on a full session queue parks until the writer drains it; closing wakes it with SessionClosed."""
    limits = attrs.evolve(FAST, send_queue_bytes=50_000)
    async with session_server(identity_a) as (url, _), idle_connection(url, identity_b, limits, None) as conn:
        await conn.send(_event(30_000))
        outcome = []

        async def second():
            try:
                await conn.send(_event(30_000))
            except SessionClosed:
                outcome.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == [] and len(conn._outbox) == 1
            nursery.start_soon(conn.close)
        assert outcome == ["closed"]
