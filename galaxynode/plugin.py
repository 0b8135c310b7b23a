"""The plugin API: the one public, versioned module a galaxynode plugin imports (docs/plugins.md).

Everything a plugin may use is here or reached through its `PluginContext`; every other module of
galaxynode is internal and may change in any release. `API_VERSION` grows when something here
changes incompatibly; a plugin may check it (`assert plugin.API_VERSION == 1`).

A plugin is a class constructed with its context. Every part is optional:

    class Plugin:
        name = "capcount"                     # short name (default: entry-point name / last dotted part)
        options = {"limit": Option(int, 10, min=1, max=1000, help="...")}   # [plugins.capcount] schema

        def __init__(self, ctx: PluginContext): ...       # register messages, metrics, periodic tasks
        async def admit(self, request: AdmissionRequest) -> Admit | Refuse: ...   # JOIN / peer admission
        async def run(self) -> None: ...                  # long-running work (absent: lives until shutdown)

A class without a constructor is built without arguments and gets the context as `self.ctx`. A plain
`async def plugin(ctx)` is a plugin with only `run`. The supervisor builds a fresh instance
(and context) for every (re)start, so a crashed instance leaves nothing behind: its messages,
periodic tasks and admission hook go with it, and its successor registers them again. Counters,
the store and the config outlive restarts.

Why this shape: it is the old `Plugin(ctx).run()` plus declarative class attributes, so a plugin that
only listens to events stays three lines, and everything the daemon must know before serving
(options, admission) is readable without running the plugin.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.gelato.messages import Extension, SignedRecord

API_VERSION = 1

# Short names and message names: one segment of a wire type `x.<plugin>.<name>` and of a bus topic;
# in metric names `-` becomes `_`.
NAME_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
_NAME = re.compile(NAME_PATTERN)

__all__ = [
    "API_VERSION", "Option", "OptionError", "PluginError", "PluginContext", "AdmissionRequest", "Admit", "Refuse",
    "REFUSAL_CODES", "Field", "Request", "MessageError", "Messages", "Store", "RegistryView", "NodeView",
    "ChangeStream", "ChangesLost", "PoolIdentity", "Metrics", "call", "verify_record", "record_prefix",
]


class PluginError(Exception):
    """A permanent problem a plugin reports (bad config, missing dependency): the supervisor marks it
    failed at once instead of restarting it. The message is one line."""


# --- options: the [plugins.<short>] section ---------------------------------------------------------

class OptionError(ValueError):
    """A value that does not fit its Option; the message is the problem, without the key."""


_REQUIRED = object()
_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list of strings",
          dict: "a table"}


@attrs.frozen
class Option:
    """One key of the plugin's `[plugins.<short>]` section. `type`: int, float, str, bool, list (of
    strings) or dict (a table, passed through as plain dicts). No `default`: the key is required.
    `min`/`max` bound numbers (and the length of str and list); `choices` lists the allowed values.
    Checked by `galaxynode config check` and before the plugin is constructed."""

    type: type
    default: Any = _REQUIRED
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] = ()
    help: str = ""

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"Option type must be one of int, float, str, bool, list, dict (got {self.type!r})")
        if self.default is not _REQUIRED:
            self.convert(self.default)  # a default that fails its own option is the plugin's bug

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        what = _TYPES[self.type]
        if self.choices:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.min is not None or self.max is not None:
            lo, hi = self.min, self.max
            if self.type in (int, float):
                what += f" between {lo:g} and {hi:g}" if lo is not None and hi is not None else \
                    (f" of at least {lo:g}" if lo is not None else f" of at most {hi:g}")
            else:
                unit = "characters" if self.type is str else "items"
                what += f" of {lo:g} to {hi:g} {unit}" if lo is not None and hi is not None else \
                    (f" of at least {lo:g} {unit}" if lo is not None else f" of at most {hi:g} {unit}")
        return what

    def convert(self, value: Any) -> Any:
        """The value as the plugin sees it, or OptionError."""
        t = self.type
        ok = isinstance(value, (list, tuple) if t is list else t) and not (t is not bool and isinstance(value, bool))
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if t is float and ok and not math.isfinite(value):
            ok = False
        if t is list and ok:
            ok = all(isinstance(v, str) for v in value)
            value = list(value)
        if ok and self.choices and value not in self.choices:
            ok = False
        if ok and (self.min is not None or self.max is not None) and t in (int, float, str, list):
            n = value if t in (int, float) else len(value)
            ok = (self.min is None or n >= self.min) and (self.max is None or n <= self.max)
        if not ok:
            raise OptionError(f"must be {self.describe()} (got {value!r:.80})")
        return value


# --- admission ---------------------------------------------------------------------------------------

# The codes a refusal may carry on the wire (docs/gelato/errors.md). The node sees ERROR <code> with
# the plugin's reason as the message.
REFUSAL_CODES: dict[str, ErrorCode] = {
    "not_admitted": ErrorCode.NOT_ADMITTED,   # this key may not join (policy, missing proof)
    "forbidden": ErrorCode.FORBIDDEN,         # the request is not allowed as made
    "unavailable": ErrorCode.UNAVAILABLE,     # cannot decide now; retry later
}
MAX_REASON = 256           # bytes of UTF-8 of a refusal reason
MAX_ADMIT_META = 4         # entries one plugin may attach to a lease
MAX_ADMIT_META_VALUE = 256  # bytes of UTF-8 per value (the lease meta bound)


@attrs.frozen
class AdmissionRequest:
    """What an admission hook is asked about. `meta` is the node's own (keys starting `x.` removed:
    those are the plugins'). `remote` is "ip:port" (or None in-process); `is_peer` is True when a
    pool asks to be served as a peer (peerpolicy), False for a JOIN; `role` is the HELLO role."""

    key: bytes
    capabilities: tuple[str, ...] = ()
    meta: Mapping[str, str] = attrs.field(factory=dict)
    remote: str | None = None
    is_peer: bool = False
    role: str = "node"


@attrs.frozen
class Admit:
    """Accept. `meta` (at most MAX_ADMIT_META entries, names [a-z0-9_-]{1,32}, values <= 256 bytes) is
    stored with the lease as `x.<plugin>.<name>` (shown in QUERY, events and ADMIN nodes); a node can
    never set `x.` keys itself. Ignored for peers (a peer holds no lease)."""

    meta: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Refuse:
    """Refuse with `code` (a key of REFUSAL_CODES) and a one-line `reason` the node sees."""

    reason: str
    code: str = "not_admitted"

    def __attrs_post_init__(self) -> None:
        if self.code not in REFUSAL_CODES:
            raise ValueError(f"refusal code must be one of {', '.join(REFUSAL_CODES)} (got {self.code!r})")


# --- messages ----------------------------------------------------------------------------------------

@attrs.frozen
class Field:
    """One body field of a plugin message, checked with the codec's rules (galaxynode.gelato.messages):
    kind is str | bin | uint | bool | list | strmap | anymap | any; str/bin lengths count bytes
    (min_len/max_len), uint has `max`, list has `item` (a Field) and max_len items. str and bin need
    max_len and list needs item and max_len, so every field is bounded. `default` makes it optional."""

    kind: str
    default: Any = _REQUIRED
    min_len: int | None = None
    max_len: int | None = None
    max: int | None = None
    choices: tuple[str, ...] | None = None
    item: "Field | None" = None


@attrs.frozen
class Request:
    """A plugin message as its handler sees it: `body` already validated against the registered
    schema (absent optional fields hold their default). `key` is the session's verified key,
    `remote` its address, `is_peer` whether the session is a peer pool's."""

    type: str
    key: bytes
    body: Mapping[str, Any]
    remote: str | None = None
    is_peer: bool = False


