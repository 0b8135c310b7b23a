"""Durable registry state in PostgreSQL: the SqliteStore interface (apply, load, read, close) on a server
that several daemons can share.

Blocking by design, like SqliteStore: the service calls ``apply`` from one worker thread at a time with
a whole batch, one transaction per batch (group commit: one WAL flush acknowledges many joins; the
server's ``synchronous_commit`` decides how durable a commit is, ``on`` by default). psycopg's sync API
in a thread was measured against its async API under trio (which needs an asyncio loop): the thread is
what works here, and a batch costs one round trip in pipeline mode either way.

The schema is versioned (``schema_version``: one row per table family) and migrated by ``migrate`` under
a transaction-level advisory lock, so daemons starting together migrate once. A lost connection is
reopened by the next call (PostgreSQL restarted); until then every write fails with StoreError, which
the service turns into UNAVAILABLE, and reads are served from memory. ``read`` (called on the event loop
after a failed commit) never reconnects: it must answer at once or fail.
"""
from __future__ import annotations

import itertools
import re
import threading
import zlib
from collections.abc import Iterable, Sequence

import attrs
import msgpack
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from galaxynode.registry.leases import Entry
from galaxynode.registry.store import (Ban, Delete, KvDelete, KvPut, Op, StoreError, Unban, Upsert, entry_of,
                                       op_params)

_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_MIGRATE_LOCK = 0x67616C6178790001  # pg_advisory_xact_lock key while migrating ("galaxy" + 1)
CONNECT_TIMEOUT = 5  # seconds; a server that does not answer fails the call instead of hanging it
CHANGES_KEPT = 600  # seconds a change log row is kept; a replica further behind takes a new snapshot
_PRUNE_EVERY = 1000  # commits between prunings of the change log

