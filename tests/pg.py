"""PostgreSQL for tests: the server at $GALAXYNODE_TEST_PG (a DSN), else a throwaway server started for
the session when initdb/pg_ctl are on the machine, else the tests that need one are skipped with one
line saying how to enable them. Each test gets its own schema (``pg_dsn``), so tests never collide.

Import the fixtures in a test module with ``from tests.pg import pg_server, pg_dsn  # noqa: F401``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path

import pytest

ENV = "GALAXYNODE_TEST_PG"
SKIP = (f"no PostgreSQL: set {ENV}=postgresql://user@127.0.0.1:5432/db, or install PostgreSQL's "
        "server binaries (initdb, pg_ctl) for a throwaway server")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayServer:
    """A PostgreSQL cluster in a temporary directory on 127.0.0.1 (trust auth), which a test may stop and
    start again (a server restart). As root, the server runs as the ``postgres`` user (it refuses root)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError("initdb/pg_ctl not found")
        self.dir = Path(tempfile.mkdtemp(prefix="galaxynode-pg-"))
        self.data, self.port = self.dir / "data", _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def can_throwaway() -> bool:
    return bool(_binary("initdb") and _binary("pg_ctl"))


@pytest.fixture(scope="session")
def pg_server():
    """A DSN of a PostgreSQL server for the session (the tests' own schemas go in it)."""
    dsn = os.environ.get(ENV)
    if dsn:
        yield dsn
        return
    if not can_throwaway():
        warnings.warn(SKIP, stacklevel=1)  # once per session, in the warnings summary: visible without -rs
        pytest.skip(SKIP)
    server = ThrowawayServer()
    try:
        yield server.dsn
    finally:
        server.destroy()


def schema_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with its search_path set to ``schema``."""
    from psycopg.conninfo import make_conninfo
    return make_conninfo(dsn, options=f"-c search_path={schema}")


@pytest.fixture
def pg_dsn(pg_server):
    """A DSN whose tables land in a fresh schema of their own, dropped after the test."""
    import psycopg
    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_dsn(pg_server, schema)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
