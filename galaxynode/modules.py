"""The module framework: modules declare what they require, start in dependency order inside
their own nurseries, and stop in reverse order.

Each module's tasks live in a nursery nested inside the previous module's, so leaving the
kernel unwinds them innermost first: a module never outlives what it depends on.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator, ClassVar, Iterable

import attrs
import trio

from galaxynode.container import Container

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The kernel could not start: bad module graph, or a module failed to start."""


@attrs.frozen
class ModuleContext:
    container: Container
    nursery: trio.Nursery
    log: logging.Logger
    config: Any


class Module:
    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    async def start(self, ctx: ModuleContext) -> None:
        """Register services; start long-running tasks in ctx.nursery (owned by this module)."""

    async def stop(self) -> None:
        """Called before this module's nursery is cancelled."""


def resolve_order(modules: Iterable[Module]) -> list[Module]:
    """Topological order (stable: declaration order among independent modules)."""
    by_name: dict[str, Module] = {}
    for m in modules:
        if not m.name:
            raise StartupError(f"{type(m).__name__} has no name")
        if m.name in by_name:
            raise StartupError(f"two modules are named {m.name!r}")
        by_name[m.name] = m
    for m in by_name.values():
        for dep in m.requires:
            if dep not in by_name:
                raise StartupError(f"module {m.name!r} requires {dep!r}, which is not loaded")
    order: list[Module] = []
    state: dict[str, str] = {}  # visiting | done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise StartupError("module dependency cycle: " + " -> ".join(cycle))
        state[name] = "visiting"
        for dep in by_name[name].requires:
            visit(dep, path + [name])
        state[name] = "done"
        order.append(by_name[name])

    for name in by_name:
        visit(name, [])
    return order


def single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


class Kernel:
    def __init__(self, modules: Iterable[Module], *, container: Container | None = None, config: Any = None,
                 stop_timeout: float = 10.0):
        self.modules = list(modules)
        self.container = container if container is not None else Container()
        self.config = config
        self.stop_timeout = stop_timeout
        self.started: list[str] = []

    def resolve_order(self) -> list[Module]:
        return resolve_order(self.modules)

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Container]:
        """Start every module; on exit (or failure) stop them in reverse order within stop_timeout."""
        order = self.resolve_order()
        try:
            async with contextlib.AsyncExitStack() as stack:
                for module in order:
                    nursery = await stack.enter_async_context(trio.open_nursery())
                    stack.push_async_callback(self._stop, module, nursery)
                    ctx = ModuleContext(self.container, nursery, logging.getLogger(f"galaxynode.{module.name}"),
                                        self.config)
                    try:
                        await module.start(ctx)
                    except Exception as e:
                        cause = (single_leaf(e) or e) if isinstance(e, BaseExceptionGroup) else e
                        raise StartupError(f"module {module.name!r} failed to start: {cause}") from e
                    self.started.append(module.name)
                    log.debug("started module %s", module.name)
                yield self.container
        except BaseExceptionGroup as group:
            # The nested nurseries wrap one failure in several groups; give callers the failure.
            leaf = single_leaf(group)
            if isinstance(leaf, Exception):
                raise leaf from None
            raise

    async def _stop(self, module: Module, nursery: trio.Nursery) -> None:
        """Stop one module (bounded, shielded from an outer cancel), then cancel its tasks."""
        if module.name in self.started:
            with trio.move_on_after(self.stop_timeout) as scope:
                scope.shield = True
                try:
                    await module.stop()
                except Exception:
                    log.exception("module %s failed to stop cleanly", module.name)
            if scope.cancelled_caught:
                log.warning("module %s did not stop within %.1fs; cancelling it", module.name, self.stop_timeout)
            self.started.remove(module.name)
        nursery.cancel_scope.cancel()
