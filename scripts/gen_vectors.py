#!/usr/bin/env python3
"""Write the Gelato test vectors in ``protocol/vectors/`` (format: protocol/README.md).

Everything is fixed (identity keys and ephemeral X25519 secrets from constant bytes, frame ids
derived from vector names, timestamps, nonces), and Ed25519 signatures, X25519, HKDF and the
BLAKE2b MAC are deterministic, so the files are reproducible byte for byte and an outside
implementation can check its encoder and its key schedule, not only its decoder. Every vector is
checked against the reference decoder before it is written: a vector the code disagrees with
stops the run instead of landing in the files.

    .venv/bin/python scripts/gen_vectors.py           # rewrite the files
    .venv/bin/python scripts/gen_vectors.py --check   # exit 1 if any file is stale
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
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
from galaxynode.descriptor import SIGN_PREFIX as DESCRIPTOR_PREFIX  # noqa: E402
from galaxynode.descriptor import Descriptor, sign_descriptor  # noqa: E402
from galaxynode.gelato import keys as k  # noqa: E402
from galaxynode.gelato import messages as m  # noqa: E402
from galaxynode.gelato.codec import (DEFAULT_LIMITS, SIGN_PREFIX, VERSION, MacKey, decode_frame,  # noqa: E402
                                     encode_frame, encode_session_frame, mac_payload, sign_payload)
from galaxynode.gelato.errors import ErrorCode, ProtocolError  # noqa: E402
from galaxynode.gelato.handshake import Handshake, Session  # noqa: E402
from galaxynode.identity import Identity  # noqa: E402

OUT = ROOT / "protocol" / "vectors"
E = ErrorCode

TS = 1_700_000_000_000
WINDOW = DEFAULT_LIMITS.ts_window_ms
SEEDS = {"a": b"\x01" * 32, "b": b"\x02" * 32, "c": b"\x03" * 32}
KEYS = {name: Identity.from_seed(seed) for name, seed in SEEDS.items()}
A, B, C = (KEYS[x].public for x in "abc")
NETWORK = "testnet"
AGENT = "gelato-vectors/2"
NONCE_A = bytes(range(0, 32))    # opener
NONCE_B = bytes(range(32, 64))   # answerer
EPH_SECRET_A = bytes(range(64, 96))    # opener's X25519 secret (RFC 7748 clamps it)
EPH_SECRET_B = bytes(range(96, 128))   # answerer's
EPH_A, EPH_B = k.ephemeral(EPH_SECRET_A)[1], k.ephemeral(EPH_SECRET_B)[1]
SHARED = k.shared_secret(EPH_SECRET_A, EPH_B)
SID = k.derive_sid(NONCE_A, NONCE_B, A, B, EPH_A, EPH_B)
PRK = hmac.digest(SID, SHARED, "sha256")
K_OA, K_AO = k.derive_keys(SHARED, SID)
# Another session of the same keys (the answerer's ephemeral secret differs): its MAC keys.
EPH_SECRET_OTHER = bytes(range(128, 160))
_OTHER_EPH = k.ephemeral(EPH_SECRET_OTHER)[1]
K_OA_OTHER, K_AO_OTHER = k.derive_keys(k.shared_secret(EPH_SECRET_A, _OTHER_EPH),
                                       k.derive_sid(NONCE_A, NONCE_B, A, B, EPH_A, _OTHER_EPH))
LOW_ORDER = bytes(32)  # the X25519 point 0: every secret gives the all-zero result
SEND_KEY = {"a": K_OA, "b": K_AO}  # a is the opener of the vectors' session, b the answerer
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
            id: Any = None, extra: list[tuple[Any, Any]] = ()) -> bytes:
    """Signed-frame payload bytes in the reference encoder's key order; DROP leaves a field out."""
    fields = [("type", type), ("id", fid(name) if id is None else id), ("ts", ts), ("from", sender),
              ("body", {} if body is None else body)]
    return pmap([(k, v) for k, v in fields if v is not DROP] + list(extra))


def spayload(name: str, *, type: Any = "PING", seq: Any = 0, body: Any = None, id: Any = None,
             extra: list[tuple[Any, Any]] = ()) -> bytes:
    """Session-frame payload bytes (type, id, seq, body) in the reference encoder's order."""
    fields = [("type", type), ("id", fid(name) if id is None else id), ("seq", seq),
              ("body", {} if body is None else body)]
    return pmap([(k, v) for k, v in fields if v is not DROP] + list(extra))


def frame(version: Any, pl: Any, auth: Any) -> bytes:
    return msgpack.packb([version, pl, auth], use_bin_type=True)


def signed(key: str, pl: bytes) -> bytes:
    return sign_payload(KEYS[key], pl)


def maced(key: bytes, pl: bytes) -> bytes:
    return mac_payload(MacKey(key), pl)


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


def session_ctx(local: str = "b", recv_seq: int = 0, *, recv_key: bytes | None = None) -> dict:
    """The receiver `local` of the vectors' session (a opened it, b answered) expecting seq recv_seq.
    recv_key: the key it verifies with (k_oa at b, k_ao at a)."""
    peer = "a" if local == "b" else "b"
    return {"local": local, "opener": local == "a", "peer_key": KEYS[peer].public.hex(),
            "recv_key": (recv_key or SEND_KEY[peer]).hex(), "recv_seq": recv_seq}


