"""Who is calling: the administrator (hyperd's unix socket) or a tenant (a remote request with its token).

`Guard` is the app's outermost middleware of ours. A request the transport marked `scope["hc.remote"]` must carry
`Authorization: Bearer hct_...` (a token in the URL is refused: URLs end up in logs), a token that is valid (not
revoked or expired, its tenant there) and within its rate (a token bucket per token); otherwise it is answered
401/400/429 before any route runs. Then `scope["hc.tenant"]` and `scope["hc.token"]` say who it is; unix-socket
requests have None there: the administrator. While a remote request runs (a log follow, an event stream, an exec
websocket), its token is checked again every few seconds, and revoking it cuts the request at once (`Streams`).
Every mutating call, and every remote call answered 4xx, goes to the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match

from ..errors import Forbidden, HCError, InvalidArgument, RateLimited, Unauthenticated
from .audit import AuditLog
from .tenants import Tenants, Token

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
URL_TOKEN_KEYS = frozenset({"token", "access_token", "auth", "authorization", "bearer"})
POLICY_VIOLATION = 1008  # websocket close code


def tenant_of(conn: HTTPConnection) -> str | None:
    """The calling tenant; None: the administrator."""
    return conn.scope.get("hc.tenant")


async def admin_only(request: HTTPConnection) -> None:
    """A route dependency: tenants get 403."""
    if tenant_of(request) is not None:
        raise Forbidden("this is for the administrator (hyperd's unix socket), not for tenants")


def note(conn: HTTPConnection, obj: str) -> None:
    """Names the object a call made (a new pod's id) for its audit line."""
    conn.scope["hc.object"] = obj


def refused(conn: HTTPConnection, e: HCError) -> None:
    """Records the status a websocket route refused with (its error goes in a frame, after the handshake)."""
    conn.scope["hc.status"] = e.status


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `rate` a second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> None:
        now = time.monotonic()
        level, last = self._buckets.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - last) * self.rate)
        if level < 1:
            wait = (1 - level) / self.rate
            self._buckets[key] = (level, now)
            raise RateLimited(f"too many requests: {self.burst} at once, then {self.rate:g} a second; retry in "
                              f"{wait:.1f} s", retry_after=wait)
        self._buckets[key] = (level - 1, now)


