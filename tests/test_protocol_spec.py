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

from galaxynode.gelato import keys as gkeys
from galaxynode.gelato.codec import DEFAULT_LIMITS, MacKey, decode_frame
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
    """A signed frame has ts and from; a session frame seq (its sender and session are its key's)."""
    out = {"type": frame.type, "id": frame.id.hex()}
    if frame.seq is None:
        out |= {"ts": frame.ts, "from": frame.sender.hex()}
    else:
        out["seq"] = frame.seq
    return out | {"body": to_json(frame.body)}


def h(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value is not None else None


def make_session(ctx: dict) -> Session:
    """The receiving half of a session: the peer's key (for a signed frame inside it) and the receive key."""
    limits = attrs.evolve(DEFAULT_LIMITS, **ctx.get("limits", {}))
    return Session(KEYS[ctx["local"]], h(ctx["peer_key"]), None, b"", ctx["opener"], MacKey(bytes(32)),
                   MacKey(h(ctx["recv_key"])), limits, recv_seq=ctx["recv_seq"])


def make_handshake(ctx: dict) -> Handshake:
    hs = Handshake(KEYS[ctx["local"]], opener=ctx["side"] == "opener", network=ctx["network"], role=ctx["role"],
                   pinned_key=h(ctx["pinned_key"]), versions=tuple(ctx["versions"]), nonce=h(ctx["nonce"]),
                   eph_secret=h(ctx["eph_secret"]), clock=lambda: ctx["now"])
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
    _, payload, auth = msgpack.unpackb(vector_data(v))
    assert (payload.hex(), auth.hex()) == (v["payload"], v["auth"])
    assert len(auth) == {"signed": 64, "session": 16}[v["kind"]]


def test_message_vectors_cover_every_type():
    assert {v["content"]["type"] for v in MESSAGE_VECTORS} == set(MESSAGES)


def test_vector_keys_match_their_seeds():
    for name, k in _load("keys.json")["keys"].items():
        assert KEYS[name].public.hex() == k["public"]


def test_handshake_vectors_are_what_the_handshake_produces():
    hv, ks = HANDSHAKE, HANDSHAKE["key_schedule"]
    hello_open, hello_answer, ready = (bytes.fromhex(f["frame"]) for f in hv["frames"])
    clock = {"now": hv["frames"][0]["content"]["ts"]}

    def side(role: str, opener: bool) -> Handshake:
        d = hv[role]
        return Handshake(KEYS[d["key"]], opener=opener, network=hv["network"], role="node" if opener else "pool",
                         nonce=h(d["nonce"]), eph_secret=h(d["eph_secret"]),
                         agent=hv["frames"][0]["content"]["body"]["agent"], clock=lambda: clock["now"])

    opener, answerer = side("opener", True), side("answerer", False)

    def same_but_id(data: bytes, v: dict) -> None:
        got = content_of(decode_frame(data))
        assert {**got, "id": None} == {**v["content"], "id": None}

    same_but_id(opener.initiate(), hv["frames"][0])
    clock["now"] = hv["frames"][1]["content"]["ts"]
    same_but_id(answerer.receive(hello_open), hv["frames"][1])
    clock["now"] = hv["frames"][2]["content"]["ts"]
    same_but_id(opener.receive(hello_answer), hv["frames"][2])
    assert answerer.receive(ready) is None
    o, a = opener.session, answerer.session
    assert o.sid.hex() == a.sid.hex() == ks["sid"]
    assert (o.send_key.key.hex(), o.recv_key.key.hex()) == (ks["k_oa"], ks["k_ao"])
    assert (a.send_key.key.hex(), a.recv_key.key.hex()) == (ks["k_ao"], ks["k_oa"])


def test_key_schedule_is_rfc_x25519_and_hkdf():
    """The key schedule from the JSON alone, through another library (cryptography's X25519 and HKDF),
    as an outside implementation would compute it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    hv, ks = HANDSHAKE, HANDSHAKE["key_schedule"]
    o = X25519PrivateKey.from_private_bytes(h(hv["opener"]["eph_secret"]))
    a = X25519PrivateKey.from_private_bytes(h(hv["answerer"]["eph_secret"]))
    assert o.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == hv["opener"]["eph"]
    assert a.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == hv["answerer"]["eph"]
    shared = o.exchange(X25519PublicKey.from_public_bytes(h(hv["answerer"]["eph"])))
    assert shared.hex() == ks["shared"] == a.exchange(o.public_key()).hex()
    sid_input = b"".join(h(x) for x in (hv["opener"]["nonce"], hv["answerer"]["nonce"], hv["opener"]["public"],
                                        hv["answerer"]["public"], hv["opener"]["eph"], hv["answerer"]["eph"]))
    assert sid_input.hex() == ks["sid_input"] and hashlib.sha256(sid_input).hexdigest() == ks["sid"]
    for info, name in ((b"gelato/v2 opener->answerer", "k_oa"), (b"gelato/v2 answerer->opener", "k_ao")):
        assert HKDF(hashes.SHA256(), 32, h(ks["sid"]), info).derive(shared).hex() == ks[name]
    assert SPEC["key_schedule"]["info_opener_to_answerer_hex"] == ks["info_opener_to_answerer"]
    assert gkeys.INFO_ANSWERER_TO_OPENER.hex() == ks["info_answerer_to_opener"]


def test_session_vectors_decode_in_wire_order():
    """One receiving Session per direction, fed every frame in order: seq counts per direction; every
    MAC is keyed BLAKE2b-128 of the payload under the sender's direction key."""
    sessions: dict[str, Session] = {}
    keys = {"a": SESSION["k_oa"], "b": SESSION["k_ao"]}
    for v in SESSION["frames"]:
        ctx = v["context"]
        s = sessions.setdefault(ctx["local"], make_session({**ctx, "recv_seq": 0}))
        assert s.recv_seq == ctx["recv_seq"]
        assert content_of(decode(v, s)) == v["content"]
        assert hashlib.blake2b(h(v["payload"]), key=h(keys[v["sender"]]), digest_size=16).hexdigest() == v["auth"]
    assert (SESSION["k_oa"], SESSION["k_ao"]) == (HANDSHAKE["key_schedule"]["k_oa"], HANDSHAKE["key_schedule"]["k_ao"])


def test_replies_cite_the_request_id():
    ids = {v["content"]["id"] for v in SESSION["frames"]}
    replies = [v for v in SESSION["frames"] if "re" in v["content"]["body"]]
    assert replies and all(v["content"]["body"]["re"] in ids for v in replies)


def test_docs_examples_are_the_vectors():
    """The byte-by-byte examples of the prose are the vectors' bytes."""
    ping = next(v for v in MESSAGE_VECTORS if v["name"] == "PING")
    ready = next(v for v in MESSAGE_VECTORS if v["name"] == "READY")
    docs = ROOT / "docs" / "gelato"
    framing = (docs / "framing.md").read_text(encoding="utf-8")
    signing = (docs / "signing.md").read_text(encoding="utf-8")
    handshake = (docs / "handshake.md").read_text(encoding="utf-8")
    assert f"frame: {ping['frame']}" in framing and ping["content"]["id"] in framing
    assert ping["auth"] in framing and HANDSHAKE["key_schedule"]["k_oa"] in framing
    assert f"frame: {ready['frame']}" in signing and ready["auth"] in signing
    assert KEYS["a"].public.hex() in signing
    for name in ("shared", "sid", "prk", "k_oa", "k_ao"):
        assert HANDSHAKE["key_schedule"][name] in handshake, name


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
