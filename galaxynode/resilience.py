"""Background tasks that input cannot stop: a failing step is logged once, counted, and the task goes on.

A pool's background tasks (descriptor rebuild, main net announcer, peer dialling and discovery, lease
expiry) work on what remote parties sent: capabilities, meta, descriptors. A defect there (a bug, or a
limit one layer forgot) used to raise out of the task, through the root nursery, and stop the daemon;
and since the input was persisted, start-up failed the same way until the lease ran out. So every such
task runs its steps under `TaskFailures.guard`: an exception (never trio.Cancelled or KeyboardInterrupt,
which are BaseExceptions) is swallowed there and the task carries on with its next tick or redial.

Logged once per kind, not per tick: a step that fails every 5 s would otherwise fill the journal with
the same traceback. A kind is (task, exception type, the code line that raised); the first of a kind
is logged with its traceback, the rest only counted (galaxynode_task_failures_total{task}, metrics.md).
"""
from __future__ import annotations

import contextlib
import logging
import traceback
from collections import Counter
from typing import Iterator

MAX_KINDS = 256  # distinct kinds remembered; past it every failure is logged (each kind is a code line)


class TaskFailures:
    """The exceptions caught in one component's background tasks: counted per task name, logged
    once per kind on `log`."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self.counts: Counter[str] = Counter()
        self._kinds: set[tuple[str, str, str, int]] = set()

    def record(self, task: str, exc: BaseException) -> None:
        self.counts[task] += 1
        frames = traceback.extract_tb(exc.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("", 0)
        kind = (task, type(exc).__name__, *where)
        if kind in self._kinds:
            self.log.debug("background task %s failed again (%d so far): %s", task, self.counts[task], exc)
            return
        if len(self._kinds) < MAX_KINDS:
            self._kinds.add(kind)
        self.log.error("background task %s failed and goes on; this kind of failure is logged once, "
                       "counted in galaxynode_task_failures_total", task, exc_info=exc)

    @contextlib.contextmanager
    def guard(self, task: str) -> Iterator[None]:
        """One step of a background task: what it raises is recorded and swallowed."""
        try:
            yield
        except Exception as e:  # trio.Cancelled is a BaseException and passes through
            self.record(task, e)
