"""Plugins, the host side: finding them, checking their config, supervising them, and the services
behind galaxynode.plugin (admission, messages, store, registry view, identity, metrics).

Finding: `[plugins] enabled` lists entry-point names of the `galaxynode.plugins` group (tried first)
or dotted paths `pkg.mod:Attr` / `pkg.mod.Attr`, imported with the config file's directory and the
`[plugins] path` directories (relative ones to the config file's directory) searched after the
installed packages. A plugin's short name names its `[plugins.<short>]` section, wire namespace,
metrics and store: its `name` attribute, else the entry-point name, else the module's last part.

Supervision: a plugin is instantiated (class) or called (async function) with a fresh context per
(re)start. A crash (in `run`, a periodic task or the constructor) is logged with its traceback,
counted and answered with a restart after exponential backoff; after `max_restarts` consecutive
crashes the plugin is failed (`PluginSupervisor.failed`). Nothing a plugin raises (short of
KeyboardInterrupt/SystemExit) reaches the daemon. A plugin whose `run` returns is finished and stays
finished. PluginError reports a permanent problem: failed at once, since restarting cannot fix it.
A handler or admission hook that raises answers that one request (internal / admission_default);
it does not restart the plugin.

Bad specs and bad sections are found up front (check_config, and the supervisor's constructor
raises one PluginError naming every bad spec), so the daemon refuses to start with one line.
"""
from __future__ import annotations

import copy
import difflib
import importlib
import importlib.metadata
import inspect
import logging
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio

from galaxynode import plugin as api
from galaxynode.gelato import messages as m
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import verify
from galaxynode.modules import single_leaf
from galaxynode.plugin import PluginContext, PluginError  # noqa: F401  (re-exported: older imports)
from galaxynode.records import unpack_record

GROUP = "galaxynode.plugins"
COMMANDS_GROUP = "galaxynode.commands"
MAX_PLUGIN_RECORD = 1024 * 1024

log = logging.getLogger("galaxynode.plugins")


@attrs.define
class PluginStats:
    """Per-plugin counters. state: pending | running | backoff | finished | failed | stopped (cancelled).
    `failures` is the current run of consecutive crashes; `crashes` and `restarts` are totals."""

    state: str = "pending"
    crashes: int = 0
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    admitted: int = 0          # admission verdicts, by outcome
    refused: int = 0
    admission_failed: int = 0  # raised, timed out or not running: admission_default applied
    messages: int = 0          # requests answered, and those answered with an error
    message_errors: int = 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- finding plugins -----------------------------------------------------------------------------------

@attrs.frozen
class Loaded:
    """A resolved plugin: `spec` as enabled, its short `name`, the class or function, its options."""

    spec: str
    name: str
    obj: Any
    options: Mapping[str, api.Option]

    @property
    def admits(self) -> bool:
        return inspect.isclass(self.obj) and inspect.iscoroutinefunction(getattr(self.obj, "admit", None))