class MessageError(Exception):
    """Raised by a handler to answer ERROR `code` (invalid_body, not_found, forbidden, not_admitted,
    unavailable) with a one-line message; anything else a handler raises is answered `internal`."""

    CODES: ClassVar[dict[str, ErrorCode]] = {
        "invalid_body": ErrorCode.INVALID_BODY, "not_found": ErrorCode.NOT_FOUND, "forbidden": ErrorCode.FORBIDDEN,
        "not_admitted": ErrorCode.NOT_ADMITTED, "unavailable": ErrorCode.UNAVAILABLE,
    }

    def __init__(self, code: str, message: str):
        if code not in self.CODES:
            raise ValueError(f"code must be one of {', '.join(self.CODES)}")
        super().__init__(message)
        self.code, self.message = code, message


Handler = Callable[[Request], Awaitable[Mapping[str, Any]]]


class Messages(Protocol):
    """`ctx.messages`: request/reply message types in the plugin's namespace."""

    def register(self, name: str, handler: Handler, *, body: Mapping[str, Field] | None = None) -> str:
        """Serve wire type `x.<plugin>.<name>` (name matches NAME_PATTERN). The request body is
        validated against `body` (unknown keys ignored, as for core messages; `re` is reserved) before
        `handler` sees it; the handler returns the reply body (a map of msgpack values; `re` is added),
        sent back as the same type. Returns the wire type."""


