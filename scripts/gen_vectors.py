#!/usr/bin/env python3
"""Write the Gelato test vectors in ``protocol/vectors/`` (format: protocol/vectors/README.md).

Everything is fixed (keys from constant seeds, frame ids derived from vector names, timestamps,
nonces) and Ed25519 signatures are deterministic, so the files are reproducible byte for byte.
Every vector is checked against the reference decoder before it is written: a vector the code
disagrees with stops the run instead of landing in the files.

    .venv/bin/python scripts/gen_vectors.py           # rewrite the files
    .venv/bin/python scripts/gen_vectors.py --check   # exit 1 if any file is stale
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import attrs
import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_protocol import sync_outputs  # noqa: E402  (writes or checks generated files)
from galaxynode.descriptor import Descriptor, sign_descriptor  # noqa: E402
from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.codec import DEFAULT_LIMITS, SIGN_PREFIX, decode_frame, encode_frame, sign_payload  # noqa: E402
from galaxynode.gelato.errors import ErrorCode, ProtocolError  # noqa: E402
from galaxynode.gelato.handshake import Handshake, Session, derive_sid  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402

OUT = ROOT / "protocol" / "vectors"
E = ErrorCode

TS = 1_700_000_000_000
WINDOW = DEFAULT_LIMITS.ts_window_ms
SEEDS = {"a": b"\x01" * 32, "b": b"\x02" * 32, "c": b"\x03" * 32}
KEYS = {name: Identity.from_seed(seed) for name, seed in SEEDS.items()}
A, B, C = (KEYS[k].public for k in "abc")
NETWORK = "testnet"
AGENT = "gelato-vectors/1"
NONCE_A = bytes(range(0, 32))    # opener
NONCE_B = bytes(range(32, 64))   # answerer
SID = derive_sid(NONCE_A, NONCE_B, A, B)
OTHER_SID = hashlib.sha256(b"another session").digest()
DROP = object()


class Raw(bytes):
    """Pre-encoded msgpack, spliced into a hand-built map as is."""


def fid(name: str) -> bytes:
    """Frame ids derive from vector names, so adding a vector does not renumber the others."""
    return hashlib.sha256(b"gelato-vector/" + name.encode()).digest()[:16]


def enc(value: Any) -> bytes:
    return bytes(value) if isinstance(value, Raw) else msgpack.packb(value, use_bin_type=True)


def pmap(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map from ordered pairs whose keys or values may be Raw."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(enc(k) + enc(v) for k, v in pairs)


def payload(name: str, *, type: Any = "PING", ts: Any = TS, sender: Any = A, body: Any = None,
            sid: Any = DROP, seq: Any = DROP, id: Any = None, extra: list[tuple[Any, Any]] = ()) -> bytes:
    """Payload bytes in the reference encoder's key order; DROP leaves a field out."""
    fields = [("type", type), ("id", fid(name) if id is None else id), ("ts", ts), ("from", sender),
              ("sid", sid), ("seq", seq), ("body", {} if body is None else body)]
    return pmap([(k, v) for k, v in fields if v is not DROP] + list(extra))


def frame(version: Any, pl: Any, sig: Any) -> bytes:
    return msgpack.packb([version, pl, sig], use_bin_type=True)


def signed(key: str, pl: bytes) -> bytes:
    return sign_payload(KEYS[key], pl)


def sig(key: str, pl: bytes) -> bytes:
    return KEYS[key].sign(SIGN_PREFIX + pl)


def to_json(value: Any) -> Any:
    """JSON form of decoded msgpack: bin as lowercase hex, arrays as lists."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def nested(depth: int) -> dict:
    """A body whose nesting depth is `depth` (the body itself is level 1)."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


# --- decoder contexts ----------------------------------------------------------------------------

def frame_ctx(now: int | None = TS, expected_key: bytes | None = None, **limits: int) -> dict:
    return {"now": now, "expected_key": expected_key.hex() if expected_key else None, "limits": limits}


def session_ctx(local: str = "b", peer: bytes = A, recv_seq: int = 0, sid: bytes = SID) -> dict:
    return {"local": local, "peer_key": peer.hex(), "sid": sid.hex(), "recv_seq": recv_seq}


def hs_ctx(side: str = "answerer", *, local: str | None = None, now: int = TS + 1, network: str = NETWORK,
           nonce: bytes | None = None, versions: tuple[int, ...] = (1,), pinned_key: bytes | None = None,
           prior: tuple[bytes, ...] = (), initiate: bool = True) -> dict:
    opener = side == "opener"
    return {"side": side, "local": local or ("a" if opener else "b"), "role": "node" if opener else "pool",
            "network": network, "nonce": (nonce or (NONCE_A if opener else NONCE_B)).hex(),
            "versions": list(versions), "pinned_key": pinned_key.hex() if pinned_key else None,
            "now": now, "initiate": initiate if opener else None, "prior": [p.hex() for p in prior]}


# --- running a vector through the reference decoder ---------------------------------------------

def vector_input(v: dict) -> bytes | str:
    if "frame" in v:  # valid vectors
        return bytes.fromhex(v["frame"])
    return v["input"]["text"] if "text" in v["input"] else bytes.fromhex(v["input"]["binary"])


def make_session(ctx: dict) -> Session:
    return Session(KEYS[ctx["local"]], bytes.fromhex(ctx["peer_key"]), None, bytes.fromhex(ctx["sid"]),
                   False, DEFAULT_LIMITS, recv_seq=ctx["recv_seq"])


def make_handshake(ctx: dict) -> Handshake:
    hs = Handshake(KEYS[ctx["local"]], opener=ctx["side"] == "opener", network=ctx["network"], role=ctx["role"],
                   pinned_key=bytes.fromhex(ctx["pinned_key"]) if ctx["pinned_key"] else None,
                   versions=tuple(ctx["versions"]), clock=lambda: ctx["now"], agent=AGENT,
                   nonce=bytes.fromhex(ctx["nonce"]))
    if ctx["side"] == "opener" and ctx["initiate"]:
        hs.initiate()
    for p in ctx["prior"]:
        hs.receive(bytes.fromhex(p))
    return hs


def run(v: dict, session: Session | None = None) -> Any:
    """Feed the vector to the decoder its context describes. Raises ProtocolError."""
    data, ctx = vector_input(v), v["context"]
    if v["decoder"] == "frame":
        limits = attrs.evolve(DEFAULT_LIMITS, **ctx["limits"])
        key = bytes.fromhex(ctx["expected_key"]) if ctx["expected_key"] else None
        return decode_frame(data, limits, expected_key=key, now=ctx["now"])
    if v["decoder"] == "session":
        return (session or make_session(ctx)).decode(data)
    if v["decoder"] == "handshake":
        return make_handshake(ctx).receive(data)
    raise ValueError(f"unknown decoder {v['decoder']!r}")


