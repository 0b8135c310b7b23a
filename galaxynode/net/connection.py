"""One Gelato session over a Channel: handshake, then a reader, a writer, a dispatcher and a
keepalive task, with every limit of "Limits and defences" enforced here.

Outgoing frames are encoded (seq stamped, MAC'd) as they are queued, so sequence order is wire
order and the queue is bounded in the bytes it really holds: per session (send_queue_bytes) and
per process (an OutputBudget shared by every session, send_queue_total_bytes); see outbox.py.
One writer task hands them to the transport, what is queued at once in one write. `send()` waits while the queue is full
(backpressure); `send_nowait()` is for pushes that may be lost (events): on a full queue it drops
the frame, counts it in `stats.dropped` and returns False. A writer that cannot hand a frame over
for write_timeout means the peer does not read: the session is closed (slow_reader, a violation),
which is also what frees a budget such a peer holds. Incoming requests are handed to the handler one
at a time, in order, by a dispatcher task; the reader meanwhile keeps answering PING and
resolving replies to our own `request()`s, so a handler may itself wait on a request.

Session frames carry no timestamp: the session's keys and the exact-next seq already make a replay
impossible, and a clock step should not kill a live session (the handshake checks the time window).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, Callable, Iterable

import attrs
import trio

from galaxynode import __version__
from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import ID_LEN, Frame, Limits, decode_frame, encode_frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Handshake, Session
from galaxynode.identity import Identity, format_public_key
from galaxynode.net.outbox import OutputBudget, Outbox
from galaxynode.net.ratelimit import TokenBucket
from galaxynode.net.transport import Channel, ChannelClosed, LimitExceeded

log = logging.getLogger(__name__)

AGENT = f"galaxynode/{__version__}"
MiB = 1024 * 1024

Handler = Callable[["Connection", Frame], Awaitable[Any]]


def _positive(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class SessionLimits:
    """Per-session limits (seconds, frames, bytes); config section [limits]."""

    codec: Limits = Limits()
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)  # accept -> READY, all phases
    preauth_frame_size: int = attrs.field(default=4096, validator=_positive)  # largest frame before READY
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)    # nothing received -> close
    ping_interval: float = attrs.field(default=20.0, validator=_positive)   # nothing received -> PING
    write_timeout: float = attrs.field(default=10.0, validator=_positive)   # writer stuck this long: slow_reader
    close_timeout: float = attrs.field(default=2.0, validator=_positive)    # flushing and the closing handshake
    frame_rate: float = attrs.field(default=200.0, validator=_positive)     # frames/s, token bucket
    frame_burst: int = attrs.field(default=400, validator=_positive)
    # Peered pools relay event bursts of a whole pool: a session the peering policy accepted as a
    # peer gets this frame bucket instead (Connection.grant_peer_frames; a role in HELLO is only a
    # claim), and so does a session we opened to a pool or main net (we chose it); still bounded,
    # and the number of peers is bounded by the peer slots.
    pool_frame_rate: float = attrs.field(default=5000.0, validator=_positive)
    pool_frame_burst: int = attrs.field(default=20000, validator=_positive)
    byte_rate: float = attrs.field(default=1 * MiB, validator=_positive)    # bytes/s, token bucket
    byte_burst: int = attrs.field(default=4 * MiB, validator=_positive)
    send_queue: int = attrs.field(default=256, validator=_positive)         # frames waiting for the writer
    send_queue_bytes: int = attrs.field(default=4 * MiB, validator=_positive)  # and their encoded bytes
    max_subscriptions: int = attrs.field(default=64, validator=_positive)   # topic patterns per session
    recv_queue: int = attrs.field(default=16, validator=_positive)          # requests waiting for the handler

    def __attrs_post_init__(self) -> None:
        if self.byte_burst < self.codec.max_frame_size:
            raise ValueError("byte_burst must be at least codec.max_frame_size, or a maximal frame is always refused")
        if self.ping_interval >= self.idle_timeout:
            raise ValueError("ping_interval must be shorter than idle_timeout")


DEFAULT_SESSION_LIMITS = SessionLimits()

# The writer sends what is queued in one write up to about this many bytes (a maximal frame alone
# may exceed it); larger batches save no more system calls worth having.
_WRITE_BATCH_BYTES = 64 * 1024

# WebSocket close code sent after an ERROR (RFC 6455 7.4.1); anything else is 1008 policy violation.
_WS_CLOSE = {ErrorCode.TEXT_FRAME: 1003, ErrorCode.FRAME_TOO_LARGE: 1009, ErrorCode.INTERNAL: 1011,
             ErrorCode.SHUTTING_DOWN: 1001, ErrorCode.TOO_MANY_CONNECTIONS: 1013,
             ErrorCode.TEMPORARILY_BANNED: 1013, ErrorCode.UNAVAILABLE: 1013}

# The codes that are protocol abuse: a peer that sends them ignores the spec (or floods), which no
# honest client does by mistake. Listed, not "every fatal code but ...", so that a new refusal code
# never bans anyone by accident: a new abuse code must be added here (and to docs/gelato/errors.md §7).
# Deliberately absent, because honest clients hit them: well-formed refusals (network_mismatch,
# not_admitted, banned, temporarily_banned, too_many_connections, duplicate_session,
# pinned_key_mismatch, self_connection, kicked), ordinary life (idle_timeout,
# shutting_down), a newer client (unsupported_version) and a skewed clock (stale_timestamp).
_ABUSE = frozenset({
    ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.TEXT_FRAME, ErrorCode.LIMIT_EXCEEDED,
    ErrorCode.BAD_SIGNATURE, ErrorCode.BAD_KEY, ErrorCode.WRONG_SENDER, ErrorCode.BAD_MAC, ErrorCode.UNEXPECTED_MESSAGE,
    ErrorCode.BAD_NONCE, ErrorCode.BAD_SEQUENCE, ErrorCode.HANDSHAKE_TIMEOUT,
    ErrorCode.RATE_LIMITED, ErrorCode.SLOW_READER,
})


def ws_close_code(error: ProtocolError | None) -> int:
    return 1000 if error is None else _WS_CLOSE.get(error.code, 1008)


def is_violation(error: ProtocolError | None) -> bool:
    """Whether closing a session with this (our) error counts towards a temporary ban (net/bans.py):
    only protocol abuse (_ABUSE) does; the peer's own ERRORs never do."""
    return error is not None and not isinstance(error, RemoteError) and error.code in _ABUSE


