"""The WebSocket carrier behind one small interface (the only module that imports trio_websocket).

A `Channel` moves whole messages: one binary message is one Gelato frame; text messages are
passed up as `str` so the session can answer them with TEXT_FRAME. Every library failure
surfaces as one exception, `ChannelClosed(code, reason)`.

We own the TCP (and TLS) stream on both sides and only hand it to trio-websocket to speak the
WebSocket protocol: 0.12.2's own client leaks its socket when the server closes first, its
`connect_websocket_url` has no timeout, and its server waits up to 60 s on a silent peer. Here
every phase is bounded and the stream is always closed by whoever opened or accepted it.

Every WebSocket frame counts (issue 12: empty continuation frames and PING floods held a pool at
100% CPU below any message-level limit). A `_FrameGuard` stands between trio-websocket and wsproto:
it sees each frame trio-websocket consumes (data, continuation, empty or not, PING, PONG, CLOSE),
charges it to the channel's `frame_budget` and checks the message size in bytes. On a breach it
stops handing frames over and parks the socket reader (`_GatedStream`): the flood costs nothing
more, TCP backpressure stops the sender, and the channel can still send, so the session says why
(`receive()` raises `LimitExceeded`, it sends ERROR and closes). Before the handshake the budget is
a small fixed allowance and the message size the pre-auth one.

On the accepting side an `admit(host)` hook decides before any byte is read (and before any TLS or
HTTP work); one deadline runs from accept to the end of the Gelato handshake (`Channel.deadline`).

TLS failures say why (galaxynode.net.tls): a client gets the reason its certificate check failed
(CertificateError when the certificate was refused, which no redial cures); the server logs one
line per failed handshake, rate limited, and answers plain HTTP on a TLS port with an HTTP 400
saying to use wss://, so that a ws:// client learns what is wrong instead of seeing a hang-up.
"""
from __future__ import annotations

import logging
import os
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, NoReturn, Protocol
from urllib.parse import urlsplit

import trio
import wsproto
from trio_websocket import (ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection,
                            WebSocketRequest)
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from galaxynode.net import tls

log = logging.getLogger(__name__)

SUBPROTOCOL = "gelato.v1"
DEFAULT_PORT = 7447  # of a ws:// or wss:// URL without one: Gelato's port, not HTTP's 80/443
ABNORMAL = 1006           # no close frame was received (RFC 6455 7.1.5)
PROTOCOL_ERROR = 1002
_MESSAGE_QUEUE = 1        # messages trio-websocket buffers before it stops reading the socket
_RECEIVE_BYTES = 64 * 1024
_LINGER_BYTES = 1024 * 1024  # read and dropped after a breach, so that our ERROR is not lost to a RST
_MAX_CLOSE_REASON = 120   # a close frame carries at most 123 bytes of reason
# WebSocket frames (of any kind) a peer may send before the Gelato handshake is done: it needs 2
# (HELLO, READY); the rest is slack for a library's PING and a pipelined first request.
PREAUTH_FRAMES = 16
# Messages the Gelato handshake takes from the peer (handshake §1): the answerer receives HELLO and
# READY, the opener HELLO. The pre-auth message size applies to exactly these, so a session frame
# the opener pipelines right after READY is not held to it however the reads fall.
_HANDSHAKE_MESSAGES = {"server": 2, "client": 1}


