"""The spec's machine-readable twin agrees with the code: protocol/gelato.json, the generated tables in
docs/gelato/ and protocol/vectors/ regenerate byte for byte, and every vector decodes (or fails) as
it says. The vector runner here reads only the JSON files, as another implementation would."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest

from galaxynode.gelato.codec import DEFAULT_LIMITS, decode_frame
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.handshake import Handshake, Session, State
from galaxynode.gelato.messages import MESSAGES, STRUCTS
from galaxynode.identity import Identity

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "protocol" / "vectors"


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_spec_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_protocol = _script("gen_protocol")
gen_vectors = _script("gen_vectors")


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


KEYS = {k: Identity.from_seed(bytes.fromhex(v["seed"])) for k, v in _load("keys.json")["keys"].items()}
SPEC = json.loads((ROOT / "protocol" / "gelato.json").read_text(encoding="utf-8"))
MESSAGE_VECTORS = _load("messages.json")["vectors"]
HANDSHAKE = _load("handshake.json")
SESSION = _load("session.json")
INVALID = _load("invalid.json")["vectors"]
VALID = MESSAGE_VECTORS + HANDSHAKE["frames"] + SESSION["frames"]


# --- generated files are current ------------------------------------------------------------

protocol_outputs = functools.cache(gen_protocol.outputs)
vector_outputs = functools.cache(gen_vectors.outputs)


@pytest.mark.parametrize("path", sorted(protocol_outputs(), key=str), ids=lambda p: p.name)
def test_protocol_files_match_the_code(path):
    assert path.read_text(encoding="utf-8") == protocol_outputs()[path], \
        f"stale: run scripts/gen_protocol.py ({path.name})"


@pytest.mark.parametrize("path", sorted(vector_outputs(), key=str), ids=lambda p: p.name)
def test_vector_files_regenerate(path):
    assert path.read_text(encoding="utf-8") == vector_outputs()[path], \
        f"stale: run scripts/gen_vectors.py ({path.name})"


@pytest.mark.parametrize("table, key", [("ERROR_MEANINGS", ErrorCode.BAD_SEQUENCE), ("MESSAGE_DOCS", "JOIN"),
                                        ("STRUCT_DOCS", "NodeRecord"), ("CODEC_LIMIT_DOCS", "max_depth"),
                                        ("SESSION_LIMIT_DOCS", "idle_timeout"), ("BOUND_DOCS", "MAX_NAME")])
def test_generator_refuses_undocumented_code(monkeypatch, table, key):
    """What the code adds (an error code, a message type, a limit) cannot ship without a meaning."""
    docs = dict(getattr(gen_protocol, table))
    del docs[key]
    monkeypatch.setattr(gen_protocol, table, docs)
    with pytest.raises(SystemExit, match="undocumented"):
        gen_protocol.build()


def test_generator_refuses_stale_meanings(monkeypatch):
    monkeypatch.setattr(gen_protocol, "MESSAGE_DOCS", {**gen_protocol.MESSAGE_DOCS, "GONE": ("push", (), "x")})
    with pytest.raises(SystemExit, match="gone"):
        gen_protocol.build()


def test_generated_block_markers_are_required(tmp_path):
    with pytest.raises(SystemExit, match="exactly one block"):
        gen_protocol.fill("no markers here", "codes", "x", "f.md")


def test_check_mode_reports_clean_tree():
    assert gen_protocol.main(["--check"]) == 0
    assert gen_vectors.main(["--check"]) == 0


# --- gelato.json says what the code does --------------------------------------------------------

def test_json_errors_are_the_code_errors():
    codes = {c["code"]: c for c in SPEC["errors"]["codes"]}
    assert set(codes) == {int(c) for c in ErrorCode}
    for c in ErrorCode:
        assert codes[int(c)]["name"] == c.name.lower()
        assert codes[int(c)]["fatal"] == c.fatal
        assert codes[int(c)]["group"] == c.group
        assert codes[int(c)]["meaning"]


def test_json_messages_are_the_code_schemas():
    assert set(SPEC["messages"]) == set(MESSAGES)
    assert set(SPEC["structs"]) == set(STRUCTS)
    for name, cls in MESSAGES.items():
        body = SPEC["messages"][name]["body"]
        assert SPEC["messages"][name]["family"] == cls.FAMILY
        assert {k: {f: v for f, v in s.items() if f != "default"} for k, s in body.items()} == cls.schema()
        for a in attrs.fields(cls):
            if a.default is attrs.NOTHING:
                assert "default" not in body[a.name]
                continue
            default = a.default.factory() if isinstance(a.default, attrs.Factory) else a.default
            assert body[a.name]["default"] == (list(default) if isinstance(default, tuple) else default)
        for reply in SPEC["messages"][name]["replies"]:
            assert reply in MESSAGES


def test_json_limits_are_the_code_defaults():
    assert {k: v["default"] for k, v in SPEC["limits"].items()} == attrs.asdict(DEFAULT_LIMITS)


def test_every_decoder_code_is_a_known_error():
    names = {c.name.lower() for c in ErrorCode}
    for check in SPEC["checks"]:
        assert set(check["codes"]) <= names, check["id"]


# --- vectors: valid frames ----------------------------------------------------------------------

def to_json(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def content_of(frame) -> dict:
    return {"type": frame.type, "id": frame.id.hex(), "ts": frame.ts, "from": frame.sender.hex(),
            "sid": frame.sid.hex() if frame.sid else None, "seq": frame.seq, "body": to_json(frame.body)}


def h(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value is not None else None


def make_session(ctx: dict) -> Session:
    return Session(KEYS[ctx["local"]], h(ctx["peer_key"]), None, h(ctx["sid"]), False, recv_seq=ctx["recv_seq"])


def make_handshake(ctx: dict) -> Handshake:
    hs = Handshake(KEYS[ctx["local"]], opener=ctx["side"] == "opener", network=ctx["network"], role=ctx["role"],
                   pinned_key=h(ctx["pinned_key"]), versions=tuple(ctx["versions"]), nonce=h(ctx["nonce"]),
                   clock=lambda: ctx["now"])
    if ctx["side"] == "opener" and ctx["initiate"]:
        hs.initiate()
    for prior in ctx["prior"]:
        hs.receive(bytes.fromhex(prior))
    return hs


def vector_data(v: dict) -> bytes | str:
    if "frame" in v:
        return bytes.fromhex(v["frame"])
    return v["input"]["text"] if "text" in v["input"] else bytes.fromhex(v["input"]["binary"])


def decode(v: dict, session: Session | None = None):
    """Run a vector through the decoder its context names."""
    data, ctx = vector_data(v), v["context"]
    if v["decoder"] == "frame":
        limits = attrs.evolve(DEFAULT_LIMITS, **ctx["limits"])
        return decode_frame(data, limits, expected_key=h(ctx["expected_key"]), now=ctx["now"])
    if v["decoder"] == "session":
        return (session or make_session(ctx)).decode(data)
    assert v["decoder"] == "handshake"
    return make_handshake(ctx).receive(data)


@pytest.mark.parametrize("v", VALID, ids=lambda v: v["name"])
def test_valid_vector_decodes_to_its_content(v):
    frame = decode(v)
    if v["decoder"] == "handshake":  # the handshake accepted it; its content is checked frame-level
        frame = decode_frame(vector_data(v), now=v["context"]["now"])
    assert content_of(frame) == v["content"]
    assert MESSAGES[frame.type].from_body(frame.body) is not None
    _, payload, sig = msgpack.unpackb(vector_data(v))
    assert (payload.hex(), sig.hex()) == (v["payload"], v["signature"])


def test_message_vectors_cover_every_type():
    assert {v["content"]["type"] for v in MESSAGE_VECTORS} == set(MESSAGES)


def test_vector_keys_match_their_seeds():
    for name, k in _load("keys.json")["keys"].items():
        assert KEYS[name].public.hex() == k["public"]


def test_handshake_vectors_are_what_the_handshake_produces():
    hv = HANDSHAKE
    hello_open, hello_answer, ready = (bytes.fromhex(f["frame"]) for f in hv["frames"])
    clock = {"now": hv["frames"][0]["content"]["ts"]}
    opener = Handshake(KEYS[hv["opener"]["key"]], opener=True, network=hv["network"], role="node",
                       nonce=h(hv["opener"]["nonce"]), agent=hv["frames"][0]["content"]["body"]["agent"],
                       clock=lambda: clock["now"])
    answerer = Handshake(KEYS[hv["answerer"]["key"]], opener=False, network=hv["network"], role="pool",
                         nonce=h(hv["answerer"]["nonce"]), agent=hv["frames"][1]["content"]["body"]["agent"],
                         clock=lambda: clock["now"])

    def same_but_id(data: bytes, v: dict) -> None:
        got = content_of(decode_frame(data))
        assert {**got, "id": None} == {**v["content"], "id": None}

    same_but_id(opener.initiate(), hv["frames"][0])
    clock["now"] = hv["frames"][1]["content"]["ts"]
    same_but_id(answerer.receive(hello_open), hv["frames"][1])
    clock["now"] = hv["frames"][2]["content"]["ts"]
    same_but_id(opener.receive(hello_answer), hv["frames"][2])
    assert answerer.receive(ready) is None
    assert opener.session.sid.hex() == answerer.session.sid.hex() == hv["sid"]
    assert hashlib.sha256(bytes.fromhex(hv["sid_input"])).hexdigest() == hv["sid"]


def test_session_vectors_decode_in_wire_order():
    """One receiving Session per direction, fed every frame in order: seq counts per direction."""
    sessions: dict[str, Session] = {}
    for v in SESSION["frames"]:
        ctx = v["context"]
        s = sessions.setdefault(ctx["local"], make_session({**ctx, "recv_seq": 0}))
        assert s.recv_seq == ctx["recv_seq"]
        assert content_of(decode(v, s)) == v["content"]
    assert {v["context"]["sid"] for v in SESSION["frames"]} == {SESSION["sid"], HANDSHAKE["sid"]}


def test_replies_cite_the_request_id():
    ids = {v["content"]["id"] for v in SESSION["frames"]}
    replies = [v for v in SESSION["frames"] if "re" in v["content"]["body"]]
    assert replies and all(v["content"]["body"]["re"] in ids for v in replies)


def test_framing_example_is_the_ping_vector():
    ping = next(v for v in MESSAGE_VECTORS if v["name"] == "PING")
    framing = (ROOT / "docs" / "gelato" / "framing.md").read_text(encoding="utf-8")
    signing = (ROOT / "docs" / "gelato" / "signing.md").read_text(encoding="utf-8")
    handshake = (ROOT / "docs" / "gelato" / "handshake.md").read_text(encoding="utf-8")
    assert f"frame: {ping['frame']}" in framing
    assert ping["content"]["id"] in framing
    assert ping["signature"] in signing and KEYS["a"].public.hex() in signing
    assert HANDSHAKE["sid"] in handshake


# --- vectors: invalid frames --------------------------------------------------------------------

@pytest.mark.parametrize("v", INVALID, ids=lambda v: v["name"])
def test_invalid_vector_raises_its_code(v):
    session = make_session(v["context"]) if v["decoder"] == "session" else None
    with pytest.raises(ProtocolError) as info:
        decode(v, session)
    e = info.value
    assert int(e.code) == v["error"]["code"] and e.code.name.lower() == v["error"]["name"]
    assert e.fatal == v["error"]["fatal"]
    assert (e.ref.hex() if e.ref else None) == v["error"]["re"]
    if session is not None:
        assert session.recv_seq == v["recv_seq_after"]


def test_invalid_handshake_vectors_fail_the_handshake():
    for v in INVALID:
        if v["decoder"] == "handshake":
            hs = make_handshake(v["context"])
            with pytest.raises(ProtocolError):
                hs.receive(vector_data(v))
            assert hs.state is State.FAILED, v["name"]


def test_invalid_vectors_cover_every_check_and_code():
    checks = {c["id"]: c for c in SPEC["checks"]}
    for v in INVALID:
        assert v["error"]["name"] in checks[v["step"]]["codes"], v["name"]
        assert (v["error"]["re"] is not None) <= checks[v["step"]]["re"], v["name"]
    assert {v["step"] for v in INVALID} == set(checks)
    decoder_codes = {code for c in SPEC["checks"] for code in c["codes"]}
    assert {v["error"]["name"] for v in INVALID} == decoder_codes


def test_vector_names_are_unique():
    names = [v["name"] for v in VALID + INVALID]
    assert len(names) == len(set(names))


# --- benchmark script ---------------------------------------------------------------------------

def test_bench_codec_quick_prints_the_table():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_codec.py"), "--quick"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for needle in ("bare/s", "codec/s", "ratio", "encode_frame", "decode_frame", "Session.decode",
                   "target decode_frame >= 0.80"):
        assert needle in out
