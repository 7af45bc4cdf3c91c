"""Where hyperctl's requests go (an Endpoint), and the contexts that name hyperds, as docker's do.

The first of these that is given wins: --host (its CA from --tls-ca or HYPERCONTAINER_TLS_CA), --context NAME,
HYPERCONTAINER_HOST (CA as for --host), the current context (`hyperctl context use`), the local socket
(HYPERCONTAINER_SOCKET; the context named "default"). A context keeps its host, a copy of its CA certificate and
its token; --tls-ca overrides its CA. HYPERCONTAINER_TOKEN, when set, is the token whatever the endpoint.

Contexts live in `$XDG_CONFIG_HOME/hypercontainer/contexts.json` (~/.config by default), mode 0600 in a 0700
directory: tokens are secrets.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import paths
from ..errors import HCError, InvalidArgument, NotFound

ENV_HOST = "HYPERCONTAINER_HOST"
ENV_TLS_CA = "HYPERCONTAINER_TLS_CA"
ENV_TOKEN = "HYPERCONTAINER_TOKEN"
DEFAULT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Endpoint:
    """One hyperd: its unix socket, or a TCP host and port spoken to over TLS."""

    socket: Path | None = None
    host: str = ""
    port: int = 0
    ca_file: Path | None = None  # the CA certificate to trust (a file)...
    ca_pem: str | None = None  # ...or its text (a context's copy); neither: the system's CAs
    ca_name: str = ""  # where the CA came from, for messages
    token: str | None = None

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}"
        return f"tcp://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    def headers(self) -> dict[str, str]:
        """What every request and websocket handshake carries: the token, if there is one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def parse_host(text: str) -> tuple[Path | None, str, int]:
    """unix:///PATH, or tcp://HOST:PORT ([IPv6] in brackets) -> (socket, host, port)."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "unix" and rest.startswith("/"):
        return Path(rest), "", 0
    host, colon, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if scheme != "tcp" or not sep or not colon or not host or "/" in host or not port.isdigit() \
            or not 0 < int(port) <= 65535:
        raise InvalidArgument(f"host {text!r} is not tcp://HOST:PORT or unix:///PATH")
    return None, host, int(port)


def local(token: str | None = None) -> Endpoint:
    return Endpoint(socket=paths().socket, token=token)


def from_host(host: str, ca_file: str | None, token: str | None) -> Endpoint:
    sock, name, port = parse_host(host)
    if sock is not None:
        return Endpoint(socket=sock, token=token)
    ca = Path(ca_file) if ca_file else None
    return Endpoint(host=name, port=port, ca_file=ca, ca_name=f"CA {ca}" if ca else "the system's CAs", token=token)


# Contexts


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hypercontainer"


def store_file() -> Path:
    return config_dir() / "contexts.json"


def load() -> dict[str, Any]:
    """{"current": NAME or None, "contexts": {NAME: {"host", "ca", "token"}}}."""
    try:
        data = json.loads(store_file().read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as e:
        raise HCError(f"cannot read {store_file()}: {e}") from None
    return {"current": data.get("current"), "contexts": dict(data.get("contexts") or {})}


def save(data: dict[str, Any]) -> None:
    path = store_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.rename(path)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(f"{name!r} is not a context name (letters, digits, '_', '.', '-'; at most 64)")
    return name


def of_context(name: str, data: dict[str, Any], ca_file: str | None, token: str | None) -> Endpoint:
    """The endpoint context `name` describes (--tls-ca and HYPERCONTAINER_TOKEN over its own)."""
    if name == DEFAULT:
        return local(token)
    ctx = data["contexts"].get(name)
    if ctx is None:
        raise NotFound(f"no context {name!r} (hyperctl context ls)")
    sock, host, port = parse_host(ctx["host"])
    token = token or ctx.get("token")
    if sock is not None:
        return Endpoint(socket=sock, token=token)
    if ca_file:
        return Endpoint(host=host, port=port, ca_file=Path(ca_file), ca_name=f"CA {ca_file}", token=token)
    pem = ctx.get("ca")
    return Endpoint(host=host, port=port, ca_pem=pem, ca_name=f"the CA of context {name}" if pem else
                    "the system's CAs", token=token)


def resolve(host: str | None = None, tls_ca: str | None = None, context: str | None = None,
            env: dict[str, str] | None = None) -> Endpoint:
    """The endpoint the flags and the environment choose (the module docstring's order)."""
    env = dict(os.environ) if env is None else env
    token = env.get(ENV_TOKEN) or None
    if host:
        return from_host(host, tls_ca or env.get(ENV_TLS_CA), token)
    if context:
        return of_context(context, load() if context != DEFAULT else {}, tls_ca, token)
    if env.get(ENV_HOST):
        return from_host(env[ENV_HOST], tls_ca or env.get(ENV_TLS_CA), token)
    if not store_file().exists():
        return local(token)
    data = load()
    current = data["current"] or DEFAULT
    if current != DEFAULT and current not in data["contexts"]:
        raise NotFound(f"the current context {current!r} is gone: hyperctl context use default (or another)")
    return of_context(current, data, tls_ca, token)


_choice: tuple[str | None, str | None, str | None] = (None, None, None)
_endpoint: Endpoint | None = None


def choose(host: str | None, tls_ca: str | None, context: str | None) -> None:
    """hyperctl's global flags, resolved on first use (`hyperctl context ...` and --help never need them)."""
    global _choice, _endpoint
    _choice, _endpoint = (host, tls_ca, context), None


def endpoint() -> Endpoint:
    """The endpoint chosen for this hyperctl (from the environment alone when no flag was seen)."""
    global _endpoint
    if _endpoint is None:
        _endpoint = resolve(*_choice)
    return _endpoint