class ChannelClosed(Exception):
    """The channel cannot carry messages (any more). `code` is the WebSocket close code:
    the peer's or ours, 1006 when the connection broke or never came up."""

    def __init__(self, code: int, reason: str = ""):
        super().__init__(f"channel closed ({code}){': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason


class CertificateError(ChannelClosed):
    """The server's certificate was refused (self-signed, unknown CA, hostname mismatch, expired):
    `reason` says which. Redialling will not help until a certificate or the trusted CAs change."""

    def __init__(self, reason: str):
        super().__init__(ABNORMAL, reason)


class LimitExceeded(ChannelClosed):
    """The peer broke a transport limit: `limit` is "frame_size" (a message longer than allowed)
    or "frame_rate" (more WebSocket frames than its budget). Receiving is over, but the channel
    still sends, so the session can answer with an ERROR before it closes."""

    def __init__(self, limit: str, reason: str):
        super().__init__(1009 if limit == "frame_size" else 1008, reason)
        self.limit = limit


class FrameBudget(Protocol):
    def take(self, n: float, now: float) -> bool: ...


class _Allowance:
    """A fixed number of frames that never refills (the pre-auth budget)."""

    __slots__ = ("frames", "left")

    def __init__(self, frames: int):
        self.frames = self.left = frames

    def take(self, n: float, now: float) -> bool:
        if n <= self.left:
            self.left -= n
            return True
        return False


def _over_budget(budget: FrameBudget) -> str:
    if isinstance(budget, _Allowance):
        return f"over {budget.frames} WebSocket frames before the handshake"
    rate, burst = getattr(budget, "rate", None), getattr(budget, "burst", None)  # a ratelimit.TokenBucket
    return f"over {rate:g} WebSocket frames/s (burst {burst:g})" if rate and burst else "too many WebSocket frames"


_FRAME_EVENTS = frozenset({BytesMessage, TextMessage, Ping, Pong, CloseConnection})


class _FrameGuard:
    """Wraps trio-websocket's wsproto connection: every event trio-websocket pulls is one WebSocket
    frame it is about to spend work on (a large frame arriving in pieces yields one event per piece,
    only the last of which completes the frame). Counts those frames and the message bytes, and on a
    breach ends the event stream for good and parks the reader (see module docstring)."""

    def __init__(self, ws: wsproto.WSConnection, *, max_message_size: int, preauth_message_size: int | None,
                 preauth_messages: int, budget: FrameBudget | None):
        self._ws = ws
        self.max_message_size = max_message_size
        self.preauth_message_size = min(preauth_message_size or max_message_size, max_message_size)
        self.preauth_messages = preauth_messages   # messages still held to the pre-auth size
        self.budget = budget
        self.breach: LimitExceeded | None = None
        self.end_messages: Callable[[], None] = lambda: None  # wakes Channel.receive() (see _websocket)
        self.resume = trio.Event()                      # set by Channel.close(): the parked reader sees EOF
        self._size = 0                                  # bytes of the message being received

    # what trio-websocket uses of a wsproto connection
    @property
    def client(self) -> bool:
        return self._ws.client

    @property
    def state(self) -> wsproto.ConnectionState:
        return self._ws.state

    def send(self, event: Any) -> bytes:
        return self._ws.send(event)

    def receive_data(self, data: bytes | None) -> None:
        self._ws.receive_data(data)

    def events(self) -> Iterator[Any]:
        if self.breach is not None:
            return
        for event in self._ws.events():
            kind = type(event)
            finished = True  # a control frame always arrives whole
            if kind not in _FRAME_EVENTS:  # the HTTP upgrade, not a WebSocket frame
                yield event
                continue
            if kind is BytesMessage or kind is TextMessage:
                finished = event.frame_finished
                data = event.data
                self._size += len(data) if kind is BytesMessage else len(data.encode())
                limit = self.preauth_message_size if self.preauth_messages > 0 else self.max_message_size
                if self._size > limit:
                    self._stop(LimitExceeded("frame_size", f"WebSocket message over {limit} bytes"
                                             f"{' before the handshake' if self.preauth_messages > 0 else ''}"))
                    return
                if event.message_finished:
                    self._size = 0
                    self.preauth_messages -= 1
            if finished and self.budget is not None and not self.budget.take(1, trio.current_time()):
                self._stop(LimitExceeded("frame_rate", _over_budget(self.budget)))
                return
            yield event

    def _stop(self, breach: LimitExceeded) -> None:
        self.breach = breach
        self.end_messages()


class _GatedStream(trio.abc.Stream):
    """The stream as trio-websocket sees it: once the guard has stopped the event stream, reading
    waits (the socket is not read, so the peer's sends stall) until the channel closes."""

    def __init__(self, stream: trio.abc.Stream, guard: _FrameGuard):
        self._stream = stream
        self._guard = guard

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._guard.breach is not None:
            await self._guard.resume.wait()
            return b""
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self._guard.breach is None:  # else Channel.close lingers first (see _linger)
            await self._stream.aclose()


async def _linger(stream: trio.abc.Stream) -> None:
    """After a breach the peer's unread bytes sit in our socket, and closing a socket with unread
    data sends RST, on which the peer's kernel drops our ERROR unread. So, as a web server's
    lingering close: FIN, then read and discard until the peer closes, at most _LINGER_BYTES (the
    caller bounds the time)."""
    raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(raw, trio.SocketStream):
        return
    try:
        await raw.send_eof()
        left = _LINGER_BYTES
        while left > 0:
            data = await raw.receive_some(_RECEIVE_BYTES)
            if not data:
                return
            left -= len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
        pass


def _websocket(stream: trio.abc.Stream, side: str, *, max_message_size: int, preauth_message_size: int | None = None,
               preauth_frames: int | None = None, host: str | None = None, resource: str | None = None,
               ) -> tuple[WebSocketConnection, _FrameGuard]:
    """A trio-websocket connection whose wsproto events pass through a _FrameGuard.

    The library's own wrap_*_stream build the wsproto connection themselves, so this does what
    they do (0.12.2): construct the connection; the caller starts `ws._reader_task` and awaits
    the upgrade (`_get_request()` / `_open_handshake`). This is the one place that leans on
    trio-websocket internals (and the message channel, below). The library's own max_message_size stays the session maximum, a
    backstop behind the guard's (it closes with 1009 and no ERROR)."""
    guard = _FrameGuard(wsproto.WSConnection(wsproto.ConnectionType.SERVER if side == "server"
                                             else wsproto.ConnectionType.CLIENT),
                        max_message_size=max_message_size, preauth_message_size=preauth_message_size,
                        preauth_messages=_HANDSHAKE_MESSAGES[side] if preauth_message_size else 0,
                        budget=_Allowance(preauth_frames) if preauth_frames is not None else None)
    ws = WebSocketConnection(_GatedStream(stream, guard), guard,  # type: ignore[arg-type]
                             host=host, path=resource, client_subprotocols=[SUBPROTOCOL] if side == "client" else None,
                             message_queue_size=_MESSAGE_QUEUE, max_message_size=max_message_size,
                             receive_buffer_size=_RECEIVE_BYTES)
    # On a breach the guard ends the stream of messages: get_message() delivers what is queued,
    # then raises ConnectionClosed while the connection itself stays open for our ERROR. (A cancel
    # scope around every receive would do the same without internals, at ~5% of a session's cost.)
    guard.end_messages = ws._send_channel.close
    return ws, guard


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """`ws://host:port/path` -> (secure, host, port, resource), port DEFAULT_PORT if the URL has
    none; raises ValueError on anything else. Every URL we dial or listen on is read here."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r}: scheme must be ws or wss")
    secure = parts.scheme == "wss"
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, parts.hostname, port if port is not None else DEFAULT_PORT, resource


def connect_failure(exc: BaseException) -> str:
    """Why a TCP connect failed, in the words of the OS ("connection refused", "no route to host",
    "name or service not known", "timed out"), rather than trio's "all attempts to connect failed"."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    tried = exc.__cause__.exceptions if isinstance(exc.__cause__, BaseExceptionGroup) else (exc,)
    reasons: list[str] = []
    for e in tried:
        if isinstance(e, OSError) and e.errno is not None:
            why = os.strerror(e.errno) if e.errno > 0 else (e.strerror or str(e))  # gaierror: negative errno
        else:
            why = str(e) or type(e).__name__
        why = why[:1].lower() + why[1:]
        if why not in reasons:
            reasons.append(why)
    return "; ".join(reasons) or "failed"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int]:
    try:
        return tuple(_socket_of(stream).getpeername()[:2])  # type: ignore[return-value]
    except (AttributeError, OSError):  # not a socket, or already disconnected
        return "?", 0


