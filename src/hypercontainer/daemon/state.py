"""hyperd's persistent state: one sqlite database (pods and their last known info; tenants and their tokens,
which daemon/tenants.py keeps)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..pod.records import PodInfo, PodRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    info TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    max_pods INTEGER NOT NULL,
    max_vcpus INTEGER NOT NULL,
    max_memory INTEGER NOT NULL,
    max_volume_gib INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL
);
"""


class StateDB:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def save(self, pod_id: str, name: str, state: str, info: PodInfo) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO pods (id, name, state, info, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, state=excluded.state, info=excluded.info, "
                "updated=excluded.updated",
                (pod_id, name, state, json.dumps(info), time.time()),
            )

    def delete(self, pod_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    def all(self) -> list[PodRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, state, info FROM pods").fetchall()
        return [PodRecord(id=r[0], name=r[1], state=r[2], info=json.loads(r[3])) for r in rows]

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement; its rows."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, for statements that commit together (or not at all)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