def hs_ctx(side: str = "answerer", *, local: str | None = None, now: int = TS + 1, network: str = NETWORK,
           nonce: bytes | None = None, eph_secret: bytes | None = None, versions: tuple[int, ...] = (VERSION,),
           pinned_key: bytes | None = None, prior: tuple[bytes, ...] = (), initiate: bool = True) -> dict:
    opener = side == "opener"
    return {"side": side, "local": local or ("a" if opener else "b"), "role": "node" if opener else "pool",
            "network": network, "nonce": (nonce or (NONCE_A if opener else NONCE_B)).hex(),
            "eph_secret": (eph_secret or (EPH_SECRET_A if opener else EPH_SECRET_B)).hex(),
            "versions": list(versions), "pinned_key": pinned_key.hex() if pinned_key else None,
            "now": now, "initiate": initiate if opener else None, "prior": [p.hex() for p in prior]}


# --- running a vector through the reference decoder ---------------------------------------------

def vector_input(v: dict) -> bytes | str:
    if "frame" in v:  # valid vectors
        return bytes.fromhex(v["frame"])
    return v["input"]["text"] if "text" in v["input"] else bytes.fromhex(v["input"]["binary"])


def make_session(ctx: dict) -> Session:
    """Only the receiving half matters to a vector; the send key is the other direction's."""
    recv = bytes.fromhex(ctx["recv_key"])
    return Session(KEYS[ctx["local"]], bytes.fromhex(ctx["peer_key"]), None, SID, ctx["opener"],
                   MacKey(K_AO if recv == K_OA else K_OA), MacKey(recv), DEFAULT_LIMITS, recv_seq=ctx["recv_seq"])


def make_handshake(ctx: dict) -> Handshake:
    hs = Handshake(KEYS[ctx["local"]], opener=ctx["side"] == "opener", network=ctx["network"], role=ctx["role"],
                   pinned_key=bytes.fromhex(ctx["pinned_key"]) if ctx["pinned_key"] else None,
                   versions=tuple(ctx["versions"]), clock=lambda: ctx["now"], agent=AGENT,
                   nonce=bytes.fromhex(ctx["nonce"]), eph_secret=bytes.fromhex(ctx["eph_secret"]))
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

def content(msg: Any, frame_id: bytes, *, sender: bytes | None = None, ts: int | None = None,
            seq: int | None = None) -> dict:
    """What a receiver decodes: signed frames have ts and from, session frames seq."""
    out: dict[str, Any] = {"type": msg.TYPE, "id": frame_id.hex()}
    if seq is None:
        out |= {"ts": ts, "from": sender.hex()}
    else:
        out["seq"] = seq
    return out | {"body": to_json(msg.to_body())}


def valid(name: str, description: str, sender: str, msg: Any, *, ts: int = TS, seq: int | None = None,
          decoder: str | None = None, context: dict | None = None, body: dict | None = None,
          raw: bytes | None = None) -> dict:
    """A valid frame: signed when seq is None, else a session frame MAC'd with the sender's key of the
    vectors' session. `body` overrides the encoded body (raw: the whole payload) for odd-but-valid cases."""
    frame_id = fid(name)
    key = KEYS[sender]
    session = seq is not None
    if raw is not None:
        data = maced(SEND_KEY[sender], raw) if session else sign_payload(key, raw)
    elif body is not None:
        data = (maced(SEND_KEY[sender], spayload(name, type=msg.TYPE, seq=seq, body=body)) if session
                else sign_payload(key, payload(name, type=msg.TYPE, ts=ts, sender=key.public, body=body)))
    elif session:
        data = encode_session_frame(MacKey(SEND_KEY[sender]), msg, seq=seq, frame_id=frame_id)
    else:
        data = encode_frame(key, msg, ts=ts, frame_id=frame_id)
    _, pl, auth = msgpack.unpackb(data)
    c = content(msg, frame_id, sender=key.public, ts=ts, seq=seq)
    if body is not None:
        c["body"] = to_json(body)
    if context is None:
        context = session_ctx("b" if sender == "a" else "a", seq) if session else frame_ctx()
    v = {"name": name, "description": description, "sender": sender, "kind": "session" if session else "signed",
         "frame": data.hex(), "payload": pl.hex(), "auth": auth.hex(),
         "decoder": decoder or ("session" if session else "frame"), "context": context, "content": c}
    _check_valid(v)
    return v


def frame_content(frame: Any) -> dict:
    out: dict[str, Any] = {"type": frame.type, "id": frame.id.hex()}
    if frame.seq is None:
        out |= {"ts": frame.ts, "from": frame.sender.hex()}
    else:
        out["seq"] = frame.seq
    return out | {"body": to_json(frame.body)}


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


def hello(sender: str, **kw: Any) -> m.Hello:
    """The HELLO of the vectors' handshake: a opens (a node), b answers (a pool)."""
    opener = sender == "a"
    fields = dict(network=NETWORK, role="node" if opener else "pool", nonce=NONCE_A if opener else NONCE_B,
                  eph=EPH_A if opener else EPH_B, versions=(VERSION,), agent=AGENT)
    if not opener:
        fields["echo"] = NONCE_A
    return m.Hello(**(fields | kw))


