"""Named volumes (the Cinder part of tenancy): a sparse raw image with an ext4 filesystem, owned by a tenant ('' for
the administrator), kept under `<root>/volumes/<owner>/` and recorded in hyperd's sqlite database. A pod mounts one
with `-v NAME:/path` (spec volume `named: NAME`): hyperd attaches the image to the VM as a virtio disk (a block
volume), never a host directory, so tenants get storage without reaching the host's filesystem.

Sizes count against a tenant's `max_volume_gib`; a volume that a pod (running or not) uses cannot be removed.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import Conflict, InvalidArgument, NotFound
from .disk import make_blank

MIN_SIZE, MAX_SIZE = 32 << 20, 16 << 40
ADMIN = ""
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
SCHEMA = """CREATE TABLE IF NOT EXISTS named_volumes (
    owner TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, PRIMARY KEY (owner, name))"""


@dataclass(frozen=True)
class NamedVolume:
    owner: str
    name: str
    size: int
    path: Path
    created: float

    def info(self) -> dict[str, object]:
        return {"name": self.name, "tenant": self.owner or None, "size": self.size, "created": self.created,
                "fstype": "ext4"}


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(f"invalid volume name {name!r}: letters, digits, '_', '.', '-', at most 63, starting "
                              "with a letter or digit")
    return name


class NamedVolumes:
    def __init__(self, root: Path, db: Path) -> None:
        self.root = root
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def _dir(self, owner: str) -> Path:
        if owner and not _NAME.match(owner):
            raise InvalidArgument(f"invalid owner {owner!r}")
        return self.root / (f"t-{owner}" if owner else "admin")

    @staticmethod
    def _row(row: tuple) -> NamedVolume:
        return NamedVolume(row[0], row[1], row[2], Path(row[3]), row[4])

    def get(self, owner: str, name: str) -> NamedVolume:
        """NotFound (the same words whoever else may own that name)."""
        with self._lock:
            row = self._db.execute("SELECT owner, name, size, path, created FROM named_volumes WHERE owner = ? "
                                   "AND name = ?", (owner, check_name(name))).fetchone()
        if row is None:
            raise NotFound(f"no such volume: {name}")
        return self._row(row)

    def all(self, owner: str | None = None) -> list[NamedVolume]:
        q = "SELECT owner, name, size, path, created FROM named_volumes"
        with self._lock:
            rows = (self._db.execute(q + " ORDER BY owner, name").fetchall() if owner is None
                    else self._db.execute(q + " WHERE owner = ? ORDER BY name", (owner,)).fetchall())
        return [self._row(r) for r in rows]

    def used(self, owner: str) -> int:
        """Bytes of volumes the owner has."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM named_volumes WHERE owner = ?",
                                        (owner,)).fetchone()[0])

    async def create(self, owner: str, name: str, size: int) -> NamedVolume:
        """A new volume: a sparse image with a fresh ext4 of `size` bytes. Conflict if the owner has one of that
        name; nothing is left if mkfs fails."""
        check_name(name)
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise InvalidArgument(f"volume size {size} bytes: from 32 MiB to 16 TiB")
        path = self._dir(owner) / f"{name}.img"
        with self._lock:
            if self._db.execute("SELECT 1 FROM named_volumes WHERE owner = ? AND name = ?",
                                (owner, name)).fetchone():
                raise Conflict(f"volume {name} exists")
            created = time.time()
            self._db.execute("INSERT INTO named_volumes VALUES (?, ?, ?, ?, ?)",
                             (owner, name, size, str(path), created))  # the name is taken while mkfs runs
        try:
            path.unlink(missing_ok=True)  # a crash's leftover, never recorded
            await make_blank(path, size)
        except BaseException:
            with self._lock:
                self._db.execute("DELETE FROM named_volumes WHERE owner = ? AND name = ?", (owner, name))
            path.unlink(missing_ok=True)
            raise
        return NamedVolume(owner, name, size, path, created)

    def remove(self, owner: str, name: str, in_use: set[Path]) -> NamedVolume:
        """Removes the record and the image; Conflict if a pod uses it (`in_use`: the images pods attach)."""
        vol = self.get(owner, name)
        if vol.path in in_use:
            raise Conflict(f"volume {name} is in use by a pod: remove the pod first")
        with self._lock:
            self._db.execute("DELETE FROM named_volumes WHERE owner = ? AND name = ?", (owner, name))
        vol.path.unlink(missing_ok=True)
        return vol

    def close(self) -> None:
        self._db.close()
