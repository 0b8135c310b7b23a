"""Frame encoding, signing/MACing and strict, bounded decoding/authentication (no I/O).

Wire form (Gelato v2): msgpack array ``[2, payload, auth]``; payload is a msgpack bin holding the
encoded payload map; the length of `auth` says what kind of frame it is. A *signed frame* (HELLO,
READY, a sessionless ERROR: the frames that carry identity) has a 64-byte Ed25519 signature over
``b"gelato/v2\\0" + payload`` and a header with `from` and `ts`. A *session frame* (everything after
the handshake) has a 16-byte keyed-BLAKE2b MAC of the payload under the sender's direction key
(handshake.py derives it) and a header of type, id and seq only: the key already proves who sent
it and in which session, so `from`, `sid` and `ts` are not repeated. Authenticating the encoded
bytes means no canonical encoding is needed.

Decoding runs in two steps so a session can consume a sequence number before judging the body:
`decode_envelope` / `decode_session_envelope` (size, structure, authentication, header) then
`parse_message` (type and body).

What a frame can make the decoder allocate: msgpack's C unpacker builds a list of the *declared*
length at every array (and map) header, before it has seen one element, and keeps up to ~1000 of
them open at once; a 4 KB frame of nested array headers that lie made it hold ~80 MB. A payload
that is one complete msgpack value backs every declared count with at least one byte per element,
so what it allocates grows with its size. `_unpack_payload` therefore proves completeness first with
msgpack's skip (C speed, builds nothing) whenever a lie could cost more than `_LIE_BUDGET`; smaller
payloads are covered for free by capping declared counts at the payload size (which no complete
value exceeds). Frames before a session get `preauth_limits`, far tighter than a session's.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from math import isqrt
from typing import Any

import attrs
import msgpack

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import parse_body, parse_proven
from galaxynode.identity import Identity, verify

VERSION = 2
SUPPORTED_VERSIONS = (VERSION,)
SIGN_PREFIX = b"gelato/v2\0"
KEY_LEN, ID_LEN, SIG_LEN, MAC_LEN = 32, 16, 64, 16
_SIGNED_KEYS = frozenset(("type", "id", "ts", "from", "body"))
_SESSION_KEYS = frozenset(("type", "id", "seq", "body"))
HANDSHAKE_TYPES = frozenset(("HELLO", "READY"))


@attrs.frozen
class Limits:
    """Decoder bounds; every one is configurable (config section [limits])."""

    max_frame_size: int = 1024 * 1024
    max_str_len: int = 64 * 1024
    max_bin_len: int = 1024 * 1024
    max_array_len: int = 10_000
    max_map_len: int = 1_000
    max_depth: int = 16
    ts_window_ms: int = 120_000


DEFAULT_LIMITS = Limits()

# Before a session (HELLO, READY, a sessionless ERROR) the peer is unauthenticated and the frames are
# small and fixed-shape: HELLO's longest list has 16 items, its body nests 2 deep. These caps leave
# room for fields a later HELLO may add, and are not configurable for the same reason the body
# bounds are not: they are part of the protocol (limits.md §1). The frame size is
# [limits] preauth_frame_size (default 4096).
PREAUTH_FRAME_SIZE = 4096
PREAUTH_MAX_ARRAY_LEN = 32
PREAUTH_MAX_MAP_LEN = 32
PREAUTH_MAX_DEPTH = 4


def preauth_limits(limits: Limits = DEFAULT_LIMITS, frame_size: int = PREAUTH_FRAME_SIZE) -> Limits:
    """The decoder bounds for frames received before a session exists: each no looser than `limits`."""
    return attrs.evolve(limits, max_frame_size=min(limits.max_frame_size, frame_size),
                        max_str_len=min(limits.max_str_len, frame_size),
                        max_bin_len=min(limits.max_bin_len, frame_size),
                        max_array_len=min(limits.max_array_len, PREAUTH_MAX_ARRAY_LEN),
                        max_map_len=min(limits.max_map_len, PREAUTH_MAX_MAP_LEN),
                        max_depth=min(limits.max_depth, PREAUTH_MAX_DEPTH))


@attrs.define(slots=True)
class Frame:
    """An authenticated frame. `msg` is None until parse_message has run. A session frame carries
    no `ts` (None) and no `from`: `sender` and `sid` are the session's."""

    type: str
    id: bytes
    ts: int | None
    sender: bytes
    sid: bytes | None
    seq: int | None
    body: Any
    size: int
    msg: Any = None
    _parsed: Any = attrs.field(default=None, repr=False, eq=False)  # body already parsed by decode_envelope


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(ErrorCode.MALFORMED_FRAME, f"extension type {code} not allowed")


def _no_duplicates(pairs: list) -> dict:
    """Two decoders could disagree on which of two equal keys wins; a signed frame must mean one thing."""
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "duplicate map key")
    return d