# --- vector builders -----------------------------------------------------------------------------

def content(msg: Any, sender: bytes, ts: int, frame_id: bytes, sid: bytes | None, seq: int | None) -> dict:
    return {"type": msg.TYPE, "id": frame_id.hex(), "ts": ts, "from": sender.hex(),
            "sid": sid.hex() if sid else None, "seq": seq, "body": to_json(msg.to_body())}


def valid(name: str, description: str, sender: str, msg: Any, *, ts: int = TS, sid: bytes | None = None,
          seq: int | None = None, decoder: str = "frame", context: dict | None = None,
          body: dict | None = None, raw: bytes | None = None) -> dict:
    """A valid frame. `body` overrides the encoded body (raw: the whole payload) for odd-but-valid cases."""
    frame_id = fid(name)
    key = KEYS[sender]
    if raw is not None:
        data = sign_payload(key, raw)
    elif body is not None:
        data = sign_payload(key, payload(name, type=msg.TYPE, ts=ts, sender=key.public, body=body))
    else:
        data = encode_frame(key, msg, sid=sid, seq=seq, ts=ts, frame_id=frame_id)
    _, pl, signature = msgpack.unpackb(data)
    c = content(msg, key.public, ts, frame_id, sid, seq)
    if body is not None:
        c["body"] = to_json(body)
    v = {"name": name, "description": description, "sender": sender, "frame": data.hex(), "payload": pl.hex(),
         "signature": signature.hex(), "decoder": decoder, "context": context or frame_ctx(), "content": c}
    _check_valid(v)
    return v


def frame_content(frame: Any) -> dict:
    return {"type": frame.type, "id": frame.id.hex(), "ts": frame.ts, "from": frame.sender.hex(),
            "sid": frame.sid.hex() if frame.sid else None, "seq": frame.seq, "body": to_json(frame.body)}


def _check_valid(v: dict) -> None:
    result = run(v)
    if v["decoder"] != "handshake" and frame_content(result) != v["content"]:
        raise SystemExit(f"gen_vectors: {v['name']}: decodes to {frame_content(result)}")


def invalid(name: str, description: str, data: bytes | str, code: ErrorCode, step: str, *,
            ref: bytes | None = None, decoder: str = "frame", context: dict | None = None,
            recv_seq_after: int | None = None) -> dict:
    v = {"name": name, "description": description,
         "input": {"text": data} if isinstance(data, str) else {"binary": data.hex()},
         "decoder": decoder, "context": context or frame_ctx(), "step": step,
         "error": {"code": int(code), "name": code.name.lower(), "fatal": code.fatal,
                   "re": ref.hex() if ref else None}}
    session = None
    if decoder == "session":
        v["recv_seq_after"] = context["recv_seq"] if recv_seq_after is None else recv_seq_after
        session = make_session(context)
    try:
        run(v, session)
    except ProtocolError as e:
        got = (e.code, e.ref, session.recv_seq if session else None)
        want = (code, ref, v.get("recv_seq_after"))
        if got != want:
            raise SystemExit(f"gen_vectors: {name}: got {got}, declared {want} ({e})")
        return v
    raise SystemExit(f"gen_vectors: {name}: decodes without error")


# --- the vectors ---------------------------------------------------------------------------------

def descriptor(seq: int = TS) -> m.SignedDescriptor:
    desc = Descriptor(key=B, name="pool-b", network=NETWORK, endpoints=("ws://127.0.0.1:7400",),
                      capabilities=("gpu",), nodes=3, issued=TS, expires=TS + 3_600_000, seq=seq)
    return sign_descriptor(KEYS["b"], desc)


REF = fid("request")
NODE = m.NodeRecord(key=A, capabilities=("gpu", "cpu"), meta={"region": "eu-west"}, expires=TS + 60_000)


def samples() -> list[tuple[str, str, Any]]:
    """(sender, description, message): one representative of every type, in registry order."""
    desc = descriptor()
    return [
        ("a", "opening HELLO of a node", m.Hello(network=NETWORK, role="node", nonce=NONCE_A, versions=(1,),
                                                 features=("relay",), agent=AGENT)),
        ("a", "READY echoing the answerer's nonce", m.Ready(echo=NONCE_B)),
        ("a", "PING with 8 bytes of data", m.Ping(data=b"pingdata")),
        ("b", "PONG echoing the PING's data", m.Pong(data=b"pingdata")),
        ("b", "ERROR answering a request", m.Error(code=int(E.NOT_JOINED), name="not_joined",
                                                   message="no lease to renew; JOIN first", re=REF)),
        ("a", "GOODBYE with a reason", m.Goodbye(reason="shutting down")),
        ("b", "ACK of a request", m.Ack(re=REF)),
        ("a", "JOIN with capabilities and metadata", m.Join(ttl=60, capabilities=("gpu", "cpu"),
                                                             meta={"region": "eu-west", "rack": "r12"})),
        ("a", "HEARTBEAT with a new ttl", m.Heartbeat(ttl=45)),
        ("b", "LEASE granted", m.Lease(re=REF, ttl=60, expires=TS + 60_000)),
        ("a", "LEAVE (empty body)", m.Leave()),
        ("a", "QUERY across peers", m.Query(capabilities=("gpu",), meta={"region": "eu-west"}, limit=10,
                                             cursor=b"\x00" * 32, scope="peers", hops=2)),
        ("b", "QUERY_RESULT with a local and a relayed record",
         m.QueryResult(re=REF, nodes=(NODE, m.NodeRecord(key=C, expires=TS + 30_000, pool=B)),
                       cursor=C, partial=True)),
        ("a", "SUBSCRIBE to patterns", m.Subscribe(topics=("node.*", "peer.#"), peers=True)),
        ("a", "UNSUBSCRIBE", m.Unsubscribe(topics=("peer.#",))),
        ("b", "EVENT pushed to a subscriber", m.Event(topic="node.joined", event_id=fid("event"), origin=B,
                                                      ts=TS, data={"key": A.hex(), "capabilities": ["gpu"]},
                                                      hops=0)),
        ("b", "ANNOUNCE of a signed pool descriptor", m.Announce(descriptor=desc)),
        ("a", "LOOKUP by network and capability", m.Lookup(network=NETWORK, capability="gpu", limit=20)),
        ("b", "LOOKUP_RESULT with one descriptor", m.LookupResult(re=REF, descriptors=(desc,))),
        ("b", "DESCRIPTORS exchanged between pools", m.Descriptors(descriptors=(desc,))),
        ("a", "STATUS (empty body)", m.Status()),
        ("b", "STATUS_RESULT", m.StatusResult(re=REF, key=B, name="pool-b", network=NETWORK, role="pool",
                                              version="0.1.0", uptime=3600, nodes=3, peers=1)),
        ("a", "ADMIN ban for an hour", m.Admin(action="ban", key=C, duration=3600)),
        ("b", "ADMIN_RESULT listing nodes", m.AdminResult(re=REF, items=(NODE.to_body(),))),
    ]


