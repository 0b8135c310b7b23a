"""The test vectors of protocol/vectors/ as the suite uses them against a live endpoint.

Vectors are fixed frames from fixed keys with 2023 timestamps. Invalid frames whose check comes
before the time check (F1-F21, F23) can be sent verbatim as a connection's first frame: the answerer
must reject them with the listed code before it looks at the clock. Vectors that need a session
(body checks, edge cases) are re-wrapped: the same payload bytes as a session frame of the live
session (the live seq, MAC'd with our key; a signed frame's from and ts dropped), everything else
byte for byte.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import msgpack

from galaxynode.conformance.probe import CaseSkipped, Link, Options, maced

_PACKAGE = Path(__file__).resolve().parent.parent
# A checkout has protocol/vectors beside the package; a wheel ships them as galaxynode/protocol_data.
DEFAULT_DIR = next((d for d in (_PACKAGE.parent / "protocol" / "vectors", _PACKAGE / "protocol_data" / "vectors")
                    if d.is_dir()), _PACKAGE.parent / "protocol" / "vectors")


@cache
def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def load(opts: Options, name: str) -> dict[str, Any]:
    path = Path(opts.vectors) if opts.vectors else DEFAULT_DIR
    try:
        return _read(path / f"{name}.json")
    except OSError:
        raise CaseSkipped(f"test vectors not found in {path} (pass --vectors DIR)") from None


def invalid_first_frames(opts: Options, step: str) -> list[dict[str, Any]]:
    """invalid.json vectors for `step` that a live answerer must reject as a first frame: frame
    decoder, no known key, default limits."""
    out = []
    for v in load(opts, "invalid")["vectors"]:
        ctx = v["context"]
        if (v["step"] == step and v["decoder"] == "frame" and ctx.get("expected_key") is None
                and not ctx.get("limits")):
            out.append(v)
    return out


def rewrap(link: Link, payload: bytes) -> tuple[bytes, bytes]:
    """A session frame (bytes, id) carrying `payload` with seq replaced or added, from/ts/sid
    dropped and every other entry (type, id, body, unknown keys) copied byte for byte. Consumes a seq."""
    session = link.session
    assert session is not None and link.keys is not None
    up = msgpack.Unpacker(raw=False, strict_map_key=False)
    up.feed(payload)
    entries: dict[Any, bytes] = {}
    for _ in range(up.read_map_header()):
        key = up.unpack()
        start = up.tell()
        up.skip()
        entries[key] = payload[start:up.tell()]
    fid = msgpack.unpackb(entries["id"])
    for k in ("from", "ts", "sid"):
        entries.pop(k, None)
    entries["seq"] = msgpack.packb(session.send_seq)
    packer = msgpack.Packer(use_bin_type=True)
    out = packer.pack_map_header(len(entries)) + b"".join(packer.pack(k) + v for k, v in entries.items())
    link.consume()
    return maced(link.keys.k_oa, out), fid


async def reject_first_frames(opts: Options, step: str) -> str:
    """Send each applicable invalid vector of `step` as the first frame of its own connection;
    each must get ERROR with the vector's code and `re`, then the close (handshake §8.1)."""
    from galaxynode.conformance.probe import CaseFailed, open_link
    from galaxynode.gelato.errors import ErrorCode
    vectors = invalid_first_frames(opts, step)
    if not vectors:
        raise CaseSkipped(f"no applicable {step} vectors")
    for v in vectors:
        async with open_link(opts, handshake=False) as link:
            if "text" in v["input"]:
                await link.send_text(v["input"]["text"])
            else:
                await link.send(bytes.fromhex(v["input"]["binary"]))
            err = v["error"]
            try:
                await link.expect_error(ErrorCode(err["code"]), re=bytes.fromhex(err["re"]) if err["re"] else None,
                                        closes=True)
            except CaseFailed as e:
                raise CaseFailed(f"{e.expected} for vector {v['name']!r}", e.got) from None
    return f"{len(vectors)} vectors: {', '.join(v['name'] for v in vectors)}"
