"""Data safety (issue 12, item 10 and "Data safety"): private files, one daemon per data dir, disk full.

- Files: the data dir ends up 0700 (an existing looser one is tightened, and the log says so), every
  file the pool creates or finds there (key, sqlite db, -wal, -shm, lock) 0600; a TLS key open to
  others is warned about like the node key.
- Lock: a second `galaxynode run` or `mainnet` on the same data dir exits 1 with one line naming the
  first one's pid.
- Disk full: a change the store refused is not acknowledged (JOIN gets `unavailable`, retryable) and
  not visible (status, query, events); reads keep being served; the pool recovers by itself when space
  returns; the log says it once per episode (and then at most once per failure_log_interval). Tested in
  process with SQLite's max_page_count (SQLITE_FULL) and against a live pool on a full tmpfs (skipped
  where mounting is not allowed).
"""
from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from abuse import NETWORK, alive, live_pool
from galaxynode.config import load_config
from galaxynode.daemon import ssl_context
from galaxynode.datadir import DataDirInUse, locked
from galaxynode.gelato.errors import ErrorCode, ProtocolError
from galaxynode.identity import Identity
from galaxynode.net import RemoteError
from galaxynode.nodeclient import connect
from galaxynode.registry import LeaseTable, Registry, SqliteStore


PAD = {f"pad{i}": "x" * 200 for i in range(8)}  # ~1.7 KB a row, within the meta limits


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- file modes ------------------------------------------------------------------------------------

def test_live_pool_makes_an_old_loose_data_dir_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    db = data / "registry.sqlite"
    db.touch()
    os.chmod(db, 0o644)  # as older versions left it
    with live_pool(data) as pool:
        async def join() -> None:
            async with connect(pool.url, Identity.generate(), network=NETWORK) as node:
                await node.join(capabilities=["x"])
        trio.run(join)
        names = sorted(p.name for p in data.iterdir())
        assert {"galaxynode.lock", "node.key", "registry.sqlite", "registry.sqlite-wal",
                "registry.sqlite-shm"} <= set(names)
        assert mode(data) == 0o700
        loose = {p.name: oct(mode(p)) for p in data.iterdir() if mode(p) & 0o077}
        assert not loose, loose
        assert "had mode 755; set it to 700" in pool.output
        assert "had mode 644; set it to 600" in pool.output


def test_shared_sticky_dir_is_warned_about_not_changed(tmp_path, caplog):
    from galaxynode.datadir import private_dir
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with caplog.at_level(logging.WARNING, "galaxynode.datadir"):
        private_dir(shared)
    assert mode(shared) == 0o1777
    assert "is shared" in caplog.text


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_key_readable_by_others_is_warned_about(tmp_path, caplog):
    cert, key = _self_signed(tmp_path)
    config = load_config(None, env={}, overrides={"server.tls_cert": str(cert), "server.tls_key": str(key)})
    os.chmod(key, 0o600)
    with caplog.at_level(logging.WARNING):
        assert ssl_context(config) is not None
    assert "TLS key" not in caplog.text
    os.chmod(key, 0o644)
    with caplog.at_level(logging.WARNING):
        ssl_context(config)
    assert f"TLS key file {key} has mode 644; it should be 0600" in caplog.text


# --- one daemon per data dir -----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "mainnet"])
def test_second_daemon_on_the_same_data_dir_exits_naming_the_first(tmp_path, command):
    data = tmp_path / "data"
    with live_pool(data) as pool:
        second = subprocess.run(
            [sys.executable, "-m", "galaxynode", command, "--listen", "ws://127.0.0.1:0", "--data-dir", str(data),
             "--network", NETWORK], capture_output=True, text=True, timeout=30,
            cwd=str(Path(__file__).resolve().parent.parent))
        assert second.returncode == 1, second
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and f"(pid {pool.pid})" in lines[0] and str(data) in lines[0], second.stderr
        assert alive(pool)
    with locked(data):  # released when the first one stopped
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            with locked(data):
                pass


# --- disk full, in process (SQLITE_FULL through max_page_count) ------------------------------------

class Bus:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, data: dict) -> None:
        self.topics.append(topic)


def _fill(store: SqliteStore, full: bool) -> None:
    """Cap the database at its current size (every growth fails with SQLITE_FULL), or lift the cap."""
    conn = store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages if full else 2**30}")