def message_vectors() -> dict:
    out = [valid(msg.TYPE, desc, sender, msg) for sender, desc, msg in samples()]
    ping = m.Ping()
    out += [
        valid("edge/window-past", "ts exactly ts_window_ms before now is accepted", "a", ping,
              context=frame_ctx(now=TS + WINDOW)),
        valid("edge/window-future", "ts exactly ts_window_ms after now is accepted", "a", ping,
              context=frame_ctx(now=TS - WINDOW)),
        valid("edge/no-clock", "without a clock (session frames) ts is not checked", "a", ping, ts=0,
              context=frame_ctx(now=None)),
        valid("edge/depth-16", "body nested exactly max_depth deep; unknown body keys are ignored", "a", ping,
              body=nested(16)),
        valid("edge/unknown-keys", "unknown header and body keys are ignored", "a", ping,
              body={"future": [1, 2]},
              raw=payload("edge/unknown-keys", body={"future": [1, 2]}, extra=[("hint", "x")])),
        valid("edge/nil-optional", "nil for an optional field without default means absent", "a", ping,
              body={"data": None}),
        valid("edge/utf8-bytes", "str bounds count UTF-8 bytes: 32 two-byte characters (64 bytes) fit MAX_NAME",
              "a", m.Hello(network="\u00e9" * 32, role="node", nonce=NONCE_A, versions=(1,))),
        valid("edge/wide-ints", "non-minimal msgpack encodings are accepted (uint64 ts, str16 type)", "a", ping,
              raw=pmap([("type", Raw(b"\xda\x00\x04PING")), ("id", fid("edge/wide-ints")),
                        ("ts", Raw(b"\xcf" + TS.to_bytes(8, "big"))), ("from", A), ("body", {})])),
    ]
    at_limit = encode_frame(KEYS["a"], ping, ts=TS, frame_id=fid("edge/frame-size"))
    out.append(valid("edge/frame-size", "a frame of exactly max_frame_size bytes is accepted", "a", ping,
                     context=frame_ctx(max_frame_size=len(at_limit))))
    return {"description": "One valid frame per message type, then edge cases. Decoded without a session "
                           "(frame decoder); in a real exchange only HELLO, READY and ERROR travel outside one.",
            "vectors": out}


def handshake_frames() -> tuple[bytes, bytes, bytes]:
    hello_a = encode_frame(KEYS["a"], m.Hello(network=NETWORK, role="node", nonce=NONCE_A, versions=(1,), agent=AGENT),
                           ts=TS, frame_id=fid("handshake/hello-open"))
    hello_b = encode_frame(KEYS["b"], m.Hello(network=NETWORK, role="pool", nonce=NONCE_B, versions=(1,), agent=AGENT,
                                              echo=NONCE_A), ts=TS + 1, frame_id=fid("handshake/hello-answer"))
    ready = encode_frame(KEYS["a"], m.Ready(echo=NONCE_B), ts=TS + 2, frame_id=fid("handshake/ready"))
    return hello_a, hello_b, ready


def handshake_vectors() -> dict:
    hello_a, _, _ = handshake_frames()
    frames = [
        valid("handshake/hello-open", "opener a -> answerer b: HELLO without echo", "a",
              m.Hello(network=NETWORK, role="node", nonce=NONCE_A, versions=(1,), agent=AGENT),
              decoder="handshake", context=hs_ctx("answerer", now=TS + 1)),
        valid("handshake/hello-answer", "answerer b -> opener a: HELLO echoing the opener's nonce", "b",
              m.Hello(network=NETWORK, role="pool", nonce=NONCE_B, versions=(1,), agent=AGENT, echo=NONCE_A),
              ts=TS + 1, decoder="handshake", context=hs_ctx("opener", now=TS + 2)),
        valid("handshake/ready", "opener a -> answerer b: READY echoing the answerer's nonce", "a",
              m.Ready(echo=NONCE_B), ts=TS + 2, decoder="handshake",
              context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,))),
    ]
    if [bytes.fromhex(f["frame"]) for f in frames] != list(handshake_frames()):
        raise SystemExit("gen_vectors: handshake frames disagree")
    return {"description": "A full handshake between opener a (a node) and answerer b (a pool).",
            "network": NETWORK,
            "opener": {"key": "a", "public": A.hex(), "nonce": NONCE_A.hex()},
            "answerer": {"key": "b", "public": B.hex(), "nonce": NONCE_B.hex()},
            "sid_input": (NONCE_A + NONCE_B + A + B).hex(),
            "sid": SID.hex(),
            "frames": frames}


def session_vectors() -> dict:
    join_id, query_id, sub_id = fid("session/JOIN"), fid("session/QUERY"), fid("session/SUBSCRIBE")
    flow = [  # (sender, seq, message)
        ("a", 0, m.Join(ttl=60, capabilities=("gpu",), meta={"region": "eu-west"})),
        ("b", 0, m.Lease(re=join_id, ttl=60, expires=TS + 60_010)),
        ("a", 1, m.Subscribe(topics=("node.*",))),
        ("b", 1, m.Ack(re=sub_id)),
        ("a", 2, m.Query(capabilities=("gpu",), limit=10)),
        ("b", 2, m.QueryResult(re=query_id, nodes=(m.NodeRecord(key=A, capabilities=("gpu",),
                                                                meta={"region": "eu-west"}, expires=TS + 60_010),))),
        ("b", 3, m.Event(topic="node.joined", event_id=fid("session/event"), origin=B, ts=TS + 10,
                         data={"key": A.hex()})),
        ("a", 3, m.Ping(data=b"\x00\x01")),
        ("b", 4, m.Pong(data=b"\x00\x01")),
        ("a", 4, m.Goodbye(reason="done")),
    ]
    frames = []
    for i, (sender, seq, msg) in enumerate(flow):
        receiver, peer = ("b", A) if sender == "a" else ("a", B)
        frames.append(valid(f"session/{msg.TYPE}", f"{sender} -> {receiver}, seq {seq}", sender, msg,
                            ts=TS + 10 + i, sid=SID, seq=seq, decoder="session",
                            context=session_ctx(receiver, peer, seq)))
    return {"description": "Session frames after handshake.json, in wire order. Each direction counts its "
                           "own seq from 0; replies cite the request frame's id in body.re.",
            "sid": SID.hex(), "frames": frames}


