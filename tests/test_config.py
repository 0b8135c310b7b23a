import datetime
import math
import pickle
import re
import tomllib
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galaxynode.config import (ENV_PREFIX, RELOADABLE, SECTIONS, SPEC, Bool, Config, ConfigError, FilePath, Float,
                               HostPort, Int, LimitsConfig, ListOf, Peer, PublicKey, Spec, StaticPeer, Str, Url,
                               apply_reloadable, diff_reloadable, load_config)
from galaxynode.gelato import codec
from galaxynode.identity import format_public_key

EXAMPLE = Path(__file__).resolve().parent.parent / "galaxynode.toml"
K1, K2 = bytes(range(32)), bytes([0xEE]) * 32
T1, T2 = format_public_key(K1), format_public_key(K2)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(text)
    return path


def error_of(tmp_path=None, text=None, **kw) -> ConfigError:
    path = write(tmp_path, text) if text is not None else kw.pop("path", None)
    kw.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    e = info.value
    assert "\n" not in str(e) and str(e) == f"config: {e.key}: {e.problem}"
    return e


# --- sources and precedence ----------------------------------------------------------------------

def test_defaults_need_no_file():
    c = load_config(env={})
    assert c == Config()
    assert c.server.listen == ("ws://127.0.0.1:7447",)
    assert c.node.key_file is None and c.key_path == Path("./galaxynode-data/node.key")
    assert c.data_path("registry.sqlite") == Path("galaxynode-data/registry.sqlite")
    assert c.limits.codec_limits() == codec.Limits()
    assert hash(c) == hash(Config())


def test_toml_file_loads_typed_values(tmp_path):
    c = load_config(write(tmp_path, f"""
        [node]
        name = "pool one"
        key_file = "/etc/galaxynode/pool.key"
        [server]
        listen = ["ws://0.0.0.0:7447", "ws://[::1]:0"]
        [limits]
        max_frame_size = 2097152
        byte_burst = 2097152
        handshake_timeout = 3        # an integer where a float is wanted is fine
        [admission]
        mode = "allowlist"
        allow = ["{T1}", "{K2.hex().upper()}"]
        [peers]
        static = [{{ url = "wss://peer.example:7447", key = "{T2}" }}, {{ url = "ws://127.0.0.1:7448" }}]
        [plugins]
        enabled = ["audit-log", "my.pkg:Plugin"]
        [plugins.audit-log]
        path = "/tmp/audit.log"
        topics = ["node.#"]
        [daemon]
        watchdog = false
        """), env={})
    assert c.node.name == "pool one" and c.key_path == Path("/etc/galaxynode/pool.key")
    assert c.server.listen == ("ws://0.0.0.0:7447", "ws://[::1]:0")
    assert c.limits.codec_limits().max_frame_size == 2097152
    assert c.limits.handshake_timeout == 3.0 and isinstance(c.limits.handshake_timeout, float)
    assert c.admission.allow == (K1, K2)
    assert c.peers.static == (StaticPeer("wss://peer.example:7447", K2), StaticPeer("ws://127.0.0.1:7448"))
    assert c.plugins.enabled == ("audit-log", "my.pkg:Plugin")
    assert c.plugins.section("audit-log") == {"path": "/tmp/audit.log", "topics": ["node.#"]}
    assert c.plugins.section("absent") == {}
    assert c.daemon.watchdog is False


def test_plugin_section_is_a_private_copy(tmp_path):
    c = load_config(write(tmp_path, '[plugins.x]\ntopics = ["a"]\n'), env={})
    got = c.plugins.section("x")
    got["topics"].append("b")
    assert c.plugins.section("x") == {"topics": ["a"]}


