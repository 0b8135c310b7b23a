"""The WebSocket carrier behind one small interface (the only module that imports trio_websocket).

A `Channel` moves whole messages: one binary message is one Gelato frame; text messages are
passed up as `str` so the session can answer them with TEXT_FRAME. Every library failure
surfaces as one exception, `ChannelClosed(code, reason)`.

We own the TCP (and TLS) stream on both sides and only hand it to trio-websocket to speak the
WebSocket protocol: 0.12.2's own client leaks its socket when the server closes first, its
`connect_websocket_url` has no timeout, and its server waits up to 60 s on a silent peer. Here
every phase is bounded and the stream is always closed by whoever opened or accepted it.
"""
from __future__ import annotations

import logging
import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, NoReturn
from urllib.parse import urlsplit

import trio
from trio_websocket import (ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection,
                            wrap_client_stream, wrap_server_stream)

log = logging.getLogger(__name__)

SUBPROTOCOL = "gelato.v1"
ABNORMAL = 1006           # no close frame was received (RFC 6455 7.1.5)
PROTOCOL_ERROR = 1002
_MESSAGE_QUEUE = 1        # messages trio-websocket buffers before it stops reading the socket
_RECEIVE_BYTES = 64 * 1024
_MAX_CLOSE_REASON = 120   # a close frame carries at most 123 bytes of reason


class ChannelClosed(Exception):
    """The channel cannot carry messages (any more). `code` is the WebSocket close code:
    the peer's or ours, 1006 when the connection broke or never came up."""

    def __init__(self, code: int, reason: str = ""):
        super().__init__(f"channel closed ({code}){': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """`ws://host:port/path` -> (secure, host, port, resource); raises ValueError on anything else."""
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
    return secure, parts.hostname, port if port is not None else (443 if secure else 80), resource


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _close_reason(exc: ConnectionClosed) -> ChannelClosed:
    reason = exc.reason
    if reason is None:
        return ChannelClosed(ABNORMAL, "connection closed")
    return ChannelClosed(reason.code, reason.reason or "")


def _truncate(reason: str) -> str:
    data = reason.encode()[:_MAX_CLOSE_REASON]
    return data.decode(errors="ignore")


class Channel:
    """One WebSocket connection carrying Gelato frames."""

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream, *, close_timeout: float):
        self._ws = ws
        self._stream = stream
        self._close_timeout = close_timeout
        try:
            host, port = _socket_of(stream).getpeername()[:2]
        except (AttributeError, OSError):  # not a socket, or already disconnected
            host, port = "?", 0
        self.host: str = host
        self.remote: str = format_address(host, port)

    def __repr__(self) -> str:
        return f"<Channel {self.remote}>"

    @property
    def closed(self) -> bool:
        return self._ws.closed is not None

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send_message(bytes(data))
        except ConnectionClosed as e:
            raise _close_reason(e) from None

    async def receive(self) -> bytes | str:
        try:
            return await self._ws.get_message()
        except ConnectionClosed as e:
            raise _close_reason(e) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closing handshake bounded by close_timeout, then the stream is closed regardless.
        Idempotent; safe to call while cancelled."""
        try:
            with trio.move_on_after(self._close_timeout):
                await self._ws.aclose(code, _truncate(reason) or None)
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
        return ChannelClosed(PROTOCOL_ERROR, f"WebSocket upgrade rejected with HTTP {exc.status_code}")
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
                       ssl_context: ssl.SSLContext | None = None,
                       close_timeout: float = 2.0) -> AsyncIterator[Channel]:
    """Connect to a Gelato endpoint (subprotocol gelato.v1). TCP connect, TLS and the WebSocket
    upgrade together must finish within connect_timeout."""
    secure, host, port, resource = parse_url(url)
    where = format_address(host, port)
    deadline = trio.current_time() + connect_timeout
    try:
        with trio.fail_at(deadline):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as e:
        raise ChannelClosed(ABNORMAL, f"cannot connect to {where}: {e or 'timed out'}") from None
    try:
        try:
            async with trio.open_nursery() as nursery:
                watch = _WatchReader(nursery)
                with trio.move_on_at(deadline) as timeout:
                    if secure:
                        stream = trio.SSLStream(stream, ssl_context or ssl.create_default_context(),
                                                server_hostname=host, https_compatible=True)
                        await stream.do_handshake()
                    with watch.upgrade:
                        ws = await wrap_client_stream(
                            watch, stream, host if port == (443 if secure else 80) else where, resource,
                            subprotocols=[SUBPROTOCOL], message_queue_size=_MESSAGE_QUEUE,
                            max_message_size=max_message_size, receive_buffer_size=_RECEIVE_BYTES)
                if timeout.cancelled_caught:
                    raise ChannelClosed(ABNORMAL, f"WebSocket upgrade with {where} timed out")
                if watch.upgrade.cancelled_caught:
                    raise ChannelClosed(ABNORMAL, f"{where} closed the connection during the WebSocket upgrade")
                channel = Channel(ws, stream, close_timeout=close_timeout)
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


async def serve_channels(handler: Callable[[Channel], Awaitable[None]], host: str | None, port: int, *,
                         max_message_size: int, ssl_context: ssl.SSLContext | None = None,
                         handshake_timeout: float = 10.0, close_timeout: float = 2.0,
                         max_streams: int | None = None,
                         task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
                         ) -> NoReturn:
    """Accept WebSocket connections offering subprotocol gelato.v1 and run `handler(channel)` for
    each, in its own task; reports (by task_status) the bound (host, port) pairs, so port 0 works.

    TLS and the HTTP upgrade must finish within handshake_timeout. Past max_streams open sockets,
    new ones are closed at once, before any byte is read. A handler that raises is logged and
    only its own connection ends."""
    if ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
    open_streams = 0

    async def serve_stream(stream: trio.abc.Stream) -> None:
        nonlocal open_streams
        open_streams += 1
        try:
            if max_streams is None or open_streams <= max_streams:
                await serve_one(stream)
        except Exception:
            log.exception("connection handler failed")
        finally:
            open_streams -= 1
            await trio.aclose_forcefully(stream)

    async def serve_one(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            watch = _WatchReader(nursery)
            ws = None
            with trio.move_on_after(handshake_timeout), watch.upgrade:
                try:
                    request = await wrap_server_stream(watch, stream, message_queue_size=_MESSAGE_QUEUE,
                                                       max_message_size=max_message_size,
                                                       receive_buffer_size=_RECEIVE_BYTES)
                    if SUBPROTOCOL in request.proposed_subprotocols:
                        ws = await request.accept(subprotocol=SUBPROTOCOL)
                    else:
                        await request.reject(400, body=f"subprotocol {SUBPROTOCOL} required\n".encode())
                except (ConnectionClosed, HandshakeError):
                    pass
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            channel = Channel(ws, stream, close_timeout=close_timeout)
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
