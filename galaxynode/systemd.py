"""sd_notify(3) over $NOTIFY_SOCKET, without libsystemd.

A no-op when the variable is unset, so the daemon runs the same under systemd and in a shell.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None):
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            if address.startswith("@"):  # abstract namespace
                address = "\0" + address[1:]
            self._target = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Notifier":
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @staticmethod
    def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
        """Half of WATCHDOG_USEC in seconds, if systemd asked for pings (and for this pid)."""
        env = os.environ if env is None else env
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: object) -> None:
        """notify(READY=1, STATUS="...") -> 'READY=1\\nSTATUS=...'. Failures are logged, never raised:
        the supervisor being gone must not take the daemon down."""
        if self._sock is None:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self._target)
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.address, e)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
