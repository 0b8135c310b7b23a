"""The service container: named services that modules provide and others use."""
from __future__ import annotations

from typing import Any


class ContainerError(Exception):
    pass


class MissingService(ContainerError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class Container:
    def __init__(self) -> None:
        self._services: dict[str, Any] = {}

    def register(self, name: str, obj: Any) -> None:
        if name in self._services:
            raise ContainerError(f"service {name!r} is already registered")
        self._services[name] = obj

    def get(self, name: str) -> Any:
        try:
            return self._services[name]
        except KeyError:
            have = ", ".join(sorted(self._services)) or "none"
            raise MissingService(f"no service {name!r} (registered: {have})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def names(self) -> list[str]:
        return sorted(self._services)
