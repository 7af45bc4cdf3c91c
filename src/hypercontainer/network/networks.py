"""Named pod networks (the Neutron part of tenancy): each is a bridge of its own with a /24 from POOL, owned by a
tenant ('' for the administrator), kept in hyperd's sqlite database.

A tenant's pods join its network `default`, made on first use; `hyperctl network create NAME` makes more and a pod
joins one with `--net NAME` (spec `network: {name: NAME}`). hyperd's own bridge (`--bridge`, 10.77.0.0/16) stays
the administrator's default. Bridges are named `hnet<N>`, outside the taps' `hc*` (links.py), so no sweep of
leftover taps ever takes one. Isolation between networks is firewall.py's: no forwarding from one of hyperd's
bridges into another, except through a published port.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import Conflict, InvalidArgument, NotFound

POOL = ipaddress.IPv4Network("10.80.0.0/12")  # 4096 networks of 254 pods; not docker's, podman's, hyperd's, CNI's
PREFIX = 24
BRIDGE_PREFIX = "hnet"
ADMIN = ""  # the administrator's networks (the unix socket's callers)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SCHEMA = """CREATE TABLE IF NOT EXISTS networks (
    tenant TEXT NOT NULL, name TEXT NOT NULL, bridge TEXT NOT NULL UNIQUE, subnet TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, PRIMARY KEY (tenant, name))"""


@dataclass(frozen=True)
class NetworkRecord:
    tenant: str
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    created: float

    def info(self) -> dict[str, object]:
        return {"name": self.name, "tenant": self.tenant or None, "bridge": self.bridge, "subnet": str(self.subnet),
                "gateway": str(next(self.subnet.hosts())), "created": self.created}


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(f"invalid network name {name!r}: lower-case letters, digits, '_', '.', '-', "
                              "at most 63, starting with a letter or digit")
    return name


class Networks:
    def __init__(self, db: Path) -> None:
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._lock = threading.Lock()

    def _row(self, row: tuple) -> NetworkRecord:
        return NetworkRecord(row[0], row[1], row[2], ipaddress.IPv4Network(row[3]), row[4])

    def get(self, tenant: str, name: str) -> NetworkRecord | None:
        with self._lock:
            row = self._db.execute("SELECT tenant, name, bridge, subnet, created FROM networks WHERE tenant = ? AND "
                                   "name = ?", (tenant, name)).fetchone()
        return self._row(row) if row else None

    def find(self, tenant: str, name: str) -> NetworkRecord:
        """The tenant's network `name`; NotFound (the same words whoever else may own that name)."""
        rec = self.get(tenant, check_name(name))
        if rec is None:
            raise NotFound(f"no such network: {name}")
        return rec

    def all(self, tenant: str | None = None) -> list[NetworkRecord]:
        """Every network (tenant None), or one tenant's."""
        q = "SELECT tenant, name, bridge, subnet, created FROM networks"
        with self._lock:
            rows = (self._db.execute(q + " ORDER BY tenant, name").fetchall() if tenant is None
                    else self._db.execute(q + " WHERE tenant = ? ORDER BY name", (tenant,)).fetchall())
        return [self._row(r) for r in rows]

    def create(self, tenant: str, name: str) -> NetworkRecord:
        """A new network: the lowest free /24 of POOL and the bridge name that goes with it. Conflict if the
        tenant has one of that name; InvalidArgument when POOL is used up."""
        check_name(name)
        with self._lock:
            if self._db.execute("SELECT 1 FROM networks WHERE tenant = ? AND name = ?", (tenant, name)).fetchone():
                raise Conflict(f"network {name} exists")
            taken = {r[0] for r in self._db.execute("SELECT subnet FROM networks")}
            for index, subnet in enumerate(POOL.subnets(new_prefix=PREFIX)):
                if str(subnet) not in taken:
                    rec = NetworkRecord(tenant, name, f"{BRIDGE_PREFIX}{index}", subnet, time.time())
                    self._db.execute("INSERT INTO networks VALUES (?, ?, ?, ?, ?)",
                                     (tenant, name, rec.bridge, str(subnet), rec.created))
                    return rec
        raise InvalidArgument(f"no free subnet left in {POOL} for another network")

    def ensure(self, tenant: str, name: str) -> NetworkRecord:
        """The network, made if it is not there yet (a tenant's `default`, on first use)."""
        try:
            return self.create(tenant, name)
        except Conflict:
            return self.find(tenant, name)

    def remove(self, tenant: str, name: str) -> NetworkRecord:
        rec = self.find(tenant, name)
        with self._lock:
            self._db.execute("DELETE FROM networks WHERE tenant = ? AND name = ?", (tenant, name))
        return rec

    def close(self) -> None:
        self._db.close()
