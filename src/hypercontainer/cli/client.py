"""hyperctl's connection to hyperd: REST over the unix socket (cli/rest.py, imported on first use: `hyperctl run`
needs only the websocket, and start-up time counts), attach streams over a websocket."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .rest import Rest

from ..config import paths
from ..errors import BY_CODE, CommandNotRunnable, HCError, Unavailable


def socket_path() -> Path:
    return paths().socket


def unavailable(sock: Path, why: object) -> Unavailable:
    return Unavailable(f"cannot reach hyperd at {sock} ({why}). Is it running? Start it with 'hyperd &' as root "
                       "(or 'make demo'), or point HYPERCONTAINER_SOCKET at its socket.")


def error_from(body: Any, status: int) -> HCError:
    if not isinstance(body, dict):
        return HCError(f"hyperd answered {status}: {body}")
    if "exit_code" in body:
        return CommandNotRunnable(str(body.get("message")), int(body["exit_code"]))
    cls = BY_CODE.get(str(body.get("code")), HCError)
    return cls(str(body.get("message", f"hyperd answered {status}")))


class Client:
    """hyperd's API: REST calls (cli/rest.py, loaded on the first one) and attach websockets."""

    def __init__(self, sock: Path | None = None, timeout: float | None = 120.0) -> None:
        self.sock = sock or socket_path()
        self.timeout = timeout
        self._rest: Rest | None = None

    @property
    def rest(self) -> Rest:
        if self._rest is None:
            from .rest import Rest

            self._rest = Rest(self.sock, self.timeout)
        return self._rest

    def request(self, method: str, path: str, **kw: Any) -> Any:
        return self.rest.request(method, path, **kw)

    def stream_lines(self, path: str, method: str = "GET", json: Any = None, **params: Any) -> Iterator[bytes]:
        return self.rest.stream_lines(path, method, json, **params)

    def download(self, path: str, dest: Path, params: dict) -> None:
        self.rest.download(path, dest, params)

    def upload(self, path: str, file: Path) -> Any:
        def chunks() -> Iterator[bytes]:
            with open(file, "rb") as f:
                while data := f.read(1 << 20):
                    yield data

        return self.request("POST", path, content=chunks(), headers={"content-type": "application/x-tar"})

    def websocket(self, path: str):
        from websockets.sync.client import unix_connect

        try:
            return unix_connect(str(self.sock), f"ws://hyperd{path}", max_size=None, compression=None)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise unavailable(self.sock, e) from None


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
