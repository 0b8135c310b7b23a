"""The node side of a pool session: join and hold a lease, query, subscribe, status and admin.

`connect()` wraps one Gelato session (galaxynode.net) in request/reply methods that check the reply
type; a pool's ERROR surfaces as RemoteError carrying its code. EVENT pushes land in a bounded
buffer that drops the oldest on overflow, so a consumer that falls behind never stalls the
session's reader. `keep_joined()` is the long-running form: join, heartbeat, reconnect.
"""
from __future__ import annotations

import logging
import math
import os
import random
from contextlib import aclosing, asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

import attrs
import trio

from galaxynode.gelato import messages as m
from galaxynode.gelato.codec import Frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity, load_key
from galaxynode.net.client import connect as connect_session
from galaxynode.net.connection import DEFAULT_SESSION_LIMITS, Connection, RemoteError, SessionClosed, SessionLimits
from galaxynode.net.transport import CertificateError, ChannelClosed, raise_single

log = logging.getLogger(__name__)

DEFAULT_NETWORK = "galaxy-dev"
DEFAULT_EVENT_BUFFER = 256

# Refusals that waiting will not cure: keep_joined gives up on these instead of retrying forever.
PERMANENT_ERRORS = frozenset({
    ErrorCode.BAD_TTL, ErrorCode.INVALID_BODY, ErrorCode.NOT_ADMITTED, ErrorCode.BANNED,
    ErrorCode.NETWORK_MISMATCH, ErrorCode.PINNED_KEY_MISMATCH, ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.SELF_CONNECTION,
})

# What a lost connection looks like from here; anything else is a bug and propagates.
CONNECTION_ERRORS = (ChannelClosed, SessionClosed, ProtocolError, trio.TooSlowError)


def _why(error: BaseException) -> ProtocolError | None:
    """The ProtocolError behind a lost session: raised as such (a refusal), or the pool's ERROR
    that ended it (kicked, banned, temporarily_banned ...)."""
    if isinstance(error, SessionClosed):
        return error.error if isinstance(error.error, RemoteError) else None
    return error if isinstance(error, ProtocolError) else None


def _identity(key: Identity | str | os.PathLike) -> Identity:
    return key if isinstance(key, Identity) else load_key(key)


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):  # tuple("gpu") would be ('g', 'p', 'u')
        raise TypeError(f"{what} must be a list of strings, not a single {type(values).__name__}")
    return tuple(values)


