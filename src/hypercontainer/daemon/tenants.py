"""Tenants, their quotas and their API tokens, kept in hyperd's sqlite state.

A token is `hct_<id>_<secret>`: the id names its row, the secret (32 random bytes) is shown once, when it is
made; only a salted SHA-256 of it is kept, compared in constant time. A token stops working when it is revoked,
when it expires, or when its tenant is removed.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import Conflict, InvalidArgument, NotFound, Unauthenticated
from .state import StateDB

PREFIX = "hct"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_TOKEN = re.compile(r"^hct_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^([0-9]{1,6})([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_EXPIRES = "30d"


@dataclass(frozen=True)
class Quotas:
    """What a tenant's pods may hold at once. A pod counts from its creation until it is removed, whatever its
    state. Volume GiB are recorded for named volumes (not enforced here: hyperd has none yet)."""

    max_pods: int = 10
    max_vcpus: int = 16
    max_memory: int = 16384  # MiB
    max_volume_gib: int = 100

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 1 << 30:
                raise InvalidArgument(f"{k} must be a whole number from 0 to {1 << 30}, not {v!r}")


@dataclass(frozen=True)
class Tenant:
    name: str
    quotas: Quotas
    created: float

    def info(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.quotas), "created": self.created}


@dataclass(frozen=True)
class Token:
    id: str
    tenant: str
    created: float
    expires: float | None
    revoked: float | None

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "created": self.created, "expires": self.expires,
                "revoked": self.revoked, "state": self.state()}

    def state(self, now: float | None = None) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and (now or time.time()) >= self.expires:
            return "expired"
        return "valid"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"{name!r} is not a tenant name (1-32 lowercase letters, digits and '-', "
                              "starting and ending with a letter or digit)")
    return name


def parse_expires(text: str | None, now: float | None = None) -> float | None:
    """'30d', '12h', '90m', '3600s' from now; 'never' (or None: DEFAULT_EXPIRES) -> a time, or None for never."""
    text = DEFAULT_EXPIRES if text is None else text
    if text == "never":
        return None
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise InvalidArgument(f"expires: {text!r} is not a duration like 30d, 12h, 90m or 3600s (or 'never')")
    return (now or time.time()) + int(m.group(1)) * UNITS[m.group(2)]


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


class Tenants:
    """The tenants and tokens store (tables `tenants` and `tokens` of hyperd's state)."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    # ---- tenants -----------------------------------------------------------------------------------------
    def create(self, name: str, quotas: Quotas) -> Tenant:
        t = Tenant(check_name(name), quotas, time.time())
        with self.db.transaction() as c:
            if c.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"tenant {name} exists already")
            c.execute("INSERT INTO tenants (name, max_pods, max_vcpus, max_memory, max_volume_gib, created) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (name, quotas.max_pods, quotas.max_vcpus, quotas.max_memory,
                                                    quotas.max_volume_gib, t.created))
        return t

    def get(self, name: str) -> Tenant:
        rows = self.db.query("SELECT name, max_pods, max_vcpus, max_memory, max_volume_gib, created FROM tenants "
                             "WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no such tenant: {name}")
        return _tenant(rows[0])

    def list(self) -> list[Tenant]:
        rows = self.db.query("SELECT name, max_pods, max_vcpus, max_memory, max_volume_gib, created FROM tenants "
                             "ORDER BY name")
        return [_tenant(r) for r in rows]

    def delete(self, name: str) -> builtins.list[str]:
        """Removes the tenant and its tokens; the ids of those tokens."""
        with self.db.transaction() as c:
            if not c.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise NotFound(f"no such tenant: {name}")
            ids = [r[0] for r in c.execute("SELECT id FROM tokens WHERE tenant = ?", (name,)).fetchall()]
            c.execute("DELETE FROM tokens WHERE tenant = ?", (name,))
            c.execute("DELETE FROM tenants WHERE name = ?", (name,))
        return ids

    # ---- tokens ------------------------------------------------------------------------------------------
    def issue(self, tenant: str, expires: float | None) -> tuple[Token, str]:
        """A new token of `tenant`, and its text (`hct_<id>_<secret>`): the only time the secret is seen."""
        self.get(tenant)
        token_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
        tok = Token(token_id, tenant, time.time(), expires, None)
        with self.db.transaction() as c:
            c.execute("INSERT INTO tokens (id, tenant, salt, hash, created, expires, revoked) "
                      "VALUES (?, ?, ?, ?, ?, ?, NULL)", (token_id, tenant, salt, _digest(salt, secret),
                                                          tok.created, expires))
        return tok, f"{PREFIX}_{token_id}_{secret}"

    def tokens(self, tenant: str | None = None) -> builtins.list[Token]:
        sql = "SELECT id, tenant, created, expires, revoked FROM tokens"
        rows = self.db.query(sql + " WHERE tenant = ? ORDER BY created", (tenant,)) if tenant is not None \
            else self.db.query(sql + " ORDER BY created")
        return [Token(*r) for r in rows]

    def revoke(self, token_id: str) -> Token:
        """Revokes a token (once: revoking it again keeps the first time)."""
        with self.db.transaction() as c:
            row = c.execute("SELECT id, tenant, created, expires, revoked FROM tokens WHERE id = ?",
                            (token_id,)).fetchone()
            if row is None:
                raise NotFound(f"no such token: {token_id}")
            if row[4] is None:
                c.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (time.time(), token_id))
        return self.token(token_id)

    def token(self, token_id: str) -> Token:
        rows = self.db.query("SELECT id, tenant, created, expires, revoked FROM tokens WHERE id = ?", (token_id,))
        if not rows:
            raise NotFound(f"no such token: {token_id}")
        return Token(*rows[0])

    def authenticate(self, text: str) -> Token:
        """The valid token `text` is; Unauthenticated otherwise (a wrong secret reads as an unknown token)."""
        m = _TOKEN.match(text)
        if not m:
            raise Unauthenticated("malformed token: expected hct_<id>_<secret>")
        rows = self.db.query("SELECT salt, hash, id, tenant, created, expires, revoked FROM tokens WHERE id = ?",
                             (m.group(1),))
        # the same work whether or not the id exists, so that timing tells nothing either
        salt, stored = (rows[0][0], rows[0][1]) if rows else (b"\0" * 16, b"\0" * 32)
        if not secrets.compare_digest(_digest(salt, m.group(2)), stored) or not rows:
            raise Unauthenticated("invalid token")
        tok = Token(*rows[0][2:])
        if (state := tok.state()) != "valid":
            raise Unauthenticated(f"token {tok.id} is {state}")
        return tok

    def valid(self, token_id: str) -> bool:
        """Whether the token still works (not revoked, not expired, its tenant still there)."""
        try:
            return self.token(token_id).state() == "valid"
        except NotFound:
            return False


def _tenant(row: tuple[Any, ...]) -> Tenant:
    return Tenant(row[0], Quotas(*row[1:5]), row[5])
