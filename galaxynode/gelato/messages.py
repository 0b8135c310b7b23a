"""Gelato message bodies: one attrs class per message type, declared with a small schema.

The schema (kind and bounds per field) is data: it validates incoming bodies, builds outgoing
ones, and is exported to ``protocol/gelato.json`` so that the spec and the code cannot drift.
Unknown body keys are ignored (forward compatibility); missing required keys, wrong types and
out-of-bounds values raise ProtocolError(INVALID_BODY).
"""
from __future__ import annotations

import re
import sys
from typing import Any, Callable, ClassVar

import attrs

from galaxynode.gelato.errors import ErrorCode, ProtocolError

_NODEFAULT = object()

# Shared bounds (also exported to protocol/gelato.json).
MAX_NAME = 64
MAX_CAPABILITIES = 32
MAX_META_ENTRIES = 32
MAX_META_VALUE = 256
MAX_TOPIC = 128
MAX_TOPICS = 32
MAX_ENDPOINTS = 8
MAX_ENDPOINT = 256
MAX_PAGE = 1000
MAX_CURSOR = 128
MAX_DESCRIPTOR_RECORD = 4096
MAX_TTL_S = 86_400
MAX_INTERVAL_MS = MAX_TTL_S * 1000 // 3  # LEASE.interval: a granted ttl covers three intervals
MAX_RETRY_AFTER_MS = MAX_TTL_S * 1000
MAX_HOPS = 8
MAX_QUERY_BUDGET = 1024     # peer QUERYs one QUERY may cause across the mesh (peering §4)
MAX_SIGNED_RECORD = 65_536  # the largest kind's max_record (records.md §9)
ROLES = ("node", "pool", "mainnet", "probe")