class _Inbox:
    """The session's handler: EVENT pushes go to a bounded buffer (oldest dropped when full).
    Its `run` lives as long as the session, so the buffer is closed exactly when it ends."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("event_buffer must be positive")
        self.dropped = 0
        self._tx, self.rx = trio.open_memory_channel[m.Event](size)

    async def __call__(self, conn: Connection, frame: Frame) -> None:
        if frame.type != "EVENT":
            raise ProtocolError(ErrorCode.NOT_SUPPORTED, f"{frame.type} is not served by a node", frame.id)
        try:
            self._tx.send_nowait(frame.msg)
        except trio.WouldBlock:
            self.rx.receive_nowait()
            self.dropped += 1
            self._tx.send_nowait(frame.msg)
        return None

    async def run(self, conn: Connection) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._tx.close()


class PoolClient:
    """One session with a pool. Requests time out after `timeout` seconds (trio.TooSlowError);
    a closed session raises SessionClosed; the pool's refusals raise RemoteError."""

    def __init__(self, conn: Connection, inbox: _Inbox, *, timeout: float):
        self.conn = conn
        self.timeout = timeout
        self._inbox = inbox
        self._closed_by_us = False

    @property
    def peer_key(self) -> bytes:
        """The pool's public key (verified by the handshake)."""
        return self.conn.peer_key

    @property
    def events_dropped(self) -> int:
        """EVENTs lost because the buffer was full when they arrived."""
        return self._inbox.dropped

    @property
    def closed(self) -> bool:
        return self.conn.closed

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()

    def closed_error(self) -> SessionClosed:
        c = self.conn
        return SessionClosed(c.close_code, c.close_reason, c.local_error or c.remote_error)

    async def close(self) -> None:
        """End the session with GOODBYE (bounded by the session's close_timeout)."""
        self._closed_by_us = True
        await self.conn.close()

    async def _request(self, msg: Any, expect: str) -> Any:
        frame = await self.conn.request(msg, timeout=self.timeout)
        if frame.type != expect:
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                f"expected {expect} in reply to {msg.TYPE}, got {frame.type}")
        return frame.msg

    # registry -------------------------------------------------------------------------------
    async def join(self, *, capabilities: Iterable[str] = (), meta: Mapping[str, str] = {},
                   ttl: int | None = None) -> m.Lease:
        """Register this session's key (a re-join replaces the record). ttl None: the pool's default."""
        extra = {} if ttl is None else {"ttl": ttl}
        join = m.Join(capabilities=_names(capabilities, "capabilities"), meta=dict(meta), **extra)
        return self._leased(await self._request(join, "LEASE"))

    async def heartbeat(self, ttl: int | None = None) -> m.Lease:
        """Renew the lease (ttl None: the ttl asked for last). Not joined: RemoteError not_joined. The pool
        paces heartbeats: send the next one about LEASE.interval ms after the last LEASE; past a burst of
        two, one sooner than half of it ends the session with rate_limited (a violation)."""
        return self._leased(await self._request(m.Heartbeat(ttl=ttl), "LEASE"))

    def _leased(self, lease: m.Lease) -> m.Lease:
        self.conn.quiet_for(lease.interval / 1000)  # our next HEARTBEAT is the next thing either side says
        return lease

    async def leave(self) -> None:
        await self._request(m.Leave(), "ACK")

    async def _pages(self, msg: Any, expect: str) -> AsyncIterator[Any]:
        """Every reply to a paged request (QUERY, ADMIN nodes), asking again with each reply's cursor
        until one has none. Pools end a page early when its records would pass their page_bytes, so
        a page may hold fewer records than asked for: only the cursor says whether more follow."""
        seen: set[bytes] = set()
        while True:
            page = await self._request(msg, expect)
            yield page
            if page.cursor is None or page.cursor in seen:  # a repeated cursor would loop forever
                return
            seen.add(page.cursor)
            msg = attrs.evolve(msg, cursor=page.cursor)

    def query_pages(self, *, capabilities: Iterable[str] = (), meta: Mapping[str, str] = {},
                    key: bytes | None = None, limit: int = 100, scope: str = "local",
                    hops: int = 2) -> AsyncIterator[m.QueryResult]:
        """Every page of a query (at most `limit` records each, at most MAX_PAGE), following cursors.
        Pages are QueryResult messages, so `partial` (a peer did not answer) is visible."""
        if not 1 <= limit <= m.MAX_PAGE:
            raise ValueError(f"limit must be 1..{m.MAX_PAGE} per page")
        q = m.Query(capabilities=_names(capabilities, "capabilities"), meta=dict(meta), key=key, limit=limit,
                    scope=scope, hops=hops)
        return self._pages(q, "QUERY_RESULT")

    async def query(self, *, capabilities: Iterable[str] = (), meta: Mapping[str, str] = {},
                    key: bytes | None = None, limit: int = 100, scope: str = "local",
                    hops: int = 2) -> list[m.NodeRecord]:
        """Up to `limit` matching records, in the pool's order (by key), across pages."""
        if limit < 1:
            raise ValueError("limit must be positive")
        pages = self.query_pages(capabilities=capabilities, meta=meta, key=key, limit=min(limit, m.MAX_PAGE),
                                 scope=scope, hops=hops)
        return (await gather(pages, limit))[0]

    # events ---------------------------------------------------------------------------------
    async def subscribe(self, topics: Iterable[str], *, peers: bool = False) -> None:
        """Add topic patterns (`*` one segment, `#` the rest); peers: also events relayed from peers."""
        await self._request(m.Subscribe(topics=_names(topics, "topics"), peers=peers), "ACK")

    async def unsubscribe(self, topics: Iterable[str]) -> None:
        await self._request(m.Unsubscribe(topics=_names(topics, "topics")), "ACK")

    async def events(self) -> AsyncIterator[m.Event]:
        """EVENT messages as they arrive. Ends after close(); raises SessionClosed if the session
        ended otherwise (events that arrived before are delivered first)."""
        async for ev in self._inbox.rx:
            yield ev
        if not self._closed_by_us:
            raise self.closed_error()

    # status and admin -----------------------------------------------------------------------
    async def status(self) -> m.StatusResult:
        return await self._request(m.Status(), "STATUS_RESULT")

    async def admin(self, action: str, key: bytes | None = None, duration: int | None = None,
                    address: str | None = None) -> list[dict]:
        """kick/ban/unban (key; ban for `duration` seconds or for ever; unban an `address`
        instead) return []; peers/nodes/bans return the pool's items. Needs an admin key, else
        RemoteError forbidden."""
        msg = m.Admin(action=action, key=key, duration=duration, address=address)
        if action == "nodes":  # the pool pages this list (by bytes): follow its cursors
            items: list[dict] = []
            async with aclosing(self._pages(msg, "ADMIN_RESULT")) as pages:
                async for page in pages:
                    items += page.items
            return items
        frame = await self.conn.request(msg, timeout=self.timeout)
        if frame.type == "ADMIN_RESULT":
            return list(frame.msg.items)
        if frame.type == "ACK":
            return []
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"unexpected {frame.type} in reply to ADMIN")