def test_environment_overrides_file_and_parses_per_type(tmp_path):
    path = write(tmp_path, '[limits]\nmax_frame_size = 2048\n[network]\nid = "from-file"\n')
    env = {
        "GALAXYNODE_LIMITS_MAX_FRAME_SIZE": "4096",
        "GALAXYNODE_LIMITS_FRAME_RATE": "12.5",
        "GALAXYNODE_SERVER_LISTEN": "ws://127.0.0.1:1, ws://127.0.0.1:2",
        "GALAXYNODE_ADMISSION_ADMINS": f"{T1},{T2}",
        "GALAXYNODE_PEERS_STATIC": f"ws://127.0.0.1:9#{T1},ws://127.0.0.1:10",
        "GALAXYNODE_DAEMON_WATCHDOG": "0",
        "GALAXYNODE_NODE_KEY_FILE": "",
        "UNRELATED": "ignored",
    }
    c = load_config(path, env=env)
    assert c.limits.max_frame_size == 4096
    assert c.limits.frame_rate == 12.5
    assert c.network.id == "from-file"
    assert c.server.listen == ("ws://127.0.0.1:1", "ws://127.0.0.1:2")
    assert c.admission.admins == (K1, K2)
    assert c.peers.static == (StaticPeer("ws://127.0.0.1:9", K1), StaticPeer("ws://127.0.0.1:10"))
    assert c.daemon.watchdog is False and c.node.key_file is None


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("ON", True), ("false", False),
                                         ("0", False), ("no", False)])
def test_environment_booleans(text, value):
    assert load_config(env={"GALAXYNODE_DAEMON_WATCHDOG": text}).daemon.watchdog is value


def test_overrides_override_environment():
    env = {"GALAXYNODE_NETWORK_ID": "from-env", "GALAXYNODE_LOGGING_LEVEL": "warning"}
    c = load_config(env=env, overrides={"network.id": "from-flags", "server.listen": ["ws://127.0.0.1:0"],
                                        "limits.max_peers": "40", "peers.target": 9, "node.name": None})
    assert c.network.id == "from-flags"
    assert c.logging.level == "warning"
    assert c.server.listen == ("ws://127.0.0.1:0",)
    assert c.limits.max_peers == 40 and c.peers.target == 9
    assert c.node.name == "galaxynode"   # None means "flag not given"


# --- errors --------------------------------------------------------------------------------------

def test_error_message_format(tmp_path):
    e = error_of(tmp_path, "[limits]\nmax_frame_size = 'abc'\n")
    assert str(e) == "config: limits.max_frame_size: must be an integer between 1024 and 67108864 (got 'abc')"
    assert e.key == "limits.max_frame_size"


