"""Framing (framing §1-§5): the decoder's checks, from the invalid vectors, and what a receiver
must accept (any valid encoding, unknown keys, the edge vectors)."""
from __future__ import annotations

import os
from functools import partial

from galaxynode.conformance import vectors
from galaxynode.conformance.probe import CaseFailed, Options, maced, open_link, raw_payload
from galaxynode.conformance.runner import case

# Decoder steps checked by sending their invalid vectors as a connection's first frame.
STEPS = {
    "F1": ("overview §3.2, framing §5 F1", "a text message is refused with text_frame"),
    "F3": ("framing §5 F3", "a message that is not exactly one valid msgpack value is malformed_frame"),
    "F4": ("framing §5 F4", "a frame that is not a 3-element array is malformed_frame"),
    "F5": ("framing §5 F5", "a version that is not an integer is malformed_frame"),
    "F6": ("framing §5 F6, versioning §2", "a version other than 2 (a v1 frame included) is unsupported_version, "
                                           "checked before the rest"),
    "F7": ("framing §1.2, §5 F7", "a payload that is not bin, or an auth not 64 or 16 bytes of bin, is malformed_frame"),
    "F9": ("framing §2, §5 F9", "payload msgpack defects (truncated, trailing, UTF-8, ext, duplicate keys, the "
                                "parser's 1024 levels) are malformed_frame or limit_exceeded"),
    "F10": ("framing §5 F10", "a payload that is not a map is malformed_frame"),
    "F11": ("framing §5 F11", "'from' absent or not 32 bytes of bin is bad_key"),
    "F14": ("framing §5 F14", "'id' absent or not 16 bytes is malformed_frame, without re"),
    "F15": ("framing §5 F15", "'type' absent or not a non-empty str is malformed_frame, with re"),
    "F16": ("framing §5 F16", "'ts' absent or not an integer >= 0 is malformed_frame"),
    "F19": ("framing §5 F19", "'body' absent or not a map is malformed_frame"),
    "F20": ("framing §2.5, §5 F20", "a payload key that is not a str is malformed_frame"),
    "F21": ("framing §2.7, §5 F21", "body nesting beyond 16 is limit_exceeded, a non-str body key "
                                    "malformed_frame, first met decides"),
    "F23": ("handshake §4.1, framing §5 F23", "a session frame as a connection's first frame is unexpected_message"),
}

for _step, (_section, _title) in STEPS.items():
    case("framing", _section, f"{_title} (invalid.json {_step} vectors)")(
        partial(vectors.reject_first_frames, step=_step))


@case("framing", "framing §1.4", "any valid msgpack encoding of a frame is accepted (version as uint 8, "
                                 "payload in bin 32, MAC in bin 16)")
async def non_canonical(opts: Options) -> None:
    async with open_link(opts) as link:
        s = link.session
        data = os.urandom(8)
        payload = raw_payload({"type": "PING", "id": os.urandom(16), "seq": s.send_seq, "body": {"data": data}})
        tag = maced(link.keys.k_oa, payload)[-16:]
        frame = b"\x93\xcc\x02" + b"\xc6" + len(payload).to_bytes(4, "big") + payload + b"\xc5\x00\x10" + tag
        link.consume()
        await link.send(frame)
        got = await link.receive()
        if got.type != "PONG" or got.msg.data != data:
            raise CaseFailed("PONG to a non-minimally encoded PING", got.type)


@case("framing", "framing §3.3, messages §1.4", "unknown payload header keys (v1's from, ts and sid among them) "
                                                "and body keys are ignored")
async def unknown_keys(opts: Options) -> None:
    async with open_link(opts) as link:
        data = os.urandom(8)
        frame, _ = link.craft("PING", {"data": data, "x-future-field": [1, "two"]},
                              extra={"x-future-header": {"nested": True}, "from": os.urandom(32), "ts": 1,
                                     "sid": os.urandom(32)})
        link.consume()
        await link.send(frame)
        got = await link.receive()
        if got.type != "PONG" or got.msg.data != data:
            raise CaseFailed("PONG echoing the data", got.type)


@case("framing", "framing §2, limits §1", "frames at the limits are accepted (messages.json edge/ PING vectors "
                                          "re-wrapped into a session)")
async def edge_vectors(opts: Options) -> str:
    edges = [v for v in vectors.load(opts, "messages")["vectors"]
             if v["name"].startswith("edge/") and v["content"]["type"] == "PING" and not v["context"].get("limits")]
    async with open_link(opts) as link:
        for v in edges:
            frame, _ = vectors.rewrap(link, bytes.fromhex(v["payload"]))
            await link.send(frame)
            got = await link.receive()
            want = v["content"]["body"].get("data")
            if got.type != "PONG" or (got.msg.data or b"").hex() != (want or ""):
                raise CaseFailed(f"PONG echoing the data of vector {v['name']!r}",
                                 f"{got.type} {got.msg.to_body() if got.type != 'ERROR' else got.msg.message}")
    return f"{len(edges)} vectors: {', '.join(v['name'] for v in edges)}"