async def gather(pages: AsyncIterator[m.QueryResult], limit: int) -> tuple[list[m.NodeRecord], bool]:
    """Records from query pages until `limit` or the last page (closing the iterator);
    also whether any page was partial (a peer did not answer in time)."""
    out: list[m.NodeRecord] = []
    partial = False
    async with aclosing(pages):
        async for page in pages:
            out += page.nodes[:limit - len(out)]
            partial = partial or page.partial
            if len(out) >= limit or not page.nodes:
                break
    return out, partial


@asynccontextmanager
async def connect(url: str, key: Identity | str | os.PathLike, *, network: str = DEFAULT_NETWORK,
                  role: str = "node", timeout: float = 10.0, limits: SessionLimits | None = None,
                  pinned_key: bytes | None = None, event_buffer: int = DEFAULT_EVENT_BUFFER,
                  ca_file: str | None = None) -> AsyncIterator[PoolClient]:
    """`async with connect(url, key) as pool:` a PoolClient for the block, closed with GOODBYE
    at its end. `key` is an Identity or a key file path. Failing to connect raises ChannelClosed
    (CertificateError when a wss:// pool's certificate is refused; `ca_file` trusts a private CA);
    a refused handshake raises ProtocolError (RemoteError when the pool refused us)."""
    identity = _identity(key)
    inbox = _Inbox(event_buffer)
    async with connect_session(url, identity, network=network, role=role,
                               limits=limits or DEFAULT_SESSION_LIMITS, pinned_key=pinned_key,
                               handler=inbox, connect_timeout=timeout, ca_file=ca_file) as conn:
        client = PoolClient(conn, inbox, timeout=timeout)
        try:
            yield client
        finally:
            client._closed_by_us = True


# --- staying joined --------------------------------------------------------------------------

@attrs.frozen
class JoinState:
    """What keep_joined reports: "joined" (first time), "rejoined" (after a reconnect, a kick or
    an expired lease) with the lease; "disconnected" with the error and the delay before retrying."""

    kind: str
    url: str
    lease: m.Lease | None = None
    pool_key: bytes | None = None
    error: BaseException | None = None
    retry_in: float | None = None