class RemoteError(ProtocolError):
    """The peer sent an ERROR frame. `code` is our ErrorCode for it (INTERNAL for codes we do not
    know); `remote_code` and `remote_name` are what the peer sent."""

    def __init__(self, error: m.Error):
        try:
            code = ErrorCode(error.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        super().__init__(code, error.message or error.name, error.re, retry_after=error.retry_after)
        self.remote_code = error.code
        self.remote_name = error.name


class SessionClosed(Exception):
    """The session is closed (or closing): nothing more can be sent or awaited on it. `error` is
    why, when an ERROR ended it (ours, or the peer's as a RemoteError)."""

    def __init__(self, code: int | None, reason: str = "", error: ProtocolError | None = None):
        why = f"{error}" if error is not None else (reason or "closed")
        super().__init__(f"session closed ({code}): {why}" if code is not None else f"session closed: {why}")
        self.code = code
        self.reason = reason
        self.error = error


# --- handshake ---------------------------------------------------------------------------------

async def refuse(channel: Channel, identity: Identity, error: ProtocolError, *,
                 limits: SessionLimits = DEFAULT_SESSION_LIMITS) -> None:
    """Send ERROR outside a session (no sid or seq: there is none yet), then close the channel."""
    frame = encode_frame(identity, m.Error.from_exc(error), limits=limits.codec)
    with trio.move_on_after(limits.close_timeout):
        try:
            await channel.send(frame)
        except ChannelClosed:
            pass
    await channel.close(ws_close_code(error), error.message)


def limit_error(e: LimitExceeded) -> ProtocolError:
    """The ERROR for a peer that broke a transport limit (transport.LimitExceeded)."""
    code = ErrorCode.FRAME_TOO_LARGE if e.limit == "frame_size" else ErrorCode.RATE_LIMITED
    return ProtocolError(code, e.reason)


def _error_frame(data: Any, limits: Limits) -> RemoteError | None:
    """If data is a valid ERROR frame, the error it carries (a peer refusing us mid-handshake)."""
    try:
        frame = decode_frame(data, limits)
    except ProtocolError:
        return None
    return RemoteError(frame.msg) if frame.type == "ERROR" else None


async def _send_handshake(channel: Channel, data: bytes) -> None:
    # A peer that refuses us sends ERROR and closes; our send may then fail, but the ERROR is
    # still waiting to be received, and the next receive reports it or the close.
    try:
        await channel.send(data)
    except ChannelClosed:
        pass


async def establish(channel: Channel, identity: Identity, *, opener: bool, network: str, role: str,
                    limits: SessionLimits = DEFAULT_SESSION_LIMITS, pinned_key: bytes | None = None,
                    listen: tuple[str, ...] | list[str] = (), agent: str = AGENT,
                    on_error: Callable[[ProtocolError], None] | None = None) -> Session:
    """Run the HELLO/HELLO/READY handshake by the channel's deadline (the accepting side: one
    deadline from the accept, TLS and the upgrade included), else within limits.handshake_timeout.

    On our rejection the peer gets ERROR and the channel is closed, and the ProtocolError is
    raised; a peer's ERROR is raised as RemoteError; a channel that closes raises ChannelClosed.
    A peer over the transport's pre-auth limits (message size, WebSocket frames) is refused
    with frame_too_large or rate_limited. Once established the channel's pre-auth limits are lifted.
    `on_error(error)` hears of our rejection before the peer does (see Connection.on_error)."""
    hs = Handshake(identity, opener=opener, network=network, role=role, pinned_key=pinned_key,
                   agent=agent, listen=tuple(listen), limits=limits.codec,
                   preauth_frame_size=limits.preauth_frame_size)
    deadline = channel.deadline if channel.deadline is not None else trio.current_time() + limits.handshake_timeout
    try:
        with trio.fail_at(deadline):
            if opener:
                await _send_handshake(channel, hs.initiate())
            while not hs.established:
                try:
                    data = await channel.receive()
                except LimitExceeded as e:
                    raise limit_error(e) from None
                try:
                    reply = hs.receive(data)
                except ProtocolError as e:
                    remote = _error_frame(data, limits.codec) if e.code is ErrorCode.UNEXPECTED_MESSAGE else None
                    if remote is not None:
                        raise remote from None
                    raise
                if reply is not None:
                    await _send_handshake(channel, reply)
    except RemoteError:
        await channel.close()
        raise
    except ProtocolError as e:
        if on_error is not None:
            on_error(e)
        await refuse(channel, identity, e, limits=limits)
        raise
    except trio.TooSlowError:
        error = ProtocolError(ErrorCode.HANDSHAKE_TIMEOUT,
                              f"handshake not finished within {limits.handshake_timeout:g}s")
        if on_error is not None:
            on_error(error)
        await refuse(channel, identity, error, limits=limits)
        raise error from None
    assert hs.session is not None
    channel.authenticated()
    return hs.session


# --- established session -----------------------------------------------------------------------

@attrs.define
class ConnectionStats:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    dropped: int = 0        # send_nowait() on a full queue
    unhandled: int = 0      # requests received without a handler
    late_replies: int = 0   # replies to no pending request (timed out)
    errors_sent: int = 0
    pings_sent: int = 0
    # Plain-int counters for the metrics (read at scrape time, so the frame path pays one dict update).
    frames_in_by_type: dict[str, int] = attrs.Factory(dict)     # decoded frames only
    frames_out_by_type: dict[str, int] = attrs.Factory(dict)
    errors_sent_by_code: dict[int, int] = attrs.Factory(dict)
    errors_received_by_code: dict[int, int] = attrs.Factory(dict)  # codes we do not know count as -1

    @classmethod
    def total(cls, ended: "ConnectionStats", live: Iterable["Connection"]) -> "ConnectionStats":
        """Ended sessions' folded counters plus the live ones' (for a metrics scrape)."""
        out = cls()
        out.add(ended)
        for conn in live:
            out.add(conn.stats)
        return out

    def add(self, other: "ConnectionStats") -> None:
        """Fold another session's counters into these (the server keeps ended sessions' totals)."""
        for a in attrs.fields(ConnectionStats):
            mine, theirs = getattr(self, a.name), getattr(other, a.name)
            if isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, a.name, mine + theirs)