@attrs.frozen
class Spec:
    """How one body field is typed and bounded on the wire."""

    kind: str  # str | bin | uint | bool | list | strmap | struct | any | anymap
    min_len: int | None = None
    max_len: int | None = None
    min: int | None = None  # uint only, inclusive
    max: int | None = None
    choices: tuple[str, ...] | None = None
    item: "Spec | None" = None
    struct: type | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("min_len", "max_len", "min", "max"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.choices:
            out["choices"] = list(self.choices)
        if self.item:
            out["item"] = self.item.describe()
        if self.struct:
            out["struct"] = self.struct.__name__
        return out


def field(kind: str, default: Any = _NODEFAULT, **bounds: Any) -> Any:
    spec = Spec(kind, **bounds)
    meta = {"gelato": spec}
    if default is _NODEFAULT:
        return attrs.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return attrs.field(metadata=meta, factory=lambda d=default: type(d)(d))
    return attrs.field(metadata=meta, default=default)


def _bad(path: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_BODY, f"{path}: {what}")


def utf8_len(s: str) -> int:
    """Bytes of `s` in UTF-8. Every str bound counts these, not code points: the bounds guard byte
    budgets (a descriptor record, a reply, a row), and a bound in code points let 64 two-byte
    characters through as 128 bytes. UnicodeEncodeError for a lone surrogate (never valid UTF-8).
    ASCII, the common case, costs no encoding (isascii() is O(1) in CPython)."""
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def is_str_of(s: object, min_bytes: int, max_bytes: int) -> bool:
    """Whether `s` is a str of min_bytes..max_bytes in UTF-8 (False for one that cannot be encoded):
    the wire's str bound, for checks outside a message body (stored leases, our own descriptor)."""
    try:
        return isinstance(s, str) and min_bytes <= utf8_len(s) <= max_bytes
    except UnicodeEncodeError:
        return False


def fit_utf8(s: str, max_bytes: int) -> str:
    """The longest prefix of `s` whose UTF-8 form fits `max_bytes`, cut at a character boundary
    (a lone surrogate becomes "?", so the result always encodes)."""
    if s.isascii() and len(s) <= max_bytes:
        return s
    return s.encode("utf-8", "replace")[:max_bytes].decode("utf-8", "ignore")


def _str_len(value: str, path: str) -> int:
    try:
        return utf8_len(value)
    except UnicodeEncodeError:
        raise _bad(path, "not valid UTF-8 (lone surrogate)") from None


def _check(spec: Spec, value: Any, path: str) -> Any:
    k = spec.kind
    if k == "str" or k == "bin":
        if not isinstance(value, str if k == "str" else bytes):
            raise _bad(path, f"expected {k}")
        n = _str_len(value, path) if k == "str" else len(value)
        if spec.min_len is not None and n < spec.min_len or spec.max_len is not None and n > spec.max_len:
            raise _bad(path, f"length {n} bytes outside [{spec.min_len or 0}, {spec.max_len}]")
        if spec.choices and value not in spec.choices:
            raise _bad(path, f"must be one of {', '.join(spec.choices)}")
        return value
    if k == "uint":
        if type(value) is not int or value < (spec.min or 0) or (spec.max is not None and value > spec.max):
            raise _bad(path, f"expected integer in [{spec.min or 0}, {spec.max if spec.max is not None else '2^64-1'}]")
        return value
    if k == "bool":
        if type(value) is not bool:
            raise _bad(path, "expected bool")
        return value
    if k == "list":
        if not isinstance(value, list):
            raise _bad(path, "expected array")
        if spec.min_len is not None and len(value) < spec.min_len or len(value) > spec.max_len:
            raise _bad(path, f"{len(value)} items outside [{spec.min_len or 0}, {spec.max_len}]")
        return tuple(_check(spec.item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if k == "strmap":
        if not isinstance(value, dict):
            raise _bad(path, "expected map")
        if len(value) > spec.max_len:
            raise _bad(path, f"more than {spec.max_len} entries")
        for key, v in value.items():
            if not isinstance(key, str) or not 0 < _str_len(key, path) <= MAX_NAME:
                raise _bad(path, f"key must be a string of 1..{MAX_NAME} bytes (UTF-8)")
            if not isinstance(v, str) or _str_len(v, f"{path}.{key}") > MAX_META_VALUE:
                raise _bad(f"{path}.{key}", f"value must be a string of at most {MAX_META_VALUE} bytes (UTF-8)")
        return dict(value)
    if k == "struct":
        if not isinstance(value, dict):
            raise _bad(path, "expected map")
        return _from_body(spec.struct, value, path)
    if k == "anymap":
        if not isinstance(value, dict):
            raise _bad(path, "expected map")
        return value
    if k == "any":
        return value
    raise AssertionError(f"unknown kind {k}")


def _dump(spec: Spec, value: Any) -> Any:
    if spec.kind == "list":
        return [_dump(spec.item, v) for v in value]
    if spec.kind == "struct":
        return value.to_body()
    return value


def _fields(cls: type) -> tuple[tuple[attrs.Attribute, Spec], ...]:
    cached = cls.__dict__.get("_gelato_fields")
    if cached is None:
        cached = tuple((a, a.metadata["gelato"]) for a in attrs.fields(cls))
        setattr(cls, "_gelato_fields", cached)
    return cached


def _from_body(cls: type, body: dict, path: str) -> Any:
    """The reference validator: readable, and it words every rejection."""
    kwargs = {}
    for a, spec in _fields(cls):
        if a.name in body:
            value = body[a.name]
            if value is None and a.default is None:
                continue
            kwargs[a.name] = _check(spec, value, f"{path}.{a.name}")
        elif a.default is attrs.NOTHING:
            raise _bad(f"{path}.{a.name}", "required field missing")
    return cls(**kwargs)


# --- fast path ---------------------------------------------------------------------------------
# Every frame's body goes through here, and _from_body's generic dispatch and eagerly formatted
# error paths cost more than its checks. The fast path runs the same checks, compiled into one
# closure per field. It only ever accepts: on any doubt it raises _Slow and _from_body decides
# and words the rejection. So it must accept nothing that _from_body rejects and must build the
# same value (tests/test_codec_fastpath.py compares the two on random bodies).

class _Slow(Exception):
    """The fast path declines; _from_body has the last word."""


def _fast_len(v: str) -> int:
    """utf8_len, declining (_Slow) where it would raise."""
    try:
        return utf8_len(v)
    except UnicodeEncodeError:
        raise _Slow from None


def _fast_check(spec: Spec) -> Callable[[Any], Any]:
    k = spec.kind
    lo = spec.min_len or 0
    hi = spec.max_len if spec.max_len is not None else sys.maxsize
    if k == "str":
        choices = frozenset(spec.choices or ())

        def check(v: Any) -> Any:
            if (type(v) is not str or not lo <= (len(v) if v.isascii() else _fast_len(v)) <= hi
                    or (choices and v not in choices)):
                raise _Slow
            return v
    elif k == "bin":
        def check(v: Any) -> Any:
            if type(v) is not bytes or not lo <= len(v) <= hi:
                raise _Slow
            return v
    elif k == "uint":
        top = spec.max if spec.max is not None else 2**64 - 1  # msgpack's own bound
        bottom = spec.min or 0

        def check(v: Any) -> Any:
            if type(v) is not int or not bottom <= v <= top:
                raise _Slow
            return v
    elif k == "bool":
        def check(v: Any) -> Any:
            if type(v) is not bool:
                raise _Slow
            return v
    elif k == "list" and spec.item.kind in ("str", "bin") and not spec.item.choices:
        # capabilities, topics, endpoints: one loop here beats a call per item
        t = str if spec.item.kind == "str" else bytes
        item_lo = spec.item.min_len or 0
        item_hi = spec.item.max_len if spec.item.max_len is not None else sys.maxsize
        size = _fast_len if t is str else len

        def check(v: Any) -> Any:
            if type(v) is not list or not lo <= len(v) <= hi:
                raise _Slow
            for x in v:
                if type(x) is not t or not item_lo <= (len(x) if t is str and x.isascii() else size(x)) <= item_hi:
                    raise _Slow
            return tuple(v)
    elif k == "list":
        item = _fast_check(spec.item)

        def check(v: Any) -> Any:
            if type(v) is not list or not lo <= len(v) <= hi:
                raise _Slow
            return tuple(map(item, v))
    elif k == "strmap":
        def check(v: Any) -> Any:
            if type(v) is not dict or len(v) > hi:
                raise _Slow
            for key in v:  # (isascii() first: ASCII, the common case, costs no call to _fast_len)
                if type(key) is not str or not 0 < (len(key) if key.isascii() else _fast_len(key)) <= MAX_NAME:
                    raise _Slow
            for val in v.values():
                if type(val) is not str or (len(val) if val.isascii() else _fast_len(val)) > MAX_META_VALUE:
                    raise _Slow
            return dict(v)
    elif k == "struct":
        struct_cls = spec.struct

        def check(v: Any) -> Any:
            if type(v) is not dict:
                raise _Slow
            return _fast_from_body(struct_cls, v)
    elif k == "anymap":
        def check(v: Any) -> Any:
            if type(v) is not dict:
                raise _Slow
            return v
    elif k == "any":
        def check(v: Any) -> Any:
            return v
    else:
        raise AssertionError(f"unknown kind {k}")
    return check


def _depth(spec: Spec) -> int | None:
    """Container levels that a value accepted by the fast check adds below its map; None where
    it may hold any msgpack at all (anymap, any, a struct with its unknown keys)."""
    if spec.kind in ("str", "bin", "uint", "bool"):
        return 0
    if spec.kind == "strmap" or (spec.kind == "list" and _depth(spec.item) == 0):
        return 1
    return None


@attrs.frozen
class _Plan:
    """A class's fast path. fields: per field (name, check, whether nil reads as absent, whether
    required); depth: the nesting of an accepted body, the body itself being 1 (None: unbounded)."""

    fields: tuple[tuple[str, Callable[[Any], Any], bool, bool], ...]
    names: frozenset[str]
    depth: int | None


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        specs = _fields(cls)
        depths = [_depth(spec) for _, spec in specs]
        plan = _PLANS[cls] = _Plan(
            fields=tuple((a.name, _fast_check(spec), a.default is None, a.default is attrs.NOTHING)
                         for a, spec in specs),
            names=frozenset(a.name for a, _ in specs),
            depth=None if None in depths else 1 + max(depths, default=0))
    return plan


def _fast_from_body(cls: type, body: dict) -> Any:
    kwargs = {}
    for name, check, nil_is_absent, required in (_PLANS.get(cls) or _plan(cls)).fields:
        value = body.get(name, _NODEFAULT)
        if value is _NODEFAULT:
            if required:
                raise _Slow
        elif value is not None or not nil_is_absent:
            kwargs[name] = check(value)
    return cls(**kwargs)


def parse_proven(type_name: str, body: Any, max_depth: int) -> Any:
    """The message, if the fast path accepts the body and the schema alone proves the codec's shape
    rule for it (string keys, nesting within max_depth): every key is a field and no field holds
    deeper containers. Otherwise None: the codec then walks the body and parse_body runs later.
    This spares most frames that walk."""
    cls = MESSAGES.get(type_name)
    if cls is None or type(body) is not dict:
        return None
    plan = _PLANS.get(cls) or _plan(cls)
    if plan.depth is None or plan.depth > max_depth or not body.keys() <= plan.names:
        return None
    try:
        return _fast_from_body(cls, body)
    except _Slow:
        return None


class Body:
    """Mixin for message and struct classes: schema-driven (de)serialisation."""

    TYPE: ClassVar[str] = ""
    FAMILY: ClassVar[str] = ""

    @classmethod
    def from_body(cls, body: dict) -> Any:
        if type(body) is dict:
            try:
                return _fast_from_body(cls, body)
            except _Slow:
                pass
        return _from_body(cls, body, cls.TYPE or cls.__name__)

    def to_body(self) -> dict:
        out = {}
        for a, spec in _fields(type(self)):
            value = getattr(self, a.name)
            if value is None:
                continue
            out[a.name] = _dump(spec, value)
        return out

    @classmethod
    def schema(cls) -> dict[str, Any]:
        return {a.name: {**spec.describe(), "required": a.default is attrs.NOTHING}
                for a, spec in _fields(cls)}


MESSAGES: dict[str, type] = {}
STRUCTS: dict[str, type] = {}


def message(type_name: str, family: str):
    def register(cls: type) -> type:
        cls = attrs.frozen(cls, kw_only=True)
        cls.TYPE, cls.FAMILY = type_name, family
        MESSAGES[type_name] = cls
        return cls
    return register


def struct(cls: type) -> type:
    cls = attrs.frozen(cls, kw_only=True)
    STRUCTS[cls.__name__] = cls
    return cls


def parse_body(type_name: str, body: Any) -> Any:
    cls = MESSAGES.get(type_name)
    if cls is None:
        if type_name.startswith(EXTENSION_PREFIX) and isinstance(body, dict):
            return Extension.parse(type_name, body)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_name!r}")
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.INVALID_BODY, f"{type_name}: body must be a map")
    return cls.from_body(body)


# Reusable field specs.
def _key(**kw): return field("bin", min_len=32, max_len=32, **kw)
def _ref(**kw): return field("bin", min_len=16, max_len=16, **kw)
def _name(**kw): return field("str", min_len=1, max_len=MAX_NAME, **kw)
def _strs(max_items, max_len, **kw): return field("list", max_len=max_items, item=Spec("str", min_len=1, max_len=max_len), **kw)
def _caps(**kw): return _strs(MAX_CAPABILITIES, MAX_NAME, **kw)
def _meta(**kw): return field("strmap", max_len=MAX_META_ENTRIES, **kw)
def _cursor(**kw): return field("bin", max_len=MAX_CURSOR, **kw)
def _limit(): return field("uint", max=MAX_PAGE, default=100)


# --- structs -----------------------------------------------------------------------------------

@struct
class SignedRecord(Body):
    """A record signed by its origin pool (records.md §2); the kind's bounds are checked by
    galaxynode.records.decode, which knows the kind from where the envelope was found."""

    record: bytes = field("bin", min_len=1, max_len=MAX_SIGNED_RECORD)
    sig: bytes = field("bin", min_len=64, max_len=64)

    SIG_OVERHEAD: ClassVar[int] = 80  # bytes beside `record` when encoded: sig, keys, headers


@struct
class NodeRecord(Body):
    key: bytes = _key()
    capabilities: tuple[str, ...] = _caps(default=())
    meta: dict = _meta(default={})
    expires: int = field("uint")  # ms since epoch
    pool: bytes | None = _key(default=None)  # set on records relayed from another pool
    signed: SignedRecord | None = field("struct", struct=SignedRecord, default=None)  # the origin's (records.md §8)


@struct
class SignedDescriptor(Body):
    record: bytes = field("bin", min_len=1, max_len=MAX_DESCRIPTOR_RECORD)
    sig: bytes = field("bin", min_len=64, max_len=64)


# --- session -----------------------------------------------------------------------------------

@message("HELLO", "session")
class Hello(Body):
    network: str = _name()
    role: str = field("str", choices=ROLES)
    nonce: bytes = _key()
    eph: bytes = _key()  # ephemeral X25519 public key, fresh per connection (gelato/keys.py)
    versions: tuple[int, ...] = field("list", min_len=1, max_len=8, item=Spec("uint", max=255))
    features: tuple[str, ...] = _strs(16, 32, default=())
    agent: str = field("str", max_len=128, default="")
    listen: tuple[str, ...] = _strs(MAX_ENDPOINTS, MAX_ENDPOINT, default=())
    echo: bytes | None = _key(default=None)  # answerer only: the opener's nonce


@message("READY", "session")
class Ready(Body):
    echo: bytes = _key()  # the answerer's nonce


@message("PING", "session")
class Ping(Body):
    data: bytes | None = field("bin", max_len=64, default=None)


@message("PONG", "session")
class Pong(Body):
    data: bytes | None = field("bin", max_len=64, default=None)


@message("ERROR", "session")
class Error(Body):
    code: int = field("uint", max=65535)
    name: str = field("str", max_len=64)
    message: str = field("str", max_len=512, default="")
    re: bytes | None = _ref(default=None)
    retry_after: int | None = field("uint", max=MAX_RETRY_AFTER_MS, default=None)  # ms; sent with overloaded

    @classmethod
    def from_exc(cls, exc: ProtocolError) -> "Error":
        # Messages quote peers' strings: cut to the field's bound in bytes, at a character boundary.
        return cls(code=int(exc.code), name=exc.code.name.lower(), message=fit_utf8(exc.message, 512), re=exc.ref,
                   retry_after=exc.retry_after)


@message("GOODBYE", "session")
class Goodbye(Body):
    reason: str = field("str", max_len=256, default="")


@message("ACK", "session")
class Ack(Body):
    re: bytes = _ref()


# --- registry ----------------------------------------------------------------------------------

@message("JOIN", "registry")
class Join(Body):
    ttl: int = field("uint", max=MAX_TTL_S, default=30)  # seconds
    capabilities: tuple[str, ...] = _caps(default=())
    meta: dict = _meta(default={})


@message("HEARTBEAT", "registry")
class Heartbeat(Body):
    ttl: int | None = field("uint", max=MAX_TTL_S, default=None)


@message("LEASE", "registry")
class Lease(Body):
    re: bytes = _ref()
    ttl: int = field("uint", max=MAX_TTL_S)  # granted; >= ceil(3 * interval / 1000)
    expires: int = field("uint")  # ms since epoch
    interval: int = field("uint", min=1, max=MAX_INTERVAL_MS)  # ms: send the next HEARTBEAT about this long after


@message("LEAVE", "registry")
class Leave(Body):
    pass


@message("QUERY", "registry")
class Query(Body):
    capabilities: tuple[str, ...] = _caps(default=())
    meta: dict = _meta(default={})
    key: bytes | None = _key(default=None)
    limit: int = _limit()
    cursor: bytes | None = _cursor(default=None)
    scope: str = field("str", choices=("local", "peers"), default="local")
    hops: int = field("uint", max=MAX_HOPS, default=2)
    budget: int | None = field("uint", max=MAX_QUERY_BUDGET, default=None)  # peer QUERYs it may still cause
    qid: bytes | None = _ref(default=None)  # one id per query across the mesh (duplicate suppression)


@message("QUERY_RESULT", "registry")
class QueryResult(Body):
    re: bytes = _ref()
    nodes: tuple[NodeRecord, ...] = field("list", max_len=MAX_PAGE * 4, item=Spec("struct", struct=NodeRecord))
    cursor: bytes | None = _cursor(default=None)
    partial: bool = field("bool", default=False)  # some peers did not answer in time


# --- events ------------------------------------------------------------------------------------

@message("SUBSCRIBE", "events")
class Subscribe(Body):
    topics: tuple[str, ...] = field("list", min_len=1, max_len=MAX_TOPICS, item=Spec("str", min_len=1, max_len=MAX_TOPIC))
    peers: bool = field("bool", default=False)  # also events relayed from peered pools


@message("UNSUBSCRIBE", "events")
class Unsubscribe(Body):
    topics: tuple[str, ...] = field("list", min_len=1, max_len=MAX_TOPICS, item=Spec("str", min_len=1, max_len=MAX_TOPIC))


@message("EVENT", "events")
class Event(Body):
    topic: str = field("str", min_len=1, max_len=MAX_TOPIC)
    event_id: bytes = _ref()
    origin: bytes = _key()  # key of the pool where the event happened
    ts: int = field("uint")
    data: dict = field("anymap", default={})
    hops: int = field("uint", max=MAX_HOPS, default=0)
    signed: SignedRecord | None = field("struct", struct=SignedRecord, default=None)  # the origin's (records.md §8)


# --- discovery and peering ---------------------------------------------------------------------

@message("ANNOUNCE", "discovery")
class Announce(Body):
    descriptor: SignedDescriptor = field("struct", struct=SignedDescriptor)


@message("LOOKUP", "discovery")
class Lookup(Body):
    network: str | None = _name(default=None)
    capability: str | None = _name(default=None)
    name: str | None = _name(default=None)
    limit: int = _limit()
    cursor: bytes | None = _cursor(default=None)


@message("LOOKUP_RESULT", "discovery")
class LookupResult(Body):
    re: bytes = _ref()
    descriptors: tuple[SignedDescriptor, ...] = field("list", max_len=MAX_PAGE, item=Spec("struct", struct=SignedDescriptor))
    cursor: bytes | None = _cursor(default=None)


@message("DESCRIPTORS", "peering")
class Descriptors(Body):
    descriptors: tuple[SignedDescriptor, ...] = field("list", max_len=256, item=Spec("struct", struct=SignedDescriptor))


# --- status and administration -----------------------------------------------------------------

@message("STATUS", "status")
class Status(Body):
    pass


@message("STATUS_RESULT", "status")
class StatusResult(Body):
    re: bytes = _ref()
    key: bytes = _key()
    name: str = field("str", max_len=MAX_NAME)
    network: str = _name()
    role: str = field("str", choices=ROLES)
    version: str = field("str", max_len=64)
    uptime: int = field("uint")  # seconds
    nodes: int = field("uint")
    peers: int = field("uint")


@message("ADMIN", "admin")
class Admin(Body):
    # Longest ban with a duration (10 years); longer is what a ban without duration is for. The bound
    # keeps now + duration far inside every clock and store (ms in a signed 64-bit integer).
    MAX_DURATION: ClassVar[int] = 10 * 365 * 86_400

    action: str = field("str", choices=("kick", "ban", "unban", "peers", "nodes", "bans"))
    key: bytes | None = _key(default=None)
    duration: int | None = field("uint", max=MAX_DURATION, default=None)  # seconds, >= 1; absent: permanent
    address: str | None = field("str", min_len=1, max_len=64, default=None)  # unban: an IP address or v6 /64
    cursor: bytes | None = _cursor(default=None)  # nodes: the next page (from ADMIN_RESULT cursor)


@message("ADMIN_RESULT", "admin")
class AdminResult(Body):
    re: bytes = _ref()
    items: tuple[Any, ...] = field("list", max_len=MAX_PAGE * 10, item=Spec("anymap"), default=())
    cursor: bytes | None = _cursor(default=None)  # nodes: more records follow; ask again with it


# --- extensions --------------------------------------------------------------------------------

EXTENSION_PREFIX = "x."
_EXTENSION_TYPE = re.compile(r"x\.[a-z][a-z0-9_-]{0,31}\.[a-z][a-z0-9_-]{0,31}")


@attrs.frozen
class Extension:
    """A message of a plugin's namespace `x.<plugin>.<name>` (galaxynode.plugin). The codec has checked
    the body's shape against its limits (depth, sizes, string keys) like any body; the pool checks it
    against the plugin's schema before the handler sees it, and answers unknown_type for a namespace
    no plugin serves. `re` (bin 16) marks a reply, as for every core reply type."""

    TYPE: str
    body: dict
    re: bytes | None = None
    FAMILY: ClassVar[str] = "extension"

    @classmethod
    def make(cls, type_name: str, body: dict, re: bytes | None = None) -> "Extension":
        if not _EXTENSION_TYPE.fullmatch(type_name):
            raise ValueError(f"extension type {type_name!r} must be x.<plugin>.<name>")
        return cls(type_name, body, re)

    @classmethod
    def parse(cls, type_name: str, body: dict) -> "Extension":
        if not _EXTENSION_TYPE.fullmatch(type_name):
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_name[:80]!r}")
        re_ = body.get("re")
        if re_ is not None and (type(re_) is not bytes or len(re_) != 16):
            raise _bad(f"{type_name}.re", "expected bin of 16 bytes")
        return cls(type_name, body, re_)

    def to_body(self) -> dict:
        return self.body if self.re is None else {**self.body, "re": self.re}