async def call(client: Any, plugin: str, name: str, body: Mapping[str, Any] | None = None, *,
               timeout: float = 10.0) -> dict[str, Any]:
    """Ask a pool: send `x.<plugin>.<name>` with `body` on `client` (a nodeclient.PoolClient or a
    net Connection) and return the reply body (without `re`). The pool's ERROR is raised as
    galaxynode.net.connection.RemoteError (its `.code`), unknown namespaces as unknown_type."""
    conn = getattr(client, "conn", client)
    frame = await conn.request(Extension.make(f"x.{plugin}.{name}", dict(body or {})), timeout=timeout)
    if frame.type != f"x.{plugin}.{name}":
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"expected x.{plugin}.{name} in reply, got {frame.type}")
    out = dict(frame.msg.body)
    out.pop("re", None)
    return out


# --- state -------------------------------------------------------------------------------------------

MAX_STORE_KEY = 256           # bytes of UTF-8
MAX_STORE_VALUE = 4 * 1024 * 1024


class Store(Protocol):
    """`ctx.store`: the plugin's durable key-value space in the pool's database. Keys are str (<= 256
    bytes UTF-8), values bytes (<= 4 MiB); each plugin sees only its own keys. A write returns once it
    is committed (the registry's promise: acknowledged = stored; it shares the registry's group
    commit) and raises ProtocolError(unavailable) if the store refused it, in which case nothing of it
    is stored. Reads are served from memory: the whole space is loaded at start-up, so keep it to
    what the plugin must remember (megabytes, not gigabytes)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def scan(self, prefix: str = "") -> list[tuple[str, bytes]]:
        """Every (key, value) whose key starts with `prefix`, sorted by key."""

    async def write(self, puts: Mapping[str, bytes] = {}, deletes: Sequence[str] = ()) -> None:
        """Several changes as one: all are stored (in one transaction) or none."""


@attrs.frozen
class NodeView:
    """A lease as plugins see it (times in ms since the epoch)."""

    key: bytes
    capabilities: tuple[str, ...]
    meta: Mapping[str, str]
    expires: int
    joined: int


class ChangesLost(Exception):
    """The change stream could not keep its promise (the consumer fell more than its queue behind, or
    the store refused changes the snapshot already showed): take a new snapshot."""


class ChangeStream(Protocol):
    """Registry changes after a snapshot, in order: bus Events (galaxynode.events.Event: topic, data,
    id, ts) of topics node.joined, node.left, node.kicked, node.banned, node.expired (data: key,
    capabilities, meta, expires; node.banned adds until). Iterate with `async for`; raises ChangesLost."""

    def __aiter__(self) -> AsyncIterator[Any]: ...


class RegistryView(Protocol):
    """`ctx.registry`: read access to the pool's nodes."""

    def __len__(self) -> int: ...

    def get(self, key: bytes) -> NodeView | None: ...

    def snapshot_and_changes(self, *, queue_size: int = 4096) -> Any:
        """A context manager giving `(snapshot, changes)`: every lease now (list[NodeView], the state
        the stream continues from) and a ChangeStream of every change after exactly that point: none
        is missed or seen twice. Use as `with ctx.registry.snapshot_and_changes() as (nodes, changes):`."""


