"""Gelato error codes and the one exception type the protocol layer raises.

Codes are grouped by thousands: 1xxx framing, 2xxx authentication, 3xxx session,
4xxx authorization, 5xxx rate limits, 6xxx registry/discovery, 9xxx internal.
`fatal` codes close the session after the ERROR frame is sent. `overloaded` is the one retryable
refusal that tells the peer when to retry (ERROR.retry_after, ms; ProtocolError.retry_after). Numbers are never reused: v2 retired
3004 wrong_sid (no sid on the wire; another session's frame fails the MAC) and 3008 no_common_version
(a HELLO without a version we speak is unsupported_version).
"""
from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    # framing
    MALFORMED_FRAME = 1000
    FRAME_TOO_LARGE = 1001
    UNSUPPORTED_VERSION = 1002
    TEXT_FRAME = 1003
    UNKNOWN_TYPE = 1004
    INVALID_BODY = 1005
    LIMIT_EXCEEDED = 1006
    NOT_SUPPORTED = 1007
    # authentication
    BAD_SIGNATURE = 2000
    BAD_KEY = 2001
    STALE_TIMESTAMP = 2002
    PINNED_KEY_MISMATCH = 2003
    WRONG_SENDER = 2004
    BAD_MAC = 2005
    # session
    UNEXPECTED_MESSAGE = 3000
    BAD_NONCE = 3001
    NETWORK_MISMATCH = 3002
    SELF_CONNECTION = 3003
    BAD_SEQUENCE = 3005
    HANDSHAKE_TIMEOUT = 3006
    IDLE_TIMEOUT = 3007
    DUPLICATE_SESSION = 3009
    # authorization
    FORBIDDEN = 4000
    NOT_ADMITTED = 4001
    BANNED = 4002
    KICKED = 4003
    # rate limits
    RATE_LIMITED = 5000
    TOO_MANY_CONNECTIONS = 5001
    TEMPORARILY_BANNED = 5002
    SLOW_READER = 5003
    OVERLOADED = 5004  # JOIN refused: the pool's heartbeat budget is spent; retry after ERROR.retry_after
    # registry and discovery
    NOT_JOINED = 6000
    BAD_TTL = 6001
    BAD_CURSOR = 6002
    BAD_DESCRIPTOR = 6003
    STALE_DESCRIPTOR = 6004
    NOT_FOUND = 6005
    # internal
    INTERNAL = 9000
    SHUTTING_DOWN = 9001
    UNAVAILABLE = 9002

    @property
    def fatal(self) -> bool:
        return self in FATAL_CODES

    @property
    def group(self) -> str:
        return GROUPS[self.value // 1000]


GROUPS = {1: "framing", 2: "authentication", 3: "session", 4: "authorization",
          5: "rate_limit", 6: "registry", 9: "internal"}

# A peer that sends one of these cannot be trusted to keep a consistent session.
FATAL_CODES = frozenset({
    ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.TEXT_FRAME, ErrorCode.LIMIT_EXCEEDED, ErrorCode.BAD_SIGNATURE, ErrorCode.BAD_KEY,
    ErrorCode.STALE_TIMESTAMP, ErrorCode.PINNED_KEY_MISMATCH, ErrorCode.WRONG_SENDER, ErrorCode.BAD_MAC,
    ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.BAD_NONCE, ErrorCode.NETWORK_MISMATCH,
    ErrorCode.SELF_CONNECTION, ErrorCode.BAD_SEQUENCE,
    ErrorCode.HANDSHAKE_TIMEOUT, ErrorCode.IDLE_TIMEOUT,
    ErrorCode.DUPLICATE_SESSION, ErrorCode.BANNED, ErrorCode.KICKED, ErrorCode.RATE_LIMITED,
    ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.TEMPORARILY_BANNED, ErrorCode.SHUTTING_DOWN,
    ErrorCode.SLOW_READER,
})


class ProtocolError(Exception):
    """A Gelato rejection: carries the code sent in the ERROR frame."""

    def __init__(self, code: ErrorCode, message: str = "", ref: bytes | None = None, *,
                 retry_after: int | None = None):
        super().__init__(f"{code.name.lower()} ({int(code)}): {message}" if message else code.name.lower())
        self.code = code
        self.message = message or code.name.lower()
        self.ref = ref
        self.retry_after = retry_after  # ms the peer must wait before retrying (sent with overloaded)

    @property
    def fatal(self) -> bool:
        return self.code.fatal