@pytest.mark.parametrize("text, key, words", [
    ("[limits]\nmax_frame_size = 12\n", "limits.max_frame_size", "between 1024 and 67108864 (got 12)"),
    ("[limits]\nmax_frame_size = true\n", "limits.max_frame_size", "(got True)"),
    ("[limits]\nmax_frame_size = 2048.0\n", "limits.max_frame_size", "integer"),
    ("[limits]\nhandshake_timeout = -1\n", "limits.handshake_timeout", "number between 0.1 and 300 seconds"),
    ("[limits]\nidle_timeout = nan\n", "limits.idle_timeout", "(got nan)"),
    ("[limits]\nidle_timeout = '60'\n", "limits.idle_timeout", "(got '60')"),
    ("[daemon]\nwatchdog = 'yes'\n", "daemon.watchdog", "true or false"),
    ("[logging]\nlevel = 'loud'\n", "logging.level", "one of 'debug', 'info', 'warning', 'error' (got 'loud')"),
    ("[logging]\nlevel = 7\n", "logging.level", "(got 7)"),
    ("[node]\nrole = 'node'\n", "node.role", "one of 'pool', 'mainnet'"),
    ("[network]\nid = ''\n", "network.id", "1 to 64 printable characters"),
    ('[network]\nid = "x\\ty"\n', "network.id", "printable"),
    ("[node]\nname = '" + "n" * 65 + "'\n", "node.name", "1 to 64"),
    ("[server]\nlisten = []\n", "server.listen", "1 to 16 items"),
    ("[server]\nlisten = 'ws://127.0.0.1:1'\n", "server.listen", "a list of"),
    ("[server]\nlisten = ['http://127.0.0.1:1']\n", "server.listen", "item 1: must be a ws:// or wss:// URL"),
    ("[server]\nlisten = ['ws://127.0.0.1:1', 'ws://127.0.0.1']\n", "server.listen", "item 2:"),
    ("[server]\nlisten = ['ws://127.0.0.1:99999']\n", "server.listen", "invalid URL"),
    ("[server]\nlisten = ['ws://u:p@127.0.0.1:1']\n", "server.listen", "credentials"),
    ("[mainnet]\nurl = 'ws://'\n", "mainnet.url", "missing host"),
    ("[mainnet]\nurl = 'ws://main.example:7447/#x'\n", "mainnet.url", "fragments"),
    ("[admission]\nallow = ['ed25519:1234']\n", "admission.allow", "item 1: must be a public key"),
    ("[admission]\nadmins = [5]\n", "admission.admins", "public key"),
    ("[peers]\nstatic = [{ uri = 'ws://a:1' }]\n", "peers.static", "item 1: must be a table"),
    ("[peers]\nstatic = [{ url = 'ws://a:1', kye = 'x' }]\n", "peers.static", "unknown key 'kye'"),
    ("[peers]\nstatic = [{ url = 'ws://a:1', key = 'nope' }]\n", "peers.static", "item 1: key: must be a public key"),
    ("[metrics]\nlisten = '9100'\n", "metrics.listen", "host:port"),
    ("[metrics]\nlisten = '::1:9100'\n", "metrics.listen", "host:port"),
    ("[plugins]\nenabled = ['bad name']\n", "plugins.enabled", "plugin name or dotted path"),
    ("[data]\ndir = ''\n", "data.dir", "non-empty path"),
    # rules across keys
    ("[server]\nlisten = ['wss://127.0.0.1:1']\n", "server.tls_cert", "wss:// listen URL needs"),
    ("[server]\ntls_cert = 'c.pem'\n", "server.tls_key", "set together"),
    ("[limits]\nbyte_burst = 1024\n", "limits.byte_burst", "at least max_frame_size (1048576)"),
    ("[limits]\nping_interval = 60\n", "limits.ping_interval", "shorter than idle_timeout (60)"),
    ("[registry]\ndefault_ttl = 4000\n", "registry.default_ttl", "between min_ttl and max_ttl (5..3600)"),
    ("[registry]\nmin_ttl = 50\nmax_ttl = 40\n", "registry.max_ttl", "at least min_ttl (50)"),
    ("[peers]\nreconnect_min = 5\nreconnect_max = 2\n", "peers.reconnect_max", "at least reconnect_min"),
    ("[plugins]\nbackoff_base = 5\nbackoff_max = 2\n", "plugins.backoff_max", "at least backoff_base"),
    ("[mainnet]\ndescriptor_ttl = 30\n", "mainnet.announce_interval", "shorter than descriptor_ttl (30)"),
    ("[peers]\ntarget = 33\n", "peers.target", "must not exceed limits.max_peers (32) (got 33)"),
])
def test_bad_values_name_the_key(tmp_path, text, key, words):
    e = error_of(tmp_path, text)
    assert e.key == key
    assert words in e.problem


@pytest.mark.parametrize("text, key, words", [
    ("[sever]\nlisten = []\n", "sever", "unknown section [sever]; did you mean server?"),
    ("[server]\nlisten_on = ['ws://127.0.0.1:1']\n", "server.listen_on", "unknown key; did you mean server.listen?"),
    ("[limits]\nzzz = 1\n", "limits.zzz", "unknown key"),
    ("name = 'x'\n", "name", "keys belong in a [section]; did you mean node.name?"),
    ("logging = 'debug'\n", "logging", "must be a table [logging]"),
    ("[plugins]\nx = 1\n", "plugins.x", "unknown key"),
])
def test_unknown_names_suggest_the_closest(tmp_path, text, key, words):
    e = error_of(tmp_path, text)
    assert e.key == key and words in e.problem


def test_toml_syntax_error_gives_line(tmp_path):
    e = error_of(tmp_path, "[node]\nname = 'ok'\nrole = \n")
    assert e.key == str(tmp_path / "g.toml")
    assert "invalid TOML" in e.problem and "line 3" in e.problem


def test_unreadable_files(tmp_path):
    e = error_of(path=tmp_path / "nope.toml")
    assert str(e) == f"config: {tmp_path / 'nope.toml'}: file not found"
    assert "cannot read" in error_of(path=tmp_path).problem   # a directory
    (tmp_path / "latin1.toml").write_bytes(b"[node]\nname = '\xe9'\n")
    assert "UTF-8" in error_of(path=tmp_path / "latin1.toml").problem