# --- identity and signed records --------------------------------------------------------------------

def record_prefix(plugin: str, kind: str) -> bytes:
    """The signature domain of a plugin record: a report of one plugin and kind can never pass as any
    other record (docs/gelato/records.md: the verifier supplies the prefix)."""
    return f"gelato/v1/x.{plugin}.{kind}\0".encode()


class PoolIdentity(Protocol):
    """`ctx.identity`: the pool's public key and record signing (the private key stays inside)."""

    public: bytes
    public_text: str      # ed25519:<hex>
    network: str

    def sign_record(self, kind: str, body: Mapping[str, Any]) -> SignedRecord:
        """A signed record `{origin, network, plugin, kind, issued, **body}` (msgpack map, string keys,
        bounded like records.md) signed by the pool key over record_prefix(plugin, kind) || record.
        `kind` matches NAME_PATTERN. Store or send `.record` and `.sig`; verify with verify_record."""


def verify_record(signed: SignedRecord | Mapping[str, bytes], *, plugin: str, kind: str,
                  origin: bytes | None = None) -> dict[str, Any]:
    """The record's fields if `sig` verifies with its `origin` (and that origin is `origin`, when
    given) over record_prefix(plugin, kind), and its plugin and kind fields match; else ValueError."""
    from galaxynode.plugins import verify_plugin_record
    return verify_plugin_record(signed, plugin=plugin, kind=kind, origin=origin)


# --- metrics -----------------------------------------------------------------------------------------

class Metrics(Protocol):
    """`ctx.metrics`: Prometheus metrics exposed as `galaxynode_plugin_<short>_<name>` on /metrics.
    Registering a name again returns the same metric (it outlives plugin restarts). `labels` names
    the label keys; use `.labels(*values)` then, as in prometheus_client."""

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Any:
        """`.inc(amount=1)`."""

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Any:
        """`.set(v)`, `.inc(a=1)`, `.dec(a=1)`."""

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)) -> Any:
        """`.observe(v)`."""


# --- the context -------------------------------------------------------------------------------------

@attrs.frozen
class PluginContext:
    """What a plugin gets (one per instance). `config` holds the validated options of `[plugins.<name>]`
    (defaults filled in); `data_dir` is the pool's data directory (a plugin's files go in a
    subdirectory named after it). `bus` is the event bus (`subscribe(patterns)` -> async iterator of
    Events, `publish(topic, data)`; a plugin's own topics are `x.<name>.<event>`).

    `every(seconds, fn)`: call `await fn()` every `seconds` (first call one period after start) in the
    plugin's own task group; what it raises crashes the plugin like `run` raising (the supervisor
    restarts it). Periodic tasks start when the instance starts and end with it.

    Host objects are duck-typed so tests can pass their own; None where a host offers nothing."""

    name: str
    config: Mapping[str, Any] = attrs.field(factory=dict)
    bus: Any = None
    registry: RegistryView | None = None
    store: Store | None = None
    identity: PoolIdentity | None = None
    messages: Messages | None = None
    metrics: Metrics | None = None
    data_dir: Path | None = None
    log: logging.Logger = attrs.field(
        default=attrs.Factory(lambda self: logging.getLogger(f"galaxynode.plugin.{self.name}"), takes_self=True))
    _periodic: list = attrs.field(factory=list, repr=False)

    def every(self, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
        if not (isinstance(seconds, (int, float)) and 0 < seconds < math.inf):
            raise ValueError("every(): seconds must be a positive number")
        self._periodic.append((float(seconds), fn))


def check_name(name: str, what: str = "name") -> str:
    """`name` if it matches NAME_PATTERN, else ValueError (one line)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} must match {NAME_PATTERN}")
    return name
