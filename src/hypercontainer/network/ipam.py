"""Address leases: one IPv4 address per pod from the bridge subnet, persisted in hyperd's sqlite database."""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from pathlib import Path

from ..errors import HCError

SCHEMA = "CREATE TABLE IF NOT EXISTS leases (ip TEXT PRIMARY KEY, pod_id TEXT NOT NULL UNIQUE)"


class Leases:
    def __init__(self, db: Path, subnet: ipaddress.IPv4Network) -> None:
        self.subnet = subnet
        self.gateway = next(subnet.hosts())
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def allocate(self, pod_id: str) -> ipaddress.IPv4Address:
        """The pod's address: its existing lease, else the lowest free one after the gateway."""
        with self._lock:
            row = self._db.execute("SELECT ip FROM leases WHERE pod_id = ?", (pod_id,)).fetchone()
            if row:
                return ipaddress.IPv4Address(row[0])
            taken = {ipaddress.IPv4Address(r[0]) for r in self._db.execute("SELECT ip FROM leases")}
            for ip in self.subnet.hosts():
                if ip != self.gateway and ip not in taken:
                    self._db.execute("INSERT INTO leases (ip, pod_id) VALUES (?, ?)", (str(ip), pod_id))
                    return ip
        raise HCError(f"no free address left in {self.subnet}")

    def release(self, pod_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE pod_id = ?", (pod_id,))

    def all(self) -> dict[str, str]:
        """pod id -> address."""
        with self._lock:
            return {r[1]: r[0] for r in self._db.execute("SELECT ip, pod_id FROM leases")}

    def close(self) -> None:
        self._db.close()
