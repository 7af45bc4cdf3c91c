"""hyperctl's connection to hyperd: the library's (hypercontainer.client) at the endpoint cli/context.py chose from
hyperctl's flags, and the helpers hyperctl's verbs share."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..client import Client as LibraryClient
from ..client.transport import CONNECT_TIMEOUT, error_from, unavailable
from ..errors import HCError
from .context import Endpoint, endpoint

__all__ = ["CONNECT_TIMEOUT", "Client", "dumps", "error_from", "for_each", "unavailable"]


class Client(LibraryClient):
    """The library's client at hyperctl's endpoint (--host, --context, the environment), or at `ep`."""

    def __init__(self, ep: Endpoint | None = None, timeout: float | None = 120.0) -> None:
        super().__init__(timeout=timeout, endpoint=ep or endpoint())


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def for_each(refs: tuple[str, ...], action: Callable[[str], list[str]]) -> None:
    """Runs `action` on each ref like docker's multi-argument verbs: prints its lines, reports each failure,
    goes on with the rest, and exits 1 if any failed."""
    import sys

    import click

    failed = False
    for ref in refs:
        try:
            for line in action(ref):
                click.echo(line)
        except HCError as e:
            click.echo(f"hyperctl: {e.message}", err=True)
            failed = True
    if failed:
        sys.exit(1)