def samples() -> list[tuple[str, str, Any]]:
    """(sender, description, message): one representative of every type after the handshake, in
    registry order (HELLO and READY are signed frames: message_vectors)."""
    desc = descriptor()
    return [
        ("a", "PING with 8 bytes of data", m.Ping(data=b"pingdata")),
        ("b", "PONG echoing the PING's data", m.Pong(data=b"pingdata")),
        ("b", "ERROR answering a request", m.Error(code=int(E.NOT_JOINED), name="not_joined",
                                                   message="no lease to renew; JOIN first", re=REF)),
        ("a", "GOODBYE with a reason", m.Goodbye(reason="shutting down")),
        ("b", "ACK of a request", m.Ack(re=REF)),
        ("a", "JOIN with capabilities and metadata", m.Join(ttl=60, capabilities=("gpu", "cpu"),
                                                             meta={"region": "eu-west", "rack": "r12"})),
        ("a", "HEARTBEAT with a new ttl", m.Heartbeat(ttl=45)),
        ("b", "LEASE granted: 60 s, next HEARTBEAT in about 20 s (messages §8)",
         m.Lease(re=REF, ttl=60, expires=TS + 60_000, interval=20_000)),
        ("a", "LEAVE (empty body)", m.Leave()),
        ("a", "QUERY across peers", m.Query(capabilities=("gpu",), meta={"region": "eu-west"}, limit=10,
                                             cursor=b"\x00" * 32, scope="peers", hops=2)),
        ("b", "QUERY_RESULT with a local and a relayed record",
         m.QueryResult(re=REF, nodes=(NODE, m.NodeRecord(key=C, expires=TS + 30_000, pool=B)),
                       cursor=C, partial=True)),
        ("a", "SUBSCRIBE to patterns", m.Subscribe(topics=("node.*", "peer.#"), peers=True)),
        ("a", "UNSUBSCRIBE", m.Unsubscribe(topics=("peer.#",))),
        ("b", "EVENT pushed to a subscriber; data.key is bin like every key", m.Event(
            topic="node.joined", event_id=fid("event"), origin=B, ts=TS,
            data={"key": A, "capabilities": ["gpu"]}, hops=0)),
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
    refusal = m.Error(code=int(E.TOO_MANY_CONNECTIONS), name="too_many_connections", message="at capacity")
    out = [
        valid("HELLO", "opening HELLO of a node (signed)", "a", hello("a", features=("relay",))),
        valid("READY", "READY echoing the answerer's nonce (signed)", "a", m.Ready(echo=NONCE_B)),
        valid("ERROR/sessionless", "a signed ERROR refusing a connection before any session", "b", refusal),
    ]
    overloaded = m.Error(code=int(E.OVERLOADED), name="overloaded", message="heartbeat budget spent",
                         re=REF, retry_after=45_000)
    out += [valid(msg.TYPE, f"{desc} (session frame, seq 0)", sender, msg, seq=0) for sender, desc, msg in samples()]
    out.append(valid("ERROR/overloaded", "a JOIN refused for the heartbeat budget: retry no sooner than "
                     "retry_after ms (messages §8.5; session frame, seq 0)", "b", overloaded, seq=0))
    ping = m.Ping()
    out += [
        valid("edge/window-past", "a signed frame's ts exactly ts_window_ms before now is accepted", "a",
              m.Ready(echo=NONCE_B), context=frame_ctx(now=TS + WINDOW)),
        valid("edge/window-future", "a signed frame's ts exactly ts_window_ms after now is accepted", "a",
              m.Ready(echo=NONCE_B), context=frame_ctx(now=TS - WINDOW)),
        valid("edge/depth-16", "body nested exactly max_depth deep; unknown body keys are ignored", "a", ping,
              seq=0, body=nested(16)),
        valid("edge/unknown-keys", "unknown header and body keys are ignored", "a", ping, seq=0,
              body={"future": [1, 2]},
              raw=spayload("edge/unknown-keys", body={"future": [1, 2]}, extra=[("hint", "x")])),
        valid("edge/v1-header-keys", "v1's header keys (from, ts, sid) in a session frame are unknown keys: "
              "ignored", "a", ping, seq=0,
              raw=pmap([("type", "PING"), ("id", fid("edge/v1-header-keys")), ("ts", TS), ("from", C),
                        ("sid", b"\x00" * 32), ("seq", 0), ("body", {})])),
        valid("edge/nil-optional", "nil for an optional field without default means absent", "a", ping, seq=0,
              body={"data": None}),
        valid("edge/utf8-bytes", "str bounds count UTF-8 bytes: 32 two-byte characters (64 bytes) fit MAX_NAME",
              "a", hello("a", network="\u00e9" * 32)),
        valid("edge/wide-ints", "non-minimal msgpack encodings are accepted (uint64 seq, str16 type)", "a", ping,
              seq=0, raw=pmap([("type", Raw(b"\xda\x00\x04PING")), ("id", fid("edge/wide-ints")),
                               ("seq", Raw(b"\xcf" + (0).to_bytes(8, "big"))), ("body", {})])),
    ]
    at_limit = encode_session_frame(MacKey(K_OA), ping, seq=0, frame_id=fid("edge/frame-size"))
    ctx = session_ctx("b")
    out.append(valid("edge/frame-size", "a frame of exactly max_frame_size bytes is accepted", "a", ping, seq=0,
                     context=ctx | {"limits": {"max_frame_size": len(at_limit)}}))
    return {"description": "One valid frame per message type: HELLO, READY and a sessionless ERROR as signed "
                           "frames (frame decoder), every other type as a session frame of handshake.json's "
                           "session at seq 0 (session decoder, the receiver's key in context). Then edge cases.",
            "vectors": out}


def handshake_frames() -> tuple[bytes, bytes, bytes]:
    hello_a = encode_frame(KEYS["a"], hello("a"), ts=TS, frame_id=fid("handshake/hello-open"))
    hello_b = encode_frame(KEYS["b"], hello("b"), ts=TS + 1, frame_id=fid("handshake/hello-answer"))
    ready = encode_frame(KEYS["a"], m.Ready(echo=NONCE_B), ts=TS + 2, frame_id=fid("handshake/ready"))
    return hello_a, hello_b, ready


def handshake_vectors() -> dict:
    hello_a, hello_b, ready = handshake_frames()
    frames = [
        valid("handshake/hello-open", "opener a -> answerer b: HELLO without echo, eph = X25519(eph_secret a)", "a",
              hello("a"), decoder="handshake", context=hs_ctx("answerer", now=TS + 1)),
        valid("handshake/hello-answer", "answerer b -> opener a: HELLO echoing the opener's nonce", "b",
              hello("b"), ts=TS + 1, decoder="handshake", context=hs_ctx("opener", now=TS + 2)),
        valid("handshake/ready", "opener a -> answerer b: READY echoing the answerer's nonce", "a",
              m.Ready(echo=NONCE_B), ts=TS + 2, decoder="handshake",
              context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,))),
    ]
    if [bytes.fromhex(f["frame"]) for f in frames] != [hello_a, hello_b, ready]:
        raise SystemExit("gen_vectors: handshake frames disagree")
    # Both reference handshakes, fed these frames, must derive exactly the keys written below.
    answerer = make_handshake(hs_ctx("answerer", now=TS + 2, prior=(hello_a, ready)))
    opener = make_handshake(hs_ctx("opener", now=TS + 2))
    opener.receive(hello_b)
    for hs, send, recv in ((opener, K_OA, K_AO), (answerer, K_AO, K_OA)):
        s = hs.session
        if (s.sid, s.send_key.key, s.recv_key.key) != (SID, send, recv):
            raise SystemExit("gen_vectors: the handshake derives other keys than the key schedule")
    return {"description": "A full handshake between opener a (a node) and answerer b (a pool), and every "
                           "value of the key schedule (handshake §6) it leads to.",
            "network": NETWORK,
            "opener": {"key": "a", "public": A.hex(), "nonce": NONCE_A.hex(), "eph_secret": EPH_SECRET_A.hex(),
                       "eph": EPH_A.hex()},
            "answerer": {"key": "b", "public": B.hex(), "nonce": NONCE_B.hex(), "eph_secret": EPH_SECRET_B.hex(),
                         "eph": EPH_B.hex()},
            "key_schedule": {
                "shared": SHARED.hex(),
                "sid_input": (NONCE_A + NONCE_B + A + B + EPH_A + EPH_B).hex(),
                "sid": SID.hex(),
                "prk": PRK.hex(),
                "info_opener_to_answerer": k.INFO_OPENER_TO_ANSWERER.hex(),
                "info_answerer_to_opener": k.INFO_ANSWERER_TO_OPENER.hex(),
                "k_oa": K_OA.hex(),
                "k_ao": K_AO.hex(),
            },
            "frames": frames}