def invalid_vectors() -> list[dict]:
    vs: list[dict] = []

    def add(*args: Any, **kw: Any) -> None:
        vs.append(invalid(*args, **kw))

    ping_pl = payload("ping")
    ping = signed("a", ping_pl)
    ping_sig = sig("a", ping_pl)

    def iv(name: str, **kw: Any) -> tuple[bytes, bytes]:
        """A payload signed by a, and the frame id it carries."""
        return signed("a", payload(name, **kw)), fid(name)

    # F1-F7: the frame array
    add("text-message", "a WebSocket text message", '{"type": "PING"}', E.TEXT_FRAME, "F1")
    add("frame-too-large", "a valid frame over max_frame_size (64 here)", ping, E.FRAME_TOO_LARGE, "F2",
        context=frame_ctx(max_frame_size=64))
    add("empty", "an empty binary message", b"", E.MALFORMED_FRAME, "F3")
    add("truncated", "a valid frame without its last byte", ping[:-1], E.MALFORMED_FRAME, "F3")
    add("trailing-bytes", "a valid frame followed by one more msgpack value", ping + b"\xc0", E.MALFORMED_FRAME, "F3")
    add("not-msgpack", "0xc1 is never valid msgpack", b"\xc1", E.MALFORMED_FRAME, "F3")
    add("payload-is-str", "the payload as a str instead of bin", frame(1, "PING", ping_sig), E.MALFORMED_FRAME, "F3")
    add("array-of-4", "four elements with version 2: rejected while parsing, before the version is read",
        msgpack.packb([2, ping_pl, ping_sig, None], use_bin_type=True), E.MALFORMED_FRAME, "F3")
    add("ext-in-frame", "an ext value as element 1", frame(1, msgpack.ExtType(1, b"x"), ping_sig),
        E.MALFORMED_FRAME, "F3")
    add("not-an-array", "an integer instead of the frame array", b"\x01", E.MALFORMED_FRAME, "F4")
    add("array-of-2", "the signature is missing", msgpack.packb([1, ping_pl], use_bin_type=True),
        E.MALFORMED_FRAME, "F4")
    add("version-bool", "version true is not an integer", frame(True, ping_pl, ping_sig), E.MALFORMED_FRAME, "F5")
    add("version-float", "version 1.0 is not an integer", frame(1.0, ping_pl, ping_sig), E.MALFORMED_FRAME, "F5")
    add("version-2", "frame version 2", frame(2, ping_pl, ping_sig), E.UNSUPPORTED_VERSION, "F6")
    add("version-0", "frame version 0", frame(0, ping_pl, ping_sig), E.UNSUPPORTED_VERSION, "F6")
    add("order/version-before-signature", "version 2 with a 63-byte signature: the version is judged first",
        frame(2, ping_pl, ping_sig[:63]), E.UNSUPPORTED_VERSION, "F6")
    add("payload-nil", "payload nil", frame(1, None, ping_sig), E.MALFORMED_FRAME, "F7")
    add("signature-63", "a 63-byte signature", frame(1, ping_pl, ping_sig[:63]), E.MALFORMED_FRAME, "F7")
    add("signature-65", "a 65-byte signature", frame(1, ping_pl, ping_sig + b"\x00"), E.MALFORMED_FRAME, "F7")

    # F8: signature against a known key (before the payload is parsed)
    add("known-key/other-signer", "expected key b, frame signed by a", ping, E.BAD_SIGNATURE, "F8",
        context=frame_ctx(expected_key=B))
    garbage = frame(1, b"\xc1", b"\x00" * 64)
    add("order/known-key-before-payload", "expected key a, unparsable payload and a bad signature",
        garbage, E.BAD_SIGNATURE, "F8", context=frame_ctx(expected_key=A))
    add("order/payload-before-signature", "no key known, unparsable payload and a bad signature",
        garbage, E.MALFORMED_FRAME, "F9")

    # F9: parsing the payload
    add("limit/str", "a str longer than max_str_len (8 here)",
        signed("a", payload("limit/str", type="GOODBYE", body={"reason": "shutting down"})),
        E.LIMIT_EXCEEDED, "F9", context=frame_ctx(max_str_len=8))
    add("limit/bin", "a bin longer than max_bin_len (32 here)",
        signed("a", payload("limit/bin", body={"data": b"\x00" * 33})), E.LIMIT_EXCEEDED, "F9",
        context=frame_ctx(max_bin_len=32))
    add("limit/array", "an array longer than max_array_len (2 here)",
        signed("a", payload("limit/array", type="SUBSCRIBE", body={"topics": ["a", "b", "c"]})),
        E.LIMIT_EXCEEDED, "F9", context=frame_ctx(max_array_len=2))
    add("limit/map", "a map longer than max_map_len (5 here: the payload map has 5 entries and fits)",
        signed("a", payload("limit/map", type="JOIN", body={"meta": {str(i): "" for i in range(6)}})),
        E.LIMIT_EXCEEDED, "F9", context=frame_ctx(max_map_len=5))
    bad_utf8, long_str = Raw(b"\xa2\xff\xfe"), "x" * 20
    add("order/utf8-before-limit", "invalid UTF-8, then an over-long str: the first defect decides",
        signed("a", payload("order/utf8-before-limit", body=Raw(pmap([("a", bad_utf8), ("b", long_str)])))),
        E.MALFORMED_FRAME, "F9", context=frame_ctx(max_str_len=8))
    add("order/limit-before-utf8", "an over-long str, then invalid UTF-8: the first defect decides",
        signed("a", payload("order/limit-before-utf8", body=Raw(pmap([("b", long_str), ("a", bad_utf8)])))),
        E.LIMIT_EXCEEDED, "F9", context=frame_ctx(max_str_len=8))
    add("payload-duplicate-key", "'type' twice in the payload map (PING, then JOIN)",
        signed("a", payload("payload-duplicate-key", extra=[("type", "JOIN")])), E.MALFORMED_FRAME, "F9")
    add("body-duplicate-key", "'ttl' twice in a JOIN body",
        signed("a", payload("body-duplicate-key", type="JOIN", body=Raw(pmap([("ttl", 10), ("ttl", 20)])))),
        E.MALFORMED_FRAME, "F9")
    add("payload-empty", "an empty payload bin", signed("a", b""), E.MALFORMED_FRAME, "F9")
    add("payload-truncated", "the payload map is cut short (signed as is)", signed("a", ping_pl[:-1]),
        E.MALFORMED_FRAME, "F9")
    add("payload-trailing", "a second value after the payload map (signed as is)", signed("a", ping_pl + b"\xc0"),
        E.MALFORMED_FRAME, "F9")
    add("payload-invalid-utf8", "a str that is not UTF-8",
        signed("a", payload("payload-invalid-utf8", type=Raw(b"\xa4PI\xffG"))), E.MALFORMED_FRAME, "F9")
    add("payload-ext", "an ext value in the body",
        signed("a", payload("payload-ext", body=Raw(pmap([("data", Raw(b"\xd4\x01\x00"))])))),
        E.MALFORMED_FRAME, "F9")
    add("payload-ext-timestamp", "the msgpack timestamp ext (-1) in the header",
        signed("a", payload("payload-ext-timestamp", ts=Raw(b"\xd6\xff" + (TS // 1000).to_bytes(4, "big")))),
        E.MALFORMED_FRAME, "F9")
    add("payload-array-key", "an array as a map key in the body",
        signed("a", payload("payload-array-key", body=Raw(b"\x81\x91\x01\x01"))), E.MALFORMED_FRAME, "F9")
    add("payload-lying-headers", "100 nested arrays declaring 10000 elements each, then the payload ends: "
        "incomplete, judged before anything is allocated for the declared elements (limits §1.2)",
        signed("a", b"\x81\xa4body" + b"\xdc\x27\x10" * 100), E.MALFORMED_FRAME, "F9")
    add("order/structure-before-limit", "an over-long str, and the payload's last byte cut off: "
        "incomplete beats every other defect",
        signed("a", payload("order/structure-before-limit", type="GOODBYE",
                            body={"reason": "shutting down", "more": 1})[:-1]),
        E.MALFORMED_FRAME, "F9", context=frame_ctx(max_str_len=8))
    add("order/structure-before-array-limit", "an array longer than max_array_len (2 here) whose last "
        "element is cut off: incomplete beats the limit judged at its header",
        signed("a", payload("order/structure-before-array-limit", type="SUBSCRIBE",
                            body={"topics": ["a", "b", "c"]})[:-1]),
        E.MALFORMED_FRAME, "F9", context=frame_ctx(max_array_len=2))

    # F10-F13: payload map, sender, signature
    add("payload-array", "the payload is an array", signed("a", msgpack.packb(["PING"])), E.MALFORMED_FRAME, "F10")
    add("from-missing", "no 'from'", signed("a", payload("from-missing", sender=DROP)), E.BAD_KEY, "F11")
    add("from-short", "a 31-byte 'from'", signed("a", payload("from-short", sender=A[:31])), E.BAD_KEY, "F11")
    add("from-str", "'from' as a hex str", signed("a", payload("from-str", sender=A.hex())), E.BAD_KEY, "F11")
    add("signed-by-other", "'from' is a, signed by c", signed("c", ping_pl), E.BAD_SIGNATURE, "F12")
    tampered = payload("ping", ts=TS + 1)
    add("tampered", "ts changed after signing", frame(1, tampered, ping_sig), E.BAD_SIGNATURE, "F12")
    add("no-prefix", "signed over the payload without SIGN_PREFIX",
        frame(1, ping_pl, KEYS["a"].sign(ping_pl)), E.BAD_SIGNATURE, "F12")
    add("order/signature-before-type", "a bad signature and an unknown type",
        frame(1, payload("order/signature-before-type", type="FROBNICATE"), ping_sig), E.BAD_SIGNATURE, "F12")
    add("known-key/wrong-from", "expected key a, signed by a, but 'from' names c",
        signed("a", payload("known-key/wrong-from", sender=C)), E.WRONG_SENDER, "F13",
        context=frame_ctx(expected_key=A))

    # F14-F20: header fields
    add("id-missing", "no 'id'", signed("a", payload("id-missing", id=DROP)), E.MALFORMED_FRAME, "F14")
    add("id-15", "a 15-byte 'id'", signed("a", payload("id-15", id=b"\x01" * 15)), E.MALFORMED_FRAME, "F14")
    add("order/id-before-type", "bad 'id' and bad 'type': no re, the id is not usable",
        signed("a", payload("order/id-before-type", id="x", type=7)), E.MALFORMED_FRAME, "F14")
    f, r = iv("type-missing", type=DROP)
    add("type-missing", "no 'type'", f, E.MALFORMED_FRAME, "F15", ref=r)
    f, r = iv("type-empty", type="")
    add("type-empty", "'type' is the empty str", f, E.MALFORMED_FRAME, "F15", ref=r)
    f, r = iv("type-int", type=1)
    add("type-int", "'type' is an integer", f, E.MALFORMED_FRAME, "F15", ref=r)
    f, r = iv("ts-negative", ts=-1)
    add("ts-negative", "'ts' is -1", f, E.MALFORMED_FRAME, "F16", ref=r)
    f, r = iv("ts-float", ts=float(TS))
    add("ts-float", "'ts' is a float", f, E.MALFORMED_FRAME, "F16", ref=r)
    f, r = iv("ts-missing", ts=DROP)
    add("ts-missing", "no 'ts'", f, E.MALFORMED_FRAME, "F16", ref=r)
    f, r = iv("sid-short", sid=SID[:31], seq=0)
    add("sid-short", "a 31-byte 'sid'", f, E.MALFORMED_FRAME, "F17", ref=r)
    f, r = iv("seq-without-sid", seq=0)
    add("seq-without-sid", "'seq' without 'sid'", f, E.MALFORMED_FRAME, "F18", ref=r)
    f, r = iv("sid-without-seq", sid=SID)
    add("sid-without-seq", "'sid' without 'seq'", f, E.MALFORMED_FRAME, "F18", ref=r)
    f, r = iv("seq-negative", sid=SID, seq=-1)
    add("seq-negative", "'seq' is -1", f, E.MALFORMED_FRAME, "F18", ref=r)
    f, r = iv("body-missing", body=DROP)
    add("body-missing", "no 'body'", f, E.MALFORMED_FRAME, "F19", ref=r)
    f, r = iv("body-array", body=[])
    add("body-array", "'body' is an array", f, E.MALFORMED_FRAME, "F19", ref=r)
    f, r = iv("body-nil", body=Raw(b"\xc0"))
    add("body-nil", "'body' is nil", f, E.MALFORMED_FRAME, "F19", ref=r)
    f, r = iv("payload-int-key", extra=[(7, "x")])
    add("payload-int-key", "an integer key in the payload map", f, E.MALFORMED_FRAME, "F20", ref=r)

    # F21: body shape
    f, r = iv("depth-17", body=nested(17))
    add("depth-17", "body nested max_depth + 1 deep", f, E.LIMIT_EXCEEDED, "F21", ref=r)
    f, r = iv("body-int-key", body=Raw(pmap([("x", Raw(pmap([(1, "y")])))])))
    add("body-int-key", "an integer map key inside the body", f, E.MALFORMED_FRAME, "F21", ref=r)
    f, r = iv("order/key-before-depth", body=Raw(pmap([("k", Raw(pmap([(1, "y")]))), ("d", nested(17))])))
    add("order/key-before-depth", "a bad key, then too deep: encoding order decides", f, E.MALFORMED_FRAME,
        "F21", ref=r)
    f, r = iv("order/depth-before-key", body=Raw(pmap([("d", nested(17)), ("k", Raw(pmap([(1, "y")])))])))
    add("order/depth-before-key", "too deep, then a bad key: encoding order decides", f, E.LIMIT_EXCEEDED,
        "F21", ref=r)

    # F22: time window
    r = fid("ping")
    add("stale-past", "ts 120001 ms before now", ping, E.STALE_TIMESTAMP, "F22", ref=r,
        context=frame_ctx(now=TS + WINDOW + 1))
    add("stale-future", "ts 120001 ms after now", ping, E.STALE_TIMESTAMP, "F22", ref=r,
        context=frame_ctx(now=TS - WINDOW - 1))
    f, r = iv("order/stale-before-body", type="PING", body={"data": 5})
    add("order/stale-before-body", "stale and an invalid body: the time is judged first", f, E.STALE_TIMESTAMP,
        "F22", ref=r, context=frame_ctx(now=TS + WINDOW + 1))
    f, r = iv("order/depth-before-stale", body=nested(17))
    add("order/depth-before-stale", "too deep and stale: the shape is judged first", f, E.LIMIT_EXCEEDED,
        "F21", ref=r, context=frame_ctx(now=TS + WINDOW + 1))

    # M1, M2: message
    f, r = iv("unknown-type", type="FROBNICATE")
    add("unknown-type", "a type nobody defined", f, E.UNKNOWN_TYPE, "M1", ref=r)
    f, r = iv("unknown-type-case", type="ping")
    add("unknown-type-case", "type names are case-sensitive", f, E.UNKNOWN_TYPE, "M1", ref=r)
    bodies = [
        ("body/role", "HELLO", {"network": NETWORK, "role": "king", "nonce": NONCE_A, "versions": [1]},
         "role outside its choices"),
        ("body/versions-empty", "HELLO", {"network": NETWORK, "role": "node", "nonce": NONCE_A, "versions": []},
         "versions needs at least one element"),
        ("body/utf8-bytes", "HELLO", {"network": "\u00e9" * 33, "role": "node", "nonce": NONCE_A, "versions": [1]},
         "33 two-byte characters are 66 bytes: over MAX_NAME although only 33 code points"),
        ("body/meta-value-utf8", "JOIN", {"meta": {"k": "\u00e9" * (m.MAX_META_VALUE // 2 + 1)}},
         "a metadata value of 129 two-byte characters is 258 bytes: over MAX_META_VALUE"),
        ("body/ttl", "JOIN", {"ttl": m.MAX_TTL_S + 1}, "ttl above MAX_TTL_S"),
        ("body/ttl-bool", "JOIN", {"ttl": True}, "a bool is not a uint"),
        ("body/ttl-nil", "JOIN", {"ttl": None}, "nil for an optional field with a default"),
        ("body/missing", "ERROR", {"name": "x"}, "required code missing"),
        ("body/ping-data", "PING", {"data": b"\x00" * 65}, "bin longer than its bound"),
        ("body/topics-empty", "SUBSCRIBE", {"topics": []}, "topics needs at least one element"),
        ("body/meta-value", "JOIN", {"meta": {"k": "v" * (m.MAX_META_VALUE + 1)}}, "metadata value too long"),
        ("body/meta-key", "JOIN", {"meta": {"": "v"}}, "empty metadata key"),
        ("body/ready-nil", "READY", {"echo": None}, "nil for a required field"),
        ("body/struct", "QUERY_RESULT", {"re": REF, "nodes": [{"key": A}]}, "struct missing expires"),
        ("body/negative", "QUERY", {"limit": -1}, "negative integer"),
    ]
    for name, t, body, desc in bodies:
        f, r = iv(name, type=t, body=body)
        add(name, desc, f, E.INVALID_BODY, "M2", ref=r)

    # Session: S1, S2 and the session's known key
    def sframe(name: str, signer: str = "a", **kw: Any) -> tuple[bytes, bytes]:
        kw = {"sid": SID, "seq": 0, **kw}
        return signed(signer, payload(name, **kw)), fid(name)

    f, r = sframe("session/wrong-sid", sid=OTHER_SID)
    add("session/wrong-sid", "another session's sid", f, E.WRONG_SID, "S1", ref=r, decoder="session",
        context=session_ctx())
    f, r = iv("session/no-sid")
    add("session/no-sid", "a frame without sid and seq in a session", f, E.WRONG_SID, "S1", ref=r,
        decoder="session", context=session_ctx())
    f, r = sframe("order/sid-before-seq", sid=OTHER_SID, seq=5)
    add("order/sid-before-seq", "wrong sid and wrong seq", f, E.WRONG_SID, "S1", ref=r, decoder="session",
        context=session_ctx())
    f, r = sframe("session/replay", seq=0)
    add("session/replay", "seq 0 again when 1 is expected", f, E.BAD_SEQUENCE, "S2", ref=r,
        decoder="session", context=session_ctx(recv_seq=1))
    f, r = sframe("session/skip", seq=1)
    add("session/skip", "seq 1 when 0 is expected", f, E.BAD_SEQUENCE, "S2", ref=r, decoder="session",
        context=session_ctx())
    f, _ = sframe("session/third-key", signer="c", sender=C)
    add("session/third-key", "a frame from c, self-consistently signed, in a session with a", f,
        E.BAD_SIGNATURE, "F8", decoder="session", context=session_ctx())
    f, _ = sframe("session/lying-from", sender=C)
    add("session/lying-from", "signed by the peer a but 'from' names c", f, E.WRONG_SENDER, "F13",
        decoder="session", context=session_ctx())
    f, r = sframe("session/unknown-type", type="FROBNICATE", seq=2)
    add("session/unknown-type", "unknown type: non-fatal, the seq is consumed", f, E.UNKNOWN_TYPE, "M1", ref=r,
        decoder="session", context=session_ctx(recv_seq=2), recv_seq_after=3)
    f, r = sframe("session/invalid-body", type="HEARTBEAT", body={"ttl": -5}, seq=2)
    add("session/invalid-body", "invalid body: non-fatal, the seq is consumed", f, E.INVALID_BODY, "M2", ref=r,
        decoder="session", context=session_ctx(recv_seq=2), recv_seq_after=3)

    # Handshake
    hello_a, hello_b, ready = handshake_frames()
    r_open, r_answer, r_ready = fid("handshake/hello-open"), fid("handshake/hello-answer"), fid("handshake/ready")

    def hello(name: str, signer: str = "a", *, ts: int = TS, sid: Any = DROP, seq: Any = DROP,
              **fields: Any) -> tuple[bytes, bytes]:
        opener = signer != "b"
        body = {"network": NETWORK, "role": "node" if opener else "pool",
                "nonce": NONCE_A if opener else NONCE_B, "versions": [1], **fields}
        return signed(signer, payload(name, type="HELLO", ts=ts, sender=KEYS[signer].public, body=body,
                                      sid=sid, seq=seq)), fid(name)

    add("hs/opener-not-started", "an opener receives a frame before sending HELLO", hello_b,
        E.UNEXPECTED_MESSAGE, "H1", decoder="handshake", context=hs_ctx("opener", now=TS + 2, initiate=False))
    add("hs/after-established", "the answerer receives HELLO again after READY", hello_a, E.UNEXPECTED_MESSAGE,
        "H1", decoder="handshake", context=hs_ctx("answerer", now=TS + 2, prior=(hello_a, ready)))
    add("hs/stale", "the opening HELLO is 120001 ms old", hello_a, E.STALE_TIMESTAMP, "F22", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", now=TS + WINDOW + 1))
    add("hs/ready-first", "READY before any HELLO", ready, E.UNEXPECTED_MESSAGE, "H2", ref=r_ready,
        decoder="handshake", context=hs_ctx("answerer", now=TS + 2))
    f, r = iv("hs/ping", ts=TS)
    add("hs/ping", "PING during the handshake", f, E.UNEXPECTED_MESSAGE, "H2", ref=r, decoder="handshake",
        context=hs_ctx("answerer"))
    f, r = iv("hs/unknown-type", type="FROBNICATE")
    add("hs/unknown-type", "an unknown type during the handshake is unexpected, not unknown", f,
        E.UNEXPECTED_MESSAGE, "H2", ref=r, decoder="handshake", context=hs_ctx("answerer"))
    f, r = hello("hs/hello-with-sid", sid=SID, seq=0)
    add("hs/hello-with-sid", "HELLO carrying sid and seq", f, E.UNEXPECTED_MESSAGE, "H2", ref=r,
        decoder="handshake", context=hs_ctx("answerer"))
    add("hs/second-hello", "a second HELLO where READY is expected", hello_a, E.UNEXPECTED_MESSAGE, "H2",
        ref=r_open, decoder="handshake", context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,)))
    add("hs/ready-at-opener", "READY where the answerer's HELLO is expected", ready, E.UNEXPECTED_MESSAGE,
        "H2", ref=r_ready, decoder="handshake", context=hs_ctx("opener", now=TS + 2))
    f, r = hello("hs/bad-role", role="king")
    add("hs/bad-role", "HELLO with an invalid body", f, E.INVALID_BODY, "M2", ref=r, decoder="handshake",
        context=hs_ctx("answerer"))
    f = signed("a", payload("hs/ready-wrong-echo", type="READY", ts=TS + 2, body={"echo": NONCE_A}))
    add("hs/ready-wrong-echo", "READY echoing the wrong nonce", f, E.BAD_NONCE, "H3",
        ref=fid("hs/ready-wrong-echo"), decoder="handshake",
        context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,)))
    f = signed("c", payload("hs/ready-other-key", type="READY", ts=TS + 2, sender=C, body={"echo": NONCE_B}))
    add("hs/ready-other-key", "READY from c after a's HELLO", f, E.BAD_SIGNATURE, "F8", decoder="handshake",
        context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,)))
    f = signed("a", payload("hs/ready-lying-from", type="READY", ts=TS + 2, sender=C, body={"echo": NONCE_B}))
    add("hs/ready-lying-from", "READY signed by a claiming to be from c", f, E.WRONG_SENDER, "F13",
        decoder="handshake", context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,)))
    add("hs/network", "the answerer is on another network", hello_a, E.NETWORK_MISMATCH, "H4", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", network="othernet"))
    add("order/network-first", "network, pinned key and versions all mismatch", hello_a, E.NETWORK_MISMATCH,
        "H4", ref=r_open, decoder="handshake",
        context=hs_ctx("answerer", network="othernet", pinned_key=C, versions=(2,)))
    add("hs/self", "the answerer has the opener's key", hello_a, E.SELF_CONNECTION, "H5", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", local="a"))
    add("hs/pinned-at-answerer", "the answerer pinned c", hello_a, E.PINNED_KEY_MISMATCH, "H6", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", pinned_key=C))
    add("hs/pinned-at-opener", "the opener pinned c, b answers", hello_b, E.PINNED_KEY_MISMATCH, "H6",
        ref=r_answer, decoder="handshake", context=hs_ctx("opener", now=TS + 2, pinned_key=C))
    add("hs/versions", "no common version", hello_a, E.NO_COMMON_VERSION, "H7", ref=r_open, decoder="handshake",
        context=hs_ctx("answerer", versions=(2, 3)))
    add("hs/nonce-reuse", "the opener's nonce equals the answerer's", hello_a, E.BAD_NONCE, "H8", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", nonce=NONCE_A))
    f, r = hello("hs/open-with-echo", echo=NONCE_B)
    add("hs/open-with-echo", "an opening HELLO carrying echo", f, E.BAD_NONCE, "H9", ref=r,
        decoder="handshake", context=hs_ctx("answerer"))
    f, r = hello("hs/answer-wrong-echo", "b", ts=TS + 1, echo=NONCE_B)
    add("hs/answer-wrong-echo", "the answer echoes the wrong nonce", f, E.BAD_NONCE, "H9", ref=r,
        decoder="handshake", context=hs_ctx("opener", now=TS + 2))
    f, _ = hello("hs/preauth-array", x=list(range(33)))
    add("hs/preauth-array", "an unknown HELLO field holding 33 elements: over the pre-auth max_array_len "
        "(32, limits §1.1), though within a session's", f, E.LIMIT_EXCEEDED, "F9", decoder="handshake",
        context=hs_ctx("answerer"))
    f, r = hello("hs/preauth-depth", x=[[[[1]]]])
    add("hs/preauth-depth", "an unknown HELLO field nesting the body 5 deep: over the pre-auth max_depth (4)",
        f, E.LIMIT_EXCEEDED, "F21", ref=r, decoder="handshake", context=hs_ctx("answerer"))
    f, _ = hello("hs/preauth-frame-size", x=b"\x00" * 4000)
    add("hs/preauth-frame-size", "a HELLO of more than preauth_frame_size (4096) bytes", f, E.FRAME_TOO_LARGE,
        "F2", decoder="handshake", context=hs_ctx("answerer"))
    f, r = hello("hs/answer-no-echo", "b", ts=TS + 1)
    add("hs/answer-no-echo", "the answer has no echo", f, E.BAD_NONCE, "H9", ref=r, decoder="handshake",
        context=hs_ctx("opener", now=TS + 2))
    return vs


def record_vectors() -> dict:
    """Signed records (docs/gelato/records.md): valid ones with their decoded content, and records every
    verifier must refuse, each with its check id and code. The verifier's state is in `context`."""
    from galaxynode import records as r

    kinds = {"node": r.NODE, "event": r.EVENT}
    node = r.NodeClaim(origin=B, network=NETWORK, seq=TS, issued=TS, expires=TS + 60_000, key=A,
                       capabilities=("gpu", "cpu"), meta={"region": "eu"})
    event = r.EventClaim(origin=B, network=NETWORK, seq=TS + 1, topic="node.left", event_id=fid("records/event"),
                         ts=TS, data={"key": A.hex(), "capabilities": ["gpu"], "meta": {}, "expires": TS})

    def ctx(origin: bytes = B, now: int = TS + 1000) -> dict:
        return {"origin": origin.hex(), "network": NETWORK, "now": now}

    def raw(kind: str, record: bytes, key: str = "b", prefix: bytes | None = None) -> r.SignedRecord:
        return r.SignedRecord(record=record, sig=KEYS[key].sign((prefix or kinds[kind].prefix) + record))

    def run_record(kind: str, signed: r.SignedRecord, c: dict) -> Any:
        return r.verify_record(kinds[kind], signed, origin=bytes.fromhex(c["origin"]), network=c["network"],
                               now=c["now"])

    valid = []
    for name, kind, signed in [
        ("node", "node", r.sign(KEYS["b"], r.NODE, node)),
        ("event", "event", r.sign(KEYS["b"], r.EVENT, event)),
        ("node-unknown-field", "node", raw("node", msgpack.packb(node.to_body() | {"future": [1, "x"]},
                                                                 use_bin_type=True))),
    ]:
        run_record(kind, signed, ctx())
        content = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in msgpack.unpackb(signed.record).items()}
        valid.append({"name": f"records/{name}", "kind": kind, "signer": "b", "record": signed.record.hex(),
                      "sig": signed.sig.hex(), "content": content, "context": ctx()})

    node_bytes = msgpack.packb(node.to_body(), use_bin_type=True)
    invalid = []

    def bad(name: str, description: str, kind: str, signed: r.SignedRecord, check: str, c: dict | None = None) -> None:
        c = c or ctx()
        try:
            run_record(kind, signed, c)
        except r.RecordError as e:
            if e.check != check:
                raise SystemExit(f"record vector {name}: expected {check}, the code says {e.check}: {e.message}")
        else:
            raise SystemExit(f"record vector {name}: expected {check}, the code accepts it")
        invalid.append({"name": f"records/{name}", "description": description, "kind": kind,
                        "record": signed.record.hex(), "sig": signed.sig.hex(), "context": c, "check": check,
                        "code": int(r.CHECKS[check][0])})

    good = r.sign(KEYS["b"], r.NODE, node)
    bad("empty", "an empty record", "node", r.SignedRecord(record=b"", sig=good.sig), "R1")
    bad("sig-63", "a 63-byte sig", "node", r.SignedRecord(record=good.record, sig=good.sig[:63]), "R1")
    bad("too-large", "a node record of max_record + 1 bytes", "node",
        raw("node", msgpack.packb(node.to_body() | {"pad": "x" * (r.MAX_NODE_RECORD - len(node_bytes) - 6)},
                                  use_bin_type=True)), "R1")
    bad("not-a-map", "an array", "node", raw("node", msgpack.packb([1, 2])), "R2")
    bad("trailing", "a second msgpack value after the map", "node", raw("node", node_bytes + b"\xc0"), "R2")
    bad("duplicate-key", "seq twice", "node", raw("node", pmap([*node.to_body().items(), ("seq", TS + 9)])), "R2")
    bad("int-key", "an integer map key", "node", raw("node", pmap([*node.to_body().items(), (Raw(b"\x01"), 1)])),
        "R2")
    bad("ext", "an ext value", "node", raw("node", pmap([*node.to_body().items(), ("x", Raw(b"\xd4\x01\x00"))])),
        "R2")
    bad("missing-key", "no 'key'", "node",
        raw("node", msgpack.packb({k: v for k, v in node.to_body().items() if k != "key"}, use_bin_type=True)), "R3")
    bad("other-origin", "origin b, carried as a's", "node", good, "R4", ctx(origin=A))
    bad("other-network", "signed for othernet", "node",
        r.sign(KEYS["b"], r.NODE, attrs.evolve(node, network="othernet")), "R5")
    bad("expired", "verified at expires", "node", good, "R6", ctx(now=node.expires))
    bad("event-too-old", "an event older than max_event_age_ms", "event", r.sign(KEYS["b"], r.EVENT, event), "R6",
        ctx(now=TS + r.MAX_EVENT_AGE_MS + 1))
    bad("signed-by-other", "names b, signed by c", "node", raw("node", node_bytes, "c"), "R8")
    bad("event-domain", "a node record signed with the event prefix", "node", raw("node", node_bytes, prefix=r.EVENT_PREFIX),
        "R8")
    bad("descriptor-domain", "a node record signed with the descriptor prefix", "node",
        raw("node", node_bytes, prefix=b"gelato/v1/descriptor\0"), "R8")
    bad("tampered", "seq changed after signing", "node",
        r.SignedRecord(record=msgpack.packb(node.to_body() | {"seq": TS + 1}, use_bin_type=True), sig=good.sig), "R8")
    return {"description": "Signed records (docs/gelato/records.md): sig = Ed25519 by origin over prefix || record. "
                           "valid: verify with the context and decode to content; invalid: refused by check "
                           "with its code. Keys as in keys.json.",
            "prefixes": {k: kind.prefix.hex() for k, kind in kinds.items()},
            "checks": {k: {"code": int(c), "name": c.name.lower(), "checks": what} for k, (c, what) in r.CHECKS.items()},
            "valid": valid, "invalid": invalid}


def outputs() -> dict[Path, str]:
    keys = {"description": "Test keys: Ed25519 seeds (RFC 8032 private keys) and their public keys. "
                           "Never use them outside tests.",
            "keys": {k: {"seed": SEEDS[k].hex(), "public": KEYS[k].public.hex()} for k in SEEDS}}
    docs = {
        "keys.json": keys,
        "messages.json": message_vectors(),
        "handshake.json": handshake_vectors(),
        "session.json": session_vectors(),
        "records.json": record_vectors(),
        "invalid.json": {"description": "Frames every receiver must reject, each with the error code, the "
                                        "check (framing §5, handshake §5) and the decoder state.",
                         "vectors": invalid_vectors()},
    }
    return {OUT / name: json.dumps(doc, indent=2, ensure_ascii=True) + "\n" for name, doc in docs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = ap.parse_args(argv)
    return sync_outputs(outputs(), check=args.check, script="scripts/gen_vectors.py")


if __name__ == "__main__":
    sys.exit(main())