def _unpack_error(exc: Exception, *, limits_apply: bool = True) -> ProtocolError:
    """Map msgpack's zoo of exceptions to a code. Only the payload has configurable limits; the
    outer array is fixed-shape, so anything msgpack rejects there is simply malformed."""
    if isinstance(exc, ProtocolError):
        return exc
    text = str(exc)
    if "max_ext_len" in text:  # non-empty ext data trips the length bound before ext_hook runs
        return ProtocolError(ErrorCode.MALFORMED_FRAME, "extension types not allowed")
    if limits_apply and isinstance(exc, msgpack.StackError):
        return ProtocolError(ErrorCode.LIMIT_EXCEEDED, "msgpack limit: nesting too deep")
    if limits_apply and "exceeds max" in text:
        return ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"msgpack limit: {text}")
    return ProtocolError(ErrorCode.MALFORMED_FRAME, f"invalid msgpack: {type(exc).__name__}: {text}"[:200])


# A payload that is not one complete value may pre-allocate, at its open container headers, lists it
# never fills: at most this many bytes of them before `_unpack_payload` insists on the skip pass.
_LIE_BUDGET = 256 * 1024
_SLOT = 8  # bytes per pre-allocated list slot (a pointer)
# Up to this size the count caps alone keep a lie within budget: at most size/3 big headers (3 bytes
# each, the fix* ones hold at most 15) of at most `size` slots each.
_SMALL_PAYLOAD = isqrt(3 * _LIE_BUDGET // _SLOT)
# Every byte but the array16/32 and map16/32 markers: deleting them leaves the markers to count.
_NOT_BIG_HEADER = bytes(b for b in range(256) if not 0xdc <= b <= 0xdf)


def _check_whole(payload: bytes) -> None:
    """The payload is exactly one complete msgpack value (framing §5, F9), proven without building
    it: skip() runs the same parser with object construction off. A declared length the remaining
    bytes cannot hold, bytes after the value or a byte that starts no type are malformed; nesting
    beyond the parser's stack is a limit."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(payload), 1))
    unpacker.feed(payload)
    try:
        unpacker.skip()
    except msgpack.StackError:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, "msgpack limit: nesting too deep") from None
    except Exception as e:  # OutOfData (a declared length that the bytes do not back), FormatError
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, f"invalid msgpack: {type(e).__name__}") from None
    if unpacker.tell() != len(payload):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "invalid msgpack: bytes after the payload")


def _unpack_payload(payload: bytes, limits: Limits) -> Any:
    """Unpack the payload, allocating O(its size) whatever it declares. A complete value cannot hold
    more array elements than bytes or more map entries than half its bytes, so capping the counts
    there changes no verdict (a header past the cap is an incomplete value, judged by _check_whole).
    Whether the skip pass runs first changes no verdict either, only what a lie can cost: it runs
    when the array16/32 and map16/32 marker bytes (an upper bound on such headers) could pre-allocate
    more than _LIE_BUDGET, which a typical frame's few random key bytes do not."""
    size = len(payload)
    max_array, max_map = min(limits.max_array_len, size), min(limits.max_map_len, size // 2)
    if (size > _SMALL_PAYLOAD
            and len(payload.translate(None, _NOT_BIG_HEADER)) * _SLOT * max(max_array, max_map) > _LIE_BUDGET):
        _check_whole(payload)
    try:
        return msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False,
                               max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
                               max_array_len=max_array, max_map_len=max_map,
                               max_ext_len=0, ext_hook=_no_ext, object_pairs_hook=_no_duplicates)
    except Exception as e:
        _check_whole(payload)  # a structural fault is the verdict, whatever else the payload holds
        raise _unpack_error(e) from None


def _check_shape(value: Any, depth: int, max_depth: int) -> None:
    """Nesting bound and string-only map keys for the untrusted body, in document order (the first
    fault found decides the code). Exact type() tests suffice: msgpack builds only dict, list and
    str here, and they are cheaper than isinstance on every value of every frame."""
    if depth > max_depth:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"nesting deeper than {max_depth}")
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise ProtocolError(ErrorCode.MALFORMED_FRAME, "map keys must be strings")
            if type(v) is dict or type(v) is list:
                _check_shape(v, depth + 1, max_depth)
    else:
        for v in value:
            if type(v) is dict or type(v) is list:
                _check_shape(v, depth + 1, max_depth)


class MacKey:
    """One direction's MAC key with the keyed BLAKE2b state precomputed: copying it costs less than
    absorbing the key block again for every frame (~0.5 us against ~0.75 us for a 60-byte payload)."""

    __slots__ = ("key", "_base")

    def __init__(self, key: bytes):
        self.key = key
        self._base = hashlib.blake2b(key=key, digest_size=MAC_LEN)

    def tag(self, payload: bytes) -> bytes:
        h = self._base.copy()
        h.update(payload)
        return h.digest()