def available_plugins() -> list[str]:
    """Names registered in the `galaxynode.plugins` entry-point group by installed distributions."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=GROUP)})


def search_path(config: Any) -> list[Path]:
    """Where dotted paths are looked for besides the installed packages: the config file's directory,
    then `[plugins] path` (relative entries to the config file's directory, else the working one)."""
    pc = config.plugins
    base = Path(pc.config_dir) if pc.config_dir else None
    dirs = [base] if base is not None else []
    for entry in pc.path:
        p = Path(entry).expanduser()
        dirs.append(p if p.is_absolute() or base is None else base / p)
    return dirs


def _where(search: Sequence[Path]) -> str:
    dirs = ", ".join(str(d) for d in search)
    return f"looked in the installed packages{' and ' + dirs if dirs else ''}"


def _import_path(spec: str, search: Sequence[Path]) -> tuple[Any, str]:
    if ":" in spec:
        module_name, _, attr_path = spec.partition(":")
    else:
        module_name, _, attr_path = spec.rpartition(".")
    if not module_name or not attr_path:
        raise _unknown(spec)
    for d in search:
        if str(d) not in sys.path:
            sys.path.append(str(d))
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # The named module (or a parent) is missing, rather than something it imports.
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            installed = ", ".join(available_plugins()) or "none"
            raise PluginError(f"unknown plugin {spec!r}: no module named {e.name!r} ({_where(search)}; "
                              f"installed plugins: {installed})") from None
        raise PluginError(f"plugin {spec!r}: cannot import {module_name}: {_one_line(e)}") from None
    except Exception as e:
        raise PluginError(f"plugin {spec!r}: cannot import {module_name}: {_one_line(e)}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"plugin {spec!r}: module {module_name} has no attribute {attr_path!r}") from None
    return obj, module_name.rpartition(".")[2]


def _unknown(spec: str) -> PluginError:
    names = ", ".join(available_plugins()) or "none"
    return PluginError(f"unknown plugin {spec!r} (installed: {names}; or give a dotted path pkg.mod:attr)")


def _check_plugin(spec: str, obj: Any) -> None:
    if inspect.isclass(obj):
        if getattr(obj, "run", None) is None and getattr(obj, "admit", None) is None and obj.__init__ is object.__init__:
            raise PluginError(f"plugin {spec!r}: class {obj.__qualname__} is not a plugin (it has no `async def "
                              "run(self)`, no `async def admit(self, request)` and no constructor taking the context)")
        if getattr(obj, "run", None) is not None and not inspect.iscoroutinefunction(obj.run):
            raise PluginError(f"plugin {spec!r}: {obj.__qualname__}.run must be `async def run(self)`")
        if getattr(obj, "admit", None) is not None and not inspect.iscoroutinefunction(obj.admit):
            raise PluginError(f"plugin {spec!r}: {obj.__qualname__}.admit must be `async def admit(self, request)`")
    elif not inspect.iscoroutinefunction(obj):
        raise PluginError(f"plugin {spec!r}: not a plugin (want a class, or an async function taking the context)")


def load_plugin(spec: str, search: Sequence[Path] = ()) -> Loaded:
    """Resolve `spec` (entry-point name first, else a dotted path) into a Loaded plugin."""
    spec = spec.strip()
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}
    if spec in eps:
        try:
            obj = eps[spec].load()
        except Exception as e:
            raise PluginError(f"plugin {spec!r}: cannot load entry point {eps[spec].value}: {_one_line(e)}") from None
        default_name = spec
    elif "." in spec or ":" in spec:
        obj, default_name = _import_path(spec, search)
    else:
        raise _unknown(spec)
    _check_plugin(spec, obj)
    name = getattr(obj, "name", None) if inspect.isclass(obj) or hasattr(obj, "name") else None
    name = name if isinstance(name, str) else default_name
    try:
        api.check_name(name, "short name")
    except ValueError as e:
        raise PluginError(f"plugin {spec!r}: {e} (set a `name` attribute)") from None
    options = getattr(obj, "options", None) or {}
    if not isinstance(options, Mapping) or not all(isinstance(o, api.Option) for o in options.values()):
        raise PluginError(f"plugin {spec!r}: `options` must map names to galaxynode.plugin.Option")
    return Loaded(spec, name, obj, dict(options))


def resolve_plugin(spec: str, search: Sequence[Path] = ()) -> Any:
    """The plugin class or async function named by `spec` (see load_plugin)."""
    return load_plugin(spec, search).obj


def load_all(specs: Iterable[str], search: Sequence[Path] = ()) -> list[Loaded]:
    """Every spec resolved, or one PluginError naming every problem."""
    out: list[Loaded] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for spec in specs:
        if spec in seen.values():
            errors.append(f"plugin {spec!r} listed twice")
            continue
        try:
            loaded = load_plugin(spec, search)
        except PluginError as e:
            errors.append(str(e))
            continue
        if loaded.name in seen:
            errors.append(f"plugins {seen[loaded.name]!r} and {spec!r} have the same short name {loaded.name!r} "
                          "(give one a `name` attribute)")
            continue
        seen[loaded.name] = spec
        out.append(loaded)
    if errors:
        raise PluginError("; ".join(errors))
    return out


def plugin_config(loaded: Loaded, section: Mapping[str, Any]) -> dict[str, Any]:
    """The section checked against the plugin's options, defaults filled in; ConfigError (the first
    problem) otherwise. A plugin without `options` gets its section as written (unchecked)."""
    out, errors = _plugin_config(loaded, section)
    if errors:
        raise errors[0]
    return out


def _plugin_config(loaded: Loaded, section: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    from galaxynode.config import ConfigError
    if not loaded.options:
        return dict(section), []
    out: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for key, value in section.items():
        opt = loaded.options.get(key)
        if opt is None:
            close = difflib.get_close_matches(key, list(loaded.options), n=1)
            hint = f"; did you mean plugins.{loaded.name}.{close[0]}?" if close else \
                f" (known: {', '.join(sorted(loaded.options))})"
            errors.append(ConfigError(f"plugins.{loaded.name}.{key}", f"unknown key{hint}"))
            continue
        try:
            out[key] = opt.convert(value)
        except api.OptionError as e:
            errors.append(ConfigError(f"plugins.{loaded.name}.{key}", str(e)))
    for key, opt in loaded.options.items():
        if key not in out and key not in section:
            if opt.required:
                errors.append(ConfigError(f"plugins.{loaded.name}.{key}", f"required ({opt.describe()})"))
            else:
                out[key] = copy.deepcopy(opt.default)  # a plugin may change its copy
    return out, errors


def check_config(config: Any) -> list[Any]:
    """Problems with the plugins of `config`, for `galaxynode config check`: every enabled plugin
    resolves, its section fits its options, and every [plugins.X] table belongs to an enabled one."""
    from galaxynode.config import ConfigError
    pc = config.plugins
    errors: list[ConfigError] = []
    search = search_path(config)
    loaded: list[Loaded] = []
    unresolved: set[str] = set()  # the likely short names of specs that failed: their tables are not strays
    for spec in pc.enabled:
        try:
            loaded.append(load_plugin(spec, search))
        except PluginError as e:
            errors.append(ConfigError("plugins.enabled", str(e)))
            module = spec.partition(":")[0] if ":" in spec else spec.rpartition(".")[0] or spec
            unresolved.add(module.rpartition(".")[2])
    names = {ld.name for ld in loaded}
    for ld in loaded:
        errors += _plugin_config(ld, pc.section(ld.name))[1]
    for table in pc.sections:
        if table not in names and table not in unresolved:
            owner = next((ld.name for ld in loaded if ld.spec == table), None)
            hint = f"; sections are named after the short name: [plugins.{owner}]" if owner else \
                (f"; enabled plugins: {', '.join(sorted(names))}" if names else "; no plugin is enabled")
            errors.append(ConfigError(f"plugins.{table}", f"no enabled plugin has this name{hint}"))
    return errors


def command_entry_points() -> list[Any]:
    """The `galaxynode.commands` entry points (a plugin's CLI subcommands: callables add(subparsers))."""
    return sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)


# --- signed plugin records ------------------------------------------------------------------------------

def sign_plugin_record(identity: Any, network: str, plugin: str, kind: str, body: Mapping[str, Any]) -> m.SignedRecord:
    api.check_name(kind, "record kind")
    reserved = {"origin", "network", "plugin", "kind", "issued"} & body.keys()
    if reserved:
        raise ValueError(f"record fields {', '.join(sorted(reserved))} are set by the pool")
    fields = {"origin": identity.public, "network": network, "plugin": plugin, "kind": kind,
              "issued": time.time_ns() // 1_000_000, **body}
    record = msgpack.packb(fields, use_bin_type=True)
    if len(record) > MAX_PLUGIN_RECORD:
        raise ValueError(f"record of {len(record)} bytes exceeds {MAX_PLUGIN_RECORD}")
    return m.SignedRecord(record=record, sig=identity.sign(api.record_prefix(plugin, kind) + record))


def verify_plugin_record(signed: Any, *, plugin: str, kind: str, origin: bytes | None = None) -> dict[str, Any]:
    if isinstance(signed, Mapping):
        record, sig = signed.get("record"), signed.get("sig")
    else:
        record, sig = signed.record, signed.sig
    if type(record) is not bytes or type(sig) is not bytes or len(sig) != 64:
        raise ValueError("a signed record is bin record and 64 bytes of bin sig")
    fields = unpack_record(record, max_bytes=MAX_PLUGIN_RECORD, max_fields=1024)
    signer = fields.get("origin")
    if type(signer) is not bytes or len(signer) != 32:
        raise ValueError("record has no 32-byte origin")
    if origin is not None and signer != origin:
        raise ValueError("record is signed by another key")
    if fields.get("plugin") != plugin or fields.get("kind") != kind:
        raise ValueError(f"not an x.{plugin}.{kind} record")
    if not verify(signer, sig, api.record_prefix(plugin, kind) + record):
        raise ValueError("signature does not verify")
    return fields


@attrs.frozen
class _Identity:
    """ctx.identity."""

    _identity: Any
    network: str
    _plugin: str

    @property
    def public(self) -> bytes:
        return self._identity.public

    @property
    def public_text(self) -> str:
        return self._identity.public_text

    def sign_record(self, kind: str, body: Mapping[str, Any]) -> m.SignedRecord:
        return sign_plugin_record(self._identity, self.network, self._plugin, kind, body)


# --- the store and the registry view ----------------------------------------------------------------------

class _Store:
    """ctx.store: the plugin's space of the registry's key-value table (Registry.kv_write)."""

    def __init__(self, registry: Any, plugin: str):
        self._registry, self._plugin = registry, plugin

    @property
    def _space(self) -> dict[str, bytes]:
        return self._registry.kv.get(self._plugin, {})

    @staticmethod
    def _key(key: str) -> str:
        if not isinstance(key, str) or not 0 < len(key.encode("utf-8", "surrogatepass")) <= api.MAX_STORE_KEY:
            raise ValueError(f"store keys are str of 1..{api.MAX_STORE_KEY} bytes")
        return key

    async def get(self, key: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._space.get(self._key(key))

    async def scan(self, prefix: str = "") -> list[tuple[str, bytes]]:
        await trio.lowlevel.checkpoint()
        return sorted((k, v) for k, v in self._space.items() if k.startswith(prefix))

    async def put(self, key: str, value: bytes) -> None:
        await self.write({key: value})

    async def delete(self, key: str) -> None:
        await self.write(deletes=[key])

    async def write(self, puts: Mapping[str, bytes] = {}, deletes: Sequence[str] = ()) -> None:
        for k, v in puts.items():
            self._key(k)
            if not isinstance(v, (bytes, bytearray)) or len(v) > api.MAX_STORE_VALUE:
                raise ValueError(f"store values are bytes of at most {api.MAX_STORE_VALUE}")
        for k in deletes:
            self._key(k)
        await self._registry.kv_write(self._plugin, {k: bytes(v) for k, v in puts.items()}, list(deletes))


def node_view(entry: Any) -> api.NodeView:
    return api.NodeView(key=entry.key, capabilities=tuple(entry.capabilities), meta=dict(entry.meta),
                        expires=entry.expires, joined=entry.joined)


class _Changes:
    """The change stream of snapshot_and_changes (translates the registry's ChangesLost)."""

    def __init__(self, watch: Any):
        self._watch = watch

    def __aiter__(self) -> "_Changes":
        return self

    async def __anext__(self) -> Any:
        from galaxynode.registry.service import ChangesLost
        try:
            return await self._watch.__anext__()
        except ChangesLost as e:
            raise api.ChangesLost(str(e)) from None


class _Snapshot:
    def __init__(self, registry: Any, queue_size: int):
        self._registry, self._queue_size, self._watch = registry, queue_size, None

    def __enter__(self) -> tuple[list[api.NodeView], _Changes]:
        entries, self._watch = self._registry.watch(self._queue_size)
        return [node_view(e) for e in entries], _Changes(self._watch)

    def __exit__(self, *exc: object) -> None:
        self._watch.close()


class _RegistryView:
    """ctx.registry."""

    def __init__(self, registry: Any):
        self._registry = registry

    def __len__(self) -> int:
        return len(self._registry.table)

    def get(self, key: bytes) -> api.NodeView | None:
        e = self._registry.get(key)
        return None if e is None else node_view(e)

    def snapshot_and_changes(self, *, queue_size: int = 4096) -> _Snapshot:
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        return _Snapshot(self._registry, queue_size)


# --- metrics ----------------------------------------------------------------------------------------------

class _Series:
    def __init__(self, metric: "_Metric"):
        self._m = metric
        self.value = 0.0
        self.buckets = [0] * len(metric.buckets)
        self.sum = 0.0

    def inc(self, amount: float = 1) -> None:
        if self._m.kind == "counter" and amount < 0:
            raise ValueError("counters only go up")
        if self._m.kind == "histogram":
            raise TypeError("a histogram is observed, not incremented")
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        if self._m.kind != "gauge":
            raise TypeError("only a gauge goes down")
        self.value -= amount

    def set(self, value: float) -> None:
        if self._m.kind != "gauge":
            raise TypeError("only a gauge is set")
        self.value = float(value)

    def observe(self, value: float) -> None:
        if self._m.kind != "histogram":
            raise TypeError("only a histogram is observed")
        self.value += 1
        self.sum += value
        for i, bound in enumerate(self._m.buckets):
            if value <= bound:
                self.buckets[i] += 1


class _Metric:
    """One plugin metric; unlabelled metrics are their own single series."""

    MAX_SERIES = 1000  # label combinations per metric: a plugin cannot grow /metrics without bound

    def __init__(self, kind: str, name: str, help: str, labels: Sequence[str], buckets: Sequence[float] = ()):
        self.kind, self.name, self.help, self.label_names = kind, name, help, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], _Series] = {}
        if not self.label_names:
            self.series[()] = _Series(self)

    def labels(self, *values: Any) -> _Series:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} has labels {self.label_names}")
        key = tuple(str(v) for v in values)
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= self.MAX_SERIES:
                raise ValueError(f"{self.name}: more than {self.MAX_SERIES} label combinations")
            s = self.series[key] = _Series(self)
        return s

    def __getattr__(self, attr: str) -> Any:  # inc/dec/set/observe of an unlabelled metric
        if attr in ("inc", "dec", "set", "observe"):
            if self.label_names:
                raise TypeError(f"{self.name} has labels: use .labels(...).{attr}()")
            return getattr(self.series[()], attr)
        raise AttributeError(attr)

    def family(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString
        labels = list(self.label_names)
        if self.kind == "counter":
            fam = CounterMetricFamily(self.name, self.help, labels=labels)
        elif self.kind == "gauge":
            fam = GaugeMetricFamily(self.name, self.help, labels=labels)
        else:
            fam = HistogramMetricFamily(self.name, self.help, labels=labels)
        for key, s in sorted(self.series.items()):
            if self.kind == "histogram":
                buckets = [(floatToGoString(b), n) for b, n in zip(self.buckets, s.buckets)]
                buckets.append(("+Inf", int(s.value)))
                fam.add_metric(list(key), buckets, sum_value=s.sum)
            else:
                fam.add_metric(list(key), s.value)
        return fam


class PluginMetrics:
    """Every plugin's metrics (they outlive plugin restarts); collected by metrics.DaemonCollector."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    def for_plugin(self, plugin: str) -> "_MetricsView":
        return _MetricsView(self, plugin)

    def collect(self) -> list[Any]:
        return [m.family() for _, m in sorted(self.metrics.items())]


class _MetricsView:
    """ctx.metrics."""

    def __init__(self, registry: PluginMetrics, plugin: str):
        self._r, self._prefix = registry, f"galaxynode_plugin_{plugin.replace('-', '_')}_"

    def _get(self, kind: str, name: str, help: str, labels: Sequence[str], buckets: Sequence[float] = ()) -> _Metric:
        api.check_name(name, "metric name")
        if "-" in name or any(not api._NAME.fullmatch(lb) or "-" in lb for lb in labels):
            raise ValueError("metric and label names are [a-z][a-z0-9_]*")
        full = self._prefix + name
        have = self._r.metrics.get(full)
        if have is not None:
            if have.kind != kind or have.label_names != tuple(labels):
                raise ValueError(f"{full} is already a {have.kind} with labels {have.label_names}")
            return have
        metric = self._r.metrics[full] = _Metric(kind, full, help, labels, buckets)
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> _Metric:
        return self._get("counter", name, help, labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> _Metric:
        return self._get("gauge", name, help, labels)

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)) -> _Metric:
        if not buckets or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in buckets):
            raise ValueError("histogram buckets are finite numbers")
        return self._get("histogram", name, help, labels, buckets)


# --- messages ---------------------------------------------------------------------------------------------

def _wire_spec(f: api.Field, path: str) -> m.Spec:
    """A plugin Field as the codec's Spec; every field must be bounded."""
    kinds = ("str", "bin", "uint", "bool", "list", "strmap", "anymap", "any")
    if not isinstance(f, api.Field) or f.kind not in kinds:
        raise ValueError(f"{path}: a galaxynode.plugin.Field of kind {'|'.join(kinds)}")
    if f.kind in ("str", "bin", "list") and f.max_len is None:
        raise ValueError(f"{path}: {f.kind} needs max_len")
    item = None
    if f.kind == "list":
        if f.item is None:
            raise ValueError(f"{path}: list needs item")
        item = _wire_spec(f.item, f"{path}[]")
    max_len = f.max_len if f.kind != "strmap" else (f.max_len or m.MAX_META_ENTRIES)
    return m.Spec(f.kind, min_len=f.min_len, max_len=max_len, max=f.max, choices=f.choices, item=item)


def body_class(type_name: str, schema: Mapping[str, api.Field]) -> type:
    """A message class for `schema`, validated by the codec's own Body.from_body."""
    fields = {}
    for fname, f in schema.items():
        if not isinstance(fname, str) or not api._NAME.fullmatch(fname) or fname == "re":
            raise ValueError(f"{type_name}: field name {fname!r} must match {api.NAME_PATTERN} and not be 're'")
        spec = _wire_spec(f, f"{type_name}.{fname}")
        meta = {"gelato": spec}
        if f.default is api._REQUIRED:
            fields[fname] = attrs.field(metadata=meta)
        elif isinstance(f.default, (list, dict)):
            fields[fname] = attrs.field(metadata=meta, factory=lambda d=f.default: type(d)(d))
        else:
            fields[fname] = attrs.field(metadata=meta, default=f.default)
    cls = attrs.make_class(type_name.replace(".", "_").replace("-", "_"), fields, bases=(m.Body,),
                           frozen=True, kw_only=True)
    cls.TYPE = type_name
    return cls


@attrs.frozen
class _Route:
    handler: Callable[[api.Request], Awaitable[Mapping[str, Any]]]
    cls: type


class _MessagesView:
    """ctx.messages: registrations of one plugin instance (dropped when it ends)."""

    def __init__(self, supervisor: "PluginSupervisor", plugin: str, instance_routes: dict[str, _Route]):
        self._sup, self._plugin, self._routes = supervisor, plugin, instance_routes

    def register(self, name: str, handler: Callable[[api.Request], Awaitable[Mapping[str, Any]]], *,
                 body: Mapping[str, api.Field] | None = None) -> str:
        api.check_name(name, "message name")
        if not inspect.iscoroutinefunction(handler) and not inspect.iscoroutinefunction(
                getattr(handler, "__call__", None)):
            raise TypeError("a message handler is an async function taking a galaxynode.plugin.Request")
        type_name = f"x.{self._plugin}.{name}"
        if name in self._routes:
            raise ValueError(f"{type_name} is registered already")
        self._routes[name] = _Route(handler, body_class(type_name, body or {}))
        return type_name


# --- supervision -------------------------------------------------------------------------------------------

ADMISSION_DEFAULTS = ("closed", "open")


class PluginSupervisor:
    """Runs every plugin in its own supervised task and serves their hooks. `make_context(name)` builds
    the base context (config, bus, registry, store, identity, data_dir) for each (re)start; the
    supervisor adds the validated config, messages and metrics. `sleep` is injectable for tests.

    Backoff before the n-th consecutive restart: min(backoff_max, backoff_base * 2**(n-1)), reduced by up
    to `jitter` (a fraction) so plugins that crash together do not restart in lockstep. A crash after at
    least `stable_after` seconds of running starts a new count.
    """

    def __init__(self, specs: Iterable[str], make_context: Callable[[str], PluginContext], *,
                 max_restarts: int = 5, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 jitter: float = 0.1, stable_after: float = 60.0, bus: Any = None,
                 admission_timeout: float = 2.0, admission_default: str = "closed",
                 search: Sequence[Path] = (), sleep: Callable[[float], Awaitable[None]] = trio.sleep):
        if max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if not 0 <= backoff_base <= backoff_max:
            raise ValueError("need 0 <= backoff_base <= backoff_max")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if stable_after <= 0:
            raise ValueError("stable_after must be > 0")
        if admission_timeout <= 0 or admission_default not in ADMISSION_DEFAULTS:
            raise ValueError("admission_timeout must be > 0 and admission_default one of closed, open")
        self.max_restarts = max_restarts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.stable_after = stable_after
        self.bus = bus
        self.admission_timeout = admission_timeout
        self.admission_default = admission_default
        self._make_context = make_context
        self._sleep = sleep
        self._plugins: dict[str, Loaded] = {ld.name: ld for ld in load_all(specs, search)}
        self.stats: dict[str, PluginStats] = {name: PluginStats() for name in self._plugins}
        self.metrics = PluginMetrics()
        self._live: dict[str, Any] = {}                    # name -> running instance (admission)
        self._routes: dict[str, dict[str, _Route]] = {}    # name -> message name -> route
        self.admitters = [name for name, ld in self._plugins.items() if ld.admits]  # enabled order
        self._quiet_until: dict[str, float] = {}

    @property
    def failed(self) -> set[str]:
        """Plugins given up (crashed past max_restarts, or a permanent PluginError): readiness reports them."""
        return {name for name, st in self.stats.items() if st.state == "failed"}

    def backoff(self, failures: int) -> float:
        """Delay before restarting after `failures` consecutive crashes (>= 1)."""
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** min(failures - 1, 64))
        return delay * (1.0 - self.jitter * random.random())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise all plugins; started once every plugin's first instance exists (its messages and
        admission hook are served from then on); returns once every plugin has finished or failed."""
        async with trio.open_nursery() as nursery:
            for name, loaded in self._plugins.items():
                await nursery.start(self._supervise, name, loaded, name=f"plugin:{name}")
            task_status.started()

    # --- one plugin ---------------------------------------------------------------------------------

    def _instantiate(self, name: str, loaded: Loaded) -> tuple[Any, PluginContext, dict[str, _Route]]:
        base = self._make_context(name)
        try:
            config = plugin_config(loaded, base.config)
        except Exception as e:  # ConfigError: a permanent problem
            raise PluginError(str(e)) from None
        routes: dict[str, _Route] = {}
        ctx = attrs.evolve(base, config=config, messages=_MessagesView(self, name, routes),
                           metrics=self.metrics.for_plugin(name), periodic=[])
        instance = None
        if inspect.isclass(loaded.obj):
            if loaded.obj.__init__ is object.__init__:  # no constructor: the context becomes self.ctx
                instance = loaded.obj()
                instance.ctx = ctx
            else:
                instance = loaded.obj(ctx)
        return instance, ctx, routes

    async def _supervise(self, name: str, loaded: Loaded, task_status: trio.TaskStatus[None]) -> None:
        st = self.stats[name]
        started = False
        try:
            while True:
                st.state = "running"
                began = trio.current_time()
                try:
                    try:
                        instance, ctx, routes = self._instantiate(name, loaded)
                        self._live[name], self._routes[name] = instance, routes
                    finally:
                        if not started:
                            started = True
                            task_status.started()
                    await self._run_instance(loaded, instance, ctx)
                except PluginError as e:
                    self._give_up(name, e, permanent=True)
                    return
                except Exception as e:  # trio.Cancelled is a BaseException and passes through
                    delay = self._crashed(name, e, trio.current_time() - began)
                else:
                    st.state = "finished"
                    log.info("plugin %s finished", name)
                    return
                finally:
                    self._live.pop(name, None)
                    self._routes.pop(name, None)
                if delay is None:
                    return
                await self._sleep(delay)
                st.restarts += 1
                log.info("restarting plugin %s (restart %d)", name, st.restarts)
        finally:
            if st.state in ("running", "backoff"):
                st.state = "stopped"

    async def _run_instance(self, loaded: Loaded, instance: Any, ctx: PluginContext) -> None:
        """`run` (or, without one, until cancelled) with the periodic tasks beside it; the first
        exception of any of them is the instance's crash."""
        try:
            async with trio.open_nursery() as nursery:
                for seconds, fn in ctx._periodic:
                    nursery.start_soon(_every, seconds, fn)
                if instance is None:
                    await loaded.obj(ctx)
                elif getattr(instance, "run", None) is not None:
                    await instance.run()
                else:
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if isinstance(leaf, Exception):  # the usual crash: one error, however deeply grouped
                raise leaf from None
            rest = group.split(trio.Cancelled)[1]
            if rest is not None and rest.split(Exception)[1] is None:  # errors (besides cancellations): a crash
                raise next(iter(_leaves(rest))) from group
            raise

    def _crashed(self, name: str, exc: Exception, ran_for: float) -> float | None:
        """Count a crash; the backoff delay, or None once the plugin is given up."""
        st = self.stats[name]
        st.crashes += 1
        if ran_for >= self.stable_after:
            st.failures = 0
        st.failures += 1
        st.last_error = _one_line(exc)
        if st.failures > self.max_restarts:
            self._give_up(name, exc, permanent=False)
            return None
        delay = self.backoff(st.failures)
        st.state = "backoff"
        log.error("plugin %s crashed (%d in a row, restarting at most %d times); restarting in %.2fs",
                  name, st.failures, self.max_restarts, delay, exc_info=exc)
        self._publish("plugin.crashed", {"name": name, "error": st.last_error, "crashes": st.crashes,
                                         "failures": st.failures, "retry_in": delay})
        return delay

    def _give_up(self, name: str, exc: Exception, *, permanent: bool) -> None:
        st = self.stats[name]
        st.state = "failed"
        if permanent:
            st.last_error = str(exc)
            log.error("plugin %s failed: %s", name, exc)
        else:
            log.error("plugin %s crashed %d times in a row; giving up", name, st.failures, exc_info=exc)
        self._publish("plugin.failed", {"name": name, "error": st.last_error, "crashes": st.crashes})

    def _publish(self, topic: str, data: dict) -> None:
        if self.bus is not None:
            self.bus.publish(topic, data)

    def _warn(self, name: str, text: str, *args: Any) -> None:
        """At most one warning per plugin per 10 s: a broken hook under load must not flood the log."""
        now = time.monotonic()
        if now >= self._quiet_until.get(name, 0.0):
            self._quiet_until[name] = now + 10.0
            log.warning(text, *args)

    # --- admission ----------------------------------------------------------------------------------

    async def admit(self, request: api.AdmissionRequest) -> dict[str, str]:
        """Ask every admission hook in enabled order. The metadata to attach (`x.<plugin>.<name>`
        keys), or ProtocolError: the first refusal, or unavailable when a hook that failed (raised,
        timed out, not running) meets admission_default = "closed".

        One cancel scope serves all hooks (its deadline moved per hook): entering a scope per hook was
        most of what a trivial hook cost (scripts/bench_plugins.py)."""
        meta: dict[str, str] = {}
        names, i = self.admitters, 0
        while i < len(names):
            with trio.CancelScope() as scope:
                while i < len(names):
                    name = names[i]
                    i += 1
                    scope.deadline = trio.current_time() + self.admission_timeout
                    self._verdict(name, request, await self._ask(name, request), meta)
            if scope.cancelled_caught:
                self._verdict(name, request, f"took longer than {self.admission_timeout:g}s", meta)
        return meta

    async def _ask(self, name: str, request: api.AdmissionRequest) -> Any:
        """The hook's verdict, or why there is none (a str)."""
        instance = self._live.get(name)
        if instance is None:
            return "is not running"
        try:
            verdict = await instance.admit(request)
        except Exception as e:
            return f"raised {_one_line(e)}"
        if not isinstance(verdict, (api.Admit, api.Refuse)):
            return f"returned {type(verdict).__name__}, not Admit or Refuse"
        return verdict

    def _verdict(self, name: str, request: api.AdmissionRequest, verdict: Any, meta: dict[str, str]) -> None:
        st = self.stats[name]
        if isinstance(verdict, api.Admit):
            st.admitted += 1
            if verdict.meta and not request.is_peer:
                meta.update(self._admit_meta(name, verdict))
            return
        if isinstance(verdict, api.Refuse):
            st.refused += 1
            raise ProtocolError(api.REFUSAL_CODES[verdict.code], m.fit_utf8(verdict.reason, api.MAX_REASON)
                                or verdict.code)
        st.admission_failed += 1
        closed = self.admission_default == "closed"
        self._warn(name, "admission hook of plugin %s %s: %s", name, verdict,
                   "refusing (admission_default = closed)" if closed else "admitting (admission_default = open)")
        if closed:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "admission cannot be decided right now; retry later")

    def _admit_meta(self, name: str, verdict: api.Admit) -> dict[str, str]:
        items = dict(verdict.meta)
        ok = len(items) <= api.MAX_ADMIT_META and all(
            isinstance(k, str) and api._NAME.fullmatch(k) and isinstance(v, str)
            and m.utf8_len(v) <= api.MAX_ADMIT_META_VALUE and m.utf8_len(f"x.{name}.{k}") <= m.MAX_NAME
            for k, v in items.items())
        if not ok:
            self._warn(name, "plugin %s attached metadata out of bounds (at most %d entries, names %s, values "
                       "<= %d bytes); dropped", name, api.MAX_ADMIT_META, api.NAME_PATTERN, api.MAX_ADMIT_META_VALUE)
            return {}
        return {f"x.{name}.{k}": v for k, v in items.items()}

    # --- messages -----------------------------------------------------------------------------------

    def serves(self, type_name: str) -> bool:
        _, plugin, _name = type_name.split(".", 2)
        return plugin in self._plugins

    async def dispatch(self, conn: Any, frame: Any, *, is_peer: bool = False) -> m.Extension:
        """Answer an `x.<plugin>.<name>` request: body checked against the plugin's schema first."""
        _, plugin, name = frame.type.split(".", 2)
        if plugin not in self._plugins:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {frame.type!r}", frame.id)
        route = self._routes.get(plugin, {}).get(name)
        if route is None:
            if plugin in self._live:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {frame.type!r}", frame.id)
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"plugin {plugin} is not running", frame.id)
        st = self.stats[plugin]
        st.messages += 1
        body = {k: v for k, v in frame.msg.body.items() if k != "re"}
        try:
            msg = route.cls.from_body(body)
        except ProtocolError as e:
            st.message_errors += 1
            e.ref = frame.id
            raise
        request = api.Request(type=frame.type, key=conn.peer_key, body=attrs.asdict(msg, recurse=False),
                              remote=getattr(conn, "remote", None), is_peer=is_peer)
        try:
            reply = await route.handler(request)
        except api.MessageError as e:
            st.message_errors += 1
            raise ProtocolError(api.MessageError.CODES[e.code], m.fit_utf8(e.message, 256), frame.id) from None
        except ProtocolError:
            st.message_errors += 1
            raise
        except Exception:
            st.message_errors += 1
            log.exception("plugin %s: handler of %s failed", plugin, frame.type)
            raise ProtocolError(ErrorCode.INTERNAL, f"plugin {plugin} failed to answer", frame.id) from None
        if not isinstance(reply, Mapping) or not all(isinstance(k, str) for k in reply) or "re" in reply:
            st.message_errors += 1
            log.error("plugin %s: handler of %s returned %s, not a map of str keys without 're'", plugin,
                      frame.type, type(reply).__name__)
            raise ProtocolError(ErrorCode.INTERNAL, f"plugin {plugin} failed to answer", frame.id)
        return m.Extension(frame.type, dict(reply), frame.id)


def _leaves(group: BaseExceptionGroup) -> Iterable[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


async def _every(seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
    """A periodic task: one call per period, the next period counted from the previous start (a slow
    call delays, never stacks, the next one)."""
    deadline = trio.current_time() + seconds
    while True:
        await trio.sleep_until(deadline)
        await fn()
        deadline = max(deadline + seconds, trio.current_time())


def make_api_context(name: str, *, config: Mapping[str, Any], bus: Any, registry: Any, identity: Any,
                     network: str, data_dir: Path | None) -> PluginContext:
    """The daemon's base context for plugin `name` (the supervisor adds messages, metrics, options)."""
    return PluginContext(name=name, config=config, bus=bus,
                         registry=_RegistryView(registry) if registry is not None else None,
                         store=_Store(registry, name) if registry is not None else None,
                         identity=_Identity(identity, network, name) if identity is not None else None,
                         data_dir=data_dir, log=logging.getLogger(f"galaxynode.plugin.{name}"))
