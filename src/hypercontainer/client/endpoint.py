"""Where a client's requests go (an `Endpoint`), and how the default one is chosen, as hyperctl chooses it.

The first of these that is given wins: a host (tcp://HOST:PORT with its CA, or unix:///PATH), a context by name,
`HYPERCONTAINER_HOST` (CA from `HYPERCONTAINER_TLS_CA`), the current context (`hyperctl context use`), the local
socket (`HYPERCONTAINER_SOCKET`; the context named "default"). `HYPERCONTAINER_TOKEN`, when set, is the token
whatever the endpoint.

Contexts live in `$XDG_CONFIG_HOME/hypercontainer/contexts.json` (~/.config by default); `hyperctl context`
manages them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import paths
from ..errors import HCError, InvalidArgument, NotFound

ENV_HOST = "HYPERCONTAINER_HOST"
ENV_TLS_CA = "HYPERCONTAINER_TLS_CA"
ENV_TOKEN = "HYPERCONTAINER_TOKEN"
DEFAULT = "default"


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
        """unix:///PATH or tcp://HOST:PORT."""
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
    """The local hyperd's socket (`HYPERCONTAINER_SOCKET`, else /run/hypercontainer/hyperd.sock)."""
    return Endpoint(socket=paths().socket, token=token)


def from_host(host: str, ca_file: str | None, token: str | None) -> Endpoint:
    """The endpoint of a host URL (tcp://HOST:PORT or unix:///PATH), trusting `ca_file` (else the system's CAs)."""
    sock, name, port = parse_host(host)
    if sock is not None:
        return Endpoint(socket=sock, token=token)
    ca = Path(ca_file) if ca_file else None
    return Endpoint(host=name, port=port, ca_file=ca, ca_name=f"CA {ca}" if ca else "the system's CAs", token=token)


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hypercontainer"


def store_file() -> Path:
    return config_dir() / "contexts.json"


def load() -> dict[str, Any]:
    """The contexts: {"current": NAME or None, "contexts": {NAME: {"host", "ca", "token"}}}."""
    try:
        data = json.loads(store_file().read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as e:
        raise HCError(f"cannot read {store_file()}: {e}") from None
    return {"current": data.get("current"), "contexts": dict(data.get("contexts") or {})}


def of_context(name: str, data: dict[str, Any], ca_file: str | None, token: str | None) -> Endpoint:
    """The endpoint context `name` describes (`ca_file` and `token`, when given, over its own)."""
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
    """The endpoint the arguments and the environment choose (the module docstring's order)."""
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
