"""Plugins: found by entry-point name or dotted path, each run as a supervised task.

A plugin is a class `Plugin(ctx)` with `async def run(self) -> None`, or a plain `async def plugin(ctx)`.
A crash is logged with its traceback, counted and answered with a restart after exponential backoff; after
`max_restarts` consecutive crashes the plugin is marked failed. Nothing a plugin raises (short of
KeyboardInterrupt/SystemExit) reaches the daemon. A plugin that returns is finished and stays finished.
A plugin that raises PluginError reports a permanent problem (bad config): it is failed at once, since
restarting cannot fix it.

Bad specs are found up front: the supervisor's constructor resolves every spec and raises one PluginError
naming all of them, so the daemon refuses to start with a one-line message instead of running half a set.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import trio

GROUP = "galaxynode.plugins"

log = logging.getLogger("galaxynode.plugins")


class PluginError(Exception):
    """A plugin cannot be resolved, or a plugin reports a permanent problem. The message is one line."""


@attrs.frozen
class PluginContext:
    """What a plugin gets. `config` is its `[plugins.<name>]` section; bus, registry and container are the
    daemon's services (duck-typed so tests and other hosts can pass their own)."""

    name: str
    config: Mapping[str, Any] = attrs.field(factory=dict)
    bus: Any = None
    registry: Any = None
    container: Any = None
    log: logging.Logger = attrs.field(
        default=attrs.Factory(lambda self: logging.getLogger(f"galaxynode.plugin.{self.name}"), takes_self=True))


@attrs.define
class PluginStats:
    """Per-plugin counters. state: pending | running | backoff | finished | failed | stopped (cancelled).
    `failures` is the current run of consecutive crashes; `crashes` and `restarts` are totals."""

    state: str = "pending"
    crashes: int = 0
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def available_plugins() -> list[str]:
    """Names registered in the `galaxynode.plugins` entry-point group by installed distributions."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=GROUP)})


def _unknown(spec: str) -> PluginError:
    names = ", ".join(available_plugins()) or "none"
    return PluginError(f"unknown plugin {spec!r} (installed: {names}; or give a dotted path pkg.module:attr)")


def _import_path(spec: str) -> Any:
    if ":" in spec:
        module_name, _, attr_path = spec.partition(":")
    else:
        module_name, _, attr_path = spec.rpartition(".")
    if not module_name or not attr_path:
        raise _unknown(spec)
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # The named module (or a parent) is missing, rather than something it imports.
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise _unknown(spec) from None
        raise PluginError(f"plugin {spec!r}: cannot import {module_name}: {_one_line(e)}") from None
    except Exception as e:
        raise PluginError(f"plugin {spec!r}: cannot import {module_name}: {_one_line(e)}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"plugin {spec!r}: {module_name} has no attribute {attr_path!r}") from None
    return obj


def resolve_plugin(spec: str) -> Any:
    """The plugin class or async function named by `spec`: an entry-point name in `galaxynode.plugins`
    (tried first), else a dotted path `pkg.mod:attr` or `pkg.mod.attr`."""
    spec = spec.strip()
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}
    if spec in eps:
        try:
            obj = eps[spec].load()
        except Exception as e:
            raise PluginError(f"plugin {spec!r}: cannot load entry point {eps[spec].value}: {_one_line(e)}") from None
    elif "." in spec or ":" in spec:
        obj = _import_path(spec)
    else:
        raise _unknown(spec)
    if inspect.isclass(obj):
        if not inspect.iscoroutinefunction(getattr(obj, "run", None)):
            raise PluginError(f"plugin {spec!r}: class {obj.__qualname__} has no `async def run(self)`")
    elif not inspect.iscoroutinefunction(obj):
        raise PluginError(f"plugin {spec!r}: not a plugin (want a class with async run() or an async function)")
    return obj


async def _invoke(plugin: Any, ctx: PluginContext) -> None:
    if inspect.isclass(plugin):
        await plugin(ctx).run()
    else:
        await plugin(ctx)


class PluginSupervisor:
    """Runs every plugin in its own supervised task. `make_context(name)` builds a fresh context for each
    (re)start, so a crashed instance leaves nothing behind. `sleep` is injectable for tests.

    Backoff before the n-th consecutive restart: min(backoff_max, backoff_base * 2**(n-1)), reduced by up
    to `jitter` (a fraction) so plugins that crash together do not restart in lockstep. A crash after at
    least `stable_after` seconds of running starts a new count.
    """

    def __init__(self, specs: Iterable[str], make_context: Callable[[str], PluginContext], *,
                 max_restarts: int = 5, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 jitter: float = 0.1, stable_after: float = 60.0, bus: Any = None,
                 sleep: Callable[[float], Awaitable[None]] = trio.sleep):
        if max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if not 0 <= backoff_base <= backoff_max:
            raise ValueError("need 0 <= backoff_base <= backoff_max")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if stable_after <= 0:
            raise ValueError("stable_after must be > 0")
        self.max_restarts = max_restarts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.stable_after = stable_after
        self.bus = bus
        self._make_context = make_context
        self._sleep = sleep
        self._plugins: dict[str, Any] = {}
        errors = []
        for spec in specs:
            if spec in self._plugins:
                errors.append(f"plugin {spec!r} listed twice")
                continue
            try:
                self._plugins[spec] = resolve_plugin(spec)
            except PluginError as e:
                errors.append(str(e))
        if errors:
            raise PluginError("; ".join(errors))
        self.stats: dict[str, PluginStats] = {name: PluginStats() for name in self._plugins}

    def backoff(self, failures: int) -> float:
        """Delay before restarting after `failures` consecutive crashes (>= 1)."""
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** min(failures - 1, 64))
        return delay * (1.0 - self.jitter * random.random())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise all plugins; returns once every plugin has finished or failed."""
        async with trio.open_nursery() as nursery:
            for name, plugin in self._plugins.items():
                nursery.start_soon(self._supervise, name, plugin, name=f"plugin:{name}")
            task_status.started()

    async def _supervise(self, name: str, plugin: Any) -> None:
        st = self.stats[name]
        try:
            while True:
                st.state = "running"
                began = trio.current_time()
                try:
                    await _invoke(plugin, self._make_context(name))
                except PluginError as e:
                    self._give_up(name, e, permanent=True)
                    return
                except Exception as e:  # trio.Cancelled is a BaseException and passes through
                    delay = self._crashed(name, e, trio.current_time() - began)
                else:
                    st.state = "finished"
                    log.info("plugin %s finished", name)
                    return
                if delay is None:
                    return
                await self._sleep(delay)
                st.restarts += 1
                log.info("restarting plugin %s (restart %d)", name, st.restarts)
        finally:
            if st.state in ("running", "backoff"):
                st.state = "stopped"

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