async def test_disk_full_is_refused_invisible_and_recovers(tmp_path, caplog):
    store, bus = SqliteStore(tmp_path / "reg.sqlite"), Bus()
    reg = Registry(LeaseTable(), store, bus, retry_delay=0.01, failure_log_interval=3600)
    keys = [os.urandom(32) for _ in range(60)]
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        await reg.join(keys[0], capabilities=["a"], ttl=60)
        await reg.join(keys[1], capabilities=["a"], ttl=60)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # growth goes to the db file: capped below
        _fill(store, True)
        refused = []

        async def join(k: bytes) -> None:
            try:
                await reg.join(k, capabilities=["big"], meta=PAD, ttl=60)
            except ProtocolError as e:
                refused.append(e.code)

        with caplog.at_level(logging.WARNING, "galaxynode.registry.service"):
            for _ in range(3):  # three rounds: three failed commits, one log line
                async with trio.open_nursery() as joins:
                    for k in keys[2:]:
                        joins.start_soon(join, k)
                store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert refused == [ErrorCode.UNAVAILABLE] * 58 * 3
        assert len(reg.table) == 2 and reg.query(capabilities=["big"]) == ([], None)  # reads served
        assert bus.topics == ["node.joined", "node.joined"]
        assert caplog.text.count("cannot store changes") == 1
        _fill(store, False)
        await reg.join(keys[2], ttl=60)  # space is back
        assert "stores changes again" in caplog.text
        assert len(reg.table) == 3 and bus.topics[-1] == "node.joined"
        n.cancel_scope.cancel()
    store.close()
    with SqliteStore(tmp_path / "reg.sqlite") as s:
        assert {e.key for e in s.load()[0]} == set(keys[:3])


async def test_failure_log_is_once_per_interval(tmp_path, caplog):
    """Failures every retry_delay for a while log 1 line + at most one per failure_log_interval."""
    store = SqliteStore(tmp_path / "reg.sqlite")
    reg = Registry(LeaseTable(), store, retry_delay=0.005, failure_log_interval=0.2)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _fill(store, True)
    commits = 0
    async with trio.open_nursery() as n:
        await n.start(reg.run)
        started = trio.current_time()
        with caplog.at_level(logging.ERROR, "galaxynode.registry.service"):
            while trio.current_time() - started < 1.0:
                with pytest.raises(ProtocolError):
                    await reg.join(os.urandom(32), meta=PAD, ttl=60)
                commits += 1
                store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        took = trio.current_time() - started
        n.cancel_scope.cancel()
    store.close()
    lines = caplog.text.count("cannot store changes")
    assert commits > 20 and 2 <= lines <= 2 + took / 0.2, (commits, lines, took)


# --- disk full, live pool on a full tmpfs ----------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def fill_up(mnt: Path) -> Path:
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_live_pool_on_a_full_disk(small_disk):
    """60 JOINs on a full disk: each refused with `unavailable`; status and query show none of them
    and are served; one log line for the episode; after space returns, JOIN works again."""
    with live_pool(small_disk / "data") as pool:
        async def main() -> None:
            async with connect(pool.url, Identity.generate(), network=NETWORK, role="probe") as probe:
                before = (await probe.status()).nodes
                filler = fill_up(small_disk)
                errors = []

                limiter = trio.CapacityLimiter(12)  # below the per-address pending-connection cap

                async def join() -> None:
                    try:
                        async with limiter, connect(pool.url, Identity.generate(), network=NETWORK) as node:
                            await node.join(capabilities=["full"], meta=PAD)
                        errors.append(None)
                    except RemoteError as e:
                        errors.append(e.remote_name)

                with trio.fail_after(30):
                    async with trio.open_nursery() as joins:
                        for _ in range(60):
                            joins.start_soon(join)
                assert errors == ["unavailable"] * 60
                assert (await probe.status()).nodes == before
                assert await probe.query(capabilities=["full"]) == []
                filler.unlink()
                with trio.fail_after(15):
                    async with connect(pool.url, Identity.generate(), network=NETWORK) as node:
                        await node.join(capabilities=["full"])
                assert len(await probe.query(capabilities=["full"])) == 1

        trio.run(main)
        assert alive(pool)
        pool.wait_for("stores changes again", timeout=10)
        assert pool.output.count("cannot store changes") == 1, pool.output[-3000:]
    time.sleep(0)  # the pool released the mount before umount
