"""Node registry: sans-IO lease table, SQLite store, and the trio service that ties them together."""
from galaxynode.registry.leases import Admission, Entry, LeaseTable
from galaxynode.registry.service import Registry
from galaxynode.registry.store import SqliteStore, StoreError

__all__ = ["Admission", "Entry", "LeaseTable", "Registry", "SqliteStore", "StoreError"]
