"""HTTP/1.1 to hyperd with the standard library's http.client (the client's REST calls): over its unix socket, or
over TLS to its --listen address (tls.py, imported only then).

http.client rather than httpx: importing httpx takes ~0.15 s here (it pulls in its own command line, rich and
click included), which every `hyperctl ps` paid; http.client takes ~25 ms. The registry client keeps httpx."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import EllipsisType
from typing import Any
from urllib.parse import urlencode

from ..errors import HCError
from .endpoint import Endpoint
from .transport import CONNECT_TIMEOUT, error_from, unavailable


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 to hyperd's unix socket."""

    def __init__(self, sock: Path, timeout: float | None) -> None:
        super().__init__("hyperd", timeout=timeout)
        self.sock_path = sock

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.sock_path))
        except OSError:
            s.close()
            raise
        self.sock = s


def url(path: str, params: dict | None) -> str:
    """path?query: None values left out, lists as repeated keys, booleans as true/false."""
    items = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in (params or {}).items() if v is not None}
    return f"{path}?{urlencode(items, doseq=True)}" if items else path


def body_of(r: http.client.HTTPResponse, data: bytes) -> Any:
    if (r.getheader("content-type") or "").startswith("application/json"):
        return json.loads(data or b"null")
    return data.decode(errors="replace")


def connection(ep: Endpoint, timeout: float | None) -> http.client.HTTPConnection:
    """A connection to `ep`, not yet connected."""
    if ep.socket is not None:
        return UnixConnection(ep.socket, timeout)
    from .tls import client_context

    return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=client_context(ep))


class Rest:
    """One request per connection (a CLI makes few; keep-alive would save little)."""

    def __init__(self, target: Path | Endpoint, timeout: float | None) -> None:
        self.ep = target if isinstance(target, Endpoint) else Endpoint(socket=target)
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        """A connected connection (TLS handshake done); `timeout` then applies to each read and write."""
        conn = connection(self.ep, CONNECT_TIMEOUT if timeout is None else min(timeout, CONNECT_TIMEOUT))
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise self._unreachable(e) from None
        assert conn.sock is not None
        conn.sock.settimeout(timeout)
        return conn

    def _unreachable(self, e: OSError) -> HCError:
        if self.ep.socket is None:
            from .tls import failure

            return failure(self.ep, e)
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            return unavailable(self.ep.socket, e)
        return HCError(f"lost the connection to hyperd: {e or type(e).__name__}")

    def _send(self, method: str, path: str, params: dict | None = None, json_body: Any = None,
              content: Any = None, headers: dict | None = None,
              stream: bool = False, timeout: float | EllipsisType | None = ...
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends one request on a new connection; the response's status and headers are read, its body not yet
        (a streamed body has no time limit: `logs -f`, events, pulls)."""
        conn = self._connect(None if stream else self.timeout if timeout is ... else timeout)
        hdrs = {**self.ep.headers(), **(headers or {})}
        body = content
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["content-type"] = "application/json"
        try:
            conn.request(method, url(path, params), body=body, headers=hdrs)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise HCError(f"lost the connection to hyperd: {e or type(e).__name__}") from None

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None, content: Any = None,
                headers: dict | None = None, timeout: float | EllipsisType | None = ...) -> Any:
        """One request; its JSON (or text) answer, or the error it answered raised. `timeout`: seconds for each read
        and write (None: no limit; left out: this Rest's)."""
        conn, r = self._send(method, path, params, json, content, headers, timeout=timeout)
        try:
            body = body_of(r, r.read())
        except (OSError, http.client.HTTPException) as e:
            raise HCError(f"lost the connection to hyperd: {e or type(e).__name__}") from None
        finally:
            conn.close()
        if r.status >= 400:
            raise error_from(body, r.status)
        return body

    def _open_stream(self, method: str, path: str, params: dict | None,
                     json_body: Any = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn, r = self._send(method, path, params, json_body, stream=True)
        if r.status >= 400:
            body = body_of(r, r.read())
            conn.close()
            raise error_from(body, r.status)
        return conn, r

    @contextlib.contextmanager
    def stream(self, method: str, path: str, params: dict | None = None,
               json: Any = None) -> Iterator[http.client.HTTPResponse]:
        """A streamed response (its status checked: an error answer is raised), read as a file; closed on leaving."""
        conn, r = self._open_stream(method, path, params, json)
        try:
            yield r
        finally:
            conn.close()

    def stream_lines(self, path: str, method: str = "GET", json: Any = None, **params: Any) -> Iterator[bytes]:
        conn, r = self._open_stream(method, path, params, json)
        try:
            while line := r.readline():
                yield line.rstrip(b"\r\n")
        except (OSError, http.client.HTTPException) as e:
            raise HCError(f"lost the connection to hyperd: {e or type(e).__name__}") from None
        finally:
            conn.close()

    def download(self, path: str, dest: Path, params: dict) -> None:
        """Streams a response body into dest (written to a temp file, then renamed)."""
        tmp = dest.with_name(f".{dest.name}.part")
        conn, r = self._open_stream("GET", path, params)
        try:
            with open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            tmp.rename(dest)
        finally:
            conn.close()
            tmp.unlink(missing_ok=True)