def session_vectors() -> dict:
    join_id, query_id, sub_id = fid("session/JOIN"), fid("session/QUERY"), fid("session/SUBSCRIBE")
    flow = [  # (sender, seq, message)
        ("a", 0, m.Join(ttl=60, capabilities=("gpu",), meta={"region": "eu-west"})),
        ("b", 0, m.Lease(re=join_id, ttl=60, expires=TS + 60_010, interval=19_337)),
        ("a", 1, m.Subscribe(topics=("node.*",))),
        ("b", 1, m.Ack(re=sub_id)),
        ("a", 2, m.Query(capabilities=("gpu",), limit=10)),
        ("b", 2, m.QueryResult(re=query_id, nodes=(m.NodeRecord(key=A, capabilities=("gpu",),
                                                                meta={"region": "eu-west"}, expires=TS + 60_010),))),
        ("b", 3, m.Event(topic="node.joined", event_id=fid("session/event"), origin=B, ts=TS + 10,
                         data={"key": A})),
        ("a", 3, m.Ping(data=b"\x00\x01")),
        ("b", 4, m.Pong(data=b"\x00\x01")),
        ("a", 4, m.Goodbye(reason="done")),
    ]
    frames = []
    for sender, seq, msg in flow:
        receiver = "b" if sender == "a" else "a"
        frames.append(valid(f"session/{msg.TYPE}", f"{sender} -> {receiver}, seq {seq}", sender, msg, seq=seq))
    return {"description": "Session frames after handshake.json, in wire order: a MACs with k_oa, b with k_ao. "
                           "Each direction counts its own seq from 0; replies cite the request frame's id in body.re.",
            "k_oa": K_OA.hex(), "k_ao": K_AO.hex(), "frames": frames}


