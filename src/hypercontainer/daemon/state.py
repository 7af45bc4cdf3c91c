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

from ..errors import no_space
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
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Under the lock; a full disk is NoSpace naming the database (sqlite rolls the statement back)."""
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise no_space(self.path) from None
                raise

    def save(self, pod_id: str, name: str, state: str, info: PodInfo) -> None:
        with self._writing():
            self._db.execute(
                "INSERT INTO pods (id, name, state, info, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, state=excluded.state, info=excluded.info, "
                "updated=excluded.updated",
                (pod_id, name, state, json.dumps(info), time.time()),
            )

    def delete(self, pod_id: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    def all(self) -> list[PodRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, state, info FROM pods").fetchall()
        return [PodRecord(id=r[0], name=r[1], state=r[2], info=json.loads(r[3])) for r in rows]

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement; its rows."""
        with self._writing():
            return self._db.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, for statements that commit together (or not at all)."""
        with self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (a full disk) leaves it open
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()
