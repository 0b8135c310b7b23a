"""Connecting side: open a channel, run the handshake, and serve the session for a block."""
from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from galaxynode.identity import Identity
from galaxynode.net.connection import AGENT, DEFAULT_SESSION_LIMITS, Connection, Handler, SessionLimits, establish
from galaxynode.net.outbox import OutputBudget
from galaxynode.net.tls import client_context
from galaxynode.net.transport import open_channel, raise_single


@asynccontextmanager
async def connect(url: str, identity: Identity, *, network: str, role: str = "node",
                  limits: SessionLimits = DEFAULT_SESSION_LIMITS, pinned_key: bytes | None = None,
                  handler: Handler | None = None, ssl_context: ssl.SSLContext | None = None,
                  connect_timeout: float = 10.0, listen: tuple[str, ...] = (),
                  agent: str = AGENT, output_budget: OutputBudget | None = None,
                  local_address: str | None = None, ca_file: str | None = None) -> AsyncIterator[Connection]:
    """`async with connect(url, identity, network=...) as conn:` an established Connection,
    served (PING, replies, the handler) for the duration of the block and closed with GOODBYE
    at its end. Failing to connect raises ChannelClosed; a refused handshake raises
    ProtocolError (RemoteError when the server refused us). A process that dials many sessions (a
    pool's peers and announcer) passes its one `output_budget` (the server's) so that their queued
    output counts against the same process-wide bytes; without one only the session's own bound applies.
    For wss://, `ca_file` adds the CAs in that PEM file to the system's (a private CA, a self-signed
    certificate; TLSError if it cannot be used); an explicit `ssl_context` wins over it. A refused
    certificate raises CertificateError (a ChannelClosed) whose reason says why."""
    if ssl_context is None and ca_file:
        ssl_context = client_context(ca_file)
    async with open_channel(url, max_message_size=limits.codec.max_frame_size, connect_timeout=connect_timeout,
                            ssl_context=ssl_context, close_timeout=limits.close_timeout,
                            local_address=local_address) as channel:
        session = await establish(channel, identity, opener=True, network=network, role=role, limits=limits,
                                  pinned_key=pinned_key, listen=listen, agent=agent)
        conn = Connection(channel, session, limits=limits, handler=handler, budget=output_budget)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                try:
                    yield conn
                finally:
                    await conn.close()
        except BaseExceptionGroup as group:
            raise_single(group)
