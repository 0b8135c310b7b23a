"""Durable registry state in SQLite (WAL, synchronous=FULL): a change is on disk once apply() returns.

Blocking by design: the service calls it from one worker thread at a time and batches many changes
into one transaction (group commit), so one fsync acknowledges many joins. The database holds who
is registered and banned: it is created (and an older one tightened to) mode 0600; SQLite gives its
-wal and -shm files the database's mode.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs

from galaxynode.datadir import private_files
from galaxynode.registry.leases import Entry


class StoreError(Exception):
    """The registry database could not be opened, read or written."""


@attrs.frozen
class Upsert:
    entry: Entry

    @property
    def key(self) -> bytes:
        return self.entry.key


@attrs.frozen
class Delete:
    key: bytes


@attrs.frozen
class Ban:
    key: bytes
    until: int | None  # ms since epoch, None = permanent


@attrs.frozen
class Unban:
    key: bytes


@attrs.frozen
class KvPut:
    """A plugin's durable key-value pair (galaxynode.plugin Store), committed with the registry's batch."""

    plugin: str
    name: str
    value: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.plugin, self.name)


@attrs.frozen
class KvDelete:
    plugin: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.plugin, self.name)


Op = Upsert | Delete | Ban | Unban | KvPut | KvDelete


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_IN_CHUNK = 500  # keys per SELECT ... IN (...): below SQLite's bound on host parameters


class Store(Protocol):
    """What the Registry needs of a backend (SqliteStore, pgstore.PgStore). Blocking calls: ``apply``
    runs in a worker thread, one at a time; ``read`` runs on the event loop after a failed commit and
    must answer at once or raise StoreError."""

    path: str  # where it lives, for logs (a DSN without its password)

    def apply(self, ops: Sequence[Op]) -> None: ...

    def load(self) -> tuple[list[Entry], dict[bytes, int | None]]: ...

    def read(self, keys: Iterable[bytes], ban_keys: Iterable[bytes]
             ) -> tuple[dict[bytes, Entry], dict[bytes, int | None]]: ...

    def close(self) -> None: ...


class SqliteStore:
    """Entries and bans of one lease table, in ``{table}`` and ``{table}_bans``."""

    def __init__(self, path: str | os.PathLike, *, table: str = "nodes", busy_timeout: float = 5.0):
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"invalid table name {table!r}")
        self.path = os.fspath(path)
        self._t = table
        try:
            private_files(self.path, self.path + "-wal", self.path + "-shm")
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                         check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open registry database {self.path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (key BLOB PRIMARY KEY, capabilities TEXT NOT NULL, "
                "meta TEXT NOT NULL, ttl INTEGER NOT NULL, expires INTEGER NOT NULL, joined INTEGER NOT NULL, "
                "payload BLOB) WITHOUT ROWID")
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table}_bans (key BLOB PRIMARY KEY, until INTEGER) "
                               "WITHOUT ROWID")
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table}_plugin_kv (plugin TEXT NOT NULL, name TEXT NOT NULL, "
                               "value BLOB NOT NULL, PRIMARY KEY (plugin, name)) WITHOUT ROWID")
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot initialise registry database {self.path}: {exc}") from exc
        self._sql = {
            Upsert: f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)",
            Delete: f"DELETE FROM {table} WHERE key = ?",
            Ban: f"INSERT OR REPLACE INTO {table}_bans VALUES (?, ?)",
            Unban: f"DELETE FROM {table}_bans WHERE key = ?",
            KvPut: f"INSERT OR REPLACE INTO {table}_plugin_kv VALUES (?, ?, ?)",
            KvDelete: f"DELETE FROM {table}_plugin_kv WHERE plugin = ? AND name = ?",
        }

    def apply(self, ops: Sequence[Op]) -> None:
        """Apply all ops, in order, in one transaction; durable when this returns."""
        if not ops:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for kind, group in itertools.groupby(ops, type):
                    conn.executemany(self._sql[kind], map(op_params, group))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"registry write failed ({self.path}): {exc}") from exc

    def load(self) -> tuple[list[Entry], dict[bytes, int | None]]:
        """Everything stored: (entries, bans). Expiry is the lease table's business."""
        try:
            rows = self._conn.execute(f"SELECT * FROM {self._t}").fetchall()
            bans = dict(self._conn.execute(f"SELECT key, until FROM {self._t}_bans").fetchall())
            entries = [_entry(row) for row in rows]
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StoreError(f"cannot read registry database {self.path}: {exc}") from exc
        return entries, bans

    def read(self, keys: Iterable[bytes], ban_keys: Iterable[bytes]
             ) -> tuple[dict[bytes, Entry], dict[bytes, int | None]]:
        """What is stored for these keys: (entries, bans), absent keys left out. Lets the service put
        its memory back to the stored state after a commit failed; reading needs no free space."""
        try:
            entries = {e.key: e for e in map(_entry, self._select(f"SELECT * FROM {self._t}", keys))}
            bans = dict(self._select(f"SELECT key, until FROM {self._t}_bans", ban_keys))
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StoreError(f"cannot read registry database {self.path}: {exc}") from exc
        return entries, bans

    def load_kv(self) -> list[tuple[str, str, bytes]]:
        """Every plugin key-value row: (plugin, name, value)."""
        try:
            return [(p, n, bytes(v)) for p, n, v in
                    self._conn.execute(f"SELECT plugin, name, value FROM {self._t}_plugin_kv").fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read plugin data from {self.path}: {exc}") from exc

    def read_kv(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """What is stored for these (plugin, name) keys, absent ones left out (after a failed commit)."""
        out = {}
        try:
            for plugin, name in keys:
                row = self._conn.execute(f"SELECT value FROM {self._t}_plugin_kv WHERE plugin = ? AND name = ?",
                                         (plugin, name)).fetchone()
                if row is not None:
                    out[(plugin, name)] = bytes(row[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read plugin data from {self.path}: {exc}") from exc
        return out

    def _select(self, select: str, keys: Iterable[bytes]) -> list[tuple]:
        keys, rows = list(keys), []
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i:i + _IN_CHUNK]
            rows += self._conn.execute(f"{select} WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def op_params(op: Op, json_value: Callable[[Any], Any] = json.dumps) -> tuple:
    """An op's SQL parameters (both backends; ``json_value`` wraps capabilities and meta)."""
    if isinstance(op, Upsert):
        e = op.entry
        return (e.key, json_value(list(e.capabilities)), json_value(dict(e.meta)), e.ttl, e.expires, e.joined,
                e.payload)
    if isinstance(op, Ban):
        return (op.key, op.until)
    if isinstance(op, KvPut):
        return (op.plugin, op.name, op.value)
    if isinstance(op, KvDelete):
        return (op.plugin, op.name)
    return (op.key,)


def entry_of(key: Any, caps: Any, meta: Any, ttl: int, expires: int, joined: int, payload: Any) -> Entry:
    """A stored row as an Entry (both backends; capabilities and meta already decoded)."""
    if not isinstance(key, (bytes, memoryview)) or not isinstance(caps, list) or not isinstance(meta, dict):
        raise ValueError("malformed row")
    return Entry(key=bytes(key), capabilities=tuple(caps), meta=meta, ttl=ttl, expires=expires, joined=joined,
                 payload=None if payload is None else bytes(payload))


def _entry(row: Iterable) -> Entry:
    key, caps, meta, ttl, expires, joined, payload = row
    return entry_of(key, json.loads(caps), json.loads(meta), ttl, expires, joined, payload)