def test_missing_key_file_only_with_check_files(tmp_path):
    text = f"[node]\nkey_file = '{tmp_path / 'missing.key'}'\n"
    assert load_config(write(tmp_path, text), env={}).key_path == tmp_path / "missing.key"
    e = error_of(tmp_path, text, check_files=True)
    assert e.key == "node.key_file" and "no such file" in e.problem
    (tmp_path / "missing.key").write_text("x")
    assert load_config(write(tmp_path, text), env={}, check_files=True)
    assert load_config(env={}, check_files=True) == Config()   # the default key is the daemon's to create


def test_environment_and_flag_errors_name_their_source():
    e = error_of(env={"GALAXYNODE_LIMITS_MAX_FRAME_SIZE": "abc"})
    assert str(e) == ("config: limits.max_frame_size: must be an integer between 1024 and 67108864 "
                      "(got 'abc' from GALAXYNODE_LIMITS_MAX_FRAME_SIZE)")
    e = error_of(env={"GALAXYNODE_SERVER_LISTN": "ws://127.0.0.1:1"})
    assert e.key == "server.listn" and "did you mean server.listen?" in e.problem
    assert "GALAXYNODE_SERVER_LISTN" in e.problem
    e = error_of(env={"GALAXYNODE_NOPE": "1"})
    assert e.key == "nope" and "unknown section" in e.problem
    e = error_of(env={"GALAXYNODE_DAEMON_WATCHDOG": "maybe"})
    assert e.key == "daemon.watchdog" and "'maybe' from GALAXYNODE_DAEMON_WATCHDOG" in e.problem
    e = error_of(overrides={"network.id": "x" * 65})
    assert e.key == "network.id" and "from the command line" in e.problem
    e = error_of(overrides={"server.port": 1})
    assert e.key == "server.port" and "unknown key" in e.problem
    # a rule across keys names the source of the key it reports
    e = error_of(env={"GALAXYNODE_PEERS_TARGET": "100"})
    assert e.key == "peers.target" and "from GALAXYNODE_PEERS_TARGET" in e.problem


def test_sections_validate_on_construction_and_are_frozen():
    with pytest.raises(ConfigError) as info:
        LimitsConfig(max_frame_size=1)
    assert info.value.key == "limits.max_frame_size"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().limits.max_frame_size = 1   # type: ignore[misc]
    with pytest.raises(ConfigError):
        attrs.evolve(Config(), limits=attrs.evolve(Config().limits, byte_burst=2048))


def test_config_error_pickles():
    e = pickle.loads(pickle.dumps(ConfigError("a.b", "bad", got=3)))
    assert str(e) == "config: a.b: bad (got 3)" and e.key == "a.b"


# --- TOML output ---------------------------------------------------------------------------------