def overloaded_delay(retry_after: int | None, backoff_max: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after an `overloaded` JOIN: the pool's retry_after (ms) plus up to a fifth more,
    so that nodes refused together do not all return at once; backoff_max if it sent none."""
    if retry_after is None:
        return backoff_max
    return retry_after / 1000 * (rng or random).uniform(1.0, 1.2)


def backoff_delay(attempt: int, backoff_min: float, backoff_max: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: in [base/2, base], base = min(max, min * 2**attempt).
    The jitter keeps many nodes that lost the same pool from reconnecting in lockstep."""
    base = min(backoff_max, backoff_min * 2 ** min(attempt, 64))
    return (rng or random).uniform(base / 2, base)


class _Keeper:
    def __init__(self, url: str, identity: Identity, *, on_event: Callable[[JoinState], Any] | None,
                 backoff_min: float, backoff_max: float, join: dict[str, Any], connect: dict[str, Any]):
        self.url = url
        self.identity = identity
        self.on_event = on_event
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.join_args = join
        self.connect_args = connect
        self.scope = trio.CancelScope(shield=True)  # outer cancellation goes through stop() instead
        self.client: PoolClient | None = None
        self.joined = False
        self.stopping = False

    def _report(self, kind: str, **kw: Any) -> None:
        if self.on_event is not None and not self.stopping:
            self.on_event(JoinState(kind=kind, url=self.url, **kw))

    async def run(self) -> None:
        with self.scope:
            await self._loop()

    async def _loop(self) -> None:
        attempt = 0
        kicks = 0  # kicked in a row: each waits longer, so a node an admin keeps kicking backs off
        ever_joined = False
        while True:
            error: BaseException | None = None
            try:
                async with connect(self.url, self.identity, **self.connect_args) as client:
                    self.client = client
                    lease = await client.join(**self.join_args)
                    self.joined = True
                    self._report("rejoined" if ever_joined else "joined", lease=lease, pool_key=client.peer_key)
                    ever_joined, attempt = True, 0
                    await self._hold(client, lease)
            except CertificateError:  # retrying will not change the certificate or what we trust
                raise
            except CONNECTION_ERRORS as e:
                why = _why(e)
                if why is not None and why.code in PERMANENT_ERRORS:  # e.g. banned, now or mid-session
                    if why is e:
                        raise
                    raise why from e
                error = e
            finally:
                self.client, self.joined = None, False
            code = why.code if (why := _why(error)) is not None else None
            kicks = kicks + 1 if code is ErrorCode.KICKED else 0
            if code is ErrorCode.TEMPORARILY_BANNED:  # refused for minutes: sooner only gets refused again
                delay = backoff_delay(64, self.backoff_min, self.backoff_max)
            elif code is ErrorCode.OVERLOADED:  # the pool says how long at least; jitter spreads the returns
                delay = overloaded_delay(why.retry_after, self.backoff_max)
            else:
                delay = backoff_delay(max(attempt, kicks), self.backoff_min, self.backoff_max)
            attempt += 1
            log.info("session with %s lost (%s); retrying in %.1fs", self.url, error, delay)
            self._report("disconnected", error=error, retry_in=delay)
            await trio.sleep(delay)

    async def _hold(self, client: PoolClient, lease: m.Lease) -> None:
        """Heartbeat `interval` ms after each LEASE (the pool paces its nodes: sooner than half of it
        is refused as rate_limited) until the session ends; rejoin if the lease is gone."""
        while True:
            with trio.move_on_after(lease.interval / 1000):
                await client.wait_closed()
            if client.closed:
                raise client.closed_error()
            try:
                lease = await client.heartbeat()
            except RemoteError as e:
                if e.code is not ErrorCode.NOT_JOINED:  # kicked, or the lease ran out while we stalled
                    raise
                lease = await client.join(**self.join_args)
                self._report("rejoined", lease=lease, pool_key=client.peer_key)

    async def leave(self) -> None:
        """Called shielded, once: say LEAVE and GOODBYE if joined, within the request timeout."""
        self.stopping = True
        client = self.client
        if client is None:
            return
        with trio.move_on_after(client.timeout):
            try:
                if self.joined:
                    await client.leave()
                await client.close()
            except CONNECTION_ERRORS as e:
                log.info("could not leave %s cleanly: %s", self.url, e)


async def keep_joined(url: str, identity: Identity | str | os.PathLike, *, capabilities: Iterable[str] = (),
                      meta: Mapping[str, str] = {}, ttl: int | None = None, network: str = DEFAULT_NETWORK,
                      on_event: Callable[[JoinState], Any] | None = None, backoff_min: float = 1.0,
                      backoff_max: float = 30.0, timeout: float = 10.0, limits: SessionLimits | None = None,
                      pinned_key: bytes | None = None, ca_file: str | None = None) -> None:
    """Stay joined until cancelled: join, heartbeat at the interval each LEASE asks for, and on any connection failure
    reconnect with exponential backoff and jitter (reset after each successful join). On
    cancellation the lease is given up (LEAVE, then GOODBYE) before returning, within `timeout`.
    Refusals that retrying cannot fix (PERMANENT_ERRORS: bad ttl, not admitted, banned, wrong
    network or pool key ...) are raised, also when the pool ends a live session with one (an
    admin's ban), and so is CertificateError (a wss:// pool's certificate refused). A kicked node rejoins
    after a backoff that grows with each kick in a row; a node refused with temporarily_banned waits
    backoff_max before each retry; a JOIN refused with overloaded waits the pool's retry_after (plus jitter)."""
    if not 0 < backoff_min <= backoff_max or not math.isfinite(backoff_max):
        raise ValueError("need 0 < backoff_min <= backoff_max")
    keeper = _Keeper(url, _identity(identity), on_event=on_event, backoff_min=backoff_min,
                     backoff_max=backoff_max,
                     join={"capabilities": _names(capabilities, "capabilities"), "meta": dict(meta), "ttl": ttl},
                     connect={"network": network, "timeout": timeout, "limits": limits, "pinned_key": pinned_key,
                              "ca_file": ca_file})
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.run)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await keeper.leave()
                keeper.scope.cancel()
    except BaseExceptionGroup as group:
        raise_single(group)
