"""hyperctl's connection to hyperd, at the endpoint cli/context.py chose (its unix socket, or TLS to a remote one):
REST (cli/rest.py, imported on first use: `hyperctl run` needs only the websocket, and start-up time counts), and
attach streams over a websocket. Both carry the endpoint's token."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from .rest import Rest

from ..errors import BY_CODE, CommandNotRunnable, HCError, Unavailable
from .context import Endpoint, endpoint

CONNECT_TIMEOUT = 30.0  # for a connection and its TLS handshake, also where the request itself has no limit


def unavailable(sock: Path, why: object) -> Unavailable:
    return Unavailable(f"cannot reach hyperd at {sock} ({why}). Is it running? Start it with 'hyperd &' as root "
                       "(or 'make demo'), or point HYPERCONTAINER_SOCKET at its socket.")


def error_from(body: Any, status: int) -> HCError:
    if not isinstance(body, dict):
        return HCError(f"hyperd answered {status}: {body}" if body else f"hyperd answered {status}")
    if "exit_code" in body:
        return CommandNotRunnable(str(body.get("message")), int(body["exit_code"]))
    cls = BY_CODE.get(str(body.get("code")), HCError)
    return cls(str(body.get("message", f"hyperd answered {status}")))


class Client:
    """hyperd's API: REST calls (cli/rest.py, loaded on the first one) and attach websockets."""

    def __init__(self, ep: Endpoint | None = None, timeout: float | None = 120.0) -> None:
        self.ep = ep or endpoint()
        self.timeout = timeout
        self._rest: Rest | None = None

    @property
    def rest(self) -> Rest:
        if self._rest is None:
            from .rest import Rest

            self._rest = Rest(self.ep, self.timeout)
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

    def websocket(self, path: str) -> ClientConnection:
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect, unix_connect

        ep, headers = self.ep, self.ep.headers()
        try:
            if ep.socket is not None:
                try:
                    return unix_connect(str(ep.socket), f"ws://hyperd{path}", max_size=None, compression=None,
                                        additional_headers=headers)
                except (FileNotFoundError, ConnectionRefusedError) as e:
                    raise unavailable(ep.socket, e) from None
            from .tls import client_context, failure

            ctx = client_context(ep)
            try:
                return connect(f"wss://{ep.url.removeprefix('tcp://')}{path}", ssl=ctx, max_size=None,
                               compression=None, additional_headers=headers, proxy=None,
                               open_timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as e:
                raise failure(ep, e) from None
        except InvalidStatus as e:
            try:
                body = json.loads(e.response.body or b"null")
            except ValueError:
                body = (e.response.body or b"").decode(errors="replace") or e.response.reason_phrase
            raise error_from(body, e.response.status_code) from None
        except InvalidHandshake as e:
            raise HCError(f"hyperd refused the stream: {e}") from None


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