def _peer_host(stream: trio.abc.Stream) -> str:
    try:
        return _socket_of(stream).getpeername()[0]
    except (AttributeError, OSError):  # not a socket, or already disconnected
        return "?"


def _close_reason(exc: ConnectionClosed) -> ChannelClosed:
    reason = exc.reason
    if reason is None:
        return ChannelClosed(ABNORMAL, "connection closed")
    return ChannelClosed(reason.code, reason.reason or "")


def _truncate(reason: str) -> str:
    data = reason.encode()[:_MAX_CLOSE_REASON]
    return data.decode(errors="ignore")


class Channel:
    """One WebSocket connection carrying Gelato frames.

    `deadline` (trio clock), when set, is when the Gelato handshake must be done: on the accepting
    side it runs from the accept (TLS and the upgrade spent part of it). `frame_budget` is charged
    one token per WebSocket frame received (see module docstring); the session installs its own
    (a token bucket) once established, `authenticated()` lifts the pre-auth limits until then.
    `address_banned`: set on the accepting side when the peer's address was banned at accept
    (the server refuses every non-admin key after the handshake); None when not known."""

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream, guard: _FrameGuard, *,
                 close_timeout: float, deadline: float | None = None):
        self._ws = ws
        self._stream = stream
        self._guard = guard
        self._close_timeout = close_timeout
        self.deadline = deadline
        self.address_banned: bool | None = None
        self.admission: object | None = None  # what serve_channels' admit hook returned for this socket
        sock = _socket_of(stream)
        try:
            host, port = sock.getpeername()[:2]
            self.local: str = format_address(*sock.getsockname()[:2])
        except (AttributeError, OSError):  # not a socket, or already disconnected
            host, port = "?", 0
            self.local = "?"
        self.host: str = host
        self.remote: str = format_address(host, port)

    def __repr__(self) -> str:
        return f"<Channel {self.remote}>"

    @property
    def closed(self) -> bool:
        return self._ws.closed is not None

    @property
    def frame_budget(self) -> FrameBudget | None:
        return self._guard.budget

    @frame_budget.setter
    def frame_budget(self, budget: FrameBudget | None) -> None:
        self._guard.budget = budget

    def authenticated(self) -> None:
        """The Gelato handshake is done: messages up to the full size, frames no longer counted
        against the pre-auth allowance (until the session sets its frame_budget)."""
        guard = self._guard
        guard.preauth_messages = 0
        if isinstance(guard.budget, _Allowance):
            guard.budget = None
        self.deadline = None

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send_message(bytes(data))
        except ConnectionClosed as e:
            raise _close_reason(e) from None
        except wsproto.utilities.LocalProtocolError:  # the peer's close frame came in while we were sending
            raise ChannelClosed(ABNORMAL, "the peer is closing the connection") from None

    async def send_many(self, frames: list[bytes]) -> None:
        """Send several messages with one write to the stream (one system call, not one each): a
        busy session's replies and pushes queue up faster than the socket takes them one by one.
        What trio-websocket's send_message does per message (0.12.2 `_send`), for the batch."""
        ws = self._ws
        if ws._close_reason:
            raise _close_reason(ConnectionClosed(ws._close_reason))
        try:
            data = b"".join([ws._wsproto.send(BytesMessage(data=frame)) for frame in frames])
        except wsproto.utilities.LocalProtocolError:
            raise ChannelClosed(ABNORMAL, "the peer is closing the connection") from None
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await ws._abort_web_socket()
                raise _close_reason(ConnectionClosed(ws._close_reason)) from None

    async def receive(self) -> bytes | str:
        """The next message. Raises LimitExceeded once the peer broke a frame limit (the messages
        it sent before that are still delivered first), ChannelClosed when the channel closed."""
        try:
            return await self._ws.get_message()
        except ConnectionClosed as e:
            breach = self._guard.breach
            if breach is not None:  # the guard ended the messages (not the connection)
                raise breach from None
            raise _close_reason(e) from None

    async def close(self, code: int | None = None, reason: str = "") -> None:
        """Closing handshake bounded by close_timeout, then the stream is closed regardless.
        Without a code: 1000, or after a breach its code (1009 message too big, 1008). Idempotent;
        safe to call while cancelled."""
        breach = self._guard.breach
        if code is None:
            code, reason = (1000, reason) if breach is None else (breach.code, reason or breach.reason)
        try:
            with trio.move_on_after(self._close_timeout):
                # A parked reader (after a breach) reads EOF, which ends the closing handshake at
                # once. aclose() sends our close frame before that reader can run (no checkpoint
                # in between), so the peer still gets it.
                self._guard.resume.set()
                await self._ws.aclose(code, _truncate(reason) or None)
                if self._guard.breach is not None:  # (perhaps only now, by what came in while closing)
                    await _linger(self._stream)
        finally:
            await trio.aclose_forcefully(self._stream)


