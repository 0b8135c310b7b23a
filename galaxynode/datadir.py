"""The data directory: private to the pool's user, and used by one process at a time.

It holds the pool's private key, who is registered and banned, and the descriptors of other pools:
the directory is 0700 (an older, looser one is tightened, and the log says so) and every file we
create in it 0600. Two daemons on one directory would each believe its own memory is the registry
and overwrite the other's commits; an exclusive flock on ``galaxynode.lock``, held for the process
lifetime, makes the second one stop at start-up and name the first one's pid. flock (not a pid file
alone) is released by the kernel when the holder dies, so a crash leaves no stale lock behind.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from galaxynode.modules import StartupError

log = logging.getLogger(__name__)

LOCK_NAME = "galaxynode.lock"


class DataDirInUse(StartupError):
    """Another process holds the data directory's lock."""


def private_files(*paths: str | os.PathLike) -> None:
    """Create the first path as an empty 0600 file if it is missing; take group and other access
    away from every path that exists (files from older versions were 0644)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(paths[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            _tighten(p, os.stat(p), 0o600)


def private_dir(path: str | os.PathLike) -> Path:
    """Create the directory 0700, or tighten an existing one that group or others can enter.
    A shared sticky directory (/tmp as --data-dir) or one owned by another user is only warned
    about: changing those would break other users."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and (st.st_mode & stat.S_ISVTX or st.st_uid != os.geteuid()):
        log.warning("data dir %s has mode %o and is shared; use a directory of its own (mode 0700)",
                    path, stat.S_IMODE(st.st_mode))
    else:
        _tighten(path, st, 0o700)
    return path


def _tighten(path: str | os.PathLike, st: os.stat_result, mode: int) -> None:
    old = stat.S_IMODE(st.st_mode)
    if not old & 0o077:
        return
    try:
        os.chmod(path, mode)
    except PermissionError:  # not ours: the data is still usable, say so
        log.warning("%s has mode %o and is not ours to change; it should be %o", path, old, mode)
        return
    log.warning("%s had mode %o; set it to %o (group and others had access)", path, old, mode)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created meanwhile (by us, SQLite, plugins) are the owner's only; restored on exit,
    since tests run daemons in-process."""
    before = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(before)


@contextlib.contextmanager
def locked(data_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the data directory's lock until exit; raises DataDirInUse naming the holder's pid."""
    path = Path(data_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _tighten(path, os.fstat(fd), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirInUse(f"data dir {data_dir} is in use by another galaxynode (pid {holder}); "
                               "stop it or use another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race a starting daemon)
