"""Shared harness of the attack tests (tests/test_abuse_*.py): a live pool in its own process, and
an honest client whose connect+JOIN latency and the pool's RSS are what the tests assert on.

Every attack test follows one shape: measure the honest client on the quiet pool, run the attack
(bounded in time and count, loopback only), measure the honest client again while it runs, then
assert that the pool is still up, the honest latency stayed within a stated factor of the quiet
one (plus a slack for a 2-core machine shared with the attacker), and RSS grew within a stated
bound. The factors live in each test's docstring and in docs/security.md.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Iterator

import trio

from galaxynode.gelato.errors import ErrorCode
from galaxynode.identity import Identity
from galaxynode.net import RemoteError, SessionClosed
from galaxynode.nodeclient import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_heartbeats import PoolProcess, open_fds, percentile, raise_fd_limit, rss_kib  # noqa: E402,F401

NETWORK = "abuse"


@contextlib.contextmanager
def live_pool(data_dir: str | Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
              name: str = "abuse") -> Iterator[PoolProcess]:
    """`galaxynode run` on 127.0.0.1:<free port> with default settings plus `env` overrides
    (GALAXYNODE_<SECTION>_<KEY>); stopped (SIGTERM, then SIGKILL) on exit."""
    pool = PoolProcess(data_dir, env=env, args=args, name=name, network=NETWORK)
    try:
        yield pool
    finally:
        pool.close()


def rss_mib(pool: PoolProcess) -> float:
    return rss_kib(pool.proc.pid) / 1024


def alive(pool: PoolProcess) -> bool:
    return pool.proc.poll() is None


async def honest_join(url: str, *, timeout: float = 30.0) -> float:
    """One honest node: fresh key, connect, JOIN, LEAVE; returns the connect+JOIN seconds."""
    started = time.perf_counter()
    with trio.fail_after(timeout):
        async with connect(url, Identity.generate(), network=NETWORK) as pool:
            await pool.join(capabilities=["honest"])
            took = time.perf_counter() - started
            await pool.leave()
    return took


async def honest_latency(url: str, n: int = 5, *, pause: float = 0.05, timeout: float = 30.0) -> float:
    """Median connect+JOIN seconds over n sequential honest nodes (raises if any fails)."""
    times = []
    for _ in range(n):
        times.append(await honest_join(url, timeout=timeout))
        await trio.sleep(pause)
    return percentile(times, 50)


def assert_within(quiet: float, loaded: float, *, factor: float, slack: float) -> None:
    """loaded <= factor * quiet + slack (seconds); the message shows both numbers."""
    bound = factor * quiet + slack
    assert loaded <= bound, (f"honest connect+JOIN {loaded * 1000:.1f} ms under attack > bound {bound * 1000:.1f} ms "
                             f"({factor:g} x quiet {quiet * 1000:.1f} ms + {slack * 1000:.0f} ms)")
    assert math.isfinite(loaded)


def refusal(exc: BaseException) -> ErrorCode | None:
    """The pool's ERROR code behind a refused handshake or an ended session."""
    if isinstance(exc, SessionClosed):
        exc = exc.error
    return exc.code if isinstance(exc, RemoteError) else None