# Versioned migrations of one lease table family, in order; {t} is the table name. A migration that
# has run is never edited: a change is a new entry.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: leases and bans, as in the SQLite store
        "CREATE TABLE {t} (key bytea PRIMARY KEY CHECK (length(key) = 32), capabilities jsonb NOT NULL, "
        "meta jsonb NOT NULL, ttl integer NOT NULL, expires bigint NOT NULL, joined bigint NOT NULL, payload bytea)",
        "CREATE TABLE {t}_bans (key bytea PRIMARY KEY CHECK (length(key) = 32), until bigint)",
    ),
    (  # 2: plugins' durable key-value pairs (galaxynode.plugin Store), committed with the registry's batches
        "CREATE TABLE {t}_plugin_kv (plugin text NOT NULL, name text NOT NULL, value bytea NOT NULL, "
        "PRIMARY KEY (plugin, name))",
    ),
    (  # 3: the change log workers and replicas follow (galaxynode.cluster): one row per committed batch,
       # ids committed in increasing order (apply takes a lock before it inserts), NOTIFY {t}_changes
        "CREATE TABLE {t}_changes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, origin bytea, "
        "keys bytea[] NOT NULL, ban_keys bytea[] NOT NULL, kv_keys text[] NOT NULL, events bytea NOT NULL, "
        "at timestamptz NOT NULL DEFAULT now())",
    ),
    (  # 4: the change's ops with their values, so a replica applies them in id order without reading back
        "ALTER TABLE {t}_changes ADD COLUMN ops bytea",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and errors."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    params.pop("password", None)
    return make_conninfo("", **params)


def connect(dsn: str, **kw) -> psycopg.Connection:
    """A connection with our timeouts (libpq reads PGPASSWORD and ~/.pgpass for a DSN without one)."""
    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, **kw)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the registry database {redact(dsn)}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def schema_version(conn: psycopg.Connection, table: str) -> int:
    """The migration level of ``table`` (0: not created yet)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (component text PRIMARY KEY, version integer NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version WHERE component = %s", (table,)).fetchone()
    return 0 if row is None else row[0]


def migrate(dsn: str, table: str = "nodes") -> tuple[int, int]:
    """Bring ``table``'s schema to SCHEMA_VERSION; returns (version before, version after). Refuses a
    database migrated by a newer galaxynode (its schema is not ours to guess)."""
    _check_table(table)
    with connect(dsn, autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                before = schema_version(conn, table)
                if before > SCHEMA_VERSION:
                    raise StoreError(f"registry table {table!r} is at schema version {before}, newer than this "
                                     f"galaxynode's {SCHEMA_VERSION}; upgrade galaxynode")
                for version in range(before + 1, SCHEMA_VERSION + 1):
                    for sql in MIGRATIONS[version - 1]:
                        conn.execute(sql.format(t=table))
                    conn.execute("INSERT INTO schema_version VALUES (%s, %s) ON CONFLICT (component) DO UPDATE "
                                 "SET version = excluded.version", (table, version))
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate the registry database {redact(dsn)}: {_reason(exc)}") from exc
    return before, max(before, SCHEMA_VERSION)


def _check_table(table: str) -> None:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"invalid table name {table!r}")


class PgStore:
    """Entries and bans of one lease table, in ``{table}`` and ``{table}_bans`` of the DSN's database
    (its search_path decides the schema). ``migrate_schema=False`` only checks that the schema is current."""

    logs_events = True  # apply() takes the batch's events too, for the change log

    def __init__(self, dsn: str, *, table: str = "nodes", migrate_schema: bool = True, origin: bytes | None = None):
        _check_table(table)
        self.dsn = dsn
        self.path = redact(dsn)  # what the service logs as the store's location
        self._t = table
        if migrate_schema:
            migrate(dsn, table)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._stale = False
        conn = self._connection()
        try:
            version = schema_version(conn, table)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot read the registry schema at {self.path}: {_reason(exc)}") from exc
        if version != SCHEMA_VERSION:
            self.close()
            raise StoreError(f"registry table {table!r} at {self.path} is at schema version {version}, this "
                             f"galaxynode needs {SCHEMA_VERSION}: run 'galaxynode registry migrate'")
        self._sql = {
            Upsert: (f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                     "capabilities = excluded.capabilities, meta = excluded.meta, ttl = excluded.ttl, "
                     "expires = excluded.expires, joined = excluded.joined, payload = excluded.payload"),
            Delete: f"DELETE FROM {table} WHERE key = %s",
            Ban: f"INSERT INTO {table}_bans VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET until = excluded.until",
            Unban: f"DELETE FROM {table}_bans WHERE key = %s",
            KvPut: (f"INSERT INTO {table}_plugin_kv VALUES (%s, %s, %s) ON CONFLICT (plugin, name) DO UPDATE "
                    "SET value = excluded.value"),
            KvDelete: f"DELETE FROM {table}_plugin_kv WHERE plugin = %s AND name = %s",
        }
        self.origin = origin  # who this store writes for (a worker's id), so a replica can skip its own changes
        self._log_lock = zlib.crc32(f"galaxynode:{table}:changes".encode()) - 2**31  # int4 advisory lock key
        self._commits = 0

    @property
    def reachable(self) -> bool:
        """False once the connection was lost, until a call reconnects."""
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

    def reconnect_soon(self) -> None:
        """The server restarted (someone else noticed): the next call opens a new connection instead of
        finding out, with a failed write, that this one is dead. Safe from any thread."""
        self._stale = True

    def _connection(self, *, reconnect: bool = True) -> psycopg.Connection:
        """The open connection; a broken one is replaced (the server restarted) unless ``reconnect`` is off."""
        if self._stale and reconnect and self._conn is not None:
            self._conn.close()
            self._conn = None
        self._stale = False
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
            self._conn = None
        if not reconnect:
            raise StoreError(f"registry database connection lost ({self.path})")
        self._conn = connect(self.dsn, autocommit=True)
        return self._conn

    def apply(self, ops: Sequence[Op], events: Sequence[tuple[str, dict]] = ()) -> None:
        """Apply all ops, in order, in one transaction with its change log row (the keys touched and
        ``events``, what subscribers of other workers are to see); committed when this returns."""
        if not ops:
            return
        t = self._t
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    for kind, group in itertools.groupby(ops, type):
                        cur.executemany(self._sql[kind], [_params(op) for op in group])
                    self._log(cur, ops, events)
                self._commits += 1
                if self._commits % _PRUNE_EVERY == 0:
                    conn.execute(f"DELETE FROM {t}_changes WHERE at < now() - make_interval(secs => %s)",
                                 (CHANGES_KEPT,))
            except (psycopg.Error, TypeError, ValueError) as exc:
                self._after_error(conn)
                raise StoreError(f"registry write failed ({self.path}): {_reason(exc)}") from exc

    def _log(self, cur: psycopg.Cursor, ops: Sequence[Op], events: Sequence[tuple[str, dict]],
             origin: bytes | None = None) -> None:
        """The change log row of this transaction. The lock (held to commit) is taken last, so writers
        queue only for the insert and the commit, and ids become visible in increasing order: a reader
        that has seen id n has seen every change below n (the resync of galaxynode.cluster relies on it)."""
        keys = [op.key for op in ops if isinstance(op, (Upsert, Delete))]
        ban_keys = [op.key for op in ops if isinstance(op, (Ban, Unban))]
        kv_keys = [f"{op.plugin}\x00{op.name}" for op in ops if isinstance(op, (KvPut, KvDelete))]
        logged = msgpack.packb([_op_row(op) for op in ops], use_bin_type=True)
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._log_lock,))
        cur.execute(f"INSERT INTO {self._t}_changes (origin, keys, ban_keys, kv_keys, events, ops) VALUES "
                    "(%s, %s, %s, %s, %s, %s) RETURNING id",
                    (self.origin if origin is None else origin, keys, ban_keys, kv_keys,
                     msgpack.packb(list(events), use_bin_type=True), logged))
        cur.execute(f"SELECT pg_notify('{self._t}_changes', %s)", (str(cur.fetchone()[0]),))

    def expire_due(self, now: int) -> list[Entry]:
        """Delete every lease with ``expires <= now`` and log their node.expired events, for every worker
        (origin none); each row is deleted once, whoever else tries: no lease expires twice."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    rows = cur.execute(f"DELETE FROM {self._t} WHERE expires <= %s RETURNING *", (now,)).fetchall()
                    expired = [_entry(row) for row in rows]
                    if expired:
                        self._log(cur, [Delete(e.key) for e in expired],
                                  [("node.expired", e.to_event()) for e in expired], origin=b"")
            except (psycopg.Error, ValueError, TypeError) as exc:
                self._after_error(conn)
                raise StoreError(f"registry expiry failed ({self.path}): {_reason(exc)}") from exc
        return expired

    def snapshot(self) -> tuple[list[Entry], dict[bytes, int | None], int]:
        """(entries, bans, last change id), all from one snapshot: following the change log from that id
        misses nothing and repeats nothing the snapshot holds."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    last = conn.execute(f"SELECT coalesce(max(id), 0) FROM {self._t}_changes").fetchone()[0]
                    rows = conn.execute(f"SELECT * FROM {self._t}").fetchall()
                    bans = dict(conn.execute(f"SELECT key, until FROM {self._t}_bans").fetchall())
                entries = [_entry(row) for row in rows]
            except (psycopg.Error, ValueError, TypeError) as exc:
                self._after_error(conn)
                raise StoreError(f"cannot read registry database {self.path}: {_reason(exc)}") from exc
        return entries, _bytes_keys(bans), last

    def changes(self, after: int, limit: int = 1000) -> list[Change]:
        """Change log rows with id > ``after``, oldest first."""
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(f"SELECT id, origin, keys, ban_keys, kv_keys, events, ops FROM {self._t}_changes "
                                    "WHERE id > %s ORDER BY id LIMIT %s", (after, limit)).fetchall()
            except psycopg.Error as exc:
                self._after_error(conn)
                raise StoreError(f"cannot read the change log of {self.path}: {_reason(exc)}") from exc
        return [Change(id, None if origin is None else bytes(origin), [bytes(k) for k in keys],
                       [bytes(k) for k in ban_keys], [tuple(k.split("\x00", 1)) for k in kv_keys],
                       msgpack.unpackb(events, raw=False), [_op_of(r) for r in msgpack.unpackb(ops, raw=False)])
                for id, origin, keys, ban_keys, kv_keys, events, ops in rows]

    def load_kv(self) -> list[tuple[str, str, bytes]]:
        """Every plugin key-value row: (plugin, name, value)."""
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(f"SELECT plugin, name, value FROM {self._t}_plugin_kv").fetchall()
            except psycopg.Error as exc:
                self._after_error(conn)
                raise StoreError(f"cannot read plugin data from {self.path}: {_reason(exc)}") from exc
        return [(p, n, bytes(v)) for p, n, v in rows]

    def read_kv(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """What is stored for these (plugin, name) keys, absent ones left out; never reconnects (see read)."""
        keys = list(keys)
        with self._lock:
            conn = self._connection(reconnect=False)
            try:
                rows = conn.execute(f"SELECT plugin, name, value FROM {self._t}_plugin_kv WHERE (plugin, name) IN "
                                    "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                                    ([p for p, _ in keys], [n for _, n in keys])).fetchall()
            except psycopg.Error as exc:
                self._after_error(conn)
                raise StoreError(f"cannot read plugin data from {self.path}: {_reason(exc)}") from exc
        return {(p, n): bytes(v) for p, n, v in rows}

    def load(self) -> tuple[list[Entry], dict[bytes, int | None]]:
        """Everything stored: (entries, bans). Expiry is the lease table's business."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():  # one snapshot for both tables
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    rows = conn.execute(f"SELECT * FROM {self._t}").fetchall()
                    bans = dict(conn.execute(f"SELECT key, until FROM {self._t}_bans").fetchall())
                entries = [_entry(row) for row in rows]
            except (psycopg.Error, ValueError, TypeError) as exc:
                self._after_error(conn)
                raise StoreError(f"cannot read registry database {self.path}: {_reason(exc)}") from exc
        return entries, _bytes_keys(bans)

    def read(self, keys: Iterable[bytes], ban_keys: Iterable[bytes], *, reconnect: bool = False
             ) -> tuple[dict[bytes, Entry], dict[bytes, int | None]]:
        """What is stored for these keys: (entries, bans), absent keys left out. Never reconnects unless
        asked: the service calls it on the event loop."""
        with self._lock:
            conn = self._connection(reconnect=reconnect)
            try:
                with conn.transaction():
                    rows = conn.execute(f"SELECT * FROM {self._t} WHERE key = ANY(%s)", (list(keys),)).fetchall()
                    bans = dict(conn.execute(f"SELECT key, until FROM {self._t}_bans WHERE key = ANY(%s)",
                                             (list(ban_keys),)).fetchall())
                entries = {e.key: e for e in map(_entry, rows)}
            except (psycopg.Error, ValueError, TypeError) as exc:
                self._after_error(conn)
                raise StoreError(f"cannot read registry database {self.path}: {_reason(exc)}") from exc
        return entries, _bytes_keys(bans)

    def _after_error(self, conn: psycopg.Connection) -> None:
        """Drop a connection that may be unusable; the next call opens a new one."""
        if conn.broken or conn.closed:
            conn.close()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "PgStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@attrs.frozen
