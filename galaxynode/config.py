"""Configuration: built-in defaults < TOML file < ``GALAXYNODE_<SECTION>_<KEY>`` environment < overrides.

Schema-driven: every key is an attrs field whose metadata holds a `Spec` (type, bounds, choices and
how to read it from text). Checking, environment parsing, `to_toml` and every error message come
from that one place, so adding a key is adding a field. Sections validate themselves on
construction (also under `attrs.evolve`), so a `Config` that exists is a valid one.

Relative paths are relative to the daemon's working directory.
"""
from __future__ import annotations

import datetime
import difflib
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import attrs

from galaxynode.gelato import codec
from galaxynode.identity import format_public_key, parse_public_key

ENV_PREFIX = "GALAXYNODE_"
TEST_ENV_PREFIX = ENV_PREFIX + "TEST_"  # the test suite's variables: no [test] section, ever
SPEC = "galaxynode.spec"        # field metadata: the key's Spec
EXTRA = "galaxynode.extra"      # field metadata: unknown sub-tables of the section land here
_NO = object()                  # "no offending value to show"
_FROM_FLAGS = "the command line"


class ConfigError(Exception):
    """A bad configuration, as one line: ``config: <key>: <problem>``.

    `key` is dotted (``limits.max_frame_size``), or the file path for problems with the file itself.
    `got` is the offending value (if any) and `source` where it came from (``""`` for the file)."""

    def __init__(self, key: str, problem: str, *, got: Any = _NO, source: str = ""):
        self.key, self.got, self.source, self._reason = key, got, source, problem
        if got is not _NO:
            problem += f" (got {_show(got)}{' from ' + source if source else ''})"
        elif source:
            problem += f" (from {source})"
        self.problem = problem
        super().__init__(f"config: {key}: {problem}")

    def __reduce__(self):  # picklable although the constructor has keyword-only arguments
        return ConfigError, (self.key, self.problem)


class ConfigErrors(ConfigError):
    """Several problems found in one pass (collect_config). Its key and problem are the first's;
    `errors` holds them all and str() is one ``config: <key>: <problem>`` line each."""

    def __init__(self, errors: Sequence[ConfigError]):
        first = errors[0]
        super().__init__(first.key, first._reason, got=first.got, source=first.source)
        self.errors = list(errors)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __reduce__(self):
        return ConfigErrors, (self.errors,)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Bad(Exception):
    """A value's problem, raised by a Spec before anyone knows the key."""

    def __init__(self, problem: str, got: Any = _NO):
        super().__init__(problem)
        self.problem, self.got = problem, got


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# --- specs: one per kind of value ----------------------------------------------------------------

class Spec:
    """How one key is checked (`convert`: stored form or _Bad), read from text (`parse_text`, for the
    environment and flags; returns the text unchanged when it does not parse, so `convert` reports it)
    and written back (`dump`: a TOML value). `convert` accepts its own output (attrs.evolve)."""

    what = "a value"

    def convert(self, value: Any) -> Any:
        raise NotImplementedError

    def parse_text(self, text: str) -> Any:
        return text

    def dump(self, value: Any) -> str:
        return toml_value(value)

    def bad(self, value: Any) -> _Bad:
        return _Bad(f"must be {self.what}", value)