def invalid_vectors() -> list[dict]:
    vs: list[dict] = []

    def add(*args: Any, **kw: Any) -> None:
        vs.append(invalid(*args, **kw))

    # Signed frames (as a connection's first frame: the frame decoder, no key known).
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
    add("payload-is-str", "the payload as a str instead of bin", frame(VERSION, "PING", ping_sig),
        E.MALFORMED_FRAME, "F3")
    add("array-of-4", "four elements with version 3: rejected while parsing, before the version is read",
        msgpack.packb([3, ping_pl, ping_sig, None], use_bin_type=True), E.MALFORMED_FRAME, "F3")
    add("ext-in-frame", "an ext value as element 1", frame(VERSION, msgpack.ExtType(1, b"x"), ping_sig),
        E.MALFORMED_FRAME, "F3")
    add("frame-nesting-1025", "1025 nested arrays: beyond the parser's stack in the frame array",
        b"\x91" * 1024 + b"\x90", E.MALFORMED_FRAME, "F3")
    add("not-an-array", "an integer instead of the frame array", b"\x01", E.MALFORMED_FRAME, "F4")
    add("array-of-2", "the auth is missing", msgpack.packb([VERSION, ping_pl], use_bin_type=True),
        E.MALFORMED_FRAME, "F4")
    add("version-bool", "version true is not an integer", frame(True, ping_pl, ping_sig), E.MALFORMED_FRAME, "F5")
    add("version-float", "version 2.0 is not an integer", frame(2.0, ping_pl, ping_sig), E.MALFORMED_FRAME, "F5")
    v1_pl = pmap([("type", "PING"), ("id", fid("version-1")), ("ts", TS), ("from", A), ("sid", b"\x00" * 32),
                  ("seq", 0), ("body", {})])
    add("version-1", "a Gelato v1 frame (v1 header, v1 signing prefix): unsupported_version, no ban",
        frame(1, v1_pl, KEYS["a"].sign(b"gelato/v1\0" + v1_pl)), E.UNSUPPORTED_VERSION, "F6")
    add("version-3", "frame version 3", frame(3, ping_pl, ping_sig), E.UNSUPPORTED_VERSION, "F6")
    add("version-0", "frame version 0", frame(0, ping_pl, ping_sig), E.UNSUPPORTED_VERSION, "F6")
    add("order/version-before-auth", "version 1 with a 63-byte auth: the version is judged first",
        frame(1, ping_pl, ping_sig[:63]), E.UNSUPPORTED_VERSION, "F6")
    add("payload-nil", "payload nil", frame(VERSION, None, ping_sig), E.MALFORMED_FRAME, "F7")
    add("signature-63", "a 63-byte auth", frame(VERSION, ping_pl, ping_sig[:63]), E.MALFORMED_FRAME, "F7")
    add("signature-65", "a 65-byte auth", frame(VERSION, ping_pl, ping_sig + b"\x00"), E.MALFORMED_FRAME, "F7")
    add("auth-32", "a 32-byte auth (neither a signature nor a MAC)", frame(VERSION, ping_pl, ping_sig[:32]),
        E.MALFORMED_FRAME, "F7")
    add("auth-str", "auth as a str", frame(VERSION, ping_pl, "x" * 16), E.MALFORMED_FRAME, "F3")

    # F23: a session frame where no session exists
    add("session-frame-first", "a session frame (16-byte MAC) as a connection's first frame",
        maced(K_OA, spayload("session-frame-first")), E.UNEXPECTED_MESSAGE, "F23")

    # F8: signature against a known key (before the payload is parsed)
    add("known-key/other-signer", "expected key b, frame signed by a", ping, E.BAD_SIGNATURE, "F8",
        context=frame_ctx(expected_key=B))
    garbage = frame(VERSION, b"\xc1", b"\x00" * 64)
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
    add("limit/parser-stack", "the body nests 1024 deep, the payload 1025: beyond the parser's stack, "
        "F9 without re (1023 would be F21 with re)",
        signed("a", payload("limit/parser-stack", body=Raw(b"\x81\xa1x" * 1023 + b"\x80"))),
        E.LIMIT_EXCEEDED, "F9")
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
    add("duplicate-key-typed", "keys 1 and true in one body map are equal keys (framing §2.6): F9, no re",
        signed("a", payload("duplicate-key-typed", body=Raw(b"\x82\x01\x00\xc3\x00"))), E.MALFORMED_FRAME, "F9")
    add("order/limit-before-duplicate", "a duplicate key, then an over-long str in the same map: the duplicate "
        "is judged at the map's end, the str first",
        signed("a", payload("order/limit-before-duplicate", type="GOODBYE",
                            body=Raw(pmap([("reason", "a"), ("reason", "b"), ("x", long_str)])))),
        E.LIMIT_EXCEEDED, "F9", context=frame_ctx(max_str_len=8))
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
    add("tampered", "ts changed after signing", frame(VERSION, tampered, ping_sig), E.BAD_SIGNATURE, "F12")
    add("no-prefix", "signed over the payload without SIGN_PREFIX",
        frame(VERSION, ping_pl, KEYS["a"].sign(ping_pl)), E.BAD_SIGNATURE, "F12")
    add("v1-prefix", "signed with v1's prefix \"gelato/v1\\0\" in a version 2 frame",
        frame(VERSION, ping_pl, KEYS["a"].sign(b"gelato/v1\0" + ping_pl)), E.BAD_SIGNATURE, "F12")
    add("order/signature-before-type", "a bad signature and an unknown type",
        frame(VERSION, payload("order/signature-before-type", type="FROBNICATE"), ping_sig), E.BAD_SIGNATURE, "F12")
    add("known-key/wrong-from", "expected key a, signed by a, but 'from' names c",
        signed("a", payload("known-key/wrong-from", sender=C)), E.WRONG_SENDER, "F13",
        context=frame_ctx(expected_key=A))

    # F14-F21: header fields
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
    f, r = iv("body-missing", body=DROP)
    add("body-missing", "no 'body'", f, E.MALFORMED_FRAME, "F19", ref=r)
    f, r = iv("body-array", body=[])
    add("body-array", "'body' is an array", f, E.MALFORMED_FRAME, "F19", ref=r)
    f, r = iv("body-nil", body=Raw(b"\xc0"))
    add("body-nil", "'body' is nil", f, E.MALFORMED_FRAME, "F19", ref=r)
    f, r = iv("payload-int-key", extra=[(7, "x")])
    add("payload-int-key", "an integer key in the payload map", f, E.MALFORMED_FRAME, "F20", ref=r)
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
    f, r = iv("ts-negative", ts=-1)
    add("ts-negative", "'ts' is -1", f, E.MALFORMED_FRAME, "F16", ref=r)
    f, r = iv("ts-float", ts=float(TS))
    add("ts-float", "'ts' is a float", f, E.MALFORMED_FRAME, "F16", ref=r)
    f, r = iv("ts-missing", ts=DROP)
    add("ts-missing", "no 'ts'", f, E.MALFORMED_FRAME, "F16", ref=r)
    f, r = iv("order/body-before-ts", ts=DROP, body=[])
    add("order/body-before-ts", "no 'ts' and 'body' an array: the body is judged first", f, E.MALFORMED_FRAME,
        "F19", ref=r)

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

    # M1, M2: message (signed frames here; session frames below)
    f, r = iv("unknown-type", type="FROBNICATE")
    add("unknown-type", "a type nobody defined", f, E.UNKNOWN_TYPE, "M1", ref=r)
    f, r = iv("unknown-type-case", type="ping")
    add("unknown-type-case", "type names are case-sensitive", f, E.UNKNOWN_TYPE, "M1", ref=r)
    hello_body = {"network": NETWORK, "role": "node", "nonce": NONCE_A, "eph": EPH_A, "versions": [VERSION]}
    bodies = [
        ("body/role", "HELLO", hello_body | {"role": "king"}, "role outside its choices"),
        ("body/versions-empty", "HELLO", hello_body | {"versions": []}, "versions needs at least one element"),
        ("body/eph-missing", "HELLO", {k_: v for k_, v in hello_body.items() if k_ != "eph"},
         "a HELLO without eph (a v1 HELLO body)"),
        ("body/eph-31", "HELLO", hello_body | {"eph": EPH_A[:31]}, "an eph of 31 bytes"),
        ("body/utf8-bytes", "HELLO", hello_body | {"network": "\u00e9" * 33},
         "33 two-byte characters are 66 bytes: over MAX_NAME although only 33 code points"),
        ("body/meta-value-utf8", "JOIN", {"meta": {"k": "\u00e9" * (m.MAX_META_VALUE // 2 + 1)}},
         "a metadata value of 129 two-byte characters is 258 bytes: over MAX_META_VALUE"),
        ("body/ttl", "JOIN", {"ttl": m.MAX_TTL_S + 1}, "ttl above MAX_TTL_S"),
        ("body/ttl-bool", "JOIN", {"ttl": True}, "a bool is not a uint"),
        ("body/ttl-nil", "JOIN", {"ttl": None}, "nil for an optional field with a default"),
        ("body/lease-interval-0", "LEASE", {"re": REF, "ttl": 60, "expires": TS, "interval": 0},
         "a LEASE interval of 0 ms (its minimum is 1)"),
        ("body/lease-interval-max", "LEASE", {"re": REF, "ttl": 60, "expires": TS, "interval": m.MAX_INTERVAL_MS + 1},
         "a LEASE interval over MAX_TTL_S * 1000 / 3 ms"),
        ("body/lease-no-interval", "LEASE", {"re": REF, "ttl": 60, "expires": TS},
         "a LEASE without interval (required since issue 20)"),
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

    # Session frames: the receiver b (answerer) of handshake.json's session, expecting seq recv_seq.
    def sframe(name: str, key: bytes = K_OA, **kw: Any) -> tuple[bytes, bytes]:
        return maced(key, spayload(name, **kw)), fid(name)

    ctx = session_ctx
    f, _ = sframe("session/bad-mac")
    add("session/bad-mac", "the last MAC byte flipped", f[:-1] + bytes([f[-1] ^ 1]), E.BAD_MAC, "F24",
        decoder="session", context=ctx())
    f, _ = sframe("session/tampered")
    pl = spayload("session/tampered")
    add("session/tampered", "the payload changed after MACing (seq 0 -> 1)",
        frame(VERSION, pl.replace(b"\xa3seq\x00", b"\xa3seq\x01"), msgpack.unpackb(f)[2]), E.BAD_MAC, "F24",
        decoder="session", context=ctx(recv_seq=1))
    f, _ = sframe("session/other-direction", key=K_AO)
    add("session/other-direction", "a -> b MAC'd with k_ao, the answerer->opener key", f, E.BAD_MAC, "F24",
        decoder="session", context=ctx())
    reflected = bytes.fromhex(session_vectors()["frames"][1]["frame"])  # b's LEASE, seq 0
    add("session/reflected", "b's own LEASE (seq 0, k_ao) sent back to b, which expects seq 0 from a",
        reflected, E.BAD_MAC, "F24", decoder="session", context=ctx())
    f, _ = sframe("session/other-session", key=K_OA_OTHER)
    add("session/other-session", "a frame of another session of the same two keys (other answerer eph): "
        "its MAC key differs", f, E.BAD_MAC, "F24", decoder="session", context=ctx())
    add("session/order/mac-before-payload", "an unparsable payload with a wrong MAC: the MAC is judged first",
        frame(VERSION, b"\xc1", b"\x00" * 16), E.BAD_MAC, "F24", decoder="session", context=ctx())
    add("session/payload-truncated", "a MAC'd payload cut short", maced(K_OA, spayload("ping")[:-1]),
        E.MALFORMED_FRAME, "F9", decoder="session", context=ctx())
    f, r = sframe("session/depth-17", body=nested(17))
    add("session/depth-17", "body nested max_depth + 1 deep", f, E.LIMIT_EXCEEDED, "F21", ref=r,
        decoder="session", context=ctx())
    f, r = sframe("session/seq-missing", seq=DROP)
    add("session/seq-missing", "no 'seq'", f, E.MALFORMED_FRAME, "F25", ref=r, decoder="session", context=ctx())
    f, r = sframe("session/seq-negative", seq=-1)
    add("session/seq-negative", "'seq' is -1", f, E.MALFORMED_FRAME, "F25", ref=r, decoder="session",
        context=ctx())
    f, r = sframe("session/replay", seq=0)
    add("session/replay", "seq 0 again when 1 is expected", f, E.BAD_SEQUENCE, "S2", ref=r,
        decoder="session", context=ctx(recv_seq=1))
    f, r = sframe("session/skip", seq=1)
    add("session/skip", "seq 1 when 0 is expected", f, E.BAD_SEQUENCE, "S2", ref=r, decoder="session",
        context=ctx())
    hello_a, hello_b, ready = handshake_frames()
    add("session/hello", "the opener's signed HELLO again inside the live session", hello_a,
        E.UNEXPECTED_MESSAGE, "S3", ref=fid("handshake/hello-open"), decoder="session", context=ctx())
    add("session/ready", "the opener's signed READY again inside the live session", ready,
        E.UNEXPECTED_MESSAGE, "S3", ref=fid("handshake/ready"), decoder="session", context=ctx())
    err = signed("b", payload("session/late-refusal", type="ERROR", sender=B,
                              body={"code": int(E.NOT_ADMITTED), "name": "not_admitted"}))
    add("session/late-refusal", "a signed ERROR from the peer after its first session frame", err,
        E.UNEXPECTED_MESSAGE, "S3", ref=fid("session/late-refusal"), decoder="session", context=ctx("a", 1))
    f = signed("c", payload("session/third-key", sender=C))
    add("session/third-key", "a signed frame from c, self-consistently signed, in a session with a", f,
        E.BAD_SIGNATURE, "F8", decoder="session", context=ctx())
    f = signed("a", payload("session/lying-from", sender=C))
    add("session/lying-from", "a signed frame by the peer a whose 'from' names c", f, E.WRONG_SENDER, "F13",
        decoder="session", context=ctx())
    f, r = sframe("session/hello-type", type="HELLO", body=hello_body)
    add("session/hello-type", "a session frame of type HELLO: unexpected, its seq not consumed", f,
        E.UNEXPECTED_MESSAGE, "S4", ref=r, decoder="session", context=ctx())
    f, r = sframe("session/unknown-type", type="FROBNICATE", seq=2)
    add("session/unknown-type", "unknown type: non-fatal, the seq is consumed", f, E.UNKNOWN_TYPE, "M1", ref=r,
        decoder="session", context=ctx(recv_seq=2), recv_seq_after=3)
    f, r = sframe("session/invalid-body", type="HEARTBEAT", body={"ttl": -5}, seq=2)
    add("session/invalid-body", "invalid body: non-fatal, the seq is consumed", f, E.INVALID_BODY, "M2", ref=r,
        decoder="session", context=ctx(recv_seq=2), recv_seq_after=3)

    # Handshake
    r_open, r_answer, r_ready = fid("handshake/hello-open"), fid("handshake/hello-answer"), fid("handshake/ready")

    def shello(name: str, signer: str = "a", *, ts: int = TS, **fields: Any) -> tuple[bytes, bytes]:
        opener = signer != "b"
        body = {"network": NETWORK, "role": "node" if opener else "pool", "nonce": NONCE_A if opener else NONCE_B,
                "eph": EPH_A if opener else EPH_B, "versions": [VERSION], **fields}
        return signed(signer, payload(name, type="HELLO", ts=ts, sender=KEYS[signer].public, body=body)), fid(name)

    add("hs/opener-not-started", "an opener receives a frame before sending HELLO", hello_b,
        E.UNEXPECTED_MESSAGE, "H1", decoder="handshake", context=hs_ctx("opener", now=TS + 2, initiate=False))
    add("hs/after-established", "a handshake object that has completed takes no more frames (a live session "
        "decodes them instead: session/hello, S3)", hello_a, E.UNEXPECTED_MESSAGE,
        "H1", decoder="handshake", context=hs_ctx("answerer", now=TS + 2, prior=(hello_a, ready)))
    add("hs/session-frame", "a session frame (MAC) during the handshake", maced(K_OA, spayload("hs/session-frame")),
        E.UNEXPECTED_MESSAGE, "F23", decoder="handshake", context=hs_ctx("answerer"))
    add("hs/stale", "the opening HELLO is 120001 ms old", hello_a, E.STALE_TIMESTAMP, "F22", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", now=TS + WINDOW + 1))
    add("hs/ready-first", "READY before any HELLO", ready, E.UNEXPECTED_MESSAGE, "H2", ref=r_ready,
        decoder="handshake", context=hs_ctx("answerer", now=TS + 2))
    f, r = iv("hs/ping", ts=TS)
    add("hs/ping", "a signed PING during the handshake", f, E.UNEXPECTED_MESSAGE, "H2", ref=r, decoder="handshake",
        context=hs_ctx("answerer"))
    f, r = iv("hs/unknown-type", type="FROBNICATE")
    add("hs/unknown-type", "an unknown type during the handshake is unexpected, not unknown", f,
        E.UNEXPECTED_MESSAGE, "H2", ref=r, decoder="handshake", context=hs_ctx("answerer"))
    add("hs/second-hello", "a second HELLO where READY is expected", hello_a, E.UNEXPECTED_MESSAGE, "H2",
        ref=r_open, decoder="handshake", context=hs_ctx("answerer", now=TS + 2, prior=(hello_a,)))
    add("hs/ready-at-opener", "READY where the answerer's HELLO is expected", ready, E.UNEXPECTED_MESSAGE,
        "H2", ref=r_ready, decoder="handshake", context=hs_ctx("opener", now=TS + 2))
    f, r = shello("hs/bad-role", role="king")
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
        context=hs_ctx("answerer", network="othernet", pinned_key=C, versions=(3,)))
    add("hs/self", "the answerer has the opener's key", hello_a, E.SELF_CONNECTION, "H5", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", local="a"))
    add("hs/pinned-at-answerer", "the answerer pinned c", hello_a, E.PINNED_KEY_MISMATCH, "H6", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", pinned_key=C))
    add("hs/pinned-at-opener", "the opener pinned c, b answers", hello_b, E.PINNED_KEY_MISMATCH, "H6",
        ref=r_answer, decoder="handshake", context=hs_ctx("opener", now=TS + 2, pinned_key=C))
    f, r = shello("hs/v1-only", versions=[1])
    add("hs/v1-only", "a peer offering only [1]: unsupported_version naming [2]", f, E.UNSUPPORTED_VERSION, "H7",
        ref=r, decoder="handshake", context=hs_ctx("answerer"))
    add("hs/versions", "no common version (the answerer speaks only 3 here)", hello_a, E.UNSUPPORTED_VERSION, "H7",
        ref=r_open, decoder="handshake", context=hs_ctx("answerer", versions=(3,)))
    add("hs/nonce-reuse", "the opener's nonce equals the answerer's", hello_a, E.BAD_NONCE, "H8", ref=r_open,
        decoder="handshake", context=hs_ctx("answerer", nonce=NONCE_A))
    add("hs/eph-reuse", "the opener's eph equals the answerer's own (same ephemeral secret)", hello_a, E.BAD_KEY,
        "H10", ref=r_open, decoder="handshake", context=hs_ctx("answerer", eph_secret=EPH_SECRET_A))
    f, r = shello("hs/open-with-echo", echo=NONCE_B)
    add("hs/open-with-echo", "an opening HELLO carrying echo", f, E.BAD_NONCE, "H9", ref=r,
        decoder="handshake", context=hs_ctx("answerer"))
    f, r = shello("hs/answer-wrong-echo", "b", ts=TS + 1, echo=NONCE_B)
    add("hs/answer-wrong-echo", "the answer echoes the wrong nonce", f, E.BAD_NONCE, "H9", ref=r,
        decoder="handshake", context=hs_ctx("opener", now=TS + 2))
    f, r = shello("hs/answer-no-echo", "b", ts=TS + 1)
    add("hs/answer-no-echo", "the answer has no echo", f, E.BAD_NONCE, "H9", ref=r, decoder="handshake",
        context=hs_ctx("opener", now=TS + 2))
    f, _ = shello("hs/low-order-eph-at-opener", "b", ts=TS + 1, echo=NONCE_A, eph=LOW_ORDER)
    add("hs/low-order-eph-at-opener", "the answer's eph is the point 0: X25519 gives all zeros", f, E.BAD_KEY,
        "H11", decoder="handshake", context=hs_ctx("opener", now=TS + 2))
    low_open, _ = shello("hs/low-order-eph-at-answerer", eph=LOW_ORDER)
    add("hs/low-order-eph-at-answerer", "the opener's HELLO had eph 0; the answerer finds out deriving the keys "
        "on READY", ready, E.BAD_KEY, "H11", decoder="handshake",
        context=hs_ctx("answerer", now=TS + 2, prior=(low_open,)))
    f, _ = shello("hs/preauth-array", x=list(range(33)))
    add("hs/preauth-array", "an unknown HELLO field holding 33 elements: over the pre-auth max_array_len "
        "(32, limits §1.1), though within a session's", f, E.LIMIT_EXCEEDED, "F9", decoder="handshake",
        context=hs_ctx("answerer"))
    f, r = shello("hs/preauth-depth", x=[[[[1]]]])
    add("hs/preauth-depth", "an unknown HELLO field nesting the body 5 deep: over the pre-auth max_depth (4)",
        f, E.LIMIT_EXCEEDED, "F21", ref=r, decoder="handshake", context=hs_ctx("answerer"))
    f, _ = shello("hs/preauth-frame-size", x=b"\x00" * 4000)
    add("hs/preauth-frame-size", "a HELLO of more than preauth_frame_size (4096) bytes", f, E.FRAME_TOO_LARGE,
        "F2", decoder="handshake", context=hs_ctx("answerer"))
    return vs


def record_vectors() -> dict:
    """Signed records (docs/gelato/records.md): valid ones with their decoded content, and records every
    verifier must refuse, each with its check id and code. The verifier's state is in `context`."""
    from galaxynode import records as r

    kinds = {"node": r.NODE, "event": r.EVENT}
    node = r.NodeClaim(origin=B, network=NETWORK, seq=TS, issued=TS, expires=TS + 60_000, key=A,
                       capabilities=("gpu", "cpu"), meta={"region": "eu"})
    event = r.EventClaim(origin=B, network=NETWORK, seq=TS + 1, topic="node.left", event_id=fid("records/event"),
                         ts=TS, data={"key": A, "capabilities": ["gpu"], "meta": {}, "expires": TS})

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
        content = to_json(msgpack.unpackb(signed.record))
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
        raw("node", node_bytes, prefix=DESCRIPTOR_PREFIX), "R8")
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