class Change:
    """One committed batch of the change log: the keys it touched (their rows now are what counts) and
    the events it published."""

    id: int
    origin: bytes | None
    keys: list[bytes]
    ban_keys: list[bytes]
    kv_keys: list[tuple[str, str]]
    events: list  # [topic, data] pairs
    ops: list  # the Ops committed, with their values, in order


def _op_row(op: Op) -> list:
    """An op as the change log keeps it (msgpack)."""
    if isinstance(op, Upsert):
        e = op.entry
        return [0, e.key, list(e.capabilities), dict(e.meta), e.ttl, e.expires, e.joined, e.payload]
    if isinstance(op, Ban):
        return [2, op.key, op.until]
    if isinstance(op, KvPut):
        return [4, op.plugin, op.name, op.value]
    if isinstance(op, KvDelete):
        return [5, op.plugin, op.name]
    return [1 if isinstance(op, Delete) else 3, op.key]


def _op_of(row: list) -> Op:
    kind = row[0]
    if kind == 0:
        _, key, caps, meta, ttl, expires, joined, payload = row
        return Upsert(Entry(key=key, capabilities=tuple(caps), meta=meta, ttl=ttl, expires=expires, joined=joined,
                            payload=payload))
    if kind == 2:
        return Ban(row[1], row[2])
    if kind == 4:
        return KvPut(row[1], row[2], row[3])
    if kind == 5:
        return KvDelete(row[1], row[2])
    return (Delete if kind == 1 else Unban)(row[1])


def _bytes_keys(d: dict) -> dict:
    return {bytes(k): v for k, v in d.items()}


def _params(op: Op) -> tuple:
    if isinstance(op, Upsert) and op.entry.payload is not None and not isinstance(op.entry.payload, bytes):
        raise TypeError("payload must be bytes")  # psycopg would adapt other types silently
    return op_params(op, Jsonb)


def _entry(row: Iterable) -> Entry:
    return entry_of(*row)