class Streams:
    """The remote requests running now, by token: revoking a token cuts them."""

    def __init__(self) -> None:
        self._by_token: dict[str, set[asyncio.Task[None]]] = {}

    def add(self, token_id: str, task: asyncio.Task[None]) -> None:
        self._by_token.setdefault(token_id, set()).add(task)

    def discard(self, token_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._by_token.get(token_id, set())
        tasks.discard(task)
        if not tasks:
            self._by_token.pop(token_id, None)

    def cut(self, token_ids: list[str]) -> int:
        """Cancels the requests of these tokens; how many there were."""
        n = 0
        for t in token_ids:
            for task in list(self._by_token.get(t, ())):
                task.cancel()
                n += 1
        return n


@dataclass
class _Exchange:
    """What the app sent: for the audit line and for ending a cut request properly."""

    status: int | None = None
    ndjson: bool = False  # the response is a stream of JSON lines
    started: bool = False
    complete: bool = False
    accepted: bool = False
    closed: bool = False

    def saw(self, msg: MutableMapping[str, Any]) -> None:
        kind = msg["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            self.status, self.started = int(msg["status"]), True
            self.ndjson = any(k.lower() == b"content-type" and v.startswith(b"application/x-ndjson")
                              for k, v in msg.get("headers") or [])
        elif kind in ("http.response.body", "websocket.http.response.body") and not msg.get("more_body"):
            self.complete = True
        elif kind == "websocket.accept":
            self.accepted, self.status = True, 101
        elif kind == "websocket.close":
            self.closed = True
            if not self.accepted:
                self.status = 403


class Guard:
    def __init__(self, app: ASGIApp, tenants: Tenants, audit: AuditLog | None, streams: Streams,
                 limiter: RateLimiter, recheck: float, routes: list[BaseRoute]) -> None:
        self.app, self.tenants, self.audit, self.streams = app, tenants, audit, streams
        self.limiter, self.recheck = limiter, recheck
        self.routes = routes  # the app's: to name the route of a request refused before routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope["hc.tenant"] = scope["hc.token"] = None
        ex = _Exchange()

        async def sending(msg: MutableMapping[str, Any]) -> None:
            ex.saw(msg)
            await send(msg)

        try:
            if not scope.get("hc.remote"):
                await self.app(scope, receive, sending)
                return
            try:
                tok = self._authenticate(scope)
                self.limiter.take(tok.id)
            except HCError as e:
                await _answer(scope, sending, e)
                return
            scope["hc.tenant"], scope["hc.token"] = tok.tenant, tok.id
            await self._watched(tok.id, scope, receive, sending, ex)
        finally:
            self._audit(scope, ex)

    def _authenticate(self, scope: Scope) -> Token:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if any(k.lower() in URL_TOKEN_KEYS or "hct_" in v for k, v in query):
            raise InvalidArgument("a token goes in the Authorization header (Bearer), never in the URL")
        values = [v for k, v in scope.get("headers") or [] if k.lower() == b"authorization"]
        if not values:
            raise Unauthenticated("a token is needed: send 'Authorization: Bearer hct_...'")
        scheme, _, text = values[0].decode("latin-1").strip().partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer" or not text.strip():
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
        return self.tenants.authenticate(text.strip())

    async def _watched(self, token_id: str, scope: Scope, receive: Receive, send: Send, ex: _Exchange) -> None:
        """Runs the request, checking its token every `recheck` seconds; cut when it no longer holds."""
        task = asyncio.ensure_future(self.app(scope, receive, send))
        self.streams.add(token_id, task)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.recheck)
                if done:
                    if not task.cancelled():  # cancelled: Streams.cut (revoked, tenant removed)
                        task.result()
                        return
                    break
                if not self.tenants.valid(token_id):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    break
        except asyncio.CancelledError:  # the server gave up on the request: so does the route
            task.cancel()
            raise
        finally:
            self.streams.discard(token_id, task)
        scope["hc.cut"] = True
        await _end(scope, send, ex)

    def _audit(self, scope: Scope, ex: _Exchange) -> None:
        if self.audit is None:
            return
        remote = bool(scope.get("hc.remote"))
        ws = scope["type"] == "websocket"
        method = "WEBSOCKET" if ws else scope["method"]
        status = scope.get("hc.status") or ex.status or 500
        if not (ws or method in MUTATING or (remote and status >= 400)):
            return
        route, params = scope.get("route"), scope.get("path_params") or {}
        if route is None:  # refused before routing
            for r in self.routes:
                match, child = r.matches(scope)
                if match is Match.FULL:
                    route, params = r, child.get("path_params") or {}
                    break
        template = getattr(route, "path", None)
        obj = scope.get("hc.object") or ("/".join(str(v) for v in params.values()) if params else None)
        if template is None:
            obj = scope.get("path", "")[:256]
        client = scope.get("client")
        extra = {"cut": True} if scope.get("hc.cut") else {}
        self.audit.record(scope.get("hc.tenant"), scope.get("hc.token"), f"{method} {template or '(no route)'}",
                          obj, int(status), f"{client[0]}:{client[1]}" if remote and client else None, **extra)


async def _answer(scope: Scope, send: Send, e: HCError) -> None:
    """Refuses a request before any route runs: a JSON error (a websocket's handshake gets it as its HTTP answer
    where the server can send one, else a close)."""
    body = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(e, Unauthenticated):
        headers.append((b"www-authenticate", b'Bearer realm="hyperd"'))
    if isinstance(e, RateLimited):
        headers.append((b"retry-after", str(max(1, math.ceil(e.retry_after))).encode()))
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": e.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": e.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        scope["hc.status"] = e.status
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": e.message[:120]})


async def _end(scope: Scope, send: Send, ex: _Exchange) -> None:
    """Ends a request whose token stopped holding while it ran: 401 if nothing was answered yet; a stream of JSON
    lines (logs, events, pull) ends with an `{"error": ...}` line, as a failed pull's does; any other response
    under way is left incomplete; a websocket is closed (policy violation)."""
    scope["hc.status"] = 401
    e = Unauthenticated("the token is no longer valid (revoked, expired, or its tenant removed)")
    with contextlib.suppress(Exception):
        if scope["type"] == "http" and not ex.started:
            await _answer(scope, send, e)
        elif scope["type"] == "http" and ex.ndjson and not ex.complete:
            await send({"type": "http.response.body", "body": json.dumps({"error": e.body()}).encode() + b"\n"})
        elif scope["type"] == "websocket" and not ex.closed:
            if ex.accepted:
                await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": e.message[:120]})
            else:
                await _answer(scope, send, e)