def raise_single(group: BaseExceptionGroup,
                 translate: Callable[[BaseException], BaseException] = lambda e: e) -> NoReturn:
    """Re-raise a group holding exactly one exception as that exception.

    A context manager that yields inside a nursery would otherwise turn every exception of its
    body into an ExceptionGroup; callers should see `except ProtocolError` work as written."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for e in exc.exceptions:
                walk(e)
        else:
            leaves.append(exc)
    walk(group)
    if len(leaves) == 1:
        exc = translate(leaves[0])
        raise exc from exc.__cause__
    raise group


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, ConnectionRejected):
        body = (exc.body or b"")[:200].decode("utf-8", "replace").strip().splitlines()
        if body == [TLS_PORT_ANSWER]:
            return ChannelClosed(PROTOCOL_ERROR, TLS_PORT_ANSWER)
        return ChannelClosed(PROTOCOL_ERROR, f"WebSocket upgrade rejected with HTTP {exc.status_code}"
                                             + (f": {body[0]}" if body and body[0].isprintable() else ""))
    if isinstance(exc, ConnectionClosed):
        return _close_reason(exc)
    if isinstance(exc, HandshakeError):
        return ChannelClosed(ABNORMAL, f"WebSocket handshake failed: {exc!r}")
    if isinstance(exc, (OSError, trio.BrokenResourceError)):
        return ChannelClosed(ABNORMAL, f"connection failed: {exc}")
    return exc


class _WatchReader:
    """Stands in for the nursery trio-websocket starts its reader task in, to learn when that
    task ends: if it ends before the upgrade completed, the upgrade failed (peer hung up, bad
    HTTP), and waiting for it any longer would only run into the timeout."""

    def __init__(self, nursery: trio.Nursery):
        self._nursery = nursery
        self.upgrade = trio.CancelScope()

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object, name: object = None) -> None:
        async def watched() -> None:
            try:
                await fn(*args)
            finally:
                self.upgrade.cancel()
        self._nursery.start_soon(watched, name=name or fn)


@asynccontextmanager
async def open_channel(url: str, *, max_message_size: int, connect_timeout: float,
                       ssl_context: ssl.SSLContext | None = None, close_timeout: float = 2.0,
                       local_address: str | None = None) -> AsyncIterator[Channel]:
    """Connect to a Gelato endpoint (subprotocol gelato.v1). TCP connect, TLS and the WebSocket
    upgrade together must finish within connect_timeout. `local_address` binds the socket to one
    of this host's addresses (tests stand for several hosts with 127.0.0.x)."""
    secure, host, port, resource = parse_url(url)
    where = format_address(host, port)
    deadline = trio.current_time() + connect_timeout
    try:
        with trio.fail_at(deadline):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    except (OSError, trio.TooSlowError) as e:
        raise ChannelClosed(ABNORMAL, f"cannot connect to {where}: {connect_failure(e)}") from None
    try:
        try:
            async with trio.open_nursery() as nursery:
                watch = _WatchReader(nursery)
                with trio.move_on_at(deadline) as timeout:
                    if secure:
                        stream = trio.SSLStream(stream, ssl_context or ssl.create_default_context(),
                                                server_hostname=host, https_compatible=True)
                        try:
                            await stream.do_handshake()
                        except trio.BrokenResourceError as e:
                            await _send_alert(stream)
                            raise _tls_failed(e.__cause__) from None
                    with watch.upgrade:
                        ws, guard = _websocket(stream, "client", max_message_size=max_message_size,
                                               host=host if port == (443 if secure else 80) else where,
                                               resource=resource)
                        # as trio_websocket.wrap_client_stream (see _websocket)
                        watch.start_soon(ws._reader_task)
                        await ws._open_handshake.wait()
                if timeout.cancelled_caught:
                    raise ChannelClosed(ABNORMAL, f"WebSocket upgrade with {where} timed out")
                if watch.upgrade.cancelled_caught:
                    raise ChannelClosed(ABNORMAL, f"{where} closed the connection during the WebSocket upgrade")
                channel = Channel(ws, stream, guard, close_timeout=close_timeout)
                try:
                    if ws.subprotocol != SUBPROTOCOL:
                        raise ChannelClosed(PROTOCOL_ERROR, f"{where} did not accept subprotocol {SUBPROTOCOL}")
                    yield channel
                finally:
                    await channel.close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_single(group, _translate)
        except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError) as e:
            raise _translate(e) from None
    finally:
        await trio.aclose_forcefully(stream)