def mac(key: bytes, payload: bytes) -> bytes:
    """The session-frame MAC: keyed BLAKE2b (RFC 7693), 16-byte digest, over the payload bytes."""
    return hashlib.blake2b(payload, key=key, digest_size=MAC_LEN).digest()


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _frame(payload: bytes, auth: bytes, limits: Limits) -> bytes:
    """`[2, payload, auth]`, msgpack-encoded by hand: what packb would write, minus a call."""
    data = b"".join((b"\x93\x02", _bin_header(len(payload)), payload, _bin_header(len(auth)), auth))
    if len(data) > limits.max_frame_size:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame of {len(data)} bytes exceeds {limits.max_frame_size}")
    return data


def encode_frame(identity: Identity, msg: Any, *, ts: int | None = None, frame_id: bytes | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A signed frame (HELLO, READY, a sessionless ERROR)."""
    payload = {
        "type": msg.TYPE,
        "id": frame_id if frame_id is not None else os.urandom(ID_LEN),
        "ts": ts if ts is not None else now_ms(),
        "from": identity.public,
        "body": msg.to_body(),
    }
    return sign_payload(identity, msgpack.packb(payload, use_bin_type=True), limits)


def sign_payload(identity: Identity, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Frame already-encoded payload bytes as a signed frame; test vectors use it to craft odd payloads."""
    return _frame(payload, identity.sign(SIGN_PREFIX + payload), limits)


def encode_session_frame(key: MacKey, msg: Any, *, seq: int, frame_id: bytes | None = None,
                         limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A session frame: header type, id, seq; MAC under the sender's direction key."""
    payload = msgpack.packb({"type": msg.TYPE, "id": frame_id if frame_id is not None else os.urandom(ID_LEN),
                             "seq": seq, "body": msg.to_body()}, use_bin_type=True)
    return _frame(payload, key.tag(payload), limits)


def mac_payload(key: MacKey, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Frame already-encoded payload bytes as a session frame (test vectors, conformance probes)."""
    return _frame(payload, key.tag(payload), limits)


def _split_fast(data: Any, max_size: int) -> tuple[bytes, bytes] | None:
    """The outer array exactly as encoders write it (fixarray 3, fixint 2, bin8/bin16 payload, bin8
    auth of 16 or 64 bytes, nothing after), read by hand; None for anything else, which the general
    path then judges. Whatever this accepts the general path would return alike: it only skips a
    msgpack call with its limits on every frame."""
    if type(data) is not bytes or not 6 <= len(data) <= max_size or data[0] != 0x93 or data[1] != 2:
        return None
    marker = data[2]
    if marker == 0xc4:
        start = 4
        end = start + data[3]
    elif marker == 0xc5:
        start = 5
        end = start + int.from_bytes(data[3:5], "big")
    else:
        return None
    if end + 2 > len(data) or data[end] != 0xc4 or data[end + 1] not in (MAC_LEN, SIG_LEN) \
            or end + 2 + data[end + 1] != len(data):
        return None
    return data[start:end], data[end + 2:]


def split_frame(data: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, bytes]:
    """Size, outer structure and version: the payload bytes and the auth bytes (64: signature,
    16: MAC). Nothing is authenticated yet."""
    parts = _split_fast(data, limits.max_frame_size)
    if parts is not None:
        return parts
    if isinstance(data, str):
        raise ProtocolError(ErrorCode.TEXT_FRAME, "text messages are not Gelato frames")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frame must be bytes")
    size = len(data)
    if size > limits.max_frame_size:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes exceeds {limits.max_frame_size}")
    try:
        outer = msgpack.unpackb(data, raw=False, use_list=True, max_str_len=0, max_bin_len=size,
                                max_array_len=3, max_map_len=0, max_ext_len=0, ext_hook=_no_ext)
    except Exception as e:  # msgpack raises a zoo of types
        raise _unpack_error(e, limits_apply=False) from None
    if type(outer) is not list or len(outer) != 3:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frame must be an array [version, payload, auth]")
    version, payload, auth = outer
    if type(version) is not int:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "version must be an integer")
    if version != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"frame version {version} not supported; we speak {list(SUPPORTED_VERSIONS)}")
    if type(payload) is not bytes or type(auth) is not bytes or len(auth) not in (SIG_LEN, MAC_LEN):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME,
                            f"payload must be bin and auth {SIG_LEN} (signature) or {MAC_LEN} (MAC) bytes of bin")
    return payload, auth


def _unpack_map(payload: bytes, limits: Limits) -> dict:
    p = _unpack_payload(payload, limits)
    if type(p) is not dict:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "payload must be a map")
    return p


def _finish(p: dict, known: frozenset, limits: Limits) -> tuple[bytes, str, Any, Any]:
    """The header fields both kinds share (id, type, body) and the body's shape."""
    fid, ftype, body = p.get("id"), p.get("type"), p.get("body")
    if type(fid) is not bytes or len(fid) != ID_LEN:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "'id' must be 16 bytes")
    if type(ftype) is not str or not ftype:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "'type' must be a non-empty string", fid)
    if type(body) is not dict:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "'body' must be a map", fid)
    if not p.keys() <= known:  # other keys are allowed (and ignored) but must be strings too
        for k in p:
            if type(k) is not str:
                raise ProtocolError(ErrorCode.MALFORMED_FRAME, "map keys must be strings", fid)
    msg = parse_proven(ftype, body, limits.max_depth)  # most schemas prove the body's shape themselves
    if msg is None:
        try:
            _check_shape(body, 1, limits.max_depth)
        except ProtocolError as e:
            e.ref = fid
            raise
    return fid, ftype, body, msg


