#!/usr/bin/env python3
"""Write ``protocol/gelato.json`` and the generated tables in ``docs/gelato/`` from the code.

The code is the reference: constants, limits, error codes and message schemas are read from
galaxynode.gelato (and the descriptor and session-limit modules). What the code cannot say
(one-line meanings of codes, limits and messages, the decoder's check order) is kept here, next
to the export, and `build()` refuses to run when the code has something this file does not
describe, so a new error code or message type cannot ship without its meaning.

    .venv/bin/python scripts/gen_protocol.py           # rewrite the files
    .venv/bin/python scripts/gen_protocol.py --check   # exit 1 if any file is stale
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from galaxynode import descriptor as d  # noqa: E402
from galaxynode.config import ServerConfig  # noqa: E402
from galaxynode.gelato import codec, handshake, keys  # noqa: E402
from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.errors import FATAL_CODES, GROUPS, ErrorCode  # noqa: E402
from galaxynode.net.connection import SessionLimits  # noqa: E402
from galaxynode.net.transport import SUBPROTOCOL  # noqa: E402

JSON_PATH = ROOT / "protocol" / "gelato.json"
DOCS = ROOT / "docs" / "gelato"

E = ErrorCode

ERROR_MEANINGS: dict[ErrorCode, str] = {
    E.MALFORMED_FRAME: "The frame or its payload is not well-formed (msgpack structure, types or header fields).",
    E.FRAME_TOO_LARGE: "The WebSocket message is longer than max_frame_size.",
    E.UNSUPPORTED_VERSION: "The frame version (element 0 of the frame array) is not one the receiver speaks, or the "
                           "peer's HELLO offers none of them; the message names the versions the receiver speaks.",
    E.TEXT_FRAME: "A WebSocket text message arrived; Gelato frames are binary messages.",
    E.UNKNOWN_TYPE: "The payload names a message type the receiver does not know; in a session its seq is consumed.",
    E.INVALID_BODY: "The body does not match its type's schema (missing field, wrong type, out of bounds).",
    E.LIMIT_EXCEEDED: "The payload breaks a msgpack length limit or the body nesting limit; in answer to "
                      "SUBSCRIBE (not fatal there): more topic patterns than the session may hold (messages §5).",
    E.NOT_SUPPORTED: "A valid request this endpoint does not serve (e.g. ADMIN sent to a main net).",
    E.BAD_SIGNATURE: "The Ed25519 signature does not verify with the sender's key.",
    E.BAD_KEY: "'from' is absent or not a 32-byte public key; or the peer's ephemeral key is the receiver's own "
               "or gives an all-zero X25519 secret (handshake §6).",
    E.STALE_TIMESTAMP: "The frame's ts is outside the receiver's window around its own clock.",
    E.PINNED_KEY_MISMATCH: "The answerer's key is not the key the opener pinned for that endpoint.",
    E.WRONG_SENDER: "A signed frame's 'from' is not the key it was expected from (the peer's key).",
    E.BAD_MAC: "A session frame's MAC does not verify with the receiver's key for that direction (tampered, "
               "another session's, the other direction's, or reflected).",
    E.UNEXPECTED_MESSAGE: "A frame the state does not allow: during the handshake another type or a session "
                          "frame; inside a session a HELLO, a READY or any signed frame but the peer's refusal "
                          "of READY.",
    E.BAD_NONCE: "A handshake nonce check failed (echo missing, wrong or misplaced; nonce reused).",
    E.NETWORK_MISMATCH: "The peer's HELLO names a different network.",
    E.SELF_CONNECTION: "The peer presents the receiver's own key.",
    E.BAD_SEQUENCE: "A session frame whose seq is not the next expected one (replayed or skipped).",
    E.HANDSHAKE_TIMEOUT: "The handshake did not complete within the handshake timeout.",
    E.IDLE_TIMEOUT: "Nothing was received for the idle timeout, PINGs included.",
    E.DUPLICATE_SESSION: "A newer session with the same peer key replaced this one.",
    E.FORBIDDEN: "The session's key may not make this request (e.g. ADMIN without an admin key).",
    E.NOT_ADMITTED: "The key is not on the pool's admission allowlist.",
    E.BANNED: "The key is banned by an administrator (ADMIN ban); its sessions end with it.",
    E.KICKED: "An administrator removed this key's lease and ended its session (ADMIN kick); it may connect "
              "and JOIN again.",
    E.RATE_LIMITED: "The session exceeded its frame or byte rate, or sent a HEARTBEAT sooner than its last "
                    "LEASE's interval allows (messages §8.4).",
    E.TOO_MANY_CONNECTIONS: "The receiver is at its connection limit.",
    E.TEMPORARILY_BANNED: "The key (or, for abuse before any handshake, the address) is banned for a while after "
                          "repeated protocol violations (errors §7).",
    E.SLOW_READER: "The peer did not read its output: nothing could be written for write_timeout while output was "
                   "queued (limits §3.1). A reader that is not reading may never see this ERROR.",
    E.OVERLOADED: "JOIN refused: the pool's heartbeat budget cannot take another lease; wait at least "
                  "ERROR.retry_after ms, then retry. Not fatal, not a violation.",
    E.NOT_JOINED: "HEARTBEAT or LEAVE from a key that holds no lease.",
    E.BAD_TTL: "The requested lease TTL is outside the pool's configured bounds.",
    E.BAD_CURSOR: "The paging cursor was not issued by this receiver or is malformed.",
    E.BAD_DESCRIPTOR: "A pool descriptor that does not decode, verify, or is not current.",
    E.STALE_DESCRIPTOR: "A descriptor whose seq is not newer than the one held for its key.",
    E.NOT_FOUND: "The request names something that does not exist (e.g. ADMIN kick of an unknown node).",
    E.INTERNAL: "The receiver failed while handling a valid request.",
    E.SHUTTING_DOWN: "The receiver is shutting down.",
    E.UNAVAILABLE: "Temporarily unable to serve (a bounded table is full, a service is not ready); retry later.",
}

# (kind, replies, meaning). kind: handshake | request | reply | push | notice.
MESSAGE_DOCS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "HELLO": ("handshake", ("HELLO", "READY"),
              "Opens the handshake (opener) or answers it (answerer, with echo = the opener's nonce); eph is "
              "the sender's X25519 public key for this connection (handshake §6)."),
    "READY": ("handshake", (), "Completes the handshake: the opener echoes the answerer's nonce."),
    "PING": ("request", ("PONG",), "Liveness probe; answered with PONG carrying the same data."),
    "PONG": ("reply", (), "Answer to PING; echoes its data (correlated by data, not by re)."),
    "ERROR": ("reply", (), "Rejection of the frame whose id is re, or a notice before closing when re is absent; "
                           "retry_after (ms) comes with overloaded (messages §8.5)."),
    "GOODBYE": ("notice", (), "Orderly end of the session; the sender closes the WebSocket after it."),
    "ACK": ("reply", (), "Success without data for the request whose id is re."),
    "JOIN": ("request", ("LEASE",), "Register the session's own key with capabilities and metadata for ttl seconds."),
    "HEARTBEAT": ("request", ("LEASE",), "Renew the session key's lease, optionally with a new ttl."),
    "LEASE": ("reply", (), "The lease granted by JOIN, HEARTBEAT or ANNOUNCE: ttl in seconds (at least three "
                           "intervals), expiry in ms, and interval: when to send the next HEARTBEAT, in ms after "
                           "this LEASE arrives (messages §8)."),
    "LEAVE": ("request", ("ACK",), "Remove the session key's registration."),
    "QUERY": ("request", ("QUERY_RESULT",),
              "Find nodes by capabilities (all must match), metadata (all entries equal) or key, "
              "one page at a time; scope peers also asks peered pools, at most hops away and within a "
              "fan-out budget, under one query id (peering §4)."),
    "QUERY_RESULT": ("reply", (), "One page of node records; cursor continues, partial means some peers missed the deadline."),
    "SUBSCRIBE": ("request", ("ACK",),
                  "Receive EVENTs whose topic matches any pattern (* one segment, # or ** the rest); patterns "
                  "are added to those held, within the subscription caps of messages §5."),
    "UNSUBSCRIBE": ("request", ("ACK",), "Stop receiving the given patterns."),
    "EVENT": ("push", (), "An event on a subscribed topic; origin is the pool where it happened, signed is its "
                          "signature of it (records.md §8)."),
    "ANNOUNCE": ("request", ("LEASE",), "Register a pool's own signed descriptor at the main net."),
    "LOOKUP": ("request", ("LOOKUP_RESULT",), "Find pool descriptors by network, capability or name, one page at a time."),
    "LOOKUP_RESULT": ("reply", (), "One page of signed descriptors, exactly as their pools signed them."),
    "DESCRIPTORS": ("push", (), "Pool-to-pool exchange of signed descriptors (peering)."),
    "STATUS": ("request", ("STATUS_RESULT",), "Ask for public information about the receiving pool."),
    "STATUS_RESULT": ("reply", (), "Public facts about the pool: key, name, network, role, version, uptime in "
                                   "whole seconds, the leases it holds (nodes) and its active peer sessions "
                                   "(peers); messages §2.8."),
    "ADMIN": ("request", ("ACK", "ADMIN_RESULT"),
              "Administrative action by an admin key: kick, ban, unban (ACK) or list nodes, peers, bans "
              "(ADMIN_RESULT); see §7."),
    "ADMIN_RESULT": ("reply", (), "Items listed by an ADMIN nodes, peers or bans action."),
}

STRUCT_DOCS = {
    "NodeRecord": "A registered node: its key, capabilities, metadata and lease expiry (ms); "
                  "pool is set on records relayed from another pool, signed is that pool's signed record "
                  "(records.md §8).",
    "SignedRecord": "A record signed by its origin pool (records.md §2): msgpack record bytes and the origin's "
                    "Ed25519 signature over the kind's prefix and the record.",
    "SignedDescriptor": "A pool descriptor record (msgpack bytes) and its Ed25519 signature (discovery).",
}

# Codes of earlier versions that are no longer sent; their numbers are never reused.
RETIRED_CODES = {3004: "wrong_sid", 3008: "no_common_version"}

FAMILIES = ("session", "registry", "events", "discovery", "peering", "status", "admin")

CODEC_LIMIT_DOCS = {
    "max_frame_size": "Largest WebSocket message (whole frame) in bytes, checked before parsing.",
    "max_str_len": "Longest msgpack str anywhere in the payload, in bytes of UTF-8.",
    "max_bin_len": "Longest msgpack bin anywhere in the payload, in bytes.",
    "max_array_len": "Most elements of any array in the payload.",
    "max_map_len": "Most entries of any map in the payload (the payload map included).",
    "max_depth": "Deepest nesting of maps and arrays within body; body itself is level 1.",
    "ts_window_ms": "Largest accepted |ts - now| in ms for frames whose time is checked (the handshake).",
}

# Handshake frames (limits §1.1): the tighter of these and the session's codec limits.
PREAUTH_LIMITS = {"preauth_frame_size": codec.PREAUTH_FRAME_SIZE, "max_array_len": codec.PREAUTH_MAX_ARRAY_LEN,
                  "max_map_len": codec.PREAUTH_MAX_MAP_LEN, "max_depth": codec.PREAUTH_MAX_DEPTH}
PREAUTH_LIMIT_DOCS = {
    "preauth_frame_size": "Largest frame before the session is established, in bytes (configurable; also "
                          "bounds every str and bin in it).",
    "max_array_len": "Most elements of any array in a handshake frame's payload.",
    "max_map_len": "Most entries of any map in a handshake frame's payload.",
    "max_depth": "Deepest nesting within a handshake frame's body (body is level 1).",
}

SESSION_LIMIT_DOCS = {
    "handshake_timeout": "Seconds from accepting the TCP connection to an established session (TLS, WebSocket upgrade "
                         "and HELLO/READY together); then HANDSHAKE_TIMEOUT (a socket still in TLS or the upgrade is "
                         "closed without a word).",
    "preauth_frame_size": "Largest WebSocket message before the session is established, in bytes (at most "
                          "max_frame_size); beyond it FRAME_TOO_LARGE (limits §1.1).",
    "idle_timeout": "Seconds without any received frame before closing with IDLE_TIMEOUT (on a paced session, counted from when the next HEARTBEAT is due: messages §8.6).",
    "ping_interval": "Seconds without any received frame before sending PING (on a paced session, counted from when the next HEARTBEAT is due: messages §8.6).",
    "write_timeout": "Seconds the writer may wait for the peer to read one frame; then the session ends (SLOW_READER).",
    "close_timeout": "Seconds allowed for flushing, the final ERROR or GOODBYE and the closing handshake.",
    "frame_rate": "Received WebSocket frames per second, every kind (data, continuation, PING, PONG, CLOSE; token "
                  "bucket rate); beyond it RATE_LIMITED.",
    "frame_burst": "Received WebSocket frames allowed in a burst (token bucket size).",
    "pool_frame_rate": "frame_rate for sessions the peering policy accepted as peers (peering §9.2: peers relay "
                       "whole pools' events); a HELLO role alone gets frame_rate.",
    "pool_frame_burst": "frame_burst for sessions the peering policy accepted as peers (peering §9.2).",
    "byte_rate": "Received bytes per second (token bucket rate); beyond it RATE_LIMITED.",
    "byte_burst": "Received bytes allowed in a burst; at least max_frame_size.",
    "send_queue": "Outgoing frames queued per session; senders wait (or pushes are dropped) when full.",
    "send_queue_bytes": "Encoded bytes of the outgoing frames queued per session (plus the one being written); "
                        "senders wait (or pushes are dropped) when the next frame would pass it.",
    "max_subscriptions": "Topic patterns one session may hold (duplicates and `#`/`**` spellings count once); a "
                         "SUBSCRIBE past it is refused whole with LIMIT_EXCEEDED, not fatal (messages §5).",
    "recv_queue": "Received requests queued for the handler per session.",
}

# A pool's connection limits (limits §4): local policy, not protocol, but what a client meets. Defaults
# come from the [server] config section so that the table cannot drift from the code (issue 14).
SERVER_LIMIT_DOCS = {
    "max_pending": "sockets accepted but not through the Gelato handshake (TLS, upgrade, HELLO/READY), in all: "
                   "a new socket is closed unread",
    "max_pending_per_address": "the same, per address: closed unread",
    "max_connections": "sockets in the handshake or in a session, in all: ERROR `too_many_connections` (close "
                       "1013) before the HELLO",
    "max_connections_per_address": "the same, per address: ERROR `too_many_connections` before the HELLO",
}

BOUNDS = {name: getattr(m, name) for name in (
    "MAX_NAME", "MAX_CAPABILITIES", "MAX_META_ENTRIES", "MAX_META_VALUE", "MAX_TOPIC", "MAX_TOPICS",
    "MAX_ENDPOINTS", "MAX_ENDPOINT", "MAX_PAGE", "MAX_CURSOR", "MAX_DESCRIPTOR_RECORD", "MAX_TTL_S", "MAX_HOPS",
    "MAX_QUERY_BUDGET", "MAX_SIGNED_RECORD")}

BOUND_DOCS = {
    "MAX_NAME": "Names: network, pool name, capability, metadata key (bytes of UTF-8).",
    "MAX_CAPABILITIES": "Capabilities per node, query or descriptor.",
    "MAX_META_ENTRIES": "Metadata entries per node or query.",
    "MAX_META_VALUE": "Bytes (UTF-8) per metadata value.",
    "MAX_TOPIC": "Bytes (UTF-8) per event topic or pattern.",
    "MAX_TOPICS": "Patterns per SUBSCRIBE or UNSUBSCRIBE.",
    "MAX_ENDPOINTS": "Listen endpoints per HELLO or descriptor.",
    "MAX_ENDPOINT": "Bytes (UTF-8) per endpoint URL.",
    "MAX_PAGE": "Largest page size (limit) of QUERY and LOOKUP.",
    "MAX_CURSOR": "Bytes per paging cursor.",
    "MAX_DESCRIPTOR_RECORD": "Bytes per signed descriptor record.",
    "MAX_TTL_S": "Largest lease TTL a message can carry, in seconds.",
    "MAX_HOPS": "Largest hop count of a relayed QUERY or EVENT.",
    "MAX_QUERY_BUDGET": "Largest fan-out budget of a QUERY: peer QUERYs it may still cause (peering §4).",
    "MAX_SIGNED_RECORD": "Bytes per signed record of any kind (records.md §9 bounds each kind).",
}

# How each field kind of the message schema is checked (messages §1.2).
KIND_DOCS = {
    "str": "msgpack str (valid UTF-8); min_len/max_len count bytes of its UTF-8 encoding (not code points); "
           "choices lists the allowed values.",
    "bin": "msgpack bin; min_len/max_len count bytes (equal values mean an exact length).",
    "uint": "msgpack integer >= 0 (bool is not an integer); min and max are inclusive; no max means up to 2^64-1.",
    "bool": "msgpack true or false.",
    "list": "msgpack array of item; min_len/max_len count elements; items are checked in order.",
    "strmap": f"msgpack map of str to str; max_len counts entries; keys 1..{m.MAX_NAME} bytes, "
              f"values 0..{m.MAX_META_VALUE} bytes (UTF-8).",
    "struct": "msgpack map checked against the named struct's schema (same rules as a body).",
    "anymap": "msgpack map with any content (keys are strings, as everywhere in the body).",
    "any": "any msgpack value the frame rules allow.",
}

# The receiver's checks, in the order they are made (framing §5, handshake §5). The first
# failing check decides the error code, so every implementation rejects a frame the same way.
# A signed frame runs the checks marked "signed" and "both", a session frame those marked
# "session" and "both", each path in table order. F17, F18 and S1 (v1's sid) are retired.
# (id, stage, frames, check, codes, whether the ERROR carries re = the frame's id)
CHECKS: tuple[tuple[str, str, str, str, tuple[ErrorCode, ...], bool], ...] = (
    ("H1", "handshake", "both", "A frame arrives when the handshake expects none: at the opener before it sent "
     "HELLO, or after the handshake failed (or, at a sans-IO handshake object, succeeded: from then on the "
     "session decodes, S3). Checked before F1.", (E.UNEXPECTED_MESSAGE,), False),
    ("F1", "frame", "both", "The WebSocket message is a text message.", (E.TEXT_FRAME,), False),
    ("F2", "frame", "both", "The message is longer than max_frame_size bytes.", (E.FRAME_TOO_LARGE,), False),
    ("F3", "frame", "both", "The message is not exactly one valid msgpack value (empty, truncated, trailing bytes, "
     "more than 1024 nested arrays), or it contains at any depth a str of 1 or more bytes, a map of 1 or more "
     "entries, an array of more than 3 elements or an ext value.", (E.MALFORMED_FRAME,), False),
    ("F4", "frame", "both", "The value is not an array of exactly 3 elements.", (E.MALFORMED_FRAME,), False),
    ("F5", "frame", "both", "Element 0 (version) is not an integer.", (E.MALFORMED_FRAME,), False),
    ("F6", "frame", "both", f"The version is not {codec.VERSION}.", (E.UNSUPPORTED_VERSION,), False),
    ("F7", "frame", "both", f"Element 1 (payload) is not a bin, or element 2 (auth) is not a bin of {codec.SIG_LEN} "
     f"bytes (a signed frame) or {codec.MAC_LEN} bytes (a session frame).", (E.MALFORMED_FRAME,), False),
    ("F23", "frame", "both", "The kind of frame (the auth length) is not the one the state expects: a session frame "
     "before the session is established (handshake frames, a connection's first frame). A signed frame inside a "
     "session goes on through the signed checks and is judged by S3.", (E.UNEXPECTED_MESSAGE,), False),
    ("F8", "signed", "signed", "A verification key is already known (READY at the answerer; a signed frame inside "
     "a session) and the signature does not verify with it over SIGN_PREFIX || payload.", (E.BAD_SIGNATURE,), False),
    ("F24", "session", "session", "The MAC is not keyed-BLAKE2b-128 of the payload under the receiver's key for "
     "the sender's direction (handshake §6); compared in constant time, before the payload is parsed.",
     (E.BAD_MAC,), False),
    ("F9", "frame", "both", "Parsing the payload meets a defect. First its structure, before any value is built: "
     "the payload is not exactly one complete msgpack value (a str, bin, ext, array or map whose declared "
     "length the bytes that follow cannot hold, bytes after the value, a byte that starts no msgpack type): "
     "MALFORMED_FRAME; more than 1024 nested arrays and maps (the payload map is level 1): LIMIT_EXCEEDED; the "
     "first such fault decides. Then, in byte order: a str or bin longer than max_str_len or max_bin_len "
     "(judged at its last byte, before its UTF-8), an array or map longer than max_array_len or max_map_len "
     "(judged at its header): LIMIT_EXCEEDED; invalid UTF-8, an ext value, an array or map as a map key: "
     "MALFORMED_FRAME; two equal keys in one map (framing §2.6; judged when the map's last entry has been "
     "read): MALFORMED_FRAME; the first defect met decides.", (E.LIMIT_EXCEEDED, E.MALFORMED_FRAME), False),
    ("F10", "frame", "both", "The payload is not a map.", (E.MALFORMED_FRAME,), False),
    ("F11", "signed", "signed", "'from' is absent or not a bin of 32 bytes.", (E.BAD_KEY,), False),
    ("F12", "signed", "signed", "No verification key is known and the signature does not verify with 'from' over "
     "SIGN_PREFIX || payload (a 'from' that is no valid Ed25519 point fails here).", (E.BAD_SIGNATURE,), False),
    ("F13", "signed", "signed", "A verification key is known and 'from' is not that key.", (E.WRONG_SENDER,), False),
    ("F14", "frame", "both", "'id' is absent or not a bin of 16 bytes.", (E.MALFORMED_FRAME,), False),
    ("F15", "frame", "both", "'type' is absent or not a non-empty str.", (E.MALFORMED_FRAME,), True),
    ("F19", "frame", "both", "'body' is absent or not a map.", (E.MALFORMED_FRAME,), True),
    ("F20", "frame", "both", "A key of the payload map is not a str.", (E.MALFORMED_FRAME,), True),
    ("F21", "frame", "both", "Walking body depth-first in encoding order: a map or array deeper than max_depth "
     "(body is level 1) gives LIMIT_EXCEEDED, a map key that is not a str gives MALFORMED_FRAME; "
     "the first met decides.", (E.LIMIT_EXCEEDED, E.MALFORMED_FRAME), True),
    ("F16", "signed", "signed", "'ts' is absent or not an integer >= 0.", (E.MALFORMED_FRAME,), True),
    ("F22", "signed", "signed", "The time is checked (handshake frames) and |ts - now| > ts_window_ms.",
     (E.STALE_TIMESTAMP,), True),
    ("F25", "session", "session", "'seq' is absent or not an integer >= 0.", (E.MALFORMED_FRAME,), True),
    ("S2", "session", "session", "'seq' is not the next expected receive seq. Past S4 the seq is consumed (the "
     "expected seq increases by one) whatever M1 and M2 decide.", (E.BAD_SEQUENCE,), True),
    ("S3", "session", "signed", "A signed frame inside a session (after F8-F16, without the time check) is anything "
     "but an ERROR received before any session frame of the peer (receive seq 0: the answerer refusing READY, "
     "handshake §4.5). HELLO and READY included.", (E.UNEXPECTED_MESSAGE,), True),
    ("S4", "session", "session", "A session frame's type is HELLO or READY (its seq is not consumed).",
     (E.UNEXPECTED_MESSAGE,), True),
    ("H2", "handshake", "signed", "The frame is not the expected type (HELLO; READY at an answerer that has "
     "answered). Checked after F22, before M1: an unknown type is UNEXPECTED_MESSAGE here.",
     (E.UNEXPECTED_MESSAGE,), True),
    ("M1", "message", "both", "'type' is not a known message type.", (E.UNKNOWN_TYPE,), True),
    ("M2", "message", "both", "The body does not satisfy the type's schema; fields are checked in schema order.",
     (E.INVALID_BODY,), True),
    ("H3", "handshake", "signed", "READY at the answerer: echo is not the answerer's nonce.", (E.BAD_NONCE,), True),
    ("H4", "handshake", "signed", "HELLO: network is not the receiver's network.", (E.NETWORK_MISMATCH,), True),
    ("H5", "handshake", "signed", "HELLO: 'from' is the receiver's own key.", (E.SELF_CONNECTION,), True),
    ("H6", "handshake", "signed", "HELLO: the receiver pinned a key for the peer and 'from' is another key.",
     (E.PINNED_KEY_MISMATCH,), True),
    ("H7", "handshake", "signed", "HELLO: versions has no element the receiver speaks (a v1-only peer offers [1]); "
     "the message names the versions the receiver speaks.", (E.UNSUPPORTED_VERSION,), True),
    ("H8", "handshake", "signed", "HELLO: nonce equals the receiver's own nonce.", (E.BAD_NONCE,), True),
    ("H10", "handshake", "signed", "HELLO: eph equals the receiver's own ephemeral key.", (E.BAD_KEY,), True),
    ("H9", "handshake", "signed", "HELLO at the opener: echo is absent or not the opener's nonce. HELLO at the "
     "answerer: echo is present.", (E.BAD_NONCE,), True),
    ("H11", "handshake", "signed", "Deriving the keys (handshake §6: the opener after H9 on the answer, the answerer "
     "after H3 on READY): X25519 of the own ephemeral secret and the peer's eph is all zeros (a low-order eph).",
     (E.BAD_KEY,), False),
)

SIGNED_FIELDS = (
    ("type", "str", "required", "Message type name, non-empty (messages §3)."),
    ("id", f"bin ({codec.ID_LEN} bytes)", "required",
     "Random frame id, unique per sender; replies and errors cite it in body.re."),
    ("ts", "uint", "required", "Sender's clock when the frame was made, in ms since the Unix epoch."),
    ("from", f"bin ({codec.KEY_LEN} bytes)", "required", "Sender's Ed25519 public key; the signature verifies with it."),
    ("body", "map", "required", "Message fields, per type (messages §3)."),
)
SESSION_FIELDS = (
    ("type", "str", "required", "Message type name, non-empty (messages §3); never HELLO or READY."),
    ("id", f"bin ({codec.ID_LEN} bytes)", "required",
     "Random frame id, unique per sender; replies and errors cite it in body.re."),
    ("seq", "uint", "required", "Per-direction frame counter, 0 for the first session frame (handshake §7)."),
    ("body", "map", "required", "Message fields, per type (messages §3)."),
)


def _check_documented(what: str, documented: set, actual: set) -> None:
    missing, stale = sorted(map(str, actual - documented)), sorted(map(str, documented - actual))
    if missing or stale:
        raise SystemExit(f"gen_protocol: {what} out of date with the code: "
                         f"undocumented {missing or 'none'}, documented but gone {stale or 'none'}")


def _default(a: attrs.Attribute) -> Any:
    value = a.default
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        value = value.factory()
    if isinstance(value, tuple):
        value = list(value)
    return value


def schema(cls: type) -> dict[str, Any]:
    """cls.schema() plus the default of every optional field (null: absent)."""
    out = cls.schema()
    for a in attrs.fields(cls):
        if not out[a.name]["required"]:
            out[a.name]["default"] = _default(a)
    return out


def _limits(cls: type, docs: dict[str, str], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    fields = [a for a in attrs.fields(cls) if a.name not in skip]
    _check_documented(f"{cls.__name__} meanings", set(docs), {a.name for a in fields})
    return {a.name: {"default": a.default, "meaning": docs[a.name]} for a in fields}


def build() -> dict[str, Any]:
    _check_documented("error meanings", set(ERROR_MEANINGS), set(ErrorCode))
    _check_documented("message docs", set(MESSAGE_DOCS), set(m.MESSAGES))
    _check_documented("struct docs", set(STRUCT_DOCS), set(m.STRUCTS))
    _check_documented("families", set(FAMILIES), {cls.FAMILY for cls in m.MESSAGES.values()})
    used_kinds = {s["kind"] for cls in [*m.MESSAGES.values(), *m.STRUCTS.values()] for s in cls.schema().values()}
    _check_documented("field kinds", set(KIND_DOCS), set(KIND_DOCS) | used_kinds)
    _check_documented("bounds", set(BOUND_DOCS), set(BOUNDS))
    for name, (_, replies, _) in MESSAGE_DOCS.items():
        unknown = set(replies) - set(m.MESSAGES)
        if unknown:
            raise SystemExit(f"gen_protocol: {name} replies with unknown types {sorted(unknown)}")
    return {
        "protocol": "gelato",
        "version": codec.VERSION,
        "supported_versions": list(handshake.SUPPORTED_VERSIONS),
        "generated_by": "scripts/gen_protocol.py",
        "transport": {
            "websocket_subprotocol": SUBPROTOCOL,
            "frame_per_message": "one binary WebSocket message carries exactly one frame",
            "text_message": ErrorCode.TEXT_FRAME.name.lower(),
        },
        "signing": {
            "algorithm": "Ed25519 (RFC 8032, pure)",
            "sign_prefix": codec.SIGN_PREFIX.decode("ascii"),
            "sign_prefix_hex": codec.SIGN_PREFIX.hex(),
            "signed_bytes": "sign_prefix || payload (the bytes inside the payload bin, as received)",
            "signed_frames": sorted(codec.HANDSHAKE_TYPES) + ["ERROR sent before a session exists"],
            "signature_len": codec.SIG_LEN,
            "key_len": codec.KEY_LEN,
        },
        "mac": {
            "algorithm": "keyed BLAKE2b (RFC 7693), digest_size 16",
            "mac_len": codec.MAC_LEN,
            "key": "the sender's direction key (key_schedule)",
            "maced_bytes": "payload (the bytes inside the payload bin, as received); no prefix",
            "compare": "constant time, before the payload is parsed",
        },
        "key_schedule": {
            "ephemeral": "X25519 (RFC 7748); HELLO eph is the public key, fresh per connection",
            "eph_len": keys.EPH_LEN,
            "shared": "X25519(own_eph_secret, peer_eph); all zeros: bad_key",
            "sid": "SHA-256(opener_nonce || answerer_nonce || opener_key || answerer_key || opener_eph || "
                   "answerer_eph); never sent",
            "kdf": "HKDF-SHA256 (RFC 5869), ikm = shared, salt = sid, L = 32, one call per direction",
            "info_opener_to_answerer": keys.INFO_OPENER_TO_ANSWERER.decode("ascii"),
            "info_opener_to_answerer_hex": keys.INFO_OPENER_TO_ANSWERER.hex(),
            "info_answerer_to_opener": keys.INFO_ANSWERER_TO_OPENER.decode("ascii"),
            "info_answerer_to_opener_hex": keys.INFO_ANSWERER_TO_OPENER.hex(),
            "opener_sends_with": "k_oa (info_opener_to_answerer)",
            "answerer_sends_with": "k_ao (info_answerer_to_opener)",
        },
        "frame": {
            "encoding": "msgpack array of exactly 3 elements",
            "elements": [
                {"index": 0, "name": "version", "type": "int", "value": codec.VERSION},
                {"index": 1, "name": "payload", "type": "bin", "content": "msgpack map (signed or session payload)"},
                {"index": 2, "name": "auth", "type": "bin",
                 "len": {str(codec.SIG_LEN): "signed frame: Ed25519 signature",
                         str(codec.MAC_LEN): "session frame: MAC"}},
            ],
        },
        "payload": {
            "encoding": "msgpack map with str keys; unknown keys are ignored",
            "signed_fields": [{"name": n, "type": t, "presence": p, "meaning": s} for n, t, p, s in SIGNED_FIELDS],
            "session_fields": [{"name": n, "type": t, "presence": p, "meaning": s} for n, t, p, s in SESSION_FIELDS],
        },
        "session": {
            "nonce_len": 32,
            "seq_first": 0,
            "seq_rule": "per direction, +1 for every session frame sent; the receiver accepts exactly the next one",
        },
        "checks": [{"id": i, "stage": st, "frames": fr, "check": text, "codes": [c.name.lower() for c in codes],
                    "re": re_} for i, st, fr, text, codes, re_ in CHECKS],
        "limits": _limits(codec.Limits, CODEC_LIMIT_DOCS),
        "session_limits": _limits(SessionLimits, SESSION_LIMIT_DOCS, skip=("codec",)),
        "preauth_limits": {k: {"value": v, "meaning": PREAUTH_LIMIT_DOCS[k]} for k, v in PREAUTH_LIMITS.items()},
        "server_limits": {a.name: {"default": a.default, "meaning": SERVER_LIMIT_DOCS[a.name]}
                          for a in attrs.fields(ServerConfig) if a.name in SERVER_LIMIT_DOCS},
        "bounds": {k: {"value": v, "meaning": BOUND_DOCS[k]} for k, v in BOUNDS.items()},
        "errors": {
            "groups": {str(k * 1000): v for k, v in GROUPS.items()},
            "codes": [{"code": int(c), "name": c.name.lower(), "group": c.group, "fatal": c in FATAL_CODES,
                       "meaning": ERROR_MEANINGS[c]} for c in ErrorCode],
            "retired": {str(code): name for code, name in RETIRED_CODES.items()},
        },
        "field_kinds": KIND_DOCS,
        "messages": {t: {"family": cls.FAMILY, "kind": MESSAGE_DOCS[t][0], "replies": list(MESSAGE_DOCS[t][1]),
                         "meaning": MESSAGE_DOCS[t][2], "body": schema(cls)}
                     for t, cls in m.MESSAGES.items()},
        "structs": {n: {"meaning": STRUCT_DOCS[n], "fields": schema(cls)} for n, cls in m.STRUCTS.items()},
        "descriptor": {
            "specified_by": "discovery",
            "sign_prefix": d.SIGN_PREFIX.decode("ascii"),
            "sign_prefix_hex": d.SIGN_PREFIX.hex(),
            "signed_bytes": "sign_prefix || record (the msgpack-encoded record bytes)",
            "record": schema(d.Descriptor),
            "max_record_fields": d.MAX_RECORD_FIELDS,
            "max_lifetime_ms": d.MAX_LIFETIME_MS,
            "max_skew_ms": d.MAX_SKEW_MS,
        },
    }


def render_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=True) + "\n"


# --- markdown tables ---------------------------------------------------------------------------

def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _code(name: str) -> str:
    return f"`{name}`"


def _bounds(f: dict[str, Any]) -> str:
    k = f["kind"]
    unit = {"str": " bytes", "bin": " bytes", "list": " items", "strmap": " entries"}.get(k, "")
    lo, hi = f.get("min_len"), f.get("max_len")
    parts = []
    if lo is not None and lo == hi:
        parts.append(f"exactly {lo}{unit}")
    elif lo or hi is not None:
        parts.append(f"{lo or 0}..{hi}{unit}" if hi is not None else f">= {lo}{unit}")
    if "min" in f:  # uint lower bound
        parts.append(f"{f['min']}..{f['max']}" if "max" in f else f">= {f['min']}")
    elif "max" in f:
        parts.append(f"<= {f['max']}")
    if "choices" in f:
        parts.append("one of " + ", ".join(_code(c) for c in f["choices"]))
    if "item" in f:
        parts.append(f"each item: {_type(f['item'])}" + (f" {_bounds(f['item'])}" if _bounds(f["item"]) else ""))
    return "; ".join(parts)


def _type(f: dict[str, Any]) -> str:
    k = f["kind"]
    if k == "list":
        return f"array of {_type(f['item'])}"
    if k == "struct":
        return f"[{f['struct']}](#{f['struct'].lower()})"
    return {"strmap": "map str->str", "anymap": "map", "uint": "uint"}.get(k, k)


def _default_text(f: dict[str, Any]) -> str:
    if f["required"]:
        return "required"
    v = f["default"]
    return "absent" if v is None else "`" + json.dumps(v) + "`"


def _field_table(fields: dict[str, Any]) -> list[str]:
    if not fields:
        return ["Empty body: `{}` (unknown keys are ignored)."]
    rows = ["| field | type | bounds | default |", "|---|---|---|---|"]
    for name, f in fields.items():
        rows.append(f"| `{name}` | {_type(f)} | {_bounds(f)} | {_default_text(f)} |")
    return rows


def md_messages(spec: dict[str, Any]) -> str:
    out: list[str] = []
    families = [f for f in FAMILIES if any(v["family"] == f for v in spec["messages"].values())]
    for i, fam in enumerate(families, 1):
        out += [f"### 3.{i} Family `{fam}`", ""]
        types = [t for t, v in spec["messages"].items() if v["family"] == fam]
        for j, t in enumerate(types, 1):
            v = spec["messages"][t]
            replies = ", ".join(f"`{r}`" for r in v["replies"]) or "none"
            out += [f"#### 3.{i}.{j} {t}", "", f"{v['meaning']}", "",
                    f"Kind: {v['kind']}. Answered by: {replies}" + (" (or ERROR)." if v["kind"] == "request" else "."),
                    "", *_field_table(v["body"]), ""]
    return "\n".join(out).rstrip() + "\n"


def md_structs(spec: dict[str, Any]) -> str:
    out: list[str] = []
    for i, (n, s) in enumerate(spec["structs"].items(), 1):
        out += [f'### <a id="{n.lower()}"></a>4.{i} {n}', "", s["meaning"], "", *_field_table(s["fields"]), ""]
    return "\n".join(out).rstrip() + "\n"


def md_kinds(spec: dict[str, Any]) -> str:
    rows = ["| kind | rule |", "|---|---|"] + [f"| `{k}` | {_cell(v)} |" for k, v in spec["field_kinds"].items()]
    return "\n".join(rows) + "\n"


def md_errors(spec: dict[str, Any]) -> str:
    rows = ["| code | name | group | fatal | meaning |", "|---|---|---|---|---|"]
    for c in spec["errors"]["codes"]:
        rows.append(f"| {c['code']} | `{c['name']}` | {c['group']} | {'yes' if c['fatal'] else 'no'} | {_cell(c['meaning'])} |")
    return "\n".join(rows) + "\n"


def _number(v: Any) -> str:
    return f"{v:_}" if isinstance(v, int) else f"{v:g}"


def _limit_table(entries: dict[str, Any]) -> list[str]:
    rows = ["| name | default | meaning |", "|---|---|---|"]
    return rows + [f"| `{k}` | {_number(v['default'])} | {_cell(v['meaning'])} |" for k, v in entries.items()]


def md_codec_limits(spec: dict[str, Any]) -> str:
    return "\n".join(_limit_table(spec["limits"])) + "\n"


def md_preauth_limits(spec: dict[str, Any]) -> str:
    rows = ["| name | default | meaning |", "|---|---|---|"]
    rows += [f"| `{k}` | {_number(v['value'])} | {_cell(v['meaning'])} |" for k, v in spec["preauth_limits"].items()]
    return "\n".join(rows) + "\n"


def md_session_limits(spec: dict[str, Any]) -> str:
    return "\n".join(_limit_table(spec["session_limits"])) + "\n"


def md_server_limits(spec: dict[str, Any]) -> str:
    rows = ["| limit | default | past it |", "|---|---|---|"]
    rows += [f"| `{k}` | {_number(v['default'])} | {_cell(v['meaning'])} |" for k, v in spec["server_limits"].items()]
    return "\n".join(rows) + "\n"


def md_bounds(spec: dict[str, Any]) -> str:
    rows = ["| name | value | applies to |", "|---|---|---|"]
    rows += [f"| `{k}` | {v['value']} | {_cell(v['meaning'])} |" for k, v in spec["bounds"].items()]
    return "\n".join(rows) + "\n"


def _checks_table(spec: dict[str, Any], stages: tuple[str, ...]) -> str:
    rows = ["| step | frames | check (fails when) | error | re |", "|---|---|---|---|---|"]
    for c in spec["checks"]:
        if c["stage"] in stages:
            codes = " / ".join(f"`{x}`" for x in c["codes"])
            rows.append(f"| {c['id']} | {c['frames']} | {_cell(c['check'])} | {codes} | "
                        f"{'frame id' if c['re'] else 'absent'} |")
    return "\n".join(rows) + "\n"


def md_decode_order(spec: dict[str, Any]) -> str:
    return _checks_table(spec, ("frame", "signed", "session", "message"))


def md_handshake_checks(spec: dict[str, Any]) -> str:
    return _checks_table(spec, ("handshake",))


# file -> {block name: renderer}
BLOCKS = {
    "messages.md": {"kinds": md_kinds, "messages": md_messages, "structs": md_structs},
    "errors.md": {"codes": md_errors},
    "limits.md": {"codec-limits": md_codec_limits, "preauth-limits": md_preauth_limits,
                  "session-limits": md_session_limits, "bounds": md_bounds, "server-limits": md_server_limits},
    "framing.md": {"decode-order": md_decode_order},
    "handshake.md": {"handshake-checks": md_handshake_checks},
}


def fill(text: str, name: str, content: str, where: str) -> str:
    begin = f"<!-- BEGIN GENERATED {name}: scripts/gen_protocol.py, do not edit -->\n"
    end = f"<!-- END GENERATED {name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"gen_protocol: {where} needs exactly one block:\n{begin}{end}")
    return pattern.sub(lambda _: begin + "\n" + content + "\n" + end, text)


def outputs() -> dict[Path, str]:
    """Every generated file with its expected content."""
    spec = build()
    out = {JSON_PATH: render_json(spec)}
    for fname, blocks in BLOCKS.items():
        path = DOCS / fname
        text = path.read_text(encoding="utf-8")
        for name, render in blocks.items():
            text = fill(text, name, render(spec), str(path))
        out[path] = text
    return out


def sync_outputs(files: dict[Path, str], *, check: bool, script: str) -> int:
    """Write the generated files that differ from what is on disk; with check, only report them (exit 1)."""
    stale = []
    for path, text in files.items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if check and stale:
        print(f"stale (run {script}):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = ap.parse_args(argv)
    return sync_outputs(outputs(), check=args.check, script="scripts/gen_protocol.py")


if __name__ == "__main__":
    sys.exit(main())
