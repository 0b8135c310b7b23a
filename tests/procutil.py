"""Run galaxynode commands as real processes and wait on their log output (for e2e tests)."""
from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time


class Proc:
    def __init__(self, *args: str, cwd=None, env=None, preexec_fn=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen([sys.executable, "-m", "galaxynode", *args], cwd=cwd, env=full_env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  preexec_fn=preexec_fn)
        self.output = ""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.p.stdout, selectors.EVENT_READ)

    def _pump(self, timeout: float) -> bool:
        if not self._sel.select(timeout):
            return False
        chunk = os.read(self.p.stdout.fileno(), 65536)
        if not chunk:
            return False
        self.output += chunk.decode(errors="replace")
        return True

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        start = 0
        while True:
            m = re.compile(pattern).search(self.output, start)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (self.p.poll() is not None and not self._pump(0)):
                raise AssertionError(f"timed out waiting for {pattern!r}; output:\n{self.output}")
            self._pump(min(left, 0.2))

    def send_signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit on its own; its output is collected."""
        return self.stop(None, timeout)

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 20.0) -> int:
        if sig is not None and self.p.poll() is None:
            self.p.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.p.poll() is None and time.monotonic() < deadline:
            self._pump(0.1)
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        while self._pump(0):
            pass
        return self.p.returncode

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self._sel.close()
        self.p.stdout.close()

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