def _kind(msg: Any) -> tuple[str, int | None]:
    """What the counters need of a queued message (the message itself is not kept: only its bytes)."""
    return msg.TYPE, (msg.code if msg.TYPE == "ERROR" else None)


@attrs.define
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    frame: Frame | None = None
    error: BaseException | None = None


class Connection:
    """An established session. Run it with `run()` (in a nursery you own); talk over it with
    `send`, `send_nowait` and `request`; end it with `close`.

    `handler(conn, frame)` gets every frame that is neither session housekeeping nor a reply
    (a body with `re`: it completes our `request()`, or is dropped if that timed out); what it returns (a message or None) is sent back. A ProtocolError it raises is
    answered with ERROR (re = the frame's id) and closes the session if fatal; any other
    exception is logged and answered with ERROR internal. If the handler has an async
    `run(conn)` method, that runs alongside the session (e.g. to push events)."""

    def __init__(self, channel: Channel, session: Session, *,
                 limits: SessionLimits = DEFAULT_SESSION_LIMITS, handler: Handler | None = None,
                 budget: OutputBudget | None = None):
        self.channel = channel
        self.session = session
        self.limits = limits
        self.handler = handler
        self.stats = ConnectionStats()
        self.local_error: ProtocolError | None = None   # the fatal ERROR we closed the session with
        # Told of that ERROR before the peer is: a server counts the violation before the offender
        # can reconnect, so "refused on the next attempt" does not race the closing handshake.
        self.on_error: Callable[[ProtocolError], None] | None = None
        self.remote_error: RemoteError | None = None    # an ERROR the peer sent that answered no request
        self.close_code: int | None = None
        self.close_reason = ""
        # Queued frames as (bytes, (type, error code or None)); budget: shared by the process's sessions.
        self._outbox: Outbox[tuple[bytes, tuple[str, int | None]]] = Outbox(
            limits.send_queue, limits.send_queue_bytes, budget)
        self._dispatch_tx, self._dispatch_rx = trio.open_memory_channel[Frame](limits.recv_queue)
        self._pending: dict[bytes, _Pending] = {}
        self._closing = False
        self._closed = trio.Event()
        self._writer_done = trio.Event()
        self._scope: trio.CancelScope | None = None
        now = trio.current_time()
        self._frames = TokenBucket(limits.frame_rate, limits.frame_burst, now)
        self.peer_frames = False  # the pool frame bucket instead (grant_peer_frames)
        if session.opener and session.peer_hello.role in ("pool", "mainnet"):
            self.grant_peer_frames()  # we dialled a pool or main net of our choosing: its pushes are a pool's
        # The transport charges every WebSocket frame (data, continuation, control) to it; the
        # reader sees a breach as LimitExceeded.
        channel.frame_budget = self._frames
        self._bytes = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self._rx_wait_since: float | None = now   # None while the reader is busy with a frame
        self._last_ping = now
        self._quiet_until = 0.0  # quiet_for: the peer is not expected to speak before this

    def __repr__(self) -> str:
        return f"<Connection {format_public_key(self.session.peer_key)} at {self.remote}>"

    def grant_peer_frames(self) -> None:
        """The peering policy accepted this session's key as a peer: from now on its frames are
        charged to the pool frame bucket, as if it had had that bucket from the start (what it
        spent so far stays spent). Once: a second call changes nothing."""
        if self.peer_frames:
            return
        bucket, lim = self._frames, self.limits
        bucket.tokens += max(0.0, lim.pool_frame_burst - bucket.burst)
        bucket.rate, bucket.burst = float(lim.pool_frame_rate), float(lim.pool_frame_burst)
        self.peer_frames = True

    @property
    def peer_key(self) -> bytes:
        return self.session.peer_key

    @property
    def peer_hello(self) -> m.Hello:
        return self.session.peer_hello

    @property
    def remote(self) -> str:
        return self.channel.remote

    @property
    def closed(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- sending ---------------------------------------------------------------------------
    def _closed_error(self) -> SessionClosed:
        return SessionClosed(self.close_code, self.close_reason, self.local_error or self.remote_error)

    def _encode(self, msg: Any, frame_id: bytes) -> bytes:
        return self.session.frame(msg, frame_id=frame_id)

    def _put(self, data: bytes, msg: Any) -> None:
        """Queue an encoded frame: its seq is taken (no checkpoint since _encode, so seq order is queue order)."""
        self._outbox.put(len(data), (data, _kind(msg)))
        self.session.send_seq += 1

    async def _enqueue(self, msg: Any, frame_id: bytes) -> None:
        box, data, seq = self._outbox, b"", -1
        while True:
            if self._closing:
                raise self._closed_error()
            if seq != self.session.send_seq:  # first try, or another sender took our seq while we waited
                seq = self.session.send_seq
                try:
                    data = self._encode(msg, frame_id)
                except ProtocolError as e:  # our own message does not fit the limits
                    log.warning("cannot send %s to %s: %s", msg.TYPE, self.remote, e)
                    if frame_id in self._pending:  # request(): its caller gets the error
                        raise
                    if getattr(msg, "re", None) is None:
                        return
                    msg, frame_id, seq = m.Error(code=int(ErrorCode.INTERNAL), name="internal",
                                                 message="reply could not be encoded", re=msg.re), os.urandom(ID_LEN), -1
                    continue
            if box.fits(len(data)):
                self._put(data, msg)
                return
            await box.wait_room(len(data))

    async def send(self, msg: Any) -> bytes:
        """Queue a message (waits while the queue is full); returns its frame id."""
        frame_id = os.urandom(ID_LEN)
        await self._enqueue(msg, frame_id)
        return frame_id

    def send_nowait(self, msg: Any) -> bool:
        """Queue a message if there is room; False (and counted as dropped) if not."""
        if self._closing:
            raise self._closed_error()
        box = self._outbox
        if not box.full():  # else do not pay for an encoding that cannot be queued
            try:
                data = self._encode(msg, os.urandom(ID_LEN))
            except ProtocolError as e:
                log.warning("cannot send %s to %s: %s", msg.TYPE, self.remote, e)
                return False
            if box.fits(len(data)):
                self._put(data, msg)
                return True
        self.stats.dropped += 1
        return False

    async def request(self, msg: Any, *, timeout: float = 10.0) -> Frame:
        """Send a request and wait for the frame whose body `re` is its id. An ERROR reply is
        raised as RemoteError; trio.TooSlowError after timeout; SessionClosed if the session ends."""
        frame_id = os.urandom(ID_LEN)
        slot = self._pending[frame_id] = _Pending()
        try:
            with trio.fail_after(timeout):
                await self._enqueue(msg, frame_id)
                await slot.done.wait()
        finally:
            del self._pending[frame_id]
        if slot.error is not None:
            raise slot.error
        assert slot.frame is not None
        return slot.frame

    def _count_out(self, size: int, kind: str, code: int | None) -> None:
        st = self.stats
        st.frames_out += 1
        st.bytes_out += size
        st.frames_out_by_type[kind] = st.frames_out_by_type.get(kind, 0) + 1
        if code is not None:
            st.errors_sent += 1
            st.errors_sent_by_code[code] = st.errors_sent_by_code.get(code, 0) + 1

    async def _writer(self) -> None:
        box, lim = self._outbox, self.limits
        stalled = False
        try:
            while (item := await box.get()) is not None:
                # What else is queued goes along in the same write (see Channel.send_many).
                items = [item, *box.take_ready(_WRITE_BATCH_BYTES)] if len(box) else [item]
                with trio.move_on_after(lim.write_timeout) as scope:
                    if len(items) == 1:
                        await self.channel.send(item[1][0])
                    else:
                        await self.channel.send_many([data for _, (data, _) in items])
                if scope.cancelled_caught:  # part of a frame may be on the wire: nothing more can follow it
                    stalled = True
                    break
                for size, (_, (kind, code)) in items:
                    box.done(size)
                    self._count_out(size, kind, code)
        except ChannelClosed as e:
            # A peer that refuses us sends ERROR, then closes: our send can fail before our reader
            # has read why. Give the reader that long to get to it, so callers see the ERROR.
            with trio.move_on_after(lim.close_timeout):
                await self._closed.wait()
            self._lost(e)
        finally:
            self._writer_done.set()
        if stalled:
            await self._close(None, ProtocolError(
                ErrorCode.SLOW_READER, f"output not read for {lim.write_timeout:g}s "
                                       f"({len(box)} frames, {box.bytes} bytes queued)"), "")

    # --- closing ---------------------------------------------------------------------------
    async def close(self, error: ProtocolError | None = None, *, reason: str = "") -> None:
        """End the session: flush what is queued, send ERROR (if error) or GOODBYE, close the
        channel. Bounded by limits.close_timeout; idempotent."""
        last = m.Error.from_exc(error) if error is not None else m.Goodbye(reason=reason)
        await self._close(last, error, reason)

    async def _close(self, last: Any, error: ProtocolError | None, reason: str) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.local_error = error
        if error is not None and self.on_error is not None:
            self.on_error(error)
        self.close_code = ws_close_code(error)
        self.close_reason = error.message if error is not None else reason
        self._outbox.close()  # the writer drains what is queued, then stops
        try:
            with trio.move_on_after(self.limits.close_timeout):
                if self._scope is not None:
                    await self._writer_done.wait()
                else:  # never ran: nothing queued was written, so the last word takes the first unsent seq
                    self.session.send_seq -= len(self._outbox)
                if last is not None:
                    data = self._encode(last, os.urandom(ID_LEN))
                    self.session.send_seq += 1
                    await self.channel.send(data)
                    self._count_out(len(data), *_kind(last))
        except ProtocolError as e:  # a last word that does not fit the limits: close without it
            log.warning("cannot send %s to %s: %s", last.TYPE, self.remote, e)
        except ChannelClosed:
            pass
        finally:
            try:
                await self.channel.close(self.close_code, self.close_reason)
            finally:
                self._finish()

    def _lost(self, e: ChannelClosed) -> None:
        """The channel went away under us."""
        if not self._closing:
            self.close_code, self.close_reason = e.code, e.reason
        self._finish()

    def _finish(self) -> None:
        self._closing = True
        self._outbox.release()  # what was not written gives its bytes back to the process budget
        if not self._closed.is_set():
            for slot in self._pending.values():
                if not slot.done.is_set():
                    slot.error = self._closed_error()
                    slot.done.set()
            self._closed.set()
        if self._scope is not None:
            self._scope.cancel()

    # --- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the session until either side closes it or the caller is cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._closing:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader)
                nursery.start_soon(self._keepalive)
                if self.handler is not None:
                    nursery.start_soon(self._dispatcher)
                    run = getattr(self.handler, "run", None)
                    if run is not None:
                        nursery.start_soon(self._run_handler, run)
        finally:
            if self.close_code is None:
                self.close_code, self.close_reason = 1001, "going away"
            self._finish()
            with trio.CancelScope(shield=True):
                await self.channel.close(self.close_code, self.close_reason)

    async def _reader(self) -> None:
        lim = self.limits
        while True:
            self._rx_wait_since = trio.current_time()
            try:
                data = await self.channel.receive()
            except LimitExceeded as e:
                await self.close(limit_error(e))
                return
            except ChannelClosed as e:
                self._lost(e)
                return
            self._rx_wait_since = None
            now = trio.current_time()
            self.stats.frames_in += 1
            self.stats.bytes_in += len(data)
            if isinstance(data, str):
                await self.close(ProtocolError(ErrorCode.TEXT_FRAME, "text messages are not Gelato frames"))
                return
            if not self._bytes.take(len(data), now):  # frames: charged by the transport (frame_budget)
                await self.close(ProtocolError(
                    ErrorCode.RATE_LIMITED, f"over {lim.byte_rate:g} bytes/s (burst {lim.byte_burst})"))
                return
            try:
                frame = self.session.decode(data)
            except ProtocolError as e:
                if e.fatal:
                    await self.close(e)
                    return
                await self._send_quietly(m.Error.from_exc(e))
                continue
            if not await self._receive(frame):
                return

    async def _receive(self, frame: Frame) -> bool:
        """Session housekeeping for one verified frame; False once the session is over."""
        kind = frame.type
        by_type = self.stats.frames_in_by_type
        by_type[kind] = by_type.get(kind, 0) + 1
        if kind == "PING":
            await self._send_quietly(m.Pong(data=frame.msg.data))
        elif kind == "PONG":
            pass
        elif kind == "GOODBYE":
            log.debug("%r said goodbye: %s", self, frame.msg.reason)
            await self._close(None, None, frame.msg.reason)
            return False
        elif kind == "ERROR":
            error = RemoteError(frame.msg)
            code = error.remote_code if error.remote_code == error.code else -1
            self.stats.errors_received_by_code[code] = self.stats.errors_received_by_code.get(code, 0) + 1
            slot = self._pending.get(error.ref) if error.ref is not None else None
            if slot is not None:
                slot.error = error
                slot.done.set()
            else:
                self.remote_error = error
                log.info("%r sent %s", self, error)
        elif (re := getattr(frame.msg, "re", None)) is not None:  # a reply
            slot = self._pending.get(re)
            if slot is not None:
                slot.frame = frame
                slot.done.set()
            else:
                self.stats.late_replies += 1
        elif self.handler is None:
            self.stats.unhandled += 1
        else:
            await self._dispatch_tx.send(frame)
        return True

    async def _send_quietly(self, msg: Any) -> None:
        try:
            await self.send(msg)
        except SessionClosed:
            pass

    async def _dispatcher(self) -> None:
        assert self.handler is not None
        async for frame in self._dispatch_rx:
            try:
                reply = await self.handler(self, frame)
            except SessionClosed:
                return
            except ProtocolError as e:
                if e.fatal:
                    await self.close(ProtocolError(e.code, e.message, frame.id))
                    return
                reply = attrs.evolve(m.Error.from_exc(e), re=frame.id)
            except Exception:
                log.exception("handler failed on %s from %r", frame.type, self)
                reply = m.Error(code=int(ErrorCode.INTERNAL), name="internal", message="internal error", re=frame.id)
            if reply is not None:
                try:
                    await self.send(reply)
                except SessionClosed:
                    return

    async def _run_handler(self, run: Callable[["Connection"], Awaitable[None]]) -> None:
        try:
            await run(self)
        except SessionClosed:
            pass
        except BaseExceptionGroup as group:  # the handler's own nursery saw the session end
            if group.split((SessionClosed, trio.Cancelled))[1] is not None:
                log.exception("handler task of %r failed", self)
                await self.close(ProtocolError(ErrorCode.INTERNAL, "internal error"))
        except Exception:
            log.exception("handler task of %r failed", self)
            await self.close(ProtocolError(ErrorCode.INTERNAL, "internal error"))

    def quiet_for(self, seconds: float) -> None:
        """The peer is not expected to send anything for `seconds` (a paced lease's interval, messages
        §8.6): idle_timeout and ping_interval count from then, so a paced node costs no keepalive PINGs."""
        self._quiet_until = max(self._quiet_until, trio.current_time() + seconds)

    async def _keepalive(self) -> None:
        lim = self.limits
        try:
            while True:
                now = trio.current_time()
                waiting = self._rx_wait_since
                if waiting is None:  # busy with a frame: the peer is not idle
                    await trio.sleep(lim.ping_interval)
                    continue
                waiting = max(waiting, self._quiet_until)
                if now - waiting >= lim.idle_timeout:
                    await self.close(ProtocolError(ErrorCode.IDLE_TIMEOUT,
                                                   f"nothing received for {lim.idle_timeout:g}s"))
                    return
                quiet = max(waiting, self._last_ping)
                if now - quiet >= lim.ping_interval:
                    self._last_ping = quiet = now
                    if self.send_nowait(m.Ping()):
                        self.stats.pings_sent += 1
                await trio.sleep_until(min(quiet + lim.ping_interval, waiting + lim.idle_timeout))
        except SessionClosed:
            pass