async def _send_alert(stream: trio.SSLStream) -> None:
    """Send the alert OpenSSL wrote when our handshake failed (e.g. unknown_ca), which trio drops
    with the broken stream: the server can then log why we refused it. Best effort, uses trio's
    outgoing BIO (a private attribute; nothing is sent if it is gone)."""
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO):
        return
    data = outgoing.read()
    if data:
        with trio.move_on_after(1):
            try:
                await stream.transport_stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


def _tls_failed(cause: BaseException | None) -> ChannelClosed:
    reason = tls.describe(cause)
    return CertificateError(reason) if tls.is_certificate_error(cause) else ChannelClosed(ABNORMAL, reason)


# What a plain-HTTP request on a TLS port is answered with (the client shows it as its error).
TLS_PORT_ANSWER = "the server speaks TLS here: use wss://"


async def _answer_plain_http(stream: trio.SSLStream) -> None:
    """A ws:// client on a wss:// port: tell it in HTTP, which it can read (nginx does the same)."""
    body = (TLS_PORT_ANSWER + "\n").encode()
    raw = stream.transport_stream
    try:
        await raw.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n%s" % (len(body), body))
        await _linger(raw)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


class Admission(Protocol):
    """What serve_channels' `admit(host)` hook returns for a socket it lets in."""

    def release(self) -> None:
        """The socket is closed (called exactly once)."""


