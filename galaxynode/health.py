"""Readiness: named checks that the daemon's components set, read by /readyz and sd_notify STATUS.

Liveness (/healthz) is the process answering at all; readiness says whether this pool does its job:
listening, registry loaded and storing changes, announced to the main net when one is configured,
every enabled plugin running. Each of those is one named check (`readiness.set("registry", False,
"cannot store changes")`); the pool is ready when every check it expects is ok. A component that
joins later (a storage backend, a dashboard) adds its own name; nothing here knows the components.

A check that was expected but never set reads "not checked yet", so a pool is not ready before its
components have spoken. Listeners (`on_change`) hear every change of the summary (the daemon sends
it to systemd as STATUS).
"""
from __future__ import annotations

from typing import Any, Callable

import attrs


@attrs.frozen
class Check:
    ok: bool
    reason: str = ""


NOT_CHECKED = Check(False, "not checked yet")


class Readiness:
    def __init__(self, *expected: str):
        self._checks: dict[str, Check] = {name: NOT_CHECKED for name in expected}
        self._listeners: list[Callable[[Readiness], None]] = []

    def expect(self, name: str) -> None:
        """`name` will be set: until it is, the pool is not ready."""
        if name not in self._checks:
            self._checks[name] = NOT_CHECKED
            self._changed()

    def set(self, name: str, ok: bool, reason: str = "") -> None:
        """Record one check's outcome; `reason` says what is wrong (or, when ok, what is fine)."""
        check = Check(bool(ok), reason)
        if self._checks.get(name) != check:
            self._checks[name] = check
            self._changed()

    def discard(self, name: str) -> None:
        """`name` no longer applies (e.g. a plugin that is no longer configured)."""
        if self._checks.pop(name, None) is not None:
            self._changed()

    def on_change(self, listener: Callable[[Readiness], None]) -> None:
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        return bool(self._checks) and all(c.ok for c in self._checks.values())

    def failing(self) -> dict[str, str]:
        return {name: c.reason for name, c in self._checks.items() if not c.ok}

    def summary(self) -> str:
        """One line: "ready" or "not ready: registry (cannot store changes); plugin.audit (failed ...)"."""
        if self.ready:
            return "ready"
        if not self._checks:
            return "not ready: starting"
        return "not ready: " + "; ".join(f"{name} ({reason})" if reason else name
                                         for name, reason in self.failing().items())

    def as_json(self) -> dict[str, Any]:
        """The /readyz body: {"ready": bool, "checks": {name: {"ok": bool, "reason": str}}}."""
        return {"ready": self.ready,
                "checks": {name: {"ok": c.ok, "reason": c.reason} for name, c in sorted(self._checks.items())}}

    def _changed(self) -> None:
        for listener in self._listeners:
            listener(self)
