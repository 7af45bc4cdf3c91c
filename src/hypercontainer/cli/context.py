"""Where hyperctl's requests go (an Endpoint, hypercontainer.client.endpoint's), and the contexts that name hyperds,
as docker's do.

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
from typing import Any

from ..client.endpoint import (
    DEFAULT,
    ENV_HOST,
    ENV_TLS_CA,
    ENV_TOKEN,
    Endpoint,
    config_dir,
    from_host,
    load,
    local,
    of_context,
    parse_host,
    resolve,
    store_file,
)
from ..errors import InvalidArgument

__all__ = ["DEFAULT", "ENV_HOST", "ENV_TLS_CA", "ENV_TOKEN", "Endpoint", "check_name", "choose", "config_dir",
           "endpoint", "from_host", "load", "local", "of_context", "parse_host", "resolve", "save", "store_file"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
