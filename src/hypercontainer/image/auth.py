"""Registry authentication: parsing WWW-Authenticate challenges and keeping credentials.

Credentials live on the client side, as docker keeps them: `~/.config/hypercontainer/auth.json`, mode 0600,
and travel with each pull request; hyperd keeps none.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # bearer | basic
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    return Challenge(scheme.lower(), {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                                      for m in _PARAM.finditer(rest)})


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def auth_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return Path(os.environ.get("HYPERCONTAINER_AUTH_FILE", base / "hypercontainer" / "auth.json"))


def _load(path: Path) -> dict | None:
    """The file's object with an `auths` object in it; None if there is no file or it is not JSON or no object."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if not isinstance(data.get("auths"), dict):
        data["auths"] = {}
    return data


def load_all(path: Path | None = None) -> dict[str, Credentials]:
    data = _load(path or auth_file())
    if data is None:
        return {}
    out = {}
    for registry, entry in data["auths"].items():
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            out[registry] = Credentials(user, password)
        except (KeyError, ValueError, TypeError):
            continue
    return out


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    tmp.rename(path)


def store(registry: str, creds: Credentials, path: Path | None = None) -> None:
    path = path or auth_file()
    data = _load(path) or {"auths": {}}
    data["auths"][registry] = {
        "auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    _write(path, data)


def forget(registry: str, path: Path | None = None) -> bool:
    path = path or auth_file()
    data = _load(path)
    if data is None:
        return False
    found = data["auths"].pop(registry, None) is not None
    if found:
        _write(path, data)
    return found