async def serve_channels(handler: Callable[[Channel], Awaitable[None]], host: str | None, port: int, *,
                         max_message_size: int, preauth_message_size: int | None = None,
                         preauth_frames: int | None = PREAUTH_FRAMES,
                         ssl_context: ssl.SSLContext | None = None,
                         handshake_timeout: float = 10.0, close_timeout: float = 2.0,
                         max_streams: int | None = None,
                         admit: Callable[[str], Admission | None] | None = None,
                         on_upgrade_timeout: Callable[[str], None] | None = None,
                         tls_log: tls.HandshakeLog | None = None,
                         listeners: list[trio.SocketListener] | None = None,
                         task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
                         ) -> NoReturn:
    """Accept WebSocket connections offering subprotocol gelato.v1 and run `handler(channel)` for
    each, in its own task; reports (by task_status) the bound (host, port) pairs, so port 0 works.

    Admission happens at accept, before any byte is read and before any TLS or HTTP work: past
    max_streams open sockets, or when `admit(peer_host)` returns None, the socket is closed at once.
    What admit returns is the channel's `admission`, released when the socket closes.

    One deadline, handshake_timeout from the accept, covers TLS, the HTTP upgrade and (handed on
    as `channel.deadline`) the Gelato handshake; a socket that misses it during TLS or the upgrade
    is reported to `on_upgrade_timeout(peer_host)` and closed. A failed TLS handshake is logged
    (`tls_log`, rate limited; one per call by default). Until the handler authenticates the
    channel, messages are held to preauth_message_size (capped at max_message_size) and the peer
    to preauth_frames WebSocket frames in all. A handler that raises is logged and only its own
    connection ends."""
    if listeners is not None:  # made by the caller (e.g. with SO_REUSEPORT)
        if ssl_context is not None:
            listeners = [trio.SSLListener(li, ssl_context, https_compatible=True) for li in listeners]
    elif ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
    open_streams = 0
    tls_log = tls_log or tls.HandshakeLog(log)

    async def serve_stream(stream: trio.abc.Stream) -> None:
        nonlocal open_streams
        open_streams += 1
        ticket = None
        try:
            if max_streams is not None and open_streams > max_streams:
                return
            if admit is not None:
                ticket = admit(_peer_host(stream))
                if ticket is None:
                    return
            await serve_one(stream, ticket)
        except Exception:
            log.exception("connection handler failed")
        finally:
            open_streams -= 1
            try:
                await trio.aclose_forcefully(stream)
            finally:
                if ticket is not None:
                    ticket.release()

    async def serve_one(stream: trio.abc.Stream, ticket: Admission | None) -> None:
        deadline = trio.current_time() + handshake_timeout
        if isinstance(stream, trio.SSLStream):
            with trio.move_on_at(deadline) as timer:
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as e:
                    tls_log.failed(format_address(*_peer_address(stream)), e.__cause__)
                    if isinstance(e.__cause__, ssl.SSLError) and e.__cause__.reason == "HTTP_REQUEST":
                        await _answer_plain_http(stream)
                    return
            if timer.cancelled_caught:
                tls_log.failed(format_address(*_peer_address(stream)), None, timed_out=True)
                if on_upgrade_timeout is not None:
                    on_upgrade_timeout(_peer_host(stream))
                return
        async with trio.open_nursery() as nursery:
            watch = _WatchReader(nursery)
            # as trio_websocket.wrap_server_stream (see _websocket); TLS is done (above)
            conn, guard = _websocket(stream, "server", max_message_size=max_message_size,
                                     preauth_message_size=preauth_message_size, preauth_frames=preauth_frames)
            ws = None
            with trio.move_on_at(deadline) as timer, watch.upgrade:
                try:
                    watch.start_soon(conn._reader_task)
                    request: WebSocketRequest = await conn._get_request()
                    if SUBPROTOCOL in request.proposed_subprotocols:
                        ws = await request.accept(subprotocol=SUBPROTOCOL)
                    else:
                        await request.reject(400, body=f"subprotocol {SUBPROTOCOL} required\n".encode())
                except (ConnectionClosed, HandshakeError):
                    pass
            if ws is None:
                nursery.cancel_scope.cancel()
                if timer.cancelled_caught and on_upgrade_timeout is not None:
                    on_upgrade_timeout(_peer_host(stream))
                return
            channel = Channel(ws, stream, guard, close_timeout=close_timeout, deadline=deadline)
            channel.admission = ticket
            try:
                await handler(channel)
            finally:
                await channel.close()
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve_stream, listeners)
        bound = []
        for listener in listeners:
            inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
            bound.append(tuple(inner.socket.getsockname()[:2]))
        task_status.started(bound)
        await trio.sleep_forever()
