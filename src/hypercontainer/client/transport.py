"""The connection to hyperd at an endpoint (its unix socket, or TLS to a remote one): REST (rest.py, imported on
first use: `hyperctl run` needs only the websocket, and start-up time counts), NDJSON streams, and websockets for
stdio. Every request carries the endpoint's token. Errors hyperd answers with are raised as
`hypercontainer.errors` exceptions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from .rest import Rest

from ..errors import BY_CODE, CommandNotRunnable, HCError, Unavailable
from .endpoint import Endpoint

_loads = json.loads  # where a parameter named json hides the module
CONNECT_TIMEOUT = 30.0  # for a connection and its TLS handshake, also where the request itself has no limit


def unavailable(sock: Path, why: object) -> Unavailable:
    """The error for a local socket nobody answers on."""
    return Unavailable(f"cannot reach hyperd at {sock} ({why}). Is it running? Start it with 'hyperd &' as root "
                       "(or 'make demo'), or point HYPERCONTAINER_SOCKET at its socket.")


def error_from(body: Any, status: int) -> HCError:
    """The exception of an API error body ({"code", "message"}): NotFound for "not_found", and so on."""
    if not isinstance(body, dict):
        return HCError(f"hyperd answered {status}: {body}" if body else f"hyperd answered {status}")
    if "exit_code" in body:
        return CommandNotRunnable(str(body.get("message")), int(body["exit_code"]))
    cls = BY_CODE.get(str(body.get("code")), HCError)
    return cls(str(body.get("message", f"hyperd answered {status}")))


class Transport:
    """hyperd's API at `endpoint`: REST calls, NDJSON streams and stdio websockets. `timeout`: seconds a request
    may wait for each read or write (None: no limit); streams have none."""

    def __init__(self, endpoint: Endpoint, timeout: float | None = 120.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._rest: Rest | None = None

    @property
    def ep(self) -> Endpoint:
        """`endpoint`'s older name (hyperctl's)."""
        return self.endpoint

    @property
    def rest(self) -> Rest:
        """The HTTP side (rest.py), made on first use."""
        if self._rest is None:
            from .rest import Rest

            self._rest = Rest(self.endpoint, self.timeout)
        return self._rest

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                content: Any = None, headers: dict | None = None, timeout: float | EllipsisType | None = ...) -> Any:
        """One REST call: `json` as its body, `params` its query (None values left out); returns the decoded JSON
        answer. `timeout` overrides the client's for this call."""
        return self.rest.request(method, path, json=json, params=params, content=content, headers=headers,
                                 timeout=timeout)

    def stream_lines(self, path: str, method: str = "GET", json: Any = None, **params: Any) -> Iterator[bytes]:
        """The lines of a streamed answer, without their line ends, as they come."""
        return self.rest.stream_lines(path, method, json, **params)

    def stream_json(self, path: str, method: str = "GET", json: Any = None, **params: Any) -> Iterator[dict]:
        """The records of an NDJSON stream (logs, events, pulls); a record that is only {"error": ...} (hyperd ended
        the stream: a failed pull, a token revoked meanwhile) is raised as its exception."""
        for line in self.stream_lines(path, method, json, **params):
            if not line.strip():
                continue
            rec = _loads(line)
            if "error" in rec and len(rec) == 1:
                raise error_from(rec["error"], 500)
            yield rec

    def download(self, path: str, dest: Path, params: dict) -> None:
        """Streams a response body into the file `dest` (written aside, then renamed)."""
        self.rest.download(path, dest, params)

    def upload(self, path: str, file: Path, timeout: float | EllipsisType | None = ...) -> Any:
        """POSTs a file (a tar archive) as the body, in 1 MiB chunks, its size announced (hyperd refuses what its
        disk cannot hold before a byte is sent); returns the JSON answer."""
        size = file.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(file, "rb") as f:
                while data := f.read(1 << 20):
                    yield data

        return self.request("POST", path, content=chunks(), timeout=timeout,
                            headers={"content-type": "application/x-tar", "content-length": str(size)})

    def websocket(self, path: str) -> ClientConnection:
        """A websocket (websockets' sync client) to `path`: stdio of run, exec and attach. A connection closed
        before hyperd's answer to the handshake is tried once more: nothing happens on hyperd's side before the
        first message (the request), so a second handshake does nothing twice."""
        from websockets.exceptions import InvalidMessage

        for last in (False, True):
            try:
                return self._websocket(path)
            except InvalidMessage as e:
                if last:
                    raise HCError(f"hyperd refused the stream: {e}") from None
        raise AssertionError("unreachable")

    def _websocket(self, path: str) -> ClientConnection:
        from websockets.exceptions import InvalidHandshake, InvalidMessage, InvalidStatus
        from websockets.sync.client import connect, unix_connect

        ep, headers = self.endpoint, self.endpoint.headers()
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
        except InvalidMessage:
            raise  # websocket() tries once more
        except InvalidHandshake as e:
            raise HCError(f"hyperd refused the stream: {e}") from None