def open_signed(payload: bytes, sig: bytes, size: int, limits: Limits = DEFAULT_LIMITS, *,
                expected_key: bytes | None = None, now: int | None = None) -> Frame:
    """Signature and header checks of a signed frame split by split_frame. With expected_key (the
    peer is known) the signature is checked before the payload is even unpacked."""
    signed = SIGN_PREFIX + payload
    if expected_key is not None and not verify(expected_key, sig, signed):
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "signature does not verify with the peer's key")
    p = _unpack_map(payload, limits)
    sender = p.get("from")
    if type(sender) is not bytes or len(sender) != KEY_LEN:
        raise ProtocolError(ErrorCode.BAD_KEY, "'from' must be a 32-byte key")
    if expected_key is None:
        if not verify(sender, sig, signed):
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "signature does not verify with 'from'")
    elif sender != expected_key:
        raise ProtocolError(ErrorCode.WRONG_SENDER, "'from' is not the peer's key")
    ts = p.get("ts")
    fid, ftype, body, msg = _finish(p, _SIGNED_KEYS, limits)
    if type(ts) is not int or ts < 0:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "'ts' must be a non-negative integer", fid)
    if now is not None and abs(ts - now) > limits.ts_window_ms:
        raise ProtocolError(ErrorCode.STALE_TIMESTAMP, f"timestamp off by {ts - now} ms", fid)
    return Frame(ftype, fid, ts, sender, None, None, body, size, None, msg)


def open_session(payload: bytes, tag: bytes, size: int, key: MacKey, limits: Limits = DEFAULT_LIMITS, *,
                 sender: bytes = b"", sid: bytes | None = None) -> Frame:
    """MAC and header checks of a session frame split by split_frame; the MAC is checked before the
    payload is unpacked. Sequence policy is the session's (handshake.Session.decode)."""
    if not hmac.compare_digest(key.tag(payload), tag):
        raise ProtocolError(ErrorCode.BAD_MAC, "MAC does not verify with the session's receive key")
    p = _unpack_map(payload, limits)
    seq = p.get("seq")
    fid, ftype, body, msg = _finish(p, _SESSION_KEYS, limits)
    if type(seq) is not int or seq < 0:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "'seq' must be a non-negative integer", fid)
    return Frame(ftype, fid, None, sender, sid, seq, body, size, None, msg)


def decode_envelope(data: Any, limits: Limits = DEFAULT_LIMITS, *, expected_key: bytes | None = None,
                    now: int | None = None) -> Frame:
    """A signed frame (handshake, sessionless ERROR): structure, signature, header. A session frame
    here (there is no session key to check it with) is unexpected_message."""
    payload, auth = split_frame(data, limits)
    if len(auth) != SIG_LEN:
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a session frame (MAC) outside a session")
    return open_signed(payload, auth, len(data), limits, expected_key=expected_key, now=now)


def decode_session_envelope(data: Any, key: MacKey, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """A session frame under `key`: structure, MAC, header (a signed frame is unexpected_message)."""
    payload, auth = split_frame(data, limits)
    if len(auth) != MAC_LEN:
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a signed frame inside a session")
    return open_session(payload, auth, len(data), key, limits)


def parse_message(frame: Frame) -> Frame:
    msg = frame._parsed
    if msg is None:
        try:
            msg = parse_body(frame.type, frame.body)
        except ProtocolError as e:
            e.ref = frame.id
            raise
    frame.msg = msg
    return frame


def decode_frame(data: Any, limits: Limits = DEFAULT_LIMITS, *, expected_key: bytes | None = None,
                 now: int | None = None) -> Frame:
    """Full decode of a signed frame: every rejection is a ProtocolError carrying its code."""
    return parse_message(decode_envelope(data, limits, expected_key=expected_key, now=now))