def test_to_toml_round_trips(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    c = load_config(write(tmp_path, f"""
        [node]
        name = "Pool \\"quoted\\" \u00e9"
        key_file = "{tmp_path / 'node.key'}"
        role = "mainnet"
        [server]
        listen = ["wss://[::1]:7447", "ws://127.0.0.1:0"]
        tls_cert = "{cert}"
        tls_key = "{key}"
        [limits]
        frame_rate = 0.5e3
        byte_rate = 1e6
        [admission]
        allow = ["{T1}"]
        admins = ["{T2}"]
        [peers]
        static = [{{ url = "ws://127.0.0.1:9", key = "{T1}" }}, {{ url = "ws://127.0.0.1:10" }}]
        [mainnet]
        url = "wss://main.example/gelato?v=1"
        [plugins]
        enabled = ["audit-log"]
        [plugins.audit-log]
        path = "C:\\\\logs\\naudit"
        nested = {{ a = [1, 2.5, true], b = {{ c = "d" }} }}
        when = 1979-05-27T07:32:00Z
        day = 1979-05-27
        tables = [{{ x = 1 }}, {{ y = inf }}]
        [plugins."my.pkg:Thing"]
        "odd key" = ""
        [metrics]
        listen = "[::1]:9100"
        """), env={})
    assert c.plugins.section("audit-log")["when"] == datetime.datetime(1979, 5, 27, 7, 32,
                                                                        tzinfo=datetime.timezone.utc)
    again = load_config(write(tmp_path, c.to_toml()), env={})
    assert again == c
    assert load_config(write(tmp_path, Config().to_toml()), env={}) == Config()


@settings(max_examples=50, deadline=None)
@given(name=st.text(min_size=1, max_size=64).filter(lambda s: s.isprintable() and s == s.strip()
                                                     and len(s.encode()) <= 64),  # names: 64 bytes of UTF-8
       value=st.recursive(st.booleans() | st.integers(-2**63, 2**63 - 1)
                          | st.floats(allow_nan=False) | st.text(),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8))
def test_to_toml_round_trips_any_text_and_plugin_values(tmp_path_factory, name, value):
    c = attrs.evolve(Config(), node=attrs.evolve(Config().node, name=name),
                     plugins=attrs.evolve(Config().plugins, sections={"p": {"v": value}}))
    path = tmp_path_factory.mktemp("rt") / "g.toml"
    path.write_text(c.to_toml(), encoding="utf-8")
    assert load_config(path, env={}) == c


# --- the shipped example -------------------------------------------------------------------------

def schema_keys() -> set[str]:
    return {f"{s}.{a.name}" for s, cls in SECTIONS.items() for a in attrs.fields(cls) if SPEC in a.metadata}


def test_shipped_example_equals_defaults_and_shows_every_key():
    c = load_config(EXAMPLE, env={})
    assert c == Config()
    data = tomllib.loads(EXAMPLE.read_text())
    assert {f"{s}.{k}" for s, table in data.items() for k in table} == schema_keys()


def test_shipped_example_documents_every_bound():
    """Each numeric key's comment block states its range exactly as the schema enforces it."""
    comments, section, missing, after_key = [], "", [], False
    for line in EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section, comments = m.group(1), []
        elif line.startswith("#"):
            comments = [line] if after_key else comments + [line]
        elif m := re.match(r"(\w+) = ", line):   # keys right below one another share the comment block
            spec = attrs.fields_dict(SECTIONS[section])[m.group(1)].metadata[SPEC]
            if isinstance(spec, (Int, Float)) and spec.bounds not in " ".join(comments):
                missing.append(f"{section}.{m.group(1)} {spec.bounds}")
        else:
            comments = []
        after_key = bool(re.match(r"\w+ = ", line))
    assert not missing


# --- SIGHUP --------------------------------------------------------------------------------------

def test_diff_reloadable_splits_changes():
    old = Config()
    new = load_config(env={"GALAXYNODE_LOGGING_LEVEL": "debug", "GALAXYNODE_LIMITS_FRAME_RATE": "50",
                           "GALAXYNODE_ADMISSION_ALLOW": T1, "GALAXYNODE_NETWORK_ID": "other",
                           "GALAXYNODE_LIMITS_MAX_FRAME_SIZE": "2048"})
    assert diff_reloadable(old, old) == (set(), set())
    changed, restart = diff_reloadable(old, new)
    assert changed == {"logging.level", "limits.frame_rate", "admission.allow"}
    assert restart == {"network.id", "limits.max_frame_size"}
    assert changed <= RELOADABLE and RELOADABLE <= schema_keys()
    plugin = attrs.evolve(old, plugins=attrs.evolve(old.plugins, sections={"x": {"a": 1}}))
    assert diff_reloadable(old, plugin) == (set(), {"plugins.x"})


def test_apply_reloadable_keeps_the_rest():
    old = Config()
    new = load_config(env={"GALAXYNODE_LOGGING_LEVEL": "debug", "GALAXYNODE_LIMITS_BYTE_BURST": "2097152",
                           "GALAXYNODE_NETWORK_ID": "other"})
    applied = apply_reloadable(old, new)
    assert applied.logging.level == "debug" and applied.limits.byte_burst == 2097152
    assert applied.network.id == old.network.id
    assert diff_reloadable(applied, new) == (set(), {"network.id"})
    # a reloadable value that only fits a restart-only change is refused, not half-applied
    big = load_config(env={"GALAXYNODE_LIMITS_MAX_FRAME_SIZE": "4096", "GALAXYNODE_LIMITS_BYTE_BURST": "4096"})
    with pytest.raises(ConfigError) as info:
        apply_reloadable(old, big)
    assert info.value.key == "limits.byte_burst"


# --- every key at and just past its bounds (derived from the Specs: a new key is covered by itself) ----

MAX_PATH = 4096  # FilePath's length bound (config.FilePath.convert)


def bound_probes(spec: Spec) -> tuple[list, list]:
    """(values the spec must accept: at its bounds; values it must refuse: just past them)."""
    if isinstance(spec, Int):
        return [spec.lo, spec.hi], [spec.lo - 1, spec.hi + 1]
    if isinstance(spec, Float):
        return [spec.lo, spec.hi], [math.nextafter(spec.lo, -math.inf), math.nextafter(spec.hi, math.inf)]
    if isinstance(spec, Str):
        if spec.choices:
            return list(spec.choices), [c + "x" for c in spec.choices]
        n, wide = spec.max_len, "\u00e9"  # 2 bytes of UTF-8: the bound is in bytes
        accepted = ["a" * max(spec.min_len, 1), "a" * n, wide * (n // 2) + "a" * (n % 2)]
        refused = ["a" * (n + 1), wide * (n // 2 + 1)] + (["a" * (spec.min_len - 1)] if spec.min_len else [])
        return accepted + ([""] if spec.min_len == 0 else []), refused
    if isinstance(spec, ListOf):
        item = bound_probes(spec.item)[0][0]
        refused = [[item] * (spec.max_items + 1)] + ([[item] * (spec.min_items - 1)] if spec.min_items else [])
        return [[item] * spec.min_items, [item] * spec.max_items], refused
    if isinstance(spec, FilePath):
        return ["p" * MAX_PATH, "/x"], ["p" * (MAX_PATH + 1)] + ([] if spec.optional else [""])
    if isinstance(spec, HostPort):
        return ["127.0.0.1:0", "127.0.0.1:65535", "[::1]:65535"], ["127.0.0.1:65536", "[::1]:65536"]
    if isinstance(spec, Url):
        return ["ws://127.0.0.1:1", "wss://127.0.0.1:65535"], ["ws://127.0.0.1:65536"] + (
            [] if spec.empty_ok else [""])
    if isinstance(spec, Peer):
        return [{"url": "ws://127.0.0.1:1"}, {"url": "ws://127.0.0.1:65535", "key": T1}], [
            {"url": "ws://127.0.0.1:65536"}, {"url": "ws://127.0.0.1:1", "key": T1[:-1]}]
    if isinstance(spec, PublicKey):
        return [K1, T1], [K1[:31], K1 + b"\0", T1 + "0"]
    if isinstance(spec, Bool):
        return [True, False], [0, 1, "true"]
    pytest.fail(f"no bound probes for {type(spec).__name__}: add them to bound_probes")


def spec_of(key: str) -> Spec:
    section, _, name = key.partition(".")
    return attrs.fields_dict(SECTIONS[section])[name].metadata[SPEC]


@pytest.mark.parametrize("key", sorted(schema_keys()))
def test_every_key_takes_its_bounds_and_refuses_just_past_them(key):
    """At both bounds: accepted (by the key's Spec: a section may add cross-key rules). Just below the
    minimum and just above the maximum: refused by the section, the error naming the key and the range."""
    spec = spec_of(key)
    section, _, name = key.partition(".")
    accepted, refused = bound_probes(spec)
    for value in accepted:
        got = spec.convert(value)
        if isinstance(spec, (Int, Float)):
            assert got == value
    for value in refused:
        with pytest.raises(ConfigError) as info:
            SECTIONS[section](**{name: value})
        assert info.value.key == key, value
        if isinstance(spec, (Int, Float)):
            assert spec.bounds.replace("..", " and ") in info.value.problem


@pytest.mark.parametrize("key", sorted(k for k in schema_keys() if isinstance(spec_of(k), (Int, Float))))
def test_numeric_keys_just_past_their_bounds_are_refused_from_the_environment(key):
    """The same edges as text, the way an operator gives them (repr of a float is exact)."""
    spec = spec_of(key)
    var = ENV_PREFIX + key.replace(".", "_").upper()
    for value in bound_probes(spec)[1]:
        e = error_of(env={var: repr(value)})
        assert e.key == key and f"from {var}" in e.problem, value