@attrs.frozen
class Int(Spec):
    lo: int
    hi: int

    @property
    def what(self) -> str:
        return f"an integer between {self.lo} and {self.hi}"

    @property
    def bounds(self) -> str:
        return f"{self.lo}..{self.hi}"

    def convert(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi:
            return value
        raise self.bad(value)

    def parse_text(self, text: str) -> Any:
        try:
            return int(text.strip())
        except ValueError:
            return text


@attrs.frozen
class Float(Spec):
    lo: float
    hi: float
    unit: str = ""

    @property
    def what(self) -> str:
        return f"a number between {_num(self.lo)} and {_num(self.hi)}{self.unit}"

    @property
    def bounds(self) -> str:
        return f"{_num(self.lo)}..{_num(self.hi)}"

    def convert(self, value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and self.lo <= value <= self.hi:
            return float(value)   # NaN fails the comparison above
        raise self.bad(value)

    def parse_text(self, text: str) -> Any:
        try:
            return float(text.strip())
        except ValueError:
            return text


class Bool(Spec):
    what = "true or false"
    _TEXT: ClassVar[dict[str, bool]] = {"true": True, "1": True, "yes": True, "on": True,
                                        "false": False, "0": False, "no": False, "off": False}

    def convert(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise self.bad(value)

    def parse_text(self, text: str) -> Any:
        return self._TEXT.get(text.strip().lower(), text)


@attrs.frozen
class Str(Spec):
    """Printable text of bounded length, optionally one of `choices` or matching `pattern`."""

    max_len: int = 64
    min_len: int = 1
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    pattern_what: str = ""

    @property
    def what(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return self.pattern_what or f"a string of {self.min_len} to {self.max_len} bytes of printable characters"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.bad(value)
        if self.choices:
            if value not in self.choices:
                raise self.bad(value)
        # Lengths in UTF-8 bytes, as on the wire: a name must fit the protocol's bounds (MAX_NAME).
        elif not (self.min_len <= len(value.encode("utf-8", "surrogatepass")) <= self.max_len
                  and value.isprintable()) or (
                self.pattern is not None and not re.fullmatch(self.pattern, value)):
            raise self.bad(value)
        return value

    def parse_text(self, text: str) -> Any:
        return text.strip()


@attrs.frozen
class FilePath(Spec):
    """A path. Optional paths store None, written as "" (TOML has no null). `must_exist`: checked by
    load_config(check_files=True)."""

    optional: bool = False
    must_exist: bool = False

    @property
    def what(self) -> str:
        return 'a path, or "" for the default' if self.optional else "a non-empty path"

    def convert(self, value: Any) -> str | None:
        if self.optional and value in ("", None):
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
            raise self.bad(value)
        return value

    def parse_text(self, text: str) -> Any:
        return text.strip()

    def dump(self, value: Any) -> str:
        return toml_value("" if value is None else value)


def _url_problem(url: str, *, listen: bool) -> str | None:
    """Why `url` is not a usable ws:// or wss:// URL, or None."""
    if not url.startswith(("ws://", "wss://")):
        return "scheme must be ws:// or wss://"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port   # raises ValueError for a non-numeric or out-of-range port
    except ValueError as e:
        return f"invalid URL ({e})"
    if not parts.hostname:
        return "missing host"
    if parts.username is not None or parts.password is not None:
        return "credentials are not allowed"
    if parts.fragment or url.endswith("#"):
        return "fragments are not allowed"
    if listen and (port is None or parts.path not in ("", "/") or parts.query):
        return "a listen URL is scheme://host:port (port 0 picks a free one), nothing more"
    return None


@attrs.frozen
class Url(Spec):
    listen: bool = False
    empty_ok: bool = False

    @property
    def what(self) -> str:
        what = "a ws:// or wss:// URL" + (" with host and port" if self.listen else "")
        return what + (', or "" to disable' if self.empty_ok else "")

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.bad(value)
        if value == "" and self.empty_ok:
            return value
        why = _url_problem(value, listen=self.listen)
        if why is not None:
            raise _Bad(f"must be {self.what}: {why}", value)
        return value

    def parse_text(self, text: str) -> Any:
        return text.strip()


@attrs.frozen
class HostPort(Spec):
    empty_ok: bool = False

    @property
    def what(self) -> str:
        return 'host:port (e.g. 127.0.0.1:9100 or [::1]:9100)' + (', or "" to disable' if self.empty_ok else "")

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.bad(value)
        if value == "" and self.empty_ok:
            return value
        host, sep, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:   # IPv6 needs brackets
            raise self.bad(value)
        if not sep or not host or not port.isdigit() or int(port) > 65535 or not re.fullmatch(r"[\w.:-]+", host):
            raise self.bad(value)
        return value

    def parse_text(self, text: str) -> Any:
        return text.strip()


class PublicKey(Spec):
    what = "a public key ed25519:<64 hex digits>"

    def convert(self, value: Any) -> bytes:
        if isinstance(value, bytes) and len(value) == 32:
            return value
        if isinstance(value, str):
            try:
                return parse_public_key(value)
            except ValueError:
                pass
        raise self.bad(value)

    def parse_text(self, text: str) -> Any:
        return text.strip()

    def dump(self, value: bytes) -> str:
        return toml_value(format_public_key(value))


@attrs.frozen
class StaticPeer:
    """A peer to keep connected; `key`, when set, pins the peer's public key."""

    url: str
    key: bytes | None = None


class Peer(Spec):
    """A table {url, key}; from text ``URL`` or ``URL#ed25519:<hex>`` (a ws URL never has a fragment)."""

    what = 'a table { url = "ws://...", key = "ed25519:..." } (key optional)'
    _URL, _KEY = Url(), PublicKey()

    def convert(self, value: Any) -> StaticPeer:
        if isinstance(value, StaticPeer):
            value = {"url": value.url, "key": value.key}
        if not isinstance(value, Mapping) or "url" not in value:
            raise self.bad(value)
        for name in value:
            if name not in ("url", "key"):
                raise _Bad(f"unknown key {name!r} in a peer table (expected url and optionally key)")
        out = {}
        for name, spec in (("url", self._URL), ("key", self._KEY)):
            try:
                raw = value.get(name)
                out[name] = None if name == "key" and raw in (None, "") else spec.convert(raw)
            except _Bad as e:
                raise _Bad(f"{name}: {e.problem}", e.got) from None
        return StaticPeer(**out)

    def parse_text(self, text: str) -> Any:
        url, sep, key = text.strip().partition("#")
        return {"url": url, "key": key} if sep else {"url": url}

    def dump(self, value: StaticPeer) -> str:
        if value.key is None:
            return f"{{ url = {toml_value(value.url)} }}"
        return f"{{ url = {toml_value(value.url)}, key = {toml_value(format_public_key(value.key))} }}"


@attrs.frozen
class ListOf(Spec):
    """A list (stored as a tuple); from text, comma-separated."""

    item: Spec
    max_items: int
    min_items: int = 0

    @property
    def what(self) -> str:
        n = f"at most {self.max_items}" if not self.min_items else f"{self.min_items} to {self.max_items}"
        return f"a list of {n} items, each {self.item.what}"

    def convert(self, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or not self.min_items <= len(value) <= self.max_items:
            raise self.bad(value)
        out = []
        for i, item in enumerate(value, 1):
            try:
                out.append(self.item.convert(item))
            except _Bad as e:
                raise _Bad(f"item {i}: {e.problem}", e.got) from None
        return tuple(out)

    def parse_text(self, text: str) -> Any:
        return [self.item.parse_text(part) for part in text.split(",") if part.strip()]

    def dump(self, value: tuple) -> str:
        return "[" + ", ".join(self.item.dump(v) for v in value) + "]"


def _setting(spec: Spec, default: Any, **kw: Any) -> Any:
    return attrs.field(default=default, metadata={SPEC: spec}, **kw)


# --- sections ------------------------------------------------------------------------------------

class _Section:
    """Validates and normalises every spec'd field on construction; `_check` adds cross-key rules."""

    __slots__ = ()
    SECTION: ClassVar[str]

    def __attrs_post_init__(self) -> None:
        for a in attrs.fields(type(self)):
            spec = a.metadata.get(SPEC)
            if spec is None:
                continue
            try:
                object.__setattr__(self, a.name, spec.convert(getattr(self, a.name)))
            except _Bad as e:
                raise ConfigError(f"{self.SECTION}.{a.name}", e.problem, got=e.got) from None
        self._check()

    def _check(self) -> None:
        pass

    def _fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.SECTION}.{name}", problem, got=getattr(self, name))


_NAME = dict(max_len=64, pattern=r"[^\s].*[^\s]|[^\s]",
             pattern_what="1 to 64 printable characters (64 bytes of UTF-8 at most), not starting or ending "
                          "with a space")


@attrs.frozen
class NodeConfig(_Section):
    SECTION = "node"
    name: str = _setting(Str(**_NAME), "galaxynode")
    key_file: str | None = _setting(FilePath(optional=True, must_exist=True), None)
    role: str = _setting(Str(choices=("pool", "mainnet")), "pool")


@attrs.frozen
class NetworkConfig(_Section):
    SECTION = "network"
    id: str = _setting(Str(**_NAME), "galaxy-dev")


@attrs.frozen
class DataConfig(_Section):
    SECTION = "data"
    dir: str = _setting(FilePath(), "./galaxynode-data")


@attrs.frozen
class ServerConfig(_Section):
    SECTION = "server"
    listen: tuple[str, ...] = _setting(ListOf(Url(listen=True), max_items=16, min_items=1), ("ws://127.0.0.1:7447",))
    tls_cert: str | None = _setting(FilePath(optional=True, must_exist=True), None)
    tls_key: str | None = _setting(FilePath(optional=True, must_exist=True), None)
    max_connections: int = _setting(Int(1, 1_000_000), 1024)
    # Per remote address (IPv6: per /64, what one host usually owns). Loopback is not special.
    max_connections_per_address: int = _setting(Int(1, 1_000_000), 128)
    # Connections accepted but not yet through the Gelato handshake (TLS, upgrade, HELLO).
    max_pending: int = _setting(Int(1, 1_000_000), 256)
    max_pending_per_address: int = _setting(Int(1, 1_000_000), 16)
    workers: int = _setting(Int(1, 256), 1)

    def _check(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ConfigError(f"server.{missing}", "tls_cert and tls_key must be set together")
        if self.tls_cert is None and any(url.startswith("wss://") for url in self.listen):
            raise ConfigError("server.tls_cert", "a wss:// listen URL needs tls_cert and tls_key")
        if self.max_connections_per_address > self.max_connections:
            raise self._fail("max_connections_per_address", f"must be at most max_connections ({self.max_connections})")
        if self.max_pending_per_address > self.max_pending:
            raise self._fail("max_pending_per_address", f"must be at most max_pending ({self.max_pending})")


@attrs.frozen
class TLSConfig(_Section):
    """What we trust when we dial wss:// (peers, the main net, the main net's dial-back)."""
    SECTION = "tls"
    ca_file: str | None = _setting(FilePath(optional=True, must_exist=True), None)


_CODEC = codec.Limits()
MiB = 1024 * 1024


@attrs.frozen
class LimitsConfig(_Section):
    SECTION = "limits"
    max_frame_size: int = _setting(Int(1024, 64 * MiB), _CODEC.max_frame_size)
    max_str_len: int = _setting(Int(256, 64 * MiB), _CODEC.max_str_len)
    max_bin_len: int = _setting(Int(1024, 64 * MiB), _CODEC.max_bin_len)
    max_array_len: int = _setting(Int(16, 1_000_000), _CODEC.max_array_len)
    max_map_len: int = _setting(Int(16, 1_000_000), _CODEC.max_map_len)
    max_depth: int = _setting(Int(4, 64), _CODEC.max_depth)
    ts_window_ms: int = _setting(Int(1000, 3_600_000), _CODEC.ts_window_ms)
    handshake_timeout: float = _setting(Float(0.1, 300, " seconds"), 5.0)
    preauth_frame_size: int = _setting(Int(256, 64 * 1024), 4096)
    idle_timeout: float = _setting(Float(1, 3600, " seconds"), 60.0)
    ping_interval: float = _setting(Float(0.1, 3600, " seconds"), 20.0)
    frame_rate: float = _setting(Float(1, 1_000_000, " frames/s"), 200.0)
    frame_burst: int = _setting(Int(1, 10_000_000), 400)
    pool_frame_rate: float = _setting(Float(1, 1_000_000, " frames/s"), 5000.0)
    pool_frame_burst: int = _setting(Int(1, 10_000_000), 20000)
    byte_rate: float = _setting(Float(1024, 1024 * MiB, " bytes/s"), float(MiB))
    byte_burst: int = _setting(Int(1024, 1024 * MiB), 4 * MiB)
    violations_before_ban: int = _setting(Int(1, 1000), 3)
    violation_window: int = _setting(Int(1, 86_400), 600)
    ban_seconds: int = _setting(Int(1, 604_800), 300)
    send_queue: int = _setting(Int(1, 65_536), 256)
    send_queue_bytes: int = _setting(Int(64 * 1024, 1024 * MiB), 4 * MiB)
    send_queue_total_bytes: int = _setting(Int(MiB, 64 * 1024 * MiB), 256 * MiB)
    write_timeout: float = _setting(Float(0.1, 3600, " seconds"), 10.0)
    max_subscriptions: int = _setting(Int(1, 100_000), 64)
    max_pool_subscriptions: int = _setting(Int(1, 10_000_000), 65_536)
    max_peers: int = _setting(Int(0, 1024), 32)

    def _check(self) -> None:
        if self.byte_burst < self.max_frame_size:
            raise self._fail("byte_burst", f"must be at least max_frame_size ({self.max_frame_size}), "
                                           "or a maximal frame is always refused")
        if self.ping_interval >= self.idle_timeout:
            raise self._fail("ping_interval", f"must be shorter than idle_timeout ({_num(self.idle_timeout)})")
        if self.send_queue_bytes < self.max_frame_size:
            raise self._fail("send_queue_bytes", f"must be at least max_frame_size ({self.max_frame_size}), "
                                                 "or a maximal frame can never be queued")
        if self.send_queue_total_bytes < self.send_queue_bytes:
            raise self._fail("send_queue_total_bytes", f"must be at least send_queue_bytes ({self.send_queue_bytes})")

    def codec_limits(self) -> codec.Limits:
        return codec.Limits(**{a.name: getattr(self, a.name) for a in attrs.fields(codec.Limits)})


@attrs.frozen
class RegistryConfig(_Section):
    SECTION = "registry"
    min_ttl: int = _setting(Int(1, 86_400), 5)
    max_ttl: int = _setting(Int(1, 604_800), 3600)
    default_ttl: int = _setting(Int(1, 604_800), 30)
    expiry_interval: float = _setting(Float(0.01, 60, " seconds"), 1.0)
    page_max: int = _setting(Int(1, 100_000), 1000)
    commit_interval: float = _setting(Float(0, 1, " seconds"), 0.005)
    page_bytes: int = _setting(Int(4096, 64 * MiB), 256 * 1024)
    backend: str = _setting(Str(choices=("sqlite", "postgresql")), "sqlite")
    dsn: str = _setting(Str(min_len=0, max_len=4096), "")
    max_heartbeats_per_s: int = _setting(Int(1, 1_000_000), 1000)

    def _check(self) -> None:
        if self.backend == "postgresql" and not self.dsn:
            raise self._fail("dsn", "must be set when backend is 'postgresql' (e.g. postgresql://galaxy@db/galaxy; "
                                    "the password may come from GALAXYNODE_REGISTRY_DSN or PGPASSWORD)")
        if self.max_ttl < self.min_ttl:
            raise self._fail("max_ttl", f"must be at least min_ttl ({self.min_ttl})")
        if not self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise self._fail("default_ttl", f"must be between min_ttl and max_ttl ({self.min_ttl}..{self.max_ttl})")


@attrs.frozen
class AdmissionConfig(_Section):
    SECTION = "admission"
    mode: str = _setting(Str(choices=("open", "allowlist")), "open")
    allow: tuple[bytes, ...] = _setting(ListOf(PublicKey(), max_items=1_000_000), ())
    admins: tuple[bytes, ...] = _setting(ListOf(PublicKey(), max_items=1000), ())


@attrs.frozen
class PeersConfig(_Section):
    SECTION = "peers"
    static: tuple[StaticPeer, ...] = _setting(ListOf(Peer(), max_items=1024), ())
    accept: str = _setting(Str(choices=("static", "listed", "any")), "listed")
    max_inbound: int = _setting(Int(0, 1024), 24)
    max_outbound: int = _setting(Int(0, 1024), 8)
    max_misses: int = _setting(Int(1, 1000), 2)
    target: int = _setting(Int(0, 1024), 8)
    reconnect_min: float = _setting(Float(0.01, 3600, " seconds"), 1.0)
    reconnect_max: float = _setting(Float(0.01, 86_400, " seconds"), 60.0)
    query_budget: int = _setting(Int(0, 1024), 8)

    def _check(self) -> None:
        if self.reconnect_max < self.reconnect_min:
            raise self._fail("reconnect_max", f"must be at least reconnect_min ({_num(self.reconnect_min)})")


@attrs.frozen
class MainnetConfig(_Section):
    SECTION = "mainnet"
    url: str = _setting(Url(empty_ok=True), "")
    announce_interval: float = _setting(Float(1, 86_400, " seconds"), 30.0)
    descriptor_ttl: int = _setting(Int(10, 86_400), 300)
    discover_dials: int = _setting(Int(1, 10_000), 6)
    verify: bool = _setting(Bool(), True)
    verify_timeout: float = _setting(Float(0.1, 60, " seconds"), 5.0)
    verify_ttl: float = _setting(Float(1, 86_400, " seconds"), 3600.0)
    verify_retry: float = _setting(Float(1, 86_400, " seconds"), 600.0)
    dials_per_target: int = _setting(Int(1, 10_000), 4)
    dial_window: float = _setting(Float(1, 86_400, " seconds"), 3600.0)
    max_verifications: int = _setting(Int(1, 1024), 16)
    pools_per_address: int = _setting(Int(1, 1_000_000), 16)
    pools_per_prefix: int = _setting(Int(1, 1_000_000), 64)
    announce_rate: float = _setting(Float(0.001, 10_000, " per second"), 1.0)
    announce_burst: int = _setting(Int(1, 100_000), 16)
    book_per_peer: int = _setting(Int(1, 1_000_000), 256)
    book_per_network: int = _setting(Int(1, 1_000_000), 64)

    def _check(self) -> None:
        if self.announce_interval >= self.descriptor_ttl:
            raise self._fail("announce_interval", f"must be shorter than descriptor_ttl ({self.descriptor_ttl}), "
                                                  "or the descriptor lapses between announcements")


def _plugin_tables(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, Mapping)
                                                 for k, v in value.items()):
        raise ConfigError("plugins", "plugin sections must be tables [plugins.<name>]")
    return {k: _plain(v) for k, v in value.items()}


def _plain(value: Any) -> Any:
    """A private deep copy as plain dicts and lists, so nobody shares mutable state with the config."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@attrs.frozen
class PluginsConfig(_Section):
    SECTION = "plugins"
    enabled: tuple[str, ...] = _setting(ListOf(Str(max_len=256, pattern=r"[A-Za-z0-9_.:-]+",
                                              pattern_what="a plugin name or dotted path pkg.mod:Obj"),
                                          max_items=256), ())
    max_restarts: int = _setting(Int(0, 1000), 5)
    backoff_base: float = _setting(Float(0.001, 3600, " seconds"), 0.5)
    backoff_max: float = _setting(Float(0.001, 86_400, " seconds"), 30.0)
    path: tuple[str, ...] = _setting(ListOf(FilePath(), max_items=64), ())  # plugins_path: dotted-path search
    admission_timeout: float = _setting(Float(0.001, 60, " seconds"), 2.0)
    admission_default: str = _setting(Str(choices=("closed", "open")), "closed")
    # The config file's directory (set by load_config, not a key): dotted plugin paths are looked up there.
    config_dir: str | None = attrs.field(default=None, eq=False, hash=False)
    # [plugins.<name>] tables, checked against each plugin's options by plugins.check_config.
    sections: dict[str, dict[str, Any]] = attrs.field(factory=dict, converter=_plugin_tables, hash=False,
                                                      metadata={EXTRA: True})

    def _check(self) -> None:
        if self.backoff_max < self.backoff_base:
            raise self._fail("backoff_max", f"must be at least backoff_base ({_num(self.backoff_base)})")

    def section(self, name: str) -> dict[str, Any]:
        """The `[plugins.<name>]` table (a fresh copy; empty if absent)."""
        return _plain(self.sections.get(name, {}))


@attrs.frozen
class LoggingConfig(_Section):
    SECTION = "logging"
    level: str = _setting(Str(choices=("debug", "info", "warning", "error")), "info")
    format: str = _setting(Str(choices=("plain", "json")), "plain")


@attrs.frozen
class MetricsConfig(_Section):
    SECTION = "metrics"
    listen: str = _setting(HostPort(empty_ok=True), "")


@attrs.frozen
class DashboardConfig(_Section):
    SECTION = "dashboard"
    enabled: bool = _setting(Bool(), True)
    token: str = _setting(Str(min_len=0, max_len=256), "")


@attrs.frozen
class DaemonConfig(_Section):
    SECTION = "daemon"
    stop_timeout: float = _setting(Float(0.1, 3600, " seconds"), 10.0)
    watchdog: bool = _setting(Bool(), True)
    gc_threshold: int = _setting(Int(0, 10_000_000), 50_000)


@attrs.frozen
class Config:
    """The whole configuration; one attribute per section."""

    node: NodeConfig = attrs.field(factory=NodeConfig)
    network: NetworkConfig = attrs.field(factory=NetworkConfig)
    data: DataConfig = attrs.field(factory=DataConfig)
    server: ServerConfig = attrs.field(factory=ServerConfig)
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    registry: RegistryConfig = attrs.field(factory=RegistryConfig)
    admission: AdmissionConfig = attrs.field(factory=AdmissionConfig)
    peers: PeersConfig = attrs.field(factory=PeersConfig)
    mainnet: MainnetConfig = attrs.field(factory=MainnetConfig)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    dashboard: DashboardConfig = attrs.field(factory=DashboardConfig)
    daemon: DaemonConfig = attrs.field(factory=DaemonConfig)

    def __attrs_post_init__(self) -> None:
        if self.peers.target > self.limits.max_peers:
            raise ConfigError("peers.target", f"must not exceed limits.max_peers ({self.limits.max_peers})",
                              got=self.peers.target)
        if self.server.workers > 1 and self.registry.backend != "postgresql":
            raise ConfigError("server.workers", "more than 1 worker needs [registry] backend = \"postgresql\" "
                                                "(a SQLite registry belongs to one process)", got=self.server.workers)
        if self.server.workers > 1 and self.node.role == "mainnet":
            raise ConfigError("server.workers", "a main net runs as one process (workers = 1)", got=self.server.workers)

    def data_path(self, *parts: str) -> Path:
        return Path(self.data.dir, *parts)

    @property
    def key_path(self) -> Path:
        return Path(self.node.key_file) if self.node.key_file is not None else self.data_path("node.key")

    def to_toml(self) -> str:
        """The effective configuration as TOML that load_config reads back to an equal Config."""
        lines = ["# galaxynode effective configuration (defaults < file < environment < flags)"]
        for name, section in self._sections():
            lines += ["", f"[{name}]"]
            extra: dict[str, Any] = {}
            for a in attrs.fields(type(section)):
                if SPEC in a.metadata:
                    lines.append(f"{a.name} = {a.metadata[SPEC].dump(getattr(section, a.name))}")
                elif EXTRA in a.metadata:
                    extra = getattr(section, a.name)
            for sub, table in extra.items():
                lines += ["", f"[{name}.{toml_key(sub)}]"]
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def _sections(self) -> Iterator[tuple[str, _Section]]:
        for a in attrs.fields(Config):
            yield a.name, getattr(self, a.name)


SECTIONS: dict[str, type[_Section]] = {a.name: a.default.factory for a in attrs.fields(Config)}

# Keys a SIGHUP applies to the running daemon (sessions opened afterwards get the new limits);
# every other change is reported as needing a restart.
RELOADABLE = frozenset({
    "logging.level", "logging.format",
    "admission.mode", "admission.allow", "admission.admins",
    "limits.frame_rate", "limits.frame_burst", "limits.pool_frame_rate", "limits.pool_frame_burst", "limits.byte_rate", "limits.byte_burst",
    "limits.idle_timeout", "limits.ping_interval", "limits.send_queue", "limits.send_queue_bytes",
    "limits.write_timeout", "limits.max_subscriptions",
})


def _flatten(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, section in config._sections():
        for a in attrs.fields(type(section)):
            if SPEC in a.metadata:
                out[f"{name}.{a.name}"] = getattr(section, a.name)
            elif EXTRA in a.metadata:
                out.update({f"{name}.{sub}": table for sub, table in getattr(section, a.name).items()})
    return out


def diff_reloadable(old: Config, new: Config) -> tuple[set[str], set[str]]:
    """(changed keys that SIGHUP can apply, changed keys that need a restart), dotted."""
    a, b = _flatten(old), _flatten(new)
    changed = {k for k in a.keys() | b.keys() if a.get(k, _NO) != b.get(k, _NO)}
    return changed & RELOADABLE, changed - RELOADABLE


def apply_reloadable(old: Config, new: Config) -> Config:
    """`old` with the reloadable keys taken from `new`. Raises ConfigError if the mix is invalid
    (e.g. a new byte_burst below the running max_frame_size, which only a restart changes)."""
    changed, _ = diff_reloadable(old, new)
    per_section: dict[str, dict[str, Any]] = {}
    for dotted in changed:
        section, _, name = dotted.partition(".")
        per_section.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    return attrs.evolve(old, **{s: attrs.evolve(getattr(old, s), **kv) for s, kv in per_section.items()})


# --- loading -------------------------------------------------------------------------------------

def _hint(name: str, choices: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _fields(cls: type[_Section]) -> dict[str, attrs.Attribute]:
    return {a.name: a for a in attrs.fields(cls) if SPEC in a.metadata}


def _section(section: str, name: str = "", source: str = "") -> type[_Section]:
    if section not in SECTIONS:
        raise ConfigError(f"{section}.{name}" if name else section,
                          f"unknown section [{section}]{_hint(section, SECTIONS)}", source=source)
    return SECTIONS[section]


def _lookup(section: str, name: str, source: str = "") -> Spec:
    """The Spec of `section.name`, or ConfigError naming the closest real key."""
    fields = _fields(_section(section, name, source))
    if name not in fields:
        raise ConfigError(f"{section}.{name}", f"unknown key{_hint(name, fields, section + '.')}", source=source)
    return fields[name].metadata[SPEC]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror or e}") from None


def load_config(path: str | os.PathLike | None = None, *, env: Mapping[str, str] = os.environ,
                overrides: Mapping[str, Any] = {}, check_files: bool = False) -> Config:
    """Defaults < TOML file at `path` < env ``GALAXYNODE_<SECTION>_<KEY>`` < `overrides` (dotted keys,
    e.g. from CLI flags; a string is read like an environment value, None means "not given").
    `check_files`: configured files (key, TLS) must exist; the daemon creates its default key itself.
    Raises ConfigError: the one problem, or ConfigErrors when there are several (collect_config)."""
    config, errors = collect_config(path, env=env, overrides=overrides, check_files=check_files)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    assert config is not None
    return config


def collect_config(path: str | os.PathLike | None = None, *, env: Mapping[str, str] = os.environ,
                   overrides: Mapping[str, Any] = {},
                   check_files: bool = False) -> tuple[Config | None, list[ConfigError]]:
    """load_config that reports every problem in one pass (at most one per key), for `config check`
    and the daemon's start: (the config with defaults in place of bad values, the problems). The
    config is None only when the file cannot be read at all."""
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    errors: dict[str, ConfigError] = {}

    def fail(e: ConfigError) -> None:
        if e.got is not _NO and sources.get(e.key) and not e.source:
            e = ConfigError(e.key, e._reason, got=e.got, source=sources[e.key])
        errors.setdefault(e.key, e)

    def put(section: str, name: str, value: Any, source: str) -> None:
        values.setdefault(section, {})[name] = value
        sources[f"{section}.{name}"] = source

    if path is not None:
        try:
            table_of = _read_toml(Path(path))
        except ConfigError as e:
            return None, [e]
        for section, table in table_of.items():
            try:
                if not isinstance(table, dict):
                    owners = [f"{s}.{section}" for s, cls in SECTIONS.items() if section in _fields(cls)]
                    if section not in SECTIONS and owners:
                        raise ConfigError(section, f"keys belong in a [section]; did you mean {owners[0]}?")
                    _section(section)
                    raise ConfigError(section, f"must be a table [{section}]", got=table)
                cls = _section(section)
            except ConfigError as e:
                fail(e)
                continue
            extra = next((a.name for a in attrs.fields(cls) if EXTRA in a.metadata), None)
            for name, value in table.items():
                if extra is not None and isinstance(value, dict) and name not in _fields(cls):
                    values.setdefault(section, {}).setdefault(extra, {})[name] = value
                    continue
                try:
                    _lookup(section, name)
                except ConfigError as e:
                    fail(e)
                    continue
                put(section, name, value, "")
    for var in sorted(env):
        # GALAXYNODE_TEST_* belongs to the test suite (e.g. GALAXYNODE_TEST_PG), never a config key.
        if var.startswith(ENV_PREFIX) and not var.startswith(TEST_ENV_PREFIX):
            section, _, name = var[len(ENV_PREFIX):].lower().partition("_")
            try:
                put(section, name, _lookup(section, name, var).parse_text(env[var]), var)
            except ConfigError as e:
                fail(e)
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        try:
            spec = _lookup(section, name, _FROM_FLAGS)
        except ConfigError as e:
            fail(e)
            continue
        put(section, name, spec.parse_text(value) if isinstance(value, str) else value, _FROM_FLAGS)

    # Each value on its own first, so that one bad key does not hide the others of its section.
    for section, table in values.items():
        fields = _fields(SECTIONS[section])
        for name, value in list(table.items()):
            if name in fields:
                try:
                    fields[name].metadata[SPEC].convert(value)
                except _Bad as bad:
                    fail(ConfigError(f"{section}.{name}", bad.problem, got=bad.got))
                    del table[name]
    sections: dict[str, _Section] = {}
    for name, cls in SECTIONS.items():
        try:
            sections[name] = cls(**values.get(name, {}))
        except ConfigError as e:  # a rule across keys of the section (or its extra tables)
            fail(e)
            sections[name] = cls()
    try:
        config = Config(**sections)
    except ConfigError as e:  # a rule across sections: report it, and go on with the defaults
        fail(e)
        config = Config()
    if path is not None:  # plugins_path: dotted plugin paths are looked up beside the config file
        object.__setattr__(config.plugins, "config_dir", str(Path(path).resolve().parent))
    if check_files:
        for e in _check_files(config):
            fail(e)
    return config, list(errors.values())


def _check_files(config: Config) -> list[ConfigError]:
    out = []
    for name, section in config._sections():
        for a in attrs.fields(type(section)):
            spec, value = a.metadata.get(SPEC), getattr(section, a.name)
            if isinstance(spec, FilePath) and spec.must_exist and value is not None and not Path(value).is_file():
                out.append(ConfigError(f"{name}.{a.name}", "no such file", got=value))
    return out


# --- TOML output ---------------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else toml_string(name)


def toml_value(value: Any) -> str:
    """Any value tomllib can produce, as TOML (nested tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.date, datetime.time)):   # datetime is a date
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")
